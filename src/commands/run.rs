//! `eic-connect run --filter … -- COMMAND`: one command on every instance a
//! filter selects, a bounded number at a time, each with its own one-time
//! key, with output prefixed by instance (or collected with `--json`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::{ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::push::push_key_within;
use crate::aws::{self, Clients};
use crate::eice::route::{self, EndpointCache};
use crate::error::{Failure, fail};
use crate::fleet;
use crate::key::EphemeralKey;
use crate::progress;
use crate::session::{self, Session, Spec};
use crate::settings::Run;
use crate::target::{AddressChoice, Target, choose_address};

/// Exit status when some instance did not succeed.
const EXIT_SOME_FAILED: u8 = 1;
/// How long one instance's push may keep meeting throttling.
const PUSH_PATIENCE: Duration = Duration::from_secs(120);
/// Exit status after Ctrl-C or SIGTERM, as a shell reports SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// How one instance fared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The command ran and exited with this status (0 = success).
    Exited(i32),
    /// ssh (and the command) died of this signal.
    Signalled(i32),
    /// `--timeout` passed; ssh was killed.
    TimedOut,
    /// No command ran: the key push, the address or ssh's start failed.
    NotReached(String),
}

impl Outcome {
    fn succeeded(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    fn status_word(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "succeeded",
            Outcome::Exited(_) | Outcome::Signalled(_) => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::NotReached(_) => "not-reached",
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Exited(0) => "ok".into(),
            Outcome::Exited(255) => {
                "exit 255 (ssh could not connect or log in, or the command exited 255)".into()
            }
            Outcome::Exited(code) => format!("exit {code}"),
            Outcome::Signalled(sig) => format!("killed by signal {sig}"),
            Outcome::TimedOut => "timed out (--timeout)".into(),
            Outcome::NotReached(why) => format!("not reached: {why}"),
        }
    }
}

/// What is kept for the summary and `--json`.
struct Report {
    instance: InstanceInfo,
    user: String,
    outcome: Outcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
}

/// Everything each instance's task shares.
struct Shared<'a> {
    settings: &'a Run,
    config: &'a SdkConfig,
    clients: &'a Clients,
    ssh_options: Vec<OsString>,
    endpoints: EndpointCache,
    out: Mutex<Printer>,
    /// The master connections this run started (reuse), ended if it is
    /// interrupted.
    masters: Mutex<Vec<std::path::PathBuf>>,
    /// The EC2 jump host `-J` names: each connection pushes a key of its
    /// own to it and goes through it to the instance's private address.
    jump: Option<crate::jump::JumpHost>,
}

