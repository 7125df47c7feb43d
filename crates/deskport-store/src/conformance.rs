//! The conformance suite: stories that every [`Backend`] must pass, each run on a fresh
//! [`Store`] over a new, empty database. They use the store's public operations only and
//! check what comes back (records, error codes and fields, audit wording, the revision), so
//! two backends that pass them behave alike for the manager.
//!
//! A backend's test file is one line; the opener returns the backend and a guard kept until
//! the story ends (a temporary directory, a database server of the test's own). No backend
//! (`None`) skips the story: only when the environment asks to skip that database (its fixture
//! says so, e.g. `DESKPORT_SKIP_POSTGRES=1`); a server that is missing fails the story.
//!
//! ```ignore
//! deskport_store::conformance_tests!(sqlite, || async {
//!     let dir = deskport_testsupport::data_dir();
//!     let backend = SqliteBackend::open(&dir.path().join("deskport.db")).await.unwrap();
//!     (Some(backend), dir)
//! });
//! ```

// The suite's assertions panic by design, like any test's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::IpAddr;

use deskport_policy::throttle::Limits;
use deskport_policy::{
    proto, Cidr, Direction, ErrorCode, Ethertype, GroupId, Member, PortRange, Protocol, Quota,
    Remote, RuleId, RuleSpec, Service, L4,
};
use uuid::Uuid;

use crate::audit::rule_summary;
use crate::{
    Actor, AuditEvent, AuditFilter, Backend, Bootstrap, GatewayEvent, GrantRefusal, GroupRecord,
    Instance, Membership, NewInstance, Principal, Refused, Role, Store, StoreError,
};

/// One test per story for the backend `$open` makes: `conformance_tests!(name, opener)`,
/// where the opener is a closure returning a future of `(Option<backend>, guard)`.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $open:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@stories $open;
                bootstrap_is_idempotent,
                users_and_passwords,
                memberships,
                api_tokens_and_principals,
                sessions_expire_and_end,
                login_throttling,
                janitor,
                projects,
                groups,
                groups_in_use,
                rules,
                rule_validation,
                instances,
                agent_reports,
                audit_filters,
                revision_subscribers,
                agent_state,
                tenancy,
                gateway_tokens,
                gateway_grants,
                gateway_access_changes,
            );
        }
    };
    (@stories $open:expr; $($story:ident),* $(,)?) => {
        $(
            #[test]
            fn $story() {
                $crate::conformance::run($open, $crate::conformance::$story);
            }
        )*
    };
}

/// Opens a backend with `open`, runs `story` on a store over it, then drops the store and
/// the guard.
pub fn run<B, G, Open, Opened, Story, Done>(open: Open, story: Story)
where
    B: Backend,
    Open: FnOnce() -> Opened,
    Opened: Future<Output = (Option<B>, G)>,
    Story: FnOnce(Store) -> Done,
    Done: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (backend, guard) = open().await;
        if let Some(backend) = backend {
            let store = Store::new(backend).await.expect("a store over the backend");
            story(store).await;
        }
        drop(guard);
    });
}

// ---- helpers ----

const HOUR: i64 = 3_600_000;

fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        source: Some("192.0.2.1".into()),
    }
}

fn bob() -> Actor {
    Actor {
        name: "bob".into(),
        source: Some("192.0.2.2".into()),
    }
}

fn now() -> i64 {
    deskport_policy::unix_ms(std::time::SystemTime::now())
}

