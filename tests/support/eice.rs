//! The EC2 Instance Connect Endpoint stand-in: `DescribeInstanceConnectEndpoints`,
//! `CreateInstanceConnectEndpoint`, `DeleteInstanceConnectEndpoint`, `DescribeSubnets`
//! (EC2 Query/XML, served by the API stand-in) and a TLS WebSocket server
//! that plays the endpoints' `/openTunnel`.
//!
//! The WebSocket server listens on 127.0.0.1:0 with a certificate for
//! `*.ec2-instance-connect-endpoint.<region>.amazonaws.com` (and the `fips.`
//! form) issued by a CA made per bed, whose PEM is `eice-ca.pem` in the bed
//! dir. [`TestBed::command`] points the tool at it with `AWS_CA_BUNDLE` and
//! `EIC_CONNECT_EICE_ENDPOINT`.
//!
//! `/openTunnel` checks the presigned URL independently (`sigv4::verify_presigned`,
//! not aws-sigv4), the Host header, the endpoint, port, address and
//! duration; refusals are HTTP 4xx with `{"ErrorCode","Message"}` and are
//! recorded. An accepted tunnel to port 22 relays binary frames to the bed's
//! sshd on the instance's private address; port 3389 is an echo service.
//! The stand-in enforces the 65,000-byte frame limit and `maxTunnelDuration`,
//! and records each tunnel with its byte counts and how it ended.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::api::{self, Api, State};
use super::http::Response as HttpResponse;
use super::{TestBed, sigv4};

/// Largest binary frame the service accepts.
pub const MAX_FRAME: usize = 65_000;
/// Longest validity a presigned URL may claim.
pub const MAX_EXPIRES: u64 = 60;
/// Every endpoint state EC2 knows.
pub const STATES: [&str; 9] = [
    "create-in-progress",
    "create-complete",
    "create-failed",
    "delete-in-progress",
    "delete-complete",
    "delete-failed",
    "update-in-progress",
    "update-complete",
    "update-failed",
];
/// States in which the stand-in opens tunnels.
pub const OPEN_STATES: [&str; 4] = [
    "create-complete",
    "update-in-progress",
    "update-complete",
    "update-failed",
];

/// One endpoint as the stand-in knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub arn: String,
    pub state: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub availability_zone: String,
    /// Its security groups (given at creation, else the VPC's default).
    pub security_group_ids: Vec<String>,
    pub preserve_client_ip: bool,
    /// Why it failed (create-failed, delete-failed), else empty.
    pub state_message: String,
    /// The `Name` tag, if any (may hold anything).
    pub name: Option<String>,
    /// The ClientToken it was created with (empty for `add_endpoint`).
    pub client_token: String,
    /// `<id>.ec2-instance-connect-endpoint.<region>.amazonaws.com`
    pub dns_name: String,
    /// `<id>.fips.ec2-instance-connect-endpoint.<region>.amazonaws.com`
    pub fips_dns_name: String,
    pub created_at: i64,
    /// `ipv4` (default), `ipv6` or `dualstack`: the instance addresses its
    /// tunnels may go to.
    pub ip_address_type: String,
}

/// What to create with [`TestBed::add_endpoint`].
#[derive(Debug, Clone, Default)]
pub struct EndpointSpec {
    /// Default: the bed's VPC.
    pub vpc_id: Option<String>,
    /// Default: the bed's subnet.
    pub subnet_id: Option<String>,
    /// Default: create-complete.
    pub state: Option<String>,
    /// Force an id (default: random `eice-` + 17 hex digits).
    pub id: Option<String>,
    /// Default: ipv4.
    pub ip_address_type: Option<String>,
    /// Default: one random `sg-` id.
    pub security_groups: Vec<String>,
    /// A `Name` tag.
    pub name: Option<String>,
}

impl EndpointSpec {
    pub fn security_group(mut self, sg: &str) -> Self {
        self.security_groups.push(sg.to_owned());
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
    pub fn ip_address_type(mut self, kind: &str) -> Self {
        self.ip_address_type = Some(kind.to_owned());
        self
    }
    pub fn vpc(mut self, vpc_id: &str) -> Self {
        self.vpc_id = Some(vpc_id.to_owned());
        self
    }
    pub fn subnet(mut self, subnet_id: &str) -> Self {
        self.subnet_id = Some(subnet_id.to_owned());
        self
    }
    pub fn state(mut self, state: &str) -> Self {
        self.state = Some(state.to_owned());
        self
    }
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }
}

/// Something to do to the next accepted tunnel(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelFault {
    /// Send a text frame (a protocol error for the client) right away.
    TextFrame,
    /// Close with this code and reason right away.
    Close { code: u16, reason: String },
    /// Relay until this many bytes went to the client, then close with
    /// this code and reason (a close frame mid-transfer).
    CloseAfter {
        bytes: u64,
        code: u16,
        reason: String,
    },
    /// Relay until this many bytes went to the client, then drop the TCP
    /// connection without a close frame.
    DropAfter { bytes: u64 },
    /// Accept the tunnel, then send and relay nothing: an idle stall.
    Stall,
    /// Send one binary frame of this many bytes right away (larger than a
    /// client accepts).
    Oversized(usize),
    /// Relay normally, but send each chunk to the client as a fragmented
    /// message (a binary frame and continuation frames of 7 bytes).
    Fragmented,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// Still open.
    Open,
    /// The client sent the first close frame.
    Client,
    /// The instance (sshd) closed its side; the stand-in closed the tunnel.
    Instance,
    /// The stand-in closed it (maxTunnelDuration, a fault, a violation).
    Server,
    /// The connection broke without a close handshake.
    Dropped,
}

/// One accepted tunnel.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub endpoint_id: String,
    pub host: String,
    pub remote_port: u16,
    pub private_ip: String,
    pub max_duration: Option<u32>,
    /// The raw query string, as received.
    pub query: String,
    /// Bytes client → instance and instance → client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Largest binary frame received from the client.
    pub largest_frame: usize,
    pub frames_up: u64,
    pub closed_by: ClosedBy,
    /// The close code the client sent (first or in answer), if any.
    pub client_close_code: Option<u16>,
    /// The close the stand-in sent, if any.
    pub server_close: Option<(u16, String)>,
    /// Protocol violations by the client (text frames, oversize frames...).
    pub violations: Vec<String>,
    pub opened: SystemTime,
    pub duration: Option<Duration>,
}

