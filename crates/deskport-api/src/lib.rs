//! The one place that knows deskport's wire formats: the JSON of the HTTP API and the policy
//! document that agents (the firewall, the RDP server) receive from the manager or read from a
//! file. Types here are `serde` types; they convert explicitly to and from the core types of
//! `deskport-policy`, which are not `Serialize`, so the wire format can stay stable while the
//! core changes.

pub mod policy_doc;

pub use policy_doc::{DocError, PolicyDocument};
