//! `eic-connect tunnel`: a byte stream to an instance's port through an EC2
//! Instance Connect Endpoint — on standard input and output (what ssh's
//! ProxyCommand uses), or for each connection to a loopback port.
//!
//! Also how `connect` decides between a direct connection and a tunnel, and
//! the ProxyCommand it hands ssh for the latter.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::aws::{self, Clients, ec2};
use crate::eice::ConnectVia;
use crate::eice::endpoint::{self as eice, TunnelTarget};
use crate::eice::relay::{Connector, Tunneller, relay};
use crate::eice::route::{check_remote_port, scope_of, target_for};
use crate::error::{Failure, fail};
use crate::settings::Tunnel;
use crate::target::Target;

/// Tunnels one endpoint carries at once; further connections wait.
pub const MAX_CONCURRENT: usize = 20;

pub async fn run(settings: Tunnel) -> anyhow::Result<ExitCode> {
    if settings.master {
        crate::ssh::reclaim_stderr();
    }
    let path = &settings.path;
    if path.via == ConnectVia::Ssm {
        return session_manager(&settings).await;
    }
    check_remote_port(settings.remote_port)?;
    let config = aws::load_config(&settings.aws).await?;
    let target = match &settings.known {
        // eic-connect's own ProxyCommand: everything is known, no lookup.
        Some((dns_name, private_ip)) => {
            let Some(endpoint_id) = path.eice_id.clone() else {
                return fail(Failure::usage("--eice-dns-name needs --eice-id"));
            };
            eice::validate_endpoint_id(&endpoint_id)?;
            if !eice::is_dns_name(dns_name) {
                return fail(Failure::usage(format!(
                    "--eice-dns-name {:?} is not a DNS name",
                    crate::sanitize::terminal_safe(dns_name)
                )));
            }
            TunnelTarget {
                endpoint_id,
                host: dns_name.clone(),
                remote_port: settings.remote_port,
                private_ip: *private_ip,
                max_duration: path.max_tunnel_duration,
            }
        }
        None => {
            let clients = Clients::new(&config, &settings.aws);
            let instance = ec2::resolve_running(&clients, &settings.target).await?;
            if settings.show_console_keys {
                show_console_keys(&clients, &instance.id).await?;
            }
            let endpoint = eice::find(&clients, path.eice_id.as_deref(), &instance)
                .await?
                .ok_or_else(|| eice::no_endpoint(&instance, &clients.scope))?;
            target_for(
                &instance,
                &endpoint,
                eice::use_fips(&config),
                settings.remote_port,
                path.max_tunnel_duration,
            )?
        }
    };
    let tunneller = Tunneller {
        scope: scope_of(&config, &settings.aws),
        config,
        target,
        connector: Connector::from_env(settings.aws.attempt_timeout)?,
    };
    match settings.local_port {
        Some(port) => listen(tunneller, port).await,
        None => {
            let quiet = settings.master.then(|| crate::ssh::QuietWhen::after(1));
            crate::eice::relay::stdio(tunneller, path.max_tunnel_duration, quiet).await
        }
    }
}

/// `--connect ssm`: the bytes travel through a Session Manager session.
/// An instance id needs no lookup (eic-connect's own ProxyCommand); any
/// other target is resolved first.
async fn session_manager(settings: &Tunnel) -> anyhow::Result<ExitCode> {
    if settings.known.is_some() {
        return fail(Failure::usage(
            "--eice-dns-name and --private-ip are for endpoint tunnels, not --connect ssm",
        ));
    }
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let instance_id = match &settings.target {
        Target::InstanceId(id) if !settings.show_console_keys => id.clone(),
        target => {
            let instance = ec2::resolve_running(&clients, target).await?;
            if settings.show_console_keys {
                show_console_keys(&clients, &instance.id).await?;
            }
            instance.id
        }
    };
    let connector = Connector::from_env(settings.aws.attempt_timeout)?;
    let session = |quiet| crate::ssm::Session {
        clients: &clients,
        instance_id: &instance_id,
        port: settings.remote_port,
        connector: &connector,
        quiet,
    };
    match settings.local_port {
        Some(port) => listen_ssm(&session(None), port).await,
        None => {
            let quiet = settings.master.then(|| crate::ssh::QuietWhen::after(1));
            session(quiet).stdio().await
        }
    }
}

