//! The EC2 and EC2 Instance Connect calls behind `--verify-host-key`,
//! `serial` and `doctor`: console output, security groups, managed prefix
//! lists, endpoints in a VPC, and the serial-console key push. Each returns
//! plain values; deciding what they mean happens elsewhere.

use aws_sdk_ec2::types::Filter;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::Clients;
use super::errors::from_sdk;

/// The instance's console output, decoded. Tries the buffered output first
/// (what was posted around the last start, which holds cloud-init's first
/// boot messages), then the latest output (Nitro instances only) if the
/// first is empty. Empty when there is none.
pub async fn console_output(clients: &Clients, instance_id: &str) -> anyhow::Result<String> {
    let out = clients
        .ec2
        .get_console_output()
        .instance_id(instance_id)
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("GetConsoleOutput", Some(instance_id))))?;
    let mut text = decode(out.output());
    if text.trim().is_empty()
        && let Ok(latest) = clients
            .ec2
            .get_console_output()
            .instance_id(instance_id)
            .latest(true)
            .send()
            .await
    {
        text = decode(latest.output());
    }
    Ok(text)
}

fn decode(output: Option<&str>) -> String {
    output
        .and_then(|b64| aws_smithy_types::base64::decode(b64.trim()).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// One inbound rule, reduced to what matters for reaching a port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundRule {
    /// `tcp`, `udp`, `icmp`, `-1` (all) or a protocol number.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub cidrs: Vec<String>,
    pub group_ids: Vec<String>,
    pub prefix_list_ids: Vec<String>,
}

/// A security group's id, name and inbound rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub inbound: Vec<InboundRule>,
}

pub async fn security_groups(
    clients: &Clients,
    ids: &[String],
) -> anyhow::Result<Vec<SecurityGroup>> {
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
    Ok(out
        .security_groups()
        .iter()
        .map(|g| SecurityGroup {
            id: g.group_id().unwrap_or_default().to_owned(),
            name: g.group_name().unwrap_or_default().to_owned(),
            inbound: g.ip_permissions().iter().map(rule).collect(),
        })
        .collect())
}

/// The id of the AWS-managed prefix list `com.amazonaws.<region>.ec2-instance-connect`
/// (the addresses the EC2 console's browser-based client connects from).
pub async fn console_prefix_list(clients: &Clients) -> anyhow::Result<Option<String>> {
    let name = format!(
        "com.amazonaws.{}.ec2-instance-connect",
        clients.scope.region
    );
    let out = clients
        .ec2
        .describe_managed_prefix_lists()
        .filters(
            Filter::builder()
                .name("prefix-list-name")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .map_err(|e| from_sdk(e, &clients.attempt("DescribeManagedPrefixLists", None)))?;
    Ok(out
        .prefix_lists()
        .iter()
        .find(|l| l.prefix_list_name() == Some(name.as_str()))
        .and_then(|l| l.prefix_list_id().map(str::to_owned)))
}

/// An EC2 Instance Connect Endpoint, as far as diagnosis needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub subnet_id: Option<String>,
    pub state: String,
    pub security_group_ids: Vec<String>,
    /// `ipv4` (also when not given), `ipv6` or `dualstack`.
    pub ip_address_type: Option<String>,
}

impl Endpoint {
    /// Whether its tunnels can go to an address of this family.
    pub fn reaches(&self, ipv4: bool) -> bool {
        match self.ip_address_type.as_deref() {
            Some("dualstack") => true,
            Some("ipv6") => !ipv4,
            _ => ipv4,
        }
    }
}

/// Endpoint states in which it can open tunnels.
const USABLE_ENDPOINT_STATES: [&str; 4] = [
    "create-complete",
    "update-in-progress",
    "update-failed",
    "update-complete",
];

/// Usable EC2 Instance Connect Endpoints in a VPC (or the one named).
/// `Ok(None)` when the API answers that it does not know the operation.
pub async fn endpoints(
    clients: &Clients,
    vpc_id: &str,
    endpoint_id: Option<&str>,
) -> anyhow::Result<Option<Vec<Endpoint>>> {
    let mut request = clients.ec2.describe_instance_connect_endpoints().filters(
        Filter::builder()
            .name("state")
            .set_values(Some(USABLE_ENDPOINT_STATES.map(String::from).to_vec()))
            .build(),
    );
    request = match endpoint_id {
        Some(id) => request.instance_connect_endpoint_ids(id),
        None => request.filters(Filter::builder().name("vpc-id").values(vpc_id).build()),
    };
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(err)
                if err
                    .as_service_error()
                    .and_then(|e| e.code())
                    .is_some_and(|c| c == "InvalidAction") =>
            {
                return Ok(None);
            }
            Err(err) => {
                return Err(from_sdk(
                    err,
                    &clients.attempt("DescribeInstanceConnectEndpoints", None),
                ));
            }
        };
        for e in page.instance_connect_endpoints() {
            found.push(Endpoint {
                id: e
                    .instance_connect_endpoint_id()
                    .unwrap_or_default()
                    .to_owned(),
                subnet_id: e.subnet_id().map(str::to_owned),
                state: e.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                security_group_ids: e.security_group_ids().to_vec(),
                ip_address_type: e.ip_address_type().map(|t| t.as_str().to_owned()),
            });
        }
        if found.len() >= 200 {
            break;
        }
    }
    Ok(Some(found))
}

/// SendSerialConsoleSSHPublicKey on serial port 0.
pub async fn push_serial_key(
    clients: &Clients,
    instance_id: &str,
    public_key: &str,
) -> anyhow::Result<std::time::Instant> {
    let sent = std::time::Instant::now();
    let result = clients
        .eic
        .send_serial_console_ssh_public_key()
        .instance_id(instance_id)
        .serial_port(0)
        .ssh_public_key(public_key)
        .send()
        .await;
    match result {
        Ok(out) if out.success() => Ok(sent),
        Ok(out) => anyhow::bail!(
            "the serial console did not accept the key (request {})",
            out.request_id().unwrap_or("unknown")
        ),
        Err(err) => Err(from_sdk(
            err,
            &clients.attempt("SendSerialConsoleSSHPublicKey", Some(instance_id)),
        )),
    }
}

/// One rule of a security group as AWS describes it (inbound or outbound).
pub fn rule(p: &aws_sdk_ec2::types::IpPermission) -> InboundRule {
    InboundRule {
        protocol: p.ip_protocol().unwrap_or("-1").to_owned(),
        from_port: p.from_port(),
        to_port: p.to_port(),
        cidrs: p
            .ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip().map(str::to_owned))
            .chain(
                p.ipv6_ranges()
                    .iter()
                    .filter_map(|r| r.cidr_ipv6().map(str::to_owned)),
            )
            .collect(),
        group_ids: p
            .user_id_group_pairs()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        prefix_list_ids: p
            .prefix_list_ids()
            .iter()
            .filter_map(|l| l.prefix_list_id().map(str::to_owned))
            .collect(),
    }
}