impl Tunnel {
    /// The client ended the tunnel with a normal close frame.
    pub fn client_closed_cleanly(&self) -> bool {
        self.closed_by == ClosedBy::Client && self.client_close_code == Some(1000)
    }
}

/// One refused `/openTunnel`.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Made to happen by [`TestBed::fail_next_tunnel`].
    pub injected: bool,
    pub query: String,
}

/// The stand-in's EICE state (inside the API state).
#[derive(Debug, Default)]
pub struct EiceState {
    pub endpoints: Vec<Endpoint>,
    /// (status, code, message) for the next handshakes.
    pub rejections_queued: VecDeque<(u16, String, String)>,
    pub faults: VecDeque<TunnelFault>,
    pub tunnels: Vec<Tunnel>,
    pub rejections: Vec<Rejection>,
    pub open_now: usize,
    pub max_open: usize,
    /// Force pages of at most this many endpoints.
    pub page_size: Option<usize>,
    /// How long create-in-progress and delete-in-progress last (real time).
    pub create_delay: Duration,
    pub delete_delay: Duration,
    /// State messages for the next creations to end in create-failed.
    pub create_failures: VecDeque<String>,
    /// State changes due: (endpoint id, when, new state, state message).
    pub transitions: Vec<(String, Instant, String, String)>,
    /// Security group id -> outbound rules (default: everything anywhere).
    pub egress: BTreeMap<String, Vec<super::diag::SgRule>>,
}

impl EiceState {
    /// Applies the state changes that are due.
    pub fn advance(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self
            .transitions
            .drain(..)
            .partition(|(_, at, _, _)| *at <= now);
        self.transitions = later;
        for (id, _, state, message) in due {
            if let Some(e) = self.endpoints.iter_mut().find(|e| e.id == id) {
                e.state = state;
                e.state_message = message;
            }
        }
    }
}

// ------------------------------------------------------------- Query API

/// Whether this module serves an EC2 action.
pub fn handles(action: &str) -> bool {
    matches!(
        action,
        "DescribeInstanceConnectEndpoints"
            | "CreateInstanceConnectEndpoint"
            | "DeleteInstanceConnectEndpoint"
            | "DescribeSubnets"
            | "GetManagedPrefixListEntries"
    )
}

type ApiError = (u16, String, String);

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    (status, code.to_owned(), msg.into())
}

