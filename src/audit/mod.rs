//! `eic-connect audit`: who connected to what, and when, from CloudTrail's
//! records of EC2 Instance Connect (`SendSSHPublicKey`,
//! `SendSerialConsoleSSHPublicKey`, `OpenTunnel`).
//!
//! Pure parts live here: the query the command line asked for, times,
//! reading a CloudTrail record (untrusted JSON: any field may be missing or
//! of another type), naming the principal, mapping a tunnel's private
//! address to an instance, and the output rows. `commands::audit` does the
//! calls.

pub mod time;

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::cli::AuditEventKind;
use crate::fleet::Filters;
use crate::sanitize::terminal_safe;
use crate::target::Target;

/// CloudTrail's `eventSource` for EC2 Instance Connect.
pub const EVENT_SOURCE: &str = "ec2-instance-connect.amazonaws.com";

/// Which instances the user asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every event.
    All,
    /// The instances a target names.
    Target(Target),
    /// The instances `list`-style filters select.
    Filters(Filters),
}

/// `eic-connect audit`, validated: nothing here needs the network.
#[derive(Debug, Clone)]
pub struct Query {
    pub selection: Selection,
    /// The range, in epoch seconds (`since` < `until`).
    pub since: i64,
    pub until: i64,
    pub os_user: Option<String>,
    pub principal: Option<String>,
    pub failures: bool,
    /// Empty: every kind.
    pub kinds: Vec<Kind>,
    pub limit: usize,
    pub json: bool,
}

/// The EC2 Instance Connect calls CloudTrail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SshKey,
    Serial,
    Tunnel,
}

impl Kind {
    pub fn of(event_name: &str) -> Option<Kind> {
        match event_name {
            "SendSSHPublicKey" => Some(Kind::SshKey),
            "SendSerialConsoleSSHPublicKey" => Some(Kind::Serial),
            "OpenTunnel" => Some(Kind::Tunnel),
            _ => None,
        }
    }
}

impl From<AuditEventKind> for Kind {
    fn from(kind: AuditEventKind) -> Kind {
        match kind {
            AuditEventKind::SendSshPublicKey => Kind::SshKey,
            AuditEventKind::Serial => Kind::Serial,
            AuditEventKind::OpenTunnel => Kind::Tunnel,
        }
    }
}

/// What `LookupEvents` says about an event outside its record.
#[derive(Debug, Clone, Default)]
pub struct Outer {
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub event_time: Option<i64>,
    pub username: Option<String>,
}

/// One EC2 Instance Connect event, as far as its record could be read.
/// Every text is as CloudTrail gave it: sanitise before printing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Epoch seconds.
    pub time: Option<i64>,
    pub name: String,
    pub principal: Option<String>,
    pub principal_arn: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub instance_id: Option<String>,
    pub os_user: Option<String>,
    pub endpoint_id: Option<String>,
    pub private_ip: Option<String>,
    pub port: Option<u16>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub event_id: Option<String>,
    /// The record (`CloudTrailEvent`) was missing or not a JSON object.
    pub unreadable: bool,
}

impl Event {
    pub fn kind(&self) -> Option<Kind> {
        Kind::of(&self.name)
    }

    pub fn failed(&self) -> bool {
        self.error_code.is_some()
    }

    /// The tunnel's private address, if it is one.
    pub fn address(&self) -> Option<IpAddr> {
        self.private_ip.as_deref()?.trim().parse().ok()
    }
}

/// A string member at `path`, if it is a non-empty string.
fn text(value: &Value, path: &[&str]) -> Option<String> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A port: a JSON number or a string of digits, 1-65535.
fn port(value: Option<&Value>) -> Option<u16> {
    match value? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
}

/// Reads one event: `record` is `CloudTrailEvent`, the full record as a
/// JSON string. Never fails: what cannot be read stays `None`, and the
/// fields `LookupEvents` gives outside the record fill in.
pub fn parse_event(outer: &Outer, record: Option<&str>) -> Event {
    let parsed: Option<Value> = record
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .filter(Value::is_object);
    let mut event = Event {
        time: outer.event_time,
        name: outer.event_name.clone().unwrap_or_default(),
        principal: outer.username.clone(),
        event_id: outer.event_id.clone(),
        unreadable: parsed.is_none(),
        ..Event::default()
    };
    let Some(r) = parsed else {
        return event;
    };
    if let Some(name) = text(&r, &["eventName"]) {
        event.name = name;
    }
    if let Some(t) = text(&r, &["eventTime"]).and_then(|t| time::parse_rfc3339(&t)) {
        event.time = Some(t);
    }
    if let Some(id) = text(&r, &["eventID"]) {
        event.event_id = Some(id);
    }
    if let Some(identity) = r.get("userIdentity").filter(|v| v.is_object()) {
        let (name, arn) = principal(identity);
        event.principal = name.or(event.principal);
        event.principal_arn = arn;
    }
    event.source_ip = text(&r, &["sourceIPAddress"]);
    event.user_agent = text(&r, &["userAgent"]);
    event.error_code = text(&r, &["errorCode"]);
    event.error_message = text(&r, &["errorMessage"]);
    let params = r.get("requestParameters").filter(|v| v.is_object());
    if let Some(p) = params {
        event.instance_id = text(p, &["instanceId"]);
        event.endpoint_id = text(p, &["instanceConnectEndpointId"]);
        event.private_ip = text(p, &["privateIpAddress"]);
        event.port = port(p.get("remotePort"));
        event.os_user = match event.kind() {
            Some(Kind::Serial) => None,
            _ => text(p, &["instanceOSUser"]),
        };
    }
    event
}

