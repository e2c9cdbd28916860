//! What every AWS error the tool can meet means, and what to do about it.
//!
//! Errors are matched on their **code** (the HTTP status varies between the
//! documentation and the service). Messages from AWS are shown after being
//! made terminal-safe.

use std::error::Error as StdError;
use std::fmt::Debug;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::Scope;
use crate::error::Failure;
use crate::sanitize::terminal_safe;

/// What was being attempted when an error came back.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The API operation, e.g. `SendSSHPublicKey`.
    pub op: &'static str,
    pub scope: &'a Scope,
    pub instance_id: Option<&'a str>,
    pub os_user: Option<&'a str>,
}

impl Attempt<'_> {
    fn instance(&self) -> &str {
        self.instance_id.unwrap_or("the instance")
    }

    fn user(&self) -> &str {
        self.os_user.unwrap_or("the OS user")
    }
}

/// Turns an SDK error into a failure with a message and hints.
pub fn from_sdk<E>(err: SdkError<E, HttpResponse>, at: &Attempt<'_>) -> anyhow::Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let failure = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match e.code() {
                Some(code) => explain(code, e.message().unwrap_or(""), at),
                None => not_an_aws_answer(service.raw(), at),
            }
        }
        SdkError::TimeoutError(_) => timed_out(at),
        SdkError::DispatchFailure(dispatch) => {
            if let Some(own) = own_failure(&err) {
                // eic-connect's own HTTP client said why (TLS trust).
                own
            } else if let Some(cause) = credentials_problem(&err) {
                no_credentials(at, &cause)
            } else if dispatch.is_timeout() {
                timed_out(at)
            } else if chain_text(&err).contains("certificate") {
                Failure::new(format!(
                    "TLS with the AWS API failed for {} ({}): {}",
                    at.op,
                    at.scope.describe(),
                    chain_text(&err)
                ))
                .hint("if a proxy or firewall inspects TLS, point AWS_CA_BUNDLE at its CA certificate (PEM), or add that CA to the system's store")
                .hint("if AWS_ENDPOINT_URL is set, check that its certificate is for that name")
            } else if connection_broke(&err) {
                Failure::new(format!(
                    "the connection to the AWS API broke during {} ({}): {}",
                    at.op,
                    at.scope.describe(),
                    chain_text(&err)
                ))
                .hint("this usually passes: try again")
                .hint("if it keeps happening, check your network and any proxy (HTTPS_PROXY) in between")
            } else {
                unreachable_endpoint(at, &chain_text(&err))
            }
        }
        SdkError::ResponseError(_) => Failure::new(format!(
            "the answer to {} broke off ({}): {}",
            at.op,
            at.scope.describe(),
            chain_text(&err)
        ))
        .hint("the connection dropped mid-answer; this usually passes: try again")
        .hint("if it keeps happening, check your network and any proxy (HTTPS_PROXY) in between"),
        _ => {
            let text = chain_text(&err);
            if let Some(cause) = credentials_problem(&err) {
                no_credentials(at, &cause)
            } else if text.contains("signing region") {
                Failure::new("no AWS region is configured")
                    .hint("pass --region REGION, or set AWS_REGION")
            } else {
                Failure::new(format!("could not call {}: {text}", at.op))
            }
        }
    };
    anyhow::Error::new(failure)
}

/// A failure eic-connect's own code raised below the SDK (the HTTP
/// client's TLS trust), which already says what to do.
fn own_failure(err: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return Some(failure.clone());
        }
        source = cause.source();
    }
    None
}

/// The connection was up and then broke (reset, closed early), as opposed
/// to never reaching the endpoint.
fn connection_broke(err: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof,
            };
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// An error answer without an AWS error code: a load balancer's or a
/// proxy's page, an empty answer, or a body that is not the API's format.
/// Says what came back (an HTML page by its title only) and what to do.
fn not_an_aws_answer(raw: &HttpResponse, at: &Attempt<'_>) -> Failure {
    let status = raw.status().as_u16();
    let body = raw.body().bytes().unwrap_or_default();
    let what = describe_body(body);
    let failure = Failure::new(if (200..300).contains(&status) {
        format!(
            "{} answered with something eic-connect could not read: HTTP {status}, {what} ({})",
            at.op,
            at.scope.describe()
        )
    } else {
        format!(
            "{} got an answer that is not from the AWS API: HTTP {status}, {what} ({})",
            at.op,
            at.scope.describe()
        )
    });
    if status >= 500 || status == 429 {
        failure
            .hint("the service or something in front of it is failing; this usually passes: try again shortly")
            .hint("more retries: set AWS_MAX_ATTEMPTS (default 3); if it persists, check any proxy (HTTPS_PROXY) in between")
    } else {
        failure
            .hint("something between you and AWS answered instead: check HTTPS_PROXY, NO_PROXY and any firewall")
            .hint("if AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_EC2 is set, check that it points at the AWS API")
    }
}

