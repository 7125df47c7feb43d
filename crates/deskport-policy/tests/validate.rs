//! Rule and group validation, one case per error of SPEC §1, data-driven: each case renders
//! what came out (the rule and notes, or every error with its code and field).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deskport_policy::{
    check_group_deletable, default_group, validate_group, validate_rule, GroupId, Quota, Remote,
    Rule, RuleContext, RuleId, RuleSpec, SecurityGroup, L4,
};
use expect_test::{expect, Expect};
use uuid::Uuid;

const OTHER_GROUP: Uuid = Uuid::from_u128(0x42);

fn group(rules: Vec<Rule>) -> SecurityGroup {
    SecurityGroup {
        id: GroupId(Uuid::from_u128(1)),
        name: "web".into(),
        description: String::new(),
        rules,
    }
}

fn render_rule(r: &Rule) -> String {
    let l4 = match r.l4 {
        L4::All => "all".to_owned(),
        L4::Ports(p) => format!("{}-{}", p.min(), p.max()),
        L4::Icmp { icmp_type, code } => format!("type {icmp_type} code {code:?}"),
    };
    let remote = match r.remote {
        Remote::Cidr(c) => c.to_string(),
        Remote::Group(g) => format!("group {g}"),
    };
    format!(
        "{} {} {} {l4} from {remote} {:?}",
        r.direction.as_str(),
        r.ethertype.as_str(),
        r.protocol.name(),
        r.description
    )
}