fn every(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

fn by_action(action: &str) -> AuditFilter {
    AuditFilter {
        action: Some(action.to_owned()),
        limit: 1000,
        ..AuditFilter::default()
    }
}

async fn boot(store: &Store) -> Bootstrap {
    store.bootstrap("admin-hash").await.unwrap()
}

/// Runs `change`, checking that the revision moved by one and subscribers saw it
/// (`moves`), or that it stayed.
async fn revision_after<T>(store: &Store, moves: bool, change: impl Future<Output = T>) -> T {
    let mut seen = store.subscribe();
    seen.borrow_and_update();
    let before = store.revision().await.unwrap();
    let out = change.await;
    let after = store.revision().await.unwrap();
    if moves {
        assert_eq!(after, before + 1, "the revision moves by one");
        assert!(
            seen.has_changed().unwrap(),
            "subscribers see the new revision"
        );
        assert_eq!(*seen.borrow_and_update(), after);
    } else {
        assert_eq!(after, before, "the revision stays");
        assert!(!seen.has_changed().unwrap(), "subscribers are not woken");
    }
    out
}

/// The newest event of `action`, among every event.
async fn last_event(store: &Store, action: &str) -> AuditEvent {
    store
        .list_audit_all(&by_action(action))
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {action} event"))
}

/// Checks the newest event of `action`: who, from where, about what, and its summary.
async fn assert_event(
    store: &Store,
    action: &str,
    by: &Actor,
    project: Option<Uuid>,
    target: (&str, String),
    summary: &str,
) {
    let e = last_event(store, action).await;
    assert_eq!(e.actor, by.name, "{action}");
    assert_eq!(e.source, by.source, "{action}");
    assert_eq!(e.project_id, project, "{action}");
    assert_eq!(
        (e.target_type.as_str(), e.target_id),
        (target.0, Some(target.1)),
        "{action}"
    );
    assert_eq!(e.summary, summary, "{action}");
    assert!(e.created_at > 0);
}

fn assert_not_found(err: StoreError, what: &str) {
    match err {
        StoreError::NotFound { what: w } => assert_eq!(w, what),
        other => panic!("expected {what} not found, got {other:?}"),
    }
}

fn assert_conflict(err: StoreError, code: &str, field: Option<&str>) -> String {
    match err {
        StoreError::Conflict {
            code: c,
            field: f,
            message,
        } => {
            assert_eq!((c, f), (code, field), "{message}");
            message
        }
        other => panic!("expected conflict {code}, got {other:?}"),
    }
}

/// The codes and fields of a rejection, in order.
fn rejected(err: StoreError) -> Vec<(ErrorCode, Option<&'static str>)> {
    match err {
        StoreError::Rejected(r) => r.0.iter().map(|e| (e.code, e.field)).collect(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn tcp(port: i64, cidr: &str) -> RuleSpec {
    RuleSpec {
        protocol: Some("tcp".into()),
        port_range_min: Some(port),
        remote_ip_prefix: Some(cidr.into()),
        ..RuleSpec::default()
    }
}

fn new_instance(project: Uuid, name: &str, address: &str, groups: Vec<GroupId>) -> NewInstance {
    NewInstance {
        project_id: project,
        name: name.to_owned(),
        public_address: address.parse().unwrap(),
        public_rdp_port: 3389,
        internal_address: None,
        rdp_port: 3389,
        groups,
        agent_token_hash: format!("agent-{name}-{project}"),
    }
}

async fn default_group(store: &Store, project: Uuid) -> GroupRecord {
    store
        .list_groups(&[project])
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.group.name == "default")
        .unwrap()
}

/// A project's `default` group: ingress TCP 80 and 443 from everywhere, then egress
/// everything, IPv4 before IPv6.
fn assert_default_group(record: &GroupRecord) {
    assert_eq!(record.group.name, "default");
    assert_eq!(record.group.description, "Default security group");
    let summaries: Vec<String> = record.group.rules.iter().map(rule_summary).collect();
    assert_eq!(
        summaries,
        [
            "ingress IPv4 tcp port 80 from 0.0.0.0/0",
            "ingress IPv4 tcp port 443 from 0.0.0.0/0",
            "ingress IPv6 tcp port 80 from ::/0",
            "ingress IPv6 tcp port 443 from ::/0",
            "egress IPv4 any to 0.0.0.0/0",
            "egress IPv6 any to ::/0",
        ]
    );
    assert!(record
        .group
        .rules
        .iter()
        .all(|r| r.group == record.group.id));
}

// ---- stories ----

/// The first bootstrap makes the `default` project with its group and the administrator;
/// later ones change nothing.
pub async fn bootstrap_is_idempotent(store: Store) {
    let first = revision_after(&store, true, store.bootstrap("hash-1"))
        .await
        .unwrap();
    assert!(first.created);
    let again = revision_after(&store, false, store.bootstrap("hash-2"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Bootstrap {
            created: false,
            ..first.clone()
        }
    );

    let (admin, hash) = store.user_auth("admin").await.unwrap().unwrap();
    assert_eq!(hash, "hash-1", "a second bootstrap keeps the password");
    assert_eq!(admin.id, first.admin);
    assert!(admin.is_admin);
    assert_eq!(
        admin.memberships,
        [Membership {
            project_id: first.default_project,
            project_name: "default".into(),
            role: Role::Admin,
        }]
    );
    let visible = [first.default_project];
    let project = store
        .project(&visible, first.default_project)
        .await
        .unwrap();
    assert_eq!(
        (project.name.as_str(), project.description.as_str()),
        ("default", "Default project")
    );
    let groups = store.list_groups(&visible).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_default_group(&groups[0]);
    assert_eq!(store.list_audit_all(&every(100)).await.unwrap().len(), 1);
    let system = Actor {
        name: "system".into(),
        source: None,
    };
    assert_event(
        &store,
        "project.create",
        &system,
        Some(first.default_project),
        ("project", first.default_project.to_string()),
        "default project and admin user created",
    )
    .await;
}

/// Users: unique names, password hashes, `admin` undeletable; a password change ends the
/// user's sessions. None of it moves the revision.
pub async fn users_and_passwords(store: Store) {
    let b = boot(&store).await;
    let carol = revision_after(
        &store,
        false,
        store.create_user(&alice(), "carol", "carol-hash", false),
    )
    .await
    .unwrap();
    assert_eq!((carol.name.as_str(), carol.is_admin), ("carol", false));
    assert!(carol.memberships.is_empty());
    assert_event(
        &store,
        "user.create",
        &alice(),
        None,
        ("user", carol.id.to_string()),
        "user carol",
    )
    .await;
    let err = store
        .create_user(&alice(), "carol", "other", false)
        .await
        .unwrap_err();
    assert_conflict(err, "duplicate_user_name", Some("name"));
    let dave = store
        .create_user(&alice(), "Dave", "dave-hash", true)
        .await
        .unwrap();
    assert!(dave.is_admin);
    assert_event(
        &store,
        "user.create",
        &alice(),
        None,
        ("user", dave.id.to_string()),
        "user Dave (administrator)",
    )
    .await;

    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Dave", "admin", "carol"], "by name, bytewise");
    assert_eq!(store.user(carol.id).await.unwrap(), carol);
    assert_eq!(
        store.user_auth("carol").await.unwrap(),
        Some((carol.clone(), "carol-hash".into()))
    );
    assert_eq!(store.user_auth("nobody").await.unwrap(), None);
    assert_not_found(store.user(Uuid::new_v4()).await.unwrap_err(), "user");

    store
        .create_session(carol.id, "carol-session", "csrf", now() + HOUR)
        .await
        .unwrap();
    store
        .create_session(b.admin, "admin-session", "csrf", now() + HOUR)
        .await
        .unwrap();
    revision_after(
        &store,
        false,
        store.set_password(&alice(), carol.id, "new-hash"),
    )
    .await
    .unwrap();
    assert_eq!(
        store.user_auth("carol").await.unwrap().unwrap().1,
        "new-hash"
    );
    assert_eq!(store.session("carol-session", now()).await.unwrap(), None);
    assert!(store
        .session("admin-session", now())
        .await
        .unwrap()
        .is_some());
    assert_event(
        &store,
        "user.password",
        &alice(),
        None,
        ("user", carol.id.to_string()),
        "password changed",
    )
    .await;
    assert_not_found(
        store
            .set_password(&alice(), Uuid::new_v4(), "x")
            .await
            .unwrap_err(),
        "user",
    );

    let err = store.delete_user(&alice(), b.admin).await.unwrap_err();
    assert_conflict(err, "admin_undeletable", None);
    revision_after(&store, false, store.delete_user(&alice(), carol.id))
        .await
        .unwrap();
    assert_not_found(store.user(carol.id).await.unwrap_err(), "user");
    assert_eq!(store.user_auth("carol").await.unwrap(), None);
    assert_event(
        &store,
        "user.delete",
        &alice(),
        None,
        ("user", carol.id.to_string()),
        "user carol",
    )
    .await;
    assert_not_found(
        store.delete_user(&alice(), carol.id).await.unwrap_err(),
        "user",
    );
}

/// Memberships: set (and change) a role, listed by project name; remove.
pub async fn memberships(store: Store) {
    let b = boot(&store).await;
    let second = store
        .create_project(&alice(), "second", "", b.admin)
        .await
        .unwrap();
    let carol = store
        .create_user(&alice(), "carol", "h", false)
        .await
        .unwrap();
    revision_after(
        &store,
        false,
        store.set_membership(&alice(), second.id, carol.id, Role::Member),
    )
    .await
    .unwrap();
    assert_event(
        &store,
        "membership.set",
        &alice(),
        Some(second.id),
        ("user", carol.id.to_string()),
        "role member",
    )
    .await;
    store
        .set_membership(&alice(), second.id, carol.id, Role::Reader)
        .await
        .unwrap();
    store
        .set_membership(&alice(), b.default_project, carol.id, Role::Admin)
        .await
        .unwrap();
    let carol = store.user(carol.id).await.unwrap();
    assert_eq!(
        carol.memberships,
        [
            Membership {
                project_id: b.default_project,
                project_name: "default".into(),
                role: Role::Admin,
            },
            Membership {
                project_id: second.id,
                project_name: "second".into(),
                role: Role::Reader,
            },
        ]
    );
    assert_eq!(carol.role_in(second.id), Some(Role::Reader));
    assert_eq!(
        last_event(&store, "membership.set").await.summary,
        "role admin"
    );
    let err = store
        .set_membership(&alice(), Uuid::new_v4(), carol.id, Role::Member)
        .await
        .unwrap_err();
    assert_not_found(err, "user or project");
    let err = store
        .set_membership(&alice(), second.id, Uuid::new_v4(), Role::Member)
        .await
        .unwrap_err();
    assert_not_found(err, "user or project");

    revision_after(
        &store,
        false,
        store.remove_membership(&alice(), second.id, carol.id),
    )
    .await
    .unwrap();
    assert_eq!(store.user(carol.id).await.unwrap().role_in(second.id), None);
    assert_event(
        &store,
        "membership.delete",
        &alice(),
        Some(second.id),
        ("user", carol.id.to_string()),
        "removed from the project",
    )
    .await;
    let err = store
        .remove_membership(&alice(), second.id, carol.id)
        .await
        .unwrap_err();
    assert_not_found(err, "membership");
}

/// API tokens and agent tokens identify their owner; what is revoked or changed is seen at
/// once, cache or not.
pub async fn api_tokens_and_principals(store: Store) {
    let b = boot(&store).await;
    let carol = store
        .create_user(&alice(), "carol", "h", false)
        .await
        .unwrap();
    store
        .set_membership(&alice(), b.default_project, carol.id, Role::Member)
        .await
        .unwrap();
    let token = revision_after(
        &store,
        false,
        store.create_api_token(&bob(), carol.id, "laptop", "token-hash"),
    )
    .await
    .unwrap();
    assert_eq!((token.user_id, token.name.as_str()), (carol.id, "laptop"));
    assert_event(
        &store,
        "token.create",
        &bob(),
        None,
        ("token", token.id.to_string()),
        "API token \"laptop\"",
    )
    .await;
    assert_eq!(
        store.list_api_tokens(carol.id).await.unwrap(),
        std::slice::from_ref(&token)
    );
    let user = |p: Option<Principal>| match p {
        Some(Principal::User(u)) => u,
        other => panic!("expected a user, got {other:?}"),
    };
    let found = user(store.principal_by_token("token-hash").await.unwrap());
    assert_eq!(found.id, carol.id);
    assert_eq!(found.role_in(b.default_project), Some(Role::Member));
    // Asked again after a change of role: the new role.
    store
        .set_membership(&alice(), b.default_project, carol.id, Role::Reader)
        .await
        .unwrap();
    let found = user(store.principal_by_token("token-hash").await.unwrap());
    assert_eq!(found.role_in(b.default_project), Some(Role::Reader));
    assert_eq!(store.principal_by_token("nope").await.unwrap(), None);

    let instance = store
        .create_instance(
            &alice(),
            &new_instance(b.default_project, "desk", "198.51.100.1", vec![]),
        )
        .await
        .unwrap();
    let agent_hash = format!("agent-desk-{}", b.default_project);
    assert_eq!(
        store.principal_by_token(&agent_hash).await.unwrap(),
        Some(Principal::Agent {
            instance_id: instance.id,
            project_id: b.default_project,
        })
    );

    let err = store
        .delete_api_token(&alice(), b.admin, token.id)
        .await
        .unwrap_err();
    assert_not_found(err, "token");
    revision_after(
        &store,
        false,
        store.delete_api_token(&bob(), carol.id, token.id),
    )
    .await
    .unwrap();
    assert_eq!(store.principal_by_token("token-hash").await.unwrap(), None);
    assert!(store.list_api_tokens(carol.id).await.unwrap().is_empty());
    assert_event(
        &store,
        "token.delete",
        &bob(),
        None,
        ("token", token.id.to_string()),
        "API token revoked",
    )
    .await;
    store.delete_instance(&alice(), instance.id).await.unwrap();
    assert_eq!(store.principal_by_token(&agent_hash).await.unwrap(), None);
    let err = store
        .create_api_token(&alice(), Uuid::new_v4(), "x", "other-hash")
        .await
        .unwrap_err();
    assert_not_found(err, "user");
}

/// Sessions are valid until they expire, end when deleted, and expired ones are forgotten
/// when a new one starts. They are not audited and do not move the revision.
pub async fn sessions_expire_and_end(store: Store) {
    let b = boot(&store).await;
    let events = store.list_audit_all(&every(1000)).await.unwrap().len();
    let t = now();
    revision_after(
        &store,
        false,
        store.create_session(b.admin, "s1", "csrf-1", t + HOUR),
    )
    .await
    .unwrap();
    let session = store.session("s1", t).await.unwrap().unwrap();
    assert_eq!(session.user, store.user(b.admin).await.unwrap());
    assert_eq!(
        (session.csrf_token.as_str(), session.expires_at),
        ("csrf-1", t + HOUR)
    );
    assert!(store.session("s1", t + HOUR - 1).await.unwrap().is_some());
    assert_eq!(store.session("s1", t + HOUR).await.unwrap(), None);
    assert_eq!(store.session("unknown", t).await.unwrap(), None);

    store
        .create_session(b.admin, "old", "csrf-old", t - HOUR)
        .await
        .unwrap();
    assert!(store.session("old", t - 2 * HOUR).await.unwrap().is_some());
    store
        .create_session(b.admin, "s2", "csrf-2", t + HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.session("old", t - 2 * HOUR).await.unwrap(),
        None,
        "an expired session is gone once another starts"
    );
    revision_after(&store, false, store.delete_session("s1"))
        .await
        .unwrap();
    assert_eq!(store.session("s1", t).await.unwrap(), None);
    assert!(store.session("s2", t).await.unwrap().is_some());
    assert_eq!(
        store.list_audit_all(&every(1000)).await.unwrap().len(),
        events
    );
}

/// Login throttling in the store: `max_failures` failed attempts lock the keys out, for
/// longer each time; attempts being checked count already (so that simultaneous ones cannot
/// get past the limit together); a success forgets the user's key and takes its attempt back
/// from the others. Nothing is audited and the revision stays.
pub async fn login_throttling(store: Store) {
    boot(&store).await;
    let events = store.list_audit_all(&every(1000)).await.unwrap().len();
    let limits = Limits {
        max_failures: 3,
        window: std::time::Duration::from_secs(60),
        lockout: std::time::Duration::from_secs(10),
        max_lockout: std::time::Duration::from_secs(25),
    };
    let keys = ["user:carol".to_owned(), "ip:192.0.2.7".to_owned()];
    let t = now();
    for n in 1..=3 {
        let started = revision_after(&store, false, store.login_attempt(&limits, &keys, t))
            .await
            .unwrap();
        assert_eq!(started, Ok(()), "attempt {n}");
        let lock = store.login_failed(&limits, &keys, t).await.unwrap();
        assert_eq!(lock, (n == 3).then_some(std::time::Duration::from_secs(10)));
    }
    assert_eq!(
        store.login_attempt(&limits, &keys, t).await.unwrap(),
        Err(11),
        "locked out"
    );
    let other_user = ["user:dave".to_owned(), "ip:192.0.2.7".to_owned()];
    assert_eq!(
        store.login_attempt(&limits, &other_user, t).await.unwrap(),
        Err(11),
        "the address is locked out too"
    );
    let elsewhere = ["user:dave".to_owned(), "ip:192.0.2.8".to_owned()];
    assert_eq!(
        store.login_attempt(&limits, &elsewhere, t).await.unwrap(),
        Ok(())
    );
    store
        .login_succeeded(&limits, &elsewhere[0], &elsewhere[1..])
        .await
        .unwrap();

    // After the lockout, three more failures lock out for twice as long.
    let later = t + 10_000;
    for _ in 0..3 {
        assert_eq!(
            store.login_attempt(&limits, &keys, later).await.unwrap(),
            Ok(())
        );
        store.login_failed(&limits, &keys, later).await.unwrap();
    }
    assert_eq!(
        store.login_attempt(&limits, &keys, later).await.unwrap(),
        Err(21)
    );

    // Attempts in progress count: of five at once, three go on.
    let fresh = ["user:erin".to_owned(), "ip:192.0.2.9".to_owned()];
    let mut started = 0;
    for _ in 0..5 {
        if store
            .login_attempt(&limits, &fresh, t)
            .await
            .unwrap()
            .is_ok()
        {
            started += 1;
        }
    }
    assert_eq!(started, 3);
    // One succeeds: the user's key is forgotten, the address's attempt taken back.
    store
        .login_succeeded(&limits, &fresh[0], &fresh[1..])
        .await
        .unwrap();
    assert_eq!(
        store.login_attempt(&limits, &fresh, t).await.unwrap(),
        Ok(()),
        "the address has one attempt free again"
    );
    assert_eq!(
        store.login_attempt(&limits, &fresh, t).await.unwrap(),
        Err(1),
        "and only one"
    );
    assert_eq!(
        store.list_audit_all(&every(1000)).await.unwrap().len(),
        events
    );
}

/// The periodic clean-up (one process of those sharing a database leads it; a store alone
/// does): expired sessions go, so do login attempts past the limits' memory, nothing else.
pub async fn janitor(store: Store) {
    let b = boot(&store).await;
    let limits = Limits::default();
    let t = now();
    let memory = limits.memory().as_millis() as i64;
    let keys = ["user:old".to_owned()];
    store
        .login_attempt(&limits, &keys, t)
        .await
        .unwrap()
        .unwrap();
    store.login_failed(&limits, &keys, t).await.unwrap();
    store
        .create_session(b.admin, "live", "csrf", t + HOUR)
        .await
        .unwrap();
    store
        .create_session(b.admin, "ending", "csrf", t + 2)
        .await
        .unwrap();

    assert!(revision_after(&store, false, store.janitor(&limits, t + 1))
        .await
        .unwrap());
    assert!(store.session("ending", t).await.unwrap().is_some());
    assert!(store.janitor(&limits, t + 3).await.unwrap());
    assert_eq!(store.session("ending", t).await.unwrap(), None);
    assert!(store.session("live", t).await.unwrap().is_some());

    // The key's failure is kept while it may count: with a limit of two, a second failure
    // locks the key out…
    let two = Limits {
        max_failures: 2,
        ..limits
    };
    assert!(store.janitor(&limits, t + memory - 1).await.unwrap());
    store.login_attempt(&two, &keys, t).await.unwrap().unwrap();
    assert!(store.login_failed(&two, &keys, t).await.unwrap().is_some());
    assert!(store.login_attempt(&two, &keys, t).await.unwrap().is_err());
    // …and forgotten after: the lockout is gone with it.
    assert!(store.janitor(&limits, t + memory + 1).await.unwrap());
    assert_eq!(
        store.login_attempt(&two, &keys, t).await.unwrap(),
        Ok(()),
        "forgotten: counting starts afresh"
    );
}

/// Projects: unique names, made with their `default` group and their owner as admin; the
/// `default` project stays; deleting one takes everything in it.
pub async fn projects(store: Store) {
    let b = boot(&store).await;
    let p = revision_after(
        &store,
        true,
        store.create_project(&alice(), "tenant-b", "B's desktops", b.admin),
    )
    .await
    .unwrap();
    assert_eq!(
        (p.name.as_str(), p.description.as_str()),
        ("tenant-b", "B's desktops")
    );
    assert_event(
        &store,
        "project.create",
        &alice(),
        Some(p.id),
        ("project", p.id.to_string()),
        "project tenant-b",
    )
    .await;
    let admin = store.user(b.admin).await.unwrap();
    assert_eq!(admin.role_in(p.id), Some(Role::Admin));
    let groups = store.list_groups(&[p.id]).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_default_group(&groups[0]);
    assert_eq!(groups[0].project_id, p.id);
    let err = store
        .create_project(&alice(), "tenant-b", "", b.admin)
        .await
        .unwrap_err();
    assert_conflict(err, "duplicate_project_name", Some("name"));

    let both = [p.id, b.default_project];
    let names: Vec<String> = store
        .list_projects(&both)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "tenant-b"]);
    assert_eq!(
        store.list_projects(&[p.id]).await.unwrap(),
        std::slice::from_ref(&p)
    );
    assert_eq!(store.project(&both, p.id).await.unwrap(), p);

    let err = store
        .delete_project(&alice(), b.default_project)
        .await
        .unwrap_err();
    assert_conflict(err, "default_project_undeletable", None);

    // Everything in it goes with it, references between its groups included.
    let web = store
        .create_group(&alice(), p.id, "web", "", Quota::default())
        .await
        .unwrap();
    let default = default_group(&store, p.id).await;
    store
        .create_rule(
            &alice(),
            default.group.id,
            &RuleSpec {
                remote_group_id: Some(web.group.id.to_string()),
                ..RuleSpec::default()
            },
            Quota::default(),
        )
        .await
        .unwrap();
    let desk = store
        .create_instance(
            &alice(),
            &new_instance(p.id, "desk", "198.51.100.1", vec![web.group.id]),
        )
        .await
        .unwrap();
    revision_after(&store, true, store.delete_project(&alice(), p.id))
        .await
        .unwrap();
    assert_not_found(store.project(&both, p.id).await.unwrap_err(), "project");
    assert!(store.list_groups(&[p.id]).await.unwrap().is_empty());
    assert!(store.list_instances(&[p.id]).await.unwrap().is_empty());
    assert_not_found(
        store.instance(&both, desk.id).await.unwrap_err(),
        "instance",
    );
    assert_eq!(store.user(b.admin).await.unwrap().role_in(p.id), None);
    assert_event(
        &store,
        "project.delete",
        &alice(),
        None,
        ("project", p.id.to_string()),
        "project tenant-b",
    )
    .await;
    assert_not_found(
        store.delete_project(&alice(), p.id).await.unwrap_err(),
        "project",
    );
    // The name is free again.
    store
        .create_project(&alice(), "tenant-b", "", b.admin)
        .await
        .unwrap();
}

/// Groups: valid and unique names within the quota; `default` cannot be deleted.
pub async fn groups(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let web = revision_after(
        &store,
        true,
        store.create_group(&alice(), d, "web", "web servers", Quota::default()),
    )
    .await
    .unwrap();
    assert_eq!(web.project_id, d);
    assert_eq!(
        (web.group.name.as_str(), web.group.description.as_str()),
        ("web", "web servers")
    );
    assert!(web.group.rules.is_empty());
    assert_eq!(store.group(&[d], web.group.id).await.unwrap(), web);
    assert_event(
        &store,
        "security_group.create",
        &alice(),
        Some(d),
        ("security_group", web.group.id.to_string()),
        "security group web",
    )
    .await;

    let err = revision_after(
        &store,
        false,
        store.create_group(&alice(), d, "web", "", Quota::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        rejected(err),
        [(ErrorCode::DuplicateGroupName, Some("name"))]
    );
    let err = store
        .create_group(&alice(), d, " web", "", Quota::default())
        .await
        .unwrap_err();
    assert_eq!(rejected(err), [(ErrorCode::InvalidGroupName, Some("name"))]);
    let two = Quota {
        groups: 2,
        rules: 100,
    };
    let err = store
        .create_group(&alice(), d, "third", "", two)
        .await
        .unwrap_err();
    assert_eq!(rejected(err), [(ErrorCode::QuotaExceeded, None)]);
    // The same name in another project is another group.
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    store
        .create_group(&alice(), other.id, "web", "", two)
        .await
        .unwrap();

    let names: Vec<String> = store
        .list_groups(&[d])
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.group.name)
        .collect();
    assert_eq!(names, ["default", "web"], "oldest first");

    let default = default_group(&store, d).await;
    let err = store
        .delete_group(&alice(), default.group.id)
        .await
        .unwrap_err();
    assert_eq!(rejected(err), [(ErrorCode::DefaultGroupUndeletable, None)]);
    revision_after(&store, true, store.delete_group(&bob(), web.group.id))
        .await
        .unwrap();
    assert_not_found(
        store.group(&[d], web.group.id).await.unwrap_err(),
        "security group",
    );
    assert_event(
        &store,
        "security_group.delete",
        &bob(),
        Some(d),
        ("security_group", web.group.id.to_string()),
        "security group web",
    )
    .await;
    assert_not_found(
        store.delete_group(&bob(), web.group.id).await.unwrap_err(),
        "security group",
    );
    // Its name can be taken again.
    store
        .create_group(&alice(), d, "web", "", Quota::default())
        .await
        .unwrap();
}

/// A group attached to an instance, or named as another group's remote, cannot be deleted;
/// a group's rules naming the group itself do not count.
pub async fn groups_in_use(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let web = store.create_group(&alice(), d, "web", "", q).await.unwrap();
    let db = store.create_group(&alice(), d, "db", "", q).await.unwrap();
    let from = |g: &GroupRecord| RuleSpec {
        remote_group_id: Some(g.group.id.to_string()),
        ..RuleSpec::default()
    };

    let desk = store
        .create_instance(
            &alice(),
            &new_instance(d, "desk", "198.51.100.1", vec![web.group.id]),
        )
        .await
        .unwrap();
    let message = revision_after(&store, false, store.delete_group(&alice(), web.group.id))
        .await
        .map(|_| ())
        .map_err(|e| assert_conflict(e, "group_in_use", None))
        .unwrap_err();
    assert!(message.contains("desk"), "{message}");
    store.delete_instance(&alice(), desk.id).await.unwrap();

    let (reference, _) = store
        .create_rule(&alice(), db.group.id, &from(&web), q)
        .await
        .unwrap();
    let err = store
        .delete_group(&alice(), web.group.id)
        .await
        .unwrap_err();
    let message = assert_conflict(err, "group_in_use", None);
    assert!(message.contains("db"), "{message}");
    store
        .delete_rule(&alice(), reference.rule.id)
        .await
        .unwrap();

    store
        .create_rule(&alice(), web.group.id, &from(&web), q)
        .await
        .unwrap();
    store.delete_group(&alice(), web.group.id).await.unwrap();
    assert_not_found(
        store.group(&[d], web.group.id).await.unwrap_err(),
        "security group",
    );
}

/// Rules: added to their group in order, read back as made, audited in words, deleted.
pub async fn rules(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let default = default_group(&store, d).await;
    let gid = default.group.id;

    let rdp = RuleSpec {
        template: Some("rdp".into()),
        remote_ip_prefix: Some("127.0.0.1/32".into()),
        description: Some("my desk".into()),
        ..RuleSpec::default()
    };
    let (record, notes) = revision_after(&store, true, store.create_rule(&alice(), gid, &rdp, q))
        .await
        .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(record.project_id, d);
    let rule = &record.rule;
    assert_eq!(
        (rule.group, rule.direction, rule.ethertype, rule.protocol),
        (gid, Direction::Ingress, Ethertype::Ipv4, Protocol::Tcp)
    );
    assert_eq!(rule.l4, L4::Ports(PortRange::single(3389).unwrap()));
    assert_eq!(
        rule.remote,
        Remote::Cidr(Cidr::parse("127.0.0.1/32").unwrap().cidr)
    );
    assert_eq!(rule.description, "my desk");
    assert_eq!(store.rule(&[d], rule.id).await.unwrap(), record);
    let rules = store.group(&[d], gid).await.unwrap().group.rules;
    assert_eq!(rules.len(), 7);
    assert_eq!(rules.last(), Some(rule), "appended after the others");
    assert_event(
        &store,
        "security_group_rule.create",
        &alice(),
        Some(d),
        ("security_group_rule", rule.id.to_string()),
        "default: ingress IPv4 tcp port 3389 from 127.0.0.1/32",
    )
    .await;

    // The same rule again: a conflict, nothing written.
    let err = revision_after(&store, false, store.create_rule(&alice(), gid, &rdp, q))
        .await
        .unwrap_err();
    assert_eq!(rejected(err), [(ErrorCode::DuplicateRule, None)]);

    // Words for ranges, ICMP and other groups.
    let web = store.create_group(&alice(), d, "web", "", q).await.unwrap();
    let cases = [
        (
            RuleSpec {
                port_range_max: Some(2000),
                ..tcp(1000, "10.0.0.0/8")
            },
            "ingress IPv4 tcp ports 1000-2000 from 10.0.0.0/8".to_owned(),
        ),
        (
            RuleSpec {
                protocol: Some("icmp".into()),
                port_range_min: Some(8),
                port_range_max: Some(0),
                ..RuleSpec::default()
            },
            "ingress IPv4 icmp type 8 code 0 from 0.0.0.0/0".to_owned(),
        ),
        (
            RuleSpec {
                direction: Some("egress".into()),
                ethertype: Some("IPv6".into()),
                protocol: Some("udp".into()),
                port_range_min: Some(53),
                port_range_max: Some(53),
                ..RuleSpec::default()
            },
            "egress IPv6 udp port 53 to ::/0".to_owned(),
        ),
        (
            RuleSpec {
                protocol: Some("tcp".into()),
                port_range_min: Some(5432),
                remote_group_id: Some(web.group.id.to_string()),
                ..RuleSpec::default()
            },
            format!("ingress IPv4 tcp port 5432 from group {}", web.group.id),
        ),
    ];
    for (spec, summary) in &cases {
        let (made, _) = store.create_rule(&bob(), gid, spec, q).await.unwrap();
        assert_eq!(store.rule(&[d], made.rule.id).await.unwrap(), made);
        let e = last_event(&store, "security_group_rule.create").await;
        assert_eq!(e.summary, format!("default: {summary}"));
    }
    let rules = store.group(&[d], gid).await.unwrap().group.rules;
    assert_eq!(
        rules[8].l4,
        L4::Icmp {
            icmp_type: 8,
            code: Some(0)
        }
    );
    assert_eq!(rules[10].remote, Remote::Group(web.group.id));

    revision_after(&store, true, store.delete_rule(&bob(), rule.id))
        .await
        .unwrap();
    assert_not_found(
        store.rule(&[d], rule.id).await.unwrap_err(),
        "security group rule",
    );
    assert!(!store
        .group(&[d], gid)
        .await
        .unwrap()
        .group
        .rules
        .contains(rule));
    assert_event(
        &store,
        "security_group_rule.delete",
        &bob(),
        Some(d),
        ("security_group_rule", rule.id.to_string()),
        "default: ingress IPv4 tcp port 3389 from 127.0.0.1/32",
    )
    .await;
    assert_not_found(
        store.delete_rule(&bob(), rule.id).await.unwrap_err(),
        "security group rule",
    );
    assert_not_found(
        store
            .create_rule(&bob(), GroupId::random(), &rdp, q)
            .await
            .unwrap_err(),
        "security group",
    );
    assert_not_found(
        store.rule(&[d], RuleId::random()).await.unwrap_err(),
        "security group rule",
    );
}

/// What validation refuses or changes: every problem with its code and field, quotas,
/// remote groups of the project only, normalised CIDRs and risky rules with a note.
pub async fn rule_validation(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let gid = default_group(&store, d).await.group.id;
    let refuse = |spec: RuleSpec, quota: Quota| {
        let store = store.clone();
        async move {
            let err = revision_after(
                &store,
                false,
                store.create_rule(&alice(), gid, &spec, quota),
            )
            .await
            .unwrap_err();
            rejected(err)
        }
    };

    assert_eq!(
        refuse(tcp(3389, "10.0.0.0/33"), q).await,
        [(ErrorCode::InvalidCidr, Some("remote_ip_prefix"))]
    );
    assert_eq!(
        refuse(
            RuleSpec {
                direction: Some("in".into()),
                protocol: Some("tcpp".into()),
                ..RuleSpec::default()
            },
            q
        )
        .await,
        [
            (ErrorCode::InvalidDirection, Some("direction")),
            (ErrorCode::InvalidProtocol, Some("protocol")),
        ]
    );
    assert_eq!(
        refuse(
            RuleSpec {
                port_range_max: Some(3389),
                ..tcp(3390, "0.0.0.0/0")
            },
            q
        )
        .await,
        [(ErrorCode::PortRangeInverted, Some("port_range_min"))]
    );
    assert_eq!(
        refuse(
            RuleSpec {
                remote_group_id: Some(GroupId::random().to_string()),
                ..RuleSpec::default()
            },
            q
        )
        .await,
        [(ErrorCode::RemoteGroupNotFound, Some("remote_group_id"))]
    );
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    let theirs = default_group(&store, other.id).await;
    assert_eq!(
        refuse(
            RuleSpec {
                remote_group_id: Some(theirs.group.id.to_string()),
                ..RuleSpec::default()
            },
            q
        )
        .await,
        [(ErrorCode::RemoteGroupNotFound, Some("remote_group_id"))],
        "another project's group is not a remote"
    );
    // The project has 6 rules (its default group's): a quota of 6 is full.
    let six = Quota {
        groups: 10,
        rules: 6,
    };
    assert_eq!(
        refuse(tcp(22, "10.0.0.0/8"), six).await,
        [(ErrorCode::QuotaExceeded, None)]
    );
    // Other projects' rules do not count.
    let seven = Quota {
        groups: 10,
        rules: 7,
    };
    store
        .create_rule(&alice(), gid, &tcp(22, "10.0.0.0/8"), seven)
        .await
        .unwrap();

    let (made, notes) = store
        .create_rule(&alice(), gid, &tcp(8080, "10.1.2.3/24"), q)
        .await
        .unwrap();
    assert_eq!(
        made.rule.remote,
        Remote::Cidr(Cidr::parse("10.1.2.0/24").unwrap().cidr)
    );
    let codes: Vec<(&str, Option<&str>)> = notes.iter().map(|n| (n.code, n.field)).collect();
    assert_eq!(codes, [("cidr_normalized", Some("remote_ip_prefix"))]);
    let (_, notes) = store
        .create_rule(
            &alice(),
            gid,
            &RuleSpec {
                template: Some("rdp".into()),
                remote_ip_prefix: Some("0.0.0.0/0".into()),
                ..RuleSpec::default()
            },
            q,
        )
        .await
        .unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].code, "open_to_internet");
    assert_eq!(
        store
            .list_audit(&[d], &by_action("security_group_rule.create"))
            .await
            .unwrap()
            .len(),
        3,
        "refused rules are not audited"
    );
}

