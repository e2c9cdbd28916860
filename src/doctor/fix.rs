//! `doctor --fix`: the failed checks that one API call can put right, shown
//! as the AWS CLI command and the call eic-connect makes, applied only after
//! a yes (or `--yes`).
//!
//! The fixes: open the SSH port in the instance's security group to the
//! caller's address (or, through an endpoint, to the endpoint's security
//! group); enable instance metadata; start a stopped instance. Each changes
//! only what its check found wrong.

use std::net::IpAddr;

use aws_sdk_ec2::types::{
    InstanceMetadataEndpointState, IpPermission, IpRange, Ipv6Range, PrefixListId, UserIdGroupPair,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use ipnet::IpNet;

use crate::aws::Clients;
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::errors::from_sdk;

/// Where a new inbound rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// The caller's own address (/32 or /128).
    Cidr(IpNet),
    /// An endpoint's security group.
    Group(String),
    /// A managed prefix list (the EC2 console's browser-based client).
    PrefixList(String),
}

/// One change that makes a failed check pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    OpenPort {
        group_id: String,
        port: u16,
        from: Opening,
    },
    EnableMetadata {
        instance_id: String,
    },
    Start {
        instance_id: String,
    },
}

/// What applying a fix did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// AWS said it was so already (a duplicate rule).
    AlreadyDone,
}

impl Fix {
    /// What it does, in a few words.
    pub fn summary(&self) -> String {
        match self {
            Fix::OpenPort {
                group_id,
                port,
                from: Opening::Cidr(net),
            } => format!("open port {port} in {group_id} to {net}"),
            Fix::OpenPort {
                group_id,
                port,
                from: Opening::Group(g),
            } => format!("open port {port} in {group_id} to the endpoint's security group {g}"),
            Fix::OpenPort {
                group_id,
                port,
                from: Opening::PrefixList(pl),
            } => format!("open port {port} in {group_id} to the EC2 console's prefix list {pl}"),
            Fix::EnableMetadata { instance_id } => {
                format!("enable instance metadata on {instance_id}")
            }
            Fix::Start { instance_id } => format!("start {instance_id}"),
        }
    }

    /// The same change as an AWS CLI command line.
    pub fn aws_cli(&self) -> String {
        match self {
            Fix::OpenPort {
                group_id,
                port,
                from,
            } => {
                let source = match from {
                    Opening::Cidr(net) => format!("--cidr {net}"),
                    Opening::Group(g) => format!("--source-group {g}"),
                    Opening::PrefixList(pl) => {
                        return format!(
                            "aws ec2 authorize-security-group-ingress --group-id {group_id} --ip-permissions 'IpProtocol=tcp,FromPort={port},ToPort={port},PrefixListIds=[{{PrefixListId={pl}}}]'"
                        );
                    }
                };
                format!(
                    "aws ec2 authorize-security-group-ingress --group-id {group_id} --protocol tcp --port {port} {source}"
                )
            }
            Fix::EnableMetadata { instance_id } => format!(
                "aws ec2 modify-instance-metadata-options --instance-id {instance_id} --http-endpoint enabled"
            ),
            Fix::Start { instance_id } => {
                format!("aws ec2 start-instances --instance-ids {instance_id}")
            }
        }
    }

    /// The API call eic-connect makes, with its parameters.
    pub fn api_call(&self) -> String {
        match self {
            Fix::OpenPort {
                group_id,
                port,
                from,
            } => {
                let source = match from {
                    Opening::Cidr(net @ IpNet::V4(_)) => format!("IpRanges=[{{CidrIp={net}}}]"),
                    Opening::Cidr(net @ IpNet::V6(_)) => {
                        format!("Ipv6Ranges=[{{CidrIpv6={net}}}]")
                    }
                    Opening::Group(g) => format!("UserIdGroupPairs=[{{GroupId={g}}}]"),
                    Opening::PrefixList(pl) => format!("PrefixListIds=[{{PrefixListId={pl}}}]"),
                };
                format!(
                    "ec2:AuthorizeSecurityGroupIngress GroupId={group_id} IpPermissions=[{{IpProtocol=tcp,FromPort={port},ToPort={port},{source}}}]"
                )
            }
            Fix::EnableMetadata { instance_id } => format!(
                "ec2:ModifyInstanceMetadataOptions InstanceId={instance_id} HttpEndpoint=enabled"
            ),
            Fix::Start { instance_id } => format!(
                "ec2:StartInstances InstanceIds=[{instance_id}], then ec2:DescribeInstances until it runs"
            ),
        }
    }