fn run(spec: &RuleSpec, existing: Vec<Rule>, project_rules: usize) -> String {
    let g = group(existing);
    let exists = |id: GroupId| id.0 == OTHER_GROUP || id == g.id;
    let ctx = RuleContext {
        group: &g,
        group_exists: &exists,
        project_rules,
        quota: Quota::default(),
    };
    match validate_rule(spec, &ctx, RuleId(Uuid::from_u128(9))) {
        Ok(accepted) => {
            let mut out = format!("ok: {}", render_rule(&accepted.rule));
            for n in accepted.notes {
                out += &format!(
                    "\nnote {} [{}]: {}",
                    n.code,
                    n.field.unwrap_or("-"),
                    n.message
                );
            }
            out
        }
        Err(rejected) => rejected
            .0
            .iter()
            .map(|e| format!("{} [{}]: {}", e.code, e.field.unwrap_or("-"), e.message))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn check(spec: RuleSpec, expect: Expect) {
    expect.assert_eq(&run(&spec, Vec::new(), 0));
}

fn spec(f: impl FnOnce(&mut RuleSpec)) -> RuleSpec {
    let mut s = RuleSpec::default();
    f(&mut s);
    s
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn the_articles_rule_rdp_for_one_address() {
    check(
        spec(|s_| {
            s_.template = s("rdp");
            s_.remote_ip_prefix = s("127.0.0.1/32");
        }),
        expect![[r#"ok: ingress IPv4 tcp 3389-3389 from 127.0.0.1/32 """#]],
    );
}

#[test]
fn rdp_open_to_the_internet_is_accepted_with_a_warning() {
    check(
        spec(|s_| {
            s_.template = s("RDP");
            s_.remote_ip_prefix = s("0.0.0.0/0");
        }),
        expect![[r#"
            ok: ingress IPv4 tcp 3389-3389 from 0.0.0.0/0 ""
            note open_to_internet [remote_ip_prefix]: RDP (3389) is open to the whole internet (0.0.0.0/0); consider allowing only your own address"#]],
    );
    check(
        spec(|s_| s_.protocol = s("tcp")),
        expect![[r#"
            ok: ingress IPv4 tcp all from 0.0.0.0/0 ""
            note open_to_internet [remote_ip_prefix]: SSH (22) and RDP (3389) are open to the whole internet (0.0.0.0/0); consider allowing only your own address"#]],
    );
}

#[test]
fn min_greater_than_max() {
    check(
        spec(|s_| {
            s_.protocol = s("tcp");
            s_.port_range_min = Some(3390);
            s_.port_range_max = Some(3389);
        }),
        expect!["port_range_inverted [port_range_min]: port_range_min 3390 is greater than port_range_max 3389"],
    );
}

#[test]
fn ports_out_of_range_or_half_given() {
    check(
        spec(|s_| {
            s_.protocol = s("udp");
            s_.port_range_min = Some(0);
            s_.port_range_max = Some(70000);
        }),
        expect![[r#"
            port_out_of_range [port_range_min]: port_range_min 0 is not a port number 1-65535
            port_out_of_range [port_range_max]: port_range_max 70000 is not a port number 1-65535"#]],
    );
    check(
        spec(|s_| {
            s_.protocol = s("tcp");
            s_.port_range_max = Some(22);
        }),
        expect!["port_required [port_range_min]: port_range_min is required when port_range_max is given"],
    );
    check(
        spec(|s_| {
            s_.protocol = s("6");
            s_.port_range_min = Some(22);
        }),
        expect![[r#"
            ok: ingress IPv4 tcp 22-22 from 0.0.0.0/0 ""
            note open_to_internet [remote_ip_prefix]: SSH (22) is open to the whole internet (0.0.0.0/0); consider allowing only your own address"#]],
    );
}

#[test]
fn ports_with_a_protocol_that_has_none() {
    check(
        spec(|s_| {
            s_.port_range_min = Some(80);
        }),
        expect!["ports_not_allowed [port_range_min]: protocol any has no ports; leave the port range empty"],
    );
    check(
        spec(|s_| {
            s_.protocol = s("47");
            s_.port_range_min = Some(80);
            s_.port_range_max = Some(80);
        }),
        expect!["ports_not_allowed [port_range_min]: protocol 47 has no ports; leave the port range empty"],
    );
}

#[test]
fn icmp_type_and_code() {
    check(
        spec(|s_| {
            s_.protocol = s("icmp");
            s_.port_range_min = Some(8);
            s_.port_range_max = Some(0);
        }),
        expect![[r#"ok: ingress IPv4 icmp type 8 code Some(0) from 0.0.0.0/0 """#]],
    );
    check(
        spec(|s_| {
            s_.protocol = s("icmp");
            s_.port_range_min = Some(256);
            s_.port_range_max = Some(-1);
        }),
        expect![[r#"
            icmp_type_out_of_range [port_range_min]: ICMP type 256 is not 0-255
            icmp_code_out_of_range [port_range_max]: ICMP code -1 is not 0-255"#]],
    );
    check(
        spec(|s_| {
            s_.protocol = s("icmp");
            s_.port_range_max = Some(3);
        }),
        expect!["icmp_code_without_type [port_range_max]: an ICMP code (port_range_max) needs an ICMP type (port_range_min)"],
    );
}

#[test]
fn icmp_and_the_address_family() {
    check(
        spec(|s_| {
            s_.protocol = s("icmp");
            s_.ethertype = s("IPv6");
        }),
        expect![[r#"
            ok: ingress IPv6 icmpv6 all from ::/0 ""
            note protocol_normalized [protocol]: icmp in an IPv6 rule means icmpv6"#]],
    );
    check(
        spec(|s_| {
            s_.protocol = s("icmpv6");
            s_.ethertype = s("ipv4");
        }),
        expect!["protocol_family_mismatch [protocol]: icmpv6 cannot be used in an IPv4 rule"],
    );
    check(
        spec(|s_| {
            s_.template = s("all_icmp");
            s_.remote_ip_prefix = s("2001:db8::/32");
        }),
        expect![[r#"ok: ingress IPv6 icmpv6 all from 2001:db8::/32 """#]],
    );
}

#[test]
fn cidr_family_against_ethertype() {
    check(
        spec(|s_| {
            s_.ethertype = s("IPv6");
            s_.remote_ip_prefix = s("10.0.0.0/8");
        }),
        expect!["cidr_family_mismatch [remote_ip_prefix]: remote_ip_prefix is an IPv4 prefix but the rule's ethertype is IPv6"],
    );
    // Without an ethertype the prefix's family is taken.
    check(
        spec(|s_| {
            s_.template = s("ssh");
            s_.remote_ip_prefix = s("2001:db8::1/128");
        }),
        expect![[r#"ok: ingress IPv6 tcp 22-22 from 2001:db8::1/128 """#]],
    );
}

#[test]
fn host_bits_are_cleared_and_the_caller_is_told() {
    check(
        spec(|s_| {
            s_.template = s("https");
            s_.remote_ip_prefix = s("10.0.0.1/8");
        }),
        expect![[r#"
            ok: ingress IPv4 tcp 443-443 from 10.0.0.0/8 ""
            note cidr_normalized [remote_ip_prefix]: 10.0.0.1/8 was normalised to 10.0.0.0/8 (host bits cleared)"#]],
    );
    check(
        spec(|s_| {
            s_.template = s("https");
            s_.remote_ip_prefix = s("10.0.0.0/33");
        }),
        expect![[
            r#"invalid_cidr [remote_ip_prefix]: remote_ip_prefix "10.0.0.0/33" is not a CIDR: prefix length 33 is longer than 32 bits"#
        ]],
    );
    check(
        spec(|s_| {
            s_.template = s("https");
            s_.remote_ip_prefix = s("my-laptop");
        }),
        expect![[
            r#"invalid_cidr [remote_ip_prefix]: remote_ip_prefix "my-laptop" is not a CIDR: "my-laptop" is not an IP address"#
        ]],
    );
}

#[test]
fn remote_cidr_and_group_both_given() {
    check(
        spec(|s_| {
            s_.template = s("rdp");
            s_.remote_ip_prefix = s("127.0.0.1/32");
            s_.remote_group_id = Some(OTHER_GROUP.to_string());
        }),
        expect!["remote_conflict [remote_group_id]: give either remote_ip_prefix or remote_group_id, not both"],
    );
}

#[test]
fn remote_group_must_exist() {
    check(
        spec(|s_| {
            s_.template = s("mysql");
            s_.remote_group_id = Some(OTHER_GROUP.to_string());
        }),
        expect![[
            r#"ok: ingress IPv4 tcp 3306-3306 from group 00000000-0000-0000-0000-000000000042 """#
        ]],
    );
    check(
        spec(|s_| {
            s_.template = s("mysql");
            s_.remote_group_id = Some(Uuid::from_u128(0x43).to_string());
        }),
        expect!["remote_group_not_found [remote_group_id]: security group 00000000-0000-0000-0000-000000000043 does not exist"],
    );
    check(
        spec(|s_| {
            s_.template = s("mysql");
            s_.remote_group_id = s("default");
        }),
        expect![[
            r#"invalid_remote_group [remote_group_id]: remote_group_id "default" is not a security group id"#
        ]],
    );
}

#[test]
fn templates_unknown_conflicting_or_incomplete() {
    check(
        spec(|s_| s_.template = s("telnet")),
        expect![[r#"unknown_template [template]: there is no rule template "telnet""#]],
    );
    check(
        spec(|s_| {
            s_.template = s("rdp");
            s_.port_range_min = Some(3390);
        }),
        expect!["template_conflict [port_range_min]: this template fixes the ports to 3389-3389"],
    );
    check(
        spec(|s_| {
            s_.template = s("rdp");
            s_.protocol = s("udp");
        }),
        expect!["template_conflict [protocol]: template rdp is tcp only"],
    );
    check(
        spec(|s_| s_.template = s("custom_tcp")),
        expect!["port_required [port_range_min]: give the port or port range to open"],
    );
    check(
        spec(|s_| {
            s_.template = s("custom_udp");
            s_.port_range_min = Some(5000);
            s_.port_range_max = Some(5010);
        }),
        expect![[r#"ok: ingress IPv4 udp 5000-5010 from 0.0.0.0/0 """#]],
    );
    check(
        spec(|s_| s_.template = s("other_protocol")),
        expect!["invalid_protocol [protocol]: template other_protocol needs a protocol number"],
    );
    check(
        spec(|s_| {
            s_.template = s("other_protocol");
            s_.protocol = s("47");
            s_.direction = s("egress");
        }),
        expect![[r#"ok: egress IPv4 47 all from 0.0.0.0/0 """#]],
    );
}

#[test]
fn bad_direction_ethertype_protocol_and_description_are_all_reported() {
    check(
        spec(|s_| {
            s_.direction = s("inbound");
            s_.ethertype = s("IPv5");
            s_.protocol = s("tcpp");
            s_.description = Some("x".repeat(256));
        }),
        expect![[r#"
            description_too_long [description]: description is longer than 255 characters
            invalid_direction [direction]: direction "inbound" is neither "ingress" nor "egress"
            invalid_ethertype [ethertype]: ethertype "IPv5" is neither "IPv4" nor "IPv6"
            invalid_protocol [protocol]: protocol "tcpp" is not tcp, udp, icmp, icmpv6, any or a number 0-255"#]],
    );
    check(
        spec(|s_| s_.protocol = s("256")),
        expect![[
            r#"invalid_protocol [protocol]: protocol "256" is not tcp, udp, icmp, icmpv6, any or a number 0-255"#
        ]],
    );
    // 255 characters (not bytes) is the limit.
    check(
        spec(|s_| {
            s_.template = s("http");
            s_.remote_ip_prefix = s("10.1.0.0/16");
            s_.description = Some("é".repeat(255));
        }),
        expect![[
            r#"ok: ingress IPv4 tcp 80-80 from 10.1.0.0/16 "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé""#
        ]],
    );
}

#[test]
fn duplicate_rule_is_a_conflict_whatever_the_description() {
    let first = spec(|s_| {
        s_.template = s("rdp");
        s_.remote_ip_prefix = s("127.0.0.1/32");
        s_.description = s("mine");
    });
    let g = group(Vec::new());
    let exists = |_: GroupId| false;
    let ctx = RuleContext {
        group: &g,
        group_exists: &exists,
        project_rules: 0,
        quota: Quota::default(),
    };
    let existing = validate_rule(&first, &ctx, RuleId(Uuid::from_u128(7)))
        .unwrap()
        .rule;
    // The same rule written differently: protocol by number, ports explicit, bare address.
    let again = spec(|s_| {
        s_.protocol = s("6");
        s_.port_range_min = Some(3389);
        s_.port_range_max = Some(3389);
        s_.remote_ip_prefix = s("127.0.0.1");
    });
    expect!["duplicate_rule [-]: security group \"web\" already has this rule (00000000-0000-0000-0000-000000000007)"]
        .assert_eq(&run(&again, vec![existing.clone()], 1));
    assert!(
        run(&again, Vec::new(), 1).starts_with("ok"),
        "without the existing rule it is accepted"
    );
    // A different remote is a different rule.
    let other = spec(|s_| {
        s_.template = s("rdp");
        s_.remote_ip_prefix = s("127.0.0.2/32");
    });
    assert!(run(&other, vec![existing], 1).starts_with("ok"));
}

#[test]
fn rule_quota() {
    let rdp = spec(|s_| {
        s_.template = s("rdp");
        s_.remote_ip_prefix = s("127.0.0.1/32");
    });
    expect!["quota_exceeded [-]: the project has reached its quota of 100 security group rules"]
        .assert_eq(&run(&rdp, Vec::new(), 100));
    assert!(run(&rdp, Vec::new(), 99).starts_with("ok"));
}

#[test]
fn groups_names_quota_and_the_default_group() {
    let render = |r: Result<(), deskport_policy::Rejected>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!(
            "{} [{}]: {}",
            e.first().code,
            e.first().field.unwrap_or("-"),
            e.first().message
        ),
    };
    let q = Quota::default();
    expect!["ok"].assert_eq(&render(validate_group("web", "", &["default"], q)));
    expect![[r#"duplicate_group_name [name]: a security group named "web" already exists in this project"#]]
        .assert_eq(&render(validate_group("web", "", &["default", "web"], q)));
    expect!["invalid_group_name [name]: a group name is 1-255 characters, without control characters or surrounding spaces"]
        .assert_eq(&render(validate_group(" web", "", &[], q)));
    expect!["invalid_group_name [name]: a group name is 1-255 characters, without control characters or surrounding spaces"]
        .assert_eq(&render(validate_group("", "", &[], q)));
    expect!["description_too_long [description]: description is longer than 255 characters"]
        .assert_eq(&render(validate_group("x", &"d".repeat(300), &[], q)));
    let ten: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    expect!["quota_exceeded [-]: the project has reached its quota of 10 security groups"]
        .assert_eq(&render(validate_group("eleventh", "", &ten, q)));

    let default = default_group(GroupId(Uuid::from_u128(5)));
    expect!["default_group_undeletable [-]: the default security group cannot be deleted"]
        .assert_eq(&render(check_group_deletable(&default)));
    let rules: Vec<String> = default.rules.iter().map(render_rule).collect();
    expect![[r#"
        [
            "ingress IPv4 tcp 80-80 from 0.0.0.0/0 \"HTTP\"",
            "ingress IPv4 tcp 443-443 from 0.0.0.0/0 \"HTTPS\"",
            "ingress IPv6 tcp 80-80 from ::/0 \"HTTP\"",
            "ingress IPv6 tcp 443-443 from ::/0 \"HTTPS\"",
            "egress IPv4 any all from 0.0.0.0/0 \"\"",
            "egress IPv6 any all from ::/0 \"\"",
        ]
    "#]]
    .assert_debug_eq(&rules);
}
