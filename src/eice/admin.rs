//! Administering EC2 Instance Connect Endpoints (`eic-connect endpoint`):
//! listing every endpoint with its settings, creating and deleting one,
//! waiting for a state, and the security-group facts creating one needs
//! (a VPC's default group, outbound rules, a subnet's VPC). The calls
//! return plain values; the command decides what they mean.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Ec2InstanceConnectEndpoint, Filter, IpAddressType, IpPermission};
use aws_smithy_types::date_time::Format;

use crate::aws::Clients;
use crate::aws::diag::{InboundRule, rule};
use crate::aws::errors::from_sdk;
use crate::error::{Failure, fail};
use crate::progress;
use crate::sanitize::terminal_safe;

/// An endpoint as `endpoint list` shows it. Every text is as AWS sent it:
/// sanitise before printing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub id: String,
    pub state: String,
    pub state_message: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    pub security_group_ids: Vec<String>,
    pub preserve_client_ip: Option<bool>,
    /// `ipv4` (also when AWS gives none), `dualstack` or `ipv6`.
    pub ip_address_type: String,
    /// RFC 3339, UTC.
    pub created_at: Option<String>,
    pub dns_name: Option<String>,
    pub name: Option<String>,
}

impl EndpointInfo {
    fn from_sdk(e: &Ec2InstanceConnectEndpoint) -> Option<EndpointInfo> {
        let text = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        Some(EndpointInfo {
            id: text(e.instance_connect_endpoint_id())?,
            state: e.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            state_message: text(e.state_message()),
            vpc_id: text(e.vpc_id()),
            subnet_id: text(e.subnet_id()),
            availability_zone: text(e.availability_zone()),
            security_group_ids: e.security_group_ids().to_vec(),
            preserve_client_ip: e.preserve_client_ip(),
            ip_address_type: e
                .ip_address_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_else(|| "ipv4".to_owned()),
            created_at: e.created_at().and_then(|t| t.fmt(Format::DateTime).ok()),
            dns_name: text(e.dns_name()),
            name: e
                .tags()
                .iter()
                .find(|t| t.key() == Some("Name"))
                .and_then(|t| text(t.value())),
        })
    }

    /// The same, for a terminal or JSON: every AWS-sourced value sanitised.
    pub fn sanitized(&self) -> EndpointInfo {
        let s = |v: &str| terminal_safe(v).into_owned();
        let o = |v: &Option<String>| v.as_deref().map(s);
        EndpointInfo {
            id: s(&self.id),
            state: s(&self.state),
            state_message: o(&self.state_message),
            vpc_id: o(&self.vpc_id),
            subnet_id: o(&self.subnet_id),
            availability_zone: o(&self.availability_zone),
            security_group_ids: self.security_group_ids.iter().map(|g| s(g)).collect(),
            preserve_client_ip: self.preserve_client_ip,
            ip_address_type: s(&self.ip_address_type),
            created_at: o(&self.created_at),
            dns_name: o(&self.dns_name),
            name: o(&self.name),
        }
    }
}

/// Every endpoint in the region (or in one VPC), in every state, all pages.
pub async fn list(clients: &Clients, vpc_id: Option<&str>) -> anyhow::Result<Vec<EndpointInfo>> {
    let mut request = clients.ec2.describe_instance_connect_endpoints();
    if let Some(vpc) = vpc_id {
        request = request.filters(Filter::builder().name("vpc-id").values(vpc).build());
    }
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            from_sdk(
                e,
                &clients.attempt("DescribeInstanceConnectEndpoints", None),
            )
        })?;
        found.extend(
            page.instance_connect_endpoints()
                .iter()
                .filter_map(EndpointInfo::from_sdk),
        );
    }
    Ok(found)
}