/// Instances: made in the `default` group or the given ones (each once, in order), with
/// Remote Desktop off and NLA only on; switches, attachments and deletion are audited.
pub async fn instances(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let default = default_group(&store, d).await;
    let web = store.create_group(&alice(), d, "web", "", q).await.unwrap();
    let db = store.create_group(&alice(), d, "db", "", q).await.unwrap();

    let new = NewInstance {
        public_rdp_port: 13389,
        internal_address: Some("10.0.0.7".parse().unwrap()),
        rdp_port: 3390,
        ..new_instance(d, "desk", "2001:db8::7", vec![])
    };
    let desk = revision_after(&store, true, store.create_instance(&alice(), &new))
        .await
        .unwrap();
    assert_eq!((desk.project_id, desk.name.as_str()), (d, "desk"));
    assert_eq!(
        desk.public_address,
        "2001:db8::7".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        (desk.public_rdp_port, desk.internal_address, desk.rdp_port),
        (13389, new.internal_address, 3390)
    );
    assert_eq!(desk.groups, [(default.group.id, "default".to_owned())]);
    assert_eq!(
        (desk.rdp_enabled, desk.rdp_nla_only, desk.rdp_gateway),
        (false, true, true),
        "remote connections off, NLA only and gateway access on"
    );
    assert_eq!(
        (
            desk.cert_fingerprint.clone(),
            desk.agent_seen_at,
            desk.agent_revision
        ),
        (None, None, None)
    );
    assert_eq!(store.instance(&[d], desk.id).await.unwrap(), desk);
    assert_event(
        &store,
        "instance.create",
        &alice(),
        Some(d),
        ("instance", desk.id.to_string()),
        "instance desk at 2001:db8::7",
    )
    .await;

    let two = store
        .create_instance(
            &alice(),
            &new_instance(
                d,
                "two",
                "198.51.100.2",
                vec![db.group.id, web.group.id, db.group.id],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        two.groups,
        [
            (db.group.id, "db".to_owned()),
            (web.group.id, "web".to_owned())
        ]
    );
    let names: Vec<String> = store
        .list_instances(&[d])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["desk", "two"], "oldest first");

    let err = store
        .create_instance(&alice(), &new_instance(d, "desk", "198.51.100.3", vec![]))
        .await
        .unwrap_err();
    assert_conflict(err, "duplicate_instance_name", Some("name"));
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    let theirs = default_group(&store, other.id).await;
    let err = store
        .create_instance(
            &alice(),
            &new_instance(d, "three", "198.51.100.3", vec![theirs.group.id]),
        )
        .await
        .unwrap_err();
    assert_conflict(err, "security_group_not_found", Some("security_groups"));
    // The same name in another project is another instance.
    store
        .create_instance(
            &alice(),
            &new_instance(other.id, "desk", "198.51.100.4", vec![]),
        )
        .await
        .unwrap();

    let on = revision_after(
        &store,
        true,
        store.set_remote_desktop(&bob(), desk.id, Some(true), None, None),
    )
    .await
    .unwrap();
    assert_eq!((on.rdp_enabled, on.rdp_nla_only), (true, true));
    assert_event(
        &store,
        "instance.remote_desktop",
        &bob(),
        Some(d),
        ("instance", desk.id.to_string()),
        "desk: remote connections off -> on, NLA only on -> on, gateway access on -> on",
    )
    .await;
    let nla_off = store
        .set_remote_desktop(&bob(), desk.id, None, Some(false), None)
        .await
        .unwrap();
    assert_eq!((nla_off.rdp_enabled, nla_off.rdp_nla_only), (true, false));
    assert_eq!(store.instance(&[d], desk.id).await.unwrap(), nla_off);
    assert_eq!(
        last_event(&store, "instance.remote_desktop").await.summary,
        "desk: remote connections on -> on, NLA only on -> off, gateway access on -> on"
    );
    let gateway_off = revision_after(
        &store,
        true,
        store.set_remote_desktop(&bob(), desk.id, None, None, Some(false)),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            gateway_off.rdp_enabled,
            gateway_off.rdp_nla_only,
            gateway_off.rdp_gateway
        ),
        (true, false, false)
    );
    assert_eq!(store.instance(&[d], desk.id).await.unwrap(), gateway_off);
    assert_eq!(
        last_event(&store, "instance.remote_desktop").await.summary,
        "desk: remote connections on -> on, NLA only off -> off, gateway access on -> off"
    );

    let attached = revision_after(
        &store,
        true,
        store.attach_group(&bob(), desk.id, web.group.id),
    )
    .await
    .unwrap();
    assert_eq!(
        attached.groups,
        [
            (default.group.id, "default".to_owned()),
            (web.group.id, "web".to_owned())
        ]
    );
    assert_event(
        &store,
        "instance.attach_group",
        &bob(),
        Some(d),
        ("instance", desk.id.to_string()),
        "desk: security group web attached",
    )
    .await;
    let err = store
        .attach_group(&bob(), desk.id, web.group.id)
        .await
        .unwrap_err();
    assert_conflict(err, "already_attached", Some("security_group_id"));
    assert_not_found(
        store
            .attach_group(&bob(), desk.id, theirs.group.id)
            .await
            .unwrap_err(),
        "security group",
    );
    let detached = revision_after(
        &store,
        true,
        store.detach_group(&bob(), desk.id, default.group.id),
    )
    .await
    .unwrap();
    assert_eq!(detached.groups, [(web.group.id, "web".to_owned())]);
    assert_event(
        &store,
        "instance.detach_group",
        &bob(),
        Some(d),
        ("instance", desk.id.to_string()),
        "desk: security group default detached",
    )
    .await;
    // Attached again, it comes last.
    let again = store
        .attach_group(&bob(), desk.id, default.group.id)
        .await
        .unwrap();
    assert_eq!(again.groups[1].0, default.group.id);
    assert_not_found(
        store
            .detach_group(&bob(), desk.id, db.group.id)
            .await
            .unwrap_err(),
        "attached security group",
    );

    revision_after(&store, true, store.delete_instance(&alice(), desk.id))
        .await
        .unwrap();
    assert_not_found(store.instance(&[d], desk.id).await.unwrap_err(), "instance");
    assert_event(
        &store,
        "instance.delete",
        &alice(),
        Some(d),
        ("instance", desk.id.to_string()),
        "instance desk",
    )
    .await;
    for err in [
        store.delete_instance(&alice(), desk.id).await.unwrap_err(),
        store
            .set_remote_desktop(&alice(), desk.id, Some(true), None, None)
            .await
            .unwrap_err(),
        store
            .attach_group(&alice(), desk.id, web.group.id)
            .await
            .unwrap_err(),
    ] {
        assert_not_found(err, "instance");
    }
    // Its groups are free to go.
    store
        .delete_group(&alice(), web.group.id)
        .await
        .unwrap_err();
    store.delete_instance(&alice(), two.id).await.unwrap();
    store.delete_group(&alice(), web.group.id).await.unwrap();
}

