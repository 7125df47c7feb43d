//! The console's *Rule* menu (SPEC §1): ready-made rules and the "custom" kinds, after the
//! rule templates of OpenStack Horizon.

use crate::Protocol;

/// What a template fixes, and what the user still has to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// A fixed protocol and port range (SSH, RDP, All TCP, …).
    Fixed {
        protocol: Protocol,
        min: u16,
        max: u16,
    },
    /// A protocol whose ports the user gives (Custom TCP / UDP).
    CustomPorts(Protocol),
    /// ICMP with an optional type and code from the user (Custom ICMP).
    CustomIcmp,
    /// Every ICMP packet (All ICMP).
    AllIcmp,
    /// A protocol number from the user (Other Protocol).
    OtherProtocol,
}

/// A rule template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Stable id used by the API and `--template` (`rdp`, `custom_tcp`, …).
    pub id: &'static str,
    /// The label in the console's *Rule* menu.
    pub label: &'static str,
    pub kind: TemplateKind,
}

const fn fixed(id: &'static str, label: &'static str, protocol: Protocol, port: u16) -> Template {
    Template {
        id,
        label,
        kind: TemplateKind::Fixed {
            protocol,
            min: port,
            max: port,
        },
    }
}

/// Every template, in the order of the console's menu.
pub const TEMPLATES: &[Template] = &[
    Template {
        id: "custom_tcp",
        label: "Custom TCP Rule",
        kind: TemplateKind::CustomPorts(Protocol::Tcp),
    },
    Template {
        id: "custom_udp",
        label: "Custom UDP Rule",
        kind: TemplateKind::CustomPorts(Protocol::Udp),
    },
    Template {
        id: "custom_icmp",
        label: "Custom ICMP Rule",
        kind: TemplateKind::CustomIcmp,
    },
    Template {
        id: "other_protocol",
        label: "Other Protocol",
        kind: TemplateKind::OtherProtocol,
    },
    Template {
        id: "all_tcp",
        label: "All TCP",
        kind: TemplateKind::Fixed {
            protocol: Protocol::Tcp,
            min: 1,
            max: 65535,
        },
    },
    Template {
        id: "all_udp",
        label: "All UDP",
        kind: TemplateKind::Fixed {
            protocol: Protocol::Udp,
            min: 1,
            max: 65535,
        },
    },
    Template {
        id: "all_icmp",
        label: "All ICMP",
        kind: TemplateKind::AllIcmp,
    },
    fixed("ssh", "SSH", Protocol::Tcp, 22),
    fixed("smtp", "SMTP", Protocol::Tcp, 25),
    // Horizon's DNS template is TCP 53; UDP 53 is a Custom UDP rule.
    fixed("dns", "DNS", Protocol::Tcp, 53),
    fixed("http", "HTTP", Protocol::Tcp, 80),
    fixed("pop3", "POP3", Protocol::Tcp, 110),
    fixed("imap", "IMAP", Protocol::Tcp, 143),
    fixed("ldap", "LDAP", Protocol::Tcp, 389),
    fixed("https", "HTTPS", Protocol::Tcp, 443),
    fixed("smtps", "SMTPS", Protocol::Tcp, 465),
    fixed("imaps", "IMAPS", Protocol::Tcp, 993),
    fixed("pop3s", "POP3S", Protocol::Tcp, 995),
    fixed("ms_sql", "MS SQL", Protocol::Tcp, 1433),
    fixed("mysql", "MYSQL", Protocol::Tcp, 3306),
    fixed("rdp", "RDP", Protocol::Tcp, 3389),
];

/// The template with id `name`; letter case and `-` for `_` do not matter (`RDP`, `ms-sql`).
pub fn find(name: &str) -> Option<&'static Template> {
    let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
    TEMPLATES.iter().find(|t| t.id == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_of_the_spec_is_there_once() {
        let labels: Vec<_> = TEMPLATES.iter().map(|t| t.label).collect();
        expect_test::expect![[r#"
            [
                "Custom TCP Rule",
                "Custom UDP Rule",
                "Custom ICMP Rule",
                "Other Protocol",
                "All TCP",
                "All UDP",
                "All ICMP",
                "SSH",
                "SMTP",
                "DNS",
                "HTTP",
                "POP3",
                "IMAP",
                "LDAP",
                "HTTPS",
                "SMTPS",
                "IMAPS",
                "POP3S",
                "MS SQL",
                "MYSQL",
                "RDP",
            ]
        "#]]
        .assert_debug_eq(&labels);
        let mut ids: Vec<_> = TEMPLATES.iter().map(|t| t.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), TEMPLATES.len());
    }

    #[test]
    fn rdp_is_tcp_3389_and_lookup_is_forgiving() {
        let rdp = find("RDP").unwrap();
        assert_eq!(
            rdp.kind,
            TemplateKind::Fixed {
                protocol: Protocol::Tcp,
                min: 3389,
                max: 3389
            }
        );
        assert_eq!(find("ms-sql").unwrap().id, "ms_sql");
        assert!(find("telnet").is_none());
    }
}
