//! The state every handler shares.

use std::sync::Arc;

use deskport_policy::Quota;
use deskport_store::Store;

use crate::auth::Throttle;
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
