//! Which way to reach an instance's port: straight to an address, or through
//! an EC2 Instance Connect Endpoint, and the ProxyCommand that makes ssh take
//! the tunnel. Shared by connect, run and the ssh-config proxy.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use aws_config::SdkConfig;

use super::endpoint::{self as eice, Endpoint, TunnelTarget};
use crate::aws::ec2::InstanceInfo;
use crate::aws::{AwsSettings, Clients, Scope};
use crate::error::{Failure, FailureKind, fail};
use crate::target::{AddressChoice, Target};

/// How to reach the instance's port 22.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectVia {
    /// Straight to a public (or routable IPv6) address; else through an endpoint, else
    /// Session Manager, else straight
    #[default]
    Auto,
    /// Straight to the chosen address
    Direct,
    /// Through an EC2 Instance Connect Endpoint to the private address
    Eice,
    /// Through a Session Manager session (the SSM agent on the instance)
    Ssm,
}

impl ConnectVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectVia::Auto => "auto",
            ConnectVia::Direct => "direct",
            ConnectVia::Eice => "eice",
            ConnectVia::Ssm => "ssm",
        }
    }
}

/// The network-path settings, after every layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathSettings {
    pub via: ConnectVia,
    pub eice_id: Option<String>,
    pub max_tunnel_duration: Option<u32>,
}

/// What a route decision needs to know about one connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub path: &'a PathSettings,
    pub address: AddressChoice,
    pub target: &'a Target,
    /// ssh's port as the user's options set it.
    pub ssh_port: Option<u16>,
}

/// Endpoints reach ports 22 and 3389 only: anything else is a usage error.
pub fn check_remote_port(port: u16) -> Result<(), Failure> {
    if eice::ALLOWED_PORTS.contains(&port) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "EC2 Instance Connect Endpoints only reach ports 22 and 3389, not {port}"
        ))
        .hint(
            "use --remote-port 22 (SSH) or 3389 (RDP); for other ports, forward them over ssh (-L)",
        ))
    }
}

/// The tunnel to `instance` through `endpoint`: to its private IPv4, or to
/// its IPv6 address when it has no IPv4 one the endpoint reaches and the
/// endpoint is IPv6 or dual-stack.
pub fn target_for(
    instance: &InstanceInfo,
    endpoint: &Endpoint,
    fips: bool,
    remote_port: u16,
    max_duration: Option<u32>,
) -> anyhow::Result<TunnelTarget> {
    let addresses = &instance.addresses;
    let private_ip = match (addresses.private_ip, addresses.ipv6.first()) {
        (Some(v4), _) if endpoint.reaches_ipv4() => IpAddr::V4(v4),
        (_, Some(v6)) if endpoint.reaches_ipv6() => IpAddr::V6(*v6),
        (None, None) => {
            return fail(Failure::new(format!(
                "instance {} has no private address for the endpoint to reach",
                instance.id
            )));
        }
        (_, Some(_)) => {
            let subnet = instance.subnet_id.as_deref().unwrap_or("SUBNET_ID");
            return fail(
                Failure::new(format!(
                    "EC2 Instance Connect Endpoint {} reaches IPv4 addresses only, and instance {} has only an IPv6 address",
                    endpoint.id, instance.id
                ))
                .hint(format!(
                    "create a dual-stack endpoint: aws ec2 create-instance-connect-endpoint --subnet-id {subnet} --ip-address-type dualstack"
                ))
                .hint("or connect over IPv6 directly (--ipv6) or through Session Manager (--connect ssm)"),
            );
        }
        (Some(_), None) => {
            return fail(
                Failure::new(format!(
                    "EC2 Instance Connect Endpoint {} reaches IPv6 addresses only, and instance {} has no IPv6 address",
                    endpoint.id, instance.id
                ))
                .hint("use an IPv4 or dual-stack endpoint (--eice-id), or connect through Session Manager (--connect ssm)"),
            );
        }
    };
    Ok(TunnelTarget {
        endpoint_id: endpoint.id.clone(),
        host: endpoint.host(fips)?,
        remote_port,
        private_ip,
        max_duration,
    })
}

