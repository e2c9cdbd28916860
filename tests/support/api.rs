//! The AWS API stand-in: EC2 `DescribeInstances`, `StartInstances` and
//! `StopInstances` (Query protocol, XML), EC2 Instance Connect
//! `SendSSHPublicKey` / `SendSerialConsoleSSHPublicKey` (AWS JSON 1.1) and
//! Systems Manager `StartSession`, `TerminateSession` and
//! `DescribeInstanceInformation` (AWS JSON 1.1, `ssm.rs`), with
//! SigV4 verification, per-action token-bucket throttling, error injection,
//! delays and a record of every call.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an
//! `.await`: handlers are synchronous and return a response plus a delay.
//!
//! Order of checks for every call: SigV4, then the rate limit (a throttled
//! call does nothing), then a malformed body, then injected failures, then
//! the operation. Injected [`Fault`]s (a broken network or a broken front
//! end) apply last, to whatever the service answered.
//!
//! Instance state transitions started by StartInstances / StopInstances
//! (pending → running, stopping → stopped) complete after the start delay of
//! real time. They are applied whenever the state is locked ([`Api::lock`]),
//! so every reader sees them on time, and a timer thread also applies them
//! when due, so sshd's address map (`addr/<ip>`) follows without any API
//! call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::http::{Delivery, Request, Response};
use super::sigv4;
use super::timefmt;

pub const EC2_XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// How long a pushed key stays valid (EC2 Instance Connect: 60 s).
pub const KEY_LIFETIME_SECS: i64 = 60;
/// Default time StartInstances / StopInstances take to reach running /
/// stopped (see `TestBed::set_start_delay`).
pub const DEFAULT_START_DELAY: Duration = Duration::from_secs(1);
const EIC_TARGET_PREFIX: &str = "AWSEC2InstanceConnectService.";

/// Which protocol/service a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// EC2 Query protocol (signing name `ec2`).
    Ec2,
    /// EC2 Instance Connect, AWS JSON 1.1 (signing name `ec2-instance-connect`).
    InstanceConnect,
    /// Systems Manager, AWS JSON 1.1 (`X-Amz-Target: AmazonSSM.<Operation>`,
    /// signing name `ssm`).
    Ssm,
    /// CloudTrail, AWS JSON 1.1 (`X-Amz-Target:
    /// com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.<Operation>`,
    /// signing name `cloudtrail`).
    CloudTrail,
    /// IAM, Query protocol (`Version=2010-05-08`, signing name `iam`).
    Iam,
    /// STS, Query protocol (`Version=2011-06-15`, signing name `sts`).
    Sts,
}

impl Service {
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::InstanceConnect => "ec2-instance-connect",
            Service::Ssm => "ssm",
            Service::CloudTrail => "cloudtrail",
            Service::Iam => "iam",
            Service::Sts => "sts",
        }
    }
}

/// One request received by the stand-in.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub service: Service,
    /// `DescribeInstances`, `SendSSHPublicKey`, ... (empty if none given).
    pub action: String,
    /// Decoded parameters. Query: the form fields as sent (`Filter.1.Name`...).
    /// JSON: top-level members; strings verbatim, other values as JSON text.
    pub params: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    /// Wall-clock receive time (real time, not the bed clock).
    pub received: SystemTime,
    /// The SigV4 verifier's complaint, if any.
    pub auth_error: Option<String>,
    /// HTTP status that was (or will be, after a delay) sent back.
    pub status: u16,
    /// Error code sent back, if the call failed.
    pub error_code: Option<String>,
}

impl ApiCall {
    /// Values of a Query list parameter in index order, e.g.
    /// `list("InstanceId")` for `InstanceId.1`, `InstanceId.2`...
    pub fn list(&self, prefix: &str) -> Vec<String> {
        indexed(&self.params, prefix)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// EC2 filters as `(name, values)` in index order.
    pub fn filters(&self) -> Vec<(String, Vec<String>)> {
        parse_filters(&self.params)
    }
}

/// An accepted `SendSSHPublicKey` (or serial-console) push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub instance_id: String,
    /// Empty for serial-console pushes.
    pub os_user: String,
    pub public_key: String,
    pub availability_zone: Option<String>,
    /// Bed-clock epoch seconds the push counts as made at (now - push_age).
    pub pushed_at: i64,
    /// Bed-clock epoch seconds after which the key is refused.
    pub expires_at: i64,
}

/// Static configuration of one bed.
#[derive(Debug, Clone)]
pub struct Config {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: String,
    pub account_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub security_group_id: String,
    /// Bed directory (holds `keys/`, `addr/`, `clock_offset`).
    pub dir: PathBuf,
}

/// One fake instance as the stand-in knows it.
#[derive(Debug, Clone)]
pub struct InstanceRec {
    pub id: String,
    pub slot: u16,
    pub state: String,
    pub image_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    /// The slot's private IPv4: sshd serves the instance there whatever
    /// `ipv4` says (it is how the agent stand-in reaches "localhost").
    pub private_ip: String,
    /// false: an IPv6-only instance; EC2 reports no IPv4 address for it.
    pub ipv4: bool,
    /// Assigned public IPv4 (dropped from responses while stopped/terminated).
    pub public_ip: Option<String>,
    pub ipv6: Option<String>,
    pub private_dns: String,
    pub public_dns: Option<String>,
    pub tags: Vec<(String, String)>,
    pub metadata_http_endpoint: String,
    pub platform_details: String,
    pub launch_time: i64,
    pub eni_id: String,
    /// A state change in progress (set by StartInstances / StopInstances).
    pub transition: Option<Transition>,
    /// false: sshd serves no key for this instance, as on an AMI without
    /// the EC2 Instance Connect helper: pushes succeed, logins are refused.
    pub accepts_pushed_keys: bool,
    /// Managed by Systems Manager (listed by DescribeInstanceInformation).
    pub ssm_managed: bool,
    /// The SSM PingStatus set for it (`ssm::ping_status` reports it).
    pub ssm_ping: String,
}

/// `state` becomes `to` at `at` (real time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: String,
    pub at: Instant,
}

impl InstanceRec {
    fn state_code(&self) -> u32 {
        state_code(&self.state).unwrap_or(0)
    }
    /// Public address as EC2 reports it in the current state.
    pub fn current_public_ip(&self) -> Option<&str> {
        if matches!(self.state.as_str(), "stopped" | "terminated") {
            None
        } else {
            self.public_ip.as_deref()
        }
    }
    pub fn current_public_dns(&self) -> Option<&str> {
        self.current_public_ip().and(self.public_dns.as_deref())
    }
    pub fn current_private_ip(&self) -> Option<&str> {
        (self.state != "terminated" && self.ipv4).then_some(self.private_ip.as_str())
    }
    /// Addresses on which the instance's "sshd" answers for it right now.
    pub fn reachable_addresses(&self) -> Vec<String> {
        if self.state != "running" || !self.accepts_pushed_keys {
            return Vec::new();
        }
        let mut v = vec![self.private_ip.clone()];
        v.extend(self.public_ip.clone());
        v.extend(self.ipv6.clone());
        v
    }
}