/// An agent reports its certificate and revision; what it leaves out stays. Reports are not
/// audited and do not move the revision.
pub async fn agent_reports(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let desk = store
        .create_instance(&alice(), &new_instance(d, "desk", "198.51.100.1", vec![]))
        .await
        .unwrap();
    let events = store.list_audit_all(&every(1000)).await.unwrap().len();
    let before = now();
    revision_after(
        &store,
        false,
        store.report_agent(desk.id, Some("ab:cd"), Some(7)),
    )
    .await
    .unwrap();
    let seen = store.instance(&[d], desk.id).await.unwrap();
    assert_eq!(
        (seen.cert_fingerprint.as_deref(), seen.agent_revision),
        (Some("ab:cd"), Some(7))
    );
    assert!(seen.agent_seen_at.unwrap() >= before);
    store.report_agent(desk.id, None, Some(8)).await.unwrap();
    let seen = store.instance(&[d], desk.id).await.unwrap();
    assert_eq!(
        (seen.cert_fingerprint.as_deref(), seen.agent_revision),
        (Some("ab:cd"), Some(8))
    );
    store
        .report_agent(desk.id, Some("ef:01"), None)
        .await
        .unwrap();
    let seen = store.instance(&[d], desk.id).await.unwrap();
    assert_eq!(
        (seen.cert_fingerprint.as_deref(), seen.agent_revision),
        (Some("ef:01"), Some(8))
    );
    assert_eq!(
        (seen.name.as_str(), seen.rdp_enabled, seen.groups.len()),
        ("desk", false, 1),
        "the rest stays"
    );
    assert_not_found(
        store
            .report_agent(Uuid::new_v4(), None, Some(1))
            .await
            .unwrap_err(),
        "instance",
    );
    assert_eq!(
        store.list_audit_all(&every(1000)).await.unwrap().len(),
        events
    );
    // A change to the instance keeps what its agent reported.
    let changed = store
        .set_remote_desktop(&alice(), desk.id, Some(true), None, None)
        .await
        .unwrap();
    assert_eq!(
        (changed.cert_fingerprint.as_deref(), changed.agent_revision),
        (Some("ef:01"), Some(8))
    );
    // Many at once (they are written in batches): each lands, an unknown instance among
    // them is refused alone.
    let mut others = Vec::new();
    for i in 0..20u64 {
        let name = format!("desk{i}");
        let address = format!("198.51.100.{}", 10 + i);
        let instance = store
            .create_instance(&alice(), &new_instance(d, &name, &address, vec![]))
            .await
            .unwrap();
        others.push(instance.id);
    }
    let reports: Vec<_> = others
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (store, id) = (store.clone(), *id);
            tokio::spawn(async move { store.report_agent(id, None, Some(100 + i as u64)).await })
        })
        .collect();
    let stray = {
        let store = store.clone();
        tokio::spawn(async move { store.report_agent(Uuid::new_v4(), None, Some(1)).await })
    };
    for report in reports {
        report.await.unwrap().unwrap();
    }
    assert_not_found(stray.await.unwrap().unwrap_err(), "instance");
    for (i, id) in others.iter().enumerate() {
        let seen = store.instance(&[d], *id).await.unwrap();
        assert_eq!(seen.agent_revision, Some(100 + i as u64));
    }
}

