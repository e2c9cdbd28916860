//! The individual checks. Each looks at one thing and says pass, warn, fail
//! or skip, with the fix when something is wrong.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::aws::Clients;
use crate::aws::diag::{self, Endpoint, SecurityGroup};
use crate::aws::ec2::InstanceInfo;
use crate::eice::endpoint::ALLOWED_PORTS;
use crate::eice::route::{self, Decision};
use crate::error::Failure;
use crate::hostkeys::{self, ConsoleKeys};
use crate::osuser::{self, ImageFacts};
use crate::sanitize::terminal_safe;
use crate::target::{AddressChoice, Addresses, choose_address};

use super::fix::{Fix, Opening};
use super::rules::{self, Openings};
use super::session::Agent;
use super::{Request, Route, Source};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run: an earlier finding makes it meaningless.
    Skip,
    /// Worth knowing, but not in the way of this connection.
    Note,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Note => "note",
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
    /// The change `--fix` can make for a failed check.
    pub action: Option<Box<Fix>>,
}

impl Check {
    pub fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: None,
            action: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    /// The fix as a change `--fix` can make; its command is the fix text.
    pub fn action(mut self, action: Fix) -> Check {
        self.fix = Some(action.aws_cli());
        self.action = Some(Box::new(action));
        self
    }

    pub fn from_failure(name: &'static str, status: Status, failure: &Failure) -> Check {
        let fix = (!failure.hints.is_empty()).then(|| failure.hints.join("; "));
        Check {
            name,
            status,
            detail: failure.message.clone(),
            fix,
            action: None,
        }
    }
}

/// The user-facing failure inside an error, or the error's text made safe
/// for a terminal.
pub fn failure_of(err: &anyhow::Error) -> Failure {
    match err.chain().find_map(|c| c.downcast_ref::<Failure>()) {
        Some(f) => Failure {
            message: f.message.clone(),
            details: f.details.clone(),
            hints: f.hints.clone(),
            exit: f.exit,
            kind: f.kind,
        },
        None => Failure::new(terminal_safe(&format!("{err:#}")).into_owned()),
    }
}

/// The instance could not be found (or not told apart from others).
pub fn instance_missing(err: &anyhow::Error) -> Check {
    let failure = failure_of(err);
    let mut check = Check::from_failure("instance", Status::Fail, &failure);
    if !failure.details.is_empty() {
        check.detail = format!("{} ({})", check.detail, failure.details.join("; "));
    }
    check
}

pub fn instance_check(instance: &InstanceInfo) -> Check {
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
        .action(Fix::Start {
            instance_id: id.clone(),
        })
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

/// The endpoint to go through: the one in the instance's subnet, else the
/// first listed.
fn choose_endpoint<'a>(found: &'a [Endpoint], subnet_id: Option<&str>) -> Option<&'a Endpoint> {
    found
        .iter()
        .find(|e| e.subnet_id.is_some() && e.subnet_id.as_deref() == subnet_id)
        .or_else(|| found.first())
}

/// The address a connection would use and how `connect` would go there,
/// before any lookup: [`route::decide`], as `connect` calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStart {
    pub address: IpAddr,
    pub decision: Decision,
}

/// The start of the path, or the `path` check when there is nothing to
/// look up (the instance is not running, or has no address of the kind
/// asked for).
pub fn path_start(request: &Request, instance: &InstanceInfo) -> Result<PathStart, Check> {
    if instance.state != "running" {
        return Err(Check::new(
            "path",
            Status::Skip,
            format!(
                "{} is {}: check again once it runs",
                instance.id, instance.state
            ),
        ));
    }
    let address = choose_address(&instance.addresses, request.address_choice, &request.target)
        .map_err(|failure| Check::from_failure("path", Status::Fail, &failure))?;
    let explicit = request.address_choice != AddressChoice::Auto;
    Ok(PathStart {
        address,
        decision: route::decide(request.via, explicit, address, instance),
    })
}

/// Whether the path needs the endpoint lookup: always through an endpoint;
/// in the fallback chain, when an endpoint can carry the port.
pub fn wants_endpoints(start: &PathStart, port: u16) -> bool {
    match start.decision {
        Decision::Tunnel => true,
        Decision::Fallback => ALLOWED_PORTS.contains(&port),
        Decision::Direct | Decision::SessionManager => false,
    }
}