/// The region and profile calls go to, for messages and the tunnel's
/// ProxyCommand.
pub fn scope_of(config: &SdkConfig, settings: &AwsSettings) -> Scope {
    Scope {
        region: config.region().map(|r| r.to_string()).unwrap_or_default(),
        profile: settings
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty())),
    }
}

/// How `connect` reaches the instance, as far as the settings tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Direct,
    /// Through an endpoint; none is an error.
    Tunnel,
    /// Through Session Manager.
    SessionManager,
    /// The chosen address may not be reachable from here: through an
    /// endpoint if the VPC has one, else through Session Manager if the
    /// instance is managed and online, else directly (a VPN, Direct Connect,
    /// or this machine inside the VPC).
    Fallback,
}

/// `--connect auto` goes straight to an address it can expect to reach: a
/// public IPv4, an address given explicitly (`--public/--private/--ipv6`),
/// or an IPv6 address this machine has a route to. A private IPv4, or an
/// IPv6 address with no route from here, takes the fallback chain (which
/// skips the endpoint for ports other than 22 and 3389).
pub fn decide(
    via: ConnectVia,
    explicit_address: bool,
    chosen: IpAddr,
    instance: &InstanceInfo,
) -> Decision {
    decide_with(via, explicit_address, chosen, instance, routable(chosen))
}

/// [`decide`] with whether this machine has a route to `chosen` given.
pub fn decide_with(
    via: ConnectVia,
    explicit_address: bool,
    chosen: IpAddr,
    instance: &InstanceInfo,
    routable: bool,
) -> Decision {
    match via {
        ConnectVia::Direct => Decision::Direct,
        ConnectVia::Eice => Decision::Tunnel,
        ConnectVia::Ssm => Decision::SessionManager,
        ConnectVia::Auto => {
            let private = instance.addresses.private_ip.map(IpAddr::V4) == Some(chosen);
            let unrouted_v6 = chosen.is_ipv6() && !routable;
            if explicit_address || !(private || unrouted_v6) {
                Decision::Direct
            } else {
                Decision::Fallback
            }
        }
    }
}

/// Whether this machine has a route to `address`: connecting a UDP socket
/// asks the kernel's routing table and sends nothing. An IPv4 address is
/// taken as routable (private ones are judged by [`decide`] itself).
pub fn routable(address: IpAddr) -> bool {
    if address.is_ipv4() {
        return true;
    }
    let Ok(socket) = std::net::UdpSocket::bind(("::", 0)) else {
        return false;
    };
    socket.connect((address, 9)).is_ok()
}

/// How a connection that is not direct reaches the instance's port.
// One per connection: the size difference between the variants is nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A tunnel through an EC2 Instance Connect Endpoint.
    Endpoint {
        endpoint: Endpoint,
        target: TunnelTarget,
    },
    /// A Session Manager session to the port.
    SessionManager { instance_id: String, port: u16 },
}

impl Route {
    /// The host ssh is given (it never connects there itself): the private
    /// address for a tunnel, the instance id for Session Manager.
    pub fn ssh_host(&self) -> String {
        match self {
            Route::Endpoint { target, .. } => target.private_ip.to_string(),
            Route::SessionManager { instance_id, .. } => instance_id.clone(),
        }
    }

    /// `eice` or `ssm`, for messages and socket names.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Endpoint { .. } => "eice",
            Route::SessionManager { .. } => "ssm",
        }
    }
}

/// Endpoint lookups shared by many connections (`run`): one
/// DescribeInstanceConnectEndpoints per VPC and subnet, however many
/// instances there are and however many ask at once.
#[derive(Default)]
pub struct EndpointCache {
    cells: std::sync::Mutex<std::collections::HashMap<VpcAndSubnet, EndpointCell>>,
}

type VpcAndSubnet = (String, Option<String>);
/// One lookup's answer, filled once by whichever connection asks first.
type EndpointCell = std::sync::Arc<tokio::sync::OnceCell<Option<Endpoint>>>;

