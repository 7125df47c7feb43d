//! What PostgreSQL adds to the conformance suite: several stores (manager replicas) on one
//! database — each sees the others' changes, also those committed while it could not listen, and
//! loads the policy once per revision however many agents wait —
//! one of them leads the periodic jobs, and opening refuses a bad URL, an unreachable server
//! and a newer schema, leaving the database as it was. A cluster of the test's own each time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use deskport_policy::{Quota, RuleSpec};
use deskport_store::{Actor, PostgresBackend, Principal, Role, Store, StoreError, LISTENER_NAME};
use deskport_testsupport::Postgres;

fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        source: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(url: &str) -> Store {
    Store::new(PostgresBackend::open(url).await.unwrap())
        .await
        .unwrap()
}

/// Polls `check` until it is true, or panics after 10 s saying `what`.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rdp_from(cidr: &str) -> RuleSpec {
    RuleSpec {
        template: Some("rdp".into()),
        remote_ip_prefix: Some(cidr.into()),
        ..RuleSpec::default()
    }
}

/// A change through one store reaches the other's subscribers, reads and caches: a new rule
/// (the revision), a revoked token, a changed role, an agent's report.
#[test]
fn each_store_sees_the_others_changes() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("replicas");
    runtime().block_on(async {
        let a = open(&url).await;
        let b = open(&url).await;
        let boot = a.bootstrap("hash").await.unwrap();
        let d = boot.default_project;
        let carol = a.create_user(&alice(), "carol", "h", false).await.unwrap();
        a.set_membership(&alice(), d, carol.id, Role::Member)
            .await
            .unwrap();
        a.create_api_token(&alice(), carol.id, "laptop", "carol-token")
            .await
            .unwrap();
        let instance = a
            .create_instance(
                &alice(),
                &deskport_store::NewInstance {
                    project_id: d,
                    name: "desk".into(),
                    public_address: "198.51.100.1".parse().unwrap(),
                    public_rdp_port: 3389,
                    internal_address: None,
                    rdp_port: 3389,
                    groups: vec![],
                    agent_token_hash: "agent-token".into(),
                },
            )
            .await
            .unwrap();

        // B's copies are warm: groups, instances, token owners.
        let default = b.list_groups(&[d]).await.unwrap()[0].clone();
        assert_eq!(b.list_instances(&[d]).await.unwrap().len(), 1);
        let role = |p: Option<Principal>| match p {
            Some(Principal::User(u)) => u.role_in(d),
            _ => None,
        };
        assert_eq!(
            role(b.principal_by_token("carol-token").await.unwrap()),
            Some(Role::Member)
        );

        let mut on_b = b.subscribe();
        let before = *on_b.borrow_and_update();
        let (rule, _) = a
            .create_rule(
                &alice(),
                default.group.id,
                &rdp_from("192.0.2.0/24"),
                Quota::default(),
            )
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), on_b.wait_for(|r| *r > before))
            .await
            .expect("B hears of A's change")
            .map(|r| *r)
            .unwrap();
        assert_eq!(seen, a.revision().await.unwrap());
        assert!(b
            .group(&[d], default.group.id)
            .await
            .unwrap()
            .group
            .rules
            .contains(&rule.rule));
        let state = b.agent_state(d, Some(instance.id)).await.unwrap();
        assert_eq!(state.revision, seen);

        a.set_membership(&alice(), d, carol.id, Role::Reader)
            .await
            .unwrap();
        eventually("B to see carol's new role", || async {
            role(b.principal_by_token("carol-token").await.unwrap()) == Some(Role::Reader)
        })
        .await;
        let token = a.list_api_tokens(carol.id).await.unwrap()[0].id;
        a.delete_api_token(&alice(), carol.id, token).await.unwrap();
        eventually("B to refuse the revoked token", || async {
            b.principal_by_token("carol-token").await.unwrap().is_none()
        })
        .await;

        a.report_agent(instance.id, Some("ab:cd"), Some(seen))
            .await
            .unwrap();
        eventually("B to show the agent's report", || async {
            b.instance(&[d], instance.id)
                .await
                .unwrap()
                .cert_fingerprint
                .as_deref()
                == Some("ab:cd")
        })
        .await;
        assert_eq!(b.stats().listening, Some(true));
        assert_eq!(b.stats().listener_losses, 0);
    });
}

