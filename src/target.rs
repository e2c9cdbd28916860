//! What the user typed → which instance lookup, and, once the instance is
//! known, which address to connect to. Pure functions only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Failure;
use crate::sanitize::terminal_safe;

/// How the user named the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `i-0123456789abcdef0`
    InstanceId(String),
    /// An IPv4 or IPv6 address, public or private.
    Ip(IpAddr),
    /// A public or private DNS name (`ec2-…amazonaws.com`, `ip-10-…internal`).
    DnsName(String),
    /// Anything else: the value of the `Name` tag. Names with dots may also be
    /// DNS names, so they are looked up both ways.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::InstanceId(id) => write!(f, "instance id {id}"),
            Target::Ip(ip) => write!(f, "address {ip}"),
            Target::DnsName(name) => write!(f, "DNS name {}", terminal_safe(name)),
            Target::Name(name) => write!(f, "Name tag {:?}", terminal_safe(name).as_ref()),
        }
    }
}

impl Target {
    /// The target as the user wrote it (without a user part).
    pub fn host_text(&self) -> String {
        match self {
            Target::InstanceId(s) | Target::DnsName(s) | Target::Name(s) => s.clone(),
            Target::Ip(ip) => ip.to_string(),
        }
    }
}

/// Longest tag value EC2 allows; anything longer cannot name an instance.
const MAX_TARGET_LEN: usize = 256;

/// Whether `s` has the shape of an EC2 instance id (`i-` and 8 or 17 hex digits).
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Splits `[USER@]TARGET` and classifies the target. Anything that could be
/// mistaken for an option or could smuggle terminal control is refused here,
/// before any work is done.
pub fn parse_destination(dest: &str) -> Result<(Option<String>, Target), Failure> {
    let (user, host) = match dest.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, dest),
    };
    if let Some(user) = user {
        validate_user(user)?;
    }
    Ok((user.map(str::to_owned), parse_target(host)?))
}

/// Classifies a target (without a user part).
pub fn parse_target(host: &str) -> Result<Target, Failure> {
    let shown = terminal_safe(host);
    if host.is_empty() {
        return Err(Failure::usage(
            "empty target: name an instance id, Name tag, DNS name or IP address",
        ));
    }
    if host.starts_with('-') {
        return Err(Failure::usage(format!("target {shown:?} starts with '-'"))
            .hint("put options before the target; a target can never start with '-'"));
    }
    if host.chars().any(char::is_control) {
        return Err(Failure::usage(format!(
            "target {shown:?} contains control characters"
        )));
    }
    if host.len() > MAX_TARGET_LEN {
        return Err(Failure::usage(format!(
            "target is {} bytes long; instance names are at most {MAX_TARGET_LEN}",
            host.len()
        )));
    }
    if let Some(hex) = host.strip_prefix("i-") {
        if is_instance_id(host) {
            return Ok(Target::InstanceId(host.to_owned()));
        }
        // `i-` followed only by hex digits, but of the wrong length, is a
        // typo of an instance id rather than a name.
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                Failure::usage(format!("{shown:?} is not a valid instance id"))
                    .hint("instance ids are 'i-' followed by 8 or 17 lowercase hex digits"),
            );
        }
    }
    // `[::1]` as ssh users sometimes write IPv6 addresses.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Target::Ip(ip));
    }
    if looks_like_aws_dns_name(host) {
        return Ok(Target::DnsName(host.to_ascii_lowercase()));
    }
    Ok(Target::Name(host.to_owned()))
}

/// Public (`ec2-…compute.amazonaws.com`, `….compute-1.amazonaws.com`) and
/// private (`ip-10-0-0-1.ec2.internal`, `i-….region.compute.internal`) EC2
/// host names. Other dotted names are treated as Name tags *and* DNS names.
fn looks_like_aws_dns_name(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    lower.ends_with(".amazonaws.com")
        || lower.ends_with(".compute.internal")
        || lower.ends_with(".ec2.internal")
        || lower.ends_with(".amazonaws.com.cn")
}

