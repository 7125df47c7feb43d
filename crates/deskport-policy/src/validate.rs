//! Turning what a user typed into a [`Rule`], or into errors that name the field and say why
//! (SPEC §1 "Validation"). Nothing here is half-applied: either a whole rule comes out, or
//! every problem found with the input does.

use std::fmt;

use uuid::Uuid;

use crate::template::{self, TemplateKind};
use crate::{Cidr, Direction, Ethertype, GroupId, PortRange, Protocol, Remote, Rule, RuleId};
use crate::{SecurityGroup, L4};

/// The longest description a rule or group may have, in characters.
pub const MAX_DESCRIPTION: usize = 255;
/// The longest group name, in characters.
pub const MAX_GROUP_NAME: usize = 255;
/// The name of the group every project has and that cannot be deleted.
pub const DEFAULT_GROUP: &str = "default";

/// A rule as a user or API client gives it: every field is optional text or a number, as it
/// arrived. Field names follow Neutron's security-group-rule resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSpec {
    /// A template id from [`template::TEMPLATES`] (`rdp`, `custom_tcp`, …).
    pub template: Option<String>,
    /// `ingress` (default) or `egress`.
    pub direction: Option<String>,
    /// `IPv4` or `IPv6`; by default the family of `remote_ip_prefix`, else IPv4.
    pub ethertype: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, a number 0–255, or `any` (the default).
    pub protocol: Option<String>,
    /// First port, or the ICMP type.
    pub port_range_min: Option<i64>,
    /// Last port, or the ICMP code.
    pub port_range_max: Option<i64>,
    /// A CIDR; with no remote at all the rule admits every address of its family.
    pub remote_ip_prefix: Option<String>,
    /// The id of a security group whose members are the remote end.
    pub remote_group_id: Option<String>,
    pub description: Option<String>,
}

/// Per-project limits (SPEC §1: 10 groups and 100 rules by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub groups: usize,
    pub rules: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            groups: 10,
            rules: 100,
        }
    }
}

/// What validating a rule needs to know about the world.
pub struct RuleContext<'a> {
    /// The group the rule is added to (its rules are checked for duplicates).
    pub group: &'a SecurityGroup,
    /// Whether a group of this id exists in the same project (for `remote_group_id`).
    pub group_exists: &'a dyn Fn(GroupId) -> bool,
    /// How many rules the project has now, over all its groups.
    pub project_rules: usize,
    pub quota: Quota,
}

impl fmt::Debug for RuleContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleContext")
            .field("group", &self.group.id)
            .field("project_rules", &self.project_rules)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// How an error should be reported (HTTP: 400, 409, 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    Conflict,
    NotFound,
}

macro_rules! codes {
    ($($variant:ident = $text:literal, $kind:ident;)*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text,)* }
            }

            pub fn kind(self) -> ErrorKind {
                match self { $(ErrorCode::$variant => ErrorKind::$kind,)* }
            }
        }
    };
}

codes! {
    InvalidDirection = "invalid_direction", Invalid;
    InvalidEthertype = "invalid_ethertype", Invalid;
    InvalidProtocol = "invalid_protocol", Invalid;
    ProtocolFamilyMismatch = "protocol_family_mismatch", Invalid;
    UnknownTemplate = "unknown_template", Invalid;
    TemplateConflict = "template_conflict", Invalid;
    PortRequired = "port_required", Invalid;
    PortOutOfRange = "port_out_of_range", Invalid;
    PortRangeInverted = "port_range_inverted", Invalid;
    PortsNotAllowed = "ports_not_allowed", Invalid;
    IcmpTypeOutOfRange = "icmp_type_out_of_range", Invalid;
    IcmpCodeOutOfRange = "icmp_code_out_of_range", Invalid;
    IcmpCodeWithoutType = "icmp_code_without_type", Invalid;
    InvalidCidr = "invalid_cidr", Invalid;
    CidrFamilyMismatch = "cidr_family_mismatch", Invalid;
    RemoteConflict = "remote_conflict", Invalid;
    InvalidRemoteGroup = "invalid_remote_group", Invalid;
    RemoteGroupNotFound = "remote_group_not_found", NotFound;
    DescriptionTooLong = "description_too_long", Invalid;
    DuplicateRule = "duplicate_rule", Conflict;
    QuotaExceeded = "quota_exceeded", Conflict;
    InvalidGroupName = "invalid_group_name", Invalid;
    DuplicateGroupName = "duplicate_group_name", Conflict;
    DefaultGroupUndeletable = "default_group_undeletable", Conflict;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with the input: a code, the field it concerns (API field name), a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: ErrorCode,
    pub field: Option<&'static str>,
    pub message: String,
}

