//! The connection-tracking table, through the `conntrack` program of conntrack-tools: listing
//! flows and deleting the ones a new policy revokes.
//!
//! A flow deleted from the table is no longer "established"; its next packet is judged as new
//! by the ruleset, which rejects a mid-connection TCP packet with a reset. That is how removing
//! a rule cuts live connections (SPEC §1).

use std::net::IpAddr;

use deskport_policy::{proto, Direction, Packet};

/// One tracked flow, in its original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports for protocols with ports; `type`, `code` and `id` for ICMP.
    pub l4: FlowL4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowL4 {
    Ports { sport: u16, dport: u16 },
    Icmp { icmp_type: u8, code: u8, id: u16 },
    None,
}

impl Flow {
    /// The packet that opened the flow, as the instance at `dst` (ingress) or `src` (egress)
    /// would see it.
    pub fn opening_packet(&self, direction: Direction) -> Packet {
        let remote = match direction {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        };
        let port = match self.l4 {
            FlowL4::Ports { dport, .. } => dport,
            FlowL4::Icmp {
                icmp_type, code, ..
            } => u16::from(icmp_type) << 8 | u16::from(code),
            FlowL4::None => 0,
        };
        Packet {
            direction,
            remote,
            protocol: self.protocol,
            port,
        }
    }

    /// Arguments for `conntrack -D` that select exactly this flow.
    /// Arguments of `ss -K` that abort the local TCP socket that accepted this flow (its
    /// destination is this host): both ends then see a reset. `None` for other flows.
    pub fn kill_socket_args(&self) -> Option<Vec<String>> {
        let FlowL4::Ports { sport, dport } = self.l4 else {
            return None;
        };
        if self.protocol != 6 {
            return None;
        }
        let endpoint = |addr: IpAddr, port: u16| match addr {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        Some(vec![
            "-K".to_owned(),
            "-t".to_owned(),
            "src".to_owned(),
            endpoint(self.dst, dport),
            "dst".to_owned(),
            endpoint(self.src, sport),
        ])
    }

    pub fn delete_args(&self) -> Vec<String> {
        let family = match self.src {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        };
        let mut args = vec![
            "-D".to_owned(),
            "-f".to_owned(),
            family.to_owned(),
            "-p".to_owned(),
            self.protocol.to_string(),
            "-s".to_owned(),
            self.src.to_string(),
            "-d".to_owned(),
            self.dst.to_string(),
        ];
        match self.l4 {
            FlowL4::Ports { sport, dport } => {
                args.extend(["--sport".to_owned(), sport.to_string()]);
                args.extend(["--dport".to_owned(), dport.to_string()]);
            }
            FlowL4::Icmp {
                icmp_type,
                code,
                id,
                ..
            } => {
                let prefix = if self.protocol == proto::ICMPV6 {
                    "--icmpv6"
                } else {
                    "--icmp"
                };
                args.extend([format!("{prefix}-type"), icmp_type.to_string()]);
                args.extend([format!("{prefix}-code"), code.to_string()]);
                args.extend([format!("{prefix}-id"), id.to_string()]);
            }
            FlowL4::None => {}
        }
        args
    }
}

/// Parses the default output of `conntrack -L`, one flow per line, e.g.
/// `tcp 6 431999 ESTABLISHED src=198.18.0.2 dst=198.18.2.2 sport=40000 dport=3389 src=… [ASSURED] mark=0 use=1`.
/// Lines that cannot be read are skipped (and counted in the second value).
pub fn parse_list(text: &str) -> (Vec<Flow>, usize) {
    let mut flows = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(flow) => flows.push(flow),
            None => skipped += 1,
        }
    }
    (flows, skipped)
}