pub async fn run(settings: Run) -> anyhow::Result<ExitCode> {
    let mut filters = fleet::parse_filters(&settings.filters)?;
    let user_given = settings.user.clone().map(|u| (u.name, u.source));
    if !filters
        .iter()
        .any(|(name, _)| name == "instance-state-name")
    {
        let states: &[&str] = if settings.reach.start {
            &["pending", "running", "stopping", "stopped"]
        } else {
            &["running"]
        };
        filters.push((
            "instance-state-name".into(),
            states.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    let config = aws::load_config(&settings.reach.aws).await?;
    let clients = Clients::for_fleet(&config, &settings.reach.aws);
    let instances = ec2::list(&clients, filters.clone()).await?;
    if instances.is_empty() {
        return fail(
            Failure::new(format!(
                "no instance matches {} ({})",
                fleet::describe(&filters),
                clients.scope.describe()
            ))
            .hint("see what a filter selects with: eic-connect list FILTER…")
            .hint("only running instances are selected unless a state= filter or --start says otherwise"),
        );
    }
    let jump = crate::jump::for_fleet(&clients, &settings.reach, &settings.ssh_options).await?;
    let users = fleet::os_users(&clients, &instances, user_given, &settings.reach.state_dir).await;
    let labels = fleet::labels(&instances);
    let live = std::io::stderr().is_terminal() && !settings.json;
    let printer = Printer::new(&labels, instances.len(), settings.json, live);
    // The user's options first: for each ssh_config option ssh takes the
    // first value it is given, so theirs win over these defaults.
    let mut ssh_options = match &jump {
        Some(_) => crate::jump::without_jump(&settings.ssh_options),
        None => settings.ssh_options.clone(),
    };
    ssh_options.extend(
        [
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(Into::into),
    );
    let shared = Shared {
        settings: &settings,
        config: &config,
        clients: &clients,
        ssh_options,
        endpoints: EndpointCache::default(),
        out: Mutex::new(printer),
        masters: Mutex::new(Vec::new()),
        jump,
    };

    let slots = tokio::sync::Semaphore::new(usize::from(settings.parallel));
    let tasks = instances.iter().map(|instance| {
        let user = users.get(&instance.id).map_or_else(
            || crate::osuser::DEFAULT_OS_USER.to_owned(),
            |c| c.user.clone(),
        );
        let (slots, shared) = (&slots, &shared);
        async move {
            // The semaphore is never closed, so this always holds a permit.
            let _permit = slots.acquire().await.ok();
            shared.out_lock().started();
            let report = run_one(shared, instance.clone(), user).await;
            shared.out_lock().finished(&report);
            report
        }
    });
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let all = futures_util::future::join_all(tasks);
    // Dropping the unfinished tasks kills their ssh processes and wipes
    // their keys and runtime directories.
    let reports = tokio::select! {
        reports = all => reports,
        _ = interrupt.recv() => return interrupted(&shared),
        _ = terminate.recv() => return interrupted(&shared),
        _ = hangup.recv() => return interrupted(&shared),
    };
    let mut printer = shared.out_lock();
    printer.progress.clear();
    if settings.json {
        let text = json_report(&reports, &users) + "\n";
        crate::error::print_stdout(&text)?;
    } else {
        printer.summary(&reports);
    }
    Ok(if reports.iter().all(|r| r.outcome.succeeded()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SOME_FAILED)
    })
}

impl Shared<'_> {
    fn out_lock(&self) -> std::sync::MutexGuard<'_, Printer> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn interrupted(shared: &Shared<'_>) -> anyhow::Result<ExitCode> {
    // Interrupted, nothing this run started goes on: the masters it made
    // would otherwise keep the interrupted sessions (and stay 10 minutes).
    let masters = std::mem::take(&mut *shared.masters.lock().unwrap_or_else(|e| e.into_inner()));
    for path in masters {
        crate::reuse::stop(&shared.settings.reach.ssh_program, &path);
    }
    let mut printer = shared.out_lock();
    printer.progress.clear();
    let _ = writeln!(
        std::io::stderr(),
        "eic-connect: interrupted: {} of {} instances had finished; the rest were stopped",
        printer.done,
        printer.total
    );
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

/// A session for one instance: the route, the host keys, a fresh key
/// pushed, and (with reuse) ssh's options to become the master at `master`.
async fn prepare(
    shared: &Shared<'_>,
    instance: &InstanceInfo,
    user: &str,
    port: Option<u16>,
    master: Option<&(std::path::PathBuf, Duration)>,
) -> anyhow::Result<Session> {
    let clients = shared.clients;
    let reach = &shared.settings.reach;
    let target = Target::InstanceId(instance.id.clone());
    let address = match &shared.jump {
        Some(_) => crate::jump::target_address(&instance.addresses, reach.address, &target)?,
        None => choose_address(&instance.addresses, reach.address, &target)?,
    };
    let decision = route::decide(
        reach.path.via,
        reach.address != AddressChoice::Auto,
        address,
        instance,
    );
    // Through a jump host, the instance is reached from there: no endpoint.
    let decision = match &shared.jump {
        Some(_) => route::Decision::Direct,
        None => decision,
    };
    let route = route::plan(
        decision,
        &reach.path,
        shared.config,
        clients,
        instance,
        port,
        Some(&shared.endpoints),
    )
    .await?;
    let hop = match &shared.jump {
        Some(jump) => Some(crate::jump::fleet_hop(clients, reach, jump, PUSH_PATIENCE).await?),
        None => None,
    };
    let host_keys = session::host_keys(reach, clients, &instance.id, None).await?;
    let key = EphemeralKey::generate()?;
    let pushed = push_key_within(
        clients,
        &instance.id,
        user,
        key.public_openssh(),
        PUSH_PATIENCE,
    )
    .await?;
    let (host, path_options) = route::ssh_target(
        route.as_ref(),
        address,
        &clients.scope,
        &reach.aws,
        &instance.id,
        reach.reuse.is_some(),
    )?;
    let mut path_options = path_options;
    if let Some(hop) = &hop {
        path_options.extend(["-o".into(), hop.proxy.clone()]);
    }
    if let Some((path, persist)) = master {
        path_options.extend(crate::reuse::master_options(path, *persist)?);
        shared
            .masters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
    }
    let spec = Spec {
        user_options: &shared.ssh_options,
        path_options,
        verbose: 0,
        os_user: user,
        host_key_alias: &instance.id,
        host: &host,
        host_keys,
        command: &shared.settings.command,
    };
    let session = Session::prepare(key, crate::agent::pushed_at(pushed), &spec)?;
    Ok(match hop {
        Some(hop) => session.through(hop.session),
        None => session,
    })
}

/// One instance: start it if asked, push a fresh key, run ssh, collect.
async fn run_one(shared: &Shared<'_>, instance: InstanceInfo, user: String) -> Report {
    let started = Instant::now();
    let mut report = Report {
        instance,
        user,
        outcome: Outcome::NotReached(String::new()),
        stdout: Vec::new(),
        stderr: Vec::new(),
        elapsed: Duration::ZERO,
    };
    report.outcome = match connect_and_run(shared, &mut report).await {
        Ok(outcome) => outcome,
        Err(err) => Outcome::NotReached(one_line(&err)),
    };
    report.elapsed = started.elapsed();
    report
}

async fn connect_and_run(shared: &Shared<'_>, report: &mut Report) -> anyhow::Result<Outcome> {
    let clients = shared.clients;
    let reach = &shared.settings.reach;
    if report.instance.state != "running" {
        if !reach.start {
            return Ok(Outcome::NotReached(format!(
                "instance is {} (add --start to start it)",
                report.instance.state
            )));
        }
        report.instance = ec2::ensure_started(clients, report.instance.clone(), false).await?;
    }
    let instance = &report.instance;
    let port = crate::ssh::port(&shared.ssh_options);
    let master = match reach.reuse {
        Some(persist) => {
            crate::dirs::ensure_private_dir(&reach.reuse_dir)?;
            let key = crate::reuse::Key {
                user: report.user.clone(),
                host: instance.id.clone(),
                port: port.unwrap_or(22),
                route: reach.path.via.as_str().to_owned(),
            };
            Some((key.path_in(&reach.reuse_dir), persist))
        }
        None => None,
    };
    // A live master for this instance: no push, no handshake.
    let (args, session) = match &master {
        Some((path, _)) if crate::reuse::live(path) => {
            let mut args = shared.ssh_options.clone();
            args.extend(crate::reuse::client_options(path)?);
            args.extend([
                "-l".into(),
                report.user.clone().into(),
                "--".into(),
                instance.id.clone().into(),
            ]);
            args.extend(crate::ssh::remote_command(&shared.settings.command));
            (args, None)
        }
        _ => {
            let session = prepare(shared, instance, &report.user, port, master.as_ref()).await?;
            (session.args().to_vec(), Some(session))
        }
    };
    let ssh_program = &reach.ssh_program;
    let mut command = tokio::process::Command::new(ssh_program);
    crate::ssh::end_with_parent(&mut command);
    let mut child = command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| anyhow::anyhow!("cannot run {}: {err}", ssh_program.to_string_lossy()))?;
    let id = instance.id.clone();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let relay = async {
        tokio::join!(
            relay_lines(stdout, shared, &id, Stream::Out),
            relay_lines(stderr, shared, &id, Stream::Err)
        )
    };
    let ran = async {
        let (out, err) = relay.await;
        (out, err, child.wait().await)
    };
    let (out, err, status) = match shared.settings.timeout {
        Some(limit) => match tokio::time::timeout(limit, ran).await {
            Ok(done) => done,
            Err(_) => return Ok(Outcome::TimedOut),
        },
        None => ran.await,
    };
    report.stdout = out;
    report.stderr = err;
    drop(session);
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Signalled(signal),
        (None, None) => Outcome::NotReached("ssh ended without a status".into()),
    })
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Passes a child's output on line by line (text mode) or keeps it (JSON);
/// returns what was kept.
async fn relay_lines<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    shared: &Shared<'_>,
    id: &str,
    stream: Stream,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(pipe) = pipe else {
        return kept;
    };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if shared.settings.json {
            kept.extend_from_slice(&line);
        } else {
            shared.out_lock().line(id, stream, &line);
        }
    }
    kept
}