/// What the endpoint lookup found.
#[derive(Debug, Clone)]
pub enum Endpoints {
    /// Not looked up (see [`wants_endpoints`]).
    NotAsked,
    /// The instance is in no VPC.
    NoVpc,
    /// The usable endpoints (perhaps none).
    Found(Vec<Endpoint>),
    /// The EC2 API here does not know DescribeInstanceConnectEndpoints.
    Unlisted,
    Failed(Failure),
}

pub async fn find_endpoints(
    clients: &Clients,
    request: &Request,
    instance: &InstanceInfo,
) -> Endpoints {
    let Some(vpc) = instance.vpc_id.as_deref() else {
        return Endpoints::NoVpc;
    };
    match diag::endpoints(clients, vpc, request.eice_id.as_deref()).await {
        Ok(Some(found)) => Endpoints::Found(found),
        Ok(None) => Endpoints::Unlisted,
        Err(err) => Endpoints::Failed(failure_of(&err)),
    }
}

fn describe_address(addrs: &Addresses, ip: IpAddr) -> &'static str {
    if addrs.public_ip.map(IpAddr::V4) == Some(ip) {
        "public"
    } else if addrs.private_ip.map(IpAddr::V4) == Some(ip) {
        "private"
    } else {
        "IPv6"
    }
}

/// How the connection would travel, and the `path` check saying so (pure):
/// the decision `connect` makes, then, for a private IPv4 address or an
/// IPv6 address with no route from here, its fallback chain: an endpoint
/// in the VPC, else Session Manager if it manages the instance and its
/// agent is online, else direct.
pub fn path_verdict(
    request: &Request,
    instance: &InstanceInfo,
    start: PathStart,
    endpoints: &Endpoints,
    agent: &Agent,
) -> (Option<Route>, Check) {
    let addrs = &instance.addresses;
    let id = &instance.id;
    let address = start.address;
    let port = request.port;
    let subnet = instance.subnet_id.as_deref();
    let vpc = instance.vpc_id.as_deref().unwrap_or("its VPC");
    let create = format!(
        "aws ec2 create-instance-connect-endpoint --subnet-id {}",
        subnet.unwrap_or("<subnet id>")
    );
    let through = |e: &Endpoint| {
        format!(
            "through EC2 Instance Connect Endpoint {} ({}) to {address}",
            e.id, e.state
        )
    };
    match start.decision {
        Decision::Direct => {
            let kind = describe_address(addrs, address);
            let check = if kind == "private"
                && request.address_choice == AddressChoice::Auto
                && addrs.public_ip.is_none()
            {
                Check::new(
                    "path",
                    Status::Warn,
                    format!("no public address: direct to its private address {address}, reachable only from inside the VPC, a peered network or a VPN"),
                )
                .fix("from elsewhere, use an EC2 Instance Connect Endpoint (--connect eice) or Session Manager (--connect ssm), or give the instance a public IP")
            } else {
                Check::new(
                    "path",
                    Status::Pass,
                    format!("direct to its {kind} address {address}"),
                )
            };
            (Some(Route::Direct(address)), check)
        }
        Decision::SessionManager => (
            Some(Route::SessionManager),
            Check::new(
                "path",
                Status::Pass,
                format!("through Session Manager (--connect ssm) to port {port} on {id}"),
            ),
        ),
        Decision::Tunnel => {
            if let Err(failure) = route::check_remote_port(port) {
                return (None, Check::from_failure("path", Status::Fail, &failure));
            }
            match endpoints {
                Endpoints::Found(found) => match choose_endpoint(found, subnet) {
                    Some(chosen) => (
                        Some(Route::Endpoint(chosen.clone())),
                        Check::new("path", Status::Pass, through(chosen)),
                    ),
                    None => (
                        None,
                        Check::new(
                            "path",
                            Status::Fail,
                            format!("no usable EC2 Instance Connect Endpoint in {vpc}"),
                        )
                        .fix(format!("create one: {create}")),
                    ),
                },
                Endpoints::NoVpc => (
                    None,
                    Check::new(
                        "path",
                        Status::Fail,
                        format!(
                            "{id} is in no VPC, so no EC2 Instance Connect Endpoint can reach it"
                        ),
                    )
                    .fix("connect directly with --connect direct"),
                ),
                Endpoints::Unlisted => (
                    None,
                    Check::new(
                        "path",
                        Status::Warn,
                        "the EC2 API here does not list EC2 Instance Connect Endpoints",
                    ),
                ),
                Endpoints::Failed(failure) => {
                    (None, Check::from_failure("path", Status::Fail, failure))
                }
                Endpoints::NotAsked => (
                    None,
                    Check::new("path", Status::Skip, "the endpoints were not looked up"),
                ),
            }
        }
        Decision::Fallback => {
            let v4 = addrs.private_ip.map(IpAddr::V4) == Some(address);
            let why = match (v4, addrs.public_ip) {
                (true, None) => "no public IPv4 address".to_owned(),
                (true, Some(_)) => format!("{address} is its private address"),
                (false, _) => format!("no route from here to its IPv6 address {address}"),
            };
            // 1. An endpoint in the VPC that reaches this address family.
            let reaching: Vec<Endpoint> = match endpoints {
                Endpoints::Found(found) => {
                    found.iter().filter(|e| e.reaches(v4)).cloned().collect()
                }
                _ => Vec::new(),
            };
            let no_endpoint = match endpoints {
                Endpoints::Found(_) => match choose_endpoint(&reaching, subnet) {
                    Some(chosen) => {
                        return (
                            Some(Route::Endpoint(chosen.clone())),
                            Check::new("path", Status::Pass, format!("{why}: {}", through(chosen))),
                        );
                    }
                    None => format!("no EC2 Instance Connect Endpoint in {vpc}"),
                },
                Endpoints::NotAsked => format!("no endpoint carries port {port}"),
                Endpoints::NoVpc => "no endpoint outside a VPC".to_owned(),
                Endpoints::Unlisted => {
                    "the EC2 API here does not list EC2 Instance Connect Endpoints".to_owned()
                }
                Endpoints::Failed(failure) => {
                    format!("endpoints could not be listed ({})", failure.message)
                }
            };
            // 2. Session Manager, if its agent is online.
            let no_agent = match agent {
                Agent::Managed(m) if m.online() => {
                    return (
                        Some(Route::SessionManager),
                        Check::new(
                            "path",
                            Status::Pass,
                            format!("{why} and {no_endpoint}: through Session Manager (its agent is online)"),
                        ),
                    );
                }
                Agent::Managed(m) => format!("its SSM agent is {}", m.ping_status),
                Agent::NotManaged => "Session Manager does not manage it".to_owned(),
                Agent::Unknown { denied: true, .. } => {
                    "whether Session Manager manages it is unknown (no ssm:DescribeInstanceInformation)".to_owned()
                }
                Agent::Unknown { .. } | Agent::NotAsked => {
                    "Session Manager could not be asked".to_owned()
                }
            };
            // 3. Direct, as connect would go.
            let reach = if v4 {
                "reachable only from inside the VPC, a peered network or a VPN"
            } else {
                "though this machine has no route to it"
            };
            (
                Some(Route::Direct(address)),
                Check::new(
                    "path",
                    Status::Warn,
                    format!("{why}, {no_endpoint} and {no_agent}: direct to {address}, {reach}"),
                )
                .fix(format!(
                    "from elsewhere: create an EC2 Instance Connect Endpoint ({create}), let Session Manager manage the instance (see session-manager), or give it a public IP"
                )),
            )
        }
    }
}