/// Answers one of [`handles`]'s actions (named by the `Action` parameter).
pub fn handle(
    api: &Api,
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    st.eice.advance();
    if params.get("DryRun").is_some_and(|v| v == "true") {
        return Err(err(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    match params.get("Action").map(String::as_str) {
        Some("CreateInstanceConnectEndpoint") => create(api, st, params),
        Some("DeleteInstanceConnectEndpoint") => delete(api, st, params),
        Some("DescribeSubnets") => describe_subnets(api, params),
        Some("GetManagedPrefixListEntries") => prefix_list_entries(params),
        _ => describe(api, st, params),
    }
}

/// `DescribeInstanceConnectEndpoints`: ids, filters (`state`, `vpc-id`,
/// `subnet-id`, `instance-connect-endpoint-id`), MaxResults (1-50) and
/// NextToken.
fn describe(
    api: &Api,
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    if params.get("DryRun").is_some_and(|v| v == "true") {
        return Err(err(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    let ids: Vec<String> = api::indexed(params, "InstanceConnectEndpointId")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for id in &ids {
        if !is_endpoint_id(id) {
            return Err(err(
                400,
                "InvalidInstanceConnectEndpointId.Malformed",
                format!("Invalid id: \"{id}\""),
            ));
        }
        if !st.eice.endpoints.iter().any(|e| &e.id == id) {
            return Err(err(
                400,
                "InvalidInstanceConnectEndpointId.NotFound",
                format!("The instanceConnectEndpoint ID '{id}' does not exist"),
            ));
        }
    }
    let filters = api::parse_filters(params);
    for (name, values) in &filters {
        if !matches!(
            name.as_str(),
            "state" | "vpc-id" | "subnet-id" | "instance-connect-endpoint-id" | "availability-zone"
        ) {
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
    let max_results = match params.get("MaxResults") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=50).contains(&n) => Some(n),
            _ => {
                return Err(err(
                    400,
                    "InvalidParameterValue",
                    format!(
                        "Value ( {v} ) for parameter maxResults is invalid. Parameter may only be between 1 and 50."
                    ),
                ));
            }
        },
    };
    let matching: Vec<Endpoint> = st
        .eice
        .endpoints
        .iter()
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .filter(|e| {
            filters.iter().all(|(name, values)| {
                let field = match name.as_str() {
                    "state" => &e.state,
                    "vpc-id" => &e.vpc_id,
                    "subnet-id" => &e.subnet_id,
                    "availability-zone" => &e.availability_zone,
                    _ => &e.id,
                };
                values.iter().any(|v| api::wildcard_match(v, field))
            })
        })
        .cloned()
        .collect();

    let fingerprint = format!("eice|{ids:?}|{filters:?}|{max_results:?}");
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
    let page = match (max_results, st.eice.page_size) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => usize::MAX,
    }
    .max(1);
    let end = offset.saturating_add(page).min(matching.len());
    let slice = &matching[offset.min(end)..end];
    let next = (end < matching.len()).then(|| {
        let tok = format!("eyJ2IjoxLCJlIjoi{}", api::random_hex(40));
        st.tokens.insert(tok.clone(), (fingerprint.clone(), end));
        tok
    });

    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<DescribeInstanceConnectEndpointsResponse xmlns=\"{}\">",
        api::EC2_XMLNS
    ));
    el(&mut x, "requestId", &api::uuid_like());
    x.push_str("<instanceConnectEndpointSet>");
    for e in slice {
        x.push_str("<item>");
        endpoint_xml(api, &mut x, e);
        x.push_str("</item>");
    }
    x.push_str("</instanceConnectEndpointSet>");
    if let Some(tok) = next {
        el(&mut x, "nextToken", &tok);
    }
    x.push_str("</DescribeInstanceConnectEndpointsResponse>");
    Ok(HttpResponse::new(200, "text/xml;charset=UTF-8", x))
}

/// An endpoint's fields, as EC2 writes them inside an `item` or an
/// `instanceConnectEndpoint` element.
fn endpoint_xml(api: &Api, x: &mut String, e: &Endpoint) {
    el(x, "ownerId", &api.config.account_id);
    el(x, "instanceConnectEndpointId", &e.id);
    el(x, "instanceConnectEndpointArn", &e.arn);
    el(x, "state", &e.state);
    el(x, "stateMessage", &e.state_message);
    el(x, "dnsName", &e.dns_name);
    el(x, "fipsDnsName", &e.fips_dns_name);
    x.push_str("<networkInterfaceIdSet><item>");
    x.push_str(&format!("eni-{}", &e.id[5..]));
    x.push_str("</item></networkInterfaceIdSet>");
    el(x, "vpcId", &e.vpc_id);
    el(x, "availabilityZone", &e.availability_zone);
    el(x, "createdAt", &super::timefmt::iso8601(e.created_at));
    el(x, "subnetId", &e.subnet_id);
    el(
        x,
        "preserveClientIp",
        if e.preserve_client_ip {
            "true"
        } else {
            "false"
        },
    );
    x.push_str("<securityGroupIdSet>");
    for sg in &e.security_group_ids {
        x.push_str("<item>");
        x.push_str(&api::xml_escape(sg));
        x.push_str("</item>");
    }
    x.push_str("</securityGroupIdSet>");
    el(x, "ipAddressType", &e.ip_address_type);
    match &e.name {
        Some(name) => {
            x.push_str("<tagSet><item>");
            el(x, "key", "Name");
            el(x, "value", name);
            x.push_str("</item></tagSet>");
        }
        None => x.push_str("<tagSet/>"),
    }
}

fn endpoint_response(api: &Api, action: &str, e: &Endpoint, token: Option<&str>) -> HttpResponse {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!("<{action}Response xmlns=\"{}\">", api::EC2_XMLNS));
    el(&mut x, "requestId", &api::uuid_like());
    x.push_str("<instanceConnectEndpoint>");
    endpoint_xml(api, &mut x, e);
    x.push_str("</instanceConnectEndpoint>");
    if let Some(token) = token {
        el(&mut x, "clientToken", token);
    }
    x.push_str(&format!("</{action}Response>"));
    HttpResponse::new(200, "text/xml;charset=UTF-8", x)
}

/// Whether a security group exists (the bed's default one always does).
fn group_exists(api: &Api, st: &State, id: &str) -> bool {
    id == api.config.security_group_id || st.diag.groups.contains_key(id)
}

/// `CreateInstanceConnectEndpoint`: SubnetId (the bed's subnet),
/// SecurityGroupId.N (existing groups; default: the VPC's default group),
/// PreserveClientIp, IpAddressType, ClientToken (a repeat with the same
/// parameters returns the same endpoint, with others is refused). One
/// endpoint per VPC. The endpoint starts create-in-progress and turns
/// create-complete (or create-failed, see [`TestBed::fail_next_endpoint_create`])
/// after [`TestBed::set_endpoint_create_delay`].
fn create(
    api: &Api,
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let cfg = &api.config;
    let Some(subnet) = params.get("SubnetId") else {
        return Err(err(
            400,
            "MissingParameter",
            "The request must contain the parameter SubnetId",
        ));
    };
    if *subnet != cfg.subnet_id {
        return Err(err(
            400,
            "InvalidSubnetID.NotFound",
            format!("The subnet ID '{subnet}' does not exist"),
        ));
    }
    let groups: Vec<String> = api::indexed(params, "SecurityGroupId")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    if let Some(missing) = groups.iter().find(|g| !group_exists(api, st, g)) {
        return Err(err(
            400,
            "InvalidGroup.NotFound",
            format!("The security group '{missing}' does not exist"),
        ));
    }
    let preserve = match params.get("PreserveClientIp").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(err(
                400,
                "InvalidParameterValue",
                format!("Invalid value '{other}' for PreserveClientIp"),
            ));
        }
    };
    let ip_type = params
        .get("IpAddressType")
        .cloned()
        .unwrap_or_else(|| "ipv4".to_owned());
    if !matches!(ip_type.as_str(), "ipv4" | "dualstack" | "ipv6") {
        return Err(err(
            400,
            "InvalidParameterValue",
            format!("Invalid value '{ip_type}' for IpAddressType"),
        ));
    }
    let token = params.get("ClientToken").cloned().unwrap_or_default();
    let groups = if groups.is_empty() {
        vec![cfg.security_group_id.clone()]
    } else {
        groups
    };
    if !token.is_empty()
        && let Some(e) = st.eice.endpoints.iter().find(|e| e.client_token == token)
    {
        let same = e.subnet_id == *subnet
            && e.security_group_ids == groups
            && e.preserve_client_ip == preserve
            && e.ip_address_type == ip_type;
        if !same {
            return Err(err(
                400,
                "IdempotentParameterMismatch",
                "The client token you have provided is associated with a resource that has different parameters.",
            ));
        }
        let e = e.clone();
        return Ok(endpoint_response(
            api,
            "CreateInstanceConnectEndpoint",
            &e,
            Some(&token),
        ));
    }
    if let Some(e) = st
        .eice
        .endpoints
        .iter()
        .find(|e| e.vpc_id == cfg.vpc_id && e.state != "delete-complete")
    {
        return Err(err(
            400,
            "ResourceLimitExceeded",
            format!(
                "You have reached the maximum number of EC2 Instance Connect Endpoints for VPC {} ({} exists).",
                cfg.vpc_id, e.id
            ),
        ));
    }
    let id = format!("eice-{}", api::random_hex(17));
    let region = &cfg.region;
    let endpoint = Endpoint {
        arn: format!(
            "arn:aws:ec2:{region}:{}:instance-connect-endpoint/{id}",
            cfg.account_id
        ),
        state: "create-in-progress".to_owned(),
        vpc_id: cfg.vpc_id.clone(),
        subnet_id: subnet.clone(),
        availability_zone: format!("{region}a"),
        security_group_ids: groups,
        preserve_client_ip: preserve,
        state_message: String::new(),
        name: None,
        client_token: token.clone(),
        dns_name: format!("{id}.ec2-instance-connect-endpoint.{region}.amazonaws.com"),
        fips_dns_name: format!("{id}.fips.ec2-instance-connect-endpoint.{region}.amazonaws.com"),
        created_at: api.now(st),
        ip_address_type: ip_type,
        id: id.clone(),
    };
    let (to, message) = match st.eice.create_failures.pop_front() {
        Some(message) => ("create-failed".to_owned(), message),
        None => ("create-complete".to_owned(), String::new()),
    };
    let at = Instant::now() + st.eice.create_delay;
    st.eice.transitions.push((id, at, to, message));
    st.eice.endpoints.push(endpoint.clone());
    Ok(endpoint_response(
        api,
        "CreateInstanceConnectEndpoint",
        &endpoint,
        Some(&token),
    ))
}

