//! Least-privilege IAM policies for eic-connect's users (`eic-connect
//! policy`).
//!
//! Each [`Capability`] lists every API action eic-connect calls for it, and
//! nothing else: the policy printed is made from those lists, and the tests
//! check them against the calls the real binary makes. Resources are
//! narrowed where AWS allows it (instances, endpoints, the session
//! document, the caller's own sessions); lookups that AWS does not scope by
//! resource get `"*"`.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

use crate::error::Failure;

/// What a user may do with eic-connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// Connect directly (`eic-connect TARGET`, `run`, `ssh-config`): find
    /// the instance, guess its OS user from the AMI, push a key.
    Connect,
    /// Through EC2 Instance Connect Endpoints (`--endpoint`).
    Endpoint,
    /// Through Session Manager (`--session-manager`).
    SessionManager,
    /// `--start`: start a stopped instance.
    Start,
    /// `--verify-host-key`: read host keys from the console output.
    VerifyHostKey,
    /// `eic-connect serial`.
    Serial,
    /// `eic-connect audit`.
    Audit,
    /// `eic-connect doctor` (its checks; through an endpoint or Session
    /// Manager, the way in's own permissions too).
    Doctor,
}

impl Capability {
    pub const ALL: [Capability; 8] = [
        Capability::Connect,
        Capability::Endpoint,
        Capability::SessionManager,
        Capability::Start,
        Capability::VerifyHostKey,
        Capability::Serial,
        Capability::Audit,
        Capability::Doctor,
    ];

    /// Every IAM action eic-connect calls for this capability.
    ///
    /// On the way to a private instance, `auto` looks for an endpoint and
    /// asks Session Manager whether the instance is managed at the same
    /// time, so both ways in need both lookups.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Capability::Connect => &[
                "ec2:DescribeInstances",
                "ec2:DescribeImages",
                "ec2-instance-connect:SendSSHPublicKey",
            ],
            Capability::Endpoint => &[
                "ec2:DescribeInstanceConnectEndpoints",
                "ssm:DescribeInstanceInformation",
                "ec2-instance-connect:OpenTunnel",
            ],
            Capability::SessionManager => &[
                "ec2:DescribeInstanceConnectEndpoints",
                "ssm:DescribeInstanceInformation",
                "ssm:StartSession",
                "ssm:TerminateSession",
            ],
            Capability::Start => &["ec2:StartInstances"],
            Capability::VerifyHostKey => &["ec2:GetConsoleOutput"],
            Capability::Serial => &[
                "ec2:DescribeInstances",
                "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
            ],
            Capability::Audit => &["ec2:DescribeInstances", "cloudtrail:LookupEvents"],
            Capability::Doctor => &[
                "ec2:DescribeInstances",
                "ec2:DescribeImages",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeManagedPrefixLists",
                "ec2:DescribeInstanceConnectEndpoints",
                "ssm:DescribeInstanceInformation",
                "ec2:GetConsoleOutput",
                "ec2-instance-connect:SendSSHPublicKey",
                "sts:GetCallerIdentity",
                "iam:GetRole",
                "iam:SimulatePrincipalPolicy",
            ],
        }
    }

    /// The `eic-connect policy` option that adds it (none for connecting,
    /// which every policy grants).
    pub fn option(self) -> Option<&'static str> {
        match self {
            Capability::Connect => None,
            Capability::Endpoint => Some("--endpoint"),
            Capability::SessionManager => Some("--session-manager"),
            Capability::Start => Some("--start"),
            Capability::VerifyHostKey => Some("--verify-host-key"),
            Capability::Serial => Some("--serial"),
            Capability::Audit => Some("--audit"),
            Capability::Doctor => Some("--doctor"),
        }
    }
}

/// Lookups AWS does not scope by resource: they get `"*"`.
const UNSCOPED: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceConnectEndpoints",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeManagedPrefixLists",
    "ssm:DescribeInstanceInformation",
    "cloudtrail:LookupEvents",
    "sts:GetCallerIdentity",
];

/// Actions on the instance itself, which instance ARNs and tags scope.
const ON_INSTANCES: &[&str] = &[
    "ec2:StartInstances",
    "ec2:GetConsoleOutput",
    "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
];

