//! An independent AWS Signature Version 4 verifier (header-based auth only).
//!
//! Written from the published algorithm, deliberately *not* using `aws-sigv4`,
//! so that a bug shared by the SDK's signer and a checker built on it cannot
//! hide. It rebuilds the canonical request from what was actually received on
//! the wire, derives the signing key from the bed's secret and compares.
//!
//! `sign_headers` is the same algorithm run the other way; it exists so tests
//! can hand-build requests (e.g. signed with a wrong secret).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A request as received: raw path and query exactly as on the request line.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Raw (still percent-encoded) path, e.g. `/`.
    pub path: &'a str,
    /// Raw query string without the leading `?` (may be empty).
    pub query: &'a str,
    /// All headers in received order; names in any case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What the verifier expects of a request.
pub struct Expected<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// If `Some`, `X-Amz-Security-Token` must be present, equal and signed;
    /// if `None`, a request carrying a token is rejected.
    pub session_token: Option<&'a str>,
    /// The verifier's idea of "now" (real time for the bed; fixed for vectors).
    pub now: SystemTime,
    /// Allowed distance between `X-Amz-Date` and `now`.
    pub max_skew: Duration,
}

/// Why a request failed verification. The variant decides which error code
/// the stand-in answers with; the string is a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header at all.
    Missing(String),
    /// Header present but not parseable as SigV4.
    Malformed(String),
    /// Access key id (or session token) not the bed's.
    UnknownKey(String),
    /// `X-Amz-Date` too far from now.
    Expired(String),
    /// Scope, signed headers or the signature itself do not match.
    Mismatch(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing(s) => write!(f, "missing authentication: {s}"),
            AuthError::Malformed(s) => write!(f, "malformed authorization: {s}"),
            AuthError::UnknownKey(s) => write!(f, "unknown credentials: {s}"),
            AuthError::Expired(s) => write!(f, "request time out of range: {s}"),
            AuthError::Mismatch(s) => write!(f, "signature mismatch: {s}"),
        }
    }
}