/// The listening connections are terminated from PostgreSQL and cannot come back for a while;
/// changes committed meanwhile through A are not announced to B, yet B uses no copy while it
/// cannot listen, and once it listens again it reads the revision again: its subscribers get
/// the change. (Each store has one connection for reads and writes, opened at start, so that
/// they work on while the role may open no new one.)
#[test]
fn a_change_made_while_the_listener_is_lost_still_arrives() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("lost");
    let open = |url: String| async move {
        let backend = PostgresBackend::open_with_connections(&url, 1)
            .await
            .unwrap();
        Store::new(backend).await.unwrap()
    };
    runtime().block_on(async {
        let a = open(url.clone()).await;
        let b = open(url.clone()).await;
        let boot = a.bootstrap("hash").await.unwrap();
        let d = boot.default_project;
        a.create_api_token(&alice(), boot.admin, "laptop", "admin-token")
            .await
            .unwrap();
        let default = b.list_groups(&[d]).await.unwrap()[0].clone();
        assert!(b.principal_by_token("admin-token").await.unwrap().is_some());
        let before = b.revision().await.unwrap();

        // No new connection for the role (the pools keep theirs), then no listener.
        pg.psql("postgres", "ALTER ROLE deskport CONNECTION LIMIT 0");
        pg.psql(
            "lost",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{LISTENER_NAME}'"
            ),
        );
        eventually("B to notice", || async { b.stats().listening == Some(false) }).await;
        let listeners = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{LISTENER_NAME}'"
        );
        eventually("the listeners to be gone", || async {
            pg.psql("lost", &listeners).trim() == "0"
        })
        .await;

        let (rule, _) = a
            .create_rule(&alice(), default.group.id, &rdp_from("192.0.2.0/24"), Quota::default())
            .await
            .unwrap();
        let after = a.revision().await.unwrap();
        assert!(after > before);
        let token = a.list_api_tokens(boot.admin).await.unwrap()[0].id;
        a.delete_api_token(&alice(), boot.admin, token).await.unwrap();
        assert_eq!(b.revision().await.unwrap(), before, "nothing told B");
        assert_eq!(
            b.principal_by_token("admin-token").await.unwrap(),
            None,
            "B reads the database, not its copy, while it cannot listen"
        );

        let mut on_b = b.subscribe();
        pg.psql("postgres", "ALTER ROLE deskport CONNECTION LIMIT -1");
        let seen = tokio::time::timeout(Duration::from_secs(20), on_b.wait_for(|r| *r >= after))
            .await
            .expect("B reads the revision again once it listens")
            .map(|r| *r)
            .unwrap();
        assert_eq!(seen, after);
        eventually("B to listen again", || async { b.stats().listening == Some(true) }).await;
        assert_eq!(b.stats().listener_losses, 1);
        assert!(b
            .group(&[d], default.group.id)
            .await
            .unwrap()
            .group
            .rules
            .contains(&rule.rule));

        // And it hears again.
        a.delete_rule(&alice(), rule.rule.id).await.unwrap();
        let latest = a.revision().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), on_b.wait_for(|r| *r >= latest))
            .await
            .expect("B hears of A's next change")
            .unwrap();
    });
}

/// One store of those on a database leads the periodic jobs; when it goes, another takes over.
#[test]
fn one_store_leads_the_periodic_jobs() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("lead");
    runtime().block_on(async {
        let limits = deskport_policy::throttle::Limits::default();
        let now = deskport_policy::unix_ms(std::time::SystemTime::now());
        let a = open(&url).await;
        let b = open(&url).await;
        a.bootstrap("hash").await.unwrap();
        assert!(
            a.janitor(&limits, now).await.unwrap(),
            "the first to ask leads"
        );
        assert!(!b.janitor(&limits, now).await.unwrap());
        assert!(a.janitor(&limits, now).await.unwrap(), "and keeps leading");
        assert!(!b.janitor(&limits, now).await.unwrap());
        drop(a);
        eventually("B to take over", || async {
            b.janitor(&limits, now).await.unwrap()
        })
        .await;
    });
}

