//! A private, in-process SSH agent holding the one ephemeral key.
//!
//! ssh is pointed at it with `IdentityAgent=<socket>`, so the private key is
//! never a file on any filesystem: ssh asks this process to sign and the key
//! stays in our memory. The socket and the public-key file live in a 0700
//! runtime directory removed when the connection is done (or, for the
//! ssh-config proxy, in its private directory); the key itself is dropped
//! (and zeroed) when ssh is done, and at the latest when the push's 60
//! seconds are over. A connection ssh binds as *forwarded* never reaches the
//! key: it is relayed to the user's own agent.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ssh_encoding::{Decode, Encode, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aws::push::KEY_LIFETIME;
use crate::key::EphemeralKey;

/// Where the key's push stands. ssh may start while it is in flight: ssh
/// asks its agent for identities only at user authentication, after the
/// TCP connection, version exchange and key exchange, and the agent holds
/// that answer until the push is done (and offers nothing if it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    InFlight,
    /// Accepted at this instant: the key logs in for 60 s from then.
    Done(Instant),
    Failed,
}

/// The push's progress, as the agent watches it.
pub type PushWatch = watch::Receiver<Push>;

/// A push already done at `at`.
pub fn pushed_at(at: Instant) -> PushWatch {
    watch::channel(Push::Done(at)).1
}

/// The push's outcome once it is known (a dropped sender means it failed).
async fn outcome(push: &mut PushWatch) -> Push {
    match push.wait_for(|p| *p != Push::InFlight).await {
        Ok(state) => *state,
        Err(_) => Push::Failed,
    }
}

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
            .map_err(|err| {
                runtime_failure(
                    format!("could not create runtime directory {}", path.display()),
                    &err,
                )
            })?;
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

/// A file-system failure in the runtime directory, with what to do.
fn runtime_failure(what: String, err: &std::io::Error) -> anyhow::Error {
    anyhow::Error::new(
        crate::error::Failure::new(format!(
            "{}: {err}",
            crate::sanitize::terminal_safe(&what)
        ))
        .hint("eic-connect keeps its agent socket and public key there while ssh runs: free some space, or point XDG_RUNTIME_DIR (or TMPDIR) at a writable directory"),
    )
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
    /// Identities and signatures wait for the push.
    push: PushWatch,
    /// Where a forwarded connection is relayed: the user's own agent.
    forward_to: Option<PathBuf>,
}