fn parse_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let _name = words.next()?;
    let protocol: u8 = words.next()?.parse().ok()?;
    // The first occurrence of each key belongs to the original direction.
    let mut src = None;
    let mut dst = None;
    let mut sport = None;
    let mut dport = None;
    let mut icmp_type = None;
    let mut code = None;
    let mut id = None;
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let set_first = |slot: &mut Option<String>| {
            if slot.is_none() {
                *slot = Some(value.to_owned());
            }
        };
        match key {
            "src" => set_first(&mut src),
            "dst" => set_first(&mut dst),
            "sport" => set_first(&mut sport),
            "dport" => set_first(&mut dport),
            "type" => set_first(&mut icmp_type),
            "code" => set_first(&mut code),
            "id" => set_first(&mut id),
            _ => {}
        }
    }
    let src: IpAddr = src?.parse().ok()?;
    let dst: IpAddr = dst?.parse().ok()?;
    let l4 = match (sport, dport, icmp_type) {
        (Some(s), Some(d), _) => FlowL4::Ports {
            sport: s.parse().ok()?,
            dport: d.parse().ok()?,
        },
        (_, _, Some(t)) => FlowL4::Icmp {
            icmp_type: t.parse().ok()?,
            code: code?.parse().ok()?,
            id: id.map_or(Some(0), |i| i.parse().ok())?,
        },
        _ => FlowL4::None,
    };
    Some(Flow {
        protocol,
        src,
        dst,
        l4,
    })
}

/// The fuzzing oracle (see `fuzz/`): any text parses without panicking, every flow read
/// describes itself for deletion, and lines are either read or counted as skipped.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (flows, skipped) = parse_list(&text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(flows.len() + skipped, lines);
    for flow in &flows {
        assert!(flow.delete_args().len() >= 9);
        let _ = flow.opening_packet(Direction::Ingress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.18.2.2 sport=40000 dport=3389 src=198.18.2.2 dst=198.18.0.2 sport=3389 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=198.18.0.3 dst=198.18.2.2 sport=5353 dport=53 [UNREPLIED] src=198.18.2.2 dst=198.18.0.3 sport=53 dport=5353 mark=0 use=1
icmp     1 29 src=198.18.0.2 dst=198.18.2.2 type=8 code=0 id=4242 src=198.18.2.2 dst=198.18.0.2 type=0 code=0 id=4242 mark=0 use=1
ipv6-icmp 58 29 src=2001:db8::2 dst=2001:db8:2::2 type=128 code=0 id=7 src=2001:db8:2::2 dst=2001:db8::2 type=129 code=0 id=7 mark=0 use=1
gre      47 179 src=198.18.0.2 dst=198.18.2.2 srckey=0x0 dstkey=0x0 src=198.18.2.2 dst=198.18.0.2 srckey=0x0 dstkey=0x0 mark=0 use=1
garbage line
";

    #[test]
    fn parses_every_protocol_and_skips_garbage() {
        let (flows, skipped) = parse_list(SAMPLE);
        assert_eq!(skipped, 1);
        assert_eq!(flows.len(), 5);
        assert_eq!(
            flows[0].opening_packet(Direction::Ingress),
            Packet::ports(Direction::Ingress, "198.18.0.2".parse().unwrap(), 6, 3389)
        );
        assert_eq!(
            flows[1].l4,
            FlowL4::Ports {
                sport: 5353,
                dport: 53
            }
        );
        assert_eq!(
            flows[2].opening_packet(Direction::Ingress),
            Packet::icmp(Direction::Ingress, "198.18.0.2".parse().unwrap(), 8, 0)
        );
        assert_eq!(flows[3].protocol, 58);
        assert_eq!(flows[4].l4, FlowL4::None);
        assert_eq!(
            flows[0].delete_args().join(" "),
            "-D -f ipv4 -p 6 -s 198.18.0.2 -d 198.18.2.2 --sport 40000 --dport 3389"
        );
        assert_eq!(
            flows[3].delete_args().join(" "),
            "-D -f ipv6 -p 58 -s 2001:db8::2 -d 2001:db8:2::2 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 7"
        );
        assert_eq!(
            flows[0].opening_packet(Direction::Egress).remote,
            "198.18.2.2".parse::<IpAddr>().unwrap()
        );
        // The accepting socket of a TCP flow, from its own side; nothing for other protocols.
        assert_eq!(
            flows[0].kill_socket_args().unwrap().join(" "),
            "-K -t src 198.18.2.2:3389 dst 198.18.0.2:40000"
        );
        assert_eq!(flows[1].kill_socket_args(), None);
        assert_eq!(flows[2].kill_socket_args(), None);
        let v6 = Flow {
            protocol: 6,
            src: "2001:db8::2".parse().unwrap(),
            dst: "2001:db8:2::2".parse().unwrap(),
            l4: FlowL4::Ports {
                sport: 40000,
                dport: 3389,
            },
        };
        assert_eq!(
            v6.kill_socket_args().unwrap().join(" "),
            "-K -t src [2001:db8:2::2]:3389 dst [2001:db8::2]:40000"
        );
    }
}