impl FieldError {
    fn new(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field),
            message: message.into(),
        }
    }
}

/// Every problem found with an input; never empty. The first is the most important.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub Vec<FieldError>);

impl Rejected {
    pub fn first(&self) -> &FieldError {
        &self.0[0]
    }

    fn one(error: FieldError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

/// Something the caller should tell the user although the input was accepted: the value was
/// normalised, or the rule is risky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `cidr_normalized`, `protocol_normalized` or `open_to_internet`.
    pub code: &'static str,
    pub field: Option<&'static str>,
    pub message: String,
}

/// An accepted rule and what to tell the user about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub rule: Rule,
    pub notes: Vec<Note>,
}

/// Validates `spec` for a new rule `id` in `ctx.group`.
pub fn validate_rule(
    spec: &RuleSpec,
    ctx: &RuleContext<'_>,
    id: RuleId,
) -> Result<Accepted, Rejected> {
    let mut errors = Vec::new();
    let mut notes = Vec::new();

    let description = spec.description.clone().unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            ErrorCode::DescriptionTooLong,
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }

    let direction = match spec.direction.as_deref().map(str::trim) {
        None | Some("") => Some(Direction::Ingress),
        Some(d) => Direction::parse(&d.to_ascii_lowercase()).or_else(|| {
            errors.push(FieldError::new(
                ErrorCode::InvalidDirection,
                "direction",
                format!("direction {d:?} is neither \"ingress\" nor \"egress\""),
            ));
            None
        }),
    };

    let remote = parse_remote(spec, ctx, &mut errors, &mut notes);
    let ethertype = parse_ethertype(spec, remote, &mut errors);
    let protocol = parse_protocol(spec, ethertype, &mut errors, &mut notes);
    let l4 = protocol.and_then(|p| parse_l4(spec, p, &mut errors));

    if !errors.is_empty() {
        return Err(Rejected(errors));
    }
    let (Some(direction), Some(ethertype), Some((protocol, _)), Some(l4), Some(remote)) =
        (direction, ethertype, protocol, l4, remote)
    else {
        // Every `None` above pushed an error.
        return Err(Rejected::one(FieldError::new(
            ErrorCode::InvalidProtocol,
            "protocol",
            "the rule is incomplete",
        )));
    };
    let remote = remote.unwrap_or(Remote::Cidr(Cidr::any(ethertype)));
    let rule = Rule {
        id,
        group: ctx.group.id,
        direction,
        ethertype,
        protocol,
        l4,
        remote,
        description,
    };

    if let Some(existing) = ctx.group.rules.iter().find(|r| r.key() == rule.key()) {
        return Err(Rejected::one(FieldError {
            code: ErrorCode::DuplicateRule,
            field: None,
            message: format!(
                "security group {:?} already has this rule ({})",
                ctx.group.name, existing.id
            ),
        }));
    }
    if ctx.project_rules >= ctx.quota.rules {
        return Err(Rejected::one(FieldError {
            code: ErrorCode::QuotaExceeded,
            field: None,
            message: format!(
                "the project has reached its quota of {} security group rules",
                ctx.quota.rules
            ),
        }));
    }
    if let Some(note) = internet_warning(&rule) {
        notes.push(note);
    }
    Ok(Accepted { rule, notes })
}

