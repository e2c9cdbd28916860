//! The GitHub Action (action.yml → scripts/action.sh), outside GitHub: the
//! release archive served by a local HTTP server (the freshly built binary,
//! packed as the release workflow packs it), installed with its checksum
//! checked; the ssh-config block written into the bed's ~/.ssh/config, then
//! plain ssh and scp to the bed's instances; targets pre-connected; cleanup
//! leaving the user's own config as it was. Also: action.yml and the
//! workflows against the official schemas, and the archive names the action,
//! cargo-binstall and the release workflow use agree.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use support::cmd::{assert_signed, stderr, stdout};
use support::{InstanceSpec, TestBed};

const BEGIN: &str = "# >>> eic-connect action >>>";
const END: &str = "# <<< eic-connect action <<<";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn script() -> PathBuf {
    repo_file("scripts/action.sh")
}

/// The release target the script picks on this machine.
fn runner_target() -> String {
    let arch = std::env::consts::ARCH;
    match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-musl"),
        "macos" => format!("{arch}-apple-darwin"),
        other => panic!("the action has no release for {other}"),
    }
}

fn archive_name(version: &str, target: &str) -> String {
    format!("eic-connect-v{version}-{target}.tar.gz")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ------------------------------------------------------------ the release

/// The binary under test packed as .github/workflows/release.yml packs it:
/// eic-connect-vVERSION-TARGET/eic-connect in a .tar.gz.
struct Release {
    name: String,
    archive: Vec<u8>,
    sha256_line: String,
}

fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = archive_name(VERSION, &runner_target());
        let top = name.trim_end_matches(".tar.gz");
        std::fs::create_dir(dir.path().join(top)).unwrap();
        std::fs::copy(
            support::eic_connect_bin(),
            dir.path().join(top).join("eic-connect"),
        )
        .expect("copy the binary under test");
        let status = Command::new("tar")
            .arg("czf")
            .arg(&name)
            .arg(top)
            .current_dir(dir.path())
            .status()
            .expect("run tar");
        assert!(status.success(), "tar failed");
        let archive = std::fs::read(dir.path().join(&name)).unwrap();
        let sha256_line = format!("{}  {name}\n", sha256_hex(&archive));
        Release {
            name,
            archive,
            sha256_line,
        }
    })
}

// ------------------------------------------------- a tiny release mirror