impl EndpointCache {
    async fn find(
        &self,
        clients: &Clients,
        eice_id: Option<&str>,
        instance: &InstanceInfo,
    ) -> anyhow::Result<Option<Endpoint>> {
        let Some(vpc) = instance.vpc_id.clone() else {
            return eice::find(clients, eice_id, instance).await;
        };
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells
                .entry((vpc, instance.subnet_id.clone()))
                .or_default()
                .clone()
        };
        // A failed lookup is not kept: the next instance asks again.
        cell.get_or_try_init(|| eice::find(clients, eice_id, instance))
            .await
            .cloned()
    }
}

/// The route for a connection `decide` did not send directly, with endpoint
/// lookups shared through `cache` if given. `Ok(None)` means connect
/// directly (the fallback chain found neither an endpoint nor an online
/// managed instance).
pub async fn plan(
    decision: Decision,
    path: &PathSettings,
    config: &SdkConfig,
    clients: &Clients,
    instance: &InstanceInfo,
    ssh_port: Option<u16>,
    cache: Option<&EndpointCache>,
) -> anyhow::Result<Option<Route>> {
    let port = ssh_port.unwrap_or(22);
    match decision {
        Decision::Direct => return Ok(None),
        Decision::SessionManager => return Ok(Some(session_manager(instance, port))),
        Decision::Tunnel => check_remote_port(port)?,
        Decision::Fallback => {}
    }
    let fallback = decision == Decision::Fallback;
    let started = Instant::now();
    let endpoint_lookup = async {
        if fallback && !eice::ALLOWED_PORTS.contains(&port) {
            tracing::debug!("an endpoint cannot carry port {port}: not looking for one");
            return Ok(None);
        }
        let found = match cache {
            Some(cache) => cache.find(clients, path.eice_id.as_deref(), instance).await,
            None => eice::find(clients, path.eice_id.as_deref(), instance).await,
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "looked up endpoints"
        );
        found
    };
    // In the fallback chain, whether Session Manager manages the instance
    // is asked at the same time: no round trip is added when there is no
    // endpoint.
    let mut managed_lookup = std::pin::pin!(async {
        if fallback {
            Some(crate::ssm::api::managed(clients, &instance.id).await)
        } else {
            None
        }
    });
    let mut endpoint_lookup = std::pin::pin!(endpoint_lookup);
    let mut managed = None;
    let found = loop {
        tokio::select! {
            found = &mut endpoint_lookup => break found,
            m = &mut managed_lookup, if managed.is_none() => managed = Some(m),
        }
    };
    let mut warnings = Vec::new();
    let endpoint = match (found, decision) {
        (Ok(Some(endpoint)), _) => Some(endpoint),
        (Ok(None), Decision::Fallback) => {
            tracing::debug!("no usable endpoint for the instance's VPC");
            None
        }
        (Ok(None), _) => return fail(eice::no_endpoint(instance, &clients.scope)),
        // The lookup only improves an automatic choice: when it fails, the
        // other paths are still there.
        (Err(err), Decision::Fallback) if path.eice_id.is_none() => {
            note_failed_lookup(&err, "look up endpoints", &mut warnings);
            None
        }
        (Err(err), _) => return Err(err),
    };
    if let Some(endpoint) = endpoint {
        match target_for(
            instance,
            &endpoint,
            eice::use_fips(config),
            port,
            path.max_tunnel_duration,
        ) {
            Ok(target) => {
                tracing::debug!(endpoint = %endpoint.id, host = %target.host, "tunnelling through the endpoint");
                return Ok(Some(Route::Endpoint { endpoint, target }));
            }
            Err(err) if fallback => {
                tracing::debug!(error = %format!("{err:#}"), "the endpoint cannot reach the instance");
            }
            Err(err) => return Err(err),
        }
    }
    let managed = match managed {
        Some(m) => m,
        None => managed_lookup.await,
    };
    match managed {
        Some(Ok(Some(m))) if m.online() => {
            tracing::debug!(
                agent_version = m.agent_version.as_deref().unwrap_or("unknown"),
                "Session Manager manages the instance and its agent is online: connecting through Session Manager"
            );
            warn_failed_lookups(&warnings, &instance.id, "through Session Manager");
            return Ok(Some(session_manager(instance, port)));
        }
        Some(Ok(Some(m))) => tracing::debug!(
            ping_status = %m.ping_status,
            "Session Manager manages the instance, but its agent is not online"
        ),
        Some(Ok(None)) => tracing::debug!("Session Manager does not manage the instance"),
        Some(Err(err)) => note_failed_lookup(
            &err,
            "ask Session Manager about the instance",
            &mut warnings,
        ),
        None => {}
    }
    tracing::debug!("connecting directly to the chosen address");
    warn_failed_lookups(&warnings, &instance.id, "directly");
    Ok(None)
}