/// `--local-port` through Session Manager: one session per connection, at
/// most [`MAX_CONCURRENT`] at once.
async fn listen_ssm(session: &crate::ssm::Session<'_>, port: u16) -> anyhow::Result<ExitCode> {
    use futures_util::StreamExt;
    let what = format!(
        "port {} of {} through Session Manager",
        session.port, session.instance_id
    );
    let listener = bind_local(port, &what).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut connections = futures_util::stream::FuturesUnordered::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let slots = slots.clone();
                    connections.push(async move {
                        let Ok(_slot) = slots.acquire_owned().await else { return };
                        let (from_local, to_local) = stream.into_split();
                        match session.carry(from_local, to_local).await {
                            Ok(_) => tracing::debug!(%peer, "connection done"),
                            Err(err) => eprintln!("{}", crate::error::render(&err)),
                        }
                    });
                }
                Err(err) => {
                    tracing::debug!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(()) = connections.next(), if !connections.is_empty() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Listens on 127.0.0.1:`port` (0: any free port) and says where on
/// standard output.
async fn bind_local(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    use std::io::Write;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|err| {
            anyhow::Error::new(
                Failure::new(format!("cannot listen on 127.0.0.1:{port}: {err}"))
                    .hint("choose another --local-port, or 0 for any free port"),
            )
        })?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "eic-connect: listening on {local}; each connection is tunnelled to {what} (Ctrl-C to stop)"
    );
    let _ = out.flush();
    Ok(listener)
}

/// `verify-host-key` with a tunnel: eic-connect does not speak ssh here, so
/// it shows the host keys the instance printed on its console, for the user
/// to hold the ssh they run through the tunnel to; none is an error.
async fn show_console_keys(clients: &Clients, instance_id: &str) -> anyhow::Result<()> {
    use crate::hostkeys::{ConsoleKeys, parse_console};
    let console = aws::diag::console_output(clients, instance_id).await?;
    let ConsoleKeys::Keys(keys) = parse_console(&console) else {
        return fail(
            Failure::new(format!(
                "cannot verify the host key of {instance_id}: its console output shows no host keys"
            ))
            .hint("set verify-host-key = false (or EIC_CONNECT_VERIFY_HOST_KEY=0) to open the tunnel anyway"),
        );
    };
    for key in keys {
        eprintln!(
            "eic-connect: {instance_id} printed host key {} {} on its console: check that the ssh you run through this tunnel sees this one",
            key.kind(),
            key.fingerprint
        );
    }
    Ok(())
}

/// Tunnels every connection to 127.0.0.1:`port` (0: any free port), at most
/// [`MAX_CONCURRENT`] at once; further connections wait for a free slot.
async fn listen(tunneller: Tunneller, port: u16) -> anyhow::Result<ExitCode> {
    let listener = bind_local(port, &tunneller.describe()).await?;
    let tunneller = Arc::new(tunneller);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut serial = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    serial += 1;
                    tokio::spawn(serve(tunneller.clone(), slots.clone(), conn, peer, serial));
                }
                Err(err) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::debug!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    tunneller: Arc<Tunneller>,
    slots: Arc<Semaphore>,
    conn: TcpStream,
    peer: std::net::SocketAddr,
    serial: u64,
) {
    let _permit = match slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            eprintln!(
                "eic-connect: {MAX_CONCURRENT} tunnels are open; connection {serial} from {peer} waits for one to close"
            );
            match slots.acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return,
            }
        }
    };
    let _ = conn.set_nodelay(true);
    tracing::debug!(serial, %peer, "accepted connection");
    let result = async {
        let ws = tunneller.open().await?;
        let (read, write) = conn.into_split();
        relay(ws, read, write).await
    }
    .await;
    match result {
        Ok(ending) => tracing::debug!(serial, ?ending, "connection closed"),
        Err(err) => {
            let err = err.context(format!("connection {serial} from {peer}"));
            eprint!("{}", crate::error::render(&err));
        }
    }
}
