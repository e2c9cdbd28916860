//! CloudTrail stand-in: `LookupEvents` over AWS JSON 1.1, and the event
//! history it serves.
//!
//! The history fills itself from the bed's own traffic — every
//! `SendSSHPublicKey` / `SendSerialConsoleSSHPublicKey` the API stand-in
//! answers and every `/openTunnel` handshake the endpoint stand-in serves,
//! successful or refused, becomes an event with the bed's identity and the
//! request's User-Agent — and tests add synthetic ones with
//! [`TestBed::add_trail_event`] (or [`TestBed::add_trail_record`] for a
//! record of any text).
//!
//! `LookupEvents` checks what CloudTrail checks: exactly one lookup
//! attribute at most (more: `InvalidLookupAttributesException`), a known
//! attribute key with a value, `MaxResults` 1-50
//! (`InvalidMaxResultsException`), `StartTime` not after `EndTime`
//! (`InvalidTimeRangeException`), `EventCategory` only `insight`
//! (`InvalidEventCategoryException`), and a `NextToken` it issued for the
//! same parameters (`InvalidNextTokenException`). Events come newest first.
//! Like the real service it allows 2 calls a second ([`rate_limits`]: the
//! API stand-in's token buckets answer `ThrottlingException` beyond that).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::TestBed;
use super::api::{Api, RateLimit, State};
use super::http::Response;
use super::timefmt;

/// `X-Amz-Target` prefix of CloudTrail's operations.
pub const TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.";
/// The form the AWS SDKs send (the Smithy service name), which CloudTrail
/// accepts too.
pub const SHORT_TARGET_PREFIX: &str = "CloudTrail_20131101.";

/// `eventSource` of EC2 Instance Connect's events.
pub const EIC_SOURCE: &str = "ec2-instance-connect.amazonaws.com";

/// LookupEvents calls a second CloudTrail allows per account and region.
pub const LOOKUP_EVENTS_PER_SECOND: f64 = 2.0;

/// HTTP status CloudTrail answers an error code with.
pub fn status(code: &str) -> u16 {
    match code {
        "InternalServerError" | "ServiceUnavailable" => 500,
        _ => 400,
    }
}

/// An AWS JSON 1.1 error answer.
pub fn error_response(status: u16, code: &str, msg: &str) -> Response {
    super::api::json_error_response(status, code, msg)
}

/// The token buckets a new bed starts with: LookupEvents at 2 a second
/// (a burst of 2), as CloudTrail.
pub fn rate_limits() -> HashMap<String, RateLimit> {
    HashMap::from([(
        "LookupEvents".to_owned(),
        RateLimit::new(LOOKUP_EVENTS_PER_SECOND, 2),
    )])
}

/// The event history (inside the API state).
#[derive(Debug, Default)]
pub struct TrailState {
    /// In the order recorded.
    pub events: Vec<TrailEvent>,
    /// NextToken -> (request fingerprint, offset).
    tokens: HashMap<String, (String, usize)>,
}

/// One event as LookupEvents returns it.
#[derive(Debug, Clone)]
pub struct TrailEvent {
    pub event_id: String,
    pub event_name: String,
    /// Epoch seconds (bed clock).
    pub event_time: i64,
    pub event_source: String,
    pub username: Option<String>,
    pub access_key_id: Option<String>,
    /// `(ResourceType, ResourceName)`.
    pub resources: Vec<(String, String)>,
    /// `CloudTrailEvent`, verbatim (normally a JSON record).
    pub record: String,
}

/// A synthetic EC2 Instance Connect event ([`TestBed::add_trail_event`]).
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub name: String,
    /// Epoch seconds; `None`: the bed's now.
    pub time: Option<i64>,
    /// `requestParameters`.
    pub params: Value,
    /// `userIdentity`; `None`: the bed's own identity.
    pub identity: Option<Value>,
    pub source_ip: String,
    pub user_agent: String,
    /// `(errorCode, errorMessage)`.
    pub error: Option<(String, String)>,
    pub event_source: String,
}

impl EventSpec {
    fn new(name: &str, params: Value) -> EventSpec {
        EventSpec {
            name: name.to_owned(),
            time: None,
            params,
            identity: None,
            source_ip: "198.51.100.10".to_owned(),
            user_agent: "aws-cli/2.22.0 md/Botocore#1.35.0".to_owned(),
            error: None,
            event_source: EIC_SOURCE.to_owned(),
        }
    }

    /// A `SendSSHPublicKey` for `instance_id` and `os_user`.
    pub fn push(instance_id: &str, os_user: &str) -> EventSpec {
        EventSpec::new(
            "SendSSHPublicKey",
            json!({
                "instanceId": instance_id,
                "instanceOSUser": os_user,
                "sSHPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7 synthetic",
            }),
        )
    }