/// Write/remove `dir/addr/<ip>` files so sshd serves keys for the instance
/// exactly on its addresses while it is running.
pub fn sync_addresses(dir: &Path, rec: &InstanceRec) -> std::io::Result<()> {
    let reachable = rec.reachable_addresses();
    let mut all = vec![rec.private_ip.clone()];
    all.extend(rec.public_ip.clone());
    all.extend(rec.ipv6.clone());
    for a in all {
        let path = dir.join("addr").join(&a);
        if reachable.contains(&a) {
            write_atomic(&path, rec.id.as_bytes())?;
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A token bucket for one action (see `TestBed::set_rate_limit`).
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }
    /// Refill for the time passed, then take a token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub fn state_code(name: &str) -> Option<u32> {
    Some(match name {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        "stopped" => 80,
        _ => return None,
    })
}

/// What can go wrong between the client and the service, injected per
/// action with `TestBed::inject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Something in front of the service answers instead (a load
    /// balancer's HTML page, an empty 503, a proxy's error): the operation
    /// does not run.
    Answer {
        status: u16,
        content_type: String,
        body: String,
    },
    /// The operation runs, but its answer is broken on the way
    /// ([`Delivery::Reset`], [`Delivery::Truncated`]).
    Broken(Delivery),
    /// The operation runs; the answer is a 200 with this body instead
    /// (malformed or cut XML/JSON).
    Body(String),
    /// The answer comes this late (the operation runs at once).
    Latency(Duration),
}

impl Fault {
    /// An HTML error page with `status`, as a load balancer sends it.
    pub fn html(status: u16) -> Fault {
        Fault::Answer {
            status,
            content_type: "text/html".into(),
            body: format!(
                "<html><head><title>{status} Error</title></head><body><h1>{status}</h1>\
                 <p>The server is temporarily unable to service your request.</p></body></html>"
            ),
        }
    }

    /// `status` with an empty body.
    pub fn empty(status: u16) -> Fault {
        Fault::Answer {
            status,
            content_type: "text/plain".into(),
            body: String::new(),
        }
    }
}

/// Mutable state of the stand-in.
#[derive(Debug, Default)]
pub struct State {
    /// action -> queued faults, one per upcoming call.
    pub faults: HashMap<String, VecDeque<Fault>>,
    /// action -> (instance id, state) to move to once the next call of
    /// that action is answered (an instance stopping just after a lookup).
    pub then_state: HashMap<String, (String, String)>,
    pub instances: Vec<InstanceRec>,
    /// action (or `action@instance-id`, for calls naming that instance) ->
    /// queued error codes, one per upcoming call.
    pub failures: HashMap<String, VecDeque<String>>,
    pub delays: HashMap<String, Duration>,
    pub page_size: Option<usize>,
    pub clock_offset: i64,
    pub push_age: i64,
    pub requests: Vec<ApiCall>,
    pub pushes: Vec<Push>,
    pub serial_pushes: Vec<Push>,
    /// Console output, images, security groups (`diag.rs`).
    pub diag: super::diag::DiagState,
    /// EC2 Instance Connect Endpoints and tunnels (`eice.rs`).
    pub eice: super::eice::EiceState,
    /// Session Manager sessions (`ssm.rs`, `ssm_agent.rs`).
    pub ssm: super::ssm::SsmState,
    pub signature_failures: Vec<String>,
    /// NextToken -> (request fingerprint, offset).
    pub tokens: HashMap<String, (String, usize)>,
    /// How long pending → running and stopping → stopped take.
    pub start_delay: Duration,
    /// action -> token bucket.
    pub rate_limits: HashMap<String, RateLimit>,
    /// action -> number of calls answered with a throttling error.
    pub throttled: HashMap<String, usize>,
    /// Set when the bed shuts down: no more address-file writes.
    pub closed: bool,
    /// CloudTrail's event history (`cloudtrail.rs`).
    pub cloudtrail: super::cloudtrail::TrailState,
}

pub struct Api {
    pub config: Config,
    pub state: Mutex<State>,
    /// Itself, for the transition timer threads.
    me: Weak<Api>,
}

/// The next injected failure for this call: first those queued for the
/// action, then those queued for the action on the instance it names
/// (`InstanceId`, EC2's `InstanceId.1`, or SSM's `Target`).
fn take_failure(st: &mut State, action: &str, params: &BTreeMap<String, String>) -> Option<String> {
    if let Some(code) = st.failures.get_mut(action).and_then(VecDeque::pop_front) {
        return Some(code);
    }
    let id = params
        .get("InstanceId")
        .or_else(|| params.get("InstanceId.1"))
        .or_else(|| params.get("Target"))?;
    st.failures
        .get_mut(&format!("{action}@{id}"))
        .and_then(VecDeque::pop_front)
}

/// An error answer: (HTTP status, code, message).
type ApiError = (u16, String, String);

