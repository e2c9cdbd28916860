//! Network-rule evaluation, free of I/O: which sources a set of security
//! groups opens a TCP port to, and whether an address falls in a CIDR block.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::aws::diag::{InboundRule, SecurityGroup};

/// Whether a rule's protocol and port range admit TCP to `port`.
pub fn rule_covers(rule: &InboundRule, port: u16) -> bool {
    match rule.protocol.as_str() {
        "-1" | "all" => true,
        "tcp" | "6" => {
            let from = rule.from_port.unwrap_or(0);
            let to = rule.to_port.unwrap_or(65535);
            (from..=to).contains(&i32::from(port))
        }
        _ => false,
    }
}

/// Whether `cidr` (IPv4 or IPv6, `address/length`) contains `ip`. A block
/// that does not parse, or of the other family, contains nothing.
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<IpNet>().is_ok_and(|net| net.contains(&ip))
}

/// Whether `cidr` is a whole address family (`0.0.0.0/0`, `::/0`).
fn is_any_address(cidr: &str) -> bool {
    cidr.parse::<IpNet>().is_ok_and(|net| net.prefix_len() == 0)
}

/// IPv4 blocks that are not reachable from the internet, beyond what
/// `Ipv4Addr`'s stable predicates cover: shared address space (RFC 6598).
const NON_PUBLIC_V4: [Ipv4Net; 1] = [Ipv4Net::new_assert(
    std::net::Ipv4Addr::new(100, 64, 0, 0),
    10,
)];

/// IPv6 blocks that are not reachable from the internet, beyond loopback
/// and unspecified: unique-local (`fc00::/7`) and link-local (`fe80::/10`).
const NON_PUBLIC_V6: [Ipv6Net; 2] = [
    Ipv6Net::new_assert(std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
];

/// Whether an address is globally routable (not private, loopback,
/// link-local, shared or unique-local).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || NON_PUBLIC_V4.iter().any(|net| net.contains(&v4)))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || NON_PUBLIC_V6.iter().any(|net| net.contains(&v6)))
        }
    }
}

/// The single-address block for `ip` (`/32` or `/128`), as a rule would
/// name it.
pub fn host_cidr(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Which sources the security groups open a port to, sorted and without
/// repeats.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Openings {
    pub cidrs: Vec<String>,
    pub groups: Vec<String>,
    pub prefix_lists: Vec<String>,
}

impl Openings {
    /// What `groups` open `port` (TCP) to.
    pub fn of(groups: &[SecurityGroup], port: u16) -> Openings {
        let mut o = Openings::default();
        for rule in groups
            .iter()
            .flat_map(|g| &g.inbound)
            .filter(|r| rule_covers(r, port))
        {
            o.cidrs.extend(rule.cidrs.iter().cloned());
            o.groups.extend(rule.group_ids.iter().cloned());
            o.prefix_lists.extend(rule.prefix_list_ids.iter().cloned());
        }
        for v in [&mut o.cidrs, &mut o.groups, &mut o.prefix_lists] {
            v.sort();
            v.dedup();
        }
        o
    }

