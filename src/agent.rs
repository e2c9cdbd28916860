//! A private, in-process SSH agent holding the one ephemeral key.
//!
//! ssh is pointed at it with `IdentityAgent=<socket>`, so the private key is
//! never a file on any filesystem: ssh asks this process to sign and the key
//! stays in our memory. The socket and the public-key file live in a 0700
//! runtime directory removed when the connection is done; the key itself is
//! dropped (and zeroed) as soon as it can no longer log in anywhere.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::key::{EphemeralKey, put_string};

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
const SSH_AGENT_SUCCESS: u8 = 6;
const SSH_AGENTC_EXTENSION: u8 = 27;
/// OpenSSH (8.9+) binds each agent connection to the session using it; the
/// last field says whether the connection is a *forwarded* one.
const SESSION_BIND: &[u8] = b"session-bind@openssh.com";
/// Agent messages we handle are small; anything larger is not ssh talking.
const MAX_MESSAGE: usize = 256 * 1024;

/// A directory only we can enter, removed with everything in it on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates `eic-connect.<pid>.<random>` (mode 0700) under
    /// `$XDG_RUNTIME_DIR`, else `$TMPDIR`, else `/tmp` (see `dirs`).
    pub fn create() -> anyhow::Result<Self> {
        let base = crate::dirs::runtime_base(&crate::dirs::ProcessEnv);
        sweep_stale(&base);
        let mut suffix = [0u8; 6];
        ssh_key::rand_core::RngCore::fill_bytes(&mut ssh_key::rand_core::OsRng, &mut suffix);
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let path = base.join(format!("eic-connect.{}.{hex}", std::process::id()));
        // `create` (not `create_all`) fails if anything is already there, so
        // a planted directory or symlink is never reused.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("could not create runtime directory {}", path.display()))?;
        Ok(RuntimeDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key's file, which ssh's `IdentityFile` names.
    pub fn identity_file(&self) -> PathBuf {
        self.path.join("id.pub")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes runtime directories left by eic-connect processes that no longer
/// exist (killed with SIGKILL, say). They never hold a private key, only a
/// socket and a public key, so this is tidiness, not secrecy.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("eic-connect."))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The running agent. Dropping it stops serving and wipes the key.
pub struct Agent {
    socket: PathBuf,
    key: Arc<Mutex<Option<EphemeralKey>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The key as one connection to the agent may use it.
#[derive(Clone)]
struct Served {
    key: Arc<Mutex<Option<EphemeralKey>>>,
    /// Where a forwarded connection is relayed: the user's own agent.
    forward_to: Option<PathBuf>,
}

impl Agent {
    /// Starts serving `key` on a socket at `socket`, and writes its public
    /// half to `identity_file` for ssh's `IdentityFile`. At `expires` (the
    /// push plus its 60 seconds) the key is wiped: it cannot log in anywhere
    /// by then.
    ///
    /// A connection that ssh binds as *forwarded* (`ssh -A`, `ForwardAgent
    /// yes`) never reaches the key: it is relayed to `forward_to`, the
    /// user's own agent, or refused when there is none.
    pub fn start(
        key: EphemeralKey,
        socket: PathBuf,
        identity_file: Option<PathBuf>,
        expires: std::time::Instant,
        forward_to: Option<PathBuf>,
    ) -> anyhow::Result<Agent> {
        if let Some(file) = &identity_file {
            std::fs::write(file, format!("{}\n", key.public_openssh()))
                .with_context(|| format!("could not write {}", file.display()))?;
        }
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("could not listen on {}", socket.display()))?;
        let key = Arc::new(Mutex::new(Some(key)));
        let served = Served {
            key: Arc::clone(&key),
            forward_to,
        };
        let serving = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, served.clone()));
            }
        });
        let expiry = {
            let key = Arc::clone(&key);
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(expires)).await;
                forget(&key);
                tracing::debug!("ephemeral key expired and was wiped from memory");
            })
        };
        Ok(Agent {
            socket,
            key,
            tasks: vec![serving, expiry],
        })
    }

    /// [`Agent::start`] in a runtime directory: `agent.sock` and `id.pub`.
    pub fn start_in(
        key: EphemeralKey,
        dir: &RuntimeDir,
        expires: std::time::Instant,
        forward_to: Option<PathBuf>,
    ) -> anyhow::Result<Agent> {
        Agent::start(
            key,
            dir.path().join("agent.sock"),
            Some(dir.identity_file()),
            expires,
            forward_to,
        )
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the key is still held (not yet expired or dropped).
    pub fn holds_key(&self) -> bool {
        self.key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        forget(&self.key);
    }
}

fn forget(key: &Mutex<Option<EphemeralKey>>) {
    // A poisoned lock still holds the key: take it anyway.
    let mut guard = key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.take();
}

