//! The preflight behind `eic-connect doctor TARGET`: explains why a
//! connection would fail. Each check gives one line (pass, warn, fail or
//! skip) and, when something is wrong, the fix.
//!
//! The checks: the instance exists and runs; the path a connection would
//! take, decided as `connect` decides it (a public address goes direct; a
//! private one takes the fallback chain: an EC2 Instance Connect Endpoint in
//! its VPC, else Session Manager if it manages the instance and its agent is
//! online, else direct); whether Session Manager manages the instance and
//! how its agent is; through Session Manager, a real session started and
//! ended at once; its security groups open the SSH port to the caller (or to
//! the endpoint's security group; Session Manager needs no inbound rule);
//! the port answers; instance metadata is enabled (the pushed key is
//! delivered through it); the OS user; whether the AMI ships the EC2
//! Instance Connect package; what IAM's policy simulator says about the
//! push (and the endpoint's tunnel) for the caller; a real push of a
//! throwaway key (the service's IAM and state checks); and whether the
//! console shows host keys for `--verify-host-key`. With `--fix`, the
//! failed checks one API call can fix are offered as changes ([`fix`]).
//!
//! Nothing in AWS tells a client its own public address. `--source-ip` says
//! it; otherwise the local address used to reach the EC2 API is assumed and
//! the report says so.
//!
//! This module gathers what the checks need and runs them in order;
//! [`checks`] holds the checks, [`session`] the Session Manager ones,
//! [`iam`] the policy simulation, [`package`] the AMI's package,
//! [`rules`] the security-group logic, [`fix`] the changes `--fix` makes
//! and [`report`] the text and JSON output.

mod checks;
pub mod fix;
mod iam;
mod package;
pub mod report;
pub(crate) mod rules;
mod session;

use std::net::IpAddr;
use std::time::Duration;

use crate::aws::diag;
use crate::aws::ec2;
use crate::aws::{self, AwsSettings, Clients};
use crate::eice::ConnectVia;
use crate::osuser;
use crate::target::{AddressChoice, Target};

use checks::{Check, Status};
pub use report::Report;

/// How the connection would travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to this address.
    Direct(IpAddr),
    /// Through this endpoint to the private address.
    Endpoint(diag::Endpoint),
    /// Through a Session Manager session to the port.
    SessionManager,
}

/// The caller's address as the instance would see it, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    /// True when given with `--source-ip`; false when assumed.
    pub given: bool,
}

/// What to diagnose, with every layer (command line, environment, config
/// file, alias) already applied.
#[derive(Debug, Clone)]
pub struct Request {
    /// The destination as typed, for the report's heading.
    pub destination: String,
    pub target: Target,
    /// The OS user and what named it, when something did; else the AMI
    /// decides.
    pub explicit_user: Option<(String, String)>,
    pub port: u16,
    pub address_choice: AddressChoice,
    pub via: ConnectVia,
    pub eice_id: Option<String>,
    /// `--max-tunnel-duration`, for the tunnel's simulation.
    pub max_tunnel_duration: Option<u32>,
    /// `--source-ip`: the caller's address as the instance sees it.
    pub source_ip: Option<IpAddr>,
    /// `--console`: check the security groups for the EC2 console's
    /// browser-based client (its prefix list) instead of for this machine.
    pub console: bool,
}

/// The clients and the caller's address, set up once for every run of the
/// checks (`--fix` runs them again after its changes).
pub struct Doctor {
    pub clients: Clients,
    source: Option<Source>,
}

impl Doctor {
    pub async fn new(settings: &AwsSettings, request: &Request) -> anyhow::Result<Doctor> {
        let config = aws::load_config(settings).await?;
        let clients = Clients::new(&config, settings);
        let source = match request.source_ip {
            Some(ip) => Some(Source { ip, given: true }),
            None => local_address_towards_ec2(&clients.scope.region)
                .await
                .map(|ip| Source { ip, given: false }),
        };
        Ok(Doctor { clients, source })
    }

    /// Runs every check for the request and returns what was found.
    pub async fn run(&self, request: &Request) -> Report {
        let mut report = Report {
            target: request.destination.clone(),
            region: self.clients.scope.region.clone(),
            source: self.source.clone(),
            ..Report::default()
        };
        diagnose(&self.clients, request, &mut report).await;
        report
    }
}

/// The checks after `instance`, in the order they are shown.
const AFTER_INSTANCE: [&str; 11] = [
    "path",
    "session-manager",
    "session",
    "security-group",
    "port",
    "metadata",
    "os-user",
    "package",
    "iam",
    "push",
    "host-keys",
];