/// The audit log: newest first, filtered by action, actor, target and id, limited, and per
/// project.
pub async fn audit_filters(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    let a = store.create_group(&alice(), d, "a", "", q).await.unwrap();
    let bb = store.create_group(&bob(), d, "b", "", q).await.unwrap();
    store
        .create_group(&alice(), other.id, "c", "", q)
        .await
        .unwrap();

    let summaries = |events: Vec<AuditEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.summary).collect()
    };
    let all = store.list_audit(&[d], &every(100)).await.unwrap();
    assert_eq!(
        summaries(all.clone()),
        [
            "security group b",
            "security group a",
            "default project and admin user created"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all[0].source.as_deref(), Some("192.0.2.2"));
    let filter = |f: AuditFilter| {
        let store = store.clone();
        async move { summaries(store.list_audit(&[d], &f).await.unwrap()) }
    };
    assert_eq!(
        filter(AuditFilter {
            actor: Some("alice".into()),
            ..every(100)
        })
        .await,
        ["security group a"]
    );
    assert_eq!(
        filter(AuditFilter {
            action: Some("security_group.create".into()),
            ..every(100)
        })
        .await,
        ["security group b", "security group a"]
    );
    assert_eq!(
        filter(AuditFilter {
            target_id: Some(a.group.id.to_string()),
            ..every(100)
        })
        .await,
        ["security group a"]
    );
    assert_eq!(
        filter(AuditFilter {
            after_id: Some(all[1].id),
            ..every(100)
        })
        .await,
        ["security group b"]
    );
    assert_eq!(filter(every(1)).await, ["security group b"]);
    assert_eq!(filter(every(0)).await.len(), 1, "at least one");
    assert_eq!(
        summaries(store.list_audit(&[other.id], &every(100)).await.unwrap()),
        ["security group c", "project other"]
    );
    assert_eq!(
        store
            .list_audit(&[d, other.id], &every(100))
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(store.list_audit(&[], &every(100)).await.unwrap().is_empty());
    assert_eq!(
        last_event(&store, "security_group.create").await.target_id,
        Some(
            store
                .list_groups(&[other.id])
                .await
                .unwrap()
                .into_iter()
                .find(|g| g.group.name == "c")
                .unwrap()
                .group
                .id
                .to_string()
        )
    );
    assert_eq!(bb.project_id, d);
}

/// A subscriber waiting for a newer revision is woken by a change agents enforce; refused
/// changes and changes agents do not see leave the revision alone.
pub async fn revision_subscribers(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let before = store.revision().await.unwrap();
    let mut rx = store.subscribe();
    let waiting = tokio::spawn(async move { *rx.wait_for(|r| *r > before).await.unwrap() });
    store
        .create_user(&alice(), "carol", "h", false)
        .await
        .unwrap();
    store
        .create_session(b.admin, "s", "c", now() + HOUR)
        .await
        .unwrap();
    let gid = default_group(&store, d).await.group.id;
    store
        .create_rule(&alice(), gid, &tcp(80, "0.0.0.0/0"), q)
        .await
        .unwrap_err();
    assert_eq!(store.revision().await.unwrap(), before);
    store
        .create_rule(&alice(), gid, &tcp(8080, "0.0.0.0/0"), q)
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), before + 1);
    assert_eq!(store.revision().await.unwrap(), before + 1);
}