/// `DeleteInstanceConnectEndpoint`: delete-in-progress, then
/// delete-complete after [`TestBed::set_endpoint_delete_delay`].
fn delete(
    api: &Api,
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let Some(id) = params.get("InstanceConnectEndpointId") else {
        return Err(err(
            400,
            "MissingParameter",
            "The request must contain the parameter InstanceConnectEndpointId",
        ));
    };
    if !is_endpoint_id(id) {
        return Err(err(
            400,
            "InvalidInstanceConnectEndpointId.Malformed",
            format!("Invalid id: \"{id}\""),
        ));
    }
    let delay = st.eice.delete_delay;
    let Some(e) = st
        .eice
        .endpoints
        .iter_mut()
        .find(|e| &e.id == id && e.state != "delete-complete")
    else {
        return Err(err(
            400,
            "InvalidInstanceConnectEndpointId.NotFound",
            format!("The instanceConnectEndpoint ID '{id}' does not exist"),
        ));
    };
    if e.state == "create-in-progress" || e.state == "delete-in-progress" {
        return Err(err(
            400,
            "IncorrectState",
            format!(
                "The instance connect endpoint '{id}' is in state {}",
                e.state
            ),
        ));
    }
    e.state = "delete-in-progress".to_owned();
    e.state_message = String::new();
    let e = e.clone();
    st.eice.transitions.push((
        id.clone(),
        Instant::now() + delay,
        "delete-complete".to_owned(),
        String::new(),
    ));
    Ok(endpoint_response(
        api,
        "DeleteInstanceConnectEndpoint",
        &e,
        None,
    ))
}

/// The address block of the bed's `com.amazonaws.<region>.ec2-instance-connect`
/// prefix list (us-east-1's real one).
pub const CONSOLE_RANGE: &str = "18.206.107.24/29";

/// `GetManagedPrefixListEntries` for the console's prefix list (what the
/// browser-based client connects from: see `eic-connect console`).
fn prefix_list_entries(params: &BTreeMap<String, String>) -> Result<HttpResponse, ApiError> {
    let id = params.get("PrefixListId").cloned().unwrap_or_default();
    if id != super::diag::CONSOLE_PREFIX_LIST_ID {
        return Err(err(
            400,
            "InvalidPrefixListID.NotFound",
            format!("The prefix list ID '{id}' does not exist"),
        ));
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<GetManagedPrefixListEntriesResponse xmlns=\"{}\">",
        api::EC2_XMLNS
    ));
    el(&mut x, "requestId", &api::uuid_like());
    x.push_str("<entrySet><item>");
    el(&mut x, "cidr", CONSOLE_RANGE);
    el(&mut x, "description", "EC2 Instance Connect");
    x.push_str("</item></entrySet></GetManagedPrefixListEntriesResponse>");
    Ok(HttpResponse::new(200, "text/xml;charset=UTF-8", x))
}

/// `DescribeSubnets` by id: the bed's one subnet.
fn describe_subnets(
    api: &Api,
    params: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let cfg = &api.config;
    let ids: Vec<String> = api::indexed(params, "SubnetId")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    if let Some(missing) = ids.iter().find(|id| **id != cfg.subnet_id) {
        return Err(err(
            400,
            "InvalidSubnetID.NotFound",
            format!("The subnet ID '{missing}' does not exist"),
        ));
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<DescribeSubnetsResponse xmlns=\"{}\">",
        api::EC2_XMLNS
    ));
    el(&mut x, "requestId", &api::uuid_like());
    x.push_str("<subnetSet><item>");
    el(&mut x, "subnetId", &cfg.subnet_id);
    el(&mut x, "vpcId", &cfg.vpc_id);
    el(&mut x, "state", "available");
    el(&mut x, "availabilityZone", &format!("{}a", cfg.region));
    el(&mut x, "cidrBlock", "10.0.1.0/24");
    el(&mut x, "ownerId", &cfg.account_id);
    x.push_str("</item></subnetSet></DescribeSubnetsResponse>");
    Ok(HttpResponse::new(200, "text/xml;charset=UTF-8", x))
}

fn el(out: &mut String, name: &str, text: &str) {
    if text.is_empty() {
        out.push_str(&format!("<{name}/>"));
    } else {
        out.push_str(&format!("<{name}>{}</{name}>", api::xml_escape(text)));
    }
}

