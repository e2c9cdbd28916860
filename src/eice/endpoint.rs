//! EC2 Instance Connect Endpoints (protocols.md §3): finding the endpoint
//! that serves an instance, and presigning the URL of a tunnel through it.
//!
//! The tunnel itself has no SDK operation: it is a WebSocket whose URL
//! carries a SigV4 query signature (see `super::relay` for the connection).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ec2::types::{Ec2InstanceConnectEndpoint, Filter};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::aws::Clients;
use crate::aws::ec2::InstanceInfo;
use crate::aws::errors::{Attempt, from_sdk};
use crate::error::{Failure, fail};
use crate::sanitize::terminal_safe;

/// Endpoint states in which tunnels can be opened.
pub const USABLE_STATES: [&str; 4] = [
    "create-complete",
    "update-in-progress",
    "update-failed",
    "update-complete",
];

/// The SigV4 signing name of the tunnel (and of EC2 Instance Connect).
pub const SIGNING_NAME: &str = "ec2-instance-connect";

/// How long a presigned tunnel URL is valid (the service's maximum).
pub const URL_LIFETIME: Duration = Duration::from_secs(60);

/// The only ports an endpoint opens tunnels to.
pub const ALLOWED_PORTS: [u16; 2] = [22, 3389];

/// What eic-connect needs to know about an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub state: String,
    pub dns_name: Option<String>,
    pub fips_dns_name: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    /// `ipv4` (also when not given), `ipv6` or `dualstack`: which of an
    /// instance's addresses the endpoint reaches.
    pub ip_address_type: Option<String>,
}

impl Endpoint {
    /// Whether tunnels can go to an instance's private IPv4.
    pub fn reaches_ipv4(&self) -> bool {
        self.ip_address_type.as_deref() != Some("ipv6")
    }

    /// Whether tunnels can go to an instance's IPv6 address.
    pub fn reaches_ipv6(&self) -> bool {
        matches!(self.ip_address_type.as_deref(), Some("ipv6" | "dualstack"))
    }

    fn from_sdk(e: &Ec2InstanceConnectEndpoint) -> Option<Endpoint> {
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        Some(Endpoint {
            id: non_empty(e.instance_connect_endpoint_id())?,
            state: e.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            dns_name: non_empty(e.dns_name()),
            fips_dns_name: non_empty(e.fips_dns_name()),
            vpc_id: non_empty(e.vpc_id()),
            subnet_id: non_empty(e.subnet_id()),
            ip_address_type: e.ip_address_type().map(|t| t.as_str().to_owned()),
        })
    }

    /// The host to open tunnels on: `DnsName`, or `FipsDnsName` in FIPS mode.
    pub fn host(&self, fips: bool) -> anyhow::Result<String> {
        let (name, which) = if fips {
            (self.fips_dns_name.as_deref(), "FIPS DNS name")
        } else {
            (self.dns_name.as_deref(), "DNS name")
        };
        match name {
            Some(host) if is_dns_name(host) => Ok(host.to_owned()),
            Some(host) => fail(Failure::new(format!(
                "EC2 Instance Connect Endpoint {} reported an unusable {which} {:?}",
                self.id,
                terminal_safe(host)
            ))),
            None => {
                let mut failure = Failure::new(format!(
                    "EC2 Instance Connect Endpoint {} has no {which}",
                    self.id
                ));
                if fips {
                    failure = failure.hint(
                        "FIPS endpoints were requested (AWS_USE_FIPS_ENDPOINT or use_fips_endpoint); unset it to use the standard endpoint",
                    );
                }
                fail(failure)
            }
        }
    }
}

