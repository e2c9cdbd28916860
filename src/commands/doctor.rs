//! `eic-connect doctor TARGET`: a preflight that explains why a connection
//! would fail. Each check prints one line (pass, warn, fail or skip) and, when
//! something is wrong, the fix. `--json` gives the same as one JSON object.
//! Exit status 0 when nothing failed (warnings allowed), 1 otherwise.
//!
//! The checks: the instance exists and runs; it has an address on the chosen
//! path (a public IP, or an EC2 Instance Connect Endpoint in its VPC); its
//! security groups open the SSH port to the caller (or to the endpoint's
//! security group); the port answers; instance metadata is enabled (the
//! pushed key is delivered through it); the OS user; a real push of a
//! throwaway key (the service's IAM and state checks); and whether the
//! console shows host keys for `--verify-host-key`.
//!
//! Nothing in AWS tells a client its own public address. `--source-ip` says
//! it; otherwise the local address used to reach the EC2 API is assumed and
//! the output says so.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::aws::diag::{self, InboundRule, SecurityGroup};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::{self, AwsSettings, Clients};
use crate::cli::{AwsArgs, ConnectVia, DoctorArgs, PathArgs};
use crate::config::Layers;
use crate::error::Failure;
use crate::hostkeys::{self, ConsoleKeys};
use crate::osuser;
use crate::sanitize::terminal_safe;
use crate::settings::{DEFAULT_OS_USER_SOURCE, choose_os_user, default_user, split_destination};
use crate::target::{AddressChoice, parse_target};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run: an earlier finding makes it meaningless.
    Skip,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
    fn from_failure(name: &'static str, status: Status, failure: &Failure) -> Check {
        let fix = (!failure.hints.is_empty()).then(|| failure.hints.join("; "));
        Check {
            name,
            status,
            detail: failure.message.clone(),
            fix,
        }
    }
}

/// How the connection would travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to this address.
    Direct(IpAddr),
    /// Through this endpoint to the private address.
    Endpoint(diag::Endpoint),
}

/// The caller's address as the instance would see it, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    /// True when given with `--source-ip`; false when assumed.
    pub given: bool,
}

/// Everything doctor found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub instance_id: Option<String>,
    pub name: Option<String>,
    pub region: String,
    pub route: Option<Route>,
    pub source: Option<Source>,
    pub os_user: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

pub async fn run(
    args: DoctorArgs,
    mut aws_args: AwsArgs,
    mut path: PathArgs,
    layers: &Layers,
) -> anyhow::Result<ExitCode> {
    let (dest_user, host) = split_destination(&args.destination);
    let (host, defaults) = layers.expand(host);
    defaults.fill_aws(&mut aws_args);
    defaults.fill_path(&mut path);
    let settings = AwsSettings::from_args(&aws_args)?;
    let target = parse_target(&host)?;
    let (user, source) = choose_os_user(
        dest_user.map(str::to_owned),
        args.os_user.clone(),
        None,
        None,
        default_user(&defaults),
    )?;
    let explicit_user = (source != DEFAULT_OS_USER_SOURCE).then_some((user, source));
    let address_choice = args.address.choice(defaults.address);
    let config = aws::load_config(&settings).await?;
    let clients = Clients::new(&config, &settings);
    let source = match args.source_ip {
        Some(ip) => Some(Source { ip, given: true }),
        None => local_address_towards_ec2(&clients.scope.region)
            .await
            .map(|ip| Source { ip, given: false }),
    };
    let mut report = Report {
        target: args.destination.clone(),
        region: clients.scope.region.clone(),
        source,
        ..Report::default()
    };
    let inputs = Inputs {
        target: &target,
        explicit_user,
        port: args.port,
        address_choice,
        via: path.via(),
        eice_id: path.eice_id.as_deref(),
    };
    diagnose(&clients, &inputs, &mut report).await;
    let text = if args.json {
        to_json(&report) + "\n"
    } else {
        render(&report)
    };
    crate::error::print_stdout(&text)?;
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

struct Inputs<'a> {
    target: &'a crate::target::Target,
    explicit_user: Option<(String, String)>,
    port: u16,
    address_choice: AddressChoice,
    via: ConnectVia,
    eice_id: Option<&'a str>,
}