/// `Some(None)`: no remote given (everyone of the family); `None`: an error was pushed.
fn parse_remote(
    spec: &RuleSpec,
    ctx: &RuleContext<'_>,
    errors: &mut Vec<FieldError>,
    notes: &mut Vec<Note>,
) -> Option<Option<Remote>> {
    let prefix = spec
        .remote_ip_prefix
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    let group = spec
        .remote_group_id
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    match (prefix, group) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                ErrorCode::RemoteConflict,
                "remote_group_id",
                "give either remote_ip_prefix or remote_group_id, not both",
            ));
            None
        }
        (Some(text), None) => match Cidr::parse(text) {
            Ok(parsed) => {
                if parsed.normalized {
                    notes.push(Note {
                        code: "cidr_normalized",
                        field: Some("remote_ip_prefix"),
                        message: format!(
                            "{} was normalised to {} (host bits cleared)",
                            text.trim(),
                            parsed.cidr
                        ),
                    });
                }
                Some(Some(Remote::Cidr(parsed.cidr)))
            }
            Err(e) => {
                errors.push(FieldError::new(
                    ErrorCode::InvalidCidr,
                    "remote_ip_prefix",
                    format!("remote_ip_prefix {text:?} is not a CIDR: {e}"),
                ));
                None
            }
        },
        (None, Some(text)) => match Uuid::parse_str(text.trim()) {
            Ok(uuid) if (ctx.group_exists)(GroupId(uuid)) => {
                Some(Some(Remote::Group(GroupId(uuid))))
            }
            Ok(_) => {
                errors.push(FieldError::new(
                    ErrorCode::RemoteGroupNotFound,
                    "remote_group_id",
                    format!("security group {text} does not exist"),
                ));
                None
            }
            Err(_) => {
                errors.push(FieldError::new(
                    ErrorCode::InvalidRemoteGroup,
                    "remote_group_id",
                    format!("remote_group_id {text:?} is not a security group id"),
                ));
                None
            }
        },
        (None, None) => Some(None),
    }
}

fn parse_ethertype(
    spec: &RuleSpec,
    remote: Option<Option<Remote>>,
    errors: &mut Vec<FieldError>,
) -> Option<Ethertype> {
    let cidr_family = match remote {
        Some(Some(Remote::Cidr(c))) => Some(c.family()),
        _ => None,
    };
    let ethertype = match spec.ethertype.as_deref().map(str::trim) {
        None | Some("") => cidr_family.unwrap_or(Ethertype::Ipv4),
        Some(text) => match Ethertype::parse(text) {
            Some(e) => e,
            None => {
                errors.push(FieldError::new(
                    ErrorCode::InvalidEthertype,
                    "ethertype",
                    format!("ethertype {text:?} is neither \"IPv4\" nor \"IPv6\""),
                ));
                return None;
            }
        },
    };
    if let Some(family) = cidr_family.filter(|f| *f != ethertype) {
        errors.push(FieldError::new(
            ErrorCode::CidrFamilyMismatch,
            "remote_ip_prefix",
            format!(
                "remote_ip_prefix is an {} prefix but the rule's ethertype is {}",
                family.as_str(),
                ethertype.as_str()
            ),
        ));
    }
    Some(ethertype)
}