/// Whether `s` can be used as a host name (and so safely in a URL, a TLS
/// server name and a command line).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `s` has the shape of an endpoint id (`eice-` and hex digits).
pub fn is_endpoint_id(s: &str) -> bool {
    s.strip_prefix("eice-").is_some_and(|hex| {
        (8..=32).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks a `--eice-id` before any call is made.
pub fn validate_endpoint_id(id: &str) -> Result<(), Failure> {
    if is_endpoint_id(id) {
        Ok(())
    } else {
        Err(
            Failure::usage(format!("{:?} is not a valid EC2 Instance Connect Endpoint id", terminal_safe(id)))
                .hint("endpoint ids look like eice-0123456789abcdef0; list them with: aws ec2 describe-instance-connect-endpoints"),
        )
    }
}

/// Picks the endpoint for an instance: the one in its subnet, else the first.
pub fn choose(endpoints: Vec<Endpoint>, subnet_id: Option<&str>) -> Option<Endpoint> {
    let same_subnet = endpoints
        .iter()
        .position(|e| subnet_id.is_some() && e.subnet_id.as_deref() == subnet_id);
    let mut endpoints = endpoints;
    match same_subnet {
        Some(i) => Some(endpoints.swap_remove(i)),
        None => endpoints.into_iter().next(),
    }
}

/// The DescribeInstanceConnectEndpoints filters for an instance (for
/// display too): usable states, and the VPC unless an id was given.
pub fn filters(eice_id: Option<&str>, vpc_id: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut filters = vec![(
        "state".to_owned(),
        USABLE_STATES.iter().map(|s| (*s).to_owned()).collect(),
    )];
    if eice_id.is_none()
        && let Some(vpc) = vpc_id
    {
        filters.push(("vpc-id".to_owned(), vec![vpc.to_owned()]));
    }
    filters
}

/// Finds the endpoint that serves `instance`: the one named by `eice_id`,
/// else one in the instance's VPC. `Ok(None)`: the VPC has no usable one.
pub async fn find(
    clients: &Clients,
    eice_id: Option<&str>,
    instance: &InstanceInfo,
) -> anyhow::Result<Option<Endpoint>> {
    if let Some(id) = eice_id {
        validate_endpoint_id(id)?;
    }
    let Some(vpc_id) = instance.vpc_id.as_deref() else {
        return fail(
            Failure::new(format!(
                "instance {} is not in a VPC, so no EC2 Instance Connect Endpoint can reach it",
                instance.id
            ))
            .hint("connect directly with --connect direct"),
        );
    };
    let at = Attempt {
        op: "DescribeInstanceConnectEndpoints",
        scope: &clients.scope,
        instance_id: Some(&instance.id),
        os_user: None,
    };
    let mut request = clients.ec2.describe_instance_connect_endpoints();
    if let Some(id) = eice_id {
        request = request.instance_connect_endpoint_ids(id);
    }
    for (name, values) in filters(eice_id, Some(vpc_id)) {
        request = request.filters(
            Filter::builder()
                .name(name)
                .set_values(Some(values))
                .build(),
        );
    }
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| from_sdk(err, &at))?;
        found.extend(
            page.instance_connect_endpoints()
                .iter()
                .filter_map(Endpoint::from_sdk),
        );
    }
    tracing::debug!(
        count = found.len(),
        vpc = vpc_id,
        "found EC2 Instance Connect Endpoints"
    );
    if let Some(id) = eice_id {
        let Some(endpoint) = found.into_iter().find(|e| e.id == id) else {
            return fail(
                Failure::new(format!(
                    "EC2 Instance Connect Endpoint {id} is not available ({})",
                    clients.scope.describe()
                ))
                .hint("it may still be being created, or be failed or deleted; check it with: aws ec2 describe-instance-connect-endpoints --instance-connect-endpoint-ids ".to_owned() + id),
            );
        };
        if let Some(other) = endpoint.vpc_id.as_deref()
            && other != vpc_id
        {
            return fail(
                Failure::new(format!(
                    "EC2 Instance Connect Endpoint {id} is in {}, but instance {} is in {vpc_id}",
                    terminal_safe(other),
                    instance.id
                ))
                .hint("an endpoint only reaches instances in its own VPC: choose another with --eice-id, or leave it out to use the one in the instance's VPC"),
            );
        }
        return Ok(Some(endpoint));
    }
    Ok(choose(found, instance.subnet_id.as_deref()))
}

/// The failure for "no endpoint serves this instance".
pub fn no_endpoint(instance: &InstanceInfo, scope: &crate::aws::Scope) -> Failure {
    let vpc = instance.vpc_id.as_deref().unwrap_or("its VPC");
    let subnet = instance.subnet_id.as_deref().unwrap_or("SUBNET_ID");
    Failure::new(format!(
        "no EC2 Instance Connect Endpoint in {vpc} can reach instance {} ({})",
        instance.id,
        scope.describe()
    ))
    .hint(format!(
        "create one (it takes a few minutes): aws ec2 create-instance-connect-endpoint --subnet-id {subnet}"
    ))
    .hint("or connect directly to an address you can reach: --connect direct (with --private from inside the VPC or over a VPN)")
}

/// Whether FIPS endpoints are requested (`AWS_USE_FIPS_ENDPOINT`, or
/// `use_fips_endpoint` in the profile).
pub fn use_fips(config: &SdkConfig) -> bool {
    config.use_fips().unwrap_or(false)
}

/// Where one tunnel goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTarget {
    pub endpoint_id: String,
    /// The endpoint's DNS name (TLS server name, Host header, signed host).
    pub host: String,
    pub remote_port: u16,
    pub private_ip: IpAddr,
    pub max_duration: Option<u32>,
}