fn failure_of(err: &anyhow::Error) -> Failure {
    match err.chain().find_map(|c| c.downcast_ref::<Failure>()) {
        Some(f) => Failure {
            message: f.message.clone(),
            details: f.details.clone(),
            hints: f.hints.clone(),
            exit: f.exit,
        },
        None => Failure::new(terminal_safe(&format!("{err:#}")).into_owned()),
    }
}

async fn diagnose(clients: &Clients, inputs: &Inputs<'_>, report: &mut Report) {
    // 1. The instance.
    let found = ec2::find(clients, inputs.target)
        .await
        .and_then(|found| ec2::exactly_one(found, inputs.target, &clients.scope));
    let instance = match found {
        Ok(instance) => instance,
        Err(err) => {
            let failure = failure_of(&err);
            let mut check = Check::from_failure("instance", Status::Fail, &failure);
            if !failure.details.is_empty() {
                check.detail = format!("{} ({})", check.detail, failure.details.join("; "));
            }
            report.checks.push(check);
            for name in [
                "path",
                "security-group",
                "port",
                "metadata",
                "os-user",
                "push",
                "host-keys",
            ] {
                report
                    .checks
                    .push(Check::new(name, Status::Skip, "no instance to check"));
            }
            return;
        }
    };
    report.instance_id = Some(instance.id.clone());
    report.name = instance.name.clone();
    let running = instance.state == "running";
    report.checks.push(instance_check(&instance));

    // 2. The path, and 3. the security groups (fetched together).
    let route_check = route(clients, inputs, &instance).await;
    let (route, path_check) = route_check;
    report.route = route.clone();
    report.checks.push(path_check);
    let (groups, console_pl) = tokio::join!(
        diag::security_groups(clients, &instance.security_group_ids),
        diag::console_prefix_list(clients)
    );
    report.checks.push(match groups {
        Ok(groups) => security_group_check(
            &groups,
            inputs.port,
            route.as_ref(),
            report.source.as_ref(),
            console_pl.ok().flatten().as_deref(),
        ),
        Err(err) => Check::from_failure("security-group", Status::Warn, &failure_of(&err)),
    });

    // 4. Does the port answer (direct path only)?
    report.checks.push(match (&route, running) {
        (Some(Route::Direct(ip)), true) => port_check(*ip, inputs.port).await,
        (Some(Route::Endpoint(_)), _) => Check::new(
            "port",
            Status::Skip,
            "through an endpoint: eic-connect tunnel would test it",
        ),
        _ => Check::new("port", Status::Skip, "no address to try"),
    });

    // 5. Instance metadata.
    report.checks.push(metadata_check(&instance));

    // 6. The OS user.
    let (user, user_check) = os_user_check(clients, inputs, &instance).await;
    report.os_user = Some(user.clone());
    report.checks.push(user_check);

    // 7. A real push, and 8. the console's host keys.
    let (push, keys) = tokio::join!(
        push_check(clients, &instance, &user, running),
        host_keys_check(clients, &instance)
    );
    report.checks.push(push);
    report.checks.push(keys);
}

fn instance_check(instance: &InstanceInfo) -> Check {
    let id = &instance.id;
    let kind = instance.instance_type.as_deref().unwrap_or("unknown type");
    match instance.state.as_str() {
        "running" => Check::new(
            "instance",
            Status::Pass,
            format!("{id} is running ({kind})"),
        ),
        "pending" => Check::new(
            "instance",
            Status::Fail,
            format!("{id} is still starting (pending)"),
        )
        .fix("wait a minute and try again"),
        "stopped" | "stopping" => Check::new(
            "instance",
            Status::Fail,
            format!("{id} is {}", instance.state),
        )
        .fix(format!(
            "start it: aws ec2 start-instances --instance-ids {id}"
        )),
        other => Check::new(
            "instance",
            Status::Fail,
            format!("{id} is {other}; only running instances can be connected to"),
        ),
    }
}