fn session_manager(instance: &InstanceInfo, port: u16) -> Route {
    Route::SessionManager {
        instance_id: instance.id.clone(),
        port,
    }
}

/// A lookup of the fallback chain failed: a missing permission is a normal
/// setup (said with -v); anything else becomes a warning once the way is
/// chosen ([`warn_failed_lookups`]), and the chain goes on.
fn note_failed_lookup(err: &anyhow::Error, what: &str, warnings: &mut Vec<String>) {
    if crate::error::is_kind(err, FailureKind::NotAuthorized) {
        tracing::debug!(error = %err, "cannot {what}: going on without");
    } else {
        let shown = crate::error::render(err);
        let first = shown.lines().next().unwrap_or_default();
        warnings.push(first.trim_start_matches("eic-connect: error: ").to_owned());
    }
}

/// The failed lookups' warnings, each saying which way was taken instead.
fn warn_failed_lookups(warnings: &[String], instance_id: &str, way: &str) {
    for warning in warnings {
        eprintln!("eic-connect: warning: {warning}; connecting to {instance_id} {way}");
    }
}

/// The `-o ProxyCommand=…` option that makes ssh reach the instance through
/// `eic-connect tunnel` (with every lookup already done). ssh runs it with
/// `sh -c` after expanding `%` tokens, so every word is shell-quoted and
/// every literal `%` doubled; `%p` is ssh's port.
pub fn proxy_command(
    program: &OsStr,
    scope: &Scope,
    aws: &AwsSettings,
    route: &Route,
    instance_id: &str,
    master: bool,
) -> OsString {
    let private_ip;
    let way = match route {
        Route::Endpoint { target, .. } => {
            private_ip = target.private_ip.to_string();
            Way::Endpoint {
                endpoint_id: &target.endpoint_id,
                host: &target.host,
                private_ip: &private_ip,
                max_duration: target.max_duration,
            }
        }
        Route::SessionManager { .. } => Way::SessionManager,
    };
    proxy_command_words(program, scope, aws, master, &way, instance_id)
}

/// The tunnel's own words for the way it goes.
enum Way<'a> {
    Endpoint {
        endpoint_id: &'a str,
        host: &'a str,
        private_ip: &'a str,
        max_duration: Option<u32>,
    },
    SessionManager,
}