/// An HTTP server on 127.0.0.1 serving files from a map (GET only, one
/// request per connection), recording the paths asked for.
struct Mirror {
    addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mirror {
    /// Serves the release's archive and its .sha256 under `/v{VERSION}/`.
    fn with_release() -> Mirror {
        let m = Mirror::start();
        let r = release();
        m.put(&r.name, r.archive.clone());
        m.put(&format!("{}.sha256", r.name), r.sha256_line.clone().into());
        m
    }

    fn start() -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mirror");
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (files, requests, stop) = (files.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    // A client that goes away mid-answer is its own business.
                    let _ = serve(conn, &files, &requests);
                }
            })
        };
        Mirror {
            addr,
            files,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The directory URL for `EIC_ACTION_DOWNLOAD_URL`.
    fn url(&self) -> String {
        format!("http://{}/v{VERSION}", self.addr)
    }

    fn put(&self, name: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/v{VERSION}/{name}"), bytes);
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    requests.lock().unwrap().push(path.to_owned());
    let body = match method {
        "GET" => files.lock().unwrap().get(path).cloned(),
        _ => None,
    };
    let mut conn = conn;
    match body {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
        None => {
            let body = "<html><body>Not Found</body></html>";
            write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
    }
    conn.flush()?;
    // Let the client close first; drain what it may still send.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = conn.read(&mut [0u8; 64]);
    Ok(())
}

// ------------------------------------------------------------ running it

/// scripts/action.sh with the bed's environment (HOME, TMPDIR, AWS_*).
fn action(bed: &TestBed, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    bed.apply_env(&mut c);
    c.arg(script()).args(args).stdin(Stdio::null());
    c
}

/// scripts/action.sh in a bare environment: HOME and TMPDIR under `dir`.
fn action_in(dir: &Path, args: &[&str]) -> Command {
    for sub in ["home", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut c = Command::new("sh");
    c.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        c.env("PATH", path);
    }
    c.env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"))
        .env("LANG", "C")
        .current_dir(dir)
        .arg(script())
        .args(args)
        .stdin(Stdio::null());
    c
}

#[track_caller]
fn ok(mut c: Command) -> Output {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

#[track_caller]
fn fails(mut c: Command) -> Output {
    let out = c.output().expect("run");
    assert!(!out.status.success(), "{c:?} succeeded:\n{}", stderr(&out));
    out
}

/// A plain OpenSSH tool reading only the bed's ~/.ssh/config (ssh takes
/// its home from the password database, not from HOME, so the file is
/// named with -F), with its standard error going to a file: with
/// connection reuse a master and its ProxyCommand live on holding
/// whatever standard error they were given.
struct Tool {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

fn tool(bed: &TestBed, program: &str, args: &[&str]) -> Tool {
    let log = tempfile::NamedTempFile::new_in(bed.dir()).unwrap();
    let mut c = Command::new(program);
    bed.apply_env(&mut c);
    c.arg("-F")
        .arg(ssh_config_path(bed))
        .args(args)
        .stdin(Stdio::null())
        .stderr(log.reopen().unwrap());
    let out = c.output().expect("run an OpenSSH tool");
    Tool {
        status: out.status,
        stdout: out.stdout,
        stderr: std::fs::read_to_string(log.path()).unwrap_or_default(),
    }
}

#[track_caller]
fn tool_ok(bed: &TestBed, program: &str, args: &[&str]) -> Vec<u8> {
    let t = tool(bed, program, args);
    assert!(
        t.status.success(),
        "{program} {args:?} failed: {}",
        t.stderr
    );
    t.stdout
}

fn ssh_config_path(bed: &TestBed) -> PathBuf {
    bed.home().join(".ssh/config")
}

/// The user's own ~/.ssh/config: settings at the top level (before any
/// Host line) and a Host block of theirs. The top-level Port is how plain
/// ssh finds the bed's sshd.
fn users_config(bed: &TestBed) -> String {
    format!(
        "# my own settings\n\
         Port {}\n\
         BatchMode yes\n\
         ConnectTimeout 20\n\
         \n\
         Host build-cache\n    \
             HostName 127.0.0.1\n    \
             User cache\n",
        bed.sshd_port()
    )
}

fn write_users_config(bed: &TestBed) -> String {
    let original = users_config(bed);
    let dir = bed.home().join(".ssh");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config"), &original).unwrap();
    original
}

fn read_config(bed: &TestBed) -> String {
    std::fs::read_to_string(ssh_config_path(bed)).expect("read ~/.ssh/config")
}

/// The config is the action's block first, then exactly `original`.
#[track_caller]
fn assert_block_then(config: &str, original: &str) {
    assert!(config.starts_with(&format!("{BEGIN}\n")), "{config}");
    assert_eq!(config.matches(BEGIN).count(), 1, "one block: {config}");
    assert_eq!(config.matches(END).count(), 1, "one block: {config}");
    let (_, rest) = config.split_once(&format!("{END}\n")).unwrap();
    assert_eq!(rest, original, "the user's own config follows unchanged");
}

/// `ssh -G HOST`'s value of `key`.
fn effective(bed: &TestBed, host: &str, key: &str) -> String {
    let out = tool_ok(bed, "ssh", &["-G", host]);
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_owned))
        .unwrap_or_default()
}

/// Some bytes worth comparing: every byte value, then a pseudo-random tail.
fn payload(len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..=255u8).collect();
    let mut x: u32 = 0x2545_f491;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push((x >> 7) as u8);
    }
    data
}