async fn route(
    clients: &Clients,
    inputs: &Inputs<'_>,
    instance: &InstanceInfo,
) -> (Option<Route>, Check) {
    let addrs = &instance.addresses;
    let id = &instance.id;
    if instance.state != "running" {
        return (
            None,
            Check::new(
                "path",
                Status::Skip,
                format!("{id} is {}: check again once it runs", instance.state),
            ),
        );
    }
    let direct = match inputs.address_choice {
        AddressChoice::Public => addrs.public_ip.map(IpAddr::V4),
        AddressChoice::Private => addrs.private_ip.map(IpAddr::V4),
        AddressChoice::Ipv6 => addrs.ipv6.first().copied().map(IpAddr::V6),
        AddressChoice::Auto => addrs.public_ip.map(IpAddr::V4),
    };
    let use_endpoint = match inputs.via {
        ConnectVia::Eice => true,
        ConnectVia::Direct => false,
        ConnectVia::Auto => direct.is_none(),
    };
    if !use_endpoint {
        let (picked, kind) = match (direct, inputs.address_choice) {
            (Some(ip), AddressChoice::Private) => (Some(ip), "private"),
            (Some(ip), AddressChoice::Ipv6) => (Some(ip), "IPv6"),
            (Some(ip), _) => (Some(ip), "public"),
            (None, AddressChoice::Auto) => (addrs.private_ip.map(IpAddr::V4), "fallback"),
            (None, _) => (None, ""),
        };
        return match (picked, kind) {
            (Some(ip), "fallback") => (
                Some(Route::Direct(ip)),
                Check::new(
                    "path",
                    Status::Warn,
                    format!("no public address: direct to its private address {ip}, reachable only from inside the VPC, a peered network or a VPN"),
                )
                .fix("from elsewhere, use an EC2 Instance Connect Endpoint (--connect eice) or give the instance a public IP"),
            ),
            (Some(ip), kind) => (
                Some(Route::Direct(ip)),
                Check::new("path", Status::Pass, format!("direct to its {kind} address {ip}")),
            ),
            (None, _) => (
                None,
                Check::new("path", Status::Fail, format!("{id} has no address of the kind asked for"))
                    .fix("choose another with --public, --private or --ipv6"),
            ),
        };
    }
    let Some(vpc) = instance.vpc_id.as_deref() else {
        return (
            None,
            Check::new(
                "path",
                Status::Fail,
                format!("{id} has no public IP and is in no VPC"),
            )
            .fix("give it a public IP address"),
        );
    };
    let no_public = if direct.is_none() && inputs.via == ConnectVia::Auto {
        "no public IPv4 address, and "
    } else {
        ""
    };
    match diag::endpoints(clients, vpc, inputs.eice_id).await {
        Ok(Some(found)) if !found.is_empty() => {
            let chosen = found
                .iter()
                .find(|e| e.subnet_id.is_some() && e.subnet_id == instance.subnet_id)
                .unwrap_or(&found[0])
                .clone();
            let detail = format!(
                "through EC2 Instance Connect Endpoint {} ({}) to its private address",
                chosen.id, chosen.state
            );
            (
                Some(Route::Endpoint(chosen)),
                Check::new("path", Status::Pass, detail),
            )
        }
        Ok(Some(_)) => (
            None,
            Check::new(
                "path",
                Status::Fail,
                format!("{no_public}no usable EC2 Instance Connect Endpoint in {vpc}"),
            )
            .fix(format!(
                "create one: aws ec2 create-instance-connect-endpoint --subnet-id {}{}",
                instance.subnet_id.as_deref().unwrap_or("<subnet id>"),
                if no_public.is_empty() {
                    ""
                } else {
                    " (or give the instance a public IP)"
                }
            )),
        ),
        Ok(None) => (
            None,
            Check::new(
                "path",
                if no_public.is_empty() {
                    Status::Warn
                } else {
                    Status::Fail
                },
                format!("{no_public}the EC2 API here does not list EC2 Instance Connect Endpoints"),
            ),
        ),
        Err(err) => (
            None,
            Check::from_failure("path", Status::Warn, &failure_of(&err)),
        ),
    }
}