    /// A `SendSerialConsoleSSHPublicKey` for `instance_id`.
    pub fn serial(instance_id: &str) -> EventSpec {
        EventSpec::new(
            "SendSerialConsoleSSHPublicKey",
            json!({
                "instanceId": instance_id,
                "monitorMode": false,
                "sSHPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7 synthetic",
            }),
        )
    }

    /// An `OpenTunnel` through `endpoint_id` to `private_ip:port`.
    pub fn tunnel(endpoint_id: &str, private_ip: &str, port: u16) -> EventSpec {
        EventSpec::new(
            "OpenTunnel",
            json!({
                "instanceConnectEndpointId": endpoint_id,
                "remotePort": port.to_string(),
                "privateIpAddress": private_ip,
                "maxTunnelDuration": "3600",
            }),
        )
    }

    pub fn at(mut self, epoch_secs: i64) -> Self {
        self.time = Some(epoch_secs);
        self
    }

    pub fn failed(mut self, code: &str, message: &str) -> Self {
        self.error = Some((code.to_owned(), message.to_owned()));
        self
    }

    pub fn identity(mut self, identity: Value) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn source_ip(mut self, ip: &str) -> Self {
        self.source_ip = ip.to_owned();
        self
    }

    pub fn user_agent(mut self, agent: &str) -> Self {
        self.user_agent = agent.to_owned();
        self
    }
}

/// An IAM user's `userIdentity` in `account_id`.
pub fn iam_user(account_id: &str, name: &str, access_key_id: &str) -> Value {
    json!({
        "type": "IAMUser",
        "principalId": "AIDAEXAMPLEBEDUSER0001",
        "arn": format!("arn:aws:iam::{account_id}:user/{name}"),
        "accountId": account_id,
        "accessKeyId": access_key_id,
        "userName": name,
    })
}

/// An assumed role's `userIdentity`: `role/session`.
pub fn assumed_role(account_id: &str, role: &str, session: &str) -> Value {
    json!({
        "type": "AssumedRole",
        "principalId": format!("AROAEXAMPLEROLE000001:{session}"),
        "arn": format!("arn:aws:sts::{account_id}:assumed-role/{role}/{session}"),
        "accountId": account_id,
        "accessKeyId": "ASIAEXAMPLESESSION01",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": "AROAEXAMPLEROLE000001",
                "arn": format!("arn:aws:iam::{account_id}:role/{role}"),
                "accountId": account_id,
                "userName": role,
            },
            "attributes": {"creationDate": "2026-12-01T00:00:00Z", "mfaAuthenticated": "false"},
        },
    })
}

/// The name the bed's own credentials belong to.
pub const BED_USER: &str = "bed-user";

