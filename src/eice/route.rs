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
    /// Straight to a public address; through an endpoint when the instance has none
    #[default]
    Auto,
    /// Straight to the chosen address
    Direct,
    /// Through an EC2 Instance Connect Endpoint to the private address
    Eice,
}

impl ConnectVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectVia::Auto => "auto",
            ConnectVia::Direct => "direct",
            ConnectVia::Eice => "eice",
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

/// The tunnel to `instance`'s private IPv4 through `endpoint`.
pub fn target_for(
    instance: &InstanceInfo,
    endpoint: &Endpoint,
    fips: bool,
    remote_port: u16,
    max_duration: Option<u32>,
) -> anyhow::Result<TunnelTarget> {
    let Some(private_ip) = instance.addresses.private_ip else {
        return fail(Failure::new(format!(
            "instance {} has no private IPv4 address for the endpoint to reach",
            instance.id
        )));
    };
    Ok(TunnelTarget {
        endpoint_id: endpoint.id.clone(),
        host: endpoint.host(fips)?,
        remote_port,
        private_ip: IpAddr::V4(private_ip),
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
    /// Through an endpoint if the VPC has one, else directly.
    TunnelIfAvailable,
}

/// `--connect auto` tunnels only to the instance's private IPv4 when that is
/// the address chosen, no address was asked for explicitly
/// (`--public/--private/--ipv6`), and ssh's port is one an endpoint reaches.
pub fn decide(
    via: ConnectVia,
    explicit_address: bool,
    chosen: IpAddr,
    instance: &InstanceInfo,
    ssh_port: Option<u16>,
) -> Decision {
    match via {
        ConnectVia::Direct => Decision::Direct,
        ConnectVia::Eice => Decision::Tunnel,
        ConnectVia::Auto => {
            let private = instance.addresses.private_ip.map(IpAddr::V4) == Some(chosen);
            let port_ok = ssh_port.is_none_or(|p| eice::ALLOWED_PORTS.contains(&p));
            if private && !explicit_address && port_ok {
                Decision::TunnelIfAvailable
            } else {
                Decision::Direct
            }
        }
    }
}

/// A tunnel that `connect` has set up for ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Endpoint,
    pub target: TunnelTarget,
}

impl Route {
    /// The host ssh is given (it never connects there itself).
    pub fn ssh_host(&self) -> String {
        self.target.private_ip.to_string()
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

/// Finds the endpoint for a connection `decide` wants tunnelled, with
/// lookups shared through `cache` if given. `Ok(None)` means connect
/// directly (auto, and no endpoint in the VPC).
pub async fn plan(
    decision: Decision,
    path: &PathSettings,
    config: &SdkConfig,
    clients: &Clients,
    instance: &InstanceInfo,
    ssh_port: Option<u16>,
    cache: Option<&EndpointCache>,
) -> anyhow::Result<Option<Route>> {
    if decision == Decision::Direct {
        return Ok(None);
    }
    let remote_port = ssh_port.unwrap_or(22);
    if decision == Decision::Tunnel {
        check_remote_port(remote_port)?;
    }
    let started = Instant::now();
    let found = match cache {
        Some(cache) => cache.find(clients, path.eice_id.as_deref(), instance).await,
        None => eice::find(clients, path.eice_id.as_deref(), instance).await,
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "looked up endpoints"
    );
    let endpoint = match (found, decision) {
        (Ok(Some(endpoint)), _) => endpoint,
        (Ok(None), Decision::TunnelIfAvailable) => {
            tracing::debug!("no endpoint in the instance's VPC: connecting directly");
            return Ok(None);
        }
        (Ok(None), _) => return fail(eice::no_endpoint(instance, &clients.scope)),
        // The lookup only improves an automatic choice: when it fails, the
        // plain path is still there (VPN, Direct Connect, inside the VPC).
        (Err(err), Decision::TunnelIfAvailable) if path.eice_id.is_none() => {
            if crate::error::is_kind(&err, FailureKind::NotAuthorized) {
                // An identity without this permission is a normal setup.
                tracing::debug!(error = %err, "cannot look up endpoints: connecting directly");
            } else {
                let shown = crate::error::render(&err);
                let first = shown.lines().next().unwrap_or_default();
                eprintln!(
                    "eic-connect: warning: {}; connecting to {} directly",
                    first.trim_start_matches("eic-connect: error: "),
                    instance.id
                );
            }
            return Ok(None);
        }
        (Err(err), _) => return Err(err),
    };
    let target = target_for(
        instance,
        &endpoint,
        eice::use_fips(config),
        remote_port,
        path.max_tunnel_duration,
    )?;
    tracing::debug!(endpoint = %endpoint.id, host = %target.host, "tunnelling through the endpoint");
    Ok(Some(Route { endpoint, target }))
}

/// The `-o ProxyCommand=…` option that makes ssh reach the instance through
/// `eic-connect tunnel` (with every lookup already done). ssh runs it with
/// `sh -c` after expanding `%` tokens, so every word is shell-quoted and
/// every literal `%` doubled; `%p` is ssh's port.
pub fn proxy_command(
    program: &OsStr,
    scope: &Scope,
    aws: &AwsSettings,
    target: &TunnelTarget,
    instance_id: &str,
    master: bool,
) -> OsString {
    proxy_command_words(
        program,
        scope,
        aws,
        master,
        &target.endpoint_id,
        &target.host,
        &target.private_ip.to_string(),
        target.max_duration,
        instance_id,
    )
}

#[allow(clippy::too_many_arguments)]
fn proxy_command_words(
    program: &OsStr,
    scope: &Scope,
    aws: &AwsSettings,
    master: bool,
    endpoint_id: &str,
    host: &str,
    private_ip: &str,
    max_duration: Option<u32>,
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
    let decision = decide(request.path.via, explicit, address, instance, port);
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
    let option = proxy_command(
        exe.as_os_str(),
        scope,
        aws,
        &route.target,
        instance_id,
        master,
    );
    Ok((route.ssh_host(), vec!["-o".into(), option]))
}

/// `--dry-run`: appends the endpoint lookup to `out` if this connection may
/// tunnel, and returns eic-connect's ssh options for the path (with the ProxyCommand for
/// `--connect eice`; as a comment line in `out` for `auto`).
pub fn dry_run_route(
    request: &Request<'_>,
    scope: &Scope,
    aws: &AwsSettings,
    instance_ref: &str,
    out: &mut String,
) -> Vec<OsString> {
    let via = request.path.via;
    let explicit = request.address != AddressChoice::Auto;
    let mut options = Vec::new();
    let Some(lookup) = dry_run_lookup(via, request.path, explicit) else {
        return options;
    };
    out.push_str(&lookup);
    out.push('\n');
    let program = std::env::current_exe().unwrap_or_else(|_| "eic-connect".into());
    let proxy = proxy_command_words(
        program.as_os_str(),
        scope,
        aws,
        false,
        request.path.eice_id.as_deref().unwrap_or("<endpoint id>"),
        "<endpoint DNS name>",
        "<instance private IPv4>",
        request.path.max_tunnel_duration,
        instance_ref,
    );
    if via == ConnectVia::Eice {
        options.push("-o".into());
        options.push(proxy);
    } else {
        out.push_str("# and if so, ssh also gets: -o ");
        out.push_str(&String::from_utf8_lossy(proxy.as_bytes()));
        out.push('\n');
    }
    options
}

/// `--dry-run` lines for the endpoint lookup, if this connection might
/// tunnel: (the API call, whether it is conditional).
pub fn dry_run_lookup(
    via: ConnectVia,
    path: &PathSettings,
    explicit_address: bool,
) -> Option<String> {
    let conditional = match via {
        ConnectVia::Direct => return None,
        ConnectVia::Auto if explicit_address => return None,
        ConnectVia::Auto => true,
        ConnectVia::Eice => false,
    };
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
    let call = format!(
        "DescribeInstanceConnectEndpoints{ids} Filter {}",
        filters.join(" ")
    );
    Some(if conditional {
        format!("# if the instance's chosen address is its private IPv4:\n{call}")
    } else {
        call
    })
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
    fn auto_tunnels_only_to_a_private_address_it_chose() {
        let private: IpAddr = "10.0.1.5".parse().unwrap();
        let public: IpAddr = "3.1.2.3".parse().unwrap();
        let i = instance(false);
        assert_eq!(
            decide(ConnectVia::Auto, false, private, &i, None),
            Decision::TunnelIfAvailable
        );
        assert_eq!(
            decide(ConnectVia::Auto, false, private, &i, Some(22)),
            Decision::TunnelIfAvailable
        );
        assert_eq!(
            decide(ConnectVia::Auto, true, private, &i, None),
            Decision::Direct,
            "--private"
        );
        assert_eq!(
            decide(ConnectVia::Auto, false, private, &i, Some(2222)),
            Decision::Direct
        );
        let i = instance(true);
        assert_eq!(
            decide(ConnectVia::Auto, false, public, &i, None),
            Decision::Direct
        );
        assert_eq!(
            decide(ConnectVia::Eice, false, public, &i, None),
            Decision::Tunnel
        );
        assert_eq!(
            decide(ConnectVia::Direct, false, private, &i, None),
            Decision::Direct
        );
        let v6: IpAddr = "2600::1".parse().unwrap();
        assert_eq!(
            decide(ConnectVia::Auto, false, v6, &i, None),
            Decision::Direct
        );
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
        let option = proxy_command(
            OsStr::new("/opt/eic connect/bin/eic-connect"),
            &scope,
            &aws,
            &target,
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
    fn dry_run_shows_the_lookup_when_it_may_happen() {
        let path = PathSettings {
            via: ConnectVia::Auto,
            eice_id: None,
            max_tunnel_duration: None,
        };
        assert_eq!(dry_run_lookup(ConnectVia::Direct, &path, false), None);
        assert_eq!(dry_run_lookup(ConnectVia::Auto, &path, true), None);
        let auto = dry_run_lookup(ConnectVia::Auto, &path, false).unwrap();
        assert!(auto.starts_with("# if"), "{auto}");
        assert!(auto.ends_with(
            "DescribeInstanceConnectEndpoints Filter state=create-complete,update-in-progress,update-failed,update-complete vpc-id=<instance VpcId>"
        ), "{auto}");
        let path = PathSettings {
            eice_id: Some("eice-0123456789abcdef0".into()),
            ..path
        };
        let eice = dry_run_lookup(ConnectVia::Eice, &path, false).unwrap();
        assert!(eice.starts_with(
            "DescribeInstanceConnectEndpoints InstanceConnectEndpointId.1=eice-0123456789abcdef0 Filter state="
        ), "{eice}");
    }
}