/// Checks an OS user name: what EC2 Instance Connect accepts (1–32 chars) and
/// nothing that ssh or a remote shell could read as something else.
pub fn validate_user(user: &str) -> Result<(), Failure> {
    let shown = terminal_safe(user);
    let ok_chars = user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if user.is_empty() || user.len() > 32 || user.starts_with('-') || !ok_chars {
        return Err(
            Failure::usage(format!("{shown:?} is not a valid OS user name")).hint(
                "OS user names are 1-32 letters, digits, '_', '-' or '.', not starting with '-'",
            ),
        );
    }
    Ok(())
}

/// Which of an instance's addresses to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressChoice {
    /// Public IPv4 if there is one, else private IPv4 (or what the target named).
    #[default]
    Auto,
    Public,
    Private,
    Ipv6,
}

/// The addresses an instance has, as DescribeInstances reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub public_ip: Option<Ipv4Addr>,
    pub private_ip: Option<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    pub public_dns: Option<String>,
    pub private_dns: Option<String>,
}

/// Picks the address to connect to, or says why there is none.
///
/// With `Auto`, a target given as one of the instance's own addresses (or DNS
/// names) is honoured — the user said where to go — else public IPv4 wins
/// over private.
pub fn choose_address(
    addrs: &Addresses,
    choice: AddressChoice,
    target: &Target,
) -> Result<IpAddr, Failure> {
    let public = addrs.public_ip.map(IpAddr::V4);
    let private = addrs.private_ip.map(IpAddr::V4);
    let ipv6 = addrs.ipv6.first().copied().map(IpAddr::V6);
    let picked = match choice {
        AddressChoice::Public => public.ok_or_else(|| {
            Failure::new("the instance has no public IPv4 address").hint(
                "connect to its private address with --private (from inside the VPC or over a VPN)",
            )
        })?,
        AddressChoice::Private => {
            private.ok_or_else(|| Failure::new("the instance has no private IPv4 address"))?
        }
        AddressChoice::Ipv6 => ipv6.ok_or_else(|| {
            Failure::new("the instance has no IPv6 address")
                .hint("assign one to its network interface, or use --public / --private")
        })?,
        AddressChoice::Auto => {
            let named = match target {
                Target::Ip(ip) => [public, private, ipv6]
                    .into_iter()
                    .flatten()
                    .find(|a| a == ip),
                Target::DnsName(name) | Target::Name(name) => {
                    if addrs
                        .private_dns
                        .as_deref()
                        .is_some_and(|d| d.eq_ignore_ascii_case(name))
                    {
                        private
                    } else if addrs
                        .public_dns
                        .as_deref()
                        .is_some_and(|d| d.eq_ignore_ascii_case(name))
                    {
                        public
                    } else {
                        None
                    }
                }
                Target::InstanceId(_) => None,
            };
            named.or(public).or(private).or(ipv6).ok_or_else(|| {
                Failure::new("the instance has no IP address to connect to")
                    .hint("it may still be starting, or have no network interface; check it in the EC2 console")
            })?
        }
    };
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Target {
        Target::Name(s.to_owned())
    }

    #[test]
    fn classifies_targets() {
        assert_eq!(
            parse_target("i-0123456789abcdef0").unwrap(),
            Target::InstanceId("i-0123456789abcdef0".into())
        );
        assert_eq!(
            parse_target("i-01234567").unwrap(),
            Target::InstanceId("i-01234567".into())
        );
        assert_eq!(
            parse_target("10.0.1.5").unwrap(),
            Target::Ip("10.0.1.5".parse().unwrap())
        );
        assert_eq!(
            parse_target("2600:1f18::1").unwrap(),
            Target::Ip("2600:1f18::1".parse().unwrap())
        );
        assert_eq!(
            parse_target("[::1]").unwrap(),
            Target::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            parse_target("ec2-3-1-2-3.compute-1.amazonaws.com").unwrap(),
            Target::DnsName("ec2-3-1-2-3.compute-1.amazonaws.com".into())
        );
        assert_eq!(
            parse_target("IP-10-0-0-1.EC2.internal").unwrap(),
            Target::DnsName("ip-10-0-0-1.ec2.internal".into())
        );
        assert_eq!(parse_target("web-1").unwrap(), name("web-1"));
        assert_eq!(parse_target("i-am-a-name").unwrap(), name("i-am-a-name"));
        assert_eq!(parse_target("web.prod").unwrap(), name("web.prod"));
        assert_eq!(parse_target("db; rm -rf /").unwrap(), name("db; rm -rf /"));
    }

    #[test]
    fn refuses_hostile_or_malformed_targets() {
        for bad in [
            "",
            "-oProxyCommand=sh",
            "web\n1",
            "web\x1b[2J",
            &"x".repeat(300),
            "i-123",
            "i-0123456789ABCDEF0",
        ] {
            let err = parse_target(bad).unwrap_err();
            assert_eq!(err.exit, 2, "{bad:?}");
        }
        // The message never carries the raw control character.
        let err = parse_target("evil\x1b]0;pwned\x07").unwrap_err();
        assert!(!err.message.contains('\x1b'), "{}", err.message);
    }

    #[test]
    fn splits_user_and_validates_it() {
        assert_eq!(
            parse_destination("ubuntu@web-1").unwrap(),
            (Some("ubuntu".into()), name("web-1"))
        );
        assert_eq!(parse_destination("web-1").unwrap(), (None, name("web-1")));
        for bad in [
            "-l@web",
            "a b@web",
            "$(id)@web",
            "@web",
            &format!("{}@web", "u".repeat(33)),
        ] {
            assert!(parse_destination(bad).is_err(), "{bad:?}");
        }
        assert!(validate_user("ec2-user").is_ok());
        assert!(validate_user("svc.deploy_1").is_ok());
    }

    fn addrs(public: Option<&str>, private: Option<&str>, ipv6: Option<&str>) -> Addresses {
        Addresses {
            public_ip: public.map(|s| s.parse().unwrap()),
            private_ip: private.map(|s| s.parse().unwrap()),
            ipv6: ipv6.into_iter().map(|s| s.parse().unwrap()).collect(),
            public_dns: public.map(|_| "ec2-3-1-2-3.compute-1.amazonaws.com".into()),
            private_dns: private.map(|_| "ip-10-0-0-5.ec2.internal".into()),
        }
    }

    #[test]
    fn auto_prefers_public_then_private() {
        let id = Target::InstanceId("i-01234567".into());
        let both = addrs(Some("3.1.2.3"), Some("10.0.0.5"), None);
        assert_eq!(
            choose_address(&both, AddressChoice::Auto, &id)
                .unwrap()
                .to_string(),
            "3.1.2.3"
        );
        let private_only = addrs(None, Some("10.0.0.5"), None);
        assert_eq!(
            choose_address(&private_only, AddressChoice::Auto, &id)
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
        let v6_only = addrs(None, None, Some("2600::5"));
        assert_eq!(
            choose_address(&v6_only, AddressChoice::Auto, &id)
                .unwrap()
                .to_string(),
            "2600::5"
        );
        assert!(choose_address(&addrs(None, None, None), AddressChoice::Auto, &id).is_err());
    }

    #[test]
    fn auto_honours_the_address_the_user_named() {
        let both = addrs(Some("3.1.2.3"), Some("10.0.0.5"), None);
        let by_ip = Target::Ip("10.0.0.5".parse().unwrap());
        assert_eq!(
            choose_address(&both, AddressChoice::Auto, &by_ip)
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
        let by_dns = Target::DnsName("ip-10-0-0-5.ec2.internal".into());
        assert_eq!(
            choose_address(&both, AddressChoice::Auto, &by_dns)
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
        let by_public_dns = Target::DnsName("ec2-3-1-2-3.compute-1.amazonaws.com".into());
        assert_eq!(
            choose_address(&both, AddressChoice::Auto, &by_public_dns)
                .unwrap()
                .to_string(),
            "3.1.2.3"
        );
    }

    #[test]
    fn explicit_choices_are_strict() {
        let id = Target::InstanceId("i-01234567".into());
        let private_only = addrs(None, Some("10.0.0.5"), None);
        let err = choose_address(&private_only, AddressChoice::Public, &id).unwrap_err();
        assert!(err.message.contains("no public IPv4"));
        assert!(err.hints[0].contains("--private"));
        let both = addrs(Some("3.1.2.3"), Some("10.0.0.5"), Some("2600::5"));
        assert_eq!(
            choose_address(&both, AddressChoice::Private, &id)
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
        assert_eq!(
            choose_address(&both, AddressChoice::Ipv6, &id)
                .unwrap()
                .to_string(),
            "2600::5"
        );
        assert!(choose_address(&private_only, AddressChoice::Ipv6, &id).is_err());
    }
}
