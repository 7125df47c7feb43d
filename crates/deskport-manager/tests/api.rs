//! The manager's HTTP API, served for real on a loopback port with a real SQLite file, driven
//! over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use deskport_manager::ManagerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const ADMIN_PASSWORD: &str = "correct horse battery";

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path) -> Self {
        let config = ManagerConfig {
            data_dir: dir.to_owned(),
            ..ManagerConfig::default()
        };
        let store = deskport_manager::open_store(&config).await.unwrap();
        deskport_manager::bootstrap(&store, Some(ADMIN_PASSWORD.into()))
            .await
            .unwrap();
        let app = deskport_manager::app(deskport_manager::state(store, &config), config.body_limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            deskport_manager::serve(listener, app, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A user session: the HTTP client and a bearer token.
#[derive(Clone)]
struct As {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl As {
    async fn login(server: &Server, user: &str, password: &str) -> Self {
        let http = plain_http();
        let r = http
            .post(server.url("/api/v1/auth/tokens"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        let body: Value = r.json().await.unwrap();
        Self {
            http,
            base: server.base.clone(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }
}

async fn default_group(admin: &As) -> Value {
    let groups = admin.get("/security-groups").await;
    groups["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "default")
        .cloned()
        .unwrap()
}

fn rdp_rule(group: &Value, cidr: &str) -> Value {
    json!({"security_group_rule": {"security_group_id": group["id"], "template": "rdp", "remote_ip_prefix": cidr}})
}

async fn revision(server: &Server) -> u64 {
    let h: Value = plain_http()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h["revision"].as_u64().unwrap()
}

#[tokio::test]
async fn the_whole_rule_lifecycle() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;

    // A new project: its default group allows only 80 and 443 (both families), egress all.
    let group = default_group(&admin).await;
    let rules = group["security_group_rules"].as_array().unwrap();
    let ingress: Vec<_> = rules
        .iter()
        .filter(|r| r["direction"] == "ingress")
        .map(|r| {
            (
                r["ethertype"].as_str().unwrap(),
                r["port_range_min"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ingress,
        vec![("IPv4", 80), ("IPv4", 443), ("IPv6", 80), ("IPv6", 443)]
    );
    let templates = admin.get("/templates").await;
    assert!(templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "rdp" && t["port_range_min"] == 3389));

    let before = revision(&server).await;
    let (status, created) = admin
        .post("/security-group-rules", rdp_rule(&group, "127.0.0.1/32"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let rule = &created["security_group_rule"];
    assert_eq!(rule["protocol"], "tcp");
    assert_eq!(rule["port_range_min"], 3389);
    assert_eq!(rule["port_range_max"], 3389);
    assert_eq!(rule["remote_ip_prefix"], "127.0.0.1/32");
    assert!(created.get("notices").is_none(), "{created}");
    assert!(revision(&server).await > before);
    let id = rule["id"].as_str().unwrap();

    assert_eq!(
        admin.get(&format!("/security-group-rules/{id}")).await["security_group_rule"],
        *rule
    );
    let listed = admin
        .get(&format!(
            "/security-group-rules?security_group_id={}",
            group["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed["security_group_rules"].as_array().unwrap().len(), 7);

    // RDP for everyone: accepted with a warning.
    let (status, open) = admin
        .post("/security-group-rules", rdp_rule(&group, "0.0.0.0/0"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(open["notices"][0]["code"], "open_to_internet");

    let audit = admin
        .get("/audit-events?action=security_group_rule.create")
        .await;
    let events = audit["audit_events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["actor"], "admin");
    assert_eq!(events[1]["target_id"], id);
    assert_eq!(events[1]["source"], "127.0.0.1");
    assert_eq!(
        events[1]["summary"],
        "default: ingress IPv4 tcp port 3389 from 127.0.0.1/32"
    );

    let (status, _) = admin
        .call("DELETE", &format!("/security-group-rules/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, gone) = admin
        .call("GET", &format!("/security-group-rules/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["error"]["code"], "not_found");
    let (status, _) = admin
        .call("DELETE", &format!("/security-group-rules/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let audit = admin
        .get("/audit-events?action=security_group_rule.delete")
        .await;
    assert_eq!(audit["audit_events"][0]["target_id"], id);

    // Groups: create, refuse a duplicate name, delete; default cannot go.
    let (status, web) = admin
        .post(
            "/security-groups",
            json!({"security_group": {"name": "web", "description": "web servers"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{web}");
    let (status, dup) = admin
        .post(
            "/security-groups",
            json!({"security_group": {"name": "web"}}),
        )
        .await;
    assert_eq!(
        (status, dup["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate_group_name"))
    );
    let (status, _) = admin
        .call(
            "DELETE",
            &format!(
                "/security-groups/{}",
                web["security_group"]["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = admin
        .call(
            "DELETE",
            &format!("/security-groups/{}", group["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("default_group_undeletable"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_everything() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let group = default_group(&admin).await;
    let (_, rule) = admin
        .post("/security-group-rules", rdp_rule(&group, "127.0.0.1/32"))
        .await;
    let (status, inst) = admin
        .post("/instances", json!({"instance": {"name": "desktop", "public_address": "127.0.0.1", "internal_address": "127.0.0.1:13389"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{inst}");
    let rev = revision(&server).await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    // The old token still works.
    let again = As {
        base: server.base.clone(),
        ..admin.clone()
    };
    let listed = again.get("/security-group-rules").await;
    assert!(listed["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == rule["security_group_rule"]["id"]));
    let instances = again.get("/instances").await;
    assert_eq!(instances["instances"][0]["name"], "desktop");
    assert_eq!(instances["instances"][0]["rdp_port"], 13389);
    assert_eq!(
        instances["instances"][0]["security_groups"][0]["name"],
        "default"
    );
    assert_eq!(revision(&server).await, rev);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rule_creations_leave_fifty_rules_and_fifty_audit_entries() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let group = default_group(&admin).await;
    let tasks: Vec<_> = (0..50u16)
        .map(|i| {
            let admin = admin.clone();
            let gid = group["id"].clone();
            tokio::spawn(async move {
                admin
                    .post(
                        "/security-group-rules",
                        json!({"security_group_rule": {"security_group_id": gid, "protocol": "tcp", "port_range_min": 5000 + i}}),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let rules = admin
        .get(&format!(
            "/security-group-rules?security_group_id={}",
            group["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        rules["security_group_rules"].as_array().unwrap().len(),
        6 + 50
    );
    let audit = admin
        .get("/audit-events?action=security_group_rule.create&limit=1000")
        .await;
    assert_eq!(audit["audit_events"].as_array().unwrap().len(), 50);
    // The same 50 again, concurrently: every one is a duplicate.
    let tasks: Vec<_> = (0..50u16)
        .map(|i| {
            let admin = admin.clone();
            let gid = group["id"].clone();
            tokio::spawn(async move {
                admin
                    .post(
                        "/security-group-rules",
                        json!({"security_group_rule": {"security_group_id": gid, "protocol": "6", "port_range_min": 5000 + i, "port_range_max": 5000 + i}}),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("duplicate_rule"))
        );
    }
    server.stop().await;
}

/// Projects isolate tenants: 404 for everything of another project, read or write.
#[tokio::test]
async fn another_projects_resources_are_not_found() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let (_, b) = admin
        .post("/projects", json!({"project": {"name": "tenant-b"}}))
        .await;
    let b_id = b["project"]["id"].as_str().unwrap().to_owned();
    let (status, bob) = admin
        .post(
            "/users",
            json!({"user": {"name": "bob", "password": "bob-password"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bob}");
    let bob_id = bob["user"]["id"].as_str().unwrap();
    let (status, _) = admin
        .call(
            "PUT",
            &format!("/projects/{b_id}/members/{bob_id}"),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let bob = As::login(&server, "bob", "bob-password").await;

    let theirs = default_group(&admin).await;
    let gid = theirs["id"].as_str().unwrap();
    let (_, inst) = admin
        .post(
            "/instances",
            json!({"instance": {"name": "a-desktop", "public_address": "198.18.0.10"}}),
        )
        .await;
    let iid = inst["instance"]["id"].as_str().unwrap();

    // Bob sees only tenant-b.
    let groups = bob.get("/security-groups").await;
    let names: Vec<_> = groups["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["project_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().all(|p| *p == b_id), "{groups}");
    assert_eq!(
        bob.get("/instances").await["instances"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        bob.get("/audit-events").await["audit_events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["project_id"] != b_id.as_str())
            .count(),
        0
    );
    for (method, path, body) in [
        ("GET", format!("/security-groups/{gid}"), None),
        ("DELETE", format!("/security-groups/{gid}"), None),
        ("GET", format!("/instances/{iid}"), None),
        ("DELETE", format!("/instances/{iid}"), None),
        (
            "PUT",
            format!("/instances/{iid}/remote-desktop"),
            Some(json!({"enabled": true})),
        ),
        (
            "POST",
            "/security-group-rules".to_owned(),
            Some(rdp_rule(&theirs, "0.0.0.0/0")),
        ),
        (
            "GET",
            format!("/projects/{}", theirs["project_id"].as_str().unwrap()),
            None,
        ),
    ] {
        let (status, body) = bob.call(method, &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    // Nothing changed.
    let after = default_group(&admin).await;
    assert_eq!(
        after["security_group_rules"],
        theirs["security_group_rules"]
    );
    let (status, _) = admin.call("GET", &format!("/instances/{iid}"), None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_reader_cannot_write() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let (_, carol) = admin
        .post(
            "/users",
            json!({"user": {"name": "carol", "password": "carol-password"}}),
        )
        .await;
    let project = default_group(&admin).await["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = admin
        .call(
            "PUT",
            &format!(
                "/projects/{project}/members/{}",
                carol["user"]["id"].as_str().unwrap()
            ),
            Some(json!({"role": "reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let carol = As::login(&server, "carol", "carol-password").await;
    let group = default_group(&carol).await;
    let (status, body) = carol
        .post("/security-group-rules", rdp_rule(&group, "127.0.0.1/32"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );
    let (status, _) = carol
        .post("/security-groups", json!({"security_group": {"name": "x"}}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = carol
        .post(
            "/users",
            json!({"user": {"name": "eve", "password": "eve-password"}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        default_group(&admin).await["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    server.stop().await;
}

/// RD Gateway tokens: gateway access is on by default and switched with the other Remote
/// Desktop switches; any member mints a token for itself (with or without a body) while both
/// switches are on; a member lists and revokes its own, a project admin everyone's; another
/// project's caller finds nothing; bad lifetimes are 400 naming the field.
#[tokio::test]
async fn rdp_tokens_are_minted_listed_and_revoked() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let (status, created) = admin
        .post(
            "/instances",
            json!({"instance": {"name": "desk", "public_address": "198.51.100.7:13389", "internal_address": "10.0.0.7"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["instance"]["remote_desktop"],
        json!({"enabled": false, "nla_only": true, "gateway": true})
    );
    let tokens = format!("/instances/{id}/rdp-tokens");
    let (status, body) = admin.post(&tokens, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("remote_desktop_off")),
        "{body}"
    );
    let (status, body) = admin
        .call(
            "PUT",
            &format!("/instances/{id}/remote-desktop"),
            Some(json!({"enabled": true, "gateway": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["instance"]["remote_desktop"],
        json!({"enabled": true, "nla_only": true, "gateway": false})
    );
    let (status, body) = admin.post(&tokens, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("gateway_access_off")),
        "{body}"
    );
    let (status, _) = admin
        .call(
            "PUT",
            &format!("/instances/{id}/remote-desktop"),
            Some(json!({"gateway": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for ttl in [json!(29), json!(3601), json!("ten")] {
        let (status, body) = admin.post(&tokens, json!({"ttl_seconds": ttl})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["field"], "ttl_seconds", "{body}");
    }
    let (status, mine) = admin.post(&tokens, json!({"ttl_seconds": 60})).await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    assert!(mine["token"].as_str().unwrap().starts_with("dpg_"));
    assert_eq!(mine["instance"], id.as_str());
    assert_eq!(mine["gateway_path"], "/remoteDesktopGateway/");
    assert!(mine["expires_at"].as_str().unwrap().ends_with('Z'));

    // A reader mints for itself, with no body at all.
    let (_, carol) = admin
        .post(
            "/users",
            json!({"user": {"name": "carol", "password": "carol-password"}}),
        )
        .await;
    let carol_id = carol["user"]["id"].as_str().unwrap().to_owned();
    let project = created["instance"]["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = admin
        .call(
            "PUT",
            &format!("/projects/{project}/members/{carol_id}"),
            Some(json!({"role": "reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let carol = As::login(&server, "carol", "carol-password").await;
    let (status, hers) = carol.call("POST", &tokens, None).await;
    assert_eq!(status, StatusCode::CREATED, "{hers}");

    // Listing: her own for her, everyone's for the project admin; never a secret.
    let listed = carol.get(&tokens).await;
    let listed = listed["rdp_tokens"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], hers["id"]);
    assert_eq!(listed[0]["user_name"], "carol");
    assert!(listed[0].get("token").is_none());
    let all = admin.get(&tokens).await;
    let ids: Vec<&Value> = all["rdp_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, [&mine["id"], &hers["id"]], "oldest first");

    // Revoking: not someone else's token (not found), one's own once, any for the admin.
    let (status, _) = carol
        .call(
            "DELETE",
            &format!("/rdp-tokens/{}", mine["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let revoke_hers = format!("/rdp-tokens/{}", hers["id"].as_str().unwrap());
    let (status, _) = carol.call("DELETE", &revoke_hers, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = carol.call("DELETE", &revoke_hers, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_revoked"))
    );
    assert!(carol.get(&tokens).await["rdp_tokens"][0]["revoked_at"].is_string());
    let (status, _) = admin
        .call(
            "DELETE",
            &format!("/rdp-tokens/{}", mine["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let audit = admin.get("/audit-events?action=instance.rdp_token").await;
    assert_eq!(
        audit["audit_events"].as_array().unwrap().len(),
        2,
        "{audit}"
    );

    // Another project's member sees no such instance or token.
    let (_, other) = admin
        .post("/projects", json!({"project": {"name": "other"}}))
        .await;
    let other_id = other["project"]["id"].as_str().unwrap();
    let (_, dave) = admin
        .post(
            "/users",
            json!({"user": {"name": "dave", "password": "dave-password"}}),
        )
        .await;
    admin
        .call(
            "PUT",
            &format!(
                "/projects/{other_id}/members/{}",
                dave["user"]["id"].as_str().unwrap()
            ),
            Some(json!({"role": "admin"})),
        )
        .await;
    let dave = As::login(&server, "dave", "dave-password").await;
    let (status, _) = dave.post(&tokens, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = dave.call("GET", &tokens, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = dave.call("DELETE", &revoke_hers, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn an_agent_token_reads_only_its_instance() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let (_, one) = admin.post("/instances", json!({"instance": {"name": "one", "public_address": "198.18.2.2", "internal_address": "10.0.0.2:13389"}})).await;
    let (_, two) = admin
        .post(
            "/instances",
            json!({"instance": {"name": "two", "public_address": "198.18.2.3"}}),
        )
        .await;
    let agent = As {
        token: one["agent_token"].as_str().unwrap().to_owned(),
        ..admin.clone()
    };
    let doc = agent.get("/agent/policy").await;
    let names: Vec<_> = doc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["one"]);
    // Remote Desktop is off: the gateway publishes no RDP port.
    assert_eq!(doc["instances"][0]["services"], json!([]));
    assert_eq!(
        doc["instances"][0]["remote_desktop"],
        json!({"enabled": false, "nla_only": true})
    );
    let iid = one["instance"]["id"].as_str().unwrap();
    let (status, body) = admin
        .call(
            "PUT",
            &format!("/instances/{iid}/remote-desktop"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc = agent.get("/agent/policy").await;
    assert_eq!(doc["instances"][0]["services"][0]["internal_port"], 13389);
    assert_eq!(doc["peers"][0]["name"], "two");
    assert!(doc["peers"][0].get("remote_desktop").is_none());
    // The document is a valid policy.
    deskport_api::PolicyDocument::from_json(&doc.to_string())
        .unwrap()
        .to_policy()
        .unwrap();

    let (status, _) = agent
        .call(
            "GET",
            &format!("/instances/{}", one["instance"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = agent
        .call(
            "GET",
            &format!("/instances/{}", two["instance"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in ["/security-groups", "/instances", "/audit-events", "/users"] {
        let (status, _) = agent.call("GET", path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let group = default_group(&admin).await;
    let (status, _) = agent
        .post("/security-group-rules", rdp_rule(&group, "0.0.0.0/0"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // It reports its certificate fingerprint; users see it.
    let fp = "AB".repeat(32);
    let (status, _) = agent
        .post(
            "/agent/report",
            json!({"cert_fingerprint": fp, "revision": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, bad) = agent
        .post("/agent/report", json!({"cert_fingerprint": "nope"}))
        .await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("cert_fingerprint"))
    );
    let shown = admin
        .get(&format!(
            "/instances/{}",
            one["instance"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        shown["instance"]["cert_fingerprint"],
        vec!["ab"; 32].join(":")
    );
    assert_eq!(shown["instance"]["agent_revision"], 7);
    let (status, _) = admin.post("/agent/report", json!({"revision": 1})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "users cannot report for agents"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let group = default_group(&admin).await;
    let gid = group["id"].as_str().unwrap();
    let before = revision(&server).await;
    let http = plain_http();
    let raw = |body: String, content_type: &str| {
        http.post(server.url("/api/v1/security-group-rules"))
            .bearer_auth(&admin.token)
            .header("content-type", content_type.to_owned())
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, StatusCode, &str, Option<&str>)> = vec![
        (raw("{\"security_group_rule\": {".into(), "application/json").await.unwrap(), StatusCode::BAD_REQUEST, "malformed_json", None),
        (
            raw(json!({"security_group_rule": {"security_group_id": gid, "template": "rdp", "remote_ip_prefx": "1.2.3.4/32"}}).to_string(), "application/json").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            Some("remote_ip_prefx"),
        ),
        (
            raw(json!({"security_group_rule": {"security_group_id": gid, "protocol": "tcp", "port_range_min": "3389"}}).to_string(), "application/json").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            None,
        ),
        (raw("x".repeat(100 * 1024), "application/json").await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
        (raw("{}".into(), "text/plain").await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
    ];
    for (response, status, code, field) in cases {
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{body}");
        }
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    for (rule, status, code, field) in [
        (
            json!({"template": "rdp", "remote_ip_prefix": "10.0.0.0/33"}),
            StatusCode::BAD_REQUEST,
            "invalid_cidr",
            "remote_ip_prefix",
        ),
        (
            json!({"template": "telnet"}),
            StatusCode::BAD_REQUEST,
            "unknown_template",
            "template",
        ),
        (
            json!({"protocol": "tcp", "port_range_min": 3390, "port_range_max": 3389}),
            StatusCode::BAD_REQUEST,
            "port_range_inverted",
            "port_range_min",
        ),
        (
            json!({"template": "http"}),
            StatusCode::CONFLICT,
            "duplicate_rule",
            "",
        ),
        (
            json!({"template": "rdp", "remote_ip_prefix": "::/0", "ethertype": "IPv4"}),
            StatusCode::BAD_REQUEST,
            "cidr_family_mismatch",
            "remote_ip_prefix",
        ),
    ] {
        let mut body = rule.clone();
        body["security_group_id"] = json!(gid);
        let (s, b) = admin
            .post(
                "/security-group-rules",
                json!({"security_group_rule": body}),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{rule}: {b}"
        );
        if !field.is_empty() {
            assert_eq!(b["error"]["field"], field);
        }
    }
    // Several problems at once are all reported.
    let (_, b) = admin
        .post("/security-group-rules", json!({"security_group_rule": {"security_group_id": gid, "direction": "in", "protocol": "tcpp"}}))
        .await;
    assert_eq!(b["details"].as_array().unwrap().len(), 2, "{b}");
    // No token, a wrong token, a wrong path id.
    let r = http
        .get(server.url("/api/v1/security-groups"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(server.url("/api/v1/security-groups"))
        .bearer_auth("dpt_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = admin.call("GET", "/security-groups/not-a-uuid", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = admin
        .call("GET", "/security-group-rules?security_group_id=zzz", None)
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (s, b) = admin
        .post(
            "/instances",
            json!({"instance": {"name": "x", "public_address": "300.1.1.1"}}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("public_address"))
    );

    assert_eq!(revision(&server).await, before, "nothing was changed");
    assert_eq!(
        default_group(&admin).await["security_group_rules"],
        group["security_group_rules"]
    );
    assert_eq!(
        admin
            .get("/audit-events?action=security_group_rule.create")
            .await["audit_events"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let http = plain_http();
    let attempt = |password: &'static str| {
        http.post(server.url("/api/v1/auth/tokens"))
            .json(&json!({"username": "admin", "password": password}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(
            attempt("wrong").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = attempt(ADMIN_PASSWORD).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked out even with the right password"
    );
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&wait));
    let r = http
        .post(server.url("/api/v1/auth/tokens"))
        .json(&json!({"username": "nobody", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the source address is locked out too"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_feed_answers_a_waiting_agent_when_a_rule_changes() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let admin = As::login(&server, "admin", ADMIN_PASSWORD).await;
    let (_, inst) = admin
        .post(
            "/instances",
            json!({"instance": {"name": "desktop", "public_address": "127.0.0.1"}}),
        )
        .await;
    let client = deskport_api::Client::new(
        &server.base,
        Some(inst["agent_token"].as_str().unwrap().to_owned()),
    )
    .unwrap();
    let first = client
        .agent_policy(None, Duration::from_secs(0))
        .await
        .unwrap()
        .unwrap();
    // Nothing changes: the wait runs out.
    assert!(client
        .agent_policy(Some(first.revision), Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());

    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            let doc = client
                .agent_policy(Some(first.revision), Duration::from_secs(30))
                .await
                .unwrap();
            (doc, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let group = default_group(&admin).await;
    let (_, rule) = admin
        .post("/security-group-rules", rdp_rule(&group, "127.0.0.1/32"))
        .await;
    let created = Instant::now();
    let (doc, answered) = waiting.await.unwrap();
    let doc = doc.expect("the change wakes the agent");
    assert!(doc.revision > first.revision);
    let policy = doc.to_policy().unwrap();
    let ids: Vec<String> = policy
        .groups
        .iter()
        .flat_map(|g| g.rules.iter().map(|r| r.id.to_string()))
        .collect();
    assert!(ids.contains(
        &rule["security_group_rule"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    ));
    eprintln!(
        "agent woken {:?} after the rule was created",
        answered.saturating_duration_since(created)
    );
    server.stop().await;
}

#[tokio::test]
async fn openapi_document_health_and_metrics() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path()).await;
    let doc: Value = plain_http()
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/security-groups",
        "/security-group-rules",
        "/instances/{id}/remote-desktop",
        "/templates",
        "/audit-events",
        "/projects",
        "/users",
        "/agent/policy",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("CreateRule").is_some());
    let health: Value = plain_http()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = plain_http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "deskport_manager_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("deskport_policy_revision "));
    let r = plain_http()
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A reqwest client for these plain-HTTP tests. reqwest is built without a TLS provider of its
/// own (deskport's client gives it one configured to check the manager); a client of its own
/// building needs the process default installed.
fn plain_http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}