/// Whether a protocol/port range of a rule covers `port` over TCP.
fn rule_covers(rule: &InboundRule, port: u16) -> bool {
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

/// Whether `cidr` (`a.b.c.d/n` or IPv6) contains `ip`.
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u32>() else {
        return false;
    };
    match (net.parse::<IpAddr>(), ip) {
        (Ok(IpAddr::V4(net)), IpAddr::V4(ip)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (Ok(IpAddr::V6(net)), IpAddr::V6(ip)) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Whether an address is globally routable (not private, loopback,
/// link-local, shared or unique-local).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Which sources the security groups open `port` to.
#[derive(Debug, Default)]
struct Openings {
    cidrs: Vec<String>,
    groups: Vec<String>,
    prefix_lists: Vec<String>,
}

fn openings(groups: &[SecurityGroup], port: u16) -> Openings {
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

/// The security-group verdict for the route (pure).
pub fn security_group_check(
    groups: &[SecurityGroup],
    port: u16,
    route: Option<&Route>,
    source: Option<&Source>,
    console_prefix_list: Option<&str>,
) -> Check {
    const NAME: &str = "security-group";
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let shown_ids = if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    };
    let first_group = ids.first().copied().unwrap_or("<security group id>");
    let open = openings(groups, port);
    let console_open =
        console_prefix_list.is_some_and(|pl| open.prefix_lists.iter().any(|p| p == pl));
    let console_note = if console_open {
        " (also open to the EC2 console's prefix list: browser-based EC2 Instance Connect can reach it)"
    } else {
        ""
    };
    if open.cidrs.is_empty() && open.groups.is_empty() && open.prefix_lists.is_empty() {
        let source_cidr = match source {
            Some(s) if s.given || is_public(s.ip) => {
                format!("{}/{}", s.ip, if s.ip.is_ipv4() { 32 } else { 128 })
            }
            _ => "<your public address>/32".to_owned(),
        };
        let fix = match route {
            Some(Route::Endpoint(e)) if !e.security_group_ids.is_empty() => format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --source-group {}",
                e.security_group_ids[0]
            ),
            _ => format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --cidr {source_cidr}"
            ),
        };
        return Check::new(
            NAME,
            Status::Fail,
            format!("port {port} is not open to any source in {shown_ids}"),
        )
        .fix(fix);
    }
    let world = open.cidrs.iter().any(|c| c == "0.0.0.0/0" || c == "::/0");
    match route {
        Some(Route::Endpoint(e)) => {
            if let Some(g) = e
                .security_group_ids
                .iter()
                .find(|g| open.groups.contains(g))
            {
                return Check::new(
                    NAME,
                    Status::Pass,
                    format!(
                        "port {port} is open to the endpoint's security group {g}{console_note}"
                    ),
                );
            }
            if world {
                return Check::new(
                    NAME,
                    Status::Pass,
                    format!("port {port} is open to any address{console_note}"),
                );
            }
            let fix = match e.security_group_ids.first() {
                Some(g) => format!(
                    "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --source-group {g}"
                ),
                None => format!("allow port {port} from the endpoint's subnet in {first_group}"),
            };
            let status = if open.cidrs.is_empty() {
                Status::Fail
            } else {
                Status::Warn
            };
            Check::new(
                NAME,
                status,
                format!(
                    "port {port} is not open to the endpoint's security group; open to {}{console_note}",
                    describe_openings(&open)
                ),
            )
            .fix(fix)
        }
        Some(Route::Direct(_)) | None => {
            if let Some(source) = source {
                if let Some(c) = open.cidrs.iter().find(|c| cidr_contains(c, source.ip)) {
                    return Check::new(
                        NAME,
                        Status::Pass,
                        format!("port {port} is open to {} via {c}{console_note}", source.ip),
                    );
                }
            } else if world {
                return Check::new(
                    NAME,
                    Status::Pass,
                    format!("port {port} is open to any address{console_note}"),
                );
            }
            let only_console = open.cidrs.is_empty() && open.groups.is_empty() && console_open;
            let detail = if only_console {
                format!(
                    "port {port} is open only to the EC2 console's prefix list, not to your address"
                )
            } else {
                format!(
                    "port {port} is open to {}, which does not include {}",
                    describe_openings(&open),
                    source.map_or("your address".to_owned(), |s| s.ip.to_string())
                )
            };
            let cidr = match source {
                Some(s) if s.given || is_public(s.ip) => {
                    format!("{}/{}", s.ip, if s.ip.is_ipv4() { 32 } else { 128 })
                }
                _ => "<your public address>/32".to_owned(),
            };
            let fix = format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --cidr {cidr}"
            );
            // An assumed private address says little about what the instance sees.
            let status = match source {
                Some(s) if !s.given && !is_public(s.ip) && !only_console => Status::Warn,
                _ => Status::Fail,
            };
            Check::new(NAME, status, detail).fix(fix)
        }
    }
}

fn describe_openings(o: &Openings) -> String {
    let mut parts: Vec<String> = o.cidrs.clone();
    parts.extend(o.groups.iter().map(|g| format!("group {g}")));
    parts.extend(o.prefix_lists.iter().map(|p| format!("prefix list {p}")));
    parts.join(", ")
}

async fn port_check(ip: IpAddr, port: u16) -> Check {
    let started = Instant::now();
    let addr = std::net::SocketAddr::new(ip, port);
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Check::new(
            "port",
            Status::Pass,
            format!("{addr} accepts TCP connections ({} ms)", started.elapsed().as_millis()),
        ),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => Check::new(
            "port",
            Status::Fail,
            format!("{addr} refused the connection: nothing listens on port {port}"),
        )
        .fix("check that sshd runs on the instance and listens on that port (-p PORT if it is not 22)"),
        Ok(Err(err)) => Check::new("port", Status::Fail, format!("cannot connect to {addr}: {err}"))
            .fix("check routes, network ACLs and firewalls between you and the instance"),
        Err(_) => Check::new("port", Status::Fail, format!("{addr} did not answer within 3 s"))
            .fix("packets are dropped on the way: check the security group, the subnet's network ACL, the route table (internet gateway) and local firewalls"),
    }
}