/// The protocol, and the template kind when a template was used.
fn parse_protocol(
    spec: &RuleSpec,
    ethertype: Option<Ethertype>,
    errors: &mut Vec<FieldError>,
    notes: &mut Vec<Note>,
) -> Option<(Protocol, Option<TemplateKind>)> {
    let given = match spec.protocol.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match parse_protocol_name(text) {
            Some(p) => Some(p),
            None => {
                errors.push(FieldError::new(
                    ErrorCode::InvalidProtocol,
                    "protocol",
                    format!(
                        "protocol {text:?} is not tcp, udp, icmp, icmpv6, any or a number 0-255"
                    ),
                ));
                return None;
            }
        },
    };
    let template = match spec.template.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(name) => match template::find(name) {
            Some(t) => Some(t),
            None => {
                errors.push(FieldError::new(
                    ErrorCode::UnknownTemplate,
                    "template",
                    format!("there is no rule template {name:?}"),
                ));
                return None;
            }
        },
    };
    let icmp_of_family = match ethertype {
        Some(Ethertype::Ipv6) => Protocol::Icmpv6,
        _ => Protocol::Icmp,
    };
    let protocol = match template.map(|t| (t, t.kind)) {
        None => given.unwrap_or(Protocol::Any),
        Some((t, TemplateKind::Fixed { protocol, .. } | TemplateKind::CustomPorts(protocol))) => {
            if given.is_some_and(|g| g != protocol) {
                errors.push(FieldError::new(
                    ErrorCode::TemplateConflict,
                    "protocol",
                    format!("template {} is {} only", t.id, protocol.name()),
                ));
                return None;
            }
            protocol
        }
        Some((t, TemplateKind::CustomIcmp | TemplateKind::AllIcmp)) => {
            if given.is_some_and(|g| !g.is_icmp()) {
                errors.push(FieldError::new(
                    ErrorCode::TemplateConflict,
                    "protocol",
                    format!("template {} is ICMP only", t.id),
                ));
                return None;
            }
            icmp_of_family
        }
        Some((_, TemplateKind::OtherProtocol)) => match given {
            Some(p) if p != Protocol::Any => p,
            _ => {
                errors.push(FieldError::new(
                    ErrorCode::InvalidProtocol,
                    "protocol",
                    "template other_protocol needs a protocol number",
                ));
                return None;
            }
        },
    };
    let protocol = match (protocol, ethertype) {
        (Protocol::Icmp, Some(Ethertype::Ipv6)) => {
            if given == Some(Protocol::Icmp) {
                notes.push(Note {
                    code: "protocol_normalized",
                    field: Some("protocol"),
                    message: "icmp in an IPv6 rule means icmpv6".to_owned(),
                });
            }
            Protocol::Icmpv6
        }
        (Protocol::Icmpv6, Some(Ethertype::Ipv4)) => {
            errors.push(FieldError::new(
                ErrorCode::ProtocolFamilyMismatch,
                "protocol",
                "icmpv6 cannot be used in an IPv4 rule",
            ));
            return None;
        }
        (p, _) => p,
    };
    Some((protocol, template.map(|t| t.kind)))
}

/// `tcp`, `udp`, `icmp`, `icmpv6` (or `ipv6-icmp`), `any`, or a number 0–255.
pub fn parse_protocol_name(text: &str) -> Option<Protocol> {
    match text.to_ascii_lowercase().as_str() {
        "any" => Some(Protocol::Any),
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "icmp" => Some(Protocol::Icmp),
        "icmpv6" | "ipv6-icmp" => Some(Protocol::Icmpv6),
        n if !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse::<u8>().ok().map(Protocol::from_number)
        }
        _ => None,
    }
}