/// `DryRun=true`: EC2's answer when the call would have succeeded.
fn refuse_dry_run(params: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if params.get("DryRun").is_some_and(|v| v == "true") {
        return Err(err(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    Ok(())
}

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    (status, code.to_owned(), msg.into())
}

impl Api {
    pub fn new(config: Config) -> Arc<Api> {
        Arc::new_cyclic(|me| Api {
            config,
            state: Mutex::new(State {
                start_delay: DEFAULT_START_DELAY,
                rate_limits: super::cloudtrail::rate_limits(),
                ..State::default()
            }),
            me: me.clone(),
        })
    }

    /// Lock the state, first completing any due state transitions.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not wedge every later call.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_transitions(&mut st);
        st
    }

    /// Complete the transitions that are due, keeping `addr/` in sync.
    fn apply_transitions(&self, st: &mut State) {
        if st.closed {
            return;
        }
        let now = Instant::now();
        for rec in &mut st.instances {
            if let Some(t) = rec.transition.take_if(|t| t.at <= now) {
                rec.state = t.to;
                // Errors only when the bed dir is going away.
                let _ = sync_addresses(&self.config.dir, rec);
            }
        }
    }

    /// Apply transitions at `at` even if nobody looks at the state then, so
    /// sshd starts/stops serving the instance on time.
    fn schedule_transitions(&self, at: Instant) {
        let me = self.me.clone();
        let _ = std::thread::Builder::new()
            .name("testbed-transition".into())
            .spawn(move || {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                if let Some(api) = me.upgrade() {
                    drop(api.lock());
                }
            });
    }

    /// Bed-clock "now" in epoch seconds.
    pub fn now(&self, st: &State) -> i64 {
        timefmt::epoch_secs(SystemTime::now()) + st.clock_offset
    }

    /// Entry point from the HTTP server.
    pub fn handle(&self, req: Request) -> Response {
        let received = SystemTime::now();
        let (service, action, params, parse_error) = decode(&req);

        let mut st = self.lock();
        let idx = st.requests.len();
        st.requests.push(ApiCall {
            service,
            action: action.clone(),
            params: params.clone(),
            headers: req.headers.clone(),
            received,
            auth_error: None,
            status: 0,
            error_code: None,
        });

        // 1. Authentication comes first, as on the real endpoints.
        let signed = sigv4::SignedRequest {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            body: &req.body,
        };
        let expected = sigv4::Expected {
            access_key_id: &self.config.access_key_id,
            secret_access_key: &self.config.secret_access_key,
            region: &self.config.region,
            service: service.signing_name(),
            session_token: self.config.session_token.as_deref(),
            now: received,
            max_skew: Duration::from_secs(300),
        };
        let delay = st.delays.get(&action).copied().unwrap_or_default();
        let result: Result<Response, ApiError> = if let Err(e) = sigv4::verify(&signed, &expected) {
            st.signature_failures
                .push(format!("{} {action}: {e}", service.signing_name()));
            st.requests[idx].auth_error = Some(e.to_string());
            Err(auth_error(service, &e))
        } else if st.rate_limits.get_mut(&action).is_some_and(|b| !b.take()) {
            // 2. Throttled: nothing happens.
            *st.throttled.entry(action.clone()).or_default() += 1;
            Err(throttling_error(service))
        } else if let Some(pe) = parse_error {
            Err(pe)
        } else if let Some(Fault::Answer {
            status,
            content_type,
            body,
        }) = st
            .faults
            .get_mut(&action)
            .and_then(|q| q.pop_front_if(|f| matches!(f, Fault::Answer { .. })))
        {
            st.requests[idx].status = status;
            st.requests[idx].error_code = Some(format!("fault: HTTP {status}"));
            let mut resp = Response::new(status, &content_type, body);
            resp.delay = delay;
            return resp;
        } else if let Some(code) = take_failure(&mut st, &action, &params) {
            // 3. Injected failure.
            Err(match service {
                Service::Ec2 => (ec2_status(&code), code.clone(), default_message(&code)),
                Service::InstanceConnect => {
                    (eic_status(&code), code.clone(), default_message(&code))
                }
                Service::Ssm => (
                    super::ssm::status(&code),
                    code.clone(),
                    super::ssm::injected_message(&code, &action, &params),
                ),
                Service::CloudTrail => (
                    super::cloudtrail::status(&code),
                    code.clone(),
                    default_message(&code),
                ),
                Service::Iam | Service::Sts => (
                    super::iam::status(&code),
                    code.clone(),
                    default_message(&code),
                ),
            })
        } else {
            // 4. The operation itself.
            match (service, action.as_str()) {
                (Service::Ec2, "DescribeInstances") => self.describe_instances(&mut st, &params),
                (Service::Ec2, "StartInstances") => {
                    self.start_stop_instances(&mut st, &params, true)
                }
                (Service::Ec2, "StopInstances") => {
                    self.start_stop_instances(&mut st, &params, false)
                }
                (Service::Ec2, "") => Err(err(
                    400,
                    "MissingAction",
                    "The request must contain the parameter Action",
                )),
                (Service::Ec2, a) if super::eice::handles(a) => {
                    super::eice::handle(self, &mut st, &params)
                }
                (Service::Ec2, a) if super::diag::handles(a) => {
                    super::diag::handle(self, &mut st, a, &params)
                }
                (Service::Ec2, other) => Err(err(
                    400,
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                )),
                (Service::InstanceConnect, "SendSSHPublicKey") => {
                    self.send_ssh_public_key(&mut st, &params)
                }
                (Service::InstanceConnect, "SendSerialConsoleSSHPublicKey") => {
                    self.send_serial_console_key(&mut st, &params)
                }
                (Service::InstanceConnect, other) => Err(err(
                    400,
                    "UnknownOperationException",
                    format!("Unknown operation {other:?}"),
                )),
                (Service::Ssm, a) => super::ssm::handle(self, &mut st, a, &params),
                (Service::CloudTrail, a) => super::cloudtrail::handle(self, &mut st, a, &params),
                (Service::Iam | Service::Sts, a) => {
                    super::iam::handle(self, &mut st, service, a, &params)
                }
            }
        };

        // CloudTrail records every EC2 Instance Connect call it authenticated.
        if service == Service::InstanceConnect && st.requests[idx].auth_error.is_none() {
            let error = result
                .as_ref()
                .err()
                .map(|(_, c, m)| (c.clone(), m.clone()));
            super::cloudtrail::record_push(self, &mut st, &action, &params, &req.headers, error);
        }
        let mut resp = match result {
            Ok(r) => r,
            Err((status, code, msg)) => {
                st.requests[idx].error_code = Some(code.clone());
                match service {
                    Service::Ec2 => ec2_error_response(status, &code, &msg),
                    Service::InstanceConnect => json_error_response(status, &code, &msg),
                    Service::Ssm => super::ssm::error_response(status, &code, &msg),
                    Service::CloudTrail => super::cloudtrail::error_response(status, &code, &msg),
                    Service::Iam | Service::Sts => {
                        super::iam::error_response(service, status, &code, &msg)
                    }
                }
            }
        };
        st.requests[idx].status = resp.status;
        resp.delay = delay;
        if let Some((id, state)) = st.then_state.remove(&action)
            && let Some(rec) = st.instances.iter_mut().find(|i| i.id == id)
        {
            rec.state = state;
            rec.transition = None;
            let _ = sync_addresses(&self.config.dir, rec);
        }
        match st.faults.get_mut(&action).and_then(VecDeque::pop_front) {
            Some(Fault::Broken(how)) => resp.delivery = how,
            Some(Fault::Body(body)) => {
                resp.status = 200;
                resp.body = body.into_bytes();
            }
            Some(Fault::Latency(d)) => resp.delay += d,
            Some(Fault::Answer { .. }) | None => {}
        }
        resp
    }

    // ---------------------------------------------------------------- EC2

    fn describe_instances(
        &self,
        st: &mut State,
        params: &BTreeMap<String, String>,
    ) -> Result<Response, ApiError> {
        refuse_dry_run(params)?;
        let ids: Vec<String> = indexed(params, "InstanceId")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let filters = parse_filters(params);
        let max_results = match params.get("MaxResults") {
            None => None,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (5..=1000).contains(&n) => Some(n as usize),
                _ => {
                    return Err(err(
                        400,
                        "InvalidParameterValue",
                        format!(
                            "Value ( {v} ) for parameter maxResults is invalid. Parameter may only be between 5 and 1000."
                        ),
                    ));
                }
            },
        };
        if max_results.is_some() && !ids.is_empty() {
            return Err(err(
                400,
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }

        check_instance_ids(st, &ids)?;
        for (name, values) in &filters {
            if !filter_name_known(name) {
                return Err(err(
                    400,
                    "InvalidParameterValue",
                    format!("The filter '{name}' is invalid"),
                ));
            }
            if values.is_empty() {
                return Err(err(
                    400,
                    "InvalidParameterValue",
                    format!("The filter '{name}' requires a value"),
                ));
            }
        }

        let matching: Vec<&InstanceRec> = st
            .instances
            .iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.id))
            .filter(|i| {
                filters
                    .iter()
                    .all(|(name, values)| filter_matches(i, &self.config, name, values))
            })
            .collect();

        // Pagination. The token is bound to the request's selection criteria.
        let fingerprint = format!("{ids:?}|{filters:?}|{max_results:?}");
        let offset = match params.get("NextToken") {
            None => 0,
            Some(tok) => match st.tokens.get(tok) {
                Some((fp, off)) if *fp == fingerprint => *off,
                _ => {
                    return Err(err(
                        400,
                        "InvalidParameterValue",
                        format!("Invalid value '{tok}' for nextToken"),
                    ));
                }
            },
        };
        let page = match (max_results, st.page_size) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => usize::MAX,
        }
        .max(1);
        let end = offset.saturating_add(page).min(matching.len());
        let slice: Vec<InstanceRec> = matching[offset.min(end)..end]
            .iter()
            .map(|r| (*r).clone())
            .collect();
        let next = (end < matching.len()).then(|| {
            let tok = format!("eyJ2IjoxLCJjIjoi{}", random_hex(40));
            st.tokens.insert(tok.clone(), (fingerprint.clone(), end));
            tok
        });

        let mut x = String::with_capacity(2048);
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<DescribeInstancesResponse xmlns=\"{EC2_XMLNS}\">"
        ));
        el(&mut x, "requestId", &uuid_like());
        x.push_str("<reservationSet>");
        for inst in &slice {
            x.push_str("<item>");
            // One reservation per instance; its id is derived from the instance id.
            el(&mut x, "reservationId", &format!("r-{}", &inst.id[2..]));
            el(&mut x, "ownerId", &self.config.account_id);
            x.push_str("<groupSet/>");
            x.push_str("<instancesSet>");
            self.instance_xml(&mut x, inst);
            x.push_str("</instancesSet>");
            x.push_str("</item>");
        }
        x.push_str("</reservationSet>");
        if let Some(tok) = next {
            el(&mut x, "nextToken", &tok);
        }
        x.push_str("</DescribeInstancesResponse>");
        Ok(Response::new(200, "text/xml;charset=UTF-8", x))
    }

    /// StartInstances (`start`) or StopInstances: `InstanceId.N`, all
    /// checked before any is changed, as EC2 does.
    fn start_stop_instances(
        &self,
        st: &mut State,
        params: &BTreeMap<String, String>,
        start: bool,
    ) -> Result<Response, ApiError> {
        refuse_dry_run(params)?;
        let mut ids: Vec<String> = Vec::new();
        for (_, id) in indexed(params, "InstanceId") {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Err(err(
                400,
                "MissingParameter",
                "The request must contain the parameter InstanceId",
            ));
        }
        check_instance_ids(st, &ids)?;
        let find = |st: &State, id: &str| {
            st.instances
                .iter()
                .position(|i| i.id == id)
                .expect("checked above")
        };
        for id in &ids {
            let state = st.instances[find(st, id)].state.as_str();
            let ok = if start {
                matches!(state, "stopped" | "pending" | "running")
            } else {
                matches!(state, "running" | "pending" | "stopping" | "stopped")
            };
            if !ok {
                let verb = if start { "started" } else { "stopped" };
                return Err(err(
                    400,
                    "IncorrectInstanceState",
                    format!("The instance '{id}' is not in a state from which it can be {verb}."),
                ));
            }
        }

        let now = Instant::now();
        let due = now + st.start_delay;
        let launch = self.now(st);
        let mut changed = false;
        let mut items = Vec::new();
        for id in &ids {
            let i = find(st, id);
            let rec = &mut st.instances[i];
            let previous = rec.state.clone();
            let (current, then) = match (start, previous.as_str()) {
                (true, "stopped") => ("pending", "running"),
                (false, "running" | "pending") => ("stopping", "stopped"),
                _ => {
                    items.push((id.clone(), previous.clone(), previous));
                    continue;
                }
            };
            rec.state = current.to_owned();
            rec.transition = Some(Transition {
                to: then.to_owned(),
                at: due,
            });
            if start {
                rec.launch_time = launch;
            }
            sync_addresses(&self.config.dir, rec)
                .map_err(|e| err(500, "InternalError", format!("bed: {e}")))?;
            changed = true;
            items.push((id.clone(), current.to_owned(), previous));
        }
        if changed {
            if st.start_delay.is_zero() {
                self.apply_transitions(st);
            } else {
                self.schedule_transitions(due);
            }
        }

        let op = if start {
            "StartInstancesResponse"
        } else {
            "StopInstancesResponse"
        };
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!("<{op} xmlns=\"{EC2_XMLNS}\">"));
        el(&mut x, "requestId", &uuid_like());
        x.push_str("<instancesSet>");
        for (id, current, previous) in &items {
            x.push_str("<item>");
            el(&mut x, "instanceId", id);
            for (tag, state) in [("currentState", current), ("previousState", previous)] {
                x.push_str(&format!("<{tag}>"));
                el(&mut x, "code", &state_code(state).unwrap_or(0).to_string());
                el(&mut x, "name", state);
                x.push_str(&format!("</{tag}>"));
            }
            x.push_str("</item>");
        }
        x.push_str(&format!("</instancesSet></{op}>"));
        Ok(Response::new(200, "text/xml;charset=UTF-8", x))
    }

    fn instance_xml(&self, x: &mut String, i: &InstanceRec) {
        let c = &self.config;
        x.push_str("<item>");
        el(x, "instanceId", &i.id);
        el(x, "imageId", &i.image_id);
        x.push_str("<instanceState>");
        el(x, "code", &i.state_code().to_string());
        el(x, "name", &i.state);
        x.push_str("</instanceState>");
        el(
            x,
            "privateDnsName",
            if i.state == "terminated" {
                ""
            } else {
                &i.private_dns
            },
        );
        el(x, "dnsName", i.current_public_dns().unwrap_or(""));
        el(
            x,
            "reason",
            if i.state == "stopped" {
                "User initiated"
            } else {
                ""
            },
        );
        el(x, "amiLaunchIndex", "0");
        x.push_str("<productCodes/>");
        el(x, "instanceType", &i.instance_type);
        el(x, "launchTime", &timefmt::iso8601(i.launch_time));
        x.push_str("<placement>");
        el(x, "availabilityZone", &i.availability_zone);
        el(x, "groupName", "");
        el(x, "tenancy", "default");
        x.push_str("</placement>");
        x.push_str("<monitoring><state>disabled</state></monitoring>");
        if i.state != "terminated" {
            el(x, "subnetId", &c.subnet_id);
            el(x, "vpcId", &c.vpc_id);
        }
        if let Some(ip) = i.current_private_ip() {
            el(x, "privateIpAddress", ip);
        }
        if let Some(ip) = i.current_public_ip() {
            el(x, "ipAddress", ip);
        }
        el(x, "sourceDestCheck", "true");
        x.push_str("<groupSet><item>");
        el(x, "groupId", &c.security_group_id);
        el(x, "groupName", "default");
        x.push_str("</item></groupSet>");
        el(x, "architecture", "x86_64");
        el(x, "rootDeviceType", "ebs");
        el(x, "rootDeviceName", "/dev/xvda");
        x.push_str("<blockDeviceMapping/>");
        el(x, "virtualizationType", "hvm");
        el(x, "clientToken", "");
        if !i.tags.is_empty() {
            x.push_str("<tagSet>");
            for (k, v) in &i.tags {
                x.push_str("<item>");
                el(x, "key", k);
                el(x, "value", v);
                x.push_str("</item>");
            }
            x.push_str("</tagSet>");
        }
        el(x, "hypervisor", "xen");
        if i.state != "terminated" {
            x.push_str("<networkInterfaceSet><item>");
            el(x, "networkInterfaceId", &i.eni_id);
            el(x, "subnetId", &c.subnet_id);
            el(x, "vpcId", &c.vpc_id);
            el(x, "ownerId", &c.account_id);
            el(x, "status", "in-use");
            if i.ipv4 {
                el(x, "privateIpAddress", &i.private_ip);
            }
            el(x, "privateDnsName", &i.private_dns);
            if let (Some(ip), Some(dns)) = (i.current_public_ip(), i.current_public_dns()) {
                x.push_str("<association>");
                el(x, "publicIp", ip);
                el(x, "publicDnsName", dns);
                el(x, "ipOwnerId", "amazon");
                x.push_str("</association>");
            }
            x.push_str("<ipv6AddressesSet>");
            if let Some(v6) = &i.ipv6 {
                x.push_str("<item>");
                el(x, "ipv6Address", v6);
                el(x, "isPrimaryIpv6", "false");
                x.push_str("</item>");
            }
            x.push_str("</ipv6AddressesSet>");
            x.push_str("</item></networkInterfaceSet>");
        }
        el(x, "ebsOptimized", "false");
        el(x, "enaSupport", "true");
        x.push_str("<metadataOptions>");
        el(x, "state", "applied");
        el(x, "httpTokens", "required");
        el(x, "httpPutResponseHopLimit", "2");
        el(x, "httpEndpoint", &i.metadata_http_endpoint);
        el(x, "httpProtocolIpv6", "disabled");
        el(x, "instanceMetadataTags", "disabled");
        x.push_str("</metadataOptions>");
        el(x, "platformDetails", &i.platform_details);
        el(x, "usageOperation", "RunInstances");
        if let Some(v6) = &i.ipv6
            && i.state != "terminated"
        {
            el(x, "ipv6Address", v6);
        }
        x.push_str("</item>");
    }

    // ------------------------------------------------ EC2 Instance Connect

    fn send_ssh_public_key(
        &self,
        st: &mut State,
        p: &BTreeMap<String, String>,
    ) -> Result<Response, ApiError> {
        let id = required(p, "InstanceId")?;
        let user = required(p, "InstanceOSUser")?;
        let key = required(p, "SSHPublicKey")?;
        let az = p.get("AvailabilityZone");
        check_eic_instance_id(id)?;
        if !is_valid_os_user(user) {
            return Err(invalid_args(format!(
                "InstanceOSUser {user:?} is invalid: 1-32 characters matching ^[A-Za-z_][A-Za-z0-9@._-]{{0,30}}[A-Za-z0-9$_-]?$"
            )));
        }
        let key = check_public_key(key)?;
        if let Some(az) = az
            && !(6..=32).contains(&az.len())
        {
            return Err(invalid_args(format!("AvailabilityZone {az:?} is invalid")));
        }
        let inst = self.eic_instance(st, id)?;
        if let Some(az) = az
            && *az != inst.availability_zone
        {
            return Err(invalid_args(format!(
                "Instance {id} is not in availability zone {az}; it is in {}",
                inst.availability_zone
            )));
        }
        let now = self.now(st);
        let pushed_at = now - st.push_age;
        let push = Push {
            instance_id: id.clone(),
            os_user: user.clone(),
            public_key: key.to_owned(),
            availability_zone: az.cloned(),
            pushed_at,
            expires_at: pushed_at + KEY_LIFETIME_SECS,
        };
        add_key_line(&self.config.dir, &push)
            .map_err(|e| err(500, "ServiceException", format!("bed: {e}")))?;
        st.pushes.push(push);
        Ok(json_ok())
    }

    fn send_serial_console_key(
        &self,
        st: &mut State,
        p: &BTreeMap<String, String>,
    ) -> Result<Response, ApiError> {
        let id = required(p, "InstanceId")?;
        let key = required(p, "SSHPublicKey")?;
        check_eic_instance_id(id)?;
        let key = check_public_key(key)?;
        if let Some(port) = p.get("SerialPort")
            && port != "0"
        {
            return Err(invalid_args(format!(
                "SerialPort {port} is invalid: only 0 is supported"
            )));
        }
        self.eic_instance(st, id)?;
        let now = self.now(st);
        let pushed_at = now - st.push_age;
        st.serial_pushes.push(Push {
            instance_id: id.clone(),
            os_user: String::new(),
            public_key: key.to_owned(),
            availability_zone: None,
            pushed_at,
            expires_at: pushed_at + KEY_LIFETIME_SECS,
        });
        Ok(json_ok())
    }

    /// Look an instance up for EC2 Instance Connect: exists and is running.
    fn eic_instance(&self, st: &State, id: &str) -> Result<InstanceRec, ApiError> {
        let inst = st.instances.iter().find(|i| i.id == id).ok_or_else(|| {
            err(
                400,
                "EC2InstanceNotFoundException",
                format!("Instance not found: {id}"),
            )
        })?;
        if inst.state != "running" {
            return Err(err(
                400,
                "EC2InstanceStateInvalidException",
                format!(
                    "Instance {id} is in state {} and must be running",
                    inst.state
                ),
            ));
        }
        Ok(inst.clone())
    }
}

