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
use std::time::Duration;

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
const SSH_AGENTC_ADD_ID_CONSTRAINED: u8 = 25;
const SSH_AGENT_CONSTRAIN_LIFETIME: u8 = 1;
/// Agent messages we handle are small; anything larger is not ssh talking.
const MAX_MESSAGE: usize = 256 * 1024;

/// A directory only we can enter, removed with everything in it on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates `eic-connect.<pid>.<random>` (mode 0700) under
    /// `$XDG_RUNTIME_DIR`, else the temporary directory.
    pub fn create() -> anyhow::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
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
    identity_file: PathBuf,
    key: Arc<Mutex<Option<EphemeralKey>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts serving `key` on a socket in `dir`, and writes its public half
    /// to `dir/id.pub` for ssh's `IdentityFile`. After `lifetime` the key is
    /// forgotten: it cannot log in anywhere by then.
    pub fn start(key: EphemeralKey, dir: &RuntimeDir, lifetime: Duration) -> anyhow::Result<Agent> {
        let socket = dir.path().join("agent.sock");
        let identity_file = dir.path().join("id.pub");
        std::fs::write(&identity_file, format!("{}\n", key.public_openssh()))
            .with_context(|| format!("could not write {}", identity_file.display()))?;
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("could not listen on {}", socket.display()))?;
        let key = Arc::new(Mutex::new(Some(key)));

        let serving = {
            let key = Arc::clone(&key);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&key)));
                }
            })
        };
        let expiry = {
            let key = Arc::clone(&key);
            tokio::spawn(async move {
                tokio::time::sleep(lifetime).await;
                forget(&key);
                tracing::debug!("ephemeral key expired and was wiped from memory");
            })
        };
        Ok(Agent {
            socket,
            identity_file,
            key,
            tasks: vec![serving, expiry],
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn identity_file(&self) -> &Path {
        &self.identity_file
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

async fn serve(mut stream: UnixStream, key: Arc<Mutex<Option<EphemeralKey>>>) {
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_MESSAGE {
            return;
        }
        let mut msg = vec![0u8; len];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let reply = {
            let guard = key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            respond(&msg, guard.as_ref())
        };
        let mut framed = Vec::with_capacity(reply.len() + 4);
        put_string(&mut framed, &reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Answers one agent request (without its length prefix).
fn respond(msg: &[u8], key: Option<&EphemeralKey>) -> Vec<u8> {
    let failure = vec![SSH_AGENT_FAILURE];
    match msg.first().copied() {
        Some(SSH_AGENTC_REQUEST_IDENTITIES) => {
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
        Some(SSH_AGENTC_SIGN_REQUEST) => {
            let mut rest = &msg[1..];
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
        // Adding or removing keys, locking, extensions (session-bind):
        // this agent does none of them.
        _ => failure,
    }
}

/// A connection to an ssh-agent (the user's, via `SSH_AUTH_SOCK`).
pub struct AgentClient {
    stream: UnixStream,
}

impl AgentClient {
    /// Connects to the agent named by `SSH_AUTH_SOCK`, if there is one.
    pub async fn from_env() -> Option<AgentClient> {
        let path = std::env::var_os("SSH_AUTH_SOCK").filter(|p| !p.is_empty())?;
        let stream = UnixStream::connect(&path).await.ok()?;
        Some(AgentClient { stream })
    }

    async fn request(&mut self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut framed = zeroize::Zeroizing::new(Vec::with_capacity(msg.len() + 4));
        put_string(&mut framed, msg);
        self.stream.write_all(&framed).await?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        anyhow::ensure!(
            len > 0 && len <= MAX_MESSAGE,
            "bad reply length {len} from ssh-agent"
        );
        let mut reply = vec![0u8; len];
        self.stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    /// Adds `key` with a lifetime constraint: the agent itself deletes it
    /// after `lifetime`, whatever happens to this process.
    pub async fn add(&mut self, key: &EphemeralKey, lifetime: Duration) -> anyhow::Result<()> {
        let mut msg = zeroize::Zeroizing::new(vec![SSH_AGENTC_ADD_ID_CONSTRAINED]);
        msg.extend_from_slice(&key.agent_key_fields()?);
        put_string(&mut msg, b"eic-connect ephemeral key");
        msg.push(SSH_AGENT_CONSTRAIN_LIFETIME);
        msg.extend_from_slice(&(lifetime.as_secs().max(1) as u32).to_be_bytes());
        let reply = self.request(&msg).await?;
        anyhow::ensure!(
            reply.first() == Some(&SSH_AGENT_SUCCESS),
            "the ssh-agent refused the key"
        );
        Ok(())
    }

    /// Whether the agent currently holds the key with this public blob.
    pub async fn has(&mut self, blob: &[u8]) -> anyhow::Result<bool> {
        let reply = self.request(&[SSH_AGENTC_REQUEST_IDENTITIES]).await?;
        anyhow::ensure!(
            reply.first() == Some(&SSH_AGENT_IDENTITIES_ANSWER),
            "unexpected ssh-agent reply"
        );
        let mut rest = &reply[1..];
        let count = rest
            .get(..4)
            .map_or(0, |n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]));
        rest = rest.get(4..).unwrap_or_default();
        for _ in 0..count {
            let (Some(key), Some(_comment)) = (take_string(&mut rest), take_string(&mut rest))
            else {
                break;
            };
            if key == blob {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let s = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let agent = Agent::start(key, &dir, Duration::from_secs(60)).unwrap();
        let pub_line = std::fs::read_to_string(agent.identity_file()).unwrap();
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

    /// Our agent client against the real OpenSSH ssh-agent: the key goes in
    /// with a lifetime and can be found again.
    #[tokio::test]
    async fn adds_a_constrained_key_to_a_real_ssh_agent() {
        let dir = RuntimeDir::create().unwrap();
        let socket = dir.path().join("real-agent.sock");
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _agent = KillOnDrop(
            std::process::Command::new("ssh-agent")
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("ssh-agent (openssh-client) must be installed"),
        );
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut client = AgentClient {
            stream: UnixStream::connect(&socket).await.unwrap(),
        };
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        assert!(!client.has(&blob).await.unwrap());
        client.add(&key, Duration::from_secs(60)).await.unwrap();
        assert!(client.has(&blob).await.unwrap());
        // ssh-add -l shows it with the lifetime-bearing comment.
        let listed = std::process::Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&listed.stdout).contains(&key.fingerprint()));
    }

    #[tokio::test]
    async fn key_is_forgotten_after_its_lifetime() {
        let dir = RuntimeDir::create().unwrap();
        let agent = Agent::start(
            EphemeralKey::generate().unwrap(),
            &dir,
            Duration::from_millis(20),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(agent.key.lock().unwrap().is_none());
    }
}
