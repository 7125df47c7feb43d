//! The console's RD Gateway actions, driven over HTTP as a browser drives them: the manager
//! served for real on a loopback port with a real SQLite file, a user logged in through the
//! login form, the session cookie and the page's CSRF token sent with every form. What the
//! forms did is checked through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use deskport_manager::ManagerConfig;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const ADMIN_PASSWORD: &str = "correct horse battery";
/// The RDP user name the manager shows in connect commands and `.rdp` files.
const RDP_USER: &str = "alice";

struct Server {
    base: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The manager with its RD Gateway mounted (as over HTTPS), or without (as on plain HTTP or
    /// with `rd_gateway` off).
    async fn start(dir: &Path, gateway: bool) -> Self {
        let config = ManagerConfig {
            data_dir: dir.to_owned(),
            rdp_user: Some(RDP_USER.into()),
            ..ManagerConfig::default()
        };
        let store = deskport_manager::open_store(&config).await.unwrap();
        deskport_manager::bootstrap(&store, Some(ADMIN_PASSWORD.into()))
            .await
            .unwrap();
        let mut state = deskport_manager::state(store, &config);
        if gateway {
            let authority = deskport_manager::gateway::StoreAuthorizer::new(state.store.clone());
            state.rd_gateway = Some(deskport_gateway::RdGateway::new(
                Arc::new(authority),
                deskport_gateway::Limits::default(),
            ));
        }
        let app = deskport_manager::app(state, config.body_limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
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
            addr,
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

/// A reqwest client for plain HTTP that does not follow redirects (the tests look at them).
/// reqwest is built without a TLS provider of its own; a client needs the process default.
fn plain_http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An API caller with a bearer token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(server: &Server, user: &str, password: &str) -> Self {
        let http = plain_http();
        let r = http
            .post(server.url("/api/v1/auth/tokens"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        Self {
            http,
            base: server.base.clone(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}/api/v1{path}", self.base),
            )
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

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    /// The gateway tokens this caller may list for `instance` (everyone's for an admin).
    async fn tokens(&self, instance: &str) -> Vec<Value> {
        self.ok("GET", &format!("/instances/{instance}/rdp-tokens"), None)
            .await["rdp_tokens"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn remote_desktop(&self, instance: &str) -> Value {
        self.ok("GET", &format!("/instances/{instance}"), None)
            .await["instance"]["remote_desktop"]
            .clone()
    }
}

/// A response as a browser sees it (redirects not followed).
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
    }
}

/// A browser: a cookie jar and the console's forms.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

impl Browser {
    /// Logs in through the login form (with the login form's CSRF cookie and field).
    async fn login(server: &Server, user: &str, password: &str) -> Self {
        let mut b = Self {
            http: plain_http(),
            base: server.base.clone(),
            cookies: HashMap::new(),
        };
        let form = b.get("/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = input_value(&form.body, r#"name="csrf""#).unwrap();
        let r = b
            .post_form(
                "/login",
                &[("csrf", &csrf), ("username", user), ("password", password)],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        assert_eq!(r.location(), "/access-security");
        assert!(b.cookies.contains_key("deskport_session"));
        b
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = if self.cookies.is_empty() {
            req
        } else {
            req.header(header::COOKIE, self.cookie_header())
        };
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let body = r.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_form_with(path, fields, None).await
    }

    /// Posts a form, with `host` as the `Host` header when given.
    async fn post_form_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        host: Option<&str>,
    ) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        self.send(req).await
    }

    /// The session's CSRF token, as every page's forms carry it.
    async fn csrf(&mut self) -> String {
        let page = self.get("/instances").await;
        assert_eq!(page.status, StatusCode::OK);
        input_value(&page.body, r#"name="csrf""#).unwrap()
    }

    /// Follows a redirect back to a page and returns the message it shows once.
    async fn flash(&mut self, redirect: &Page) -> String {
        assert_eq!(redirect.status, StatusCode::SEE_OTHER, "{}", redirect.body);
        let page = self.get(redirect.location()).await;
        let start = page.body.find("role=\"status\"").expect("a message");
        let end = page.body[start..].find("</div></div>").unwrap() + start;
        strip_tags(&page.body[start..end])
    }
}

/// The `value` of the first `<input>` whose tag contains `needle`.
fn input_value(html: &str, needle: &str) -> Option<String> {
    html.split("<input").skip(1).find_map(|rest| {
        let tag = &rest[..rest.find('>')?];
        if !tag.contains(needle) {
            return None;
        }
        let start = tag.find("value=\"")? + "value=\"".len();
        let end = tag[start..].find('"')? + start;
        Some(unescape(&tag[start..end]))
    })
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim_start_matches("role=\"status\""))
}

/// An instance made through the API, Remote Desktop switched on (gateway access is on by
/// default).
async fn instance(api: &Api, name: &str, public: &str) -> String {
    let created = api
        .ok(
            "POST",
            "/instances",
            Some(json!({"instance": {"name": name, "public_address": public, "internal_address": "10.0.0.7"}})),
        )
        .await;
    let id = created["instance"]["id"].as_str().unwrap().to_owned();
    api.ok(
        "PUT",
        &format!("/instances/{id}/remote-desktop"),
        Some(json!({"enabled": true})),
    )
    .await;
    id
}

/// A user with `role` in `project`, and its API caller.
async fn user(server: &Server, admin: &Api, name: &str, project: &str, role: &str) -> Api {
    let password = format!("{name}-password");
    let created = admin
        .ok(
            "POST",
            "/users",
            Some(json!({"user": {"name": name, "password": password}})),
        )
        .await;
    let id = created["user"]["id"].as_str().unwrap();
    admin
        .ok(
            "PUT",
            &format!("/projects/{project}/members/{id}"),
            Some(json!({"role": role})),
        )
        .await;
    Api::login(server, name, &password).await
}

/// How many gateway tokens `admin` sees for these instances, revoked or not.
async fn minted(admin: &Api, instances: &[&str]) -> usize {
    let mut n = 0;
    for i in instances {
        n += admin.tokens(i).await.len();
    }
    n
}

/// What a gateway `.rdp` file says, key by key (`name:type`), and its `gateway*` keys.
fn rdp_keys(text: &str) -> (HashMap<String, String>, BTreeSet<String>) {
    assert!(text.ends_with("\r\n"), "{text:?}");
    let keys: HashMap<String, String> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .map(|line| {
            let (name, rest) = line.split_once(':').unwrap();
            let (kind, value) = rest.split_once(':').unwrap();
            (format!("{name}:{kind}"), value.to_owned())
        })
        .collect();
    let gateway = keys
        .keys()
        .filter(|k| k.starts_with("gateway"))
        .cloned()
        .collect();
    (keys, gateway)
}

/// The gateway switch is part of the Remote Desktop form; *Connect through the gateway* is
/// offered and works only while both switches are on; it mints a token for the logged-in user
/// and shows the xfreerdp command for the host and port the browser used; the `.rdp` file
/// carries the gateway and the token. Refusals (switches off, a missing or wrong CSRF token,
/// a made-up token, a bad gateway address) mint nothing.
#[tokio::test]
async fn connect_through_the_gateway_from_the_remote_desktop_panel() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), true).await;
    let api = Api::login(&server, "admin", ADMIN_PASSWORD).await;
    let created = api
        .ok(
            "POST",
            "/instances",
            Some(json!({"instance": {"name": "desk", "public_address": "198.51.100.7:13389", "internal_address": "10.0.0.7"}})),
        )
        .await;
    let id = created["instance"]["id"].as_str().unwrap().to_owned();
    let panel = format!("/instances/{id}");
    let connect = format!("/instances/{id}/gateway");
    let download = format!("/instances/{id}/gateway-rdp");
    let switches = format!("/instances/{id}/remote-desktop");

    let mut browser = Browser::login(&server, "admin", ADMIN_PASSWORD).await;
    let csrf = browser.csrf().await;

    // Remote Desktop off: the gateway switch shows on, but nothing to connect with.
    let page = browser.get(&panel).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(r#"id="gateway" type="checkbox" name="gateway" value="on" checked"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains("gateway-connect"));
    let r = browser.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!(r.location(), panel);
    assert_eq!(
        browser.flash(&r).await,
        "remote connections to desk are switched off"
    );
    assert!(api.tokens(&id).await.is_empty());

    // Remote Desktop on, gateway access off (the form leaves the unchecked box out).
    let r = browser
        .post_form(
            &switches,
            &[("csrf", &csrf), ("enabled", "on"), ("nla_only", "on")],
        )
        .await;
    assert_eq!(
        browser.flash(&r).await,
        "Remote Desktop is on, NLA only; gateway access is off."
    );
    assert_eq!(
        api.remote_desktop(&id).await,
        json!({"enabled": true, "nla_only": true, "gateway": false})
    );
    let page = browser.get(&panel).await;
    assert!(
        page.body
            .contains(r#"id="gateway" type="checkbox" name="gateway" value="on">"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains("gateway-connect"));
    let r = browser.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!(
        browser.flash(&r).await,
        "gateway access to desk is switched off"
    );
    assert!(api.tokens(&id).await.is_empty());

    // Both on: the Connect form is offered.
    let r = browser
        .post_form(
            &switches,
            &[
                ("csrf", &csrf),
                ("enabled", "on"),
                ("nla_only", "on"),
                ("gateway", "on"),
            ],
        )
        .await;
    assert_eq!(
        browser.flash(&r).await,
        "Remote Desktop is on, NLA only; gateway access is on."
    );
    assert_eq!(
        api.remote_desktop(&id).await,
        json!({"enabled": true, "nla_only": true, "gateway": true})
    );
    let page = browser.get(&panel).await;
    assert!(page
        .body
        .contains(r#"id="gateway" type="checkbox" name="gateway" value="on" checked"#));
    assert!(page.body.contains(&format!(r#"action="{connect}""#)));
    assert!(page.body.contains(r#"id="gateway-connect""#));

    // A form without the CSRF token, or with another, is refused and mints nothing.
    for fields in [vec![], vec![("csrf", "not-the-token")]] {
        let r = browser.post_form(&connect, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{fields:?}: {}", r.body);
        assert!(r.body.contains("this form expired"));
        assert!(!r.body.contains("dpg_"));
    }
    assert!(api.tokens(&id).await.is_empty());

    // Connect: a token of the admin's, the command with the host and port the browser used.
    let r = browser.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers.get(header::CACHE_CONTROL).unwrap(),
        "no-store",
        "the page shows a secret"
    );
    let command = input_value(&r.body, r#"id="cmd-gateway-xfreerdp""#).unwrap();
    let secret = input_value(&r.body, r#"name="token""#).unwrap();
    assert!(secret.starts_with("dpg_"), "{secret}");
    assert_eq!(
        command,
        format!(
            "xfreerdp /v:198.51.100.7:13389 /g:{} /gat:{secret} /gt:http /u:{RDP_USER}",
            server.addr
        )
    );
    assert_eq!(
        input_value(&r.body, r#"name="gateway""#).unwrap(),
        server.addr.to_string()
    );
    let tokens = api.tokens(&id).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["user_name"], "admin");
    assert!(tokens[0]["revoked_at"].is_null());
    assert!(r.body.contains(tokens[0]["id"].as_str().unwrap()));

    // The host the browser names, with its port or 443.
    for (host, gateway) in [
        ("manager.example:8443", "manager.example:8443"),
        ("manager.example", "manager.example:443"),
    ] {
        let r = browser
            .post_form_with(&connect, &[("csrf", &csrf)], Some(host))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let command = input_value(&r.body, r#"id="cmd-gateway-xfreerdp""#).unwrap();
        assert!(
            command.contains(&format!(" /g:{gateway} /gat:dpg_")),
            "{command}"
        );
        assert_eq!(input_value(&r.body, r#"name="gateway""#).unwrap(), gateway);
    }
    assert_eq!(api.tokens(&id).await.len(), 3);

    // The .rdp file: the instance, the gateway, the token.
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &secret),
                ("gateway", "manager.example:8443"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/x-rdp"
    );
    assert_eq!(
        r.headers.get(header::CONTENT_DISPOSITION).unwrap(),
        "attachment; filename=\"desk-gateway.rdp\""
    );
    let (keys, gateway_keys) = rdp_keys(&r.body);
    assert_eq!(keys["full address:s"], "198.51.100.7:13389");
    assert_eq!(keys["username:s"], RDP_USER);
    let expected: BTreeSet<String> = [
        "gatewayhostname:s",
        "gatewayusagemethod:i",
        "gatewayprofileusagemethod:i",
        "gatewaycredentialssource:i",
        "gatewayaccesstoken:s",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(gateway_keys, expected, "{}", r.body);
    assert_eq!(keys["gatewayhostname:s"], "manager.example:8443");
    assert_eq!(keys["gatewayusagemethod:i"], "1");
    assert_eq!(keys["gatewayprofileusagemethod:i"], "1");
    assert_eq!(keys["gatewaycredentialssource:i"], "5");
    assert_eq!(keys["gatewayaccesstoken:s"], secret);

    // Refused downloads: no CSRF token, a wrong one, a made-up token, a gateway address that
    // is not one. None mints a token.
    for fields in [
        vec![
            ("token", secret.as_str()),
            ("gateway", "manager.example:443"),
        ],
        vec![
            ("csrf", "not-the-token"),
            ("token", secret.as_str()),
            ("gateway", "manager.example:443"),
        ],
    ] {
        let r = browser.post_form(&download, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{fields:?}: {}", r.body);
        assert!(!r.body.contains(&secret));
    }
    let made_up = "dpg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", made_up),
                ("gateway", "manager.example:443"),
            ],
        )
        .await;
    assert_eq!(r.location(), panel);
    assert_eq!(browser.flash(&r).await, "the gateway token is not known");
    for gateway in [
        "",
        "manager.example:443\r\nfull address:s:203.0.113.9",
        "a b",
    ] {
        let r = browser
            .post_form(
                &download,
                &[("csrf", &csrf), ("token", &secret), ("gateway", gateway)],
            )
            .await;
        assert_eq!(r.location(), panel, "{gateway:?}");
        assert_eq!(browser.flash(&r).await, "the gateway address is not valid");
    }
    assert_eq!(api.tokens(&id).await.len(), 3);

    // A revoked token no longer downloads.
    let revoke = api.tokens(&id).await[2]["id"].as_str().unwrap().to_owned();
    api.ok("DELETE", &format!("/rdp-tokens/{revoke}"), None)
        .await;
    let r = browser.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = input_value(&r.body, r#"name="token""#).unwrap();
    let tokens = api.tokens(&id).await;
    assert_eq!(tokens.len(), 4);
    api.ok(
        "DELETE",
        &format!("/rdp-tokens/{}", tokens[3]["id"].as_str().unwrap()),
        None,
    )
    .await;
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &fresh),
                ("gateway", "manager.example:443"),
            ],
        )
        .await;
    assert_eq!(browser.flash(&r).await, "the gateway token was revoked");

    // Every token minted here is in the audit log, as the API's are.
    let audit = api
        .ok("GET", "/audit-events?action=instance.rdp_token", None)
        .await;
    assert_eq!(
        audit["audit_events"].as_array().unwrap().len(),
        4,
        "{audit}"
    );

    // Without a session the forms lead to the login page and mint nothing.
    let mut stranger = Browser {
        http: plain_http(),
        base: server.base.clone(),
        cookies: HashMap::new(),
    };
    let r = stranger.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    let r = stranger
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &secret),
                ("gateway", "manager.example:443"),
            ],
        )
        .await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    assert!(!r.body.contains(&secret));
    assert_eq!(api.tokens(&id).await.len(), 4);

    // Gateway access off again: a token already minted no longer downloads, and the Connect
    // action is refused.
    let r = browser
        .post_form(
            &switches,
            &[("csrf", &csrf), ("enabled", "on"), ("nla_only", "on")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(api.remote_desktop(&id).await["gateway"], false);
    let r = browser.post_form(&connect, &[("csrf", &csrf)]).await;
    assert_eq!(r.location(), panel);
    assert_eq!(
        browser.flash(&r).await,
        "gateway access to desk is switched off"
    );
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &secret),
                ("gateway", "manager.example:443"),
            ],
        )
        .await;
    assert_eq!(
        browser.flash(&r).await,
        "gateway access to the instance is switched off"
    );
    assert_eq!(api.tokens(&id).await.len(), 4);
    server.stop().await;
}

/// Whose token downloads where: only the logged-in user's own token for that instance. A
/// reader of the project connects (as the API lets it mint); a user of another project finds
/// no such instance. Every refusal mints nothing.
#[tokio::test]
async fn only_ones_own_token_for_that_instance_downloads() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), true).await;
    let admin = Api::login(&server, "admin", ADMIN_PASSWORD).await;
    let desk = instance(&admin, "desk", "198.51.100.7:13389").await;
    let other = instance(&admin, "other-desk", "198.51.100.8").await;
    let project = admin.ok("GET", &format!("/instances/{desk}"), None).await["instance"]
        ["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol = user(&server, &admin, "carol", &project, "reader").await;
    let elsewhere = admin
        .ok(
            "POST",
            "/projects",
            Some(json!({"project": {"name": "elsewhere"}})),
        )
        .await;
    let elsewhere = elsewhere["project"]["id"].as_str().unwrap().to_owned();
    let _dave = user(&server, &admin, "dave", &elsewhere, "admin").await;
    let instances = [desk.as_str(), other.as_str()];

    // The admin's token for desk.
    let mut admin_browser = Browser::login(&server, "admin", ADMIN_PASSWORD).await;
    let admin_csrf = admin_browser.csrf().await;
    let r = admin_browser
        .post_form(
            &format!("/instances/{desk}/gateway"),
            &[("csrf", &admin_csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let admins = input_value(&r.body, r#"name="token""#).unwrap();

    // Carol, a reader: no switches to change, but Connect is hers.
    let mut browser = Browser::login(&server, "carol", "carol-password").await;
    let csrf = browser.csrf().await;
    let page = browser.get(&format!("/instances/{desk}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(r#"name="gateway" value="on" checked disabled"#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"id="gateway-connect""#));
    let r = browser
        .post_form(
            &format!("/instances/{desk}/remote-desktop"),
            &[("csrf", &csrf), ("enabled", "on"), ("nla_only", "on")],
        )
        .await;
    assert_eq!(
        browser.flash(&r).await,
        "your role in this project is reader; this needs member"
    );
    assert_eq!(admin.remote_desktop(&desk).await["gateway"], true);
    let r = browser
        .post_form(&format!("/instances/{desk}/gateway"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let hers = input_value(&r.body, r#"name="token""#).unwrap();
    let listed = carol.tokens(&desk).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["user_name"], "carol");
    assert_eq!(minted(&admin, &instances).await, 2);
    // Her token for other-desk.
    let r = browser
        .post_form(&format!("/instances/{other}/gateway"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let hers_for_other = input_value(&r.body, r#"name="token""#).unwrap();
    assert_eq!(minted(&admin, &instances).await, 3);

    // Her own token for desk downloads.
    let download = format!("/instances/{desk}/gateway-rdp");
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &hers),
                ("gateway", "gw.example:443"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(rdp_keys(&r.body).0["gatewayaccesstoken:s"], hers);

    // The admin's token, her token of the other instance: refused.
    for token in [&admins, &hers_for_other] {
        let r = browser
            .post_form(
                &download,
                &[
                    ("csrf", &csrf),
                    ("token", token),
                    ("gateway", "gw.example:443"),
                ],
            )
            .await;
        assert_eq!(r.location(), format!("/instances/{desk}"));
        assert!(!r.body.contains(token.as_str()));
        assert_eq!(
            browser.flash(&r).await,
            "that token is not yours for this instance"
        );
    }
    // Nor may the admin download carol's.
    let r = admin_browser
        .post_form(
            &download,
            &[
                ("csrf", &admin_csrf),
                ("token", &hers),
                ("gateway", "gw.example:443"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!r.body.contains(hers.as_str()));
    assert_eq!(minted(&admin, &instances).await, 3);

    // Dave, of another project: desk is not found, to connect or to download.
    let mut browser = Browser::login(&server, "dave", "dave-password").await;
    let csrf = browser.csrf().await;
    let r = browser
        .post_form(&format!("/instances/{desk}/gateway"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), format!("/instances/{desk}"));
    let page = browser.get(r.location()).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("instance not found"), "{}", page.body);
    let r = browser
        .post_form(
            &download,
            &[
                ("csrf", &csrf),
                ("token", &hers),
                ("gateway", "gw.example:443"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!r.body.contains(hers.as_str()));
    assert_eq!(minted(&admin, &instances).await, 3);
    server.stop().await;
}

/// A manager that serves no RD Gateway (plain HTTP, or `rd_gateway` off) offers no Connect
/// through the gateway, whose command and file would point at it, and refuses the action
/// without minting; the switch is there all the same.
#[tokio::test]
async fn no_connect_through_a_gateway_this_manager_does_not_serve() {
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), false).await;
    let api = Api::login(&server, "admin", ADMIN_PASSWORD).await;
    let id = instance(&api, "desk", "198.51.100.7").await;
    assert_eq!(
        api.remote_desktop(&id).await,
        json!({"enabled": true, "nla_only": true, "gateway": true})
    );
    let mut browser = Browser::login(&server, "admin", ADMIN_PASSWORD).await;
    let csrf = browser.csrf().await;
    let page = browser.get(&format!("/instances/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"name="gateway" value="on" checked"#));
    assert!(!page.body.contains("gateway-connect"), "{}", page.body);
    assert!(page.body.contains("This manager serves no RD Gateway"));
    let r = browser
        .post_form(&format!("/instances/{id}/gateway"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), format!("/instances/{id}"));
    assert!(!r.body.contains("dpg_"));
    assert!(browser
        .flash(&r)
        .await
        .starts_with("This manager serves no RD Gateway"));
    assert!(api.tokens(&id).await.is_empty());
    server.stop().await;
}