/// The first line of an error as eic-connect would print it.
fn one_line(err: &anyhow::Error) -> String {
    crate::error::render(err)
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("eic-connect: error: ")
        .to_owned()
}

/// Serialises output: prefixed lines, the progress line, the summary.
struct Printer {
    labels: BTreeMap<String, String>,
    width: usize,
    total: usize,
    running: usize,
    done: usize,
    failed: usize,
    json: bool,
    progress: progress::Line,
}

impl Printer {
    fn new(labels: &BTreeMap<String, String>, total: usize, json: bool, live: bool) -> Printer {
        use unicode_width::UnicodeWidthStr;
        let width = labels
            .values()
            .map(|l| l.width())
            .max()
            .unwrap_or(0)
            .min(32);
        let progress = if live {
            progress::Line::stderr()
        } else {
            progress::Line::silent()
        };
        Printer {
            labels: labels.clone(),
            width,
            total,
            running: 0,
            done: 0,
            failed: 0,
            json,
            progress,
        }
    }

    fn label(&self, id: &str) -> String {
        use unicode_width::UnicodeWidthStr;
        let label = self.labels.get(id).map_or(id, String::as_str);
        format!(
            "{label}{}",
            " ".repeat(self.width.saturating_sub(label.width()))
        )
    }

    fn redraw(&mut self) {
        let text = format!(
            "run: {}/{} done, {} running, {} failed",
            self.done, self.total, self.running, self.failed
        );
        self.progress.show(&text);
    }