/// EC2's instance-id checks: malformed ids first, then existence (all
/// missing ones listed).
fn check_instance_ids(st: &State, ids: &[String]) -> Result<(), ApiError> {
    for id in ids {
        if !is_ec2_instance_id(id) {
            return Err(err(
                400,
                "InvalidInstanceID.Malformed",
                format!("Invalid id: \"{id}\""),
            ));
        }
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !st.instances.iter().any(|i| &i.id == *id))
        .collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(err(
            400,
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{one}' does not exist"),
        )),
        many => {
            let list = many
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            Err(err(
                400,
                "InvalidInstanceID.NotFound",
                format!("The instance IDs '{list}' do not exist"),
            ))
        }
    }
}

// -------------------------------------------------------------- decoding

/// Work out service, action and parameters. A body that cannot be decoded is
/// reported as the protocol's serialization error (after auth is checked).
fn decode(req: &Request) -> (Service, String, BTreeMap<String, String>, Option<ApiError>) {
    if let Some(target) = req.header("x-amz-target") {
        // The target names the service: AmazonSSM.* is Systems Manager;
        // anything else is taken as EC2 Instance Connect.
        let (service, prefix) = if target.starts_with(super::ssm::TARGET_PREFIX) {
            (Service::Ssm, super::ssm::TARGET_PREFIX)
        } else if target.starts_with(super::cloudtrail::TARGET_PREFIX) {
            (Service::CloudTrail, super::cloudtrail::TARGET_PREFIX)
        } else if target.starts_with(super::cloudtrail::SHORT_TARGET_PREFIX) {
            (Service::CloudTrail, super::cloudtrail::SHORT_TARGET_PREFIX)
        } else {
            (Service::InstanceConnect, EIC_TARGET_PREFIX)
        };
        let action = target.strip_prefix(prefix).unwrap_or(target).to_owned();
        let mut params = BTreeMap::new();
        let ct_ok = req
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/x-amz-json-1.1"));
        if !ct_ok {
            let pe = err(
                400,
                "SerializationException",
                "Content-Type must be application/x-amz-json-1.1",
            );
            return (service, action, params, Some(pe));
        }
        if !target.starts_with(prefix) {
            let pe = err(
                400,
                "UnknownOperationException",
                format!("Unknown target {target:?}"),
            );
            return (service, action, params, Some(pe));
        }
        match serde_json::from_slice::<serde_json::Value>(&req.body) {
            Ok(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    params.insert(k, s);
                }
                (service, action, params, None)
            }
            _ => {
                let pe = err(
                    400,
                    "SerializationException",
                    "Request body is not a JSON object",
                );
                (service, action, params, Some(pe))
            }
        }
    } else {
        let mut params = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(req.query.as_bytes()) {
            params.insert(k.into_owned(), v.into_owned());
        }
        let is_form = req
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            for (k, v) in form_urlencoded::parse(&req.body) {
                params.insert(k.into_owned(), v.into_owned());
            }
        }
        let action = params.get("Action").cloned().unwrap_or_default();
        // Query services tell themselves apart by their API version.
        let service = match params.get("Version").map(String::as_str) {
            Some(super::iam::IAM_VERSION) => Service::Iam,
            Some(super::iam::STS_VERSION) => Service::Sts,
            _ => Service::Ec2,
        };
        (service, action, params, None)
    }
}