/// A few words about an answer's body, safe for a terminal.
fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "an empty body".to_owned();
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.contains("<html") {
        let title = lower
            .find("<title>")
            .and_then(|start| {
                let from = start + "<title>".len();
                let len = lower[from..].find("</title>")?;
                text.get(from..from + len)
            })
            .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|t| !t.is_empty());
        return match title {
            Some(t) => format!("an HTML page titled \"{}\"", shorten(&t, 80)),
            None => "an HTML page".to_owned(),
        };
    }
    let first = text.lines().next().unwrap_or_default();
    format!("\"{}\"", shorten(first, 80))
}

/// At most `max` characters of `text`, terminal-safe, with `…` if cut.
fn shorten(text: &str, max: usize) -> String {
    let safe = terminal_safe(text);
    if safe.chars().count() <= max {
        return safe.into_owned();
    }
    let cut: String = safe.chars().take(max).collect();
    format!("{cut}…")
}

/// The source chain of an error on one line (the SDK's Display is terse).
fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string().trim_end().to_owned()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string().trim_end().to_owned();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    terminal_safe(&parts.join(": ")).into_owned()
}

/// Finds a credentials-provider failure anywhere in the chain.
fn credentials_problem(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return Some(chain_text(cause));
        }
        source = cause.source();
    }
    let text = chain_text(err);
    (text.contains("credentials") || text.contains("profile")).then_some(text)
}

fn timed_out(at: &Attempt<'_>) -> Failure {
    Failure::new(format!("{} timed out ({})", at.op, at.scope.describe()))
        .hint("check your network connection or proxy (HTTPS_PROXY) settings")
        .hint("raise the limit with --api-timeout SECONDS if the network is slow")
}

fn unreachable_endpoint(at: &Attempt<'_>, cause: &str) -> Failure {
    Failure::new(format!("could not reach the AWS API for {} ({}): {cause}", at.op, at.scope.describe()))
        .hint("check your network connection, proxy settings and the region name")
        .hint("if AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_EC2 is set, check that it points at a live endpoint")
}

fn no_credentials(at: &Attempt<'_>, cause: &str) -> Failure {
    Failure::new(format!("no usable AWS credentials ({}): {cause}", at.scope.describe()))
        .hint("configure credentials: `aws configure`, `aws sso login --profile NAME`, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        .hint("choose a profile with --profile NAME or AWS_PROFILE")
}

/// What an AWS error code means to eic-connect; [`explain`] words each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    // EC2 Instance Connect (SendSSHPublicKey and friends).
    PushNotAllowed,
    PushInstanceNotFound,
    PushInstanceNotRunning,
    PushInstanceUnavailable,
    PushRejected,
    PushThrottled,
    PushServiceError,
    SerialUnsupportedType,
    SerialAccessDisabled,
    SerialSessionLimit,
    SerialSessionUnavailable,
    SerialSessionUnsupported,
    // EC2 (DescribeInstances and friends).
    InstanceNotFound,
    InstanceIdMalformed,
    CannotStartInState,
    NoCapacity,
    InstanceLimit,
    UnsupportedOperation,
    EndpointNotFound,
    EndpointIdMalformed,
    // Session Manager (StartSession and friends).
    SsmNotConnected,
    SsmDocument,
    SsmSessionGone,
    SsmFilterRejected,
    // CloudTrail (LookupEvents).
    TrailLookupAttribute,
    TrailTimeRange,
    TrailPageSize,
    TrailToken,
    TrailEventCategory,
    TrailNotPermitted,
    TrailUnsupported,

    // IAM and STS (GetCallerIdentity, GetRole, SimulatePrincipalPolicy).
    IamNoSuchEntity,
    IamServiceFailure,
    IamInvalidInput,
    IamPolicyEvaluation,
    // EC2 administration (endpoints, security groups, instance metadata).
    // endpoints
    SubnetNotFound,
    EndpointQuota,
    SubnetFull,
    EndpointBusy,
    TokenReused,
    DryRun,
    // security groups
    RuleExists,
    GroupNotFound,
    GroupIdMalformed,
    RuleLimit,
    PermissionMalformed,

    // Any API.
    NotAuthorized,
    Throttled,
    InternalError,
    CredentialsRefused,
    SignatureRefused,
    Expired,
    NotOptedIn,
    AccountBlocked,
    RequestRejected,
}