fn proxy_command_words(
    program: &OsStr,
    scope: &Scope,
    aws: &AwsSettings,
    master: bool,
    way: &Way<'_>,
    instance_id: &str,
) -> OsString {
    let mut words: Vec<OsString> = vec![program.to_owned(), "tunnel".into()];
    let mut push = |w: &str| words.push(w.into());
    if master {
        push("--master");
    }
    push("--region");
    push(&scope.region);
    if let Some(profile) = &scope.profile {
        push("--profile");
        push(profile);
    }
    // The tunnel process makes API calls of its own (credentials): it
    // waits as long as this one was told to.
    let timeout = aws.attempt_timeout.as_secs_f64();
    if timeout != crate::aws::DEFAULT_API_TIMEOUT {
        push("--api-timeout");
        push(&timeout.to_string());
    }
    match way {
        Way::Endpoint {
            endpoint_id,
            host,
            private_ip,
            max_duration,
        } => {
            push("--eice-id");
            push(endpoint_id);
            push("--eice-dns-name");
            push(host);
            push("--private-ip");
            push(private_ip);
            if let Some(max) = max_duration {
                push("--max-tunnel-duration");
                push(&max.to_string());
            }
        }
        Way::SessionManager => {
            push("--connect");
            push("ssm");
        }
    }
    push("--remote-port");
    let mut line: Vec<u8> = Vec::new();
    for word in &words {
        let quoted = crate::ssh::shell_quote(word.as_bytes());
        for &b in &quoted {
            if b == b'%' {
                line.push(b'%');
            }
            line.push(b);
        }
        line.push(b' ');
    }
    line.extend_from_slice(b"%p -- ");
    for &b in &crate::ssh::shell_quote(instance_id.as_bytes()) {
        if b == b'%' {
            line.push(b'%');
        }
        line.push(b);
    }
    let mut option = OsString::from("ProxyCommand=");
    option.push(OsStr::from_bytes(&line));
    option
}

/// For `connect`: the route to take once the instance and address are known.
pub async fn route_for_connect(
    request: &Request<'_>,
    config: &SdkConfig,
    clients: &Clients,
    instance: &InstanceInfo,
    address: IpAddr,
) -> anyhow::Result<Option<Route>> {
    let explicit = request.address != AddressChoice::Auto;
    let port = request.ssh_port;
    let decision = decide(request.path.via, explicit, address, instance);
    plan(
        decision,
        request.path,
        config,
        clients,
        instance,
        port,
        None,
    )
    .await
}

/// [`route_for_connect`] as soon as `found` names the instance (`Ok(None)`
/// if it never does: the lookup's own error is reported then).
pub async fn route_once_found(
    request: &Request<'_>,
    config: &SdkConfig,
    clients: &Clients,
    found: tokio::sync::oneshot::Receiver<InstanceInfo>,
) -> anyhow::Result<Option<Route>> {
    let Ok(instance) = found.await else {
        return Ok(None);
    };
    let Ok(address) =
        crate::target::choose_address(&instance.addresses, request.address, request.target)
    else {
        return Ok(None);
    };
    route_for_connect(request, config, clients, &instance, address).await
}

/// Where ssh connects and eic-connect's options for the way there: the
/// address itself, or (tunnelling) the private address with a ProxyCommand
/// running `eic-connect tunnel`.
pub fn ssh_target(
    route: Option<&Route>,
    address: IpAddr,
    scope: &Scope,
    aws: &AwsSettings,
    instance_id: &str,
    master: bool,
) -> anyhow::Result<(String, Vec<OsString>)> {
    let Some(route) = route else {
        return Ok((address.to_string(), Vec::new()));
    };
    let exe = std::env::current_exe().map_err(|err| {
        anyhow::anyhow!("cannot locate eic-connect for ssh's ProxyCommand: {err}")
    })?;
    let option = proxy_command(exe.as_os_str(), scope, aws, route, instance_id, master);
    Ok((route.ssh_host(), vec!["-o".into(), option]))
}