/// The Session Manager document eic-connect starts sessions with.
pub const SSH_DOCUMENT: &str = "AWS-StartSSHSession";

/// What the policy is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A region, or `None` for every region.
    pub region: Option<String>,
    /// The instances' account (12 digits), or `*`.
    pub account: String,
    /// Instance ids; empty: any instance (that the tags allow).
    pub instances: Vec<String>,
    /// Tags an instance must carry, all of them.
    pub tags: Vec<(String, String)>,
    /// OS users a key may be pushed for; empty: any.
    pub os_users: Vec<String>,
    pub capabilities: Vec<Capability>,
    /// With [`Capability::Endpoint`]: which endpoints and tunnels.
    pub tunnels: Tunnels,
}

/// Limits on `OpenTunnel`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tunnels {
    /// Endpoint ids; empty: any endpoint.
    pub endpoints: Vec<String>,
    /// Ports a tunnel may reach (`remotePort`).
    pub ports: Vec<u16>,
    /// Addresses a tunnel may reach (`privateIpAddress`); empty: any.
    pub addresses: Vec<IpNet>,
    /// Longest tunnel, seconds (`maxTunnelDuration`).
    pub max_duration: Option<u32>,
}

/// An IAM policy document, fields in the order AWS shows them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Document {
    #[serde(rename = "Version")]
    pub version: &'static str,
    #[serde(rename = "Statement")]
    pub statements: Vec<Statement>,
}

/// Condition operator -> key -> values.
pub type Conditions = BTreeMap<&'static str, BTreeMap<String, Vec<String>>>;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Statement {
    #[serde(rename = "Sid")]
    pub sid: &'static str,
    #[serde(rename = "Effect")]
    pub effect: &'static str,
    #[serde(rename = "Action")]
    pub actions: Vec<&'static str>,
    #[serde(rename = "Resource")]
    pub resources: Vec<String>,
    #[serde(rename = "Condition", skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: Conditions,
}