impl Agent {
    /// Starts serving `key` on a socket at `socket`, and writes its public
    /// half to `identity_file` for ssh's `IdentityFile`. The key is offered
    /// once `push` is done, and wiped when the push's 60 seconds are over
    /// (it cannot log in anywhere by then) or at once if the push failed.
    ///
    /// A connection that ssh binds as *forwarded* (`ssh -A`, `ForwardAgent
    /// yes`) never reaches the key: it is relayed to `forward_to`, the
    /// user's own agent, or refused when there is none.
    pub fn start(
        key: EphemeralKey,
        socket: PathBuf,
        identity_file: Option<PathBuf>,
        push: PushWatch,
        forward_to: Option<PathBuf>,
    ) -> anyhow::Result<Agent> {
        if let Some(file) = &identity_file {
            std::fs::write(file, format!("{}\n", key.public_openssh())).map_err(|err| {
                runtime_failure(format!("could not write {}", file.display()), &err)
            })?;
        }
        let listener = UnixListener::bind(&socket).map_err(|err| {
            runtime_failure(format!("could not listen on {}", socket.display()), &err)
        })?;
        let key = Arc::new(Mutex::new(Some(key)));
        let served = Served {
            key: Arc::clone(&key),
            push: push.clone(),
            forward_to,
        };
        let serving = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, served.clone()));
            }
        });
        let expiry = {
            let key = Arc::clone(&key);
            let mut push = push;
            tokio::spawn(async move {
                if let Push::Done(at) = outcome(&mut push).await {
                    let expires = at + KEY_LIFETIME;
                    tokio::time::sleep_until(tokio::time::Instant::from_std(expires)).await;
                    tracing::debug!("ephemeral key expired and was wiped from memory");
                } else {
                    tracing::debug!("the push failed: ephemeral key wiped from memory");
                }
                forget(&key);
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
        push: PushWatch,
        forward_to: Option<PathBuf>,
    ) -> anyhow::Result<Agent> {
        Agent::start(
            key,
            dir.path().join("agent.sock"),
            Some(dir.identity_file()),
            push,
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
    let len = usize::try_from(u32::decode(&mut len.as_slice()).ok()?).ok()?;
    if len == 0 || len > MAX_MESSAGE {
        return None;
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

/// `msg` with its length prefix, ready to send.
fn framed(msg: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(msg.len().checked_add(4)?);
    msg.encode(&mut out).ok()?;
    Some(out)
}

async fn serve(mut stream: UnixStream, mut served: Served) {
    while let Some(msg) = read_message(&mut stream).await {
        if session_bind_forwarding(&msg) == Some(true) {
            tracing::debug!("agent: a forwarded connection; the ephemeral key is not offered");
            return forwarded(stream, &msg, served.forward_to.as_deref()).await;
        }
        let asks_for_key = matches!(
            msg.first(),
            Some(&(SSH_AGENTC_REQUEST_IDENTITIES | SSH_AGENTC_SIGN_REQUEST))
        );
        let offered = if asks_for_key {
            if *served.push.borrow() == Push::InFlight {
                tracing::debug!("agent: ssh asks for the key; waiting for the push");
            }
            // A push that failed, or was abandoned, offers nothing.
            matches!(outcome(&mut served.push).await, Push::Done(_))
        } else {
            true
        };
        let reply = {
            let guard = served
                .key
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            respond(&msg, guard.as_ref().filter(|_| offered))
        };
        let Some(framed) = framed(&reply) else { return };
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
        if let Some(framed) = framed(bind)
            && theirs.write_all(&framed).await.is_ok()
        {
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
        let Some(framed) = framed(reply) else { return };
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// For a `session-bind@openssh.com` extension message, whether it binds a
/// forwarded connection; `None` for any other message.
fn session_bind_forwarding(msg: &[u8]) -> Option<bool> {
    let (&kind, mut rest) = msg.split_first()?;
    // The extension's name, read into room for no more than ours.
    let mut name = [0u8; SESSION_BIND.len()];
    if kind != SSH_AGENTC_EXTENSION || rest.read_byten(&mut name).ok()? != SESSION_BIND {
        return None;
    }
    // host key, session identifier, signature, then the flag.
    for _ in 0..3 {
        rest.drain_prefixed().ok()?;
    }
    Some(u8::decode(&mut rest).is_ok_and(|flag| flag != 0))
}

/// Answers one agent request (without its length prefix).
pub fn respond(msg: &[u8], key: Option<&EphemeralKey>) -> Vec<u8> {
    let failure = vec![SSH_AGENT_FAILURE];
    match msg.split_first() {
        Some((&SSH_AGENTC_REQUEST_IDENTITIES, _)) => {
            let mut out = vec![SSH_AGENT_IDENTITIES_ANSWER];
            let listed = match key.and_then(|k| k.public_blob().ok()) {
                Some(blob) => 1u32
                    .encode(&mut out)
                    .and_then(|()| blob.encode(&mut out))
                    .and_then(|()| "eic-connect ephemeral key".encode(&mut out)),
                None => 0u32.encode(&mut out),
            };
            if listed.is_err() {
                return failure;
            }
            out
        }
        Some((&SSH_AGENTC_SIGN_REQUEST, mut rest)) => {
            // key blob, data, flags (ignored: ed25519 has no variants).
            let Ok(blob) = Vec::<u8>::decode(&mut rest) else {
                return failure;
            };
            let Ok(data) = Vec::<u8>::decode(&mut rest) else {
                return failure;
            };
            let Some(key) = key else { return failure };
            if key.public_blob().ok() != Some(blob) {
                return failure;
            }
            let mut out = vec![SSH_AGENT_SIGN_RESPONSE];
            match key.sign(&data).map(|sig| sig.encode(&mut out)) {
                Ok(Ok(())) => {
                    tracing::debug!("agent: signed the authentication request");
                    out
                }
                _ => failure,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sign_request(blob: &[u8], data: &[u8]) -> Vec<u8> {
        let mut msg = vec![SSH_AGENTC_SIGN_REQUEST];
        blob.encode(&mut msg).unwrap();
        data.encode(&mut msg).unwrap();
        0u32.encode(&mut msg).unwrap();
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
            Vec::<u8>::decode(&mut rest).unwrap(),
            key.public_blob().unwrap()
        );
        assert_eq!(
            String::decode(&mut rest).unwrap(),
            "eic-connect ephemeral key"
        );
        assert!(rest.is_empty());
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
        let agent = Agent::start_in(key, &dir, pushed_at(Instant::now()), None).unwrap();
        let pub_line = std::fs::read_to_string(dir.path().join("id.pub")).unwrap();
        assert!(pub_line.starts_with("ssh-ed25519 "));

        let mut stream = UnixStream::connect(agent.socket()).await.unwrap();
        stream
            .write_all(&framed(&sign_request(&blob, b"hello")).unwrap())
            .await
            .unwrap();
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
            pushed_at(pushed),
            None,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(agent.holds_key(), "still within the push's 60 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!agent.holds_key(), "wiped once the push's 60 s are over");
    }

    /// Number of identities in an identities answer.
    fn identities(reply: &[u8]) -> u32 {
        assert_eq!(reply[0], SSH_AGENT_IDENTITIES_ANSWER);
        u32::from_be_bytes(reply[1..5].try_into().unwrap())
    }

    #[tokio::test]
    async fn identities_wait_for_the_push_and_a_failed_push_offers_none() {
        for (outcome, listed) in [(Push::Done(Instant::now()), 1), (Push::Failed, 0)] {
            let dir = RuntimeDir::create().unwrap();
            let (tx, rx) = watch::channel(Push::InFlight);
            let agent = Agent::start_in(EphemeralKey::generate().unwrap(), &dir, rx, None).unwrap();
            let mut stream = UnixStream::connect(agent.socket()).await.unwrap();
            let asked =
                tokio::spawn(
                    async move { ask(&mut stream, &[SSH_AGENTC_REQUEST_IDENTITIES]).await },
                );
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !asked.is_finished(),
                "no answer while the push is in flight"
            );
            tx.send(outcome).unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(5), asked)
                .await
                .expect("answered once the push is over")
                .unwrap();
            assert_eq!(identities(&reply), listed, "{outcome:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(agent.holds_key(), listed == 1, "{outcome:?}");
        }
    }

    fn session_bind(forwarding: bool) -> Vec<u8> {
        let mut msg = vec![SSH_AGENTC_EXTENSION];
        SESSION_BIND.encode(&mut msg).unwrap();
        for field in [&b"hostkey"[..], b"session-id", b"signature"] {
            field.encode(&mut msg).unwrap();
        }
        msg.push(u8::from(forwarding));
        msg
    }

    async fn ask(stream: &mut UnixStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(&framed(msg).unwrap()).await.unwrap();
        read_message(stream).await.unwrap()
    }

    #[test]
    fn malformed_sign_requests_fail() {
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        let whole = sign_request(&blob, b"data");
        // Every truncation short of the flags.
        let flags_at = whole.len() - 4;
        for len in 0..flags_at {
            assert_eq!(
                respond(&whole[..len], Some(&key)),
                vec![SSH_AGENT_FAILURE],
                "truncated to {len} bytes"
            );
        }
        // The data string claims more than there is, or more than any
        // message may hold.
        for claimed in [5u32, 0x0010_0000, u32::MAX] {
            let mut msg = vec![SSH_AGENTC_SIGN_REQUEST];
            blob.as_slice().encode(&mut msg).unwrap();
            claimed.encode(&mut msg).unwrap();
            msg.extend_from_slice(b"data");
            assert_eq!(
                respond(&msg, Some(&key)),
                vec![SSH_AGENT_FAILURE],
                "{claimed}"
            );
        }
        // Missing flags are no reason to refuse (they are not used).
        assert_eq!(
            respond(&whole[..flags_at], Some(&key))[0],
            SSH_AGENT_SIGN_RESPONSE
        );
    }

    #[test]
    fn session_binds_are_read_field_by_field() {
        let bind = session_bind(true);
        assert_eq!(session_bind_forwarding(&bind), Some(true));
        assert_eq!(session_bind_forwarding(&session_bind(false)), Some(false));
        // Without the flag: not forwarded (as ssh before 8.9 sent it).
        assert_eq!(
            session_bind_forwarding(&bind[..bind.len() - 1]),
            Some(false)
        );
        // Any field cut short: not a session bind at all.
        for len in 0..bind.len() - 1 {
            assert_eq!(session_bind_forwarding(&bind[..len]), None, "{len}");
        }
        for name in ["query", "session-bind@openssh.com.evil", "session-bind"] {
            let mut other = vec![SSH_AGENTC_EXTENSION];
            name.encode(&mut other).unwrap();
            other.extend_from_slice(&bind[1 + 4 + SESSION_BIND.len()..]);
            assert_eq!(session_bind_forwarding(&other), None, "{name}");
        }
        let mut huge = vec![SSH_AGENTC_EXTENSION];
        SESSION_BIND.encode(&mut huge).unwrap();
        u32::MAX.encode(&mut huge).unwrap();
        assert_eq!(session_bind_forwarding(&huge), None);
    }

    #[tokio::test]
    async fn messages_are_framed_and_bounded() {
        async fn read_after(bytes: &[u8]) -> Option<Vec<u8>> {
            let (mut ours, mut theirs) = UnixStream::pair().unwrap();
            let bytes = bytes.to_vec();
            // Written alongside: more than a socket buffer holds.
            let writer = tokio::spawn(async move {
                let _ = theirs.write_all(&bytes).await;
            });
            let read = read_message(&mut ours).await;
            drop(ours);
            let _ = writer.await;
            read
        }
        assert_eq!(read_after(&framed(b"\x0b").unwrap()).await, Some(vec![11]));
        assert_eq!(read_after(&[0, 0, 0, 1, 11, 0xff]).await, Some(vec![11]));
        // Empty, cut short, or longer than the agent accepts.
        assert_eq!(read_after(&[0, 0, 0, 0]).await, None);
        assert_eq!(read_after(&[0, 0, 0]).await, None);
        assert_eq!(read_after(&[0, 0, 0, 2, 11]).await, None);
        let too_long = u32::try_from(MAX_MESSAGE + 1).unwrap();
        let mut msg = too_long.to_be_bytes().to_vec();
        msg.resize(4 + MAX_MESSAGE + 1, 0);
        assert_eq!(read_after(&msg).await, None);
        let longest = u32::try_from(MAX_MESSAGE).unwrap();
        let mut msg = longest.to_be_bytes().to_vec();
        msg.resize(4 + MAX_MESSAGE, 0);
        assert_eq!(read_after(&msg).await.map(|m| m.len()), Some(MAX_MESSAGE));
        assert_eq!(read_after(&u32::MAX.to_be_bytes()).await, None);
    }

    proptest::proptest! {
        #[test]
        fn any_request_gets_an_answer_without_panicking(
            kind in proptest::sample::select(vec![
                SSH_AGENTC_REQUEST_IDENTITIES,
                SSH_AGENTC_SIGN_REQUEST,
                SSH_AGENTC_EXTENSION,
                0,
            ]),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..96),
        ) {
            static KEY: std::sync::LazyLock<EphemeralKey> =
                std::sync::LazyLock::new(|| EphemeralKey::generate().unwrap());
            let mut msg = vec![kind];
            msg.extend_from_slice(&body);
            let reply = respond(&msg, Some(&KEY));
            proptest::prop_assert!(!reply.is_empty());
            let _ = session_bind_forwarding(&msg);
        }
    }

    #[tokio::test]
    async fn a_forwarded_connection_never_sees_the_key() {
        let dir = RuntimeDir::create().unwrap();
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        let agent = Agent::start_in(key, &dir, pushed_at(Instant::now()), None).unwrap();
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