/// `eice-` and 17 lowercase hex digits.
pub fn is_endpoint_id(id: &str) -> bool {
    id.strip_prefix("eice-")
        .is_some_and(|h| h.len() == 17 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

// ------------------------------------------------------------ the server

/// The TLS WebSocket server of a bed.
pub struct EiceServer {
    pub port: u16,
    pub ca_pem_path: PathBuf,
    thread: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EiceServer {
    /// Makes the server certificate (issued by `ca`, the bed's CA for the
    /// endpoint and stream stand-ins), writes the CA as `eice-ca.pem` into
    /// `dir`, and serves on 127.0.0.1:0 on a thread of its own.
    pub fn start(api: Arc<Api>, ca: &super::tls::TestCa, dir: &Path, sshd_port: u16) -> EiceServer {
        let region = api.config.region.clone();
        let ca_pem_path = dir.join("eice-ca.pem");
        std::fs::write(&ca_pem_path, &ca.pem).expect("write eice-ca.pem");
        let config = ca.server_config_named(
            &[
                &format!("*.ec2-instance-connect-endpoint.{region}.amazonaws.com"),
                &format!("*.fips.ec2-instance-connect-endpoint.{region}.amazonaws.com"),
            ],
            "ec2-instance-connect-endpoint stand-in",
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the EICE stand-in");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("EICE address").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("testbed-eice-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the EICE stand-in's runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register listener with tokio");
                    let serve = async {
                        loop {
                            let Ok((tcp, peer)) = listener.accept().await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let api = api.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                connection(api, acceptor, tcp, peer, sshd_port).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = rx => {}
                    }
                });
            })
            .expect("spawn the EICE stand-in thread");
        EiceServer {
            port,
            ca_pem_path,
            thread: Some(thread),
            stop: Some(tx),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EiceServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the handshake callback decided.
enum Verdict {
    Accept(Accepted),
    Reject,
}

struct Accepted {
    endpoint_id: String,
    host: String,
    remote_port: u16,
    private_ip: String,
    max_duration: Option<u32>,
    query: String,
}

// tungstenite's handshake callback returns its (large) error response.
#[allow(clippy::result_large_err)]
async fn connection(
    api: Arc<Api>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    _peer: SocketAddr,
    sshd_port: u16,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let verdict: Arc<std::sync::Mutex<Option<Verdict>>> = Arc::default();
    let callback = {
        let verdict = verdict.clone();
        let api = api.clone();
        move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let (outcome, result) = check_handshake(&api, req, resp);
            *verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            result
        }
    };
    let config = WebSocketConfig::default().max_frame_size(Some(16 << 20));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(config)).await;
    let accepted = match verdict.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(Verdict::Accept(a)) => a,
        _ => return,
    };
    let Ok(ws) = ws else {
        return;
    };
    serve_tunnel(api, ws, accepted, sshd_port).await;
}

/// The handshake checks, in the service's order: signature, injected
/// failures, then the parameters.
fn check_handshake(
    api: &Api,
    req: &Request,
    resp: Response,
) -> (Verdict, Result<Response, ErrorResponse>) {
    let query = req.uri().query().unwrap_or_default().to_owned();
    // CloudTrail records every /openTunnel handshake, with its User-Agent.
    let agent: Vec<(String, String)> = req
        .headers()
        .get("user-agent")
        .map(|v| {
            (
                "user-agent".to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .into_iter()
        .collect();
    let mut st = api.lock();
    st.eice.advance();
    let reject = |st: &mut State, status: u16, code: &str, message: String, injected: bool| {
        if req.uri().path() == "/openTunnel" {
            let error = Some((code.to_owned(), message.clone()));
            super::cloudtrail::record_tunnel(api, st, &query, &agent, error);
        }
        st.eice.rejections.push(Rejection {
            status,
            code: code.to_owned(),
            message: message.clone(),
            injected,
            query: query.clone(),
        });
        let body = serde_json::json!({ "ErrorCode": code, "Message": message }).to_string();
        let length = http::HeaderValue::from(body.len());
        let mut r = http::Response::new(Some(body));
        // As the service frames it: the body by its length.
        r.headers_mut().insert("content-length", length);
        *r.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&api::uuid_like()) {
            r.headers_mut().insert("x-amzn-requestid", v);
        }
        (Verdict::Reject, Err(r))
    };
    if req.uri().path() != "/openTunnel" {
        let message = format!("Unknown path {}", req.uri().path());
        return reject(&mut st, 404, "NotFound", message, false);
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let signed = sigv4::SignedRequest {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: &query,
        headers: &headers,
        body: &[],
    };
    let expected = sigv4::Expected {
        access_key_id: &api.config.access_key_id,
        secret_access_key: &api.config.secret_access_key,
        region: &api.config.region,
        service: "ec2-instance-connect",
        session_token: api.config.session_token.as_deref(),
        now: SystemTime::now(),
        max_skew: Duration::from_secs(300),
    };
    if let Err(e) = sigv4::verify_presigned(&signed, &expected, MAX_EXPIRES) {
        st.signature_failures
            .push(format!("ec2-instance-connect OpenTunnel: {e}"));
        let (status, code) = match e {
            sigv4::AuthError::Expired(_) => (403, "ExpiredRequestException"),
            sigv4::AuthError::UnknownKey(_) => (403, "UnrecognizedClientException"),
            sigv4::AuthError::Missing(_) => (403, "MissingAuthenticationTokenException"),
            sigv4::AuthError::Malformed(_) => (400, "IncompleteSignatureException"),
            sigv4::AuthError::Mismatch(_) => (403, "InvalidSignatureException"),
        };
        return reject(&mut st, status, code, e.to_string(), false);
    }
    if let Some((status, code, message)) = st.eice.rejections_queued.pop_front() {
        return reject(&mut st, status, &code, message, true);
    }
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| params.get(name).cloned();
    let Some(endpoint_id) = param("instanceConnectEndpointId") else {
        return reject(
            &mut st,
            400,
            "InvalidParameter",
            "instanceConnectEndpointId is required".into(),
            false,
        );
    };
    let Some(endpoint) = st
        .eice
        .endpoints
        .iter()
        .find(|e| e.id == endpoint_id)
        .cloned()
    else {
        let message = format!("The instanceConnectEndpoint ID '{endpoint_id}' does not exist");
        return reject(&mut st, 404, "ResourceNotFoundException", message, false);
    };
    if host != endpoint.dns_name && host != endpoint.fips_dns_name {
        let message = format!("Host {host:?} is not the DNS name of {endpoint_id}");
        return reject(&mut st, 400, "InvalidParameter", message, false);
    }
    if !OPEN_STATES.contains(&endpoint.state.as_str()) {
        let message = format!(
            "Instance Connect Endpoint {endpoint_id} is in state {}",
            endpoint.state
        );
        return reject(&mut st, 400, "InvalidState", message, false);
    }
    let remote_port = match param("remotePort").map(|p| p.parse::<u16>()) {
        Some(Ok(p)) if p == 22 || p == 3389 => p,
        other => {
            let message = format!("remotePort must be 22 or 3389, got {other:?}");
            return reject(&mut st, 400, "InvalidParameter", message, false);
        }
    };
    let Some(private_ip) = param("privateIpAddress") else {
        return reject(
            &mut st,
            400,
            "InvalidParameter",
            "privateIpAddress is required".into(),
            false,
        );
    };
    // An endpoint reaches the address family its IP address type names:
    // private IPv4 addresses, IPv6 addresses, or both.
    let is_v6 = private_ip.contains(':');
    let family_ok = match endpoint.ip_address_type.as_str() {
        "ipv6" => is_v6,
        "dualstack" => true,
        _ => !is_v6,
    };
    let reachable = endpoint.vpc_id == api.config.vpc_id
        && family_ok
        && st.instances.iter().any(|i| {
            i.state == "running"
                && if is_v6 {
                    i.ipv6.as_deref() == Some(private_ip.as_str())
                } else {
                    i.ipv4 && i.private_ip == private_ip
                }
        });
    if !reachable {
        let message = format!(
            "privateIpAddress {private_ip} is not a running instance in {}",
            endpoint.vpc_id
        );
        return reject(&mut st, 400, "InvalidParameter", message, false);
    }
    let max_duration = match param("maxTunnelDuration").map(|d| d.parse::<u32>()) {
        None => None,
        Some(Ok(d)) if (1..=3600).contains(&d) => Some(d),
        Some(other) => {
            let message = format!("maxTunnelDuration must be 1-3600, got {other:?}");
            return reject(&mut st, 400, "InvalidParameter", message, false);
        }
    };
    super::cloudtrail::record_tunnel(api, &mut st, &query, &agent, None);
    drop(st);
    (
        Verdict::Accept(Accepted {
            endpoint_id,
            host,
            remote_port,
            private_ip,
            max_duration,
            query,
        }),
        Ok(resp),
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

async fn serve_tunnel(api: Arc<Api>, mut ws: Ws, a: Accepted, sshd_port: u16) {
    let started = Instant::now();
    let index = {
        let mut st = api.lock();
        st.eice.tunnels.push(Tunnel {
            endpoint_id: a.endpoint_id.clone(),
            host: a.host.clone(),
            remote_port: a.remote_port,
            private_ip: a.private_ip.clone(),
            max_duration: a.max_duration,
            query: a.query.clone(),
            bytes_up: 0,
            bytes_down: 0,
            largest_frame: 0,
            frames_up: 0,
            closed_by: ClosedBy::Open,
            client_close_code: None,
            server_close: None,
            violations: Vec::new(),
            opened: SystemTime::now(),
            duration: None,
        });
        st.eice.open_now += 1;
        st.eice.max_open = st.eice.max_open.max(st.eice.open_now);
        st.eice.tunnels.len() - 1
    };
    let mut rec = TunnelProgress::default();
    let fault = api.lock().eice.faults.pop_front();
    match fault {
        Some(TunnelFault::TextFrame) => {
            let _ = ws.send(Message::text("this is not a binary frame")).await;
            finish_after_server_close(&mut ws, &mut rec, None).await;
        }
        Some(TunnelFault::Close { code, reason }) => {
            finish_after_server_close(&mut ws, &mut rec, Some((code, reason))).await;
        }
        Some(TunnelFault::Stall) => {
            // Nothing but reading (and dropping) what the client sends.
            rec.closed_by = Some(ClosedBy::Dropped);
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = msg {
                    rec.client_close_code = frame.map(|f| u16::from(f.code)).or(Some(1005));
                    rec.closed_by = Some(ClosedBy::Client);
                    break;
                }
            }
        }
        Some(TunnelFault::Oversized(n)) => {
            let _ = ws.send(Message::binary(vec![0u8; n])).await;
            finish_after_server_close(&mut ws, &mut rec, None).await;
        }
        Some(fault) => {
            let tcp = TcpStream::connect((a.private_ip.as_str(), sshd_port)).await;
            if let Ok(tcp) = tcp {
                let _ = tcp.set_nodelay(true);
                let (r, w) = tcp.into_split();
                rec.fault = Some(fault);
                relay(&mut ws, r, w, a.max_duration, &mut rec).await
            }
        }
        None => {
            let upstream = if a.remote_port == 22 {
                TcpStream::connect((a.private_ip.as_str(), sshd_port))
                    .await
                    .ok()
            } else {
                None
            };
            match upstream {
                Some(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let (r, w) = tcp.into_split();
                    relay(&mut ws, r, w, a.max_duration, &mut rec).await
                }
                // Port 3389 is an echo service: every byte comes back.
                None if a.remote_port == 3389 => {
                    let (ours, theirs) = tokio::io::duplex(256 * 1024);
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(theirs);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                    let (r, w) = tokio::io::split(ours);
                    relay(&mut ws, r, w, a.max_duration, &mut rec).await
                }
                None => {
                    let reason = format!("Unable to connect to {}:{}", a.private_ip, a.remote_port);
                    finish_after_server_close(&mut ws, &mut rec, Some((1011, reason))).await;
                }
            }
        }
    }
    let mut st = api.lock();
    st.eice.open_now = st.eice.open_now.saturating_sub(1);
    let t = &mut st.eice.tunnels[index];
    t.bytes_up = rec.bytes_up;
    t.bytes_down = rec.bytes_down;
    t.largest_frame = rec.largest_frame;
    t.frames_up = rec.frames_up;
    t.closed_by = rec.closed_by.unwrap_or(ClosedBy::Dropped);
    t.client_close_code = rec.client_close_code;
    t.server_close = rec.server_close;
    t.violations = rec.violations;
    t.duration = Some(started.elapsed());
}

#[derive(Default)]
struct TunnelProgress {
    bytes_up: u64,
    bytes_down: u64,
    largest_frame: usize,
    frames_up: u64,
    closed_by: Option<ClosedBy>,
    client_close_code: Option<u16>,
    server_close: Option<(u16, String)>,
    violations: Vec<String>,
    /// A fault that acts during the relay.
    fault: Option<TunnelFault>,
}

/// Sends our close (if any) and waits briefly for the client's answer.
async fn finish_after_server_close(
    ws: &mut Ws,
    rec: &mut TunnelProgress,
    close: Option<(u16, String)>,
) {
    if let Some((code, reason)) = close {
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.clone().into(),
            })))
            .await;
        rec.server_close = Some((code, reason));
        rec.closed_by.get_or_insert(ClosedBy::Server);
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => {
                    rec.client_close_code = frame.map(|f| u16::from(f.code)).or(Some(1005));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
}

/// `data` as one fragmented binary message: frames of at most 7 bytes.
async fn send_fragmented<S>(
    sink: &mut S,
    data: &[u8],
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let pieces: Vec<&[u8]> = data.chunks(7).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
        let last = i + 1 == pieces.len();
        let frame = Frame::message(piece.to_vec(), OpCode::Data(opcode), last);
        sink.send(Message::Frame(frame)).await?;
    }
    Ok(())
}

enum RelayEnd {
    ClientClosed(Option<u16>),
    ServerClose(u16, String),
    InstanceClosed,
    Violation(u16, String),
    Expired,
    Dropped,
}

/// Full duplex: client frames → instance, instance bytes → client frames.
async fn relay<R, W>(
    ws: &mut Ws,
    mut tcp_r: R,
    mut tcp_w: W,
    max_duration: Option<u32>,
    rec: &mut TunnelProgress,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let deadline =
        max_duration.map(|s| tokio::time::Instant::now() + Duration::from_secs(s.into()));
    let (mut bytes_up, mut frames_up, mut largest) = (0u64, 0u64, 0usize);
    let mut bytes_down = 0u64;
    let end = {
        let (mut sink, mut stream) = ws.split();
        let up = async {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(data)) => {
                        frames_up += 1;
                        largest = largest.max(data.len());
                        if data.len() > MAX_FRAME {
                            return RelayEnd::Violation(
                                1009,
                                format!("Frame of {} bytes exceeds {MAX_FRAME}", data.len()),
                            );
                        }
                        bytes_up += data.len() as u64;
                        if tcp_w.write_all(&data).await.is_err() {
                            return RelayEnd::Violation(
                                1011,
                                "Connection to the instance failed".into(),
                            );
                        }
                    }
                    Ok(Message::Text(_)) => {
                        return RelayEnd::Violation(1003, "Text frames are not supported".into());
                    }
                    Ok(Message::Close(frame)) => {
                        let _ = tcp_w.shutdown().await;
                        return RelayEnd::ClientClosed(
                            frame.map(|f| u16::from(f.code)).or(Some(1005)),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => return RelayEnd::Dropped,
                }
            }
            RelayEnd::Dropped
        };
        let fault = rec.fault.clone();
        let down = async {
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match tcp_r.read(&mut buf).await {
                    Ok(0) | Err(_) => return RelayEnd::InstanceClosed,
                    Ok(n) => {
                        bytes_down += n as u64;
                        let sent = match &fault {
                            Some(TunnelFault::Fragmented) => {
                                send_fragmented(&mut sink, &buf[..n]).await
                            }
                            _ => sink.send(Message::binary(buf[..n].to_vec())).await,
                        };
                        if sent.is_err() {
                            return RelayEnd::Dropped;
                        }
                        match &fault {
                            Some(TunnelFault::CloseAfter {
                                bytes,
                                code,
                                reason,
                            }) if bytes_down >= *bytes => {
                                return RelayEnd::ServerClose(*code, reason.clone());
                            }
                            Some(TunnelFault::DropAfter { bytes }) if bytes_down >= *bytes => {
                                return RelayEnd::Dropped;
                            }
                            _ => {}
                        }
                    }
                }
            }
        };
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = up => end,
            end = down => end,
            _ = expired => RelayEnd::Expired,
        }
    };
    rec.bytes_up = bytes_up;
    rec.frames_up = frames_up;
    rec.largest_frame = largest;
    rec.bytes_down = bytes_down;
    match end {
        RelayEnd::ClientClosed(code) => {
            rec.client_close_code = code;
            rec.closed_by = Some(ClosedBy::Client);
            // tungstenite answers the close; drive it out.
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        RelayEnd::InstanceClosed => {
            rec.closed_by = Some(ClosedBy::Instance);
            finish_after_server_close(ws, rec, Some((1000, String::new()))).await;
        }
        RelayEnd::ServerClose(code, reason) => {
            finish_after_server_close(ws, rec, Some((code, reason))).await;
        }
        RelayEnd::Violation(code, reason) => {
            rec.violations.push(reason.clone());
            finish_after_server_close(ws, rec, Some((code, reason))).await;
        }
        RelayEnd::Expired => {
            let reason = format!(
                "Tunnel closed: maximum tunnel duration of {} seconds reached",
                max_duration.unwrap_or_default()
            );
            finish_after_server_close(ws, rec, Some((1000, reason))).await;
        }
        RelayEnd::Dropped => rec.closed_by = Some(ClosedBy::Dropped),
    }
}

