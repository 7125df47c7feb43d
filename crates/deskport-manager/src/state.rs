//! The state every handler shares.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRef;
use deskport_policy::throttle::Limits;
use deskport_policy::Quota;
use deskport_store::{Store, User};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::ops::Ops;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub quota: Quota,
    /// Login throttling; the counts are in the store, shared by every replica.
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// The RDP user name shown in connect commands (`deskport up` sets it).
    pub rdp_user: Option<String>,
    /// The SHA-256 fingerprint of the certificate served, when the manager serves HTTPS
    /// (shown in the console; cookies get `Secure` and responses HSTS).
    pub tls_fingerprint: Option<String>,
    /// The RD Gateway on this listener (HTTPS only: its clients require TLS).
    pub rd_gateway: Option<deskport_gateway::RdGateway>,
    /// Connections the listener's caps turned away.
    pub http_refusals: Arc<crate::serve::Refusals>,
    /// Browser console sessions this manager relays now (at most
    /// [`crate::desktop::MAX_SESSIONS`]).
    pub console_sessions: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// `user`'s changes from `addr` to the projects in `view`.
    pub fn ops<'a>(&'a self, user: &'a User, addr: IpAddr, view: Vec<Uuid>) -> Ops<'a> {
        Ops::new(&self.store, self.quota, user, addr, view)
    }
}

impl FromRef<AppState> for Arc<Store> {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}