async fn diagnose(clients: &Clients, request: &Request, report: &mut Report) {
    // 1. The instance, and meanwhile who the caller is.
    let (found, caller) = tokio::join!(
        async {
            ec2::find(clients, &request.target)
                .await
                .and_then(|found| ec2::exactly_one(found, &request.target, &clients.scope))
        },
        iam::whoami(clients)
    );
    if let iam::Caller::Known(identity) = &caller {
        report.caller = Some(identity.principal_arn.clone());
    }
    let instance = match found {
        Ok(instance) => instance,
        Err(err) => {
            report.checks.push(checks::instance_missing(&err));
            for name in AFTER_INSTANCE {
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
    report.checks.push(checks::instance_check(&instance));

    // 2. The path, as connect decides it; the endpoint lookup it may need
    // and Session Manager's view of the instance are asked at once, with
    // the AMI (for the OS user and the package).
    let start = checks::path_start(request, &instance);
    let wants_endpoints = start
        .as_ref()
        .is_ok_and(|s| checks::wants_endpoints(s, request.port));
    let (endpoints, agent, image) = tokio::join!(
        async {
            if wants_endpoints {
                checks::find_endpoints(clients, request, &instance).await
            } else {
                checks::Endpoints::NotAsked
            }
        },
        session::ask(clients, &instance),
        async {
            match instance.image_id.as_deref() {
                Some(id) => osuser::describe_image(clients, id)
                    .await
                    .map_err(|e| checks::failure_of(&e).message),
                None => Ok(None),
            }
        }
    );
    let (route, path_check) = match start {
        Ok(start) => checks::path_verdict(request, &instance, start, &endpoints, &agent),
        Err(check) => (None, check),
    };
    report.route = route.clone();
    report.checks.push(path_check);
    let through_ssm = route == Some(Route::SessionManager);

    // 3. Session Manager: the agent, and (its path) a real session; 4. the
    // security groups, fetched meanwhile unless Session Manager is the path.
    report.checks.push(session::agent_check(
        &agent,
        through_ssm,
        &instance.id,
        &clients.scope.region,
    ));
    let (session, groups) = tokio::join!(
        session::session_check(clients, &instance, request.port, through_ssm, &agent),
        async {
            if through_ssm && !request.console {
                None
            } else {
                Some(tokio::join!(
                    diag::security_groups(clients, &instance.security_group_ids),
                    diag::console_prefix_list(clients)
                ))
            }
        }
    );
    report.checks.push(session);
    report.checks.push(match groups {
        None => checks::no_inbound_rule_needed(request.port),
        Some((Ok(groups), console_pl)) if request.console => {
            checks::console_group_check(&groups, console_pl, &clients.scope.region)
        }
        Some((Ok(groups), console_pl)) => checks::security_group_check(
            &groups,
            request.port,
            route.as_ref(),
            report.source.as_ref(),
            console_pl.ok().flatten().as_deref(),
        ),
        Some((Err(err), _)) => {
            Check::from_failure("security-group", Status::Warn, &checks::failure_of(&err))
        }
    });

    // 5. Does the port answer (direct path only)?
    report.checks.push(match (&route, running) {
        (Some(Route::Direct(ip)), true) => checks::port_check(*ip, request.port).await,
        (Some(Route::Endpoint(_)), _) => Check::new(
            "port",
            Status::Skip,
            "through an endpoint: eic-connect tunnel would test it",
        ),
        (Some(Route::SessionManager), _) => Check::new(
            "port",
            Status::Skip,
            format!(
                "through Session Manager: its agent connects to port {} on the instance itself",
                request.port
            ),
        ),
        _ => Check::new("port", Status::Skip, "no address to try"),
    });

    // 6. Instance metadata.
    report.checks.push(checks::metadata_check(&instance));

    // 7. The OS user, and the package the AMI ships.
    let (user, user_check) = checks::os_user_check(request, &instance, &image);
    report.os_user = Some(user.clone());
    report.checks.push(user_check);
    report
        .checks
        .push(package::package_check(instance.image_id.as_deref(), &image));

    // 8. IAM's simulation, 9. a real push, and 10. the console's host keys,
    // at once.
    let sims = match &caller {
        iam::Caller::Known(identity) => iam::plan(
            identity,
            &clients.scope.region,
            &instance,
            &user,
            route.as_ref(),
            request.port,
            request.max_tunnel_duration,
        ),
        _ => Vec::new(),
    };
    let (answers, push, keys) = tokio::join!(
        async {
            match &caller {
                iam::Caller::Known(identity) => {
                    futures_util::future::join_all(
                        sims.iter().map(|sim| iam::simulate(clients, identity, sim)),
                    )
                    .await
                }
                _ => Vec::new(),
            }
        },
        checks::push_check(clients, &instance, &user, running),
        checks::host_keys_check(clients, &instance)
    );
    report
        .checks
        .push(iam::verdict(&caller, &sims, &answers, &instance.id, &user));
    report.checks.push(push);
    report.checks.push(keys);
}

/// Where the EC2 API is: the host and port of `AWS_ENDPOINT_URL_EC2` (or
/// `AWS_ENDPOINT_URL`) when set, else the region's public endpoint.
fn ec2_endpoint(endpoint_url: Option<&str>, region: &str) -> (String, u16) {
    match endpoint_url {
        Some(url) => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
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
    }
}

/// The local address the kernel would use to reach the EC2 API endpoint
/// (a UDP "connect" sends nothing).
async fn local_address_towards_ec2(region: &str) -> Option<IpAddr> {
    let url = std::env::var("AWS_ENDPOINT_URL_EC2")
        .ok()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|u| !u.is_empty());
    let (host, port) = ec2_endpoint(url.as_deref(), region);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ec2_endpoint_from_the_environment_or_the_region() {
        let at = |url: Option<&str>, region: &str| ec2_endpoint(url, region);
        assert_eq!(
            at(None, "us-east-1"),
            ("ec2.us-east-1.amazonaws.com".into(), 443)
        );
        assert_eq!(
            at(None, "cn-north-1"),
            ("ec2.cn-north-1.amazonaws.com.cn".into(), 443)
        );
        assert_eq!(
            at(Some("http://127.0.0.1:4566"), "us-east-1"),
            ("127.0.0.1".into(), 4566)
        );
        assert_eq!(
            at(Some("https://ec2.example.com/path"), "us-east-1"),
            ("ec2.example.com".into(), 443)
        );
        assert_eq!(
            at(Some("http://[::1]:4566/"), "us-east-1"),
            ("::1".into(), 4566)
        );
        assert_eq!(
            at(Some("localhost:bad"), "us-east-1"),
            ("localhost".into(), 443)
        );
    }
}