/// The principal as people say it, and its ARN: an assumed role as
/// `role/session`, a user by name, `root`, a service by its name.
pub fn principal(identity: &Value) -> (Option<String>, Option<String>) {
    let arn = text(identity, &["arn"]);
    let kind = text(identity, &["type"]).unwrap_or_default();
    let after = |marker: &str| {
        arn.as_deref()
            .and_then(|a| a.split_once(marker))
            .map(|(_, rest)| rest.to_owned())
            .filter(|rest| !rest.is_empty())
    };
    let principal_id = text(identity, &["principalId"]);
    let name = match kind.as_str() {
        "Root" => Some("root".to_owned()),
        "AssumedRole" => after(":assumed-role/").or_else(|| {
            let role = text(identity, &["sessionContext", "sessionIssuer", "userName"])?;
            let session = principal_id.as_deref()?.split_once(':')?.1.to_owned();
            Some(format!("{role}/{session}"))
        }),
        "IAMUser" => text(identity, &["userName"])
            .or_else(|| after(":user/").map(|p| p.rsplit('/').next().unwrap_or(&p).to_owned())),
        "FederatedUser" => after(":federated-user/"),
        "AWSService" => text(identity, &["invokedBy"]),
        _ => None,
    };
    let name = name
        .or_else(|| text(identity, &["userName"]))
        .or_else(|| {
            arn.as_deref()
                .and_then(|a| a.rsplit(':').next())
                .map(str::to_owned)
        })
        .or(principal_id)
        .or_else(|| (!kind.is_empty()).then_some(kind));
    (name, arn)
}

/// An instance that holds an address now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub id: String,
    /// Epoch seconds.
    pub launch_time: Option<i64>,
    pub addresses: Vec<IpAddr>,
}

/// Which instance an event concerns, and how sure that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The record names the instance.
    Recorded(String),
    /// One instance holds the tunnel's address now, launched before the event.
    ByAddress(String),
    /// The one holder was launched after the event: the address was reused.
    LaunchedAfter(String),
    /// No instance holds the address now.
    NoHolder,
    /// Several instances hold the address now.
    Several(Vec<String>),
    /// No instance and no address in the record.
    Unknown,
}

impl Mapping {
    /// The stable JSON word (`null` for [`Mapping::Unknown`]).
    pub fn word(&self) -> Option<&'static str> {
        Some(match self {
            Mapping::Recorded(_) => "recorded",
            Mapping::ByAddress(_) => "by-address",
            Mapping::LaunchedAfter(_) => "address-reused",
            Mapping::NoHolder => "no-holder",
            Mapping::Several(_) => "several-holders",
            Mapping::Unknown => return None,
        })
    }

    /// The instance id, when one is named with any confidence.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Mapping::Recorded(id) | Mapping::ByAddress(id) | Mapping::LaunchedAfter(id) => Some(id),
            _ => None,
        }
    }

    pub fn uncertain(&self) -> bool {
        matches!(
            self,
            Mapping::LaunchedAfter(_) | Mapping::NoHolder | Mapping::Several(_)
        )
    }

    /// The table's INSTANCE cell: uncertain mappings end in `?`.
    pub fn cell(&self) -> String {
        match self {
            Mapping::Recorded(id) | Mapping::ByAddress(id) => terminal_safe(id).into_owned(),
            Mapping::LaunchedAfter(id) => format!("{}?", terminal_safe(id)),
            Mapping::NoHolder => "?".to_owned(),
            Mapping::Several(ids) => format!("{}?", terminal_safe(&ids.join(","))),
            Mapping::Unknown => "-".to_owned(),
        }
    }
}

/// Maps an event to an instance: by the id it records, else by the
/// private address a tunnel went to, among the instances holding it now.
pub fn map_event(event: &Event, holders: &[Holder]) -> Mapping {
    if let Some(id) = &event.instance_id {
        return Mapping::Recorded(id.clone());
    }
    let Some(ip) = event.address() else {
        return Mapping::Unknown;
    };
    let holding: Vec<&Holder> = holders
        .iter()
        .filter(|h| h.addresses.contains(&ip))
        .collect();
    match holding.as_slice() {
        [] => Mapping::NoHolder,
        [one] => match (one.launch_time, event.time) {
            (Some(launched), Some(at)) if launched > at => Mapping::LaunchedAfter(one.id.clone()),
            _ => Mapping::ByAddress(one.id.clone()),
        },
        several => Mapping::Several(several.iter().map(|h| h.id.clone()).collect()),
    }
}

/// The instances the user selected: their ids and addresses.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    pub ids: BTreeSet<String>,
    pub addresses: BTreeSet<IpAddr>,
}