/// Every AWS error code eic-connect knows, and what it means. [`explain`]
/// looks codes up here (any other gets a generic message), and the tests
/// check every entry.
const KNOWN_CODES: &[(&str, Meaning)] = &[
    ("AuthException", Meaning::PushNotAllowed),
    (
        "EC2InstanceNotFoundException",
        Meaning::PushInstanceNotFound,
    ),
    (
        "EC2InstanceStateInvalidException",
        Meaning::PushInstanceNotRunning,
    ),
    (
        "EC2InstanceUnavailableException",
        Meaning::PushInstanceUnavailable,
    ),
    ("InvalidArgsException", Meaning::PushRejected),
    ("ThrottlingException", Meaning::PushThrottled),
    ("ServiceException", Meaning::PushServiceError),
    (
        "EC2InstanceTypeInvalidException",
        Meaning::SerialUnsupportedType,
    ),
    (
        "SerialConsoleAccessDisabledException",
        Meaning::SerialAccessDisabled,
    ),
    (
        "SerialConsoleSessionLimitExceededException",
        Meaning::SerialSessionLimit,
    ),
    (
        "SerialConsoleSessionUnavailableException",
        Meaning::SerialSessionUnavailable,
    ),
    (
        "SerialConsoleSessionUnsupportedException",
        Meaning::SerialSessionUnsupported,
    ),
    ("InvalidInstanceID.NotFound", Meaning::InstanceNotFound),
    ("InvalidInstanceID.Malformed", Meaning::InstanceIdMalformed),
    ("IncorrectInstanceState", Meaning::CannotStartInState),
    ("InsufficientInstanceCapacity", Meaning::NoCapacity),
    ("InstanceLimitExceeded", Meaning::InstanceLimit),
    ("VcpuLimitExceeded", Meaning::InstanceLimit),
    ("UnsupportedOperation", Meaning::UnsupportedOperation),
    (
        "InvalidInstanceConnectEndpointId.NotFound",
        Meaning::EndpointNotFound,
    ),
    (
        "InvalidInstanceConnectEndpointId.Malformed",
        Meaning::EndpointIdMalformed,
    ),
    ("TargetNotConnected", Meaning::SsmNotConnected),
    ("InvalidDocument", Meaning::SsmDocument),
    ("DoesNotExistException", Meaning::SsmSessionGone),
    ("InvalidInstanceId", Meaning::SsmNotConnected),
    ("InvalidFilterKey", Meaning::SsmFilterRejected),
    (
        "InvalidInstanceInformationFilterValue",
        Meaning::SsmFilterRejected,
    ),
    ("InternalServerError", Meaning::InternalError),
    // ---- CloudTrail ----
    (
        "InvalidLookupAttributesException",
        Meaning::TrailLookupAttribute,
    ),
    ("InvalidTimeRangeException", Meaning::TrailTimeRange),
    ("InvalidMaxResultsException", Meaning::TrailPageSize),
    ("InvalidNextTokenException", Meaning::TrailToken),
    ("InvalidEventCategoryException", Meaning::TrailEventCategory),
    ("OperationNotPermittedException", Meaning::TrailNotPermitted),
    ("UnsupportedOperationException", Meaning::TrailUnsupported),
    // ---- IAM and STS ----
    ("NoSuchEntity", Meaning::IamNoSuchEntity),
    ("ServiceFailure", Meaning::IamServiceFailure),
    ("InvalidInput", Meaning::IamInvalidInput),
    ("PolicyEvaluation", Meaning::IamPolicyEvaluation),
    // ---- EC2 administration ----
    // endpoints
    ("InvalidSubnetID.NotFound", Meaning::SubnetNotFound),
    ("ResourceLimitExceeded", Meaning::EndpointQuota),
    ("InsufficientFreeAddressesInSubnet", Meaning::SubnetFull),
    ("IncorrectState", Meaning::EndpointBusy),
    ("IdempotentParameterMismatch", Meaning::TokenReused),
    ("DryRunOperation", Meaning::DryRun),
    // security groups
    ("InvalidPermission.Duplicate", Meaning::RuleExists),
    ("InvalidGroup.NotFound", Meaning::GroupNotFound),
    ("InvalidGroupId.Malformed", Meaning::GroupIdMalformed),
    ("RulesPerSecurityGroupLimitExceeded", Meaning::RuleLimit),
    ("InvalidPermission.Malformed", Meaning::PermissionMalformed),
    // ---- Any API ----
    ("UnauthorizedOperation", Meaning::NotAuthorized),
    ("AccessDenied", Meaning::NotAuthorized),
    ("AccessDeniedException", Meaning::NotAuthorized),
    ("RequestLimitExceeded", Meaning::Throttled),
    ("Throttling", Meaning::Throttled),
    ("EC2ThrottledException", Meaning::Throttled),
    ("TooManyRequestsException", Meaning::Throttled),
    ("InternalError", Meaning::InternalError),
    ("InternalFailure", Meaning::InternalError),
    ("ServiceUnavailable", Meaning::InternalError),
    ("Unavailable", Meaning::InternalError),
    ("AuthFailure", Meaning::CredentialsRefused),
    ("InvalidClientTokenId", Meaning::CredentialsRefused),
    ("UnrecognizedClientException", Meaning::CredentialsRefused),
    ("IncompleteSignature", Meaning::CredentialsRefused),
    ("SignatureDoesNotMatch", Meaning::SignatureRefused),
    ("InvalidSignatureException", Meaning::SignatureRefused),
    ("ExpiredToken", Meaning::Expired),
    ("ExpiredTokenException", Meaning::Expired),
    ("RequestExpired", Meaning::Expired),
    ("OptInRequired", Meaning::NotOptedIn),
    ("Blocked", Meaning::AccountBlocked),
    ("PendingVerification", Meaning::AccountBlocked),
    ("InvalidParameterValue", Meaning::RequestRejected),
    ("InvalidParameterCombination", Meaning::RequestRejected),
    ("InvalidParameter", Meaning::RequestRejected),
    ("InvalidFilter", Meaning::RequestRejected),
    ("MissingParameter", Meaning::RequestRejected),
    ("UnknownParameter", Meaning::RequestRejected),
    ("InvalidAction", Meaning::RequestRejected),
    ("InvalidNextToken", Meaning::RequestRejected),
    ("ValidationError", Meaning::RequestRejected),
    ("ValidationException", Meaning::RequestRejected),
];