fn parse_l4(
    spec: &RuleSpec,
    (protocol, template): (Protocol, Option<TemplateKind>),
    errors: &mut Vec<FieldError>,
) -> Option<L4> {
    let (min, max) = (spec.port_range_min, spec.port_range_max);
    if let Some(TemplateKind::Fixed {
        min: tmin,
        max: tmax,
        ..
    }) = template
    {
        let agrees =
            min.is_none_or(|m| m == i64::from(tmin)) && max.is_none_or(|m| m == i64::from(tmax));
        if !agrees {
            errors.push(FieldError::new(
                ErrorCode::TemplateConflict,
                "port_range_min",
                format!("this template fixes the ports to {tmin}-{tmax}"),
            ));
            return None;
        }
        return Some(L4::Ports(PortRange::new(tmin, tmax)?));
    }
    if template == Some(TemplateKind::AllIcmp) && (min.is_some() || max.is_some()) {
        errors.push(FieldError::new(
            ErrorCode::TemplateConflict,
            "port_range_min",
            "template all_icmp matches every ICMP type; use custom_icmp for one type",
        ));
        return None;
    }
    if protocol.has_ports() {
        let in_range = |field: &'static str, v: i64, errors: &mut Vec<FieldError>| {
            let port = u16::try_from(v).ok().filter(|p| *p >= 1);
            if port.is_none() {
                errors.push(FieldError::new(
                    ErrorCode::PortOutOfRange,
                    field,
                    format!("{field} {v} is not a port number 1-65535"),
                ));
            }
            port
        };
        match (min, max) {
            (None, None) if matches!(template, Some(TemplateKind::CustomPorts(_))) => {
                errors.push(FieldError::new(
                    ErrorCode::PortRequired,
                    "port_range_min",
                    "give the port or port range to open",
                ));
                None
            }
            (None, None) => Some(L4::All),
            (None, Some(_)) => {
                errors.push(FieldError::new(
                    ErrorCode::PortRequired,
                    "port_range_min",
                    "port_range_min is required when port_range_max is given",
                ));
                None
            }
            (Some(lo), hi) => {
                let lo = in_range("port_range_min", lo, errors);
                let hi = match hi {
                    Some(hi) => in_range("port_range_max", hi, errors),
                    None => lo,
                };
                let (lo, hi) = (lo?, hi?);
                match PortRange::new(lo, hi) {
                    Some(range) => Some(L4::Ports(range)),
                    None => {
                        errors.push(FieldError::new(
                            ErrorCode::PortRangeInverted,
                            "port_range_min",
                            format!("port_range_min {lo} is greater than port_range_max {hi}"),
                        ));
                        None
                    }
                }
            }
        }
    } else if protocol.is_icmp() {
        let byte = |field: &'static str,
                    code: ErrorCode,
                    what: &str,
                    v: i64,
                    errors: &mut Vec<FieldError>| {
            let b = u8::try_from(v).ok();
            if b.is_none() {
                errors.push(FieldError::new(
                    code,
                    field,
                    format!("ICMP {what} {v} is not 0-255"),
                ));
            }
            b
        };
        match (min, max) {
            (None, None) => Some(L4::All),
            (None, Some(_)) => {
                errors.push(FieldError::new(
                    ErrorCode::IcmpCodeWithoutType,
                    "port_range_max",
                    "an ICMP code (port_range_max) needs an ICMP type (port_range_min)",
                ));
                None
            }
            (Some(t), c) => {
                let t = byte(
                    "port_range_min",
                    ErrorCode::IcmpTypeOutOfRange,
                    "type",
                    t,
                    errors,
                );
                let c = match c {
                    Some(c) => Some(byte(
                        "port_range_max",
                        ErrorCode::IcmpCodeOutOfRange,
                        "code",
                        c,
                        errors,
                    )?),
                    None => None,
                };
                Some(L4::Icmp {
                    icmp_type: t?,
                    code: c,
                })
            }
        }
    } else if min.is_some() || max.is_some() {
        errors.push(FieldError::new(
            ErrorCode::PortsNotAllowed,
            "port_range_min",
            format!(
                "protocol {} has no ports; leave the port range empty",
                protocol.name()
            ),
        ));
        None
    } else {
        Some(L4::All)
    }
}

