//! Instance lookups through DescribeInstances.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aws_sdk_ec2::types::{Filter, Instance};
use futures_util::future::try_join_all;

use super::errors::{Attempt, from_sdk};
use super::{Clients, Scope};
use crate::error::{Failure, fail};
use crate::sanitize::terminal_safe;
use crate::target::{Addresses, Target, is_instance_id};

/// What eic-connect needs to know about an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    /// The `Name` tag, as AWS returned it (may hold anything: sanitise before printing).
    pub name: Option<String>,
    pub state: String,
    pub addresses: Addresses,
    pub availability_zone: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    pub metadata_endpoint: Option<String>,
    /// Security groups of the instance (for `doctor`).
    pub security_group_ids: Vec<String>,
    /// Every tag, in AWS's order (values untrusted, like the name).
    pub tags: Vec<(String, String)>,
}

impl InstanceInfo {
    /// One line for listings: id, name, state, addresses — all terminal-safe.
    pub fn summary(&self) -> String {
        let name = self.name.as_deref().map(terminal_safe).unwrap_or_default();
        let mut addrs: Vec<String> = Vec::new();
        if let Some(ip) = self.addresses.public_ip {
            addrs.push(format!("public {ip}"));
        }
        if let Some(ip) = self.addresses.private_ip {
            addrs.push(format!("private {ip}"));
        }
        if let Some(ip) = self.addresses.ipv6.first() {
            addrs.push(format!("ipv6 {ip}"));
        }
        let name = if name.is_empty() {
            "-".into()
        } else {
            format!("{name:?}")
        };
        format!(
            "{}  {}  {}  {}",
            self.id,
            name,
            self.state,
            addrs.join(", ")
        )
    }

    /// The instance as the API described it; `None` if it has no id at all.
    /// An id that is not an EC2 instance id is refused: it would end up in
    /// known_hosts lines, file names and commands.
    fn from_sdk(inst: &Instance) -> Result<Option<InstanceInfo>, Failure> {
        let Some(id) = inst.instance_id() else {
            return Ok(None);
        };
        if !is_instance_id(id) {
            return Err(unusable_id(id));
        }
        let id = id.to_owned();
        let parse_v4 = |s: Option<&str>| s.and_then(|s| s.parse().ok());
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let mut ipv6: Vec<_> = inst
            .ipv6_address()
            .and_then(|s| s.parse().ok())
            .into_iter()
            .collect();
        for ni in inst.network_interfaces() {
            for a in ni.ipv6_addresses() {
                if let Some(ip) = a.ipv6_address().and_then(|s| s.parse().ok())
                    && !ipv6.contains(&ip)
                {
                    ipv6.push(ip);
                }
            }
        }
        Ok(Some(InstanceInfo {
            name: inst
                .tags()
                .iter()
                .find(|t| t.key() == Some("Name"))
                .and_then(|t| t.value())
                .map(str::to_owned),
            state: inst
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            addresses: Addresses {
                public_ip: parse_v4(inst.public_ip_address()),
                private_ip: parse_v4(inst.private_ip_address()),
                ipv6,
                public_dns: non_empty(inst.public_dns_name()),
                private_dns: non_empty(inst.private_dns_name()),
            },
            availability_zone: inst
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            vpc_id: inst.vpc_id().map(str::to_owned),
            subnet_id: inst.subnet_id().map(str::to_owned),
            image_id: inst.image_id().map(str::to_owned),
            instance_type: inst.instance_type().map(|t| t.as_str().to_owned()),
            metadata_endpoint: inst
                .metadata_options()
                .and_then(|m| m.http_endpoint())
                .map(|e| e.as_str().to_owned()),
            security_group_ids: inst
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned))
                .collect(),
            tags: inst
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                .collect(),
            id,
        }))
    }
}

/// An instance whose id is not `i-` and 8 or 17 lowercase hex digits:
/// nothing about it can be trusted, so nothing is done with it.
fn unusable_id(id: &str) -> Failure {
    Failure::new(format!(
        "DescribeInstances answered with an instance id eic-connect does not understand: \"{}\"",
        terminal_safe(id)
    ))
    .hint("instance ids are 'i-' followed by 8 or 17 lowercase hex digits; the answer may not come from EC2")
    .hint("if AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_EC2 is set, check that it points at EC2")
}

