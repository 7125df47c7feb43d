//! The state every handler shares.

use std::sync::Arc;

use axum::extract::FromRef;
use deskport_policy::throttle::Throttle;
use deskport_policy::Quota;
use deskport_store::Store;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub quota: Quota,
    pub throttle: Arc<Throttle>,
    pub metrics: Arc<Metrics>,
    /// The RDP user name shown in connect commands (`deskport up` sets it).
    pub rdp_user: Option<String>,
}

impl FromRef<AppState> for Arc<Store> {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}
