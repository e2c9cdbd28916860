//! eic-connect: SSH to EC2 instances with EC2 Instance Connect.
//!
//! The binary is `src/main.rs`; this library holds everything, so that
//! fuzz targets and benchmarks reach the parsers directly.

pub mod agent;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod commands;
pub mod dirs;
pub mod doctor;
pub mod eice;
pub mod error;
pub mod fleet;
pub mod generate;
pub mod hostkeys;
pub mod jump;
pub mod key;
pub mod osuser;
pub mod picker;
pub mod policy;
pub mod progress;
pub mod resolve;
pub mod reuse;
pub mod sanitize;
pub mod serial;
pub mod session;
pub mod settings;
pub mod ssh;
pub mod ssm;
pub mod table;
pub mod target;
pub mod trust;

use std::io::Write;
use std::process::ExitCode;

/// The whole program: parse, resolve, run, report. Returns the exit status.
pub fn main() -> ExitCode {
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
        None => settings::Layers::load()
            .and_then(|layers| settings::resolve(cli, &layers))
            .map_err(anyhow::Error::new)
            .and_then(dispatch),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            let _ = std::io::stderr().write_all(error::render(&err).as_bytes());
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Runs the command, its settings resolved.
fn dispatch(command: settings::Command) -> anyhow::Result<ExitCode> {
    use settings::Command as C;
    match command {
        C::Connect(settings) => block_on(commands::connect::run(*settings)),
        C::List(settings) => block_on(commands::list::run(settings)),
        C::Run(settings) => block_on(commands::run::run(*settings)),
        C::Tunnel(settings) => block_on(commands::tunnel::run(settings)),
        C::Proxy(settings) => block_on(commands::proxy::run(settings)),
        C::SshConfig(settings) => commands::ssh_config::run(&settings),
        C::Copy(settings) => commands::copy::run(settings),
        C::Doctor(settings) => block_on(commands::doctor::run(*settings)),
        C::Serial(settings) => block_on(commands::serial::run(settings)),
        C::KnownHosts(settings) => commands::known_hosts::run(&settings),
        C::Reuse(settings) => commands::reuse::run(&settings),
        C::Audit(settings) => block_on(commands::audit::run(*settings)),
        C::Policy(settings) => block_on(commands::policy::run(*settings)),
        C::Endpoint(settings) => block_on(commands::endpoint::run(*settings)),
        C::Console(settings) => block_on(commands::console::run(*settings)),
    }
}

/// Runs a command on a single-threaded runtime: eic-connect's work is a few
/// concurrent network calls and byte relays, which one thread serves well
/// and starts fastest.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(future);
    // A relay's blocking read of standard input returns only when ssh
    // closes it: dropping the runtime would wait for it, forever when the
    // end came from a signal while ssh lives. The work is done; leave it.
    runtime.shutdown_background();
    result
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