fn metadata_check(instance: &InstanceInfo) -> Check {
    let id = &instance.id;
    match instance.metadata_endpoint.as_deref() {
        Some("disabled") => Check::new(
            "metadata",
            Status::Fail,
            "instance metadata is disabled, so the instance cannot fetch pushed keys",
        )
        .fix(format!(
            "aws ec2 modify-instance-metadata-options --instance-id {id} --http-endpoint enabled"
        )),
        Some(state) => Check::new(
            "metadata",
            Status::Pass,
            format!("instance metadata is {state}"),
        ),
        None => Check::new(
            "metadata",
            Status::Warn,
            "EC2 did not report the metadata options",
        ),
    }
}

async fn os_user_check(
    clients: &Clients,
    inputs: &Inputs<'_>,
    instance: &InstanceInfo,
) -> (String, Check) {
    let choice = osuser::choose_for_image(clients, instance.image_id.as_deref()).await;
    if let Some((user, source)) = &inputs.explicit_user {
        let check = if choice.rule.starts_with("guessed") && choice.user != *user {
            Check::new(
                "os-user",
                Status::Warn,
                format!(
                    "{user} (from {source}), but the AMI suggests {}: {}",
                    choice.user, choice.rule
                ),
            )
            .fix(format!("if login fails, try -l {}", choice.user))
        } else {
            Check::new("os-user", Status::Pass, format!("{user} (from {source})"))
        };
        return (user.clone(), check);
    }
    let status = if choice.rule.starts_with("guessed") {
        Status::Pass
    } else {
        Status::Warn
    };
    let mut check = Check::new(
        "os-user",
        status,
        format!("{}: {}", choice.user, choice.rule),
    );
    if status == Status::Warn {
        check = check.fix("name the user with -l USER if ec2-user is not right for this AMI");
    }
    (choice.user, check)
}