/// `Prefix.N` values sorted by N.
pub fn indexed(params: &BTreeMap<String, String>, prefix: &str) -> Vec<(usize, String)> {
    let mut v: Vec<(usize, String)> = params
        .iter()
        .filter_map(|(k, val)| {
            let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
            Some((n, val.clone()))
        })
        .collect();
    v.sort();
    v
}

pub fn parse_filters(params: &BTreeMap<String, String>) -> Vec<(String, Vec<String>)> {
    // Filter.N.Name / Filter.N.Value.M
    let mut out: Vec<(usize, String, Vec<String>)> = Vec::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    let mut values: BTreeMap<usize, Vec<(usize, String)>> = BTreeMap::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix("Filter.") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(n), Some(field)) = (
            parts.next().and_then(|n| n.parse::<usize>().ok()),
            parts.next(),
        ) else {
            continue;
        };
        match (field, parts.next()) {
            ("Name", None) => {
                names.insert(n, v.clone());
            }
            ("Value", Some(m)) => {
                if let Ok(m) = m.parse::<usize>() {
                    values.entry(n).or_default().push((m, v.clone()));
                }
            }
            _ => {}
        }
    }
    for (n, name) in names {
        let mut vals = values.remove(&n).unwrap_or_default();
        vals.sort();
        out.push((n, name, vals.into_iter().map(|(_, v)| v).collect()));
    }
    out.into_iter().map(|(_, n, v)| (n, v)).collect()
}