/// `--dry-run`: appends the lookups of the way there to `out`, and returns
/// eic-connect's ssh options for the path (the ProxyCommand for `--connect
/// eice|ssm`; as comment lines in `out` for `auto`, whose choice depends on
/// the answers).
pub fn dry_run_route(
    request: &Request<'_>,
    scope: &Scope,
    aws: &AwsSettings,
    instance_ref: &str,
    out: &mut String,
) -> Vec<OsString> {
    let via = request.path.via;
    let explicit = request.address != AddressChoice::Auto;
    let program = std::env::current_exe().unwrap_or_else(|_| "eic-connect".into());
    let endpoint_id = request.path.eice_id.as_deref().unwrap_or("<endpoint id>");
    let endpoint = Way::Endpoint {
        endpoint_id,
        host: "<endpoint DNS name>",
        private_ip: "<instance private IP>",
        max_duration: request.path.max_tunnel_duration,
    };
    let words = |way: &Way<'_>| {
        proxy_command_words(program.as_os_str(), scope, aws, false, way, instance_ref)
    };
    let start_session = format!(
        "# by the ProxyCommand: StartSession Target={instance_ref} DocumentName={} Parameters.portNumber={}",
        crate::ssm::api::SSH_DOCUMENT,
        request.ssh_port.unwrap_or(22)
    );
    match via {
        ConnectVia::Direct => Vec::new(),
        ConnectVia::Auto if explicit => Vec::new(),
        ConnectVia::Eice => {
            out.push_str(&endpoint_lookup(request.path));
            out.push('\n');
            vec!["-o".into(), words(&endpoint)]
        }
        ConnectVia::Ssm => {
            out.push_str(&start_session);
            out.push('\n');
            vec!["-o".into(), words(&Way::SessionManager)]
        }
        ConnectVia::Auto => {
            out.push_str(
                "# if the chosen address is the instance's private IPv4, or an IPv6 address this machine has no route to,\n\
                 # the fallback chain (both asked at once):\n",
            );
            out.push_str(&endpoint_lookup(request.path));
            out.push('\n');
            out.push_str(&format!(
                "DescribeInstanceInformation Filter InstanceIds={instance_ref}\n"
            ));
            let show = |out: &mut String, when: &str, way: &Way<'_>| {
                out.push_str(&format!("# {when}, ssh also gets: -o "));
                out.push_str(&String::from_utf8_lossy(words(way).as_bytes()));
                out.push('\n');
            };
            show(out, "with an endpoint", &endpoint);
            show(
                out,
                "else, if Session Manager manages the instance and its agent is online",
                &Way::SessionManager,
            );
            out.push_str(&start_session);
            out.push_str("\n# else ssh connects to the address directly\n");
            Vec::new()
        }
    }
}