async fn push_check(
    clients: &Clients,
    instance: &InstanceInfo,
    user: &str,
    running: bool,
) -> Check {
    if !running {
        return Check::new("push", Status::Skip, "the instance is not running");
    }
    let key = match crate::key::EphemeralKey::generate() {
        Ok(key) => key,
        Err(err) => return Check::new("push", Status::Fail, format!("cannot make a key: {err}")),
    };
    match crate::aws::push::push_key(clients, &instance.id, user, key.public_openssh()).await {
        Ok(()) => Check::new(
            "push",
            Status::Pass,
            format!(
                "SendSSHPublicKey accepted a throwaway key for {user} (valid 60 s, never used)"
            ),
        ),
        Err(err) => Check::from_failure("push", Status::Fail, &failure_of(&err)),
    }
}

async fn host_keys_check(clients: &Clients, instance: &InstanceInfo) -> Check {
    const NAME: &str = "host-keys";
    let text = match diag::console_output(clients, &instance.id).await {
        Ok(text) => text,
        Err(err) => return Check::from_failure(NAME, Status::Warn, &failure_of(&err)),
    };
    match hostkeys::parse_console(&text) {
        ConsoleKeys::Keys(keys) => {
            let list: Vec<String> = keys
                .iter()
                .map(|k| format!("{} {}", k.kind(), k.fingerprint))
                .collect();
            Check::new(
                NAME,
                Status::Pass,
                format!(
                    "the console lists {} host key(s): {}",
                    keys.len(),
                    list.join(", ")
                ),
            )
        }
        other => Check::new(
            NAME,
            Status::Warn,
            format!(
                "the console output shows {}: --verify-host-key cannot pin this instance's keys",
                if other == ConsoleKeys::Empty {
                    "an empty host-key block"
                } else {
                    "no host keys"
                }
            ),
        )
        .fix("connect with --verify-host-key --allow-unverified, or without --verify-host-key"),
    }
}

/// The local address the kernel would use to reach the EC2 API endpoint
/// (a UDP "connect" sends nothing).
async fn local_address_towards_ec2(region: &str) -> Option<IpAddr> {
    let url = std::env::var("AWS_ENDPOINT_URL_EC2")
        .ok()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|u| !u.is_empty());
    let (host, port) = match &url {
        Some(url) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let authority = rest.split('/').next().unwrap_or_default();
            match authority.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                    h.trim_matches(['[', ']']).to_owned(),
                    p.parse().unwrap_or(443),
                ),
                _ => (authority.to_owned(), 443),
            }
        }
        None if region.starts_with("cn-") => (format!("ec2.{region}.amazonaws.com.cn"), 443),
        None => (format!("ec2.{region}.amazonaws.com"), 443),
    };
    let remote = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?
    .next()?;
    let bind: std::net::SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The report for a terminal: one line per check, fixes indented below.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let who = match (&report.instance_id, &report.name) {
        (Some(id), Some(name)) => format!("{id} ({:?})", terminal_safe(name).as_ref()),
        (Some(id), None) => id.clone(),
        _ => terminal_safe(&report.target).into_owned(),
    };
    let _ = writeln!(out, "eic-connect doctor: {who}, region {}", report.region);
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:<4}  {:<14} {}",
            check.status.as_str().to_ascii_uppercase(),
            check.name,
            terminal_safe(&check.detail)
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:<20} fix: {}", "", terminal_safe(fix));
        }
    }
    if let Some(source) = &report.source
        && !source.given
    {
        let _ = writeln!(
            out,
            "note: your address was taken to be {} (the local address used to reach the EC2 API); \
             behind NAT the instance sees another one: pass --source-ip",
            source.ip
        );
    } else if report.source.is_none() {
        let _ = writeln!(
            out,
            "note: your address is unknown: pass --source-ip to check the security groups against it"
        );
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    let _ = match failed {
        0 if warned == 0 => writeln!(out, "All checks passed."),
        0 => writeln!(
            out,
            "No check failed ({warned} warning{}).",
            if warned == 1 { "" } else { "s" }
        ),
        n => writeln!(out, "{n} check{} failed.", if n == 1 { "" } else { "s" }),
    };
    out
}