/// Builds the CloudTrail record of `spec` and stores the event.
fn add(api: &Api, st: &mut State, spec: EventSpec) -> String {
    let config = &api.config;
    let time = spec.time.unwrap_or_else(|| api.now(st));
    let identity = spec
        .identity
        .clone()
        .unwrap_or_else(|| iam_user(&config.account_id, BED_USER, &config.access_key_id));
    let event_id = super::api::uuid_like();
    let mut resources: Vec<(String, String)> = Vec::new();
    let str_param = |k: &str| {
        spec.params
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(id) = str_param("instanceId") {
        resources.push((
            "AWS::EC2::Instance".into(),
            format!(
                "arn:aws:ec2:{}:{}:instance/{id}",
                config.region, config.account_id
            ),
        ));
    }
    if let Some(id) = str_param("instanceConnectEndpointId") {
        resources.push((
            "AWS::EC2::InstanceConnectEndpoint".into(),
            format!(
                "arn:aws:ec2:{}:{}:instance-connect-endpoint/{id}",
                config.region, config.account_id
            ),
        ));
    }
    let mut record = json!({
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": timefmt::iso8601(time),
        "eventSource": spec.event_source,
        "eventName": spec.name,
        "awsRegion": config.region,
        "sourceIPAddress": spec.source_ip,
        "userAgent": spec.user_agent,
        "requestParameters": spec.params,
        "responseElements": if spec.error.is_some() || spec.name == "OpenTunnel" {
            Value::Null
        } else {
            json!({"requestId": super::api::uuid_like(), "success": true})
        },
        "requestID": super::api::uuid_like(),
        "eventID": event_id,
        "readOnly": false,
        "resources": resources.iter().map(|(t, arn)| json!({
            "accountId": config.account_id, "type": t, "ARN": arn,
        })).collect::<Vec<_>>(),
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": config.account_id,
        "eventCategory": "Management",
    });
    if let Some((code, message)) = &spec.error {
        record["errorCode"] = code.clone().into();
        record["errorMessage"] = message.clone().into();
    }
    let username = match identity.get("type").and_then(Value::as_str) {
        Some("AssumedRole") => identity
            .get("principalId")
            .and_then(Value::as_str)
            .and_then(|p| p.split_once(':'))
            .map(|(_, s)| s.to_owned()),
        Some("Root") => Some("root".to_owned()),
        _ => identity
            .get("userName")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    st.cloudtrail.events.push(TrailEvent {
        event_id: event_id.clone(),
        event_name: spec.name.clone(),
        event_time: time,
        event_source: spec.event_source.clone(),
        username,
        access_key_id: identity
            .get("accessKeyId")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resources,
        record: record.to_string(),
    });
    event_id
}

/// The request's User-Agent header.
fn user_agent(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Hook: a `SendSSHPublicKey` / `SendSerialConsoleSSHPublicKey` the API
/// stand-in answered (`error`: the code and message it answered with).
pub fn record_push(
    api: &Api,
    st: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
    headers: &[(String, String)],
    error: Option<(String, String)>,
) {
    let id = params.get("InstanceId").cloned().unwrap_or_default();
    let mut spec = match action {
        "SendSSHPublicKey" => {
            let user = params.get("InstanceOSUser").cloned().unwrap_or_default();
            EventSpec::push(&id, &user)
        }
        "SendSerialConsoleSSHPublicKey" => EventSpec::serial(&id),
        _ => return,
    };
    if let Some(key) = params.get("SSHPublicKey") {
        spec.params["sSHPublicKey"] = key.clone().into();
    }
    spec.source_ip = "127.0.0.1".to_owned();
    spec.user_agent = user_agent(headers);
    spec.error = error;
    add(api, st, spec);
}

/// Hook: an `/openTunnel` handshake the endpoint stand-in served, with its
/// query string (`error`: the refusal's code and message).
pub fn record_tunnel(
    api: &Api,
    st: &mut State,
    query: &str,
    headers: &[(String, String)],
    error: Option<(String, String)>,
) {
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let mut spec = EventSpec::new(
        "OpenTunnel",
        json!({
            "instanceConnectEndpointId": get("instanceConnectEndpointId"),
            "remotePort": get("remotePort"),
            "privateIpAddress": get("privateIpAddress"),
            "maxTunnelDuration": get("maxTunnelDuration"),
        }),
    );
    spec.source_ip = "127.0.0.1".to_owned();
    spec.user_agent = user_agent(headers);
    spec.error = error;
    add(api, st, spec);
}

type ApiError = (u16, String, String);

fn err(code: &str, msg: impl Into<String>) -> ApiError {
    (status(code), code.to_owned(), msg.into())
}

const ATTRIBUTE_KEYS: [&str; 8] = [
    "EventId",
    "EventName",
    "ReadOnly",
    "Username",
    "ResourceType",
    "ResourceName",
    "EventSource",
    "AccessKeyId",
];

pub fn handle(
    _api: &Api,
    st: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, (u16, String, String)> {
    match action {
        "LookupEvents" => lookup_events(st, params),
        _ => Err((
            400,
            "UnknownOperationException".to_owned(),
            format!("Unknown operation {action:?}"),
        )),
    }
}

/// A JSON-text parameter (the API stand-in keeps non-strings as JSON text).
fn json_param(params: &BTreeMap<String, String>, name: &str) -> Option<Value> {
    params
        .get(name)
        .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.clone())))
}

fn lookup_events(st: &mut State, params: &BTreeMap<String, String>) -> Result<Response, ApiError> {
    // Lookup attributes: at most one, of a known key, with a value.
    let attributes = match json_param(params, "LookupAttributes") {
        None => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(err(
                "InvalidLookupAttributesException",
                "LookupAttributes must be a list",
            ));
        }
    };
    if attributes.len() > 1 {
        return Err(err(
            "InvalidLookupAttributesException",
            "You cannot specify more than one lookup attribute.",
        ));
    }
    let mut attribute: Option<(String, String)> = None;
    if let Some(a) = attributes.first() {
        let key = a.get("AttributeKey").and_then(Value::as_str).unwrap_or("");
        let value = a
            .get("AttributeValue")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !ATTRIBUTE_KEYS.contains(&key) || value.is_empty() || value.len() > 2000 {
            return Err(err(
                "InvalidLookupAttributesException",
                format!("The lookup attribute {key:?} = {value:?} is not valid."),
            ));
        }
        attribute = Some((key.to_owned(), value.to_owned()));
    }
    // MaxResults: 1-50, default 50.
    let max = match json_param(params, "MaxResults") {
        None => 50,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=50).contains(&n) => n as usize,
            _ => {
                return Err(err(
                    "InvalidMaxResultsException",
                    format!("MaxResults {v} is not valid: it must be 1-50."),
                ));
            }
        },
    };
    let time = |name: &str| -> Result<Option<f64>, ApiError> {
        match json_param(params, name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                err(
                    "InvalidTimeRangeException",
                    format!("{name} {v} is not a time"),
                )
            }),
        }
    };
    let start = time("StartTime")?;
    let end = time("EndTime")?;
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(err(
            "InvalidTimeRangeException",
            "The start time must not be after the end time.",
        ));
    }
    if let Some(category) = params.get("EventCategory")
        && category != "insight"
    {
        return Err(err(
            "InvalidEventCategoryException",
            format!("The event category {category:?} is not valid."),
        ));
    }
    let fingerprint = format!(
        "{attribute:?}|{start:?}|{end:?}|{max}|{:?}",
        params.get("EventCategory")
    );
    let offset = match params.get("NextToken") {
        None => 0,
        Some(token) => match st.cloudtrail.tokens.get(token) {
            Some((fp, offset)) if *fp == fingerprint => *offset,
            _ => {
                return Err(err(
                    "InvalidNextTokenException",
                    "The NextToken is not valid for this request.",
                ));
            }
        },
    };
    // Insight events: the bed has none.
    let insight = params.get("EventCategory").is_some();
    let mut matching: Vec<&TrailEvent> = st
        .cloudtrail
        .events
        .iter()
        .filter(|_| !insight)
        .filter(|e| start.is_none_or(|s| e.event_time as f64 >= s.floor()))
        .filter(|e| end.is_none_or(|t| e.event_time as f64 <= t))
        .filter(|e| match &attribute {
            None => true,
            Some((key, value)) => match key.as_str() {
                "EventId" => e.event_id == *value,
                "EventName" => e.event_name == *value,
                "ReadOnly" => value == "false",
                "Username" => e.username.as_deref() == Some(value.as_str()),
                "ResourceType" => e.resources.iter().any(|(t, _)| t == value),
                "ResourceName" => e.resources.iter().any(|(_, n)| n == value),
                "EventSource" => e.event_source == *value,
                "AccessKeyId" => e.access_key_id.as_deref() == Some(value.as_str()),
                _ => false,
            },
        })
        .collect();
    // Newest first; of equal times, the later recorded first.
    matching.reverse();
    matching.sort_by_key(|e| std::cmp::Reverse(e.event_time));
    let end_at = offset.saturating_add(max).min(matching.len());
    let page: Vec<Value> = matching[offset.min(end_at)..end_at]
        .iter()
        .map(|e| {
            json!({
                "EventId": e.event_id,
                "EventName": e.event_name,
                "ReadOnly": "false",
                "AccessKeyId": e.access_key_id,
                "EventTime": e.event_time,
                "EventSource": e.event_source,
                "Username": e.username,
                "Resources": e.resources.iter().map(|(t, n)| json!({
                    "ResourceType": t, "ResourceName": n,
                })).collect::<Vec<_>>(),
                "CloudTrailEvent": e.record,
            })
        })
        .collect();
    let mut body = json!({ "Events": page });
    if end_at < matching.len() {
        let token = super::api::random_hex(64);
        st.cloudtrail
            .tokens
            .insert(token.clone(), (fingerprint, end_at));
        body["NextToken"] = token.into();
    }
    Ok(Response::new(
        200,
        "application/x-amz-json-1.1",
        body.to_string(),
    ))
}

impl TestBed {
    /// Adds a synthetic EC2 Instance Connect event to CloudTrail's history;
    /// returns its event id.
    pub fn add_trail_event(&self, spec: EventSpec) -> String {
        let mut st = self.api.lock();
        add(&self.api, &mut st, spec)
    }

    /// Adds an event whose `CloudTrailEvent` is `record`, verbatim (any
    /// text: broken JSON, hostile values).
    pub fn add_trail_record(&self, name: &str, time: i64, record: &str) {
        let mut st = self.api.lock();
        st.cloudtrail.events.push(TrailEvent {
            event_id: super::api::uuid_like(),
            event_name: name.to_owned(),
            event_time: time,
            event_source: EIC_SOURCE.to_owned(),
            username: None,
            access_key_id: None,
            resources: Vec::new(),
            record: record.to_owned(),
        });
    }

    /// CloudTrail's history, in the order recorded.
    pub fn trail_events(&self) -> Vec<TrailEvent> {
        self.api.lock().cloudtrail.events.clone()
    }

    /// The bed's own identity as CloudTrail records it.
    pub fn trail_identity(&self) -> Value {
        iam_user(self.account_id(), BED_USER, self.access_key_id())
    }
}