/// What an agent enforces: its instance as the member, the rest of the project as peers;
/// the RDP service only while Remote Desktop is on.
pub async fn agent_state(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let a = store
        .create_instance(
            &alice(),
            &NewInstance {
                public_rdp_port: 3390,
                internal_address: Some("10.0.0.1".parse().unwrap()),
                rdp_port: 13389,
                ..new_instance(d, "a", "198.51.100.1", vec![])
            },
        )
        .await
        .unwrap();
    let c = store
        .create_instance(&alice(), &new_instance(d, "c", "198.51.100.3", vec![]))
        .await
        .unwrap();
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    store
        .create_instance(
            &alice(),
            &new_instance(other.id, "x", "198.51.100.9", vec![]),
        )
        .await
        .unwrap();
    let default = default_group(&store, d).await;
    let member = |i: &Instance, services: Vec<Service>| Member {
        name: i.name.clone(),
        addresses: vec![i.public_address],
        groups: vec![default.group.id],
        internal: i.internal_address,
        services,
    };

    let state = store.agent_state(d, Some(a.id)).await.unwrap();
    assert_eq!(state.revision, store.revision().await.unwrap());
    assert_eq!(state.policy.members, [member(&a, vec![])]);
    assert_eq!(state.policy.peers, [member(&c, vec![])]);
    assert_eq!(state.instances, std::slice::from_ref(&a));
    assert_eq!(state.policy.groups, std::slice::from_ref(&default.group));

    let a = store
        .set_remote_desktop(&alice(), a.id, Some(true), None, None)
        .await
        .unwrap();
    let state = store.agent_state(d, Some(a.id)).await.unwrap();
    let rdp = Service {
        protocol: proto::TCP,
        public_port: 3390,
        internal_port: 13389,
    };
    assert_eq!(state.policy.members, [member(&a, vec![rdp])]);
    assert!(state.instances[0].rdp_enabled);

    let whole = store.agent_state(d, None).await.unwrap();
    assert_eq!(
        whole.policy.members,
        [member(&a, vec![rdp]), member(&c, vec![])]
    );
    assert!(whole.policy.peers.is_empty());
    assert_eq!(whole.instances, [a.clone(), c]);

    assert_not_found(
        store
            .agent_state(d, Some(Uuid::new_v4()))
            .await
            .unwrap_err(),
        "instance",
    );
    assert_not_found(
        store.agent_state(other.id, Some(a.id)).await.unwrap_err(),
        "instance",
    );
}