/// Instances in these states can be looked up by name or address; terminated
/// ones linger in the API for an hour and would only cause ambiguity.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The filter sets to query for a target; several sets are queried
/// concurrently and their results merged (EC2 ANDs filters within a call).
pub fn filter_sets(target: &Target) -> Vec<Vec<(String, String)>> {
    let one = |name: &str, value: &str| vec![(name.to_owned(), value.to_owned())];
    match target {
        Target::InstanceId(_) => Vec::new(),
        Target::Ip(IpAddr::V4(ip)) => {
            vec![
                one("ip-address", &ip.to_string()),
                one("private-ip-address", &ip.to_string()),
            ]
        }
        Target::Ip(IpAddr::V6(ip)) => {
            vec![one(
                "network-interface.ipv6-addresses.ipv6-address",
                &ip.to_string(),
            )]
        }
        Target::DnsName(name) => vec![one("dns-name", name), one("private-dns-name", name)],
        Target::Name(name) if name.contains('.') => vec![
            one("tag:Name", name),
            one("dns-name", &name.to_ascii_lowercase()),
            one("private-dns-name", &name.to_ascii_lowercase()),
        ],
        Target::Name(name) => vec![one("tag:Name", name)],
    }
}

/// Finds the instances a target names. Zero, one or several: the caller
/// decides what each means.
pub async fn find(clients: &Clients, target: &Target) -> anyhow::Result<Vec<InstanceInfo>> {
    let at = Attempt {
        op: "DescribeInstances",
        scope: &clients.scope,
        instance_id: None,
        os_user: None,
    };
    if let Target::InstanceId(id) = target {
        let result = clients
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await;
        return match result {
            Ok(out) => Ok(collect(out.reservations())?),
            Err(err)
                if err.as_service_error().and_then(|e| e.meta().code())
                    == Some("InvalidInstanceID.NotFound") =>
            {
                Ok(Vec::new())
            }
            Err(err) => Err(from_sdk(
                err,
                &Attempt {
                    instance_id: Some(id),
                    ..at
                },
            )),
        };
    }
    let queries = filter_sets(target)
        .into_iter()
        .map(|set| describe_filtered(clients, set, at));
    let mut merged: BTreeMap<String, InstanceInfo> = BTreeMap::new();
    for batch in try_join_all(queries).await? {
        for inst in batch {
            merged.entry(inst.id.clone()).or_insert(inst);
        }
    }
    Ok(merged.into_values().collect())
}

/// Most matches eic-connect will collect for one target; a pattern matching
/// more than this is not naming an instance.
const MAX_MATCHES: usize = 1000;

async fn describe_filtered(
    clients: &Clients,
    set: Vec<(String, String)>,
    at: Attempt<'_>,
) -> anyhow::Result<Vec<InstanceInfo>> {
    let mut filters: Vec<(String, Vec<String>)> = set
        .into_iter()
        .map(|(name, value)| (name, vec![value]))
        .collect();
    filters.push((
        "instance-state-name".into(),
        LIVE_STATES.iter().map(|s| (*s).to_owned()).collect(),
    ));
    describe(clients, filters, MAX_MATCHES, at).await
}

/// DescribeInstances with `filters` (ANDed; values within one ORed), every
/// page up to `cap` instances.
async fn describe(
    clients: &Clients,
    filters: Vec<(String, Vec<String>)>,
    cap: usize,
    at: Attempt<'_>,
) -> anyhow::Result<Vec<InstanceInfo>> {
    let mut request = clients.ec2.describe_instances();
    for (name, values) in filters {
        request = request.filters(
            Filter::builder()
                .name(name)
                .set_values(Some(values))
                .build(),
        );
    }
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| from_sdk(err, &at))?;
        found.extend(collect(page.reservations())?);
        if found.len() >= cap {
            break;
        }
    }
    Ok(found)
}

/// Most instances `list` and `run` collect: far beyond a fleet anyone means
/// to address at once, while bounding memory and time.
const MAX_LISTED: usize = 20_000;