// ------------------------------------------------------------- TestBed

impl TestBed {
    /// The bed's one VPC (every instance is in it).
    pub fn vpc_id(&self) -> &str {
        &self.api.config.vpc_id
    }

    /// The bed's one subnet (every instance is in it).
    pub fn subnet_id(&self) -> &str {
        &self.api.config.subnet_id
    }

    /// Create an EC2 Instance Connect Endpoint (default: create-complete,
    /// in the bed's VPC and subnet).
    pub fn add_endpoint(&self, spec: EndpointSpec) -> Endpoint {
        let cfg = &self.api.config;
        let mut st = self.api.lock();
        let id = spec
            .id
            .unwrap_or_else(|| format!("eice-{}", api::random_hex(17)));
        assert!(is_endpoint_id(&id), "bad endpoint id {id:?}");
        assert!(
            !st.eice.endpoints.iter().any(|e| e.id == id),
            "duplicate endpoint id {id}"
        );
        let state = spec.state.unwrap_or_else(|| "create-complete".into());
        assert!(
            STATES.contains(&state.as_str()),
            "unknown endpoint state {state:?}"
        );
        let region = &cfg.region;
        let endpoint = Endpoint {
            arn: format!(
                "arn:aws:ec2:{region}:{}:instance-connect-endpoint/{id}",
                cfg.account_id
            ),
            state,
            vpc_id: spec.vpc_id.unwrap_or_else(|| cfg.vpc_id.clone()),
            subnet_id: spec.subnet_id.unwrap_or_else(|| cfg.subnet_id.clone()),
            availability_zone: format!("{region}a"),
            security_group_ids: if spec.security_groups.is_empty() {
                vec![format!("sg-{}", api::random_hex(17))]
            } else {
                spec.security_groups
            },
            preserve_client_ip: false,
            state_message: String::new(),
            name: spec.name,
            client_token: String::new(),
            dns_name: format!("{id}.ec2-instance-connect-endpoint.{region}.amazonaws.com"),
            fips_dns_name: format!(
                "{id}.fips.ec2-instance-connect-endpoint.{region}.amazonaws.com"
            ),
            created_at: self.api.now(&st) - 86_400,
            ip_address_type: spec.ip_address_type.unwrap_or_else(|| "ipv4".into()),
            id,
        };
        st.eice.endpoints.push(endpoint.clone());
        endpoint
    }