/// The ARN partition of a region.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-isof-") {
        "aws-iso-f"
    } else if region.starts_with("eu-isoe-") {
        "aws-iso-e"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

impl Request {
    /// Every action the policy grants, sorted, each once.
    pub fn actions(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = std::iter::once(Capability::Connect)
            .chain(self.capabilities.iter().copied())
            .flat_map(Capability::actions)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    fn arn(&self, service: &str, account: &str, resource: &str) -> String {
        let (partition, region) = match &self.region {
            Some(region) => (partition(region), region.as_str()),
            None => ("aws", "*"),
        };
        format!("arn:{partition}:{service}:{region}:{account}:{resource}")
    }

    fn instance_arns(&self) -> Vec<String> {
        if self.instances.is_empty() {
            return vec![self.arn("ec2", &self.account, "instance/*")];
        }
        self.instances
            .iter()
            .map(|id| self.arn("ec2", &self.account, &format!("instance/{id}")))
            .collect()
    }

    /// Tag conditions under `prefix` (`aws:ResourceTag` for EC2,
    /// `ssm:resourceTag` for Session Manager).
    fn tag_conditions(&self, prefix: &str) -> Conditions {
        let mut conditions = Conditions::new();
        for (key, value) in &self.tags {
            let op = if value.contains(['*', '?']) {
                "StringLike"
            } else {
                "StringEquals"
            };
            conditions
                .entry(op)
                .or_default()
                .insert(format!("{prefix}/{key}"), vec![value.clone()]);
        }
        conditions
    }

    /// The policy document.
    pub fn document(&self) -> Document {
        let granted = self.actions();
        let pick = |from: &[&'static str]| -> Vec<&'static str> {
            granted
                .iter()
                .copied()
                .filter(|a| from.contains(a))
                .collect()
        };
        let mut statements = vec![Statement {
            sid: "EicConnectLookups",
            effect: "Allow",
            actions: pick(UNSCOPED),
            resources: vec!["*".to_owned()],
            conditions: Conditions::new(),
        }];

        let mut push = self.tag_conditions("aws:ResourceTag");
        if !self.os_users.is_empty() {
            push.entry("StringEquals")
                .or_default()
                .insert("ec2:osuser".to_owned(), self.os_users.clone());
        }
        statements.push(Statement {
            sid: "EicConnectPushKeys",
            effect: "Allow",
            actions: vec!["ec2-instance-connect:SendSSHPublicKey"],
            resources: self.instance_arns(),
            conditions: push,
        });

        let on_instances = pick(ON_INSTANCES);
        if !on_instances.is_empty() {
            statements.push(Statement {
                sid: "EicConnectInstanceActions",
                effect: "Allow",
                actions: on_instances,
                resources: self.instance_arns(),
                conditions: self.tag_conditions("aws:ResourceTag"),
            });
        }

        if self.has(Capability::Endpoint) {
            statements.push(self.tunnel_statement());
        }

        if self.has(Capability::SessionManager) {
            statements.push(Statement {
                sid: "EicConnectSessionsToInstances",
                effect: "Allow",
                actions: vec!["ssm:StartSession"],
                resources: self.instance_arns(),
                conditions: self.tag_conditions("ssm:resourceTag"),
            });
            statements.push(Statement {
                sid: "EicConnectSessionDocument",
                effect: "Allow",
                actions: vec!["ssm:StartSession"],
                resources: vec![self.arn("ssm", "", &format!("document/{SSH_DOCUMENT}"))],
                conditions: Conditions::new(),
            });
            // Session ids start with the caller's name: an IAM user's name,
            // or a role's user id.
            statements.push(Statement {
                sid: "EicConnectEndOwnSessions",
                effect: "Allow",
                actions: vec!["ssm:TerminateSession"],
                resources: vec![
                    self.arn("ssm", &self.account, "session/${aws:username}-*"),
                    self.arn("ssm", &self.account, "session/${aws:userid}-*"),
                ],
                conditions: Conditions::new(),
            });
        }
        if self.has(Capability::Doctor) {
            // doctor's IAM check: the caller's own role (for its path) and
            // a simulation of the caller's own policies.
            let iam = |resource: &str| {
                let partition = self.region.as_deref().map_or("aws", partition);
                format!("arn:{partition}:iam::{}:{resource}", self.account)
            };
            statements.push(Statement {
                sid: "EicConnectDoctorReadsOwnRole",
                effect: "Allow",
                actions: vec!["iam:GetRole"],
                resources: vec![iam("role/*")],
                conditions: Conditions::new(),
            });
            statements.push(Statement {
                sid: "EicConnectDoctorSimulatesOwnPolicies",
                effect: "Allow",
                actions: vec!["iam:SimulatePrincipalPolicy"],
                resources: vec![iam("user/${aws:username}"), iam("role/*")],
                conditions: Conditions::new(),
            });
        }
        Document {
            version: "2012-10-17",
            statements,
        }
    }

    fn tunnel_statement(&self) -> Statement {
        let t = &self.tunnels;
        let resources = if t.endpoints.is_empty() {
            vec![self.arn("ec2", &self.account, "instance-connect-endpoint/*")]
        } else {
            t.endpoints
                .iter()
                .map(|id| {
                    self.arn(
                        "ec2",
                        &self.account,
                        &format!("instance-connect-endpoint/{id}"),
                    )
                })
                .collect()
        };
        let mut conditions = Conditions::new();
        let ports = if t.ports.is_empty() {
            vec![22]
        } else {
            t.ports.clone()
        };
        conditions.entry("NumericEquals").or_default().insert(
            "ec2-instance-connect:remotePort".to_owned(),
            ports.iter().map(u16::to_string).collect(),
        );
        if !t.addresses.is_empty() {
            conditions.entry("IpAddress").or_default().insert(
                "ec2-instance-connect:privateIpAddress".to_owned(),
                t.addresses.iter().map(IpNet::to_string).collect(),
            );
        }
        if let Some(max) = t.max_duration {
            conditions
                .entry("NumericLessThanEquals")
                .or_default()
                .insert(
                    "ec2-instance-connect:maxTunnelDuration".to_owned(),
                    vec![max.to_string()],
                );
        }
        Statement {
            sid: "EicConnectOpenTunnels",
            effect: "Allow",
            actions: vec!["ec2-instance-connect:OpenTunnel"],
            resources,
            conditions,
        }
    }

    /// What the reader should know about this policy (for stderr).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.instances.is_empty() && self.tags.is_empty() {
            notes.push(
                "any instance: name instances or pass --tag KEY=VALUE to narrow it".to_owned(),
            );
        }
        if self.os_users.is_empty() {
            notes.push("any OS user: pass --os-user USER to narrow it (ec2:osuser)".to_owned());
        }
        if self.has(Capability::Endpoint) {
            if self.tunnels.addresses.is_empty() {
                notes.push("tunnels may reach any address the endpoint reaches: OpenTunnel cannot be limited by instance or tag, only by --private-ip CIDR".to_owned());
            }
            if self.tunnels.max_duration.is_some() {
                notes.push("eic-connect must ask for tunnels no longer than that: set max-tunnel-duration in its config".to_owned());
            }
        }
        notes
    }
}

/// `KEY=VALUE` for `--tag`.
pub fn parse_tag(text: &str) -> Result<(String, String), Failure> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && key.len() <= 128 && value.len() <= 256 => {
            if text.chars().any(|c| c.is_control() || c == '"') {
                return Err(Failure::usage(format!(
                    "{:?} has characters a tag cannot hold",
                    crate::sanitize::terminal_safe(text)
                )));
            }
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(Failure::usage(format!(
            "{:?} is not KEY=VALUE",
            crate::sanitize::terminal_safe(text)
        ))
        .hint("tags are given as --tag Team=web (keys up to 128 characters, values up to 256)")),
    }
}

