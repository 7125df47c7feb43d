//! Enforcement of security groups (SPEC §2): the [`nft`] backend (one `inet deskport` table
//! applied atomically with `nft -f`, revoked flows deleted from conntrack), the userspace
//! [`gateway`] (no privileges), and the [`agent`] that keeps either in step with a policy source.
//!
//! Decisions come from `deskport-policy`; the policy document format from `deskport-api`.
//! This crate never talks to the database: the manager sends it the policy.

pub mod agent;
pub mod conntrack;
pub mod gateway;
pub mod http;
mod log;
pub mod nft;

pub use agent::{run, Agent, AgentConfig, Backend, Source};
pub use gateway::{Gateway, GatewayConfig};
pub use nft::{NftBackend, NftConfig};