/// Another project's objects are not found, read or written through a view without it.
pub async fn tenancy(store: Store) {
    let b = boot(&store).await;
    let d = b.default_project;
    let q = Quota::default();
    let theirs = store
        .create_project(&alice(), "theirs", "", b.admin)
        .await
        .unwrap();
    let group = default_group(&store, theirs.id).await;
    let (rule, _) = store
        .create_rule(&alice(), group.group.id, &tcp(22, "10.0.0.0/8"), q)
        .await
        .unwrap();
    let instance = store
        .create_instance(
            &alice(),
            &new_instance(theirs.id, "desk", "198.51.100.1", vec![]),
        )
        .await
        .unwrap();

    let mine = [d];
    assert_not_found(
        store.project(&mine, theirs.id).await.unwrap_err(),
        "project",
    );
    assert_not_found(
        store.group(&mine, group.group.id).await.unwrap_err(),
        "security group",
    );
    assert_not_found(
        store.rule(&mine, rule.rule.id).await.unwrap_err(),
        "security group rule",
    );
    assert_not_found(
        store.instance(&mine, instance.id).await.unwrap_err(),
        "instance",
    );
    let projects = store.list_projects(&mine).await.unwrap();
    assert_eq!(projects.len(), 1);
    assert!(store
        .list_groups(&mine)
        .await
        .unwrap()
        .iter()
        .all(|g| g.project_id == d));
    assert!(store.list_instances(&mine).await.unwrap().is_empty());
    assert!(store
        .list_audit(&mine, &every(100))
        .await
        .unwrap()
        .iter()
        .all(|e| e.project_id == Some(d)));

    let both = [d, theirs.id];
    assert_eq!(store.project(&both, theirs.id).await.unwrap(), theirs);
    assert_eq!(
        store.group(&both, group.group.id).await.unwrap().project_id,
        theirs.id
    );
    assert_eq!(store.rule(&both, rule.rule.id).await.unwrap(), rule);
    assert_eq!(store.instance(&both, instance.id).await.unwrap(), instance);
    assert_eq!(store.list_instances(&both).await.unwrap(), [instance]);
}

// ---- the RD Gateway ----

const FIVE_MINUTES: std::time::Duration = std::time::Duration::from_secs(300);

/// The default project with `desk` (remote connections on) and user `carol`, a reader of it.
async fn gateway_setup(store: &Store) -> (Bootstrap, Instance, crate::User) {
    let b = boot(store).await;
    let d = b.default_project;
    let desk = store
        .create_instance(&alice(), &new_instance(d, "desk", "198.51.100.1", vec![]))
        .await
        .unwrap();
    let desk = store
        .set_remote_desktop(&alice(), desk.id, Some(true), None, None)
        .await
        .unwrap();
    let carol = store
        .create_user(&alice(), "carol", "carol-hash", false)
        .await
        .unwrap();
    store
        .set_membership(&alice(), d, carol.id, Role::Reader)
        .await
        .unwrap();
    (b, desk, carol)
}

fn refusal(found: Result<crate::GatewayGrant, Refused>) -> Refused {
    match found {
        Ok(grant) => panic!("expected a refusal, got {grant:?}"),
        Err(refused) => refused,
    }
}