/// An endpoint id for `--endpoint` (`eice-` and 17 hex digits), or `*`.
pub fn parse_endpoint_id(text: &str) -> Result<Option<String>, Failure> {
    if text == "*" || text == "any" {
        return Ok(None);
    }
    let ok = text.strip_prefix("eice-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(Some(text.to_owned()))
    } else {
        Err(Failure::usage(format!(
            "{:?} is not an EC2 Instance Connect Endpoint id",
            crate::sanitize::terminal_safe(text)
        ))
        .hint(
            "endpoint ids look like eice-0123456789abcdef0; `--endpoint any` allows every endpoint",
        ))
    }
}

/// A 12-digit account id, or `*`.
pub fn parse_account(text: &str) -> Result<String, Failure> {
    if text == "*" || (text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())) {
        Ok(text.to_owned())
    } else {
        Err(Failure::usage(format!(
            "{:?} is not an AWS account id",
            crate::sanitize::terminal_safe(text)
        ))
        .hint("account ids are 12 digits; `*` allows any account"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(capabilities: &[Capability]) -> Request {
        Request {
            region: Some("eu-west-1".into()),
            account: "123456789012".into(),
            instances: vec![],
            tags: vec![],
            os_users: vec![],
            capabilities: capabilities.to_vec(),
            tunnels: Tunnels::default(),
        }
    }

    fn granted(doc: &Document) -> Vec<&'static str> {
        let mut all: Vec<_> = doc
            .statements
            .iter()
            .flat_map(|s| s.actions.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The document grants exactly the capabilities' actions, whatever the
    /// combination, and no statement is empty.
    #[test]
    fn every_combination_grants_exactly_its_actions() {
        let optional = &Capability::ALL[1..];
        for mask in 0..(1u32 << optional.len()) {
            let chosen: Vec<Capability> = optional
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| *c)
                .collect();
            let req = request(&chosen);
            let doc = req.document();
            assert_eq!(granted(&doc), req.actions(), "{chosen:?}");
            for s in &doc.statements {
                assert!(!s.actions.is_empty() && !s.resources.is_empty(), "{s:?}");
            }
            let mut sids: Vec<_> = doc.statements.iter().map(|s| s.sid).collect();
            sids.sort_unstable();
            sids.dedup();
            assert_eq!(sids.len(), doc.statements.len(), "Sids are unique");
        }
    }

    #[test]
    fn arns_follow_the_partition() {
        for (region, partition) in [
            ("us-east-1", "aws"),
            ("cn-north-1", "aws-cn"),
            ("us-gov-west-1", "aws-us-gov"),
            ("us-iso-east-1", "aws-iso"),
            ("us-isob-east-1", "aws-iso-b"),
        ] {
            let mut req = request(&[Capability::SessionManager, Capability::Endpoint]);
            req.region = Some(region.into());
            req.instances = vec!["i-0123456789abcdef0".into()];
            let text = serde_json::to_string(&req.document()).unwrap();
            assert!(
                text.contains(&format!(
                    "arn:{partition}:ec2:{region}:123456789012:instance/i-0123456789abcdef0"
                )),
                "{text}"
            );
            assert!(text.contains(&format!(
                "arn:{partition}:ssm:{region}::document/AWS-StartSSHSession"
            )));
            assert!(text.contains(&format!(
                "arn:{partition}:ec2:{region}:123456789012:instance-connect-endpoint/*"
            )));
            assert!(!text.contains("arn:aws:") || partition == "aws", "{text}");
        }
    }

    #[test]
    fn conditions_narrow_users_tags_and_tunnels() {
        let mut req = request(&[
            Capability::Endpoint,
            Capability::SessionManager,
            Capability::Start,
        ]);
        req.os_users = vec!["ec2-user".into(), "ubuntu".into()];
        req.tags = vec![
            ("Team".into(), "web".into()),
            ("Env".into(), "dev-*".into()),
        ];
        req.tunnels = Tunnels {
            endpoints: vec!["eice-0123456789abcdef0".into()],
            ports: vec![22, 3389],
            addresses: vec!["10.0.0.0/16".parse().unwrap()],
            max_duration: Some(3600),
        };
        let doc = req.document();
        let by_sid = |sid: &str| {
            doc.statements
                .iter()
                .find(|s| s.sid == sid)
                .unwrap()
                .clone()
        };
        let push = by_sid("EicConnectPushKeys");
        assert_eq!(
            push.conditions["StringEquals"]["ec2:osuser"],
            ["ec2-user", "ubuntu"]
        );
        assert_eq!(
            push.conditions["StringEquals"]["aws:ResourceTag/Team"],
            ["web"]
        );
        assert_eq!(
            push.conditions["StringLike"]["aws:ResourceTag/Env"],
            ["dev-*"]
        );
        // The OS user condition is only for key pushes: StartInstances has
        // no such key and would never match.
        let start = by_sid("EicConnectInstanceActions");
        assert!(!start.conditions["StringEquals"].contains_key("ec2:osuser"));
        let tunnel = by_sid("EicConnectOpenTunnels");
        assert_eq!(
            tunnel.resources,
            ["arn:aws:ec2:eu-west-1:123456789012:instance-connect-endpoint/eice-0123456789abcdef0"]
        );
        assert_eq!(
            tunnel.conditions["NumericEquals"]["ec2-instance-connect:remotePort"],
            ["22", "3389"]
        );
        assert_eq!(
            tunnel.conditions["IpAddress"]["ec2-instance-connect:privateIpAddress"],
            ["10.0.0.0/16"]
        );
        assert_eq!(
            tunnel.conditions["NumericLessThanEquals"]["ec2-instance-connect:maxTunnelDuration"],
            ["3600"]
        );
        // Session Manager's tag key, and none on the document (which has
        // no tags and would never match).
        assert_eq!(
            by_sid("EicConnectSessionsToInstances").conditions["StringEquals"]["ssm:resourceTag/Team"],
            ["web"]
        );
        assert!(by_sid("EicConnectSessionDocument").conditions.is_empty());
    }

    #[test]
    fn every_region_is_star() {
        let mut req = request(&[]);
        req.region = None;
        req.account = "*".into();
        let text = serde_json::to_string(&req.document()).unwrap();
        assert!(text.contains("\"arn:aws:ec2:*:*:instance/*\""), "{text}");
    }

    #[test]
    fn inputs_are_checked() {
        assert_eq!(
            parse_tag("Team=web").unwrap(),
            ("Team".into(), "web".into())
        );
        assert_eq!(
            parse_tag("Empty=").unwrap(),
            ("Empty".into(), String::new())
        );
        for bad in ["Team", "=web", "T\"x=1", "a=\u{1b}[31m"] {
            assert!(parse_tag(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_endpoint_id("any").unwrap(), None);
        assert!(
            parse_endpoint_id("eice-0123456789abcdef0")
                .unwrap()
                .is_some()
        );
        for bad in ["eice-123", "i-0123456789abcdef0", "eice-0123456789ABCDEF0"] {
            assert!(parse_endpoint_id(bad).is_err(), "{bad}");
        }
        assert!(parse_account("123456789012").is_ok());
        assert!(parse_account("*").is_ok());
        assert!(parse_account("12345").is_err());
    }
}