/// The AWS credentials to sign with, from the SDK's provider chain.
pub async fn credentials(
    config: &SdkConfig,
    scope: &crate::aws::Scope,
) -> anyhow::Result<Credentials> {
    let Some(provider) = config.credentials_provider() else {
        return fail(no_credentials(
            scope,
            "no credentials provider is configured",
        ));
    };
    provider.provide_credentials().await.map_err(|err| {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        anyhow::Error::new(no_credentials(scope, &terminal_safe(&text)))
    })
}

fn no_credentials(scope: &crate::aws::Scope, cause: &str) -> Failure {
    Failure::new(format!("no usable AWS credentials ({}): {cause}", scope.describe()))
        .hint("configure credentials: `aws configure`, `aws sso login --profile NAME`, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        .hint("choose a profile with --profile NAME or AWS_PROFILE")
}

/// The presigned `wss://` URL that opens one tunnel, valid for 60 s from
/// `now`. Parameters in the documented order, then the auth parameters
/// (`X-Amz-Signature` last). The canonical request's payload hash is the
/// SHA-256 of the empty string, not `UNSIGNED-PAYLOAD`.
pub fn presign(
    target: &TunnelTarget,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> anyhow::Result<String> {
    let mut query = format!(
        "instanceConnectEndpointId={}&remotePort={}&privateIpAddress={}",
        uri_encode(&target.endpoint_id),
        target.remote_port,
        uri_encode(&target.private_ip.to_string())
    );
    if let Some(seconds) = target.max_duration {
        let _ = write!(query, "&maxTunnelDuration={seconds}");
    }
    let host = target.host.as_str();
    let signable = SignableRequest::new(
        "GET",
        format!("https://{host}/openTunnel?{query}"),
        [("host", host)].into_iter(),
        SignableBody::Bytes(&[]),
    )?;
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(URL_LIFETIME);
    let identity = Identity::from(credentials.clone());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()?
        .into();
    let (instructions, signature) = sign(signable, &params)?.into_parts();
    for (name, value) in instructions.params() {
        if *name != "X-Amz-Signature" {
            let _ = write!(query, "&{name}={}", uri_encode(value));
        }
    }
    let _ = write!(query, "&X-Amz-Signature={signature}");
    Ok(format!("wss://{host}/openTunnel?{query}"))
}

/// What SigV4 percent-encodes in a query value: every byte but the
/// unreserved characters of RFC 3986 (`A-Za-z0-9-._~`). Non-ASCII bytes are
/// always encoded, and the hex digits are upper case, as SigV4 requires.
const SIGV4_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// SigV4's URI encoding of a query value: only `A-Za-z0-9-._~` stay as
/// they are.
pub fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, SIGV4_ENCODED).to_string()
}