    fn started(&mut self) {
        self.running += 1;
        self.redraw();
    }

    fn finished(&mut self, report: &Report) {
        self.running -= 1;
        self.done += 1;
        if !report.outcome.succeeded() {
            self.failed += 1;
            if !self.json && !matches!(report.outcome, Outcome::Exited(_)) {
                // Exit statuses are in the summary; say at once why an
                // instance was not reached.
                let text = format!("eic-connect: {}\n", report.outcome.describe());
                self.line(&report.instance.id, Stream::Err, text.as_bytes());
            }
        }
        self.redraw();
    }

    /// One line of a child's output, after its instance's label.
    fn line(&mut self, id: &str, stream: Stream, bytes: &[u8]) {
        self.progress.clear();
        let mut text = format!("{} | ", self.label(id)).into_bytes();
        text.extend_from_slice(bytes);
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        let _ = match stream {
            Stream::Out => std::io::stdout().lock().write_all(&text),
            Stream::Err => std::io::stderr().lock().write_all(&text),
        };
        self.redraw();
    }

    fn summary(&mut self, reports: &[Report]) {
        let ok = reports.iter().filter(|r| r.outcome.succeeded()).count();
        let mut text = format!(
            "eic-connect: run: {ok} of {} instances succeeded",
            reports.len()
        );
        let not_ok: Vec<&Report> = reports.iter().filter(|r| !r.outcome.succeeded()).collect();
        if !not_ok.is_empty() {
            text.push(':');
        }
        text.push('\n');
        for r in not_ok {
            text.push_str(&format!(
                "  {}  {}  {}\n",
                self.label(&r.instance.id),
                r.instance.id,
                r.outcome.describe()
            ));
        }
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// `run --json`: each instance as `list --json` shows it, plus how it fared.
fn json_report(reports: &[Report], users: &BTreeMap<String, crate::osuser::Choice>) -> String {
    let instances: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let mut v = fleet::instance_json(&r.instance, users.get(&r.instance.id));
            if let Some(obj) = v.as_object_mut() {
                obj.insert("os_user".into(), r.user.clone().into());
                obj.insert("status".into(), r.outcome.status_word().into());
                let (code, signal, error) = match &r.outcome {
                    Outcome::Exited(c) => (Some(*c), None, None),
                    Outcome::Signalled(s) => (None, Some(*s), None),
                    Outcome::TimedOut => (None, None, Some("timed out".to_owned())),
                    Outcome::NotReached(why) => (None, None, Some(why.clone())),
                };
                obj.insert("exit_code".into(), code.into());
                obj.insert("signal".into(), signal.into());
                obj.insert("error".into(), error.into());
                obj.insert("stdout".into(), String::from_utf8_lossy(&r.stdout).into());
                obj.insert("stderr".into(), String::from_utf8_lossy(&r.stderr).into());
                obj.insert("duration_ms".into(), (r.elapsed.as_millis() as u64).into());
            }
            v
        })
        .collect();
    let count = |word: &str| {
        reports
            .iter()
            .filter(|r| r.outcome.status_word() == word)
            .count()
    };
    let summary = serde_json::json!({
        "total": reports.len(),
        "succeeded": count("succeeded"),
        "failed": count("failed"),
        "timed_out": count("timed-out"),
        "not_reached": count("not-reached"),
    });
    fleet::json_text(&serde_json::json!({ "summary": summary, "instances": instances }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_words() {
        assert!(Outcome::Exited(0).succeeded());
        assert!(!Outcome::Exited(1).succeeded());
        assert_eq!(Outcome::Exited(3).status_word(), "failed");
        assert_eq!(Outcome::Signalled(9).status_word(), "failed");
        assert_eq!(Outcome::TimedOut.status_word(), "timed-out");
        assert_eq!(Outcome::NotReached("x".into()).describe(), "not reached: x");
        assert!(
            Outcome::Exited(255)
                .describe()
                .contains("ssh could not connect")
        );
    }
}