/// Every instance the filters select (for `list` and `run`); terminated
/// instances only if a filter asks for states.
pub async fn list(
    clients: &Clients,
    mut filters: Vec<(String, Vec<String>)>,
) -> anyhow::Result<Vec<InstanceInfo>> {
    if !filters
        .iter()
        .any(|(name, _)| name == "instance-state-name")
    {
        filters.push((
            "instance-state-name".into(),
            LIVE_STATES.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    let at = Attempt {
        op: "DescribeInstances",
        scope: &clients.scope,
        instance_id: None,
        os_user: None,
    };
    let mut found = describe(clients, filters, MAX_LISTED, at).await?;
    found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(found)
}

fn collect(reservations: &[aws_sdk_ec2::types::Reservation]) -> Result<Vec<InstanceInfo>, Failure> {
    let mut found = Vec::new();
    for inst in reservations.iter().flat_map(|r| r.instances()) {
        found.extend(InstanceInfo::from_sdk(inst)?);
    }
    Ok(found)
}

/// Zero matches and several matches are both errors; never silently the first.
pub fn exactly_one(
    mut found: Vec<InstanceInfo>,
    target: &Target,
    scope: &Scope,
) -> anyhow::Result<InstanceInfo> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            let mut failure = Failure::new(format!(
                "no instance matches {}",
                search_description(target, scope)
            ))
            .hint("check --region and --profile: lookups are per account and region");
            if !matches!(target, Target::InstanceId(_)) {
                failure = failure.hint("terminated instances are not considered; list instances with: aws ec2 describe-instances");
            }
            fail(failure)
        }
        n => {
            let mut failure = Failure::new(format!(
                "{target} matches {n} instances ({})",
                scope.describe()
            ));
            for instance in &found {
                failure = failure.detail(instance.summary());
            }
            fail(failure.hint("name one by its instance id"))
        }
    }
}

pub fn ensure_running(instance: &InstanceInfo) -> anyhow::Result<()> {
    let id = &instance.id;
    match instance.state.as_str() {
        "running" => Ok(()),
        "pending" => fail(
            Failure::new(format!("instance {id} is still starting (pending)"))
                .hint("try again in a few seconds"),
        ),
        "stopped" | "stopping" => fail(
            Failure::new(format!("instance {id} is {}", instance.state))
                .hint(format!(
                    "start it: aws ec2 start-instances --instance-ids {id}"
                ))
                .hint(
                    "or add --start: eic-connect then starts it, waits until it runs, and connects",
                ),
        ),
        other => fail(Failure::new(format!(
            "instance {id} is {other}; only running instances can be connected to"
        ))),
    }
}

/// How long `--start` waits for an instance to reach a state.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `--start`: returns the instance once it runs, starting it if it is
/// stopped (or stopping: after it has stopped). With `show`, a progress line
/// on stderr. The answer is fresh: a restarted instance has new addresses.
pub async fn ensure_started(
    clients: &Clients,
    instance: InstanceInfo,
    show: bool,
) -> anyhow::Result<InstanceInfo> {
    let id = instance.id.clone();
    let mut progress = if show {
        crate::progress::Line::stderr()
    } else {
        crate::progress::Line::silent()
    };
    let started = std::time::Instant::now();
    let mut current = instance;
    let mut waited_for = false;
    loop {
        match current.state.as_str() {
            "running" => {
                if waited_for {
                    progress.finish(&format!(
                        "{id} is running (after {} s)",
                        started.elapsed().as_secs()
                    ));
                }
                return Ok(current);
            }
            "stopped" => {
                start(clients, &id).await?;
                progress.show(&format!("starting {id}…"));
            }
            "pending" | "stopping" => {}
            _ => {
                ensure_running(&current)?;
            }
        }
        waited_for = true;
        let waited = started.elapsed();
        if waited > START_TIMEOUT {
            return fail(
                Failure::new(format!(
                    "{id} was still {} after {} s",
                    current.state,
                    waited.as_secs()
                ))
                .hint(format!(
                    "look at it with: aws ec2 describe-instances --instance-ids {id}"
                )),
            );
        }
        // Quick at first (a start takes seconds to minutes), then every 5 s.
        let pause = (waited / 4).clamp(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(5),
        );
        tokio::time::sleep(pause).await;
        let target = Target::InstanceId(id.clone());
        current = exactly_one(find(clients, &target).await?, &target, &clients.scope)?;
        progress.show(&format!(
            "waiting for {id} to run: {} ({} s)",
            current.state,
            started.elapsed().as_secs()
        ));
    }
}