    /// Open to no source at all.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.groups.is_empty() && self.prefix_lists.is_empty()
    }

    /// Open to every address of a family.
    pub fn open_to_any_address(&self) -> bool {
        self.cidrs.iter().any(|c| is_any_address(c))
    }

    /// The first block (in sorted order) that admits `ip`.
    pub fn cidr_admitting(&self, ip: IpAddr) -> Option<&str> {
        self.cidrs
            .iter()
            .find(|c| cidr_contains(c, ip))
            .map(String::as_str)
    }

    /// The first of `candidates` that is among the groups let in.
    pub fn group_among<'a>(&self, candidates: &'a [String]) -> Option<&'a str> {
        candidates
            .iter()
            .find(|g| self.groups.contains(g))
            .map(String::as_str)
    }

    /// Whether the prefix list `id` is let in.
    pub fn admits_prefix_list(&self, id: &str) -> bool {
        self.prefix_lists.iter().any(|p| p == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(protocol: &str, from: Option<i32>, to: Option<i32>, cidrs: &[&str]) -> InboundRule {
        InboundRule {
            protocol: protocol.into(),
            from_port: from,
            to_port: to,
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cidrs() {
        assert!(cidr_contains("0.0.0.0/0", ip("203.0.113.9")));
        assert!(cidr_contains("203.0.113.0/24", ip("203.0.113.9")));
        assert!(!cidr_contains("203.0.113.0/24", ip("203.0.114.9")));
        assert!(cidr_contains("203.0.113.9/32", ip("203.0.113.9")));
        assert!(cidr_contains("2001:db8::/32", ip("2001:db8::1")));
        assert!(!cidr_contains("2001:db8::/32", ip("203.0.113.9")));
        assert!(!cidr_contains("garbage", ip("203.0.113.9")));
        assert!(!cidr_contains("10.0.0.0/33", ip("10.0.0.1")));
        assert!(is_public(ip("3.1.2.3")));
        assert!(
            !is_public(ip("10.1.2.3"))
                && !is_public(ip("100.64.0.1"))
                && !is_public(ip("127.0.0.1"))
        );
        assert!(!is_public(ip("fd00::1")) && is_public(ip("2600:1f18::1")));
    }

    #[test]
    fn cidr_edges() {
        // Host bits past the prefix are ignored, as AWS does.
        assert!(cidr_contains("203.0.113.77/24", ip("203.0.113.9")));
        // A bare address is not a block.
        assert!(!cidr_contains("203.0.113.9", ip("203.0.113.9")));
        assert!(!cidr_contains("::/129", ip("::1")));
        assert!(cidr_contains("::/0", ip("2001:db8::1")));
        assert!(!cidr_contains("::/0", ip("203.0.113.9")));
    }

    #[test]
    fn non_public_ranges_and_their_edges() {
        for private in [
            "100.127.255.255",
            "169.254.1.1",
            "172.16.0.1",
            "192.168.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "febf::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in [
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "fec0::1",
            "fbff::1",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn host_cidrs() {
        assert_eq!(host_cidr(ip("198.51.100.7")).to_string(), "198.51.100.7/32");
        assert_eq!(host_cidr(ip("2001:db8::1")).to_string(), "2001:db8::1/128");
    }

    #[test]
    fn which_rules_cover_a_port() {
        assert!(rule_covers(&rule("-1", None, None, &[]), 22));
        assert!(rule_covers(&rule("all", None, None, &[]), 22));
        assert!(rule_covers(&rule("tcp", Some(22), Some(22), &[]), 22));
        assert!(rule_covers(&rule("6", Some(0), Some(1024), &[]), 22));
        assert!(!rule_covers(&rule("tcp", Some(80), Some(443), &[]), 22));
        assert!(!rule_covers(&rule("udp", Some(22), Some(22), &[]), 22));
        assert!(!rule_covers(&rule("icmp", Some(-1), Some(-1), &[]), 22));
        // A TCP rule without ports covers every port.
        assert!(rule_covers(&rule("tcp", None, None, &[]), 65535));
    }

    #[test]
    fn openings_are_merged_sorted_and_deduplicated() {
        let groups = vec![
            SecurityGroup {
                id: "sg-1".into(),
                name: "a".into(),
                inbound: vec![
                    rule("tcp", Some(22), Some(22), &["203.0.113.0/24", "0.0.0.0/0"]),
                    rule("tcp", Some(80), Some(80), &["198.51.100.0/24"]),
                ],
            },
            SecurityGroup {
                id: "sg-2".into(),
                name: "b".into(),
                inbound: vec![InboundRule {
                    protocol: "-1".into(),
                    cidrs: vec!["203.0.113.0/24".into()],
                    group_ids: vec!["sg-eice".into()],
                    prefix_list_ids: vec!["pl-1".into()],
                    ..Default::default()
                }],
            },
        ];
        let open = Openings::of(&groups, 22);
        assert_eq!(open.cidrs, ["0.0.0.0/0", "203.0.113.0/24"]);
        assert_eq!(open.groups, ["sg-eice"]);
        assert_eq!(open.prefix_lists, ["pl-1"]);
        assert!(!open.is_empty() && open.open_to_any_address());
        assert_eq!(open.cidr_admitting(ip("203.0.113.9")), Some("0.0.0.0/0"));
        assert_eq!(
            open.group_among(&["sg-x".into(), "sg-eice".into()]),
            Some("sg-eice")
        );
        assert!(open.admits_prefix_list("pl-1") && !open.admits_prefix_list("pl-2"));
        assert!(!Openings::of(&groups, 443).is_empty());
        assert!(Openings::of(&groups[..1], 443).is_empty());
    }

    #[test]
    fn any_address_means_a_zero_length_prefix() {
        let open = |cidrs: &[&str]| Openings {
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(open(&["::/0"]).open_to_any_address());
        assert!(open(&["10.0.0.0/8", "0.0.0.0/0"]).open_to_any_address());
        assert!(!open(&["10.0.0.0/8", "garbage"]).open_to_any_address());
        assert_eq!(open(&["10.0.0.0/8"]).cidr_admitting(ip("192.0.2.1")), None);
    }
}