    /// Change an endpoint's state.
    pub fn set_endpoint_state(&self, id: &str, state: &str) {
        assert!(STATES.contains(&state), "unknown endpoint state {state:?}");
        let mut st = self.api.lock();
        let e = st
            .eice
            .endpoints
            .iter_mut()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no endpoint {id}"));
        e.state = state.to_owned();
    }

    /// Force DescribeInstanceConnectEndpoints pages of at most `n` (0: off).
    pub fn set_endpoint_page_size(&self, n: usize) {
        self.api.lock().eice.page_size = (n > 0).then_some(n);
    }

    /// How long created endpoints stay create-in-progress (default 0: the
    /// next look sees create-complete).
    pub fn set_endpoint_create_delay(&self, d: Duration) {
        self.api.lock().eice.create_delay = d;
    }

    /// How long deleted endpoints stay delete-in-progress.
    pub fn set_endpoint_delete_delay(&self, d: Duration) {
        self.api.lock().eice.delete_delay = d;
    }

    /// The next CreateInstanceConnectEndpoint ends in create-failed with
    /// this state message.
    pub fn fail_next_endpoint_create(&self, message: &str) {
        self.api
            .lock()
            .eice
            .create_failures
            .push_back(message.to_owned());
    }

    /// Every endpoint, with due state changes applied.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut st = self.api.lock();
        st.eice.advance();
        st.eice.endpoints.clone()
    }

    /// Replace a security group's outbound rules (default: everything to
    /// anywhere). The group itself must exist for DescribeSecurityGroups
    /// ([`TestBed::set_security_group`], or the bed's own).
    pub fn set_security_group_egress(&self, id: &str, rules: Vec<super::diag::SgRule>) {
        self.api.lock().eice.egress.insert(id.to_owned(), rules);
    }

    /// Refuse the next `/openTunnel` handshake (after its signature checks
    /// out) with this error code and message. Calls queue up.
    pub fn fail_next_tunnel(&self, code: &str, message: &str) {
        let status = match code {
            "AccessDeniedException" | "UnauthorizedException" => 403,
            "ThrottlingException" | "TooManyRequestsException" => 429,
            "InternalServerException" | "InternalFailure" => 500,
            "ServiceUnavailableException" => 503,
            _ => 400,
        };
        self.api.lock().eice.rejections_queued.push_back((
            status,
            code.to_owned(),
            message.to_owned(),
        ));
    }

    /// Do `fault` to the next accepted tunnel instead of relaying it.
    pub fn fault_next_tunnel(&self, fault: TunnelFault) {
        self.api.lock().eice.faults.push_back(fault);
    }

    /// Every accepted tunnel, in order (open ones have `closed_by == Open`).
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.api.lock().eice.tunnels.clone()
    }

    /// Every refused handshake, injected ones included.
    pub fn tunnel_rejections(&self) -> Vec<Rejection> {
        self.api.lock().eice.rejections.clone()
    }

    /// Refused handshakes that no test asked for: should be empty.
    pub fn unexpected_tunnel_rejections(&self) -> Vec<Rejection> {
        self.tunnel_rejections()
            .into_iter()
            .filter(|r| !r.injected)
            .collect()
    }

    /// The most tunnels that were open at once.
    pub fn max_open_tunnels(&self) -> usize {
        self.api.lock().eice.max_open
    }

    /// Wait until `n` tunnels have been accepted and all of them have ended.
    pub fn wait_for_tunnels_closed(&self, n: usize, timeout: Duration) -> Vec<Tunnel> {
        let deadline = Instant::now() + timeout;
        loop {
            let tunnels = self.tunnels();
            if tunnels.len() >= n && tunnels.iter().all(|t| t.closed_by != ClosedBy::Open) {
                return tunnels;
            }
            assert!(
                Instant::now() < deadline,
                "tunnels did not close in {timeout:?}: {tunnels:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `https://127.0.0.1:PORT`, for `EIC_CONNECT_EICE_ENDPOINT`.
    pub fn eice_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.eice_server().port)
    }

    /// The PEM file of the CA that signed the stand-in's certificate.
    pub fn eice_ca_bundle(&self) -> PathBuf {
        self.eice_server().ca_pem_path.clone()
    }

    fn eice_server(&self) -> &EiceServer {
        self.eice.as_ref().expect("EICE stand-in running")
    }

    /// The environment that points a command's tunnels at the stand-in.
    pub(super) fn apply_eice_env(&self, c: &mut Command) {
        if let Some(server) = &self.eice {
            c.env("AWS_CA_BUNDLE", &server.ca_pem_path).env(
                "EIC_CONNECT_EICE_ENDPOINT",
                format!("https://127.0.0.1:{}", server.port),
            );
        }
    }
}
