//! Security groups (SPEC §1, §2): the model ([`SecurityGroup`], [`Rule`]), the templates of the
//! console's *Rule* menu, validation of user input into rules ([`validate_rule`]), the decision
//! engine ([`Classifier`]) and the nftables ruleset compiler ([`nft`]).
//!
//! This crate does no I/O, reads no clock and has nothing async: it is the pure core that the
//! manager, the firewall agents and the tests all share. Its types are not `Serialize`; the
//! wire format belongs to the API crate, which converts explicitly.

mod cidr;
mod engine;
mod model;
pub mod nft;
pub mod template;
pub mod throttle;
mod validate;

pub use cidr::{addr_bits, Cidr, CidrError, Parsed};
pub use engine::{linear, Classifier, Decision};
pub use model::{
    number_has_ports, proto, Direction, Ethertype, GroupId, Member, Packet, Policy, PortRange,
    Protocol, Remote, Rule, RuleId, RuleKey, SecurityGroup, Service, L4,
};
pub use validate::{
    check_group_deletable, default_group, parse_protocol_name, valid_name, validate_group,
    validate_rule, Accepted, ErrorCode, ErrorKind, FieldError, Note, Quota, Rejected, RuleContext,
    RuleSpec, DEFAULT_GROUP, MAX_DESCRIPTION, MAX_GROUP_NAME,
};

/// `time` as milliseconds since the Unix epoch, the unit every stored and reported time of
/// deskport uses (times before 1970 are 0). The caller reads the clock:
/// `unix_ms(SystemTime::now())`.
pub fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