/// A URL for logs: everything but the signature and the session token.
pub fn redact_url(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let kept: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "X-Amz-Signature" || k == "X-Amz-Security-Token" => {
                format!("{k}=(redacted)")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn vector_target() -> TunnelTarget {
        TunnelTarget {
            endpoint_id: "eice-123".into(),
            host: "eice-123.ec2-instance-connect-endpoint.us-west-2.amazonaws.com".into(),
            remote_port: 22,
            private_ip: "10.0.0.0".parse().unwrap(),
            max_duration: Some(1),
        }
    }

    /// 2020-01-01T01:01:01Z
    fn vector_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_577_840_461)
    }

    /// protocols.md §3: the published test vector, reproduced exactly.
    #[test]
    fn presign_reproduces_the_published_vector() {
        let creds = Credentials::new("access_key", "secret_key", None, None, "test");
        let url = presign(&vector_target(), "us-west-2", &creds, vector_time()).unwrap();
        assert_eq!(
            url,
            "wss://eice-123.ec2-instance-connect-endpoint.us-west-2.amazonaws.com/openTunnel?\
             instanceConnectEndpointId=eice-123&remotePort=22&privateIpAddress=10.0.0.0&maxTunnelDuration=1\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=access_key%2F20200101%2Fus-west-2%2Fec2-instance-connect%2Faws4_request\
             &X-Amz-Date=20200101T010101Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=3a56740422a5b9aebd22d860b7a30c729e459a6f71a83bc0de3a2b44b7353f28"
        );
    }

    #[test]
    fn presign_signs_the_session_token_and_encodes_ipv6() {
        let creds = Credentials::new(
            "access_key",
            "secret_key",
            Some("tok/en+=".into()),
            None,
            "test",
        );
        let mut target = vector_target();
        target.private_ip = "fd00::5".parse().unwrap();
        target.max_duration = None;
        let url = presign(&target, "us-west-2", &creds, vector_time()).unwrap();
        assert!(
            url.contains("&privateIpAddress=fd00%3A%3A5&X-Amz-Algorithm="),
            "{url}"
        );
        assert!(!url.contains("maxTunnelDuration"), "{url}");
        let token = url.find("&X-Amz-Security-Token=tok%2Fen%2B%3D&").unwrap();
        let signature = url.find("&X-Amz-Signature=").unwrap();
        assert!(token < signature, "the signature comes last: {url}");
        // The token is part of what is signed: another token, another signature.
        let other = Credentials::new("access_key", "secret_key", Some("other".into()), None, "t");
        let url2 = presign(&target, "us-west-2", &other, vector_time()).unwrap();
        assert_ne!(
            &url[signature..],
            &url2[url2.find("&X-Amz-Signature=").unwrap()..]
        );
        assert!(redact_url(&url).contains("X-Amz-Signature=(redacted)"));
        assert!(!redact_url(&url).contains("tok%2F"));
    }

    #[test]
    fn uri_encoding_keeps_exactly_the_unreserved_characters() {
        for b in 0..=u8::MAX {
            let encoded = percent_encoding::percent_encode(&[b], SIGV4_ENCODED).to_string();
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                assert_eq!(encoded, char::from(b).to_string(), "byte {b:#04x}");
            } else {
                assert_eq!(encoded, format!("%{b:02X}"), "byte {b:#04x}");
            }
        }
        assert_eq!(uri_encode(""), "");
        assert_eq!(
            uri_encode("AZaz09-._~ /+=:%é"),
            "AZaz09-._~%20%2F%2B%3D%3A%25%C3%A9"
        );
        assert_eq!(
            uri_encode("access_key/20200101/us-west-2/ec2-instance-connect/aws4_request"),
            "access_key%2F20200101%2Fus-west-2%2Fec2-instance-connect%2Faws4_request"
        );
    }

    fn ep(id: &str, subnet: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            state: "create-complete".into(),
            dns_name: Some(format!(
                "{id}.ec2-instance-connect-endpoint.us-east-1.amazonaws.com"
            )),
            subnet_id: Some(subnet.into()),
            vpc_id: Some("vpc-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn prefers_the_endpoint_in_the_instance_subnet() {
        let all = vec![ep("eice-a", "subnet-1"), ep("eice-b", "subnet-2")];
        assert_eq!(choose(all.clone(), Some("subnet-2")).unwrap().id, "eice-b");
        assert_eq!(choose(all.clone(), Some("subnet-9")).unwrap().id, "eice-a");
        assert_eq!(choose(all, None).unwrap().id, "eice-a");
        assert_eq!(choose(Vec::new(), Some("subnet-1")), None);
    }

    #[test]
    fn filters_name_the_vpc_unless_an_id_is_given() {
        let f = filters(None, Some("vpc-1"));
        assert_eq!(f[0].0, "state");
        assert_eq!(f[0].1, USABLE_STATES);
        assert_eq!(f[1], ("vpc-id".to_owned(), vec!["vpc-1".to_owned()]));
        assert_eq!(
            filters(Some("eice-0123456789abcdef0"), Some("vpc-1")).len(),
            1
        );
    }

    #[test]
    fn ids_and_host_names_are_checked() {
        assert!(is_endpoint_id("eice-0123456789abcdef0"));
        assert!(!is_endpoint_id("eice-XYZ"));
        assert!(!is_endpoint_id("i-0123456789abcdef0"));
        assert_eq!(validate_endpoint_id("bogus").unwrap_err().exit, 2);
        assert!(is_dns_name(
            "eice-1.ec2-instance-connect-endpoint.us-east-1.amazonaws.com"
        ));
        for bad in ["", "a..b", "-a.b", "a b", "a/b", "x;rm -rf /", "évil.com"] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
        let mut e = ep("eice-a", "subnet-1");
        assert!(e.host(false).is_ok());
        assert!(e.host(true).is_err(), "no FIPS name");
        e.fips_dns_name = Some("eice-a.fips.example.com".into());
        assert_eq!(e.host(true).unwrap(), "eice-a.fips.example.com");
        e.dns_name = Some("evil\x1b[2J".into());
        let err = e.host(false).unwrap_err().to_string();
        assert!(!err.contains('\x1b'), "{err}");
    }
}