// --------------------------------------------------------------- filters

fn filter_name_known(name: &str) -> bool {
    name.starts_with("tag:")
        || matches!(
            name,
            "instance-id"
                | "tag-key"
                | "tag-value"
                | "dns-name"
                | "private-dns-name"
                | "ip-address"
                | "private-ip-address"
                | "network-interface.ipv6-addresses.ipv6-address"
                | "instance-state-name"
                | "instance-state-code"
                | "availability-zone"
                | "vpc-id"
                | "subnet-id"
                | "instance-type"
                | "image-id"
                | "platform-details"
                | "metadata-options.http-endpoint"
        )
}

/// Values are OR-ed; each may use EC2 wildcards.
fn filter_matches(i: &InstanceRec, c: &Config, name: &str, values: &[String]) -> bool {
    let any = |candidates: &[&str]| {
        values
            .iter()
            .any(|pat| candidates.iter().any(|c| wildcard_match(pat, c)))
    };
    fn opt(o: Option<&str>) -> Vec<&str> {
        o.into_iter().collect()
    }
    if let Some(key) = name.strip_prefix("tag:") {
        let vals: Vec<&str> = i
            .tags
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        return any(&vals);
    }
    match name {
        "instance-id" => any(&[&i.id]),
        "tag-key" => any(&i.tags.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()),
        "tag-value" => any(&i.tags.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>()),
        "dns-name" => any(&opt(i.current_public_dns())),
        "private-dns-name" => any(&opt(
            (i.state != "terminated").then_some(i.private_dns.as_str())
        )),
        "ip-address" => any(&opt(i.current_public_ip())),
        "private-ip-address" => any(&opt(i.current_private_ip())),
        "network-interface.ipv6-addresses.ipv6-address" => {
            any(&opt(i.ipv6.as_deref().filter(|_| i.state != "terminated")))
        }
        "instance-state-name" => any(&[&i.state]),
        "instance-state-code" => any(&[&i.state_code().to_string()]),
        "availability-zone" => any(&[&i.availability_zone]),
        "instance-type" => any(&[&i.instance_type]),
        "image-id" => any(&[&i.image_id]),
        "platform-details" => any(&[&i.platform_details]),
        "metadata-options.http-endpoint" => any(&[&i.metadata_http_endpoint]),
        // One VPC and subnet per bed.
        "vpc-id" => i.state != "terminated" && any(&[&c.vpc_id]),
        "subnet-id" => i.state != "terminated" && any(&[&c.subnet_id]),
        _ => false,
    }
}