/// The parsed `Authorization` header.
#[derive(Debug)]
pub struct AuthHeader {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<AuthHeader, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| AuthError::Malformed(format!("algorithm is not {ALGORITHM}: {value:?}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| AuthError::Malformed(format!("component without '=': {part:?}")))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(AuthError::Malformed(format!("unknown component {k:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| AuthError::Malformed("no Credential".into()))?;
    let signed = signed.ok_or_else(|| AuthError::Malformed("no SignedHeaders".into()))?;
    let signature = signature.ok_or_else(|| AuthError::Malformed("no Signature".into()))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(AuthError::Malformed(format!(
            "bad credential scope {credential:?}"
        )));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(AuthError::Malformed(format!(
            "SignedHeaders not lowercase: {signed:?}"
        )));
    }
    let mut sorted = signed_headers.clone();
    sorted.sort();
    if sorted != signed_headers {
        return Err(AuthError::Malformed(format!(
            "SignedHeaders not sorted: {signed:?}"
        )));
    }
    Ok(AuthHeader {
        access_key_id: scope[0].to_owned(),
        date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// Verify a received request. `Ok(())` means the signature is good and every
/// policy check (key id, region, service, host signed, date, token) passed.
pub fn verify(req: &SignedRequest<'_>, exp: &Expected<'_>) -> Result<(), AuthError> {
    let auth_values = header_values(req.headers, "authorization");
    let auth_value = match auth_values.as_slice() {
        [] => return Err(AuthError::Missing("no Authorization header".into())),
        [one] => *one,
        _ => return Err(AuthError::Malformed("several Authorization headers".into())),
    };
    let auth = parse_authorization(auth_value)?;

    if auth.access_key_id != exp.access_key_id {
        return Err(AuthError::UnknownKey(format!(
            "access key id {:?} is not the bed's {:?}",
            auth.access_key_id, exp.access_key_id
        )));
    }
    if auth.region != exp.region {
        return Err(AuthError::Mismatch(format!(
            "credential scope region {:?}, expected {:?}",
            auth.region, exp.region
        )));
    }
    if auth.service != exp.service {
        return Err(AuthError::Mismatch(format!(
            "credential scope service {:?}, expected {:?}",
            auth.service, exp.service
        )));
    }
    let signed = |name: &str| auth.signed_headers.iter().any(|h| h == name);
    if !signed("host") {
        return Err(AuthError::Mismatch("the host header is not signed".into()));
    }

    // Date: X-Amz-Date must be present, signed, agree with the scope and be recent.
    let amz_date = single_header(req.headers, "x-amz-date")
        .ok_or_else(|| AuthError::Missing("no X-Amz-Date header".into()))?;
    if !signed("x-amz-date") {
        return Err(AuthError::Mismatch("X-Amz-Date is not signed".into()));
    }
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| AuthError::Malformed(format!("bad X-Amz-Date {amz_date:?}")))?;
    if !amz_date.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(AuthError::Mismatch(format!(
            "credential scope date {:?} does not match X-Amz-Date {amz_date:?}",
            auth.date
        )));
    }
    let skew = match exp.now.duration_since(when) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > exp.max_skew {
        return Err(AuthError::Expired(format!(
            "X-Amz-Date {amz_date} is {}s away from now (limit {}s)",
            skew.as_secs(),
            exp.max_skew.as_secs()
        )));
    }

    // Session token.
    let token = single_header(req.headers, "x-amz-security-token");
    match (exp.session_token, token) {
        (Some(want), Some(got)) => {
            if got != want {
                return Err(AuthError::UnknownKey(
                    "X-Amz-Security-Token is not the bed's".into(),
                ));
            }
            if !signed("x-amz-security-token") {
                return Err(AuthError::Mismatch(
                    "X-Amz-Security-Token is not signed".into(),
                ));
            }
        }
        (Some(_), None) => {
            return Err(AuthError::UnknownKey("X-Amz-Security-Token missing".into()));
        }
        (None, Some(_)) => {
            return Err(AuthError::UnknownKey(
                "X-Amz-Security-Token sent but the bed has no session token".into(),
            ));
        }
        (None, None) => {}
    }

    // Payload hash: always the hash of the bytes received; a declared
    // x-amz-content-sha256 must agree with it.
    let body_hash = hex::encode(Sha256::digest(req.body));
    if let Some(declared) = single_header(req.headers, "x-amz-content-sha256")
        && declared != body_hash
    {
        return Err(AuthError::Mismatch(format!(
            "x-amz-content-sha256 {declared} does not match the body's {body_hash}"
        )));
    }

    let names: Vec<&str> = auth.signed_headers.iter().map(String::as_str).collect();
    let creq = canonical_request(req, &names, &body_hash)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(
        exp.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
    );
    let want = hex::encode(hmac_sha256(&key, sts.as_bytes()));
    if !constant_time_eq(want.as_bytes(), auth.signature.as_bytes()) {
        return Err(AuthError::Mismatch(format!(
            "signature {} != expected {want}; canonical request was:\n{creq}\nstring to sign:\n{sts}",
            auth.signature
        )));
    }
    Ok(())
}

/// Compute the `Authorization` header value for `req` (whose headers must
/// already contain `host` and `x-amz-date`, and the token if any).
/// `signed_headers` must be lowercase; they are sorted here.
pub fn sign_headers(
    req: &SignedRequest<'_>,
    signed_headers: &[&str],
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    service: &str,
) -> String {
    let mut names: Vec<&str> = signed_headers.to_vec();
    names.sort_unstable();
    names.dedup();
    let amz_date = single_header(req.headers, "x-amz-date")
        .expect("sign_headers: request needs an x-amz-date header");
    let date = &amz_date[..8];
    let body_hash = hex::encode(Sha256::digest(req.body));
    let creq = canonical_request(req, &names, &body_hash)
        .expect("sign_headers: signed header missing from request");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(secret_access_key, date, region, service);
    let sig = hex::encode(hmac_sha256(&key, sts.as_bytes()));
    format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={sig}",
        names.join(";")
    )
}

/// The SigV4 canonical request.
pub fn canonical_request(
    req: &SignedRequest<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<String, AuthError> {
    let mut out = String::new();
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        let values = header_values(req.headers, name);
        if values.is_empty() {
            return Err(AuthError::Mismatch(format!(
                "signed header {name:?} is not in the request"
            )));
        }
        let joined: Vec<String> = values.iter().map(|v| collapse_spaces(v.trim())).collect();
        let _ = writeln!(out, "{name}:{}", joined.join(","));
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Canonical URI for every service but S3: remove dot segments and empty
/// segments, then URI-encode each segment once more (the wire form is
/// already encoded once, hence "double encoding").
fn canonical_uri(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let trailing = path.len() > 1 && path.ends_with('/') && !segs.is_empty();
    let mut out = String::from("/");
    out.push_str(
        &segs
            .iter()
            .map(|s| uri_encode(s.as_bytes()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if trailing {
        out.push('/');
    }
    out
}

/// Canonical query: decode every name and value, re-encode strictly, sort.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding with only `A-Za-z0-9-_.~` left as is, upper-case hex.
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_space = false;
    for c in s.chars() {
        if c == ' ' {
            if !prev_space {
                out.push(' ');
            }
            prev_space = true;
        } else {
            out.push(c);
            prev_space = false;
        }
    }
    out
}

fn header_values<'h>(headers: &'h [(String, String)], lower_name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(lower_name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn single_header<'h>(headers: &'h [(String, String)], lower_name: &str) -> Option<&'h str> {
    header_values(headers, lower_name).first().copied()
}

/// Parse `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs =
        super::timefmt::days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Format a time as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = super::timefmt::civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// The SHA-256 of the empty string: the payload hash of a presigned GET.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Verify a request authenticated by query parameters (a presigned URL):
/// `X-Amz-Algorithm`, `-Credential`, `-Date`, `-Expires` (at most
/// `max_expires` seconds, and not yet past), `-SignedHeaders` (with `host`),
/// the session token if the bed has one (in the query, so signed), and
/// `X-Amz-Signature` over the canonical request of everything else, whose
/// payload hash is the SHA-256 of the empty string (never
/// `UNSIGNED-PAYLOAD`). `exp.max_skew` bounds how far in the future
/// `X-Amz-Date` may be.
pub fn verify_presigned(
    req: &SignedRequest<'_>,
    exp: &Expected<'_>,
    max_expires: u64,
) -> Result<(), AuthError> {
    let pairs: Vec<(String, String, &str)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v)).into_owned(),
                p,
            )
        })
        .collect();
    let get = |name: &str| -> Result<&str, AuthError> {
        let mut found = pairs.iter().filter(|(k, _, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v, _)), None) => Ok(v.as_str()),
            (None, _) => Err(AuthError::Missing(format!("no {name} query parameter"))),
            (Some(_), Some(_)) => Err(AuthError::Malformed(format!("{name} given twice"))),
        }
    };
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(AuthError::Malformed(format!(
            "X-Amz-Algorithm is {algorithm:?}, not {ALGORITHM}"
        )));
    }
    let credential = get("X-Amz-Credential")?;
    let amz_date = get("X-Amz-Date")?;
    let expires = get("X-Amz-Expires")?;
    let signed = get("X-Amz-SignedHeaders")?;
    let signature = get("X-Amz-Signature")?;

    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(AuthError::Malformed(format!(
            "bad credential scope {credential:?}"
        )));
    }
    if scope[0] != exp.access_key_id {
        return Err(AuthError::UnknownKey(format!(
            "access key id {:?} is not the bed's {:?}",
            scope[0], exp.access_key_id
        )));
    }
    if scope[2] != exp.region {
        return Err(AuthError::Mismatch(format!(
            "credential scope region {:?}, expected {:?}",
            scope[2], exp.region
        )));
    }
    if scope[3] != exp.service {
        return Err(AuthError::Mismatch(format!(
            "credential scope service {:?}, expected {:?}",
            scope[3], exp.service
        )));
    }
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| AuthError::Malformed(format!("bad X-Amz-Date {amz_date:?}")))?;
    if !amz_date.starts_with(scope[1]) || scope[1].len() != 8 {
        return Err(AuthError::Mismatch(format!(
            "credential scope date {:?} does not match X-Amz-Date {amz_date:?}",
            scope[1]
        )));
    }
    let expires: u64 = expires
        .parse()
        .map_err(|_| AuthError::Malformed(format!("X-Amz-Expires {expires:?} is not a number")))?;
    if expires == 0 || expires > max_expires {
        return Err(AuthError::Malformed(format!(
            "X-Amz-Expires {expires} is outside 1..={max_expires}"
        )));
    }
    if let Ok(ahead) = when.duration_since(exp.now)
        && ahead > exp.max_skew
    {
        return Err(AuthError::Expired(format!(
            "X-Amz-Date {amz_date} is {}s in the future",
            ahead.as_secs()
        )));
    }
    if exp.now > when + Duration::from_secs(expires) {
        return Err(AuthError::Expired(format!(
            "the URL signed at {amz_date} expired after {expires}s"
        )));
    }

    let signed_headers: Vec<&str> = signed.split(';').collect();
    let mut sorted = signed_headers.clone();
    sorted.sort_unstable();
    if sorted != signed_headers
        || signed_headers
            .iter()
            .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(AuthError::Malformed(format!(
            "X-Amz-SignedHeaders not lowercase and sorted: {signed:?}"
        )));
    }
    if !signed_headers.contains(&"host") {
        return Err(AuthError::Mismatch("the host header is not signed".into()));
    }

    let token = pairs
        .iter()
        .find(|(k, _, _)| k == "X-Amz-Security-Token")
        .map(|(_, v, _)| v.as_str());
    match (exp.session_token, token) {
        (Some(want), Some(got)) if got != want => {
            return Err(AuthError::UnknownKey(
                "X-Amz-Security-Token is not the bed's".into(),
            ));
        }
        (Some(_), None) => {
            return Err(AuthError::UnknownKey("X-Amz-Security-Token missing".into()));
        }
        (None, Some(_)) => {
            return Err(AuthError::UnknownKey(
                "X-Amz-Security-Token sent but the bed has no session token".into(),
            ));
        }
        _ => {}
    }

    // Everything but the signature is part of the canonical query.
    let unsigned_query: Vec<&str> = pairs
        .iter()
        .filter(|(k, _, _)| k != "X-Amz-Signature")
        .map(|(_, _, raw)| *raw)
        .collect();
    let unsigned_query = unsigned_query.join("&");
    let unsigned = SignedRequest {
        method: req.method,
        path: req.path,
        query: &unsigned_query,
        headers: req.headers,
        body: &[],
    };
    let creq = canonical_request(&unsigned, &signed_headers, EMPTY_SHA256)?;
    let scope_str = format!("{}/{}/{}/aws4_request", scope[1], scope[2], scope[3]);
    let sts = string_to_sign(amz_date, &scope_str, &creq);
    let key = signing_key(exp.secret_access_key, scope[1], scope[2], scope[3]);
    let want = hex::encode(hmac_sha256(&key, sts.as_bytes()));
    if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
        return Err(AuthError::Mismatch(format!(
            "signature {signature} != expected {want}; canonical request was:\n{creq}\nstring to sign:\n{sts}"
        )));
    }
    Ok(())
}