/// Session Manager's operations.
fn is_ssm(op: &str) -> bool {
    matches!(
        op,
        "StartSession" | "TerminateSession" | "ResumeSession" | "DescribeInstanceInformation"
    )
}

/// The IAM action an operation needs: `service:Operation`.
fn action_of(op: &str) -> String {
    let service = match op {
        "SendSSHPublicKey" | "SendSerialConsoleSSHPublicKey" => "ec2-instance-connect",
        "LookupEvents" => "cloudtrail",
        "GetCallerIdentity" => "sts",
        "GetRole" | "GetUser" | "SimulatePrincipalPolicy" => "iam",
        _ if is_ssm(op) => "ssm",
        _ => "ec2",
    };
    format!("{service}:{op}")
}

/// The `eic-connect policy` command line whose policy allows a refused push.
fn policy_command(at: &Attempt<'_>) -> String {
    let mut words = vec!["eic-connect policy".to_owned()];
    words.extend(at.instance_id.map(str::to_owned));
    if at.op == "SendSerialConsoleSSHPublicKey" {
        words.push("--serial".to_owned());
    } else if let Some(user) = at.os_user {
        words.push(format!("--os-user {user}"));
    }
    words.join(" ")
}

/// EC2 Instance Connect's key pushes.
fn is_push(op: &str) -> bool {
    matches!(op, "SendSSHPublicKey" | "SendSerialConsoleSSHPublicKey")
}

fn meaning_of(code: &str) -> Option<Meaning> {
    KNOWN_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|&(_, meaning)| meaning)
}