// ------------------------------------------------------------------ install

#[test]
fn install_puts_the_verified_release_binary_on_path_and_it_runs() {
    let mirror = Mirror::with_release();
    let dir = tempfile::tempdir().unwrap();
    let (gh_path, gh_output) = (
        dir.path().join("github_path"),
        dir.path().join("github_output"),
    );
    let mut c = action_in(dir.path(), &["install"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", mirror.url())
        .env("GITHUB_PATH", &gh_path)
        .env("GITHUB_OUTPUT", &gh_output);
    let out = ok(c);
    let log = stderr(&out);
    assert!(log.contains("SHA-256 verified"), "{log}");

    // Default place outside a runner: ~/.local/bin.
    let bin_dir = dir.path().join("home/.local/bin");
    let bin = bin_dir.join("eic-connect");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(support::eic_connect_bin()).unwrap(),
        "the binary from the archive, byte for byte"
    );
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert_eq!(stdout(&v), format!("eic-connect {VERSION}\n"));

    // On a runner: the directory goes on PATH, the outputs are set.
    assert_eq!(
        std::fs::read_to_string(&gh_path).unwrap(),
        format!("{}\n", bin_dir.display())
    );
    let outputs = std::fs::read_to_string(&gh_output).unwrap();
    assert!(
        outputs.contains(&format!("version={VERSION}\n")),
        "{outputs}"
    );
    assert!(
        outputs.contains(&format!("path={}\n", bin.display())),
        "{outputs}"
    );

    // What was fetched: the archive for this machine and its checksum.
    let name = &release().name;
    assert_eq!(
        mirror.requests(),
        vec![
            format!("/v{VERSION}/{name}"),
            format!("/v{VERSION}/{name}.sha256")
        ]
    );
    // No download left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn install_honours_an_install_dir_and_a_target() {
    let mirror = Mirror::start();
    let r = release();
    // The same bytes, published as another target's archive.
    let other = "aarch64-apple-darwin";
    let name = archive_name(VERSION, other);
    let top = name.trim_end_matches(".tar.gz");
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join(top)).unwrap();
    std::fs::copy(
        support::eic_connect_bin(),
        work.path().join(top).join("eic-connect"),
    )
    .unwrap();
    let st = Command::new("tar")
        .args(["czf", &name, top])
        .current_dir(work.path())
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(work.path().join(&name)).unwrap();
    mirror.put(
        &format!("{name}.sha256"),
        format!("{}  {name}\n", sha256_hex(&bytes)).into(),
    );
    mirror.put(&name, bytes);
    assert_ne!(name, r.name);

    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("tools dir");
    let mut c = action_in(dir.path(), &["install"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", format!("{}/", mirror.url()))
        .env("EIC_ACTION_TARGET", other)
        .env("EIC_ACTION_VERSION", format!("v{VERSION}"))
        .env("EIC_ACTION_INSTALL_DIR", &into);
    ok(c);
    assert!(into.join("eic-connect").is_file());
    assert_eq!(
        mirror.requests()[0],
        format!("/v{VERSION}/{name}"),
        "the target's archive"
    );
}

#[test]
fn a_checksum_mismatch_is_refused_clearly_and_nothing_is_installed() {
    let r = release();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("home/.local/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    // A copy installed earlier stays as it was.
    std::fs::write(bin_dir.join("eic-connect"), b"the earlier copy").unwrap();
    let want = sha256_hex(&r.archive);

    // 1. The archive altered on the way (one byte), the .sha256 as published.
    let mirror = Mirror::with_release();
    let mut altered = r.archive.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x55;
    let got = sha256_hex(&altered);
    mirror.put(&r.name, altered);
    let gh_path = dir.path().join("github_path");
    let mut c = action_in(dir.path(), &["install", "setup"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", mirror.url())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_PATH", &gh_path);
    let out = fails(c);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "eic-connect action: error: checksum mismatch for {}: expected {want} (from {}.sha256), got {got}; nothing was installed",
            r.name, r.name
        )),
        "{err}"
    );
    assert!(err.contains("\nhint: "), "{err}");
    assert!(
        err.contains("::error title=eic-connect::checksum mismatch"),
        "an annotation on GitHub: {err}"
    );
    assert!(!err.contains("wrote the eic-connect block"), "{err}");

    // 2. A .sha256 that holds no checksum (a web page where it should be).
    let mirror = Mirror::with_release();
    mirror.put(
        &format!("{}.sha256", r.name),
        b"<html>maintenance</html>\n".to_vec(),
    );
    let mut c = action_in(dir.path(), &["install"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", mirror.url());
    let err = stderr(&fails(c));
    assert!(
        err.contains(&format!(
            "error: {}.sha256 does not hold a SHA-256 checksum",
            r.name
        )),
        "{err}"
    );

    // 3. No .sha256 at all.
    let mirror = Mirror::start();
    mirror.put(&r.name, r.archive.clone());
    let mut c = action_in(dir.path(), &["install"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", mirror.url());
    let err = stderr(&fails(c));
    assert!(
        err.contains(&format!(
            "error: could not download {}/{}.sha256",
            mirror.url(),
            r.name
        )),
        "{err}"
    );

    // Nothing installed, nothing on PATH, no block, no download left.
    assert_eq!(
        std::fs::read(bin_dir.join("eic-connect")).unwrap(),
        b"the earlier copy"
    );
    assert_eq!(
        std::fs::read_dir(&bin_dir).unwrap().count(),
        1,
        "no other file in the install directory"
    );
    assert!(!gh_path.exists());
    assert!(!dir.path().join("home/.ssh/config").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no download left behind"
    );
}

// ---------------------------------------------------- setup, ssh, cleanup

#[test]
fn setup_lets_plain_ssh_and_scp_reach_instances_and_cleanup_restores_the_config() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mirror = Mirror::with_release();
    let original = write_users_config(&bed);
    let user = bed.os_user();

    let mut c = action(&bed, &["install", "setup"]);
    c.env("EIC_ACTION_DOWNLOAD_URL", mirror.url())
        .env("EIC_ACTION_OS_USER", &user);
    let out = ok(c);
    assert!(stderr(&out).contains("wrote the eic-connect block"));

    // The block comes first, naming the binary just installed; the user's
    // config follows byte for byte.
    let config = read_config(&bed);
    assert_block_then(&config, &original);
    let installed = bed.home().join(".local/bin/eic-connect");
    assert!(
        config.contains(&format!("ProxyCommand {} proxy", installed.display())),
        "{config}"
    );
    // The block hands the hosts it does not match back: the user's
    // top-level settings still apply to every host.
    assert_eq!(
        effective(&bed, "build-cache", "port"),
        bed.sshd_port().to_string()
    );
    assert_eq!(effective(&bed, "build-cache", "user"), "cache");
    assert_eq!(effective(&bed, "other.example", "batchmode"), "yes");
    assert_eq!(effective(&bed, "eic-web-1", "user"), user);

    // Plain ssh by instance id and by Name tag.
    for host in [web.id.as_str(), "eic-web-1"] {
        let out = tool_ok(&bed, "ssh", &[host, "echo", "hello from", "$(hostname)"]);
        assert!(
            String::from_utf8_lossy(&out).starts_with("hello from "),
            "{host}"
        );
    }
    // scp up by id and back down by name, bytes compared.
    let data = payload(250_000);
    let src = bed.dir().join("up.bin");
    std::fs::write(&src, &data).unwrap();
    let remote = bed.dir().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    tool_ok(
        &bed,
        "scp",
        &[
            src.to_str().unwrap(),
            &format!("{}:{}/up.bin", web.id, remote.display()),
        ],
    );
    assert_eq!(std::fs::read(remote.join("up.bin")).unwrap(), data);
    let back = bed.dir().join("back.bin");
    tool_ok(
        &bed,
        "scp",
        &[
            &format!("eic-web-1:{}/up.bin", remote.display()),
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // Setup again (the installed binary on PATH, as GITHUB_PATH puts it):
    // the block is replaced, not added.
    let mut c = action(&bed, &["setup"]);
    let path = format!(
        "{}:{}",
        installed.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PATH", &path).env("EIC_ACTION_OS_USER", &user);
    ok(c);
    assert_block_then(&read_config(&bed), &original);
    tool_ok(&bed, "ssh", &[&web.id, "true"]);

    // Cleanup: the file is the user's again, byte for byte; twice is fine.
    let mut c = action(&bed, &["cleanup"]);
    c.env("PATH", &path);
    let out = ok(c);
    assert!(stderr(&out).contains("removed the eic-connect block"));
    assert_eq!(read_config(&bed), original);
    let mut c = action(&bed, &["cleanup"]);
    c.env("PATH", &path);
    let out = ok(c);
    assert!(
        stderr(&out).contains("nothing to clean up"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_config(&bed), original);
    // And plain ssh no longer knows the instances.
    let t = tool(&bed, "ssh", &[&web.id, "true"]);
    assert!(!t.status.success());
    assert_signed(&bed);
}

#[test]
fn setup_creates_a_missing_ssh_config_and_cleanup_empties_it() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = action(&bed, &["setup"]);
    c.env("EIC_ACTION_BIN", support::eic_connect_bin())
        .env("EIC_ACTION_OS_USER", bed.os_user())
        .env("EIC_ACTION_SSH_CONFIG", "~/.ssh/config")
        .env("EIC_ACTION_CONNECT", "direct")
        .env("EIC_ACTION_REGION", bed.region());
    ok(c);
    let ssh_dir = bed.home().join(".ssh");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&ssh_dir), 0o700);
    assert_eq!(mode(&ssh_config_path(&bed)), 0o600);
    let config = read_config(&bed);
    assert_block_then(&config, "");
    assert!(
        config.contains(&format!(
            " proxy --region {} --connect direct ",
            bed.region()
        )),
        "{config}"
    );
    let port = bed.sshd_port().to_string();
    tool_ok(
        &bed,
        "ssh",
        &["-p", &port, "-o", "BatchMode=yes", &web.id, "true"],
    );
    ok(action(&bed, &["cleanup"]));
    assert_eq!(read_config(&bed), "");
}

#[test]
fn targets_are_pre_connected_during_setup() {
    let bed = TestBed::start();
    let web1 = bed.add_instance(InstanceSpec::named("web-1"));
    let web2 = bed.add_instance(InstanceSpec::named("web-2"));
    let original = write_users_config(&bed);
    let user = bed.os_user();
    let targets = format!("{}, eic-web-2", web1.id);

    let mut c = action(&bed, &["setup"]);
    c.env("EIC_ACTION_BIN", support::eic_connect_bin())
        .env("EIC_ACTION_OS_USER", &user)
        .env("EIC_ACTION_TARGETS", &targets);
    let out = ok(c);
    let log = stderr(&out);
    assert!(
        log.contains(&format!("pre-connecting {}", web1.id)),
        "{log}"
    );
    assert!(log.contains("pre-connecting eic-web-2"), "{log}");
    let config = read_config(&bed);
    assert_block_then(&config, &original);
    assert!(
        config.contains(&format!(
            "# eic-connect action: pre-connected: {} eic-web-2\n",
            web1.id
        )),
        "{config}"
    );

    // Each target was reached: a key pushed for it, its host key recorded
    // under its instance id.
    let pushes = bed.pushes();
    for web in [&web1, &web2] {
        assert!(
            pushes
                .iter()
                .any(|p| p.instance_id == web.id && p.os_user == user),
            "{} not pushed to: {pushes:?}",
            web.id
        );
        let known = bed.home().join(".local/state/eic-connect/known_hosts");
        let found = Command::new("ssh-keygen")
            .arg("-F")
            .arg(&web.id)
            .arg("-f")
            .arg(&known)
            .output()
            .unwrap();
        assert!(found.status.success(), "{} not in known_hosts", web.id);
    }
    // So the job's next ssh to them costs no key push.
    let before = bed.pushes().len();
    tool_ok(&bed, "ssh", &[&web1.id, "true"]);
    tool_ok(&bed, "ssh", &["eic-web-2", "true"]);
    assert_eq!(bed.pushes().len(), before, "{:?}", bed.pushes());

    // With connection reuse in the block, each target has a master until
    // cleanup stops it.
    let reuse = config.lines().any(|l| {
        let l = l.trim_start().to_ascii_lowercase();
        l.starts_with("controlmaster") || l.starts_with("controlpath")
    });
    if reuse {
        for t in [web1.id.as_str(), "eic-web-2"] {
            let check = tool(&bed, "ssh", &["-O", "check", t]);
            assert!(
                check.status.success(),
                "no master for {t}: {}",
                check.stderr
            );
        }
    }
    ok(action(&bed, &["cleanup"]));
    assert_eq!(read_config(&bed), original);
    if reuse {
        // The block is gone, so ask with the options it had.
        let block = config
            .split_once(&format!("{END}\n"))
            .map(|(b, _)| b.to_owned())
            .unwrap();
        std::fs::write(bed.dir().join("block"), &block).unwrap();
        for t in [web1.id.as_str(), "eic-web-2"] {
            let mut c = Command::new("ssh");
            bed.apply_env(&mut c);
            let out = c
                .arg("-F")
                .arg(bed.dir().join("block"))
                .args(["-O", "check", t])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            assert!(!out.status.success(), "the master for {t} outlived cleanup");
        }
    }
    assert_signed(&bed);
}

#[test]
fn a_target_that_cannot_be_reached_fails_setup_with_ssh_s_reason() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let original = write_users_config(&bed);
    let mut c = action(&bed, &["setup"]);
    c.env("EIC_ACTION_BIN", support::eic_connect_bin())
        .env("EIC_ACTION_OS_USER", bed.os_user())
        .env("EIC_ACTION_TARGETS", "eic-web-1 eic-nope");
    let err = stderr(&fails(c));
    assert!(
        err.contains("eic-connect action: error: could not pre-connect eic-nope: "),
        "{err}"
    );
    assert!(
        err.contains("no instance matches"),
        "eic-connect's reason: {err}"
    );
    assert!(err.contains("hint: "), "{err}");
    // The always() cleanup step still leaves the user's file as it was.
    ok(action(&bed, &["cleanup"]));
    assert_eq!(read_config(&bed), original);

    // A target that looks like an option is refused before anything runs.
    let mut c = action(&bed, &["setup"]);
    c.env("EIC_ACTION_BIN", support::eic_connect_bin())
        .env("EIC_ACTION_TARGETS", "-oProxyCommand=true");
    let err = stderr(&fails(c));
    assert!(
        err.contains("not a host to pre-connect: -oProxyCommand=true"),
        "{err}"
    );
    assert_eq!(read_config(&bed), original);
}

#[test]
fn a_block_without_its_end_mark_is_left_for_a_person_to_mend() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let damaged = format!("Host a\n    User x\n{BEGIN}\nHost i-*\n    User y\nHost b\n");
    std::fs::write(ssh.join("config"), &damaged).unwrap();
    for args in [&["setup"][..], &["cleanup"]] {
        let mut c = action_in(dir.path(), args);
        c.env("EIC_ACTION_BIN", support::eic_connect_bin());
        let err = stderr(&fails(c));
        assert!(
            err.contains("without \"# <<< eic-connect action <<<\""),
            "{err}"
        );
        assert!(err.contains("hint: mend the file by hand"), "{err}");
        assert_eq!(
            std::fs::read_to_string(ssh.join("config")).unwrap(),
            damaged
        );
    }
}

// ------------------------------------------ action.yml and the workflows

/// check-jsonschema from PATH (pipx, a virtualenv), else as python3's
/// module (`python3 -m pip install check-jsonschema`, as .ci/run does).
fn check_jsonschema(schema: &str, file: &Path) -> Output {
    let mut c = if support::cmd::which("check-jsonschema").is_empty() {
        let mut c = Command::new("python3");
        c.args(["-m", "check_jsonschema"]);
        c
    } else {
        Command::new("check-jsonschema")
    };
    c.args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .expect("run check-jsonschema (.ci/run installs it)")
}

#[test]
fn action_and_workflows_pass_the_official_schemas_and_broken_copies_do_not() {
    let action = repo_file("action.yml");
    let out = check_jsonschema("vendor.github-actions", &action);
    assert!(
        out.status.success(),
        "action.yml: {}{}\n(.ci/run installs check-jsonschema: python3 -m pip install check-jsonschema)",
        stdout(&out),
        stderr(&out)
    );
    let mut workflows: Vec<PathBuf> = std::fs::read_dir(repo_file(".github/workflows"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    workflows.sort();
    assert!(workflows.iter().any(|p| p.ends_with("release.yml")));
    for w in &workflows {
        let out = check_jsonschema("vendor.github-workflows", w);
        assert!(
            out.status.success(),
            "{}: {}{}",
            w.display(),
            stdout(&out),
            stderr(&out)
        );
    }

    // The checks can fail: a composite step without its `shell`, a job
    // without `runs-on`.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&action).unwrap();
    let broken: String = text
        .lines()
        .filter(|l| l.trim() != "shell: bash")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(broken, text);
    std::fs::write(dir.path().join("action.yml"), broken).unwrap();
    let out = check_jsonschema("vendor.github-actions", &dir.path().join("action.yml"));
    assert!(!out.status.success(), "a step without shell passed");
    assert!(
        stdout(&out).contains("Schema validation errors"),
        "{}",
        stdout(&out)
    );
    let release = std::fs::read_to_string(repo_file(".github/workflows/release.yml")).unwrap();
    let broken = release.replace("runs-on:", "run-on:");
    assert_ne!(broken, release);
    std::fs::write(dir.path().join("release.yml"), broken).unwrap();
    let out = check_jsonschema("vendor.github-workflows", &dir.path().join("release.yml"));
    assert!(!out.status.success(), "a job without runs-on passed");
}

/// Every input reaches the script; every variable action.yml sets is one
/// the script reads.
#[test]
fn action_yml_wires_every_input_to_the_script() {
    let action = std::fs::read_to_string(repo_file("action.yml")).unwrap();
    let script = std::fs::read_to_string(script()).unwrap();
    let inputs_section = action
        .split_once("\ninputs:\n")
        .and_then(|(_, rest)| rest.split_once("\noutputs:\n"))
        .map(|(inputs, _)| inputs)
        .expect("inputs: then outputs:");
    let inputs: Vec<&str> = inputs_section
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':'))
        .collect();
    for want in [
        "version",
        "region",
        "profile",
        "role-to-assume",
        "os-user",
        "targets",
        "cleanup",
        "download-url",
    ] {
        assert!(inputs.contains(&want), "input {want} missing: {inputs:?}");
    }
    let (_, steps) = action.split_once("\nruns:\n").unwrap();
    for input in &inputs {
        assert!(
            steps.contains(&format!("inputs.{input} "))
                || steps.contains(&format!("inputs.{input}}}")),
            "input {input} is not used"
        );
    }
    let vars: Vec<&str> = steps
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .filter(|k| k.starts_with("EIC_ACTION_"))
        .collect();
    assert!(vars.len() >= 10, "{vars:?}");
    for v in vars {
        assert!(
            script.contains(&format!("${{{v}")) || script.contains(&format!("${v}")),
            "action.yml sets {v}, which scripts/action.sh does not read"
        );
    }
}

/// The archive the action downloads is the one the release workflow makes
/// and the one cargo-binstall looks for.
#[test]
fn the_action_binstall_and_the_release_workflow_agree_on_archive_names() {
    let dir = tempfile::tempdir().unwrap();
    let target = runner_target();
    // The action: its own version (Cargo.toml) from the action's repository.
    let mut c = action_in(dir.path(), &["url"]);
    c.env("EIC_ACTION_REPOSITORY", "owner/eic-connect");
    let url = stdout(&ok(c)).trim().to_owned();
    assert_eq!(
        url,
        format!(
            "https://github.com/owner/eic-connect/releases/download/v{VERSION}/eic-connect-v{VERSION}-{target}.tar.gz"
        )
    );
    // The repository from where the runner checked the action out.
    let mut c = action_in(dir.path(), &["url"]);
    c.env(
        "GITHUB_ACTION_PATH",
        "/home/runner/work/_actions/someone/eic-connect/v1",
    )
    .env("EIC_ACTION_VERSION", "1.2.3");
    assert_eq!(
        stdout(&ok(c)).trim(),
        format!(
            "https://github.com/someone/eic-connect/releases/download/v1.2.3/eic-connect-v1.2.3-{target}.tar.gz"
        )
    );

    // cargo-binstall: Cargo.toml's templates, filled in as binstall does.
    let cargo = std::fs::read_to_string(repo_file("Cargo.toml")).unwrap();
    let meta = cargo
        .split_once("[package.metadata.binstall]\n")
        .expect("binstall metadata in Cargo.toml")
        .1;
    let value = |key: &str| -> String {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} in [package.metadata.binstall]"))
            .trim_matches('"')
            .to_owned()
    };
    let fill = |t: &str| {
        t.replace("{ repo }", "https://github.com/owner/eic-connect")
            .replace("{ name }", "eic-connect")
            .replace("{ version }", VERSION)
            .replace("{ target }", &target)
            .replace("{ archive-suffix }", ".tar.gz")
            .replace("{ bin }", "eic-connect")
            .replace("{ binary-ext }", "")
    };
    assert_eq!(fill(&value("pkg-url")), url);
    assert_eq!(value("pkg-fmt"), "tgz");
    let bin_dir = fill(&value("bin-dir"));
    assert_eq!(
        bin_dir,
        format!("eic-connect-v{VERSION}-{target}/eic-connect"),
        "the path inside the archive the action's test serves"
    );

    // The release workflow: that name, that layout, that checksum file, for
    // every target the action picks.
    let release = std::fs::read_to_string(repo_file(".github/workflows/release.yml")).unwrap();
    for line in [
        "name=eic-connect-${GITHUB_REF_NAME}-${{ matrix.target }}",
        "cp \"$bin\" README.md LICENSE CHANGELOG.md \"$name/\"",
        "tar czf \"$name.tar.gz\" \"$name\"",
        "sha256sum \"$name.tar.gz\" > \"$name.tar.gz.sha256\"",
        "shasum -a 256 \"$name.tar.gz\" > \"$name.tar.gz.sha256\"",
        "sh scripts/action.sh install",
    ] {
        assert!(release.contains(line), "release.yml lacks: {line}");
    }
    for t in [
        "x86_64-unknown-linux-musl",
        "aarch64-unknown-linux-musl",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
    ] {
        assert!(
            release.contains(&format!("target: {t},"))
                || release.contains(&format!("target: {t} ")),
            "release.yml does not build {t}"
        );
    }
}
