//! Integration-test bed for eic-connect: an in-process stand-in for the EC2
//! and EC2 Instance Connect APIs plus a real OpenSSH sshd acting as the
//! instances.
//!
//! ```ignore
//! mod support;
//! use support::{InstanceSpec, TestBed};
//!
//! let bed = TestBed::start();
//! let web = bed.add_instance(InstanceSpec::named("web-1"));
//! let out = bed.command().args(["-p", &bed.sshd_port().to_string(), "web-1", "echo", "hi"]).output().unwrap();
//! assert!(bed.signature_failures().is_empty());
//! ```
//!
//! Every bed has its own temp dir, API port and sshd port; nothing is global,
//! so tests can run in parallel (threads or processes). The API is blocking:
//! the stand-in runs on its own tokio runtime on a background thread.
//!
//! A bed holds 15 instances by default; `BedOptions { slots: 500, .. }`
//! makes room for more, up to [`sshd::MAX_SLOTS`] (4,000): slots 1-250 are
//! 127.0.1.k / 127.0.2.k, later ones 127.1.1.k / 127.1.2.k and so on; sshd
//! is then one process per 16 addresses (63 for 500 slots), each accepting
//! bursts of hundreds of simultaneous logins.
//!
//! Besides DescribeInstances, the EC2 stand-in answers StartInstances and
//! StopInstances: stopped → pending → running and running/pending →
//! stopping → stopped, each second step after [`TestBed::set_start_delay`]
//! (default 1 s) of real time; sshd serves an instance only while running.
//! [`TestBed::state_of`] reads the current state.
//!
//! Throttling: [`TestBed::set_rate_limit`] puts a token bucket on an action;
//! calls without a token get the service's own throttling error
//! (`RequestLimitExceeded`, HTTP 503, XML, for EC2; `ThrottlingException`,
//! JSON 1.1, for EC2 Instance Connect), do nothing, are recorded in
//! [`TestBed::requests`] with that error code and are counted by
//! [`TestBed::throttled`]. The order of checks is: SigV4, rate limit,
//! injected failures ([`TestBed::fail_next`]), the operation.
//!
//! Session Manager (`ssm.rs`, `ssm_agent.rs`): the API stand-in also
//! answers Systems Manager's `StartSession`, `TerminateSession` and
//! `DescribeInstanceInformation` for instances made with
//! `InstanceSpec::managed(true)`, and a TLS WebSocket server at the
//! `StreamUrl`s it hands out plays the SSM Agent of an `AWS-StartSSHSession`
//! port session, relaying to the instance's sshd; its certificate comes
//! from the same CA as the endpoint stand-in's (`eice-ca.pem`), so
//! `AWS_CA_BUNDLE` covers both. [`TestBed::ssm_sessions`] records what each
//! session saw; [`TestBed::set_ssm_faults`] drops, reorders and duplicates
//! its messages.
//!
//! Latency and TLS, for measuring what users feel
//! ([`latency`], `benches/latency.rs`): `BedOptions { https: true, .. }`
//! serves the API stand-in over TLS with a certificate from a CA made for
//! the bed (`api-ca.pem`; [`TestBed::command`] sets `AWS_CA_BUNDLE` to
//! `ca-bundle.pem`, which holds it and the endpoint stand-in's CA);
//! `BedOptions { api_latency: Some(d), .. }` puts a [`latency::DelayProxy`]
//! with one-way delay `d` in front of it ([`TestBed::endpoint`] is then the
//! proxy's address), and `InstanceSpec::latency(d)` gives an instance a
//! public address (127.B.3.H, [`sshd::delayed_ip`]) where a delay proxy to
//! its sshd listens ([`TestBed::ssh_proxy`]). Without them, nothing changes.
//!
//! Layout of `bed.dir()`:
//! `home/` `tmp/` `run/` (for the command under test), `akc.sh`,
//! `sshd_config.N`, `sshd.log`, `ssh_host_ed25519_key`, `eice-ca.pem`,
//! `api-ca.pem` and `ca-bundle.pem` (HTTPS mode), `addr/<ip>` (instance
//! id served on that address while running), `keys/<id>/<user>` (lines of
//! `<expiry-epoch> <public key>`), `clock_offset`, `clientkeys/`.

// Each test crate uses a different subset of the bed.
#![allow(dead_code)]

pub mod agent;
pub mod api;
pub mod cloudtrail;
pub mod cmd;
pub mod diag;
pub mod eice;
pub mod http;
pub mod iam;
pub mod latency;
pub mod load;
pub mod policy_eval;
pub mod sigv4;
pub mod sshd;
pub mod ssm;
pub mod ssm_agent;
pub mod timefmt;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::{Api, InstanceRec};
#[allow(unused_imports)]
pub use api::{ApiCall, Push, Service};
#[allow(unused_imports)]
pub use ssm::{SsmEnd, SsmSession, StreamFaults};

/// The AuthorizedKeysCommand script, written into every bed dir.
const AKC_SCRIPT: &str = include_str!("akc.sh");