/// One endpoint by id; `Ok(None)` when AWS does not know it (any more).
pub async fn describe(clients: &Clients, id: &str) -> anyhow::Result<Option<EndpointInfo>> {
    let out = clients
        .ec2
        .describe_instance_connect_endpoints()
        .instance_connect_endpoint_ids(id)
        .send()
        .await;
    match out {
        Ok(out) => Ok(out
            .instance_connect_endpoints()
            .iter()
            .filter_map(EndpointInfo::from_sdk)
            .find(|e| e.id == id)),
        Err(err)
            if err
                .as_service_error()
                .and_then(|e| aws_smithy_types::error::metadata::ProvideErrorMetadata::code(e))
                == Some("InvalidInstanceConnectEndpointId.NotFound") =>
        {
            Ok(None)
        }
        Err(err) => Err(from_sdk(
            err,
            &clients.attempt("DescribeInstanceConnectEndpoints", None),
        )),
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    pub preserve_client_ip: bool,
    pub ip_address_type: Option<String>,
    /// Makes retries of the same request create one endpoint only.
    pub client_token: String,
}

/// A client token: `eic-connect-` and 32 random hex digits.
pub fn client_token() -> String {
    use ssh_key::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("eic-connect-{hex}")
}

/// CreateInstanceConnectEndpoint; the endpoint as AWS first reports it.
pub async fn create(clients: &Clients, req: &CreateRequest) -> anyhow::Result<EndpointInfo> {
    let mut request = clients
        .ec2
        .create_instance_connect_endpoint()
        .subnet_id(&req.subnet_id)
        .set_security_group_ids(
            (!req.security_group_ids.is_empty()).then(|| req.security_group_ids.clone()),
        )
        .preserve_client_ip(req.preserve_client_ip)
        .client_token(&req.client_token);
    if let Some(kind) = &req.ip_address_type {
        request = request.ip_address_type(IpAddressType::from(kind.as_str()));
    }
    let out = request
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("CreateInstanceConnectEndpoint", None)))?;
    match out
        .instance_connect_endpoint()
        .and_then(EndpointInfo::from_sdk)
    {
        Some(e) => Ok(e),
        None => fail(
            Failure::new("CreateInstanceConnectEndpoint answered without an endpoint id")
                .hint("list the endpoints with: eic-connect endpoint list"),
        ),
    }
}

/// DeleteInstanceConnectEndpoint.
pub async fn delete(clients: &Clients, id: &str) -> anyhow::Result<()> {
    clients
        .ec2
        .delete_instance_connect_endpoint()
        .instance_connect_endpoint_id(id)
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("DeleteInstanceConnectEndpoint", None)))?;
    Ok(())
}

/// How often the state is asked for while waiting.
pub fn poll_interval() -> Duration {
    // Tests shorten it; creating takes minutes at AWS.
    std::env::var("EIC_CONNECT_ENDPOINT_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
}

/// Longest wait for a state.
const MAX_WAIT: Duration = Duration::from_secs(20 * 60);

/// How long a new endpoint may be missing from DescribeInstanceConnectEndpoints.
const NOT_LISTED_YET: Duration = Duration::from_secs(60);

/// Polls an endpoint until it leaves `in_progress`; the endpoint as last
/// seen (`None`: it is gone, which is what deleting ends in).
pub async fn wait(
    clients: &Clients,
    id: &str,
    in_progress: &str,
    line: &mut progress::Line,
    doing: &str,
) -> anyhow::Result<Option<EndpointInfo>> {
    let started = Instant::now();
    loop {
        let now = describe(clients, id).await?;
        let waited = started.elapsed();
        match &now {
            Some(e) if e.state == in_progress => {}
            // EC2 is eventually consistent: a new endpoint may not be
            // listed yet right after CreateInstanceConnectEndpoint.
            None if in_progress == "create-in-progress" && waited < NOT_LISTED_YET => {}
            _ => return Ok(now),
        }
        if waited > MAX_WAIT {
            return fail(
                Failure::new(format!(
                    "{id} is still {in_progress} after {} minutes",
                    waited.as_secs() / 60
                ))
                .hint(format!(
                    "check it later with: eic-connect endpoint list; it may yet finish ({id})"
                )),
            );
        }
        line.show(&format!(
            "{doing} {id}: {in_progress} ({}s)",
            waited.as_secs()
        ));
        tokio::time::sleep(poll_interval()).await;
    }
}

/// The VPC a subnet is in (DescribeSubnets).
pub async fn subnet_vpc(clients: &Clients, subnet_id: &str) -> anyhow::Result<String> {
    let out = clients
        .ec2
        .describe_subnets()
        .subnet_ids(subnet_id)
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("DescribeSubnets", None)))?;
    match out
        .subnets()
        .iter()
        .find(|s| s.subnet_id() == Some(subnet_id))
        .and_then(|s| s.vpc_id())
    {
        Some(vpc) => Ok(vpc.to_owned()),
        None => fail(
            Failure::new(format!(
                "no subnet {subnet_id} ({})",
                clients.scope.describe()
            ))
            .hint("check --subnet, --region and --profile"),
        ),
    }
}

/// A security group with both directions of rules (outbound in the same
/// shape as inbound: `cidrs`, `group_ids`, `prefix_list_ids` are the
/// destinations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub vpc_id: Option<String>,
    pub inbound: Vec<InboundRule>,
    pub outbound: Vec<InboundRule>,
}