/// SPEC §1: warn, not refuse, when SSH or RDP is opened to the whole internet.
fn internet_warning(rule: &Rule) -> Option<Note> {
    let Remote::Cidr(cidr) = rule.remote else {
        return None;
    };
    if rule.direction != Direction::Ingress || !cidr.is_any() {
        return None;
    }
    if !matches!(rule.protocol, Protocol::Tcp | Protocol::Any) {
        return None;
    }
    let opens = |port: u16| match rule.l4 {
        L4::All => true,
        L4::Ports(r) => r.contains(port),
        L4::Icmp { .. } => false,
    };
    let services: Vec<&str> = [(22, "SSH (22)"), (3389, "RDP (3389)")]
        .into_iter()
        .filter(|(port, _)| opens(*port))
        .map(|(_, name)| name)
        .collect();
    if services.is_empty() {
        return None;
    }
    Some(Note {
        code: "open_to_internet",
        field: Some("remote_ip_prefix"),
        message: format!(
            "{} {} open to the whole internet ({cidr}); consider allowing only your own address",
            services.join(" and "),
            if services.len() > 1 { "are" } else { "is" }
        ),
    })
}

/// Whether `name` is acceptable for a group, project or instance: 1-255 characters, no control
/// characters, no surrounding white space.
pub fn valid_name(name: &str) -> bool {
    let trimmed = name.trim();
    !trimmed.is_empty()
        && trimmed.chars().count() <= MAX_GROUP_NAME
        && trimmed == name
        && !name.chars().any(char::is_control)
}

/// Checks a new group's name against the project's existing names and quota.
pub fn validate_group(
    name: &str,
    description: &str,
    existing_names: &[&str],
    quota: Quota,
) -> Result<(), Rejected> {
    let mut errors = Vec::new();
    let trimmed = name.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > MAX_GROUP_NAME
        || trimmed != name
        || name.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            ErrorCode::InvalidGroupName,
            "name",
            format!(
                "a group name is 1-{MAX_GROUP_NAME} characters, without control characters or \
                 surrounding spaces"
            ),
        ));
    }
    if description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            ErrorCode::DescriptionTooLong,
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    if !errors.is_empty() {
        return Err(Rejected(errors));
    }
    if existing_names.contains(&name) {
        return Err(Rejected::one(FieldError::new(
            ErrorCode::DuplicateGroupName,
            "name",
            format!("a security group named {name:?} already exists in this project"),
        )));
    }
    if existing_names.len() >= quota.groups {
        return Err(Rejected::one(FieldError {
            code: ErrorCode::QuotaExceeded,
            field: None,
            message: format!(
                "the project has reached its quota of {} security groups",
                quota.groups
            ),
        }));
    }
    Ok(())
}

/// Refuses to delete the `default` group.
pub fn check_group_deletable(group: &SecurityGroup) -> Result<(), Rejected> {
    if group.name == DEFAULT_GROUP {
        return Err(Rejected::one(FieldError {
            code: ErrorCode::DefaultGroupUndeletable,
            field: None,
            message: "the default security group cannot be deleted".to_owned(),
        }));
    }
    Ok(())
}

/// The `default` group as it is created (SPEC §1): ingress TCP 80 and 443 from `0.0.0.0/0`
/// and `::/0`, and egress everything, for both families.
pub fn default_group(id: GroupId) -> SecurityGroup {
    let mut rules = Vec::new();
    let mut add = |direction, ethertype, protocol, l4, description: &str| {
        rules.push(Rule {
            id: RuleId::random(),
            group: id,
            direction,
            ethertype,
            protocol,
            l4,
            remote: Remote::Cidr(Cidr::any(ethertype)),
            description: description.to_owned(),
        });
    };
    for ethertype in Ethertype::ALL {
        for (port, name) in [(80u16, "HTTP"), (443, "HTTPS")] {
            let range = PortRange::single(port).map_or(L4::All, L4::Ports);
            add(Direction::Ingress, ethertype, Protocol::Tcp, range, name);
        }
    }
    for ethertype in Ethertype::ALL {
        add(Direction::Egress, ethertype, Protocol::Any, L4::All, "");
    }
    SecurityGroup {
        id,
        name: DEFAULT_GROUP.to_owned(),
        description: "Default security group".to_owned(),
        rules,
    }
}