/// Tokens: minted for a member while remote connections and gateway access are on, for 30 s
/// to 1 h, audited without moving the revision, listed without secrets, revoked once.
pub async fn gateway_tokens(store: Store) {
    let (b, desk, carol) = gateway_setup(&store).await;
    let d = b.default_project;
    let before = now();
    let (token, secret) = revision_after(
        &store,
        false,
        store.mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES),
    )
    .await
    .unwrap();
    assert!(secret.starts_with("dpg_") && secret.len() == 68, "{secret}");
    assert_eq!(
        (token.user_id, token.user_name.as_deref(), token.instance_id),
        (carol.id, Some("carol"), desk.id)
    );
    assert!(token.created_at >= before);
    assert_eq!(token.expires_at, token.created_at + 300_000);
    assert_eq!(token.revoked_at, None);
    assert_event(
        &store,
        "instance.rdp_token",
        &alice(),
        Some(d),
        ("instance", desk.id.to_string()),
        &format!("desk: gateway token {} for carol, valid 300 s", token.id),
    )
    .await;
    // Two tokens minted in the same millisecond are listed by id; let the
    // clock move so "oldest first" is what this test sees.
    while now() <= token.created_at {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (second, other_secret) = store
        .mint_gateway_token(
            &alice(),
            b.admin,
            desk.id,
            std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_ne!(secret, other_secret);
    assert_eq!(second.expires_at, second.created_at + 3_600_000);
    let listed = store.list_gateway_tokens(&[d], desk.id).await.unwrap();
    assert_eq!(listed, [token.clone(), second.clone()], "oldest first");
    assert_eq!(store.gateway_token(&[d], token.id).await.unwrap(), token);

    // Refusals.
    for ttl in [29, 3601] {
        let err = store
            .mint_gateway_token(
                &alice(),
                carol.id,
                desk.id,
                std::time::Duration::from_secs(ttl),
            )
            .await
            .unwrap_err();
        assert_conflict(err, "invalid_ttl", Some("ttl_seconds"));
    }
    let dave = store
        .create_user(&alice(), "dave", "dave-hash", false)
        .await
        .unwrap();
    let err = store
        .mint_gateway_token(&alice(), dave.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap_err();
    assert_conflict(err, "not_a_member", None);
    let err = store
        .mint_gateway_token(&alice(), carol.id, Uuid::new_v4(), FIVE_MINUTES)
        .await
        .unwrap_err();
    assert_not_found(err, "instance");
    let err = store
        .mint_gateway_token(&alice(), Uuid::new_v4(), desk.id, FIVE_MINUTES)
        .await
        .unwrap_err();
    assert_not_found(err, "user");
    store
        .set_remote_desktop(&alice(), desk.id, None, None, Some(false))
        .await
        .unwrap();
    let err = store
        .mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap_err();
    assert_conflict(err, "gateway_access_off", None);
    store
        .set_remote_desktop(&alice(), desk.id, Some(false), None, Some(true))
        .await
        .unwrap();
    let err = store
        .mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap_err();
    assert_conflict(err, "remote_desktop_off", None);

    // Another project's instance and token are not found.
    let other = store
        .create_project(&alice(), "other", "", b.admin)
        .await
        .unwrap();
    let err = store
        .list_gateway_tokens(&[other.id], desk.id)
        .await
        .unwrap_err();
    assert_not_found(err, "instance");
    let err = store
        .gateway_token(&[other.id], token.id)
        .await
        .unwrap_err();
    assert_not_found(err, "gateway token");
    let err = store
        .revoke_gateway_token(&bob(), &[other.id], token.id)
        .await
        .unwrap_err();
    assert_not_found(err, "gateway token");

    // Revoked once, audited, still listed.
    let revoked = revision_after(
        &store,
        false,
        store.revoke_gateway_token(&bob(), &[d], token.id),
    )
    .await
    .unwrap();
    assert!(revoked.revoked_at.unwrap() >= token.created_at);
    assert_event(
        &store,
        "instance.rdp_token_revoke",
        &bob(),
        Some(d),
        ("instance", desk.id.to_string()),
        &format!("desk: gateway token {} of carol revoked", token.id),
    )
    .await;
    assert_eq!(store.gateway_token(&[d], token.id).await.unwrap(), revoked);
    let err = store
        .revoke_gateway_token(&bob(), &[d], token.id)
        .await
        .unwrap_err();
    assert_conflict(err, "already_revoked", None);
    let err = store
        .revoke_gateway_token(&bob(), &[d], Uuid::new_v4())
        .await
        .unwrap_err();
    assert_not_found(err, "gateway token");

    // The janitor forgets tokens a week after they expired, not before.
    assert!(store.janitor(&Limits::default(), now()).await.unwrap());
    assert_eq!(
        store
            .list_gateway_tokens(&[d], desk.id)
            .await
            .unwrap()
            .len(),
        2
    );
    let later = second.expires_at + 7 * 24 * HOUR + 1;
    assert!(store.janitor(&Limits::default(), later).await.unwrap());
    assert!(store
        .list_gateway_tokens(&[d], desk.id)
        .await
        .unwrap()
        .is_empty());
}

/// Grants: a token opens tunnels until it expires (reused too); revoked, expired, switched
/// off, no longer a member, user or instance deleted all refuse, saying why and whose token it
/// was; a recheck of a live tunnel ignores expiry only. Gateway events are audited.
pub async fn gateway_grants(store: Store) {
    let (b, desk, carol) = gateway_setup(&store).await;
    let d = b.default_project;
    let (token, secret) = store
        .mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap();
    for _ in 0..3 {
        let grant = store.gateway_grant(&secret).await.unwrap().unwrap();
        assert_eq!(
            (
                grant.token_id,
                grant.user_id,
                grant.user_name.as_str(),
                grant.project_id
            ),
            (token.id, carol.id, "carol", d)
        );
        assert_eq!(grant.instance, store.instance(&[d], desk.id).await.unwrap());
    }
    let refused = refusal(store.gateway_grant("dpg_unknown").await.unwrap());
    assert_eq!(
        refused,
        Refused {
            reason: GrantRefusal::UnknownToken,
            token_id: None,
            user_id: None,
            user_name: None,
            instance_id: None,
            project_id: None,
        }
    );
    assert_eq!(refused.to_string(), "the gateway token is not known");

    // Expiry: refused when opening, not on a recheck.
    let expired = refusal(
        store
            .gateway_grant_at(&secret, token.expires_at)
            .await
            .unwrap(),
    );
    assert_eq!(
        expired,
        Refused {
            reason: GrantRefusal::Expired,
            token_id: Some(token.id),
            user_id: Some(carol.id),
            user_name: Some("carol".into()),
            instance_id: Some(desk.id),
            project_id: Some(d),
        }
    );
    assert!(store
        .gateway_grant_at(&secret, token.expires_at - 1)
        .await
        .unwrap()
        .is_ok());
    assert!(store.recheck_grant(token.id).await.unwrap().is_ok());
    assert_eq!(
        refusal(store.recheck_grant(Uuid::new_v4()).await.unwrap()).reason,
        GrantRefusal::UnknownToken
    );

    // Each switch refuses, opening and rechecking, until it is on again.
    let reason = |store: &Store| {
        let store = store.clone();
        let secret = secret.clone();
        async move {
            let opening = store
                .gateway_grant(&secret)
                .await
                .unwrap()
                .err()
                .map(|r| r.reason);
            let live = store
                .recheck_grant(token.id)
                .await
                .unwrap()
                .err()
                .map(|r| r.reason);
            assert_eq!(opening, live, "opening and rechecking agree");
            opening
        }
    };
    store
        .set_remote_desktop(&alice(), desk.id, None, None, Some(false))
        .await
        .unwrap();
    assert_eq!(reason(&store).await, Some(GrantRefusal::GatewayOff));
    store
        .set_remote_desktop(&alice(), desk.id, Some(false), None, Some(true))
        .await
        .unwrap();
    assert_eq!(reason(&store).await, Some(GrantRefusal::RemoteDesktopOff));
    store
        .set_remote_desktop(&alice(), desk.id, Some(true), None, None)
        .await
        .unwrap();
    assert_eq!(reason(&store).await, None);

    // Membership: any role will do; none refuses.
    store
        .remove_membership(&alice(), d, carol.id)
        .await
        .unwrap();
    assert_eq!(reason(&store).await, Some(GrantRefusal::NotMember));
    store
        .set_membership(&alice(), d, carol.id, Role::Member)
        .await
        .unwrap();
    assert_eq!(reason(&store).await, None);

    // Revoked.
    store
        .revoke_gateway_token(&alice(), &[d], token.id)
        .await
        .unwrap();
    assert_eq!(reason(&store).await, Some(GrantRefusal::Revoked));

    // The user deleted; the instance deleted.
    let (for_carol, carol_secret) = store
        .mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap();
    let (for_admin, admin_secret) = store
        .mint_gateway_token(&alice(), b.admin, desk.id, FIVE_MINUTES)
        .await
        .unwrap();
    store.delete_user(&alice(), carol.id).await.unwrap();
    let gone = refusal(store.gateway_grant(&carol_secret).await.unwrap());
    assert_eq!(
        (gone.reason, gone.user_id, gone.user_name),
        (GrantRefusal::NotMember, Some(carol.id), None)
    );
    assert_eq!(
        refusal(store.recheck_grant(for_carol.id).await.unwrap()).reason,
        GrantRefusal::NotMember
    );
    assert!(store.gateway_grant(&admin_secret).await.unwrap().is_ok());
    store.delete_instance(&alice(), desk.id).await.unwrap();
    let gone = refusal(store.gateway_grant(&admin_secret).await.unwrap());
    assert_eq!(
        (gone.reason, gone.instance_id, gone.project_id),
        (GrantRefusal::InstanceGone, Some(desk.id), None)
    );
    assert_eq!(
        refusal(store.recheck_grant(for_admin.id).await.unwrap()).reason,
        GrantRefusal::InstanceGone
    );

    // What the gateway records: events only, by the token's user (or `gateway`).
    let gateway = |source: &str| Actor {
        name: "admin".into(),
        source: Some(source.into()),
    };
    revision_after(
        &store,
        false,
        store.audit_gateway(
            Some(b.admin),
            Some(d),
            Some(desk.id),
            GatewayEvent::Opened,
            "desk: tunnel to 198.51.100.1:3389".into(),
            Some("192.0.2.9".into()),
        ),
    )
    .await
    .unwrap();
    assert_event(
        &store,
        "gateway.session_opened",
        &gateway("192.0.2.9"),
        Some(d),
        ("instance", desk.id.to_string()),
        "desk: tunnel to 198.51.100.1:3389",
    )
    .await;
    store
        .audit_gateway(
            Some(b.admin),
            Some(d),
            Some(desk.id),
            GatewayEvent::Closed,
            "desk: tunnel closed after 12 s".into(),
            Some("192.0.2.9".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        last_event(&store, "gateway.session_closed").await.summary,
        "desk: tunnel closed after 12 s"
    );
    store
        .audit_gateway(
            None,
            None,
            None,
            GatewayEvent::Refused,
            "the gateway token is not known".into(),
            Some("192.0.2.10".into()),
        )
        .await
        .unwrap();
    let e = last_event(&store, "gateway.refused").await;
    assert_eq!(
        (
            e.actor.as_str(),
            e.project_id,
            e.target_id,
            e.source.as_deref()
        ),
        ("gateway", None, None, Some("192.0.2.10"))
    );
    store
        .audit_gateway(
            Some(carol.id),
            Some(d),
            Some(desk.id),
            GatewayEvent::Refused,
            "the token's user is not a member of the instance's project".into(),
            None,
        )
        .await
        .unwrap();
    let e = last_event(&store, "gateway.refused").await;
    assert_eq!(e.actor, carol.id.to_string(), "a deleted user by id");
    assert_eq!(
        store
            .list_audit(&[d], &by_action("gateway.refused"))
            .await
            .unwrap()
            .len(),
        1,
        "the project's log shows its refusals"
    );
}

/// `access_changes` moves after every commit that can change a grant — a token revoked, a
/// switch, a membership removed or changed, a user or instance deleted — and not for what
/// cannot: an agent's report, a token minted, a gateway event.
pub async fn gateway_access_changes(store: Store) {
    let (b, desk, carol) = gateway_setup(&store).await;
    let d = b.default_project;
    let mut changes = store.access_changes();
    changes.borrow_and_update();
    let (token, _) = store
        .mint_gateway_token(&alice(), carol.id, desk.id, FIVE_MINUTES)
        .await
        .unwrap();
    store
        .report_agent(desk.id, Some("ab:cd"), Some(3))
        .await
        .unwrap();
    store
        .audit_gateway(
            Some(carol.id),
            Some(d),
            Some(desk.id),
            GatewayEvent::Opened,
            "opened".into(),
            None,
        )
        .await
        .unwrap();
    assert!(
        !changes.has_changed().unwrap(),
        "no grant changes with a report, a new token or an event"
    );
    let mut moved = |what: &str| {
        assert!(
            changes.has_changed().unwrap(),
            "{what} moves access_changes"
        );
        changes.borrow_and_update();
    };
    store
        .revoke_gateway_token(&alice(), &[d], token.id)
        .await
        .unwrap();
    moved("a token revoked");
    store
        .set_remote_desktop(&alice(), desk.id, None, None, Some(false))
        .await
        .unwrap();
    moved("gateway access switched");
    store
        .set_remote_desktop(&alice(), desk.id, Some(false), None, None)
        .await
        .unwrap();
    moved("remote connections switched");
    store
        .set_membership(&alice(), d, carol.id, Role::Member)
        .await
        .unwrap();
    moved("a role changed");
    store
        .remove_membership(&alice(), d, carol.id)
        .await
        .unwrap();
    moved("a membership removed");
    store.delete_user(&alice(), carol.id).await.unwrap();
    moved("a user deleted");
    store.delete_instance(&alice(), desk.id).await.unwrap();
    moved("an instance deleted");
}