/// EC2 filter wildcards: `*` any run, `?` exactly one char, `\` escapes the
/// next character. Case-sensitive.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        toks.push(match c {
            '\\' => Tok::Lit(it.next().unwrap_or('\\')),
            '*' => Tok::Any,
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Classic iterative glob with backtracking to the last '*'.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Any)
}

// ------------------------------------------------------------ validation

/// `^i-[0-9a-f]{8,17}$`, what EC2 accepts as a well-formed instance id.
pub fn is_ec2_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|h| {
        (8..=17).contains(&h.len()) && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// EC2 Instance Connect's model: `^i-[a-f0-9]+$`, 10-32 characters.
fn check_eic_instance_id(id: &str) -> Result<(), ApiError> {
    let ok = (10..=32).contains(&id.len())
        && id.strip_prefix("i-").is_some_and(|h| {
            !h.is_empty() && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid_args(format!(
            "InstanceId {id:?} is invalid: must match ^i-[a-f0-9]+$ and be 10-32 characters"
        )))
    }
}

/// `^[A-Za-z_][A-Za-z0-9\@\._-]{0,30}[A-Za-z0-9\$_-]?$` (the service model's
/// pattern), which also keeps it safe as a file name in the bed.
pub fn is_valid_os_user(u: &str) -> bool {
    let b = u.as_bytes();
    if b.is_empty() || b.len() > 32 {
        return false;
    }
    let first = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let mid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'@' | b'.' | b'_' | b'-');
    let last = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'$' | b'_' | b'-');
    if !first(b[0]) {
        return false;
    }
    let rest = &b[1..];
    // Either all of `rest` are mid chars (<=30), or all but the last are mid
    // (<=30) and the last is a `last` char.
    let all_mid = rest.len() <= 30 && rest.iter().all(|&c| mid(c));
    let mid_then_last = !rest.is_empty()
        && rest.len() <= 31
        && rest[..rest.len() - 1].iter().all(|&c| mid(c))
        && last(rest[rest.len() - 1]);
    all_mid || mid_then_last
}

/// Accept what the service accepts: an OpenSSH public key line of type
/// ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp{256,384,521}, 80-4096 chars,
/// whose base64 blob really is a key of the named type. Security-key
/// (`sk-…`) and other types are InvalidArgsException. A line ending after
/// the key is accepted, as the service does (AWS's documented
/// `--ssh-public-key file://key.pub` sends the file's newline), and
/// dropped: the key line is returned.
fn check_public_key(key: &str) -> Result<&str, ApiError> {
    let key = key
        .strip_suffix('\n')
        .map_or(key, |k| k.strip_suffix('\r').unwrap_or(k));
    if !(80..=4096).contains(&key.len()) {
        return Err(invalid_args(format!(
            "SSHPublicKey must be 80-4096 characters, got {}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid_args("SSHPublicKey contains control characters"));
    }
    let mut parts = key.split(' ');
    let kind = parts.next().unwrap_or("");
    let b64 = parts.next().unwrap_or("");
    if kind.starts_with("sk-") {
        return Err(invalid_args(format!(
            "Unsupported SSH public key type {kind}: security keys are not supported"
        )));
    }
    if !matches!(
        kind,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
    ) {
        return Err(invalid_args(format!(
            "Unsupported SSH public key type {kind:?}"
        )));
    }
    let blob =
        base64_decode(b64).ok_or_else(|| invalid_args("SSHPublicKey is not valid base64"))?;
    let mut rd = &blob[..];
    let inner =
        read_ssh_string(&mut rd).ok_or_else(|| invalid_args("SSHPublicKey blob is truncated"))?;
    if inner != kind.as_bytes() {
        return Err(invalid_args(
            "SSHPublicKey blob does not match its key type",
        ));
    }
    if kind == "ssh-ed25519" {
        let pk = read_ssh_string(&mut rd)
            .ok_or_else(|| invalid_args("SSHPublicKey blob is truncated"))?;
        if pk.len() != 32 || !rd.is_empty() {
            return Err(invalid_args("SSHPublicKey is not a valid ed25519 key"));
        }
    }
    Ok(key)
}

fn read_ssh_string<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rd.len() < 4 {
        return None;
    }
    let n = u32::from_be_bytes([rd[0], rd[1], rd[2], rd[3]]) as usize;
    let s = rd.get(4..4 + n)?;
    *rd = &rd[4 + n..];
    Some(s)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn required<'a>(p: &'a BTreeMap<String, String>, name: &str) -> Result<&'a String, ApiError> {
    p.get(name)
        .ok_or_else(|| invalid_args(format!("Missing required parameter {name}")))
}

fn invalid_args(msg: impl Into<String>) -> ApiError {
    err(400, "InvalidArgsException", msg)
}

// -------------------------------------------------------------- answers

fn json_ok() -> Response {
    let body = serde_json::json!({ "RequestId": uuid_like(), "Success": true }).to_string();
    let mut r = Response::new(200, "application/x-amz-json-1.1", body);
    r.headers.push(("x-amzn-RequestId".into(), uuid_like()));
    r
}

pub fn ec2_error_response(status: u16, code: &str, msg: &str) -> Response {
    let mut x =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>");
    el(&mut x, "Code", code);
    el(&mut x, "Message", msg);
    x.push_str("</Error></Errors>");
    el(&mut x, "RequestID", &uuid_like());
    x.push_str("</Response>");
    Response::new(status, "text/xml;charset=UTF-8", x)
}

pub fn json_error_response(status: u16, code: &str, msg: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "Message": msg }).to_string();
    let mut r = Response::new(status, "application/x-amz-json-1.1", body);
    r.headers.push(("x-amzn-ErrorType".into(), code.to_owned()));
    r.headers.push(("x-amzn-RequestId".into(), uuid_like()));
    r
}