/// Message and hints for an AWS error code.
pub fn explain(code: &str, message: &str, at: &Attempt<'_>) -> Failure {
    let msg = terminal_safe(message);
    let said = if msg.is_empty() {
        String::new()
    } else {
        format!(": {msg}")
    };
    let where_ = at.scope.describe();
    let id = at.instance();
    let user = at.user();
    let op = at.op;
    let Some(meaning) = meaning_of(code) else {
        let code = terminal_safe(code);
        return Failure::new(format!("{op} failed with AWS error {code}{said}")).hint(format!(
            "look up \"{code}\" in the AWS documentation for {op}"
        ));
    };
    match meaning {
        // ---- EC2 Instance Connect (SendSSHPublicKey and friends) ----
        Meaning::PushNotAllowed => Failure::new(format!("not allowed to push a key to {id} as OS user {user}{said}"))
            .hint(format!(
                "your IAM identity needs ec2-instance-connect:{op} on arn:{}:ec2:{}:<account>:instance/{id}",
                crate::policy::partition(&at.scope.region),
                at.scope.region
            ))
            .hint(format!("if the policy has an ec2:osuser condition, it must allow \"{user}\" (choose another with --os-user)"))
            .hint(format!("a policy that allows it: {}", policy_command(at)))
            .hint("check which identity is in use: aws sts get-caller-identity"),
        Meaning::PushInstanceNotFound => {
            Failure::new(format!("EC2 Instance Connect cannot find instance {id} ({where_}){said}"))
                .hint("check --region and --profile: the instance must be in that account and region")
        }
        Meaning::PushInstanceNotRunning => Failure::new(format!("instance {id} is not running{said}"))
            .hint(format!("start it: aws ec2 start-instances --instance-ids {id}")),
        Meaning::PushInstanceUnavailable => Failure::new(format!("instance {id} is temporarily unavailable{said}"))
            .hint("try again in a few seconds; if it just started, give it a minute to boot"),
        Meaning::PushRejected => Failure::new(format!("EC2 Instance Connect rejected the request{said}"))
            .hint(format!("check the OS user name \"{user}\" (1-32 characters) and the instance id {id}")),
        Meaning::PushThrottled if op == "LookupEvents" => Failure::new(format!("CloudTrail is throttling {op}{said}"))
            .hint("CloudTrail allows about 2 LookupEvents calls a second per account and region, shared by every tool using it: wait a few seconds and try again")
            .hint("a narrower --since/--until or a --limit needs fewer calls"),
        Meaning::PushThrottled if !is_push(op) => Failure::new(format!("{op} is being throttled by AWS{said}"))
            .hint("eic-connect retried with backoff; wait a few seconds and try again (AWS_MAX_ATTEMPTS raises the retries)"),
        Meaning::PushThrottled => Failure::new(format!("too many key pushes: {op} is being throttled{said}"))
            .hint("eic-connect retried with backoff; wait a few seconds and try again (AWS_MAX_ATTEMPTS raises the retries)")
            .hint("in loops (scp, rsync, Ansible) reuse one connection with ssh ControlMaster instead of pushing per call"),
        Meaning::PushServiceError => Failure::new(format!("EC2 Instance Connect had an internal error{said}"))
            .hint("this is on the AWS side and usually passes: try again shortly"),
        Meaning::SerialUnsupportedType => {
            Failure::new(format!("instance {id} does not support the serial console{said}"))
                .hint("the serial console needs a Nitro-based instance type")
        }
        Meaning::SerialAccessDisabled => {
            Failure::new(format!("serial console access is disabled for this account ({where_})"))
                .hint("enable it: aws ec2 enable-serial-console-access")
        }
        Meaning::SerialSessionLimit => {
            Failure::new(format!("instance {id} already has a serial console session"))
                .hint("only one session is allowed: wait about 30 seconds after the last one ended")
        }
        Meaning::SerialSessionUnavailable => {
            Failure::new(format!("the serial console of {id} is unavailable right now{said}"))
                .hint("try again shortly; if it persists, reboot the instance")
        }
        Meaning::SerialSessionUnsupported => {
            Failure::new(format!("instance {id} does not support serial console sessions{said}"))
                .hint("reboot the instance, or use a Nitro-based instance type")
        }

        // ---- EC2 (DescribeInstances and friends) ----
        Meaning::InstanceNotFound => Failure::new(format!("no instance {id} ({where_})"))
            .hint("check --region and --profile: instance ids are per account and region"),
        Meaning::InstanceIdMalformed => Failure::usage(format!("{id} is not a valid instance id{said}"))
            .hint("instance ids are 'i-' followed by 8 or 17 lowercase hex digits"),
        Meaning::CannotStartInState => Failure::new(format!("instance {id} cannot be started in its current state{said}"))
            .hint("a stopping instance must finish stopping first: wait a minute and try again")
            .hint("a terminated instance cannot be started again"),
        Meaning::NoCapacity => {
            Failure::new(format!("AWS has no capacity to start {id} in its availability zone right now{said}"))
                .hint("try again in a few minutes, or change the instance type")
        }
        Meaning::InstanceLimit => {
            Failure::new(format!("starting {id} would exceed the account's instance limit ({where_}){said}"))
                .hint("stop another instance, or request a higher limit (Service Quotas)")
        }
        Meaning::UnsupportedOperation => Failure::new(format!("{op} is not supported for {id}{said}"))
            .hint("spot and instance-store-backed instances cannot be started this way"),
        Meaning::EndpointNotFound => {
            Failure::new(format!("no such EC2 Instance Connect Endpoint ({where_}){said}"))
                .hint("check --eice-id, --region and --profile; list endpoints with: aws ec2 describe-instance-connect-endpoints")
        }
        Meaning::EndpointIdMalformed => {
            Failure::usage(format!("not a valid EC2 Instance Connect Endpoint id{said}"))
                .hint("endpoint ids look like eice-0123456789abcdef0")
        }

        // ---- Session Manager ----
        Meaning::SsmNotConnected => Failure::new(format!(
            "Session Manager cannot reach {id}: its SSM agent is not connected ({where_}){said}"
        ))
        .hint("the instance needs a running SSM agent, an instance profile with AmazonSSMManagedInstanceCore, and a way to the Systems Manager endpoints (internet or VPC endpoints)")
        .hint("check it with: eic-connect doctor TARGET; or connect another way (--connect direct or --connect eice)"),
        Meaning::SsmDocument => Failure::new(format!("Session Manager refused the session document{said}"))
            .hint("the AWS-StartSSHSession document must be available in this region and account; a Session Manager preference or SCP may restrict documents"),
        Meaning::SsmSessionGone => Failure::new(format!("the Session Manager session no longer exists{said}"))
            .hint("it ended already (timed out or terminated): connect again"),
        Meaning::SsmFilterRejected => Failure::new(format!("Session Manager rejected the {op} request{said}"))
            .hint("if the target you gave is valid, this is a bug in eic-connect: please report it"),

        // ---- CloudTrail ----
        Meaning::TrailLookupAttribute => Failure::new(format!("CloudTrail refused the lookup attribute of {op}{said}"))
            .hint("eic-connect asks for one attribute, EventSource = ec2-instance-connect.amazonaws.com; if CloudTrail refuses that, please report it"),
        Meaning::TrailTimeRange => Failure::new(format!("CloudTrail refused the time range{said}"))
            .hint("--since must come before --until, and both within the last 90 days (CloudTrail's event history)"),
        Meaning::TrailPageSize => Failure::new(format!("CloudTrail refused the page size of {op}{said}"))
            .hint("eic-connect asks for at most 50 events a page, CloudTrail's limit; if it refuses that, please report it"),
        Meaning::TrailToken => Failure::new(format!("CloudTrail no longer accepts the token for the next page{said}"))
            .hint("paging tokens last a limited time and belong to one query: run the command again"),
        Meaning::TrailEventCategory => Failure::new(format!("CloudTrail refused the event category of {op}{said}"))
            .hint("eic-connect asks for management events (no category); if CloudTrail refuses that, please report it"),
        Meaning::TrailNotPermitted => Failure::new(format!("CloudTrail does not permit {op} for this account ({where_}){said}"))
            .hint("an organization policy or the account's CloudTrail setup may forbid it: ask your AWS administrator")
            .hint("or look the events up in the CloudTrail console of the account that owns the trail"),
        Meaning::TrailUnsupported => Failure::new(format!("CloudTrail does not support {op} here ({where_}){said}"))
            .hint("check --region: event history exists in every commercial region")
            .hint("if AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_CLOUDTRAIL is set, check that it points at CloudTrail"),

        // ---- IAM and STS ----
        Meaning::IamNoSuchEntity => Failure::new(format!("IAM has no such entity for {op}{said}"))
            .hint("the role or user in use may have been deleted or renamed: check it with aws sts get-caller-identity")
            .hint("for an assumed role, check that the role still exists: aws iam get-role --role-name ROLE"),
        Meaning::IamServiceFailure => Failure::new(format!("IAM had an internal error during {op}{said}"))
            .hint("this is on the AWS side and usually passes: try again shortly"),
        Meaning::IamInvalidInput => Failure::new(format!("IAM rejected the {op} request as invalid{said}"))
            .hint("if the instance and OS user you gave are valid, this is a bug in eic-connect: please report it"),
        Meaning::IamPolicyEvaluation => Failure::new(format!("IAM could not evaluate the policies during {op}{said}"))
            .hint("a policy attached to the identity may be malformed: check it with the IAM policy simulator in the console")
            .hint("try again shortly; if it persists, the simulation cannot answer for this identity"),

        // ---- EC2 administration ----
        // endpoints
        Meaning::SubnetNotFound => Failure::new(format!("no such subnet ({where_}){said}"))
            .hint("check --subnet, --region and --profile; list subnets with: aws ec2 describe-subnets"),
        Meaning::EndpointQuota => Failure::new(format!("{op}: an EC2 Instance Connect Endpoint quota is reached ({where_}){said}"))
            .hint("by default AWS allows one endpoint per VPC and a few per account and region: list them with `eic-connect endpoint list`, delete one you do not need, or request more in Service Quotas"),
        Meaning::SubnetFull => Failure::new(format!("the subnet has no free address for the endpoint's network interface{said}"))
            .hint("choose another subnet of the VPC with --subnet, or free addresses in this one"),
        Meaning::EndpointBusy => Failure::new(format!("{op} is not possible in the resource's current state{said}"))
            .hint("an endpoint that is being created or deleted must finish first: check it with `eic-connect endpoint list` and try again"),
        Meaning::TokenReused => Failure::new(format!("{op} was retried with the same client token but different parameters{said}"))
            .hint("run the command again: each run uses a new client token"),
        Meaning::DryRun => Failure::new(format!("{op} would have succeeded, but it was a dry run{said}"))
            .hint("nothing was changed; run it without the dry-run option to make the change"),
        // security groups
        Meaning::RuleExists => Failure::new(format!("the security group already has this rule{said}"))
            .hint("nothing to add: if the port still seems closed, check the network ACL and the route table"),
        Meaning::GroupNotFound => Failure::new(format!("no such security group ({where_}){said}"))
            .hint("check the group id, --region and --profile: security groups are per account and region, and an endpoint's must be in its VPC")
            .hint("it may have been deleted meanwhile: list groups with aws ec2 describe-security-groups"),
        Meaning::GroupIdMalformed => Failure::usage(format!("not a valid security group id{said}"))
            .hint("security group ids look like sg-0123456789abcdef0"),
        Meaning::RuleLimit => Failure::new(format!("the security group has as many rules as it may hold{said}"))
            .hint("remove rules that are no longer needed, or ask for a higher limit (Service Quotas: inbound or outbound rules per security group)")
            .hint("or put the instance in one more security group that opens the port"),
        Meaning::PermissionMalformed => Failure::new(format!("EC2 rejected the security group rule as malformed{said}"))
            .hint("check the port and the address block; if they are right, this is a bug in eic-connect: please report it"),


        // ---- Any API ----
        Meaning::NotAuthorized => {
            let action = action_of(op);
            Failure::new(format!("not authorized to call {op} ({where_})"))
                .hint(format!("your IAM identity needs {action}"))
                .hint("check which identity is in use: aws sts get-caller-identity")
                .kind(crate::error::FailureKind::NotAuthorized)
        }
        Meaning::Throttled => {
            Failure::new(format!("{op} is being throttled by AWS{said}"))
                .hint("eic-connect retried with backoff; wait a few seconds and try again (AWS_MAX_ATTEMPTS raises the retries)")
        }
        Meaning::InternalError => {
            let service = match op {
                _ if is_ssm(op) => "Session Manager",
                "LookupEvents" => "CloudTrail",
                _ => "the EC2 API",
            };
            Failure::new(format!("{service} had an internal error during {op}{said}"))
                .hint("this is on the AWS side and usually passes: try again shortly")
        }
        Meaning::CredentialsRefused => {
            Failure::new(format!("AWS did not accept the credentials ({where_}){said}"))
                .hint("check the access key and profile in use: aws sts get-caller-identity")
                .hint("`aws configure` or `aws sso login --profile NAME` sets up working credentials")
        }
        Meaning::SignatureRefused => {
            Failure::new(format!("AWS rejected the request signature ({where_}){said}"))
                .hint("check that the secret access key belongs to the access key id")
                .hint("check that this machine's clock is correct")
        }
        Meaning::Expired => {
            Failure::new(format!("the AWS credentials or request have expired ({where_}){said}"))
                .hint("refresh them: `aws sso login --profile NAME`, or fetch new session credentials")
                .hint("check that this machine's clock is correct")
        }
        Meaning::NotOptedIn => Failure::new(format!("the account is not subscribed to EC2 in {}{said}", at.scope.region))
            .hint("opt in to the region in the AWS console, or choose another with --region"),
        Meaning::AccountBlocked => {
            Failure::new(format!("the account cannot use EC2 in {} yet{said}", at.scope.region))
                .hint("contact AWS Support about the account's status")
        }
        Meaning::RequestRejected => Failure::new(format!("AWS rejected the {op} request ({code}){said}"))
            .hint("if the target you gave is valid, this is a bug in eic-connect: please report it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(op: &'static str, scope: &'a Scope) -> Attempt<'a> {
        Attempt {
            op,
            scope,
            instance_id: Some("i-0123456789abcdef0"),
            os_user: Some("ec2-user"),
        }
    }

    /// Every known code gets a message of its own and hints saying what to
    /// do next, whichever operation met it.
    #[test]
    fn every_known_code_has_a_specific_message_and_hint() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: Some("dev".into()),
        };
        let ops = [
            "SendSSHPublicKey",
            "SendSerialConsoleSSHPublicKey",
            "DescribeInstances",
            "StartInstances",
            "StartSession",
            "DescribeInstanceInformation",
            "LookupEvents",
            "CreateInstanceConnectEndpoint",
            "DeleteInstanceConnectEndpoint",
            "DescribeInstanceConnectEndpoints",
            "GetCallerIdentity",
            "GetRole",
            "SimulatePrincipalPolicy",
            "AuthorizeSecurityGroupIngress",
            "ModifyInstanceMetadataOptions",
        ];
        let fallback = explain("SomethingNew", "", &at("DescribeInstances", &scope));
        assert!(
            fallback
                .message
                .contains("failed with AWS error SomethingNew")
        );
        for (n, (code, _)) in KNOWN_CODES.iter().enumerate() {
            assert!(
                !KNOWN_CODES[..n].iter().any(|(c, _)| c == code),
                "{code} is listed twice"
            );
            assert_eq!(meaning_of(code), Some(KNOWN_CODES[n].1));
            for op in ops {
                let f = explain(code, "detail from AWS", &at(op, &scope));
                let all = format!("{}\n{}", f.message, f.hints.join("\n"));
                assert!(!f.message.trim().is_empty(), "{code} ({op}): no message");
                assert!(
                    !f.message.contains("failed with AWS error"),
                    "{code} ({op}) fell through: {all}"
                );
                // ("Unknown" is what from_sdk passes when AWS gave no code.)
                assert!(
                    !all.replace(code, "CODE").contains("Unknown"),
                    "{code} ({op}): {all}"
                );
                assert!(!f.hints.is_empty(), "{code} ({op}) has no hint");
                assert!(
                    f.hints
                        .iter()
                        .all(|h| !h.trim().is_empty() && !h.contains("in the AWS documentation")),
                    "{code} ({op}): {all}"
                );
            }
        }
    }

    /// A refused push names the ARN in the region's partition and the
    /// `eic-connect policy` command that prints a policy allowing it.
    #[test]
    fn a_refused_push_says_which_policy_allows_it() {
        let scope = Scope {
            region: "cn-north-1".into(),
            profile: None,
        };
        let f = explain("AuthException", "", &at("SendSSHPublicKey", &scope));
        let hints = f.hints.join("\n");
        assert!(
            hints.contains("on arn:aws-cn:ec2:cn-north-1:<account>:instance/i-0123456789abcdef0"),
            "{hints}"
        );
        assert!(
            hints.contains("eic-connect policy i-0123456789abcdef0 --os-user ec2-user"),
            "{hints}"
        );
        let f = explain(
            "AuthException",
            "",
            &at("SendSerialConsoleSSHPublicKey", &scope),
        );
        let hints = f.hints.join("\n");
        assert!(
            hints.contains("eic-connect policy i-0123456789abcdef0 --serial"),
            "{hints}"
        );
    }

    /// Codes that mean the same are explained alike; codes that do not,
    /// differently.
    #[test]
    fn session_manager_errors_name_session_manager() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: None,
        };
        let mut at = at("StartSession", &scope);
        at.instance_id = Some("i-0123456789abcdef0");
        let f = explain(
            "TargetNotConnected",
            "i-0123456789abcdef0 is not connected.",
            &at,
        );
        assert!(
            f.message.contains("its SSM agent is not connected"),
            "{}",
            f.message
        );
        assert!(
            f.hints
                .iter()
                .any(|h| h.contains("AmazonSSMManagedInstanceCore"))
        );
        let f = explain("AccessDeniedException", "", &at);
        assert!(
            f.hints.iter().any(|h| h.contains("ssm:StartSession")),
            "{:?}",
            f.hints
        );
        let f = explain("ThrottlingException", "", &at);
        assert!(!f.message.contains("key pushes"), "{}", f.message);
        let f = explain("InternalServerError", "", &at);
        assert!(
            f.message
                .starts_with("Session Manager had an internal error"),
            "{}",
            f.message
        );
    }

    #[test]
    fn the_table_decides_the_explanation() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: None,
        };
        let shown = |code: &str| {
            let f = explain(code, "detail", &at("SendSSHPublicKey", &scope));
            (f.message.replace(code, "CODE"), f.hints, f.exit)
        };
        for (a, meaning_a) in KNOWN_CODES {
            for (b, meaning_b) in KNOWN_CODES {
                if meaning_a == meaning_b {
                    assert_eq!(shown(a), shown(b), "{a} and {b}");
                } else {
                    assert_ne!(shown(a).0, shown(b).0, "{a} and {b}");
                }
            }
        }
    }

    #[test]
    fn auth_exception_names_the_action_and_user() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: None,
        };
        let f = explain(
            "AuthException",
            "Not authorized",
            &at("SendSSHPublicKey", &scope),
        );
        assert!(f.message.contains("i-0123456789abcdef0") && f.message.contains("ec2-user"));
        let hints = f.hints.join("\n");
        assert!(hints.contains("ec2-instance-connect:SendSSHPublicKey"));
        assert!(hints.contains("ec2:osuser"));
        assert!(hints.contains("arn:aws:ec2:eu-west-1:"));
    }

    #[test]
    fn not_found_names_region_and_profile() {
        let scope = Scope {
            region: "eu-west-1".into(),
            profile: Some("dev".into()),
        };
        let f = explain(
            "InvalidInstanceID.NotFound",
            "",
            &at("DescribeInstances", &scope),
        );
        assert!(
            f.message.contains("region eu-west-1, profile dev"),
            "{}",
            f.message
        );
    }

    #[test]
    fn unknown_codes_and_hostile_messages_are_shown_safely() {
        let scope = Scope {
            region: "us-east-1".into(),
            profile: None,
        };
        let f = explain(
            "Weird\x1b[2J",
            "evil\x1b]0;x\x07",
            &at("DescribeInstances", &scope),
        );
        assert!(
            !f.message.contains('\x1b') && !f.message.contains('\x07'),
            "{}",
            f.message
        );
        assert!(f.message.contains("Weird\\u{1b}[2J"));
    }

    #[test]
    fn answers_that_are_not_the_apis_are_described_not_shown() {
        assert_eq!(describe_body(b""), "an empty body");
        assert_eq!(describe_body(b"  \r\n"), "an empty body");
        assert_eq!(
            describe_body(b"<!DOCTYPE html><html><head><title>502 Bad\n  Gateway</title>"),
            "an HTML page titled \"502 Bad Gateway\""
        );
        assert_eq!(
            describe_body(b"<HTML><BODY>down</BODY></HTML>"),
            "an HTML page"
        );
        assert_eq!(
            describe_body(b"<html><title>\x1b[2Jx</title>"),
            "an HTML page titled \"\\u{1b}[2Jx\""
        );
        assert_eq!(
            describe_body(b"upstream connect error\nmore"),
            "\"upstream connect error\""
        );
        let long = "x".repeat(200);
        assert_eq!(
            describe_body(long.as_bytes()),
            format!("\"{}…\"", "x".repeat(80))
        );
    }
}