/// StartInstances for one instance.
async fn start(clients: &Clients, id: &str) -> anyhow::Result<()> {
    clients
        .ec2
        .start_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|err| {
            from_sdk(
                err,
                &Attempt {
                    op: "StartInstances",
                    scope: &clients.scope,
                    instance_id: Some(id),
                    os_user: None,
                },
            )
        })?;
    tracing::debug!(instance = id, "StartInstances accepted");
    Ok(())
}

/// Finds the one running instance a target names, or fails saying why.
pub async fn resolve_running(clients: &Clients, target: &Target) -> anyhow::Result<InstanceInfo> {
    let instance = exactly_one(find(clients, target).await?, target, &clients.scope)?;
    ensure_running(&instance)?;
    Ok(instance)
}

/// Describes the search for "no instance matches" messages.
pub fn search_description(target: &Target, scope: &Scope) -> String {
    format!("{target} ({})", scope.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_per_target_kind() {
        let names = |t: &Target| -> Vec<String> {
            filter_sets(t)
                .into_iter()
                .map(|s| {
                    s.into_iter()
                        .map(|(n, v)| format!("{n}={v}"))
                        .collect::<Vec<_>>()
                        .join("&")
                })
                .collect()
        };
        assert_eq!(names(&Target::Name("web-1".into())), ["tag:Name=web-1"]);
        assert_eq!(
            names(&Target::Name("Web.Prod".into())),
            [
                "tag:Name=Web.Prod",
                "dns-name=web.prod",
                "private-dns-name=web.prod"
            ]
        );
        assert_eq!(
            names(&Target::Ip("10.0.0.5".parse().unwrap())),
            ["ip-address=10.0.0.5", "private-ip-address=10.0.0.5"]
        );
        assert_eq!(
            names(&Target::Ip("2600::5".parse().unwrap())),
            ["network-interface.ipv6-addresses.ipv6-address=2600::5"]
        );
        assert_eq!(
            names(&Target::DnsName("ip-10-0-0-5.ec2.internal".into())),
            [
                "dns-name=ip-10-0-0-5.ec2.internal",
                "private-dns-name=ip-10-0-0-5.ec2.internal"
            ]
        );
        assert!(filter_sets(&Target::InstanceId("i-01234567".into())).is_empty());
    }

    #[test]
    fn api_instances_need_a_valid_id() {
        let with_id = |id: &str| Instance::builder().instance_id(id).build();
        for good in ["i-0123abcd", "i-0123456789abcdef0"] {
            let info = InstanceInfo::from_sdk(&with_id(good)).unwrap().unwrap();
            assert_eq!(info.id, good);
        }
        assert_eq!(
            InstanceInfo::from_sdk(&Instance::builder().build()).unwrap(),
            None
        );
        for bad in [
            "i-0123456789abcdef0\n@cert-authority * ssh-ed25519 AAAA",
            "i-0123456789ABCDEF0",
            "i-0123abc",
            "i-0123456789abcdef",
            "i-0123456789abcdef0 ",
            "../i-0123abcd",
            "web-1",
            "",
        ] {
            let failure = InstanceInfo::from_sdk(&with_id(bad)).unwrap_err();
            assert_eq!(failure.exit, crate::error::EXIT_FAILURE, "{bad:?}");
            assert!(
                failure.message.contains("does not understand"),
                "{}",
                failure.message
            );
            assert!(!failure.message.contains('\n'), "{}", failure.message);
            assert!(
                failure.message.contains(&*terminal_safe(bad)),
                "{}",
                failure.message
            );
            assert!(!failure.hints.is_empty());
        }
        let reservation = aws_sdk_ec2::types::Reservation::builder()
            .instances(with_id("i-0123abcd"))
            .instances(with_id("i-0123abcd\r"))
            .build();
        assert!(
            collect(&[reservation]).is_err(),
            "one bad id spoils the answer"
        );
    }

    #[test]
    fn summary_is_terminal_safe() {
        let info = InstanceInfo {
            id: "i-01234567".into(),
            name: Some("evil\x1b[2Jname\n".into()),
            state: "running".into(),
            addresses: Addresses {
                private_ip: Some("10.0.0.5".parse().unwrap()),
                ..Default::default()
            },
            ..Default::default()
        };
        let line = info.summary();
        assert!(!line.contains('\x1b') && !line.contains('\n'), "{line}");
        assert!(line.contains("private 10.0.0.5"));
        assert!(line.starts_with("i-01234567  "));
    }
}
