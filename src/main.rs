//! eic-connect: SSH to EC2 instances with EC2 Instance Connect.

mod agent;
mod aws;
mod cli;
mod commands;
mod error;
mod hostkeys;
mod key;
mod osuser;
mod sanitize;
mod serial;
mod settings;
mod ssh;
mod target;
mod tunnel;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2, as clap decides.
        Err(err) => err.exit(),
    };
    init_logging(cli.verbose);
    let outcome = match cli.subcommand.take() {
        None => settings::ConnectSettings::from_cli(cli)
            .map_err(anyhow::Error::new)
            .and_then(|settings| block_on(commands::connect::run(settings))),
        Some(cli::Subcommand::Tunnel(args)) => {
            block_on(commands::tunnel::run(args, cli.aws, cli.path))
        }
        Some(cli::Subcommand::Proxy(args)) => {
            block_on(commands::proxy::run(args, cli.aws, cli.path))
        }
        Some(cli::Subcommand::SshConfig(args)) => {
            commands::ssh_config::run(&args, &cli.aws, &cli.path)
        }
        Some(cli::Subcommand::Scp(args)) => {
            commands::copy::run(commands::copy::Tool::Scp, args.args, &cli.aws, &cli.path)
        }
        Some(cli::Subcommand::Sftp(args)) => {
            commands::copy::run(commands::copy::Tool::Sftp, args.args, &cli.aws, &cli.path)
        }
        Some(cli::Subcommand::Doctor(args)) => {
            block_on(commands::doctor::run(args, cli.aws, cli.path))
        }
        Some(cli::Subcommand::Serial(args)) => block_on(commands::serial::run(args, cli.aws)),
        Some(cli::Subcommand::KnownHosts(args)) => commands::known_hosts::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            let _ = std::io::stderr().write_all(error::render(&err).as_bytes());
            ExitCode::from(error::exit_code(&err))
        }
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