/// Options for [`TestBed::start_with`].
#[derive(Debug, Clone)]
pub struct BedOptions {
    /// Region the stand-in expects in signatures (default `us-east-1`).
    pub region: String,
    /// If set, requests must carry and sign this `X-Amz-Security-Token`,
    /// and [`TestBed::command`] exports it as `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
    /// Listen on [::1] too, if the machine has IPv6 loopback (default true).
    pub ipv6: bool,
    /// How many instances the bed can hold, 1..=[`sshd::MAX_SLOTS`]
    /// (default 15). sshd listens on a private and a public address per
    /// slot ([`sshd::private_ip`], [`sshd::public_ip`]: 127.0.1.k and
    /// 127.0.2.k for the first 250), 16 addresses per sshd process.
    pub slots: u16,
    /// Serve the API stand-in over HTTPS, with a certificate for
    /// 127.0.0.1, ::1 and localhost from a CA made for this bed
    /// (`api-ca.pem`, [`TestBed::api_ca_pem`]). Default false: plain HTTP.
    pub https: bool,
    /// Put a delay proxy ([`latency::DelayProxy`]) with this one-way delay
    /// in front of the API stand-in: [`TestBed::endpoint`] is the proxy.
    /// `Some(Duration::ZERO)` adds no delay but counts connections and
    /// turns ([`TestBed::api_proxy`]). Default `None`: no proxy.
    pub api_latency: Option<Duration>,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            region: "us-east-1".into(),
            session_token: None,
            ipv6: true,
            slots: sshd::SLOTS,
            https: false,
            api_latency: None,
        }
    }
}

/// What to create with [`TestBed::add_instance`]. Build with
/// `InstanceSpec::named("web-1").state("stopped").public_ip(false)...`.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Becomes the `Name` tag (first in the tag set).
    pub name: Option<String>,
    /// pending, running, shutting-down, terminated, stopping or stopped.
    pub state: String,
    /// Give the instance a public IPv4 (127.0.2.k) and public DNS name.
    pub public_ip: bool,
    /// Give the instance the bed's IPv6 address (::1); one instance per bed.
    pub ipv6: bool,
    /// false: IPv6-only, EC2 reports no IPv4 address (needs `ipv6` and no
    /// public IP). Default true.
    pub ipv4: bool,
    /// Further tags, in order.
    pub tags: Vec<(String, String)>,
    /// `MetadataOptions.HttpEndpoint`: "enabled" or "disabled".
    pub metadata_http_endpoint: String,
    pub platform_details: String,
    pub image_id: String,
    pub instance_type: String,
    /// Defaults to `<region>a`.
    pub availability_zone: Option<String>,
    /// Force an instance id (default: random `i-` + 17 hex digits).
    pub id: Option<String>,
    /// false: the instance takes pushes but its sshd never accepts the
    /// pushed keys (no EC2 Instance Connect helper on its AMI), so logins
    /// fail with "Permission denied (publickey)". Default true.
    pub instance_connect: bool,
    /// The public address is one where nothing listens
    /// ([`sshd::unreachable_ip`]): connections to it are refused, as to an
    /// instance whose sshd is down. Default false.
    pub unreachable: bool,
    /// The public address is [`sshd::delayed_ip`], where a delay proxy
    /// with this one-way delay forwards to the instance's sshd (on its
    /// private address): ssh to the public address sees the latency, and
    /// [`TestBed::ssh_proxy`] counts its turns. Needs a public IP. Default
    /// `None`.
    pub latency: Option<Duration>,
    /// Managed by Systems Manager (`ssm.rs`): listed by
    /// DescribeInstanceInformation, takes Session Manager sessions while
    /// running and Online. Default false.
    pub managed: bool,
    /// Its SSM PingStatus when managed: Online, ConnectionLost or
    /// Inactive. Default Online.
    pub ssm_ping: String,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        InstanceSpec {
            name: None,
            state: "running".into(),
            public_ip: true,
            ipv6: false,
            ipv4: true,
            tags: Vec::new(),
            metadata_http_endpoint: "enabled".into(),
            platform_details: "Linux/UNIX".into(),
            image_id: "ami-0abcdef1234567890".into(),
            instance_type: "t3.micro".into(),
            availability_zone: None,
            id: None,
            instance_connect: true,
            unreachable: false,
            latency: None,
            managed: false,
            ssm_ping: "Online".into(),
        }
    }
}

impl InstanceSpec {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn named(name: &str) -> Self {
        InstanceSpec {
            name: Some(name.to_owned()),
            ..Self::default()
        }
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
    pub fn state(mut self, state: &str) -> Self {
        self.state = state.to_owned();
        self
    }
    pub fn public_ip(mut self, yes: bool) -> Self {
        self.public_ip = yes;
        self
    }
    pub fn ipv4(mut self, yes: bool) -> Self {
        self.ipv4 = yes;
        self
    }
    pub fn ipv6(mut self, yes: bool) -> Self {
        self.ipv6 = yes;
        self
    }
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), value.to_owned()));
        self
    }
    pub fn metadata_http_endpoint(mut self, value: &str) -> Self {
        self.metadata_http_endpoint = value.to_owned();
        self
    }
    pub fn platform_details(mut self, value: &str) -> Self {
        self.platform_details = value.to_owned();
        self
    }
    pub fn image_id(mut self, value: &str) -> Self {
        self.image_id = value.to_owned();
        self
    }
    pub fn instance_type(mut self, value: &str) -> Self {
        self.instance_type = value.to_owned();
        self
    }
    pub fn availability_zone(mut self, value: &str) -> Self {
        self.availability_zone = Some(value.to_owned());
        self
    }
    pub fn id(mut self, value: &str) -> Self {
        self.id = Some(value.to_owned());
        self
    }
    pub fn instance_connect(mut self, yes: bool) -> Self {
        self.instance_connect = yes;
        self
    }
    pub fn unreachable(mut self) -> Self {
        self.unreachable = true;
        self.public_ip = true;
        self
    }
    /// See [`InstanceSpec::latency`]: `one_way` each way (RTT = 2 × it).
    pub fn latency(mut self, one_way: Duration) -> Self {
        self.latency = Some(one_way);
        self.public_ip = true;
        self
    }
}