/// The endpoint lookup `--dry-run` shows.
pub fn endpoint_lookup(path: &PathSettings) -> String {
    let filters: Vec<String> = eice::filters(path.eice_id.as_deref(), Some("<instance VpcId>"))
        .into_iter()
        .map(|(name, values)| format!("{name}={}", values.join(",")))
        .collect();
    let ids = match &path.eice_id {
        Some(id) => format!(
            " InstanceConnectEndpointId.1={}",
            crate::sanitize::terminal_safe(id)
        ),
        None => String::new(),
    };
    format!(
        "DescribeInstanceConnectEndpoints{ids} Filter {}",
        filters.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Addresses;

    fn instance(public: bool) -> InstanceInfo {
        InstanceInfo {
            id: "i-0123456789abcdef0".into(),
            state: "running".into(),
            addresses: Addresses {
                public_ip: public.then(|| "3.1.2.3".parse().unwrap()),
                private_ip: Some("10.0.1.5".parse().unwrap()),
                ..Default::default()
            },
            vpc_id: Some("vpc-1".into()),
            subnet_id: Some("subnet-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn auto_falls_back_only_for_addresses_it_cannot_expect_to_reach() {
        let private: IpAddr = "10.0.1.5".parse().unwrap();
        let public: IpAddr = "3.1.2.3".parse().unwrap();
        let v6: IpAddr = "2600::1".parse().unwrap();
        let i = instance(false);
        let auto = |explicit, chosen, _port: Option<u16>, routable| {
            decide_with(ConnectVia::Auto, explicit, chosen, &i, routable)
        };
        assert_eq!(auto(false, private, None, true), Decision::Fallback);
        assert_eq!(auto(false, private, Some(22), true), Decision::Fallback);
        assert_eq!(
            auto(false, private, Some(2222), true),
            Decision::Fallback,
            "Session Manager carries any port"
        );
        assert_eq!(
            auto(true, private, None, true),
            Decision::Direct,
            "--private"
        );
        assert_eq!(auto(false, public, None, true), Decision::Direct);
        assert_eq!(
            auto(false, v6, None, true),
            Decision::Direct,
            "a routable IPv6 address"
        );
        assert_eq!(
            auto(false, v6, None, false),
            Decision::Fallback,
            "no IPv6 route from here"
        );
        assert_eq!(auto(true, v6, None, false), Decision::Direct, "--ipv6");
        let i = instance(true);
        for via in [ConnectVia::Direct, ConnectVia::Eice, ConnectVia::Ssm] {
            let d = decide_with(via, false, public, &i, true);
            let want = match via {
                ConnectVia::Direct => Decision::Direct,
                ConnectVia::Eice => Decision::Tunnel,
                _ => Decision::SessionManager,
            };
            assert_eq!(d, want, "{via:?}");
        }
    }

    #[test]
    fn endpoints_reach_the_address_family_they_serve() {
        let endpoint = |kind: Option<&str>| Endpoint {
            id: "eice-0123456789abcdef0".into(),
            dns_name: Some(
                "eice-0123456789abcdef0.ec2-instance-connect-endpoint.us-east-1.amazonaws.com"
                    .into(),
            ),
            ip_address_type: kind.map(str::to_owned),
            ..Endpoint::default()
        };
        let dual = instance(false);
        let mut v6_only = instance(false);
        v6_only.addresses.private_ip = None;
        v6_only.addresses.ipv6 = vec!["2600:1f18::5".parse().unwrap()];
        let mut dual_with_v6 = dual.clone();
        dual_with_v6.addresses.ipv6 = v6_only.addresses.ipv6.clone();
        let ip = |i: &InstanceInfo, kind| {
            target_for(i, &endpoint(kind), false, 22, None).map(|t| t.private_ip.to_string())
        };
        assert_eq!(ip(&dual, None).unwrap(), "10.0.1.5");
        assert_eq!(ip(&dual_with_v6, Some("dualstack")).unwrap(), "10.0.1.5");
        assert_eq!(ip(&dual_with_v6, Some("ipv6")).unwrap(), "2600:1f18::5");
        assert_eq!(ip(&v6_only, Some("dualstack")).unwrap(), "2600:1f18::5");
        assert_eq!(ip(&v6_only, Some("ipv6")).unwrap(), "2600:1f18::5");
        let err = format!("{:#}", ip(&v6_only, Some("ipv4")).unwrap_err());
        assert!(err.contains("reaches IPv4 addresses only"), "{err}");
        let err = crate::error::render(&ip(&v6_only, None).unwrap_err());
        assert!(err.contains("--ip-address-type dualstack"), "{err}");
        assert!(ip(&dual, Some("ipv6")).is_err());
    }

    #[test]
    fn routes_are_judged_by_the_routing_table() {
        assert!(routable("3.1.2.3".parse().unwrap()));
        assert!(routable("::1".parse().unwrap()) || std::net::UdpSocket::bind("[::1]:0").is_err());
    }

    #[test]
    fn remote_ports_are_limited() {
        assert!(check_remote_port(22).is_ok());
        assert!(check_remote_port(3389).is_ok());
        let err = check_remote_port(8080).unwrap_err();
        assert_eq!(err.exit, 2);
    }

    #[test]
    fn proxy_command_quotes_every_word_and_escapes_percent() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: Some("my profile%1".into()),
        };
        let target = TunnelTarget {
            endpoint_id: "eice-0123456789abcdef0".into(),
            host: "eice-0123456789abcdef0.ec2-instance-connect-endpoint.eu-west-1.amazonaws.com"
                .into(),
            remote_port: 22,
            private_ip: "10.0.1.5".parse().unwrap(),
            max_duration: Some(600),
        };
        let aws = AwsSettings {
            attempt_timeout: std::time::Duration::from_secs(25),
            ..AwsSettings::default()
        };
        let route = Route::Endpoint {
            endpoint: Endpoint::default(),
            target,
        };
        let option = proxy_command(
            OsStr::new("/opt/eic connect/bin/eic-connect"),
            &scope,
            &aws,
            &route,
            "i-0123456789abcdef0",
            false,
        );
        assert_eq!(
            option.to_str().unwrap(),
            "ProxyCommand='/opt/eic connect/bin/eic-connect' tunnel --region eu-west-1 \
             --profile 'my profile%%1' --api-timeout 25 --eice-id eice-0123456789abcdef0 \
             --eice-dns-name eice-0123456789abcdef0.ec2-instance-connect-endpoint.eu-west-1.amazonaws.com \
             --private-ip 10.0.1.5 --max-tunnel-duration 600 --remote-port %p -- i-0123456789abcdef0"
        );
    }

    #[test]
    fn session_manager_proxy_command_needs_no_lookup() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: None,
        };
        let route = Route::SessionManager {
            instance_id: "i-0123456789abcdef0".into(),
            port: 22,
        };
        let option = proxy_command(
            OsStr::new("/bin/eic-connect"),
            &scope,
            &AwsSettings::default(),
            &route,
            "i-0123456789abcdef0",
            true,
        );
        assert!(
            option
                .to_str()
                .unwrap()
                .starts_with("ProxyCommand=/bin/eic-connect tunnel --master --region eu-west-1 "),
            "{option:?}"
        );
        assert!(
            option
                .to_str()
                .unwrap()
                .ends_with(" --connect ssm --remote-port %p -- i-0123456789abcdef0"),
            "{option:?}"
        );
        assert_eq!(route.ssh_host(), "i-0123456789abcdef0");
    }

    #[test]
    fn dry_run_shows_each_path() {
        let path = PathSettings {
            via: ConnectVia::Auto,
            eice_id: None,
            max_tunnel_duration: None,
        };
        let target = Target::InstanceId("i-0123456789abcdef0".into());
        let scope = Scope::default();
        let aws = AwsSettings::default();
        let show = |path: &PathSettings, address| {
            let request = Request {
                path,
                address,
                target: &target,
                ssh_port: None,
            };
            let mut out = String::new();
            let options = dry_run_route(&request, &scope, &aws, "i-0123456789abcdef0", &mut out);
            (out, options)
        };
        let (out, options) = show(&path, AddressChoice::Auto);
        assert!(options.is_empty());
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "DescribeInstanceConnectEndpoints Filter state=create-complete,update-in-progress,update-failed,update-complete vpc-id=<instance VpcId>",
                "DescribeInstanceInformation Filter InstanceIds=i-0123456789abcdef0",
            ]
        );
        assert!(
            out.contains("# with an endpoint, ssh also gets: -o ProxyCommand="),
            "{out}"
        );
        assert!(
            out.contains("managed the instance") || out.contains("manages the instance"),
            "{out}"
        );
        assert!(out.contains("--connect ssm --remote-port %p"), "{out}");
        assert!(
            out.ends_with("# else ssh connects to the address directly\n"),
            "{out}"
        );
        let (out, options) = show(&path, AddressChoice::Public);
        assert!(out.is_empty() && options.is_empty());
        let ssm = PathSettings {
            via: ConnectVia::Ssm,
            ..path.clone()
        };
        let (out, options) = show(&ssm, AddressChoice::Auto);
        assert!(out.starts_with("# by the ProxyCommand: StartSession Target=i-0123456789abcdef0 DocumentName=AWS-StartSSHSession"), "{out}");
        assert!(options[1].to_str().unwrap().contains("--connect ssm"));
        let eice = PathSettings {
            via: ConnectVia::Eice,
            eice_id: Some("eice-0123456789abcdef0".into()),
            ..path
        };
        let (out, options) = show(&eice, AddressChoice::Auto);
        assert!(out.starts_with(
            "DescribeInstanceConnectEndpoints InstanceConnectEndpointId.1=eice-0123456789abcdef0 Filter state="
        ), "{out}");
        assert!(
            options[1]
                .to_str()
                .unwrap()
                .contains("--eice-id eice-0123456789abcdef0")
        );
    }
}
