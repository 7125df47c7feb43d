//! The manager under load, on SQLite (SPEC §7: >= 5,000 API reads/s with p99 <= 20 ms on these
//! 2-core machines), and the time from a rule change to a firewall agent enforcing it (target
//! p99 <= 100 ms).
//!
//! Run: `cargo bench -p deskport-manager --bench api`. The manager runs in this process on its
//! own 2-worker runtime; the load generator (32 keep-alive connections) on another. The
//! baseline in the same run is `/healthz`, which touches no database. Lines starting with
//! `BENCH|` are read by `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use deskport_api::v1::{CreateInstance, CreateRule, ProtocolValue, TokenRequest};
use deskport_api::Client;
use deskport_firewall::agent::{self, AgentConfig, Backend, Source};
use deskport_firewall::{Gateway, GatewayConfig};
use deskport_manager::ManagerConfig;
use support::{CONNECTIONS, SECONDS};

/// Requests per second and latency percentiles of GET `path` ([`support::load`]).
fn load(
    rt: &tokio::runtime::Runtime,
    base: &str,
    token: &str,
    path: &str,
) -> (f64, Duration, Duration) {
    rt.block_on(support::load(base, token, path))
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"api".contains(&a))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ManagerConfig {
        data_dir: dir.path().to_owned(),
        ..ManagerConfig::default()
    };
    let base = server_rt.block_on(async {
        let store = deskport_manager::open_store(&config).await.unwrap();
        deskport_manager::bootstrap(&store, Some("bench-password".into()))
            .await
            .unwrap();
        let app = deskport_manager::app(deskport_manager::state(store, &config), config.body_limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(deskport_manager::serve(
            listener,
            app,
            std::future::pending(),
        ));
        format!("http://{addr}")
    });

    // A realistic project: 8 groups of 10 rules each, 5 instances.
    let token = client_rt.block_on(async {
        let c = Client::new(&base, None).unwrap();
        let token = c
            .token(&TokenRequest {
                username: "admin".into(),
                password: "bench-password".into(),
                name: None,
            })
            .await
            .unwrap()
            .token;
        support::api_data(&base, &token).await;
        token
    });

    let _ = load(&client_rt, &base, &token, "/healthz");
    let (base_rps, base_p50, base_p99) = load(&client_rt, &base, &token, "/healthz");
    println!(
        "GET /healthz (no database): {base_rps:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        base_p50.as_secs_f64() * 1e3,
        base_p99.as_secs_f64() * 1e3
    );
    for path in ["/api/v1/security-groups", "/api/v1/instances"] {
        let (rps, p50, p99) = load(&client_rt, &base, &token, path);
        println!(
            "GET {path}: {rps:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms ({CONNECTIONS} connections, {SECONDS} s; target >= 5000/s, p99 <= 20 ms)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!("BENCH|manager reads/s, GET {path}|{rps:.0}|req/s|{base_rps:.0}|req/s GET /healthz|higher");
        println!(
            "BENCH|manager p99 latency, GET {path}|{:.2}|ms|{:.2}|ms GET /healthz|lower",
            p99.as_secs_f64() * 1e3,
            base_p99.as_secs_f64() * 1e3
        );
    }

    // Rule change → enforced by a gateway agent following the feed.
    let gateway = Gateway::new(GatewayConfig::default());
    let (agent_token, group_id) = client_rt.block_on(async {
        let c = Client::new(&base, Some(token.clone())).unwrap();
        let created = c
            .create_instance(CreateInstance {
                name: "agent-bench".into(),
                public_address: "127.0.0.1:1".into(),
                internal_address: None,
                security_groups: vec![],
                project_id: None,
            })
            .await
            .unwrap();
        let groups = c.groups().await.unwrap();
        let default = groups
            .security_groups
            .iter()
            .find(|g| g.name == "default")
            .unwrap()
            .id;
        (created.agent_token, default)
    });
    {
        let (gateway, urls) = (gateway.clone(), vec![base.clone()]);
        let state = dir.path().join("agent-state.json");
        server_rt.spawn(async move {
            agent::run(
                AgentConfig {
                    source: Source::Manager {
                        urls,
                        token: agent_token,
                        state,
                        trust: None,
                    },
                    backend: Backend::Gateway(gateway),
                    poll_interval: Duration::from_millis(100),
                    metrics_listen: None,
                    remove_on_stop: false,
                },
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    }
    let c = Client::new(&base, Some(token)).unwrap();
    let mut latencies = Vec::new();
    client_rt.block_on(async {
        while gateway.revision() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..60u16 {
            let t = Instant::now();
            let rule = c
                .create_rule(CreateRule {
                    security_group_id: group_id,
                    protocol: Some(ProtocolValue::Name("tcp".into())),
                    port_range_min: Some(20000 + i64::from(i)),
                    remote_ip_prefix: Some("127.0.0.2/32".into()),
                    ..CreateRule::default()
                })
                .await
                .unwrap();
            // The manager's revision right after the change; the agent must reach it.
            let target: u64 = reqwest::get(format!("{base}/healthz"))
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["revision"]
                .as_u64()
                .unwrap();
            while gateway.revision() < target {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies.push(t.elapsed());
            c.delete_rule(rule.security_group_rule.id).await.unwrap();
        }
    });
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    println!(
        "rule change -> enforced by the gateway agent (60 changes, from the API call): p50 {:.1} ms, p99 {:.1} ms (target p99 <= 100 ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "BENCH|rule change to enforcement p99|{:.1}|ms|100|ms target|lower",
        p99.as_secs_f64() * 1e3
    );
}