    /// Makes the change. A failure comes back through the error table.
    pub async fn apply(&self, clients: &Clients) -> anyhow::Result<Applied> {
        match self {
            Fix::OpenPort {
                group_id,
                port,
                from,
            } => {
                let port = i32::from(*port);
                let mut permission = IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(port)
                    .to_port(port);
                let description = "eic-connect doctor --fix";
                permission = match from {
                    Opening::Cidr(net) => match net.addr() {
                        IpAddr::V4(_) => permission.ip_ranges(
                            IpRange::builder()
                                .cidr_ip(net.to_string())
                                .description(description)
                                .build(),
                        ),
                        IpAddr::V6(_) => permission.ipv6_ranges(
                            Ipv6Range::builder()
                                .cidr_ipv6(net.to_string())
                                .description(description)
                                .build(),
                        ),
                    },
                    Opening::Group(g) => permission.user_id_group_pairs(
                        UserIdGroupPair::builder()
                            .group_id(g)
                            .description(description)
                            .build(),
                    ),
                    Opening::PrefixList(pl) => permission.prefix_list_ids(
                        PrefixListId::builder()
                            .prefix_list_id(pl)
                            .description(description)
                            .build(),
                    ),
                };
                let result = clients
                    .ec2
                    .authorize_security_group_ingress()
                    .group_id(group_id)
                    .ip_permissions(permission.build())
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(Applied::Done),
                    Err(e)
                        if e.as_service_error().and_then(|s| s.code())
                            == Some("InvalidPermission.Duplicate") =>
                    {
                        Ok(Applied::AlreadyDone)
                    }
                    Err(e) => Err(from_sdk(
                        e,
                        &clients.attempt("AuthorizeSecurityGroupIngress", None),
                    )),
                }
            }
            Fix::EnableMetadata { instance_id } => {
                clients
                    .ec2
                    .modify_instance_metadata_options()
                    .instance_id(instance_id)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .send()
                    .await
                    .map_err(|e| {
                        from_sdk(
                            e,
                            &clients.attempt("ModifyInstanceMetadataOptions", Some(instance_id)),
                        )
                    })?;
                Ok(Applied::Done)
            }
            Fix::Start { instance_id } => {
                let stopped = InstanceInfo {
                    id: instance_id.clone(),
                    state: "stopped".into(),
                    ..InstanceInfo::default()
                };
                ec2::ensure_started(clients, stopped, true).await?;
                Ok(Applied::Done)
            }
        }
    }
}

/// What became of an offered fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixResult {
    Applied,
    AlreadyDone,
    Declined,
    /// No terminal to ask on and no `--yes`.
    NotAsked,
    Failed,
}

impl FixResult {
    pub fn as_str(self) -> &'static str {
        match self {
            FixResult::Applied => "applied",
            FixResult::AlreadyDone => "already done",
            FixResult::Declined => "declined",
            FixResult::NotAsked => "not applied",
            FixResult::Failed => "failed",
        }
    }
}

/// One offered fix and its fate.
#[derive(Debug, Clone)]
pub struct FixOutcome {
    pub check: &'static str,
    pub fix: Fix,
    pub result: FixResult,
    /// The error, as eic-connect prints it, when applying failed.
    pub error: Option<String>,
}

/// The fixes of the failed checks, leaving out those offered before; a
/// start comes first (the other checks mean more once the instance runs).
pub fn pending(checks: &[super::checks::Check], before: &[Fix]) -> Vec<(&'static str, Fix)> {
    let mut fixes: Vec<(&'static str, Fix)> = checks
        .iter()
        .filter(|c| c.status == super::checks::Status::Fail)
        .filter_map(|c| Some((c.name, *c.action.clone()?)))
        .filter(|(_, f)| !before.contains(f))
        .collect();
    fixes.sort_by_key(|(_, f)| !matches!(f, Fix::Start { .. }));
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fix_as_a_command_and_a_call() {
        let open = Fix::OpenPort {
            group_id: "sg-1".into(),
            port: 22,
            from: Opening::Cidr("198.51.100.7/32".parse().unwrap()),
        };
        assert_eq!(
            open.aws_cli(),
            "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 22 --cidr 198.51.100.7/32"
        );
        assert_eq!(
            open.api_call(),
            "ec2:AuthorizeSecurityGroupIngress GroupId=sg-1 IpPermissions=[{IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=198.51.100.7/32}]}]"
        );
        let v6 = Fix::OpenPort {
            group_id: "sg-1".into(),
            port: 2222,
            from: Opening::Cidr("2001:db8::7/128".parse().unwrap()),
        };
        assert!(
            v6.api_call()
                .contains("Ipv6Ranges=[{CidrIpv6=2001:db8::7/128}]")
        );
        let group = Fix::OpenPort {
            group_id: "sg-1".into(),
            port: 22,
            from: Opening::Group("sg-eice".into()),
        };
        assert!(group.aws_cli().ends_with("--source-group sg-eice"));
        let meta = Fix::EnableMetadata {
            instance_id: "i-1".into(),
        };
        assert!(
            meta.aws_cli()
                .ends_with("--instance-id i-1 --http-endpoint enabled")
        );
        let start = Fix::Start {
            instance_id: "i-1".into(),
        };
        assert_eq!(
            start.aws_cli(),
            "aws ec2 start-instances --instance-ids i-1"
        );
    }
}