/// The groups in an answer. Their ids, names and rule values are shown in
/// messages and commands to paste: they are made terminal-safe here (a
/// real id is unchanged).
fn groups_of(
    out: &aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput,
) -> Vec<Group> {
    let safe = |s: &str| terminal_safe(s).into_owned();
    let safe_rule = |p: &IpPermission| {
        let r = rule(p);
        InboundRule {
            protocol: safe(&r.protocol),
            cidrs: r.cidrs.iter().map(|c| safe(c)).collect(),
            group_ids: r.group_ids.iter().map(|g| safe(g)).collect(),
            prefix_list_ids: r.prefix_list_ids.iter().map(|l| safe(l)).collect(),
            ..r
        }
    };
    out.security_groups()
        .iter()
        .map(|g| Group {
            id: safe(g.group_id().unwrap_or_default()),
            name: safe(g.group_name().unwrap_or_default()),
            vpc_id: g.vpc_id().map(safe),
            inbound: g.ip_permissions().iter().map(safe_rule).collect(),
            outbound: g.ip_permissions_egress().iter().map(safe_rule).collect(),
        })
        .collect()
}

/// The security groups named, with both directions of rules.
pub async fn groups(clients: &Clients, ids: &[String]) -> anyhow::Result<Vec<Group>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = clients
        .ec2
        .describe_security_groups()
        .set_group_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("DescribeSecurityGroups", None)))?;
    Ok(groups_of(&out))
}

/// The VPC's `default` security group (what AWS gives an endpoint created
/// without one).
pub async fn default_group(clients: &Clients, vpc_id: &str) -> anyhow::Result<Option<Group>> {
    let out = clients
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("DescribeSecurityGroups", None)))?;
    Ok(groups_of(&out)
        .into_iter()
        .find(|g| g.name == "default" && g.vpc_id.as_deref().is_none_or(|v| v == vpc_id)))
}

/// What in `rules` lets TCP `port` reach an instance at `ip` in `groups`
/// (a block containing the address, or one of its groups); `None`: nothing.
pub fn admits(
    rules: &[InboundRule],
    port: u16,
    ip: Option<IpAddr>,
    groups: &[String],
) -> Option<String> {
    use crate::doctor::rules::{cidr_contains, rule_covers};
    for r in rules.iter().filter(|r| rule_covers(r, port)) {
        if let Some(ip) = ip
            && let Some(c) = r.cidrs.iter().find(|c| cidr_contains(c, ip))
        {
            return Some(c.clone());
        }
        if let Some(g) = r.group_ids.iter().find(|g| groups.contains(g)) {
            return Some(format!("group {g}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(from: i32, to: i32, cidrs: &[&str], groups: &[&str]) -> InboundRule {
        InboundRule {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(to),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            group_ids: groups.iter().map(|s| s.to_string()).collect(),
            prefix_list_ids: Vec::new(),
        }
    }

    #[test]
    fn outbound_rules_admit_by_address_or_group() {
        let ip: Option<IpAddr> = Some("10.0.1.5".parse().unwrap());
        let mine = vec!["sg-1".to_owned()];
        let all = InboundRule {
            protocol: "-1".into(),
            cidrs: vec!["0.0.0.0/0".into()],
            ..Default::default()
        };
        assert_eq!(admits(&[all], 22, ip, &mine).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(
            admits(&[tcp(22, 22, &["10.0.0.0/16"], &[])], 22, ip, &mine).as_deref(),
            Some("10.0.0.0/16")
        );
        assert_eq!(
            admits(&[tcp(22, 22, &[], &["sg-1"])], 22, ip, &mine).as_deref(),
            Some("group sg-1")
        );
        assert_eq!(
            admits(&[tcp(443, 443, &["0.0.0.0/0"], &[])], 22, ip, &mine),
            None
        );
        assert_eq!(
            admits(&[tcp(22, 22, &["10.9.0.0/16"], &["sg-2"])], 22, ip, &mine),
            None
        );
        assert_eq!(
            admits(&[tcp(22, 22, &["10.0.0.0/16"], &[])], 3389, ip, &mine),
            None
        );
        assert_eq!(admits(&[], 22, ip, &mine), None);
    }

    #[test]
    fn client_tokens_differ_and_fit_the_limit() {
        let a = client_token();
        assert_ne!(a, client_token());
        assert!(a.len() <= 64 && a.is_ascii(), "{a}");
    }
}