/// A snapshot of a fake instance (addresses are fixed; `state` is as of the
/// snapshot: use [`TestBed::instance`] for a fresh one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub slot: u16,
    pub name: Option<String>,
    pub state: String,
    /// 127.0.1.k (slots beyond 250: [`sshd::private_ip`])
    pub private_ip: String,
    /// 127.0.2.k ([`sshd::public_ip`]), if the spec asked for a public IP
    /// (127.0.3.k, [`sshd::delayed_ip`], with a latency).
    pub public_ip: Option<String>,
    /// "::1", if the spec asked for IPv6.
    pub ipv6: Option<String>,
    /// ip-127-0-1-k.ec2.internal (us-east-1) / ip-….<region>.compute.internal
    pub private_dns_name: String,
    /// ec2-127-0-2-k.compute-1.amazonaws.com (us-east-1) / ec2-….<region>.compute.amazonaws.com
    pub public_dns_name: Option<String>,
    pub availability_zone: String,
}

impl Instance {
    fn from_rec(r: &InstanceRec) -> Instance {
        Instance {
            id: r.id.clone(),
            slot: r.slot,
            name: r
                .tags
                .iter()
                .find(|(k, _)| k == "Name")
                .map(|(_, v)| v.clone()),
            state: r.state.clone(),
            private_ip: r.private_ip.clone(),
            public_ip: r.public_ip.clone(),
            ipv6: r.ipv6.clone(),
            private_dns_name: r.private_dns.clone(),
            public_dns_name: r.public_dns.clone(),
            availability_zone: r.availability_zone.clone(),
        }
    }
}

/// An ed25519 key pair made with ssh-keygen in the bed dir.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// Private key file (mode 0600), usable with `ssh -i`.
    pub private_key: PathBuf,
    /// The OpenSSH public key line, e.g. `ssh-ed25519 AAAA… name`.
    pub public_key: String,
}