/// The report as one JSON object.
pub fn to_json(report: &Report) -> String {
    use serde_json::{Value, json};
    let (path, address, endpoint) = match &report.route {
        Some(Route::Direct(ip)) => (json!("direct"), json!(ip.to_string()), Value::Null),
        Some(Route::Endpoint(e)) => (json!("eice"), Value::Null, json!(e.id)),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let source = report.source.as_ref().map_or(Value::Null, |s| {
        json!({
            "address": s.ip.to_string(),
            "how": if s.given { "given with --source-ip" } else { "assumed: the local address used to reach the EC2 API" },
        })
    });
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": c.status.as_str(),
                "detail": c.detail,
                "fix": c.fix,
            })
        })
        .collect();
    json!({
        "target": report.target,
        "instance_id": report.instance_id,
        "name": report.name,
        "region": report.region,
        "path": path,
        "address": address,
        "endpoint": endpoint,
        "source": source,
        "os_user": report.os_user,
        "ok": !report.failed(),
        "checks": checks,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sg(rules: Vec<InboundRule>) -> Vec<SecurityGroup> {
        vec![SecurityGroup {
            id: "sg-1".into(),
            name: "web".into(),
            inbound: rules,
        }]
    }

    fn tcp(from: i32, to: i32, cidrs: &[&str], groups: &[&str], pls: &[&str]) -> InboundRule {
        InboundRule {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(to),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            group_ids: groups.iter().map(|s| s.to_string()).collect(),
            prefix_list_ids: pls.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn src(ip: &str, given: bool) -> Source {
        Source {
            ip: ip.parse().unwrap(),
            given,
        }
    }

    fn direct() -> Route {
        Route::Direct("3.1.2.3".parse().unwrap())
    }

    #[test]
    fn cidrs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
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
    fn port_open_to_the_world_or_to_the_caller() {
        let world = sg(vec![tcp(22, 22, &["0.0.0.0/0"], &[], &[])]);
        let c = security_group_check(
            &world,
            22,
            Some(&direct()),
            Some(&src("198.51.100.7", true)),
            None,
        );
        assert_eq!(c.status, Status::Pass, "{c:?}");
        let office = sg(vec![tcp(22, 22, &["203.0.113.0/24"], &[], &[])]);
        let c = security_group_check(
            &office,
            22,
            Some(&direct()),
            Some(&src("203.0.113.9", true)),
            None,
        );
        assert_eq!(c.status, Status::Pass);
        let c = security_group_check(
            &office,
            22,
            Some(&direct()),
            Some(&src("198.51.100.7", true)),
            None,
        );
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("--cidr 198.51.100.7/32"));
        // An assumed private address is not proof either way.
        let c = security_group_check(
            &office,
            22,
            Some(&direct()),
            Some(&src("192.168.1.5", false)),
            None,
        );
        assert_eq!(c.status, Status::Warn);
        // A range covering the port counts; another port does not.
        let range = sg(vec![tcp(0, 1024, &["0.0.0.0/0"], &[], &[])]);
        assert_eq!(
            security_group_check(&range, 22, None, None, None).status,
            Status::Pass
        );
        assert_eq!(
            security_group_check(&range, 2222, None, None, None).status,
            Status::Fail
        );
    }

    #[test]
    fn port_closed_everywhere_fails_with_the_command_to_open_it() {
        let web_only = sg(vec![
            tcp(80, 80, &["0.0.0.0/0"], &[], &[]),
            tcp(443, 443, &["0.0.0.0/0"], &[], &[]),
        ]);
        let c = security_group_check(
            &web_only,
            22,
            Some(&direct()),
            Some(&src("198.51.100.7", true)),
            None,
        );
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("not open to any source in sg-1"),
            "{}",
            c.detail
        );
        assert_eq!(
            c.fix.unwrap(),
            "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 22 --cidr 198.51.100.7/32"
        );
        let all = sg(vec![InboundRule {
            protocol: "-1".into(),
            cidrs: vec!["0.0.0.0/0".into()],
            ..Default::default()
        }]);
        assert_eq!(
            security_group_check(&all, 22, None, None, None).status,
            Status::Pass
        );
    }

    #[test]
    fn endpoint_route_needs_the_endpoints_group() {
        let endpoint = Route::Endpoint(diag::Endpoint {
            id: "eice-1".into(),
            subnet_id: None,
            state: "create-complete".into(),
            security_group_ids: vec!["sg-eice".into()],
        });
        let ok = sg(vec![tcp(22, 22, &[], &["sg-eice"], &[])]);
        assert_eq!(
            security_group_check(&ok, 22, Some(&endpoint), None, None).status,
            Status::Pass
        );
        let other = sg(vec![tcp(22, 22, &[], &["sg-bastion"], &[])]);
        let c = security_group_check(&other, 22, Some(&endpoint), None, None);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().ends_with("--source-group sg-eice"));
    }

    #[test]
    fn console_prefix_list_alone_is_not_enough_for_the_cli() {
        let console = sg(vec![tcp(22, 22, &[], &[], &["pl-console"])]);
        let c = security_group_check(
            &console,
            22,
            Some(&direct()),
            Some(&src("192.168.1.5", false)),
            Some("pl-console"),
        );
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("only to the EC2 console's prefix list"),
            "{}",
            c.detail
        );
        let both = sg(vec![tcp(22, 22, &["0.0.0.0/0"], &[], &["pl-console"])]);
        let c = security_group_check(
            &both,
            22,
            Some(&direct()),
            Some(&src("198.51.100.7", true)),
            Some("pl-console"),
        );
        assert_eq!(c.status, Status::Pass);
        assert!(c.detail.contains("EC2 console's prefix list"));
    }

    #[test]
    fn rendering_and_json() {
        let report = Report {
            target: "web-1".into(),
            instance_id: Some("i-0abc".into()),
            name: Some("web\x1b[2J".into()),
            region: "us-east-1".into(),
            route: Some(direct()),
            source: Some(src("198.51.100.7", true)),
            os_user: Some("ubuntu".into()),
            checks: vec![
                Check::new("instance", Status::Pass, "i-0abc is running"),
                Check::new("metadata", Status::Fail, "disabled").fix("enable it"),
            ],
        };
        let text = render(&report);
        assert!(
            text.contains("PASS  instance       i-0abc is running\n"),
            "{text}"
        );
        assert!(text.contains("FAIL  metadata       disabled\n"), "{text}");
        assert!(
            text.contains("                     fix: enable it\n"),
            "{text}"
        );
        assert!(text.ends_with("1 check failed.\n"), "{text}");
        assert!(!text.contains('\x1b'));
        let json: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["path"], "direct");
        assert_eq!(json["address"], "3.1.2.3");
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "enable it");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(json["source"]["how"], "given with --source-ip");
    }
}
