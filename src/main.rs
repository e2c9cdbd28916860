//! eic-connect: SSH to EC2 instances with EC2 Instance Connect.

mod agent;
mod aws;
mod cli;
mod commands;
mod config;
mod error;
mod fleet;
mod generate;
mod hostkeys;
mod key;
mod osuser;
mod picker;
mod progress;
mod sanitize;
mod serial;
mod settings;
mod ssh;
mod target;
mod tunnel;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2, as clap decides.
        Err(err) => err.exit(),
    };
    init_logging(cli.verbose);
    // Generated files depend on the command definition alone, never on a
    // config file (which might be broken).
    let outcome = match cli.generate {
        Some(what) => generate::run(what),
        None => config::Layers::load()
            .map_err(anyhow::Error::new)
            .and_then(|layers| dispatch(cli, &layers)),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            let _ = std::io::stderr().write_all(error::render(&err).as_bytes());
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Runs the command the line names, with the lower layers (environment,
/// config file, aliases) filling what the command line leaves open.
fn dispatch(mut cli: cli::Cli, layers: &config::Layers) -> anyhow::Result<ExitCode> {
    use cli::Subcommand as S;
    let Some(subcommand) = cli.subcommand.take() else {
        let settings = settings::ConnectSettings::from_cli(cli, layers)?;
        return block_on(commands::connect::run(settings));
    };
    // Commands aimed at one instance take an alias's target and settings.
    let (alias_target, defaults) = match &subcommand {
        S::Tunnel(cli::TunnelArgs { target, .. }) | S::Serial(cli::SerialArgs { target, .. }) => {
            let (target, defaults) = layers.expand(target);
            (Some(target), defaults)
        }
        _ => (None, layers.general()),
    };
    // ssh-config, scp and sftp only pass the command line's settings on
    // to the eic-connect processes they set up, which read the lower
    // layers themselves (so a printed ssh config does not freeze today's).
    if !matches!(subcommand, S::SshConfig(_) | S::Scp(_) | S::Sftp(_)) {
        defaults.fill_aws(&mut cli.aws);
        defaults.fill_path(&mut cli.path);
    }
    match subcommand {
        S::List(args) => block_on(commands::list::run(args, cli.aws, &defaults)),
        S::Run(args) => block_on(commands::run::run(args, cli.aws, cli.path, &defaults)),
        S::Tunnel(mut args) => {
            args.target = alias_target.unwrap_or(args.target);
            block_on(commands::tunnel::run(args, cli.aws, cli.path))
        }
        S::Proxy(args) => block_on(commands::proxy::run(args, cli.aws, cli.path)),
        S::SshConfig(args) => commands::ssh_config::run(&args, &cli.aws, &cli.path),
        S::Scp(args) => {
            commands::copy::run(commands::copy::Tool::Scp, args.args, &cli.aws, &cli.path)
        }
        S::Sftp(args) => {
            commands::copy::run(commands::copy::Tool::Sftp, args.args, &cli.aws, &cli.path)
        }
        S::Doctor(args) => block_on(commands::doctor::run(args, cli.aws, cli.path, layers)),
        S::Serial(mut args) => {
            args.target = alias_target.unwrap_or(args.target);
            block_on(commands::serial::run(args, cli.aws))
        }
        S::KnownHosts(args) => commands::known_hosts::run(&args),
    }
}

/// Runs a command on a single-threaded runtime: eic-connect's work is a few
/// concurrent network calls and byte relays, which one thread serves well
/// and starts fastest.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// `-v`: eic-connect's steps and timings; `-vvv`: the AWS SDK's too. Never
/// below debug level for the SDK, where request details would be logged.
fn init_logging(verbose: u8) {
    let filter = match verbose {
        0 => return,
        1 | 2 => "eic_connect=debug",
        _ => "eic_connect=debug,aws_config=debug,aws_smithy_runtime=debug",
    };
    let filter: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_default();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .with_timer(tracing_subscriber::fmt::time::uptime()),
        )
        .with(filter)
        .init();
}