/// The block to suggest opening for the caller: its own address when given
/// or public, else a placeholder (an assumed private address is not what
/// the instance sees).
fn cidr_to_allow(source: Option<&Source>) -> String {
    match usable_cidr(source) {
        Some(net) => net.to_string(),
        None => "<your public address>/32".to_owned(),
    }
}

/// The caller's own block, when it is known well enough to open: given
/// with `--source-ip`, or public.
fn usable_cidr(source: Option<&Source>) -> Option<ipnet::IpNet> {
    source
        .filter(|s| s.given || rules::is_public(s.ip))
        .map(|s| rules::host_cidr(s.ip))
}

fn describe_openings(o: &Openings) -> String {
    let mut parts: Vec<String> = o.cidrs.clone();
    parts.extend(o.groups.iter().map(|g| format!("group {g}")));
    parts.extend(o.prefix_lists.iter().map(|p| format!("prefix list {p}")));
    parts.join(", ")
}

/// The security-group verdict through Session Manager: its agent connects
/// to the port from the instance itself, so no inbound rule matters.
pub fn no_inbound_rule_needed(port: u16) -> Check {
    Check::new(
        "security-group",
        Status::Pass,
        format!(
            "no inbound rule is needed through Session Manager: its agent reaches port {port} on the instance itself"
        ),
    )
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
    if route == Some(&Route::SessionManager) {
        return no_inbound_rule_needed(port);
    }
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let shown_ids = if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    };
    let first_group = ids.first().copied().unwrap_or("<security group id>");
    let open = Openings::of(groups, port);
    let console_open = console_prefix_list.is_some_and(|pl| open.admits_prefix_list(pl));
    let console_note = if console_open {
        " (also open to the EC2 console's prefix list: browser-based EC2 Instance Connect can reach it)"
    } else {
        ""
    };
    let endpoint_group = match route {
        Some(Route::Endpoint(e)) => e.security_group_ids.first(),
        _ => None,
    };
    // What --fix can open: in the first group, to the endpoint's group or
    // to the caller's own address.
    let opening = |to_group: bool| -> Option<Fix> {
        let group_id = ids.first()?.to_string();
        let from = if to_group {
            Opening::Group(endpoint_group?.clone())
        } else {
            Opening::Cidr(usable_cidr(source)?)
        };
        Some(Fix::OpenPort {
            group_id,
            port,
            from,
        })
    };
    let with = |check: Check, fix: Option<Fix>| match fix {
        Some(fix) => check.action(fix),
        None => check,
    };
    if open.is_empty() {
        let action = opening(endpoint_group.is_some());
        let fix = match endpoint_group {
            Some(g) => format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --source-group {g}"
            ),
            None => format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --cidr {}",
                cidr_to_allow(source)
            ),
        };
        return with(
            Check::new(
                NAME,
                Status::Fail,
                format!("port {port} is not open to any source in {shown_ids}"),
            )
            .fix(fix),
            action,
        );
    }
    let any_address = open.open_to_any_address();
    match route {
        Some(Route::Endpoint(e)) => {
            if let Some(g) = open.group_among(&e.security_group_ids) {
                return Check::new(
                    NAME,
                    Status::Pass,
                    format!(
                        "port {port} is open to the endpoint's security group {g}{console_note}"
                    ),
                );
            }
            if any_address {
                return Check::new(
                    NAME,
                    Status::Pass,
                    format!("port {port} is open to any address{console_note}"),
                );
            }
            let fix = match endpoint_group {
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
            let action = if status == Status::Fail {
                opening(true)
            } else {
                None
            };
            with(
                Check::new(
                    NAME,
                    status,
                    format!(
                        "port {port} is not open to the endpoint's security group; open to {}{console_note}",
                        describe_openings(&open)
                    ),
                )
                .fix(fix),
                action,
            )
        }
        Some(Route::Direct(_) | Route::SessionManager) | None => {
            if let Some(source) = source {
                if let Some(c) = open.cidr_admitting(source.ip) {
                    return Check::new(
                        NAME,
                        Status::Pass,
                        format!("port {port} is open to {} via {c}{console_note}", source.ip),
                    );
                }
            } else if any_address {
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
            let fix = format!(
                "aws ec2 authorize-security-group-ingress --group-id {first_group} --protocol tcp --port {port} --cidr {}",
                cidr_to_allow(source)
            );
            // An assumed private address says little about what the instance sees.
            let status = match source {
                Some(s) if !s.given && !rules::is_public(s.ip) && !only_console => Status::Warn,
                _ => Status::Fail,
            };
            let action = if status == Status::Fail {
                opening(false)
            } else {
                None
            };
            with(Check::new(NAME, status, detail).fix(fix), action)
        }
    }
}

/// The security-group verdict for the EC2 console's browser-based client
/// (`--console`): port 22 open to the AWS-managed prefix list
/// `com.amazonaws.<region>.ec2-instance-connect`, or to any address.
pub fn console_group_check(
    groups: &[SecurityGroup],
    console_prefix_list: anyhow::Result<Option<String>>,
    region: &str,
) -> Check {
    const NAME: &str = "security-group";
    let name = format!("com.amazonaws.{region}.ec2-instance-connect");
    let open = Openings::of(groups, 22);
    let pl = match console_prefix_list {
        Ok(Some(pl)) => pl,
        Ok(None) => {
            return Check::new(
                NAME,
                Status::Warn,
                format!(
                    "the prefix list {name} does not exist here, so the console's browser-based client cannot be checked"
                ),
            );
        }
        Err(err) => return Check::from_failure(NAME, Status::Warn, &failure_of(&err)),
    };
    if open.admits_prefix_list(&pl) {
        return Check::new(
            NAME,
            Status::Pass,
            format!("port 22 is open to the EC2 console's prefix list {pl} ({name})"),
        );
    }
    if open.open_to_any_address() {
        return Check::new(
            NAME,
            Status::Pass,
            "port 22 is open to any address, the EC2 console's included",
        );
    }
    let check = Check::new(
        NAME,
        Status::Fail,
        format!("port 22 is not open to the EC2 console's prefix list {pl} ({name})"),
    );
    match groups.first() {
        Some(g) => check.action(Fix::OpenPort {
            group_id: g.id.clone(),
            port: 22,
            from: Opening::PrefixList(pl),
        }),
        None => check.fix(format!(
            "allow port 22 from the prefix list {pl} in the instance's security group"
        )),
    }
}

pub async fn port_check(ip: IpAddr, port: u16) -> Check {
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

pub fn metadata_check(instance: &InstanceInfo) -> Check {
    let id = &instance.id;
    match instance.metadata_endpoint.as_deref() {
        Some("disabled") => Check::new(
            "metadata",
            Status::Fail,
            "instance metadata is disabled, so the instance cannot fetch pushed keys",
        )
        .action(Fix::EnableMetadata {
            instance_id: id.clone(),
        }),
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

/// The OS user a connection would use, and the `os-user` check, from the
/// AMI lookup (the image, `None` when not visible, or the error's text).
pub fn os_user_check(
    request: &Request,
    instance: &InstanceInfo,
    found: &Result<Option<ImageFacts>, String>,
) -> (String, Check) {
    let choice = osuser::Choice::from_lookup(instance.image_id.as_deref(), found.clone());
    let guessed = matches!(choice.source, osuser::UserSource::Guessed(_));
    if let Some((user, source)) = &request.explicit_user {
        let check = if guessed && choice.user != *user {
            Check::new(
                "os-user",
                Status::Warn,
                format!(
                    "{user} (from {source}), but the AMI suggests {}: {}",
                    choice.user, choice.source
                ),
            )
            .fix(format!("if login fails, try -l {}", choice.user))
        } else {
            Check::new("os-user", Status::Pass, format!("{user} (from {source})"))
        };
        return (user.clone(), check);
    }
    let status = if guessed { Status::Pass } else { Status::Warn };
    let mut check = Check::new(
        "os-user",
        status,
        format!("{}: {}", choice.user, choice.source),
    );
    if status == Status::Warn {
        check = check.fix("name the user with -l USER if ec2-user is not right for this AMI");
    }
    (choice.user, check)
}

pub async fn push_check(
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
        Ok(_) => Check::new(
            "push",
            Status::Pass,
            format!(
                "SendSSHPublicKey accepted a throwaway key for {user} (valid 60 s, never used)"
            ),
        ),
        Err(err) => Check::from_failure("push", Status::Fail, &failure_of(&err)),
    }
}

const HOST_KEYS: &str = "host-keys";

pub async fn host_keys_check(clients: &Clients, instance: &InstanceInfo) -> Check {
    match diag::console_output(clients, &instance.id).await {
        Ok(text) => console_host_keys(&text),
        Err(err) => Check::from_failure(HOST_KEYS, Status::Warn, &failure_of(&err)),
    }
}

/// What the console output says about host keys (pure).
fn console_host_keys(console: &str) -> Check {
    match hostkeys::parse_console(console) {
        ConsoleKeys::Keys(keys) => {
            let list: Vec<String> = keys
                .iter()
                .map(|k| format!("{} {}", k.kind(), k.fingerprint))
                .collect();
            Check::new(
                HOST_KEYS,
                Status::Pass,
                format!(
                    "the console lists {} host key(s): {}",
                    keys.len(),
                    list.join(", ")
                ),
            )
        }
        ConsoleKeys::Empty => no_console_keys("an empty host-key block"),
        ConsoleKeys::NotFound => no_console_keys("no host keys"),
    }
}

fn no_console_keys(shown: &str) -> Check {
    Check::new(
        HOST_KEYS,
        Status::Warn,
        format!(
            "the console output shows {shown}: --verify-host-key cannot pin this instance's keys"
        ),
    )
    .fix("connect with --verify-host-key --allow-unverified, or without --verify-host-key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::diag::InboundRule;
    use crate::eice::ConnectVia;

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

    fn endpoint(id: &str, subnet: Option<&str>, groups: &[&str]) -> Endpoint {
        Endpoint {
            id: id.into(),
            subnet_id: subnet.map(str::to_owned),
            state: "create-complete".into(),
            security_group_ids: groups.iter().map(|s| s.to_string()).collect(),
            ip_address_type: None,
        }
    }

    #[test]
    fn endpoints_reach_their_address_family() {
        let mut e = endpoint("eice-a", None, &[]);
        assert!(e.reaches(true) && !e.reaches(false));
        e.ip_address_type = Some("dualstack".into());
        assert!(e.reaches(true) && e.reaches(false));
        e.ip_address_type = Some("ipv6".into());
        assert!(!e.reaches(true) && e.reaches(false));
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
    fn the_suggested_cidr_is_the_callers_own_only_when_known() {
        let closed = sg(vec![]);
        let fix = |source: Option<&Source>| {
            security_group_check(&closed, 22, Some(&direct()), source, None)
                .fix
                .unwrap()
        };
        assert!(fix(Some(&src("2001:db8::7", true))).ends_with("--cidr 2001:db8::7/128"));
        assert!(fix(Some(&src("198.51.100.7", false))).ends_with("--cidr 198.51.100.7/32"));
        assert!(fix(Some(&src("10.0.0.5", false))).ends_with("--cidr <your public address>/32"));
        assert!(fix(None).ends_with("--cidr <your public address>/32"));
        let none = security_group_check(&[], 22, None, None, None);
        assert_eq!(none.status, Status::Fail);
        assert!(none.detail.ends_with("in none"), "{}", none.detail);
        assert!(none.fix.unwrap().contains("--group-id <security group id>"));
    }

    #[test]
    fn endpoint_route_needs_the_endpoints_group() {
        let endpoint = Route::Endpoint(endpoint("eice-1", None, &["sg-eice"]));
        let ok = sg(vec![tcp(22, 22, &[], &["sg-eice"], &[])]);
        assert_eq!(
            security_group_check(&ok, 22, Some(&endpoint), None, None).status,
            Status::Pass
        );
        let other = sg(vec![tcp(22, 22, &[], &["sg-bastion"], &[])]);
        let c = security_group_check(&other, 22, Some(&endpoint), None, None);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().ends_with("--source-group sg-eice"));
        // Open to some addresses: perhaps the endpoint's subnet.
        let cidr = sg(vec![tcp(22, 22, &["10.0.0.0/16"], &[], &[])]);
        let c = security_group_check(&cidr, 22, Some(&endpoint), None, None);
        assert_eq!(c.status, Status::Warn);
        let closed = security_group_check(&sg(vec![]), 22, Some(&endpoint), None, None);
        assert!(closed.fix.unwrap().ends_with("--source-group sg-eice"));
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

    fn request(choice: AddressChoice, via: ConnectVia, port: u16) -> Request {
        Request {
            destination: "web-1".into(),
            target: crate::target::Target::InstanceId("i-1".into()),
            explicit_user: None,
            port,
            address_choice: choice,
            via,
            eice_id: None,
            max_tunnel_duration: None,
            source_ip: None,
            console: false,
        }
    }

    fn running(public: bool, ipv6: bool) -> InstanceInfo {
        InstanceInfo {
            id: "i-1".into(),
            state: "running".into(),
            addresses: Addresses {
                public_ip: public.then(|| "3.1.2.3".parse().unwrap()),
                private_ip: Some("10.0.0.5".parse().unwrap()),
                ipv6: if ipv6 {
                    vec!["2600:1f18::1".parse().unwrap()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
            vpc_id: Some("vpc-1".into()),
            subnet_id: Some("subnet-b".into()),
            ..Default::default()
        }
    }

    fn online() -> Agent {
        Agent::Managed(crate::ssm::api::Managed {
            ping_status: "Online".into(),
            agent_version: None,
            platform: None,
        })
    }

    /// The route and check `path` gives, the start decided as `connect`
    /// decides it.
    fn path(
        instance: &InstanceInfo,
        choice: AddressChoice,
        via: ConnectVia,
        port: u16,
        endpoints: Endpoints,
        agent: Agent,
    ) -> (Option<Route>, Check) {
        let request = request(choice, via, port);
        match path_start(&request, instance) {
            Ok(start) => path_verdict(&request, instance, start, &endpoints, &agent),
            Err(check) => (None, check),
        }
    }

    #[test]
    fn the_path_follows_connects_fallback_chain() {
        use AddressChoice::Auto;
        let none = || Endpoints::Found(Vec::new());
        let one = || Endpoints::Found(vec![endpoint("eice-b", Some("subnet-b"), &[])]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let private = running(false, false);
        // A public address goes direct, whatever else there is.
        let (route, c) = path(
            &running(true, false),
            Auto,
            ConnectVia::Auto,
            22,
            one(),
            online(),
        );
        assert_eq!(route, Some(Route::Direct(ip("3.1.2.3"))));
        assert_eq!(c.detail, "direct to its public address 3.1.2.3");
        // A private one: the endpoint first…
        let (route, c) = path(&private, Auto, ConnectVia::Auto, 22, one(), online());
        assert!(matches!(route, Some(Route::Endpoint(e)) if e.id == "eice-b"));
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.detail.starts_with(
                "no public IPv4 address: through EC2 Instance Connect Endpoint eice-b"
            ),
            "{}",
            c.detail
        );
        // …else Session Manager with its agent online…
        let (route, c) = path(&private, Auto, ConnectVia::Auto, 22, none(), online());
        assert_eq!(route, Some(Route::SessionManager));
        assert_eq!(c.status, Status::Pass);
        assert_eq!(
            c.detail,
            "no public IPv4 address and no EC2 Instance Connect Endpoint in vpc-1: through Session Manager (its agent is online)"
        );
        // …else direct, with a warning naming the other ways.
        for (agent, said) in [
            (Agent::NotManaged, "Session Manager does not manage it"),
            (
                Agent::Managed(crate::ssm::api::Managed {
                    ping_status: "ConnectionLost".into(),
                    agent_version: None,
                    platform: None,
                }),
                "its SSM agent is ConnectionLost",
            ),
            (
                Agent::Unknown {
                    failure: Failure::new("not authorized"),
                    denied: true,
                },
                "no ssm:DescribeInstanceInformation",
            ),
        ] {
            let (route, c) = path(&private, Auto, ConnectVia::Auto, 22, none(), agent);
            assert_eq!(route, Some(Route::Direct(ip("10.0.0.5"))));
            assert_eq!(c.status, Status::Warn);
            assert!(c.detail.contains(said), "{said}: {}", c.detail);
            assert!(c.detail.ends_with("direct to 10.0.0.5, reachable only from inside the VPC, a peered network or a VPN"), "{}", c.detail);
            let fix = c.fix.unwrap();
            assert!(fix.contains("--subnet-id subnet-b"), "{fix}");
            assert!(fix.contains("Session Manager"), "{fix}");
        }
        // An endpoint cannot carry port 2222: not even looked up.
        let start = path_start(&request(Auto, ConnectVia::Auto, 2222), &private).unwrap();
        assert_eq!(start.decision, Decision::Fallback);
        assert!(!wants_endpoints(&start, 2222));
        assert!(wants_endpoints(&start, 22));
        let (route, c) = path(
            &private,
            Auto,
            ConnectVia::Auto,
            2222,
            Endpoints::NotAsked,
            online(),
        );
        assert_eq!(route, Some(Route::SessionManager));
        assert!(
            c.detail.contains("no endpoint carries port 2222"),
            "{}",
            c.detail
        );
        // An IPv6 address with no route from here takes the chain too.
        let v6_only = InstanceInfo {
            addresses: Addresses {
                ipv6: vec!["2600:1f18::1".parse().unwrap()],
                ..Default::default()
            },
            ..running(false, false)
        };
        let start = PathStart {
            address: ip("2600:1f18::1"),
            decision: Decision::Fallback,
        };
        let (route, c) = path_verdict(
            &request(Auto, ConnectVia::Auto, 22),
            &v6_only,
            start,
            &none(),
            &Agent::NotManaged,
        );
        assert_eq!(route, Some(Route::Direct(ip("2600:1f18::1"))));
        assert!(
            c.detail
                .starts_with("no route from here to its IPv6 address 2600:1f18::1, "),
            "{}",
            c.detail
        );
    }

    #[test]
    fn the_path_asked_for() {
        use AddressChoice::Auto;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let private = running(false, false);
        let none = || Endpoints::Found(Vec::new());
        // --connect ssm: Session Manager whatever the addresses.
        let (route, c) = path(
            &running(true, false),
            Auto,
            ConnectVia::Ssm,
            22,
            Endpoints::NotAsked,
            Agent::NotManaged,
        );
        assert_eq!(route, Some(Route::SessionManager));
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.detail
                .starts_with("through Session Manager (--connect ssm)"),
            "{}",
            c.detail
        );
        // --connect direct without a public address: the private one, warned.
        let (route, c) = path(&private, Auto, ConnectVia::Direct, 22, none(), online());
        assert_eq!(route, Some(Route::Direct(ip("10.0.0.5"))));
        assert_eq!(c.status, Status::Warn);
        // --private is what was asked for: no warning, no chain.
        let (route, c) = path(
            &running(true, false),
            AddressChoice::Private,
            ConnectVia::Auto,
            22,
            none(),
            online(),
        );
        assert_eq!(route, Some(Route::Direct(ip("10.0.0.5"))));
        assert_eq!(c.detail, "direct to its private address 10.0.0.5");
        let (_, c) = path(
            &running(true, true),
            AddressChoice::Ipv6,
            ConnectVia::Auto,
            22,
            none(),
            online(),
        );
        assert_eq!(c.detail, "direct to its IPv6 address 2600:1f18::1");
        // No address of the kind asked for.
        let (route, c) = path(
            &private,
            AddressChoice::Public,
            ConnectVia::Auto,
            22,
            none(),
            online(),
        );
        assert_eq!((route, c.status), (None, Status::Fail));
        assert_eq!(c.detail, "the instance has no public IPv4 address");
        // --connect eice: an endpoint or a failure, never another way.
        let (route, c) = path(&private, Auto, ConnectVia::Eice, 22, none(), online());
        assert_eq!((route, c.status), (None, Status::Fail));
        assert_eq!(c.detail, "no usable EC2 Instance Connect Endpoint in vpc-1");
        assert_eq!(
            c.fix.unwrap(),
            "create one: aws ec2 create-instance-connect-endpoint --subnet-id subnet-b"
        );
        let (route, c) = path(
            &private,
            Auto,
            ConnectVia::Eice,
            2222,
            Endpoints::NotAsked,
            online(),
        );
        assert_eq!((route, c.status), (None, Status::Fail));
        assert!(
            c.detail.contains("only reach ports 22 and 3389"),
            "{}",
            c.detail
        );
        let (route, c) = path(
            &private,
            Auto,
            ConnectVia::Eice,
            22,
            Endpoints::Failed(Failure::new(
                "not authorized to call DescribeInstanceConnectEndpoints",
            )),
            online(),
        );
        assert_eq!((route, c.status), (None, Status::Fail));
        // A stopped instance: nothing to decide.
        let stopped = InstanceInfo {
            state: "stopped".into(),
            ..running(true, false)
        };
        let (route, c) = path(&stopped, Auto, ConnectVia::Auto, 22, none(), online());
        assert_eq!((route, c.status), (None, Status::Skip));
    }

    #[test]
    fn session_manager_needs_no_inbound_rule() {
        let c = security_group_check(&sg(vec![]), 22, Some(&Route::SessionManager), None, None);
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.detail
                .starts_with("no inbound rule is needed through Session Manager"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn the_endpoint_in_the_instances_subnet_wins() {
        let found = [
            endpoint("eice-a", Some("subnet-a"), &[]),
            endpoint("eice-b", Some("subnet-b"), &[]),
        ];
        let id = |e: Option<&Endpoint>| e.map(|e| e.id.clone());
        assert_eq!(
            id(choose_endpoint(&found, Some("subnet-b"))),
            Some("eice-b".into())
        );
        assert_eq!(
            id(choose_endpoint(&found, Some("subnet-c"))),
            Some("eice-a".into())
        );
        assert_eq!(id(choose_endpoint(&found, None)), Some("eice-a".into()));
        // An endpoint without a subnet does not match an instance without one.
        let loose = [
            endpoint("eice-a", Some("subnet-a"), &[]),
            endpoint("eice-x", None, &[]),
        ];
        assert_eq!(id(choose_endpoint(&loose, None)), Some("eice-a".into()));
        assert_eq!(choose_endpoint(&[], Some("subnet-a")), None);
    }

    #[test]
    fn instance_states() {
        let inst = |state: &str| InstanceInfo {
            id: "i-1".into(),
            state: state.into(),
            instance_type: Some("t3.micro".into()),
            ..Default::default()
        };
        let running = instance_check(&inst("running"));
        assert_eq!(running.status, Status::Pass);
        assert_eq!(running.detail, "i-1 is running (t3.micro)");
        let stopped = instance_check(&inst("stopped"));
        assert_eq!(stopped.status, Status::Fail);
        assert!(
            stopped
                .fix
                .unwrap()
                .contains("start-instances --instance-ids i-1")
        );
        assert_eq!(instance_check(&inst("terminated")).status, Status::Fail);
        assert_eq!(metadata_check(&inst("running")).status, Status::Warn);
    }

    #[test]
    fn console_without_host_keys_warns() {
        let c = console_host_keys("nothing here");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail
                .starts_with("the console output shows no host keys:")
        );
        assert!(c.fix.is_some());
    }
}
