//! What the manager's benchmarks share (not a bench target of its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskport_api::v1::{CreateGroup, CreateInstance, CreateRule, ProtocolValue};
use deskport_api::Client;

/// Clients that read at once.
pub const CONNECTIONS: usize = 32;
/// How long each read load lasts.
pub const SECONDS: f64 = 5.0;

/// Requests per second and latency percentiles (p50, p99) of GET `path` under `CONNECTIONS`
/// clients (each its own connection, bearer `token`) for `SECONDS`.
pub async fn load(base: &str, token: &str, path: &str) -> (f64, Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            // reqwest has no TLS provider of its own here (deskport's client configures it).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let url = format!("{base}{path}");
            let token = token.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, pct(&all, 0.5), pct(&all, 0.99))
}

/// The `p` quantile of `sorted`.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The read benchmarks' data set: 8 groups of 10 rules each, 5 instances, created through
/// the API at `base` with `token`.
pub async fn api_data(base: &str, token: &str) {
    let c = Client::new(base, Some(token.to_owned())).unwrap();
    for g in 0..8 {
        let group = c
            .create_group(CreateGroup {
                name: format!("group-{g}"),
                description: String::new(),
                project_id: None,
            })
            .await
            .unwrap();
        for r in 0..10 {
            c.create_rule(CreateRule {
                security_group_id: group.security_group.id,
                protocol: Some(ProtocolValue::Name("tcp".into())),
                port_range_min: Some(1000 + r),
                remote_ip_prefix: Some(format!("10.{g}.{r}.0/24")),
                ..CreateRule::default()
            })
            .await
            .unwrap();
        }
    }
    for i in 0..5 {
        c.create_instance(CreateInstance {
            name: format!("vm-{i}"),
            public_address: format!("198.18.2.{}", 10 + i),
            internal_address: None,
            security_groups: vec!["default".into(), format!("group-{i}")],
            project_id: None,
        })
        .await
        .unwrap();
    }
}