/// Reads one agent message (without its length prefix); `None` at the end
/// of the connection or for a length no ssh client sends.
async fn read_message(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return None;
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

async fn serve(mut stream: UnixStream, served: Served) {
    while let Some(msg) = read_message(&mut stream).await {
        if session_bind_forwarding(&msg) == Some(true) {
            tracing::debug!("agent: a forwarded connection; the ephemeral key is not offered");
            return forwarded(stream, &msg, served.forward_to.as_deref()).await;
        }
        let reply = {
            let guard = served
                .key
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            respond(&msg, guard.as_ref())
        };
        let mut framed = Vec::with_capacity(reply.len() + 4);
        put_string(&mut framed, &reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// A forwarded connection: relayed to the user's own agent (the bind message
/// first, so it binds there too), or, with none, answered with no keys.
async fn forwarded(mut stream: UnixStream, bind: &[u8], forward_to: Option<&Path>) {
    if let Some(path) = forward_to
        && let Ok(mut theirs) = UnixStream::connect(path).await
    {
        let mut framed = Vec::with_capacity(bind.len() + 4);
        put_string(&mut framed, bind);
        if theirs.write_all(&framed).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut theirs).await;
        }
        return;
    }
    let mut first = true;
    loop {
        let reply: &[u8] = if first {
            &[SSH_AGENT_SUCCESS]
        } else {
            match read_message(&mut stream).await {
                Some(msg) if msg.first() == Some(&SSH_AGENTC_REQUEST_IDENTITIES) => {
                    &[SSH_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 0]
                }
                Some(_) => &[SSH_AGENT_FAILURE],
                None => return,
            }
        };
        first = false;
        let mut framed = Vec::with_capacity(reply.len() + 4);
        put_string(&mut framed, reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// For a `session-bind@openssh.com` extension message, whether it binds a
/// forwarded connection; `None` for any other message.
fn session_bind_forwarding(msg: &[u8]) -> Option<bool> {
    let (&kind, mut rest) = msg.split_first()?;
    if kind != SSH_AGENTC_EXTENSION || take_string(&mut rest)? != SESSION_BIND {
        return None;
    }
    // host key, session identifier, signature, then the flag.
    for _ in 0..3 {
        take_string(&mut rest)?;
    }
    Some(rest.first().is_some_and(|&b| b != 0))
}

/// Answers one agent request (without its length prefix).
fn respond(msg: &[u8], key: Option<&EphemeralKey>) -> Vec<u8> {
    let failure = vec![SSH_AGENT_FAILURE];
    match msg.split_first() {
        Some((&SSH_AGENTC_REQUEST_IDENTITIES, _)) => {
            let mut out = vec![SSH_AGENT_IDENTITIES_ANSWER];
            match key.and_then(|k| k.public_blob().ok()) {
                Some(blob) => {
                    out.extend_from_slice(&1u32.to_be_bytes());
                    put_string(&mut out, &blob);
                    put_string(&mut out, b"eic-connect ephemeral key");
                }
                None => out.extend_from_slice(&0u32.to_be_bytes()),
            }
            out
        }
        Some((&SSH_AGENTC_SIGN_REQUEST, mut rest)) => {
            let (Some(blob), Some(data)) = (take_string(&mut rest), take_string(&mut rest)) else {
                return failure;
            };
            let Some(key) = key else { return failure };
            if key.public_blob().ok().as_deref() != Some(blob) {
                return failure;
            }
            match key.sign(data) {
                Ok(sig) => {
                    tracing::debug!("agent: signed the authentication request");
                    let mut out = vec![SSH_AGENT_SIGN_RESPONSE];
                    put_string(&mut out, &sig);
                    out
                }
                Err(_) => failure,
            }
        }
        // The session binding of ssh's own (not forwarded) connection.
        Some((&SSH_AGENTC_EXTENSION, _)) if session_bind_forwarding(msg) == Some(false) => {
            vec![SSH_AGENT_SUCCESS]
        }
        // Adding or removing keys, locking, other extensions: this agent
        // does none of them.
        _ => failure,
    }
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let end = len.checked_add(4)?;
    let s = buf.get(4..end)?;
    *buf = buf.get(end..)?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sign_request(blob: &[u8], data: &[u8]) -> Vec<u8> {
        let mut msg = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut msg, blob);
        put_string(&mut msg, data);
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg
    }

    #[test]
    fn lists_the_one_identity() {
        let key = EphemeralKey::generate().unwrap();
        let reply = respond(&[SSH_AGENTC_REQUEST_IDENTITIES], Some(&key));
        assert_eq!(reply[0], SSH_AGENT_IDENTITIES_ANSWER);
        assert_eq!(&reply[1..5], &1u32.to_be_bytes());
        let mut rest = &reply[5..];
        assert_eq!(
            take_string(&mut rest).unwrap(),
            key.public_blob().unwrap().as_slice()
        );
        // Once forgotten, it lists nothing and signs nothing.
        assert_eq!(
            respond(&[SSH_AGENTC_REQUEST_IDENTITIES], None),
            vec![12, 0, 0, 0, 0]
        );
        let blob = key.public_blob().unwrap();
        assert_eq!(
            respond(&sign_request(&blob, b"x"), None),
            vec![SSH_AGENT_FAILURE]
        );
    }

    #[test]
    fn signs_only_for_its_own_key_and_refuses_garbage() {
        let key = EphemeralKey::generate().unwrap();
        let other = EphemeralKey::generate().unwrap();
        let ok = respond(
            &sign_request(&key.public_blob().unwrap(), b"data"),
            Some(&key),
        );
        assert_eq!(ok[0], SSH_AGENT_SIGN_RESPONSE);
        let wrong = respond(
            &sign_request(&other.public_blob().unwrap(), b"data"),
            Some(&key),
        );
        assert_eq!(wrong, vec![SSH_AGENT_FAILURE]);
        assert_eq!(
            respond(&[SSH_AGENTC_SIGN_REQUEST, 0, 0], Some(&key)),
            vec![SSH_AGENT_FAILURE]
        );
        assert_eq!(
            respond(&[SSH_AGENTC_SIGN_REQUEST, 255, 255, 255, 255], Some(&key)),
            vec![SSH_AGENT_FAILURE]
        );
        assert_eq!(respond(&[27], Some(&key)), vec![SSH_AGENT_FAILURE]);
        assert_eq!(respond(&[], Some(&key)), vec![SSH_AGENT_FAILURE]);
    }

    #[test]
    fn runtime_dir_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().to_owned();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(path.join("x"), "y").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn serves_over_the_socket_until_dropped() {
        let dir = RuntimeDir::create().unwrap();
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        let expires = std::time::Instant::now() + Duration::from_secs(60);
        let agent = Agent::start_in(key, &dir, expires, None).unwrap();
        let pub_line = std::fs::read_to_string(dir.path().join("id.pub")).unwrap();
        assert!(pub_line.starts_with("ssh-ed25519 "));

        let mut stream = UnixStream::connect(agent.socket()).await.unwrap();
        let mut framed = Vec::new();
        put_string(&mut framed, &sign_request(&blob, b"hello"));
        stream.write_all(&framed).await.unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[0], SSH_AGENT_SIGN_RESPONSE);

        let key = Arc::clone(&agent.key);
        drop(agent);
        assert!(
            key.lock().unwrap().is_none(),
            "dropping the agent wipes the key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn key_is_forgotten_when_the_push_expires_not_60s_after_the_agent_starts() {
        let dir = RuntimeDir::create().unwrap();
        // Pushed 50 s before the agent started: 10 s of the 60 are left.
        let pushed = std::time::Instant::now() - Duration::from_secs(50);
        let agent = Agent::start_in(
            EphemeralKey::generate().unwrap(),
            &dir,
            pushed + Duration::from_secs(60),
            None,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(agent.holds_key(), "still within the push's 60 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!agent.holds_key(), "wiped once the push's 60 s are over");
    }

    fn session_bind(forwarding: bool) -> Vec<u8> {
        let mut msg = vec![SSH_AGENTC_EXTENSION];
        put_string(&mut msg, SESSION_BIND);
        for field in [&b"hostkey"[..], b"session-id", b"signature"] {
            put_string(&mut msg, field);
        }
        msg.push(u8::from(forwarding));
        msg
    }

    async fn ask(stream: &mut UnixStream, msg: &[u8]) -> Vec<u8> {
        let mut framed = Vec::new();
        put_string(&mut framed, msg);
        stream.write_all(&framed).await.unwrap();
        read_message(stream).await.unwrap()
    }

    #[tokio::test]
    async fn a_forwarded_connection_never_sees_the_key() {
        let dir = RuntimeDir::create().unwrap();
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        let expires = std::time::Instant::now() + Duration::from_secs(60);
        let agent = Agent::start_in(key, &dir, expires, None).unwrap();
        // ssh's own connection: bound, not forwarded, the key is there.
        let mut own = UnixStream::connect(agent.socket()).await.unwrap();
        assert_eq!(
            ask(&mut own, &session_bind(false)).await,
            [SSH_AGENT_SUCCESS]
        );
        let listed = ask(&mut own, &[SSH_AGENTC_REQUEST_IDENTITIES]).await;
        assert_eq!(&listed[1..5], &1u32.to_be_bytes());
        // A forwarded one: no identities, no signatures.
        let mut fwd = UnixStream::connect(agent.socket()).await.unwrap();
        assert_eq!(
            ask(&mut fwd, &session_bind(true)).await,
            [SSH_AGENT_SUCCESS]
        );
        assert_eq!(
            ask(&mut fwd, &[SSH_AGENTC_REQUEST_IDENTITIES]).await,
            [SSH_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 0]
        );
        assert_eq!(
            ask(&mut fwd, &sign_request(&blob, b"x")).await,
            [SSH_AGENT_FAILURE]
        );
        assert_eq!(session_bind_forwarding(&[SSH_AGENTC_EXTENSION]), None);
        assert_eq!(session_bind_forwarding(&session_bind(true)[..20]), None);
    }
}
