//! A real OpenSSH ssh-agent: the user's own agent, as tests need it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::TestBed;

/// A running `ssh-agent -D`, killed when dropped (even if the test fails).
pub struct UserAgent {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl Drop for UserAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl UserAgent {
    /// Starts an agent on a socket in the bed's directory, with no keys.
    pub fn start(bed: &TestBed) -> UserAgent {
        let socket = bed.dir().join("user-agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        let agent = UserAgent { child, socket };
        // Only a hang takes this long.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent never made its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    /// Generates a key of the user's, adds it, and returns its SHA256
    /// fingerprint as `ssh-add -l` shows it.
    pub fn add_new_key(&self, bed: &TestBed, name: &str) -> String {
        let key = bed.generate_key(name);
        let out = Command::new("ssh-add")
            .arg(&key.private_key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .expect("ssh-add");
        assert!(
            out.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fp = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&key.private_key)
            .output()
            .expect("ssh-keygen");
        String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_owned()
    }

    /// What `ssh-add -l` lists.
    pub fn listed(&self) -> String {
        let out = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .expect("ssh-add");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