pub struct TestBed {
    api: Arc<Api>,
    endpoint: String,
    sshd: Option<sshd::Sshd>,
    server: Option<(JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    /// The EC2 Instance Connect Endpoint stand-in (`eice.rs`).
    eice: Option<eice::EiceServer>,
    /// The Session Manager data channel stand-in (`ssm_agent.rs`).
    ssm: Option<ssm_agent::StreamServer>,
    /// The delay proxy in front of the API stand-in ([`BedOptions::api_latency`]).
    api_proxy: Option<latency::DelayProxy>,
    /// The delay proxy in front of the Session Manager stream server (with
    /// [`BedOptions::api_latency`]: the data channel is as far away as the
    /// API).
    ssm_proxy: Option<Arc<latency::DelayProxy>>,
    /// Delay proxies in front of instances' sshd, by instance id.
    ssh_proxies: Mutex<Vec<(String, Arc<latency::DelayProxy>)>>,
    /// HTTPS mode: the API CA's PEM file, and the bundle of it and the
    /// endpoint stand-in's CA that `AWS_CA_BUNDLE` names.
    api_ca_pem: Option<PathBuf>,
    ca_bundle: Option<PathBuf>,
    user: String,
    host_public_key: String,
    ipv6: bool,
    slots: u16,
    // Dropped last (fields drop in order, after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl TestBed {
    /// Start a bed with default options (region us-east-1, no session token).
    pub fn start() -> TestBed {
        Self::start_with(BedOptions::default())
    }

    pub fn start_with(opts: BedOptions) -> TestBed {
        assert!(
            (1..=sshd::MAX_SLOTS).contains(&opts.slots),
            "BedOptions::slots must be 1..={}, not {}",
            sshd::MAX_SLOTS,
            opts.slots
        );
        let dir = tempfile::Builder::new()
            .prefix("eic-testbed-")
            .tempdir()
            .expect("create the bed's temp dir");
        let d = dir.path();
        for sub in [
            "home",
            "home/.config",
            "home/.cache",
            "home/.local/state",
            "tmp",
            "run",
            "addr",
            "keys",
            "clientkeys",
        ] {
            std::fs::create_dir_all(d.join(sub)).expect("create bed subdirectory");
        }
        set_mode(&d.join("run"), 0o700);
        std::fs::write(d.join("akc.sh"), AKC_SCRIPT).expect("write akc.sh");
        std::fs::write(d.join("clock_offset"), "0\n").expect("write clock_offset");

        // Host key: a fresh ed25519 key per bed.
        let host_key_path = d.join("ssh_host_ed25519_key");
        let host_key = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::OsRng,
            ssh_key::Algorithm::Ed25519,
        )
        .expect("generate host key");
        host_key
            .write_openssh_file(&host_key_path, ssh_key::LineEnding::LF)
            .expect("write host key");
        set_mode(&host_key_path, 0o600);
        let host_public_key = host_key
            .public_key()
            .to_openssh()
            .expect("encode host public key");
        std::fs::write(
            d.join("ssh_host_ed25519_key.pub"),
            format!("{host_public_key}\n"),
        )
        .expect("write host .pub");

        let user = current_user();
        let ipv6 = opts.ipv6 && sshd::ipv6_loopback_works();
        let config = api::Config {
            access_key_id: format!("AKIATESTBED{}", api::random_hex(9).to_uppercase()),
            secret_access_key: api::random_hex(40),
            session_token: opts.session_token.clone(),
            region: opts.region.clone(),
            account_id: "123456789012".into(),
            vpc_id: format!("vpc-{}", api::random_hex(17)),
            subnet_id: format!("subnet-{}", api::random_hex(17)),
            security_group_id: format!("sg-{}", api::random_hex(17)),
            dir: d.to_path_buf(),
        };
        let api = Api::new(config);

        // API stand-in on its own runtime thread.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the API stand-in");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("API address").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handler: http::Handler = {
            let api = api.clone();
            Arc::new(move |req| api.handle(req))
        };
        let (acceptor, api_ca_pem) = if opts.https {
            let ca = tls::TestCa::new("eic-connect test bed API CA");
            let path = d.join("api-ca.pem");
            std::fs::write(&path, &ca.pem).expect("write api-ca.pem");
            let config = ca.server_config(&["127.0.0.1", "::1", "localhost"]);
            (Some(tokio_rustls::TlsAcceptor::from(config)), Some(path))
        } else {
            (None, None)
        };
        let thread = std::thread::Builder::new()
            .name(format!("testbed-api-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the stand-in's tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register listener with tokio");
                    match acceptor {
                        None => tokio::select! {
                            _ = http::serve(listener, handler) => {}
                            _ = rx => {}
                        },
                        Some(acceptor) => tokio::select! {
                            _ = http::serve_tls(listener, acceptor, handler) => {}
                            _ = rx => {}
                        },
                    }
                });
            })
            .expect("spawn the stand-in thread");

        let sshd = sshd::Sshd::start(d, &user, &host_key_path, ipv6, opts.slots);
        // One CA for the endpoint and Session Manager stream stand-ins
        // (`eice-ca.pem`, in every bed's AWS_CA_BUNDLE).
        let stream_ca = tls::TestCa::new("eic-connect test bed CA");
        let eice = eice::EiceServer::start(api.clone(), &stream_ca, d, sshd.port);
        let ssm = ssm_agent::StreamServer::start(api.clone(), &stream_ca, sshd.port);
        // One AWS_CA_BUNDLE for both stand-ins.
        let ca_bundle = api_ca_pem.as_ref().map(|api_pem| {
            let mut both = std::fs::read(&eice.ca_pem_path).expect("read eice-ca.pem");
            both.extend(std::fs::read(api_pem).expect("read api-ca.pem"));
            let path = d.join("ca-bundle.pem");
            std::fs::write(&path, both).expect("write ca-bundle.pem");
            path
        });
        let api_proxy = opts.api_latency.map(|delay| {
            latency::DelayProxy::start(
                ([127, 0, 0, 1], 0).into(),
                ([127, 0, 0, 1], port).into(),
                delay,
            )
            .expect("start the API stand-in's delay proxy")
        });
        let ssm_proxy = opts.api_latency.map(|delay| {
            let stream_port = api.lock().ssm.stream_port;
            let proxy = latency::DelayProxy::start(
                ([127, 0, 0, 1], 0).into(),
                ([127, 0, 0, 1], stream_port).into(),
                delay,
            )
            .expect("start the stream server's delay proxy");
            api.lock().ssm.url_port = Some(proxy.addr().port());
            Arc::new(proxy)
        });
        let scheme = if opts.https { "https" } else { "http" };
        let endpoint_port = api_proxy.as_ref().map_or(port, |p| p.addr().port());

        TestBed {
            api,
            endpoint: format!("{scheme}://127.0.0.1:{endpoint_port}"),
            sshd: Some(sshd),
            server: Some((thread, tx)),
            eice: Some(eice),
            ssm: Some(ssm),
            api_proxy,
            ssm_proxy,
            ssh_proxies: Mutex::default(),
            api_ca_pem,
            ca_bundle,
            user,
            host_public_key,
            ipv6,
            slots: opts.slots,
            dir,
        }
    }

    // ------------------------------------------------------------ facts

    /// `http://127.0.0.1:PORT` (`https://` in HTTPS mode; the delay
    /// proxy's port with [`BedOptions::api_latency`]), for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
    /// The delay proxy in front of the API ([`BedOptions::api_latency`]).
    pub fn api_proxy(&self) -> Option<&latency::DelayProxy> {
        self.api_proxy.as_ref()
    }
    /// The delay proxy in front of an instance's sshd
    /// ([`InstanceSpec::latency`]).
    /// The delay proxy in front of the Session Manager stream server
    /// ([`BedOptions::api_latency`]).
    pub fn ssm_proxy(&self) -> Option<Arc<latency::DelayProxy>> {
        self.ssm_proxy.clone()
    }

    pub fn ssh_proxy(&self, instance_id: &str) -> Option<Arc<latency::DelayProxy>> {
        self.ssh_proxies
            .lock()
            .expect("ssh proxies")
            .iter()
            .find(|(id, _)| id == instance_id)
            .map(|(_, p)| p.clone())
    }
    /// HTTPS mode: the PEM file of the CA that signed the API stand-in's
    /// certificate (and only that CA).
    pub fn api_ca_pem(&self) -> Option<&Path> {
        self.api_ca_pem.as_deref()
    }
    /// The file [`TestBed::command`] sets `AWS_CA_BUNDLE` to: the endpoint
    /// stand-in's CA, plus the API's in HTTPS mode.
    pub fn ca_bundle(&self) -> PathBuf {
        self.ca_bundle
            .clone()
            .unwrap_or_else(|| self.eice_ca_bundle())
    }
    pub fn region(&self) -> &str {
        &self.api.config.region
    }
    pub fn access_key_id(&self) -> &str {
        &self.api.config.access_key_id
    }
    pub fn secret_access_key(&self) -> &str {
        &self.api.config.secret_access_key
    }
    pub fn session_token(&self) -> Option<&str> {
        self.api.config.session_token.as_deref()
    }
    pub fn account_id(&self) -> &str {
        &self.api.config.account_id
    }
    /// The one port sshd listens on, on every instance address.
    pub fn sshd_port(&self) -> u16 {
        self.sshd.as_ref().expect("sshd running").port
    }
    /// The only OS user that can log in (the user running the tests).
    pub fn os_user(&self) -> String {
        self.user.clone()
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// `HOME` of [`TestBed::command`].
    pub fn home(&self) -> PathBuf {
        self.dir().join("home")
    }
    /// How many instances this bed can hold ([`BedOptions::slots`]).
    pub fn slots(&self) -> u16 {
        self.slots
    }
    /// Whether instances can get the IPv6 address ::1.
    pub fn ipv6_available(&self) -> bool {
        self.ipv6
    }
    /// The bed sshd's host key, `ssh-ed25519 AAAA…`.
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }
    /// A known_hosts line for `host` at the sshd port.
    pub fn known_hosts_line(&self, host: &str) -> String {
        format!("[{host}]:{} {}", self.sshd_port(), self.host_public_key)
    }
    /// Bed-clock now (real time + [`TestBed::advance_clock`] offset), epoch secs.
    pub fn now(&self) -> i64 {
        let st = self.api.lock();
        self.api.now(&st)
    }

    // -------------------------------------------------------- instances

    /// Create a fake instance in the next free slot (1..=[`TestBed::slots`]).
    pub fn add_instance(&self, spec: InstanceSpec) -> Instance {
        let cfg = &self.api.config;
        let mut st = self.api.lock();
        let slot = u16::try_from(st.instances.len() + 1)
            .ok()
            .filter(|s| *s <= self.slots);
        let Some(slot) = slot else {
            drop(st);
            panic!(
                "this test bed holds at most {} instances (set BedOptions::slots, up to {})",
                self.slots,
                sshd::MAX_SLOTS
            );
        };
        assert!(
            api::state_code(&spec.state).is_some(),
            "unknown instance state {:?}",
            spec.state
        );
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| format!("i-{}", api::random_hex(17)));
        assert!(
            !st.instances.iter().any(|i| i.id == id),
            "duplicate instance id {id}"
        );
        let ipv6 = if spec.ipv6 {
            assert!(
                self.ipv6,
                "IPv6 loopback is not available on this machine (check bed.ipv6_available())"
            );
            assert!(
                !st.instances.iter().any(|i| i.ipv6.is_some()),
                "only one instance per bed can have IPv6 (::1)"
            );
            Some(sshd::IPV6_ADDR.to_owned())
        } else {
            None
        };
        assert!(
            spec.ipv4 || (spec.ipv6 && !spec.public_ip),
            "an IPv6-only instance (ipv4(false)) needs ipv6(true) and public_ip(false)"
        );
        assert!(
            spec.latency.is_none() || (spec.public_ip && !spec.unreachable),
            "an instance with a latency needs a public IP where something listens"
        );
        let private_ip = sshd::private_ip(slot);
        let public_ip = spec.public_ip.then(|| {
            if spec.unreachable {
                sshd::unreachable_ip(slot)
            } else if spec.latency.is_some() {
                sshd::delayed_ip(slot)
            } else {
                sshd::public_ip(slot)
            }
        });
        let dashed = |ip: &str| ip.replace('.', "-");
        let (private_dns, public_dns) = if cfg.region == "us-east-1" {
            (
                format!("ip-{}.ec2.internal", dashed(&private_ip)),
                public_ip
                    .as_ref()
                    .map(|p| format!("ec2-{}.compute-1.amazonaws.com", dashed(p))),
            )
        } else {
            (
                format!("ip-{}.{}.compute.internal", dashed(&private_ip), cfg.region),
                public_ip
                    .as_ref()
                    .map(|p| format!("ec2-{}.{}.compute.amazonaws.com", dashed(p), cfg.region)),
            )
        };
        let mut tags = Vec::new();
        if let Some(n) = &spec.name {
            tags.push(("Name".to_owned(), n.clone()));
        }
        tags.extend(spec.tags.iter().cloned());
        let rec = InstanceRec {
            id,
            slot,
            state: spec.state.clone(),
            image_id: spec.image_id.clone(),
            instance_type: spec.instance_type.clone(),
            availability_zone: spec
                .availability_zone
                .clone()
                .unwrap_or_else(|| format!("{}a", cfg.region)),
            private_ip,
            ipv4: spec.ipv4,
            public_ip,
            ipv6,
            private_dns,
            public_dns,
            tags,
            metadata_http_endpoint: spec.metadata_http_endpoint.clone(),
            platform_details: spec.platform_details.clone(),
            launch_time: self.api.now(&st) - 3600,
            eni_id: format!("eni-{}", api::random_hex(17)),
            transition: None,
            accepts_pushed_keys: spec.instance_connect,
            ssm_managed: spec.managed,
            ssm_ping: spec.ssm_ping.clone(),
        };
        self.sync_addresses(&rec);
        st.instances.push(rec.clone());
        drop(st);
        if let (Some(delay), Some(public)) = (spec.latency, &rec.public_ip) {
            let ip = |a: &str| -> std::net::IpAddr { a.parse().expect("an IPv4 address") };
            let port = self.sshd_port();
            let proxy = latency::DelayProxy::start(
                (ip(public), port).into(),
                (ip(&rec.private_ip), port).into(),
                delay,
            )
            .unwrap_or_else(|e| panic!("start the delay proxy on {public}:{port}: {e}"));
            self.ssh_proxies
                .lock()
                .expect("ssh proxies")
                .push((rec.id.clone(), Arc::new(proxy)));
        }
        Instance::from_rec(&rec)
    }

    /// Current snapshot of an instance.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.api
            .lock()
            .instances
            .iter()
            .find(|i| i.id == id)
            .map(Instance::from_rec)
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.api
            .lock()
            .instances
            .iter()
            .map(Instance::from_rec)
            .collect()
    }

    /// Change an instance's state. Only `running` instances are reachable
    /// over SSH; stopped/terminated ones also lose their public IP in
    /// DescribeInstances, as on EC2. Cancels a transition in progress (from
    /// StartInstances / StopInstances); a `pending` set here stays pending.
    pub fn set_state(&self, id: &str, state: &str) {
        assert!(
            api::state_code(state).is_some(),
            "unknown instance state {state:?}"
        );
        let mut st = self.api.lock();
        let rec = st
            .instances
            .iter_mut()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no instance {id}"));
        rec.state = state.to_owned();
        rec.transition = None;
        let rec = rec.clone();
        self.sync_addresses(&rec);
    }

    /// Make sshd's key lookup wait `secs` seconds for every login from now
    /// on (0: no more), so that a test can act while ssh authenticates.
    pub fn hold_authentication(&self, secs: u32) {
        let _ = std::fs::remove_file(self.dir().join("akc_held"));
        let hold = self.dir().join("akc_hold");
        if secs == 0 {
            let _ = std::fs::remove_file(hold);
        } else {
            api::write_atomic(&hold, format!("{secs}\n").as_bytes()).expect("write akc_hold");
        }
    }

    /// Whether a login is being held by [`TestBed::hold_authentication`].
    pub fn authentication_held(&self) -> bool {
        self.dir().join("akc_held").exists()
    }

    /// Once the next `action` call is answered, instance `id` moves to
    /// `state` (as if it stopped right after a lookup).
    pub fn set_state_after(&self, action: &str, id: &str, state: &str) {
        assert!(
            api::state_code(state).is_some(),
            "unknown instance state {state:?}"
        );
        self.api
            .lock()
            .then_state
            .insert(action.to_owned(), (id.to_owned(), state.to_owned()));
    }

    /// An instance's state now (with StartInstances / StopInstances
    /// transitions that are due applied). Panics on an unknown id.
    pub fn state_of(&self, id: &str) -> String {
        self.api
            .lock()
            .instances
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.state.clone())
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// How long StartInstances' pending → running and StopInstances'
    /// stopping → stopped take, in real time (default 1 s). Applies to
    /// later calls; `Duration::ZERO` completes them at once (the response
    /// still says pending / stopping, as EC2's does).
    pub fn set_start_delay(&self, d: Duration) {
        self.api.lock().start_delay = d;
    }

    /// Write/remove `addr/<ip>` files so sshd serves keys for the instance
    /// exactly on its addresses while it is running.
    fn sync_addresses(&self, rec: &InstanceRec) {
        api::sync_addresses(self.dir(), rec).expect("write address map");
    }

    // ------------------------------------------------------ API control

    /// Make the next `n` calls of `action` ("DescribeInstances",
    /// "SendSSHPublicKey", ...) fail with error `code`, in the protocol's own
    /// format and with the HTTP status that service uses for it (see
    /// `api::ec2_status` / `api::eic_status`). Calls queue up: two
    /// `fail_next` calls fail the next n1 + n2 calls, in order. Requests that
    /// fail the SigV4 check are refused before, and don't use up, a failure.
    pub fn fail_next(&self, action: &str, code: &str, n: usize) {
        let mut st = self.api.lock();
        let q = st.failures.entry(action.to_owned()).or_default();
        q.extend(std::iter::repeat_n(code.to_owned(), n));
    }

    /// Break the next `n` calls of `action` with `fault` (after the SigV4
    /// check; see [`api::Fault`]). Queues behind faults already injected.
    pub fn inject(&self, action: &str, fault: api::Fault, n: usize) {
        let mut st = self.api.lock();
        let q = st.faults.entry(action.to_owned()).or_default();
        q.extend(std::iter::repeat_n(fault, n));
    }

    /// Drop every fault not yet used up.
    pub fn clear_faults(&self) {
        self.api.lock().faults.clear();
    }

    /// [`TestBed::fail_next`] for calls of `action` that name `instance_id`
    /// (`InstanceId`, or `InstanceId.1` for EC2): the next `n` such calls
    /// fail with `code`; calls for other instances go through. A failure
    /// queued with `fail_next` for the whole action is used first.
    pub fn fail_next_for(&self, action: &str, instance_id: &str, code: &str, n: usize) {
        let mut st = self.api.lock();
        let q = st
            .failures
            .entry(format!("{action}@{instance_id}"))
            .or_default();
        q.extend(std::iter::repeat_n(code.to_owned(), n));
    }

    /// Delay every response to `action` by `d` (`Duration::ZERO` to stop).
    pub fn set_delay(&self, action: &str, d: Duration) {
        let mut st = self.api.lock();
        if d.is_zero() {
            st.delays.remove(action);
        } else {
            st.delays.insert(action.to_owned(), d);
        }
    }

    /// Throttle `action` ("DescribeInstances", "SendSSHPublicKey", ...) with
    /// a token bucket: it starts full with `burst` tokens and refills at
    /// `per_second` tokens a second (real time), up to `burst`. A call that
    /// finds no token is answered with the service's throttling error —
    /// EC2: `RequestLimitExceeded`, HTTP 503, XML; EC2 Instance Connect:
    /// `ThrottlingException`, JSON 1.1, HTTP 400 — and does nothing else. It
    /// is recorded in [`TestBed::requests`] with that `error_code` and
    /// counted by [`TestBed::throttled`]. Calls failing the SigV4 check are
    /// refused before, and take no token. Setting a limit again refills the
    /// bucket.
    pub fn set_rate_limit(&self, action: &str, per_second: f64, burst: u32) {
        assert!(
            per_second.is_finite() && per_second >= 0.0,
            "per_second must be a finite number >= 0, not {per_second}"
        );
        self.api
            .lock()
            .rate_limits
            .insert(action.to_owned(), api::RateLimit::new(per_second, burst));
    }

    /// Remove `action`'s rate limit.
    pub fn clear_rate_limit(&self, action: &str) {
        self.api.lock().rate_limits.remove(action);
    }

    /// How many calls of `action` were answered with a throttling error
    /// because of [`TestBed::set_rate_limit`] (not [`TestBed::fail_next`]).
    pub fn throttled(&self, action: &str) -> usize {
        self.api.lock().throttled.get(action).copied().unwrap_or(0)
    }

    /// Force DescribeInstances pages of at most `n` instances, whatever
    /// MaxResults says (0 = no forced limit).
    pub fn set_page_size(&self, n: usize) {
        self.api.lock().page_size = (n > 0).then_some(n);
    }

    // ---------------------------------------------------------- clock/keys

    /// Move the bed clock by `secs` (may be negative). Affects key expiry
    /// checks in sshd's AuthorizedKeysCommand and push timestamps.
    pub fn advance_clock(&self, secs: i64) {
        let mut st = self.api.lock();
        st.clock_offset += secs;
        api::write_atomic(
            &self.dir().join("clock_offset"),
            format!("{}\n", st.clock_offset).as_bytes(),
        )
        .expect("write clock_offset");
    }

    /// Record later API pushes as if made `secs` ago (so `61` makes them
    /// already expired).
    pub fn set_push_age(&self, secs: i64) {
        self.api.lock().push_age = secs;
    }

    /// Authorise `public_key` (an OpenSSH line) for `user` on `instance_id`
    /// for 60 s of bed time, bypassing the API (not listed in `pushes()`).
    pub fn push_key_directly(&self, instance_id: &str, user: &str, public_key: &str) {
        assert!(api::is_valid_os_user(user), "invalid OS user name {user:?}");
        let st = self.api.lock();
        assert!(
            st.instances.iter().any(|i| i.id == instance_id),
            "no instance {instance_id}"
        );
        let now = self.api.now(&st);
        let push = Push {
            instance_id: instance_id.to_owned(),
            os_user: user.to_owned(),
            public_key: public_key.trim().to_owned(),
            availability_zone: None,
            pushed_at: now,
            expires_at: now + api::KEY_LIFETIME_SECS,
        };
        api::add_key_line(self.dir(), &push).expect("write key file");
    }

    // ----------------------------------------------------------- records

    /// Every request received, in order (including failed ones).
    pub fn requests(&self) -> Vec<ApiCall> {
        self.api.lock().requests.clone()
    }

    /// Requests of one action.
    pub fn requests_for(&self, action: &str) -> Vec<ApiCall> {
        self.api
            .lock()
            .requests
            .iter()
            .filter(|c| c.action == action)
            .cloned()
            .collect()
    }

    /// Accepted SendSSHPublicKey calls.
    pub fn pushes(&self) -> Vec<Push> {
        self.api.lock().pushes.clone()
    }

    /// Accepted SendSerialConsoleSSHPublicKey calls (`os_user` empty).
    pub fn serial_pushes(&self) -> Vec<Push> {
        self.api.lock().serial_pushes.clone()
    }

    /// Requests whose SigV4 check failed, with the reason. Tests of the
    /// binary should assert this is empty.
    pub fn signature_failures(&self) -> Vec<String> {
        self.api.lock().signature_failures.clone()
    }

    /// Forget recorded requests/pushes/signature failures and throttled
    /// counts (not instances or rate limits).
    pub fn clear_records(&self) {
        let mut st = self.api.lock();
        st.requests.clear();
        st.pushes.clear();
        st.serial_pushes.clear();
        st.signature_failures.clear();
        st.throttled.clear();
    }

    /// sshd's log so far (stderr, LogLevel VERBOSE).
    pub fn sshd_log(&self) -> String {
        let path = &self.sshd.as_ref().expect("sshd running").log;
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Wait until sshd's log contains `needle` (sshd may still be writing
    /// after the client has exited). Returns whether it appeared.
    pub fn wait_for_sshd_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sshd_log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ---------------------------------------------------------- commands

    /// `eic-connect` with a clean environment pointed at this bed.
    pub fn command(&self) -> Command {
        let mut c = Command::new(eic_connect_bin());
        self.apply_env(&mut c);
        c
    }

    /// Apply the bed environment (see [`TestBed::command`]) to any command.
    pub fn apply_env(&self, c: &mut Command) {
        let d = self.dir();
        c.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        c.current_dir(d.join("home"))
            .env("HOME", d.join("home"))
            .env("XDG_CONFIG_HOME", d.join("home/.config"))
            .env("XDG_STATE_HOME", d.join("home/.local/state"))
            .env("XDG_CACHE_HOME", d.join("home/.cache"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("TMPDIR", d.join("tmp"))
            .env("LANG", "C")
            .env("AWS_ACCESS_KEY_ID", self.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", self.secret_access_key())
            .env("AWS_REGION", self.region())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", d.join("aws/config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", d.join("aws/credentials"))
            .env("AWS_MAX_ATTEMPTS", "1");
        self.apply_eice_env(c);
        if let Some(bundle) = &self.ca_bundle {
            c.env("AWS_CA_BUNDLE", bundle);
        }
        if let Some(tok) = self.session_token() {
            c.env("AWS_SESSION_TOKEN", tok);
        }
    }

    /// The `export` lines that point a shell at this bed.
    pub fn env_exports(&self) -> String {
        let mut s = format!(
            "export AWS_ENDPOINT_URL={}\nexport AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_REGION={}\nexport AWS_EC2_METADATA_DISABLED=true\n",
            self.endpoint,
            self.access_key_id(),
            self.secret_access_key(),
            self.region()
        );
        if let Some(tok) = self.session_token() {
            s.push_str(&format!("export AWS_SESSION_TOKEN={tok}\n"));
        }
        if let Some(bundle) = &self.ca_bundle {
            s.push_str(&format!("export AWS_CA_BUNDLE={}\n", bundle.display()));
        }
        s
    }

    /// Make an ed25519 key pair with ssh-keygen under `clientkeys/`.
    pub fn generate_key(&self, name: &str) -> ClientKey {
        let path = self.dir().join("clientkeys").join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .expect("run ssh-keygen (is openssh-client installed?)");
        assert!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public_key = std::fs::read_to_string(path.with_extension("pub"))
            .expect("read .pub")
            .trim()
            .to_owned();
        ClientKey {
            private_key: path,
            public_key,
        }
    }

    /// A plain OpenSSH client command logging in as `user` at `host` with
    /// only `key`: no config files, no agent, no host key checks, batch mode.
    /// Append the remote command with `.arg(...)`.
    pub fn ssh_command(&self, key: &Path, user: &str, host: &str) -> Command {
        self.ssh_command_with(key, user, host, &[])
    }

    /// [`TestBed::ssh_command`] with extra `-o` options (`"Key=value"`),
    /// e.g. `KexAlgorithms=curve25519-sha256`, which costs a fraction of the
    /// CPU of OpenSSH's default sntrup761 hybrid: that matters when
    /// a test makes ~100 logins at once.
    pub fn ssh_command_with(
        &self,
        key: &Path,
        user: &str,
        host: &str,
        options: &[&str],
    ) -> Command {
        let mut c = Command::new("ssh");
        for o in options {
            c.arg("-o").arg(o);
        }
        c.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.sshd_port().to_string())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@{host}"))
            .stdin(std::process::Stdio::null());
        c
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Pending transition timers must not write into the dir any more.
        self.api.lock().closed = true;
        if let Some(mut s) = self.sshd.take() {
            s.stop();
        }
        if let Some((thread, tx)) = self.server.take() {
            let _ = tx.send(());
            let _ = thread.join();
        }
        // `dir` (TempDir) is removed when the fields drop.
    }
}

/// Path of the binary under test. Integration tests get it from Cargo;
/// examples (which don't) fall back to the debug build.
pub fn eic_connect_bin() -> PathBuf {
    // Another build of eic-connect (a release build, an installed one) to
    // run the same tests against.
    if let Some(other) = std::env::var_os("EIC_CONNECT_TEST_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(other);
    }
    match option_env!("CARGO_BIN_EXE_eic-connect") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/eic-connect"),
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Name of the effective user (getpwuid_r; `$USER` as a fallback).
pub fn current_user() -> String {
    // SAFETY: getpwuid_r with a buffer we own; the result only borrows it.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            return std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").expect("cannot determine the current user name")
}

impl TestBed {
    /// Let `d` pass at once for the token bucket of `action` (see
    /// [`TestBed::set_rate_limit`]): its next call finds the tokens that
    /// would have come back in that time. Panics if `action` has no limit.
    pub fn pass_rate_limit_time(&self, action: &str, d: Duration) {
        self.api
            .lock()
            .rate_limits
            .get_mut(action)
            .unwrap_or_else(|| panic!("{action} has no rate limit"))
            .pass_time(d);
    }
}