/// A bad URL and an unreachable server are refused with what is wrong, never the password.
#[test]
fn bad_urls_and_unreachable_servers_are_refused() {
    runtime().block_on(async {
        for url in ["mysql://db/deskport", "postgres://u@127.0.0.1:notaport/db"] {
            match PostgresBackend::open(url).await {
                Err(StoreError::BadUrl(reason)) => assert!(!reason.is_empty()),
                other => panic!("{url}: expected a bad URL, got {other:?}"),
            }
        }
        let port = deskport_testsupport::free_port(std::net::Ipv4Addr::LOCALHOST.into());
        let url = format!("postgres://u:secret@127.0.0.1:{port}/db");
        let err = PostgresBackend::open(&url).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        assert!(
            message.contains(&format!("127.0.0.1:{port}/db")),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    });
}

/// A database migrated by a newer deskport (a version this one does not know) is refused and
/// left as it is; a migration that fails half-way is rolled back whole.
#[test]
fn newer_schemas_are_refused_and_failed_migrations_change_nothing() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("schema");
    let versions = "SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations";
    runtime().block_on(async {
        drop(open(&url).await);
        assert_eq!(pg.psql("schema", versions).trim(), "1,2,3");

        pg.psql(
            "schema",
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99, 'from the future', true, '\\x00', 0)",
        );
        match PostgresBackend::open(&url).await {
            Err(StoreError::NewerSchema { found, known }) => assert_eq!((found, known), (99, 3)),
            other => panic!("expected a newer schema, got {other:?}"),
        }
        assert_eq!(pg.psql("schema", versions).trim(), "1,2,3,99");
        pg.psql("schema", "DELETE FROM _sqlx_migrations WHERE version = 99");

        // Back to version 1, with the name of migration 2's second statement taken.
        pg.psql(
            "schema",
            "DROP TABLE gateway_tokens; ALTER TABLE instances DROP COLUMN rdp_gateway;
             DROP TABLE login_attempts; DROP INDEX sessions_by_expiry;
             DELETE FROM _sqlx_migrations WHERE version IN (2, 3);
             CREATE TABLE squatter (x BIGINT); CREATE INDEX login_attempts_by_last ON squatter (x)",
        );
        let err = PostgresBackend::open(&url).await.unwrap_err();
        assert!(matches!(err, StoreError::Migrate(_)), "{err:?}");
        assert_eq!(pg.psql("schema", versions).trim(), "1");
        assert_eq!(
            pg.psql("schema", "SELECT to_regclass('login_attempts') IS NULL")
                .trim(),
            "t",
            "the table migration 2 made first is gone with the failure"
        );
        pg.psql("schema", "DROP TABLE squatter");
        drop(open(&url).await);
        assert_eq!(pg.psql("schema", versions).trim(), "1,2,3");
    });
}

/// Many agents wait on replica B for the next revision; a change committed through A wakes
/// them all, and B reads the policy for that revision from the database once between them.
#[test]
fn a_replica_loads_the_policy_once_per_revision_however_many_wait() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("fanout");
    runtime().block_on(async {
        let a = open(&url).await;
        let b = std::sync::Arc::new(open(&url).await);
        let boot = a.bootstrap("hash").await.unwrap();
        let d = boot.default_project;
        let default = b.list_groups(&[d]).await.unwrap()[0].clone();
        let before = b.agent_state(d, None).await.unwrap().revision;
        let loads = b.stats().policy_loads;

        let waiting: Vec<_> = (0..200)
            .map(|_| {
                let mut revisions = b.subscribe();
                let b = b.clone();
                tokio::spawn(async move {
                    revisions.wait_for(|r| *r > before).await.unwrap();
                    b.agent_state(d, None).await.unwrap()
                })
            })
            .collect();
        let (rule, _) = a
            .create_rule(
                &alice(),
                default.group.id,
                &rdp_from("192.0.2.0/24"),
                Quota::default(),
            )
            .await
            .unwrap();
        let after = a.revision().await.unwrap();
        for agent in waiting {
            let state = tokio::time::timeout(Duration::from_secs(10), agent)
                .await
                .expect("every agent wakes")
                .unwrap();
            assert_eq!(state.revision, after);
            assert!(state.policy.groups[0].rules.contains(&rule.rule));
        }
        assert_eq!(
            b.stats().policy_loads - loads,
            1,
            "one load for the revision, however many agents"
        );
    });
}

/// A grant changed through replica A moves replica B's `access_changes` (through the notices),
/// and B's recheck of a live tunnel then sees it.
#[test]
fn another_replicas_grant_changes_reach_live_tunnels() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("grants");
    runtime().block_on(async {
        let a = open(&url).await;
        let b = open(&url).await;
        let boot = a.bootstrap("hash").await.unwrap();
        let d = boot.default_project;
        let new = deskport_store::NewInstance {
            project_id: d,
            name: "desk".into(),
            public_address: "198.51.100.1".parse().unwrap(),
            public_rdp_port: 3389,
            internal_address: None,
            rdp_port: 3389,
            groups: Vec::new(),
            agent_token_hash: "agent".into(),
        };
        let desk = a.create_instance(&alice(), &new).await.unwrap();
        a.set_remote_desktop(&alice(), desk.id, Some(true), None, None)
            .await
            .unwrap();
        let (token, secret) = a
            .mint_gateway_token(&alice(), boot.admin, desk.id, Duration::from_secs(300))
            .await
            .unwrap();
        assert!(b.gateway_grant(&secret).await.unwrap().is_ok());
        let mut changes = b.access_changes();
        changes.borrow_and_update();
        a.revoke_gateway_token(&alice(), &[d], token.id)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("B hears of the revocation")
            .unwrap();
        let refused = b.recheck_grant(token.id).await.unwrap().unwrap_err();
        assert_eq!(refused.reason, deskport_store::GrantRefusal::Revoked);
    });
}