/// Whether an event passes the query's filters (time, kind, user,
/// principal, failures, instances).
pub fn keep(event: &Event, query: &Query, selected: Option<&Selected>) -> bool {
    if let Some(t) = event.time
        && (t < query.since || t > query.until)
    {
        return false;
    }
    if !query.kinds.is_empty() && !event.kind().is_some_and(|k| query.kinds.contains(&k)) {
        return false;
    }
    if query.failures && !event.failed() {
        return false;
    }
    if let Some(user) = &query.os_user
        && event.os_user.as_deref() != Some(user.as_str())
    {
        return false;
    }
    if let Some(text) = &query.principal {
        let text = text.to_lowercase();
        let has = |s: &Option<String>| {
            s.as_deref()
                .is_some_and(|s| s.to_lowercase().contains(&text))
        };
        if !has(&event.principal) && !has(&event.principal_arn) {
            return false;
        }
    }
    if let Some(selected) = selected {
        let by_id = event
            .instance_id
            .as_deref()
            .is_some_and(|id| selected.ids.contains(id));
        let by_address = event.instance_id.is_none()
            && event
                .address()
                .is_some_and(|ip| selected.addresses.contains(&ip));
        if !by_id && !by_address {
            return false;
        }
    }
    true
}

/// One event in `--json` (stable field names, documented in the README).
pub fn event_json(event: &Event, mapping: &Mapping) -> Value {
    serde_json::json!({
        "time": event.time.map(time::format),
        "event": event.name,
        "principal": event.principal,
        "principal_arn": event.principal_arn,
        "source_ip": event.source_ip,
        "instance_id": mapping.instance_id(),
        "os_user": event.os_user,
        "endpoint_id": event.endpoint_id,
        "private_ip": event.private_ip,
        "port": event.port,
        "instance_mapping": mapping.word(),
        "result": if event.failed() { "failed" } else { "ok" },
        "error_code": event.error_code,
        "error_message": event.error_message,
        "user_agent": event.user_agent,
        "event_id": event.event_id,
    })
}

pub const HEADER: [&str; 8] = [
    "TIME (UTC)",
    "EVENT",
    "PRINCIPAL",
    "SOURCE IP",
    "INSTANCE",
    "USER",
    "VIA",
    "RESULT",
];

/// Widest a principal is shown in the table; longer ones end in `…`.
pub const PRINCIPAL_WIDTH: usize = 48;

/// One event's table cells, terminal-safe, `-` for nothing.
pub fn row(event: &Event, mapping: &Mapping) -> Vec<String> {
    let cell = |s: Option<&str>| match s {
        Some(s) if !s.is_empty() => terminal_safe(s).into_owned(),
        _ => "-".to_owned(),
    };
    let user = match event.kind() {
        Some(Kind::Serial) => "serial console".to_owned(),
        _ => cell(event.os_user.as_deref()),
    };
    let via = match (&event.endpoint_id, &event.private_ip) {
        (None, None) => "-".to_owned(),
        (endpoint, ip) => {
            let ip = ip.as_deref().map(terminal_safe).unwrap_or_default();
            let at = match (event.port, event.address()) {
                (Some(p), Some(IpAddr::V6(_))) => format!("[{ip}]:{p}"),
                (Some(p), _) => format!("{ip}:{p}"),
                (None, _) => ip.into_owned(),
            };
            format!("{} {at}", cell(endpoint.as_deref()))
                .trim()
                .to_owned()
        }
    };
    vec![
        event.time.map_or_else(|| "-".to_owned(), time::format),
        cell(Some(&event.name)),
        cell(event.principal.as_deref()),
        cell(event.source_ip.as_deref()),
        mapping.cell(),
        user,
        via,
        match &event.error_code {
            Some(code) => terminal_safe(code).into_owned(),
            None => "ok".to_owned(),
        },
    ]
}

/// A note for each uncertain address (once per address and instance), and
/// one for records that could not be read.
pub fn notes(events: &[(Event, Mapping)]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let unreadable = events.iter().filter(|(e, _)| e.unreadable).count();
    if unreadable > 0 {
        out.push(format!(
            "{unreadable} of these events came with a record that is not JSON: shown with what LookupEvents says outside it"
        ));
    }
    for (event, mapping) in events {
        if !mapping.uncertain() {
            continue;
        }
        let ip = terminal_safe(event.private_ip.as_deref().unwrap_or("-")).into_owned();
        let note = match mapping {
            Mapping::NoHolder => format!(
                "?: no instance holds {ip} now: which instance the tunnel reached is unknown"
            ),
            Mapping::LaunchedAfter(id) => format!(
                "?: {ip} is held now by {}, launched after the tunnel: the address may have been reused",
                terminal_safe(id)
            ),
            Mapping::Several(ids) => format!(
                "?: several instances hold {ip} now ({}): the tunnel reached one of them",
                terminal_safe(&ids.join(", "))
            ),
            _ => continue,
        };
        if seen.insert(note.clone()) {
            out.push(note);
        }
    }
    out
}

#[cfg(test)]
mod tests;