/// How each service reports a failed signature check.
fn auth_error(service: Service, e: &sigv4::AuthError) -> ApiError {
    use sigv4::AuthError as A;
    // IAM and STS answer as the Query protocol does.
    let service = match service {
        Service::Iam | Service::Sts => Service::Ec2,
        Service::CloudTrail => Service::Ssm,
        other => other,
    };
    match (service, e) {
        (Service::Ec2, A::Missing(_)) => err(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ),
        (Service::Ec2, A::UnknownKey(_)) => err(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ),
        (Service::Ec2, A::Expired(_)) => err(400, "RequestExpired", "Request has expired."),
        (Service::Ec2, A::Malformed(m)) => err(400, "IncompleteSignature", m.clone()),
        (Service::Ec2, A::Mismatch(_)) => err(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ),
        (Service::InstanceConnect | Service::Ssm, A::Missing(_)) => err(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        (Service::InstanceConnect | Service::Ssm, A::UnknownKey(_)) => err(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        (Service::InstanceConnect | Service::Ssm, A::Expired(m)) => err(
            403,
            "InvalidSignatureException",
            format!("Signature expired: {m}"),
        ),
        (Service::InstanceConnect | Service::Ssm, A::Malformed(m)) => {
            err(400, "IncompleteSignatureException", m.clone())
        }
        (Service::InstanceConnect | Service::Ssm, A::Mismatch(_)) => err(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ),
        (Service::CloudTrail | Service::Iam | Service::Sts, _) => unreachable!(),
    }
}

/// The answer to a call over its action's rate limit, as each service
/// throttles: EC2 `RequestLimitExceeded` (503, XML), EC2 Instance Connect
/// `ThrottlingException` (JSON 1.1, status per [`eic_status`]), Systems
/// Manager `ThrottlingException` (JSON 1.1, 400).
fn throttling_error(service: Service) -> ApiError {
    let code = match service {
        Service::Ec2 => "RequestLimitExceeded",
        Service::InstanceConnect | Service::Ssm | Service::CloudTrail => "ThrottlingException",
        Service::Iam | Service::Sts => "Throttling",
    };
    let status = match service {
        Service::Ec2 => ec2_status(code),
        Service::InstanceConnect => eic_status(code),
        Service::Ssm => super::ssm::status(code),
        Service::CloudTrail => super::cloudtrail::status(code),
        Service::Iam | Service::Sts => super::iam::status(code),
    };
    err(status, code, default_message(code))
}

/// HTTP status EC2 uses for an error code (Query protocol).
pub fn ec2_status(code: &str) -> u16 {
    match code {
        // EC2 throttles with 503, not 400/429.
        "RequestLimitExceeded"
        | "Unavailable"
        | "ServiceUnavailable"
        | "InsufficientInstanceCapacity" => 503,
        "InternalError" | "InternalFailure" => 500,
        "AuthFailure" | "MissingAuthenticationToken" => 401,
        "UnauthorizedOperation"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "Blocked"
        | "OptInRequired" => 403,
        "DryRunOperation" => 412,
        _ => 400,
    }
}

/// HTTP status for an EC2 Instance Connect error code. The SDK keys on
/// `__type` / `x-amzn-ErrorType`, not the status; these follow the usual AWS
/// JSON conventions (client faults 400, auth 403, server faults 5xx).
pub fn eic_status(code: &str) -> u16 {
    match code {
        "AuthException"
        | "AccessDeniedException"
        | "InvalidSignatureException"
        | "MissingAuthenticationTokenException" => 403,
        "ServiceException" | "InternalFailure" | "InternalServerError" => 500,
        "EC2InstanceUnavailableException"
        | "ServiceUnavailableException"
        | "SerialConsoleSessionUnavailableException" => 503,
        _ => 400,
    }
}

fn default_message(code: &str) -> String {
    match code {
        "RequestLimitExceeded" => "Request limit exceeded.".into(),
        "UnauthorizedOperation" => "You are not authorized to perform this operation.".into(),
        "AuthFailure" => "AWS was not able to validate the provided access credentials".into(),
        "InternalError" => "An internal error has occurred".into(),
        "Unavailable" => "The server is overloaded and can't handle the request.".into(),
        "AuthException" => "User: arn:aws:iam::123456789012:user/test is not authorized to perform: ec2-instance-connect:SendSSHPublicKey on resource".into(),
        "ThrottlingException" => "Rate exceeded".into(),
        "ServiceException" => "The service encountered an error. Try again.".into(),
        "EC2InstanceUnavailableException" => "The instance is currently unavailable. Try again later.".into(),
        other => format!("Injected failure {other}"),
    }
}

// ------------------------------------------------------------------ XML

/// Append `<name>escaped</name>` (or `<name/>` when empty).
fn el(out: &mut String, name: &str, text: &str) {
    if text.is_empty() {
        out.push_str(&format!("<{name}/>"));
    } else {
        out.push_str(&format!("<{name}>{}</{name}>", xml_escape(text)));
    }
}

/// Escape text for XML element content.
///
/// `& < >` become entities. Characters XML 1.0 forbids raw (C0 controls other
/// than TAB/LF, plus U+FFFE/U+FFFF) and CR (which parsers would normalise
/// away) are written as decimal character references such as `&#27;`.
/// Strictly, XML 1.0 forbids those references too; the AWS SDK's XML decoder
/// (aws-smithy-xml's unescape) accepts any Unicode scalar value in a
/// reference, so the character reaches the client intact, whereas a *raw*
/// ESC makes the SDK's tokenizer (xmlparser) reject the whole response.
/// See tests/testbed_selftest.rs for the end-to-end check.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                out.push_str(&format!("&#{};", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------- files

/// Write a file atomically (temp file in the same directory + rename), so
/// the AuthorizedKeysCommand never sees a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("write_atomic: path has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        random_hex(12)
    ));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Append `<expires_at> <key>` to `keys/<instance>/<user>`. A mutex in the
/// caller (the state lock) serialises writers.
pub fn add_key_line(dir: &Path, push: &Push) -> std::io::Result<()> {
    let path = dir.join("keys").join(&push.instance_id).join(&push.os_user);
    let mut contents = std::fs::read(&path).unwrap_or_default();
    contents.extend_from_slice(format!("{} {}\n", push.expires_at, push.public_key).as_bytes());
    write_atomic(&path, &contents)
}

// --------------------------------------------------------------- random

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ssh_key::rand_core::RngCore;
    let mut b = [0u8; N];
    ssh_key::rand_core::OsRng.fill_bytes(&mut b);
    b
}

/// `n` random lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        s.push_str(&hex::encode(random_bytes::<16>()));
    }
    s.truncate(n);
    s
}

pub fn uuid_like() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

// ---------------------------------------------------------- test time

impl RateLimit {
    /// Refill now for `d` of time, as if it had passed, so a test sees a
    /// token come back without waiting for it in real time (see
    /// `TestBed::pass_rate_limit_time`).
    pub fn pass_time(&mut self, d: Duration) {
        self.tokens = (self.tokens + d.as_secs_f64() * self.per_second).min(f64::from(self.burst));
    }
}
