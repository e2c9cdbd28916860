//! One tunnel through an EC2 Instance Connect Endpoint (protocols.md §3):
//! TCP to the endpoint (directly, through an HTTP CONNECT proxy, or to a
//! test stand-in), TLS, the WebSocket handshake with a presigned URL, then
//! raw bytes in binary frames each way.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use aws_config::SdkConfig;
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use futures_util::{SinkExt, StreamExt};
use ipnet::IpNet;
use percent_encoding::percent_decode_str;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::endpoint::{self as eice, TunnelTarget};
use crate::aws::Scope;
use crate::error::{Failure, fail};
use crate::sanitize::terminal_safe;
use std::process::ExitCode;

/// Largest payload per binary frame the service accepts.
pub const MAX_FRAME: usize = 65_000;

/// Test hook: `https://HOST:PORT` to open the TCP connection to instead of
/// `<endpoint DNS name>:443` (TLS server name, Host header and signature
/// still use the DNS name, as with curl's `--connect-to`).
pub const CONNECT_TO_ENV: &str = "EIC_CONNECT_EICE_ENDPOINT";

/// How long to wait for the endpoint to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The WebSocket over TLS over TCP.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Opens WebSocket connections to endpoints: TLS settings, proxy and the
/// test override, read once from the environment.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    connect_to: Option<String>,
    proxy: Option<Proxy>,
    no_proxy: Option<String>,
    timeout: Duration,
}

impl Connector {
    /// Trusts the system's roots plus the PEM bundle in `AWS_CA_BUNDLE`;
    /// honours `HTTPS_PROXY`/`NO_PROXY` and [`CONNECT_TO_ENV`].
    pub fn from_env(timeout: Duration) -> anyhow::Result<Connector> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let connect_to = match env(CONNECT_TO_ENV) {
            Some(url) => Some(parse_connect_to(&url)?),
            None => None,
        };
        let proxy = match env("HTTPS_PROXY").or_else(|| env("https_proxy")) {
            Some(url) => Some(Proxy::parse(&url)?),
            None => None,
        };
        Ok(Connector {
            tls: TlsConnector::from(Arc::new(tls_config()?)),
            connect_to,
            proxy,
            no_proxy: env("NO_PROXY").or_else(|| env("no_proxy")),
            timeout,
        })
    }

    /// How long opening a connection may take (and silence after it).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// TCP (+ proxy), TLS and the WebSocket handshake for a presigned URL
    /// whose host is `host`, within the timeout.
    pub async fn open(&self, url: &str, host: &str) -> anyhow::Result<Ws> {
        let to = Peer {
            host,
            port: 443,
            what: "the EC2 Instance Connect Endpoint",
            override_ok: true,
        };
        self.open_to(url, &to).await
    }

    /// The same for a `wss://HOST[:PORT]/…` URL that a service handed out
    /// (Session Manager's data channel), naming `what` in messages.
    pub async fn open_url(&self, url: &str, what: &'static str) -> anyhow::Result<Ws> {
        let (host, port) = wss_host_port(url)?;
        let to = Peer {
            host: &host,
            port,
            what,
            override_ok: false,
        };
        self.open_to(url, &to).await
    }

    async fn open_to(&self, url: &str, to: &Peer<'_>) -> anyhow::Result<Ws> {
        match tokio::time::timeout(self.timeout, self.open_inner(url, to)).await {
            Ok(result) => result,
            Err(_) => fail(
                Failure::new(format!(
                    "timed out after {:.0?} opening a tunnel through {} {}",
                    self.timeout, to.what, to.host
                ))
                .hint("check your network connection and proxy settings (HTTPS_PROXY, NO_PROXY)")
                .hint("raise the limit with --api-timeout SECONDS if the network is slow"),
            ),
        }
    }

    async fn open_inner(&self, url: &str, to: &Peer<'_>) -> anyhow::Result<Ws> {
        let host = to.host;
        let tcp = self.tcp(to).await.map_err(|err| {
            anyhow::Error::new(
                Failure::new(format!(
                    "could not reach {} {host}: {}",
                    to.what,
                    terminal_safe(&format!("{err:#}"))
                ))
                .hint("check your network connection and proxy settings (HTTPS_PROXY, NO_PROXY)"),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        // An IP address in the URL is checked against the certificate's IP
        // names; a DNS name against its DNS names.
        let server_name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        let tls = self.tls.connect(server_name, tcp).await.map_err(|err| {
            anyhow::Error::new(
                Failure::new(format!(
                    "TLS with {} {host} failed: {}",
                    to.what,
                    terminal_safe(&err.to_string())
                ))
                .hint("if a proxy or firewall inspects TLS, point AWS_CA_BUNDLE at its CA certificate (PEM)"),
            )
        })?;
        let config = WebSocketConfig::default().max_frame_size(Some(1 << 20));
        handshake(tls, url, host, config).await
    }

    async fn tcp(&self, to: &Peer<'_>) -> anyhow::Result<TcpStream> {
        let (host, port) = (to.host, to.port);
        if to.override_ok
            && let Some(addr) = &self.connect_to
        {
            tracing::debug!(%addr, "connecting to the endpoint override");
            return Ok(TcpStream::connect(addr.as_str()).await?);
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match &self.proxy {
            Some(proxy) if !no_proxy_matches(self.no_proxy.as_deref(), bare, port) => {
                tracing::debug!(proxy = %proxy.addr, "connecting through the HTTPS proxy");
                proxy.connect(host, port).await
            }
            _ => Ok(TcpStream::connect((bare, port)).await?),
        }
    }
}

/// Where a WebSocket goes, and how messages name it.
struct Peer<'a> {
    host: &'a str,
    port: u16,
    what: &'static str,
    /// Whether [`CONNECT_TO_ENV`] applies (endpoint tunnels only).
    override_ok: bool,
}

/// Host (IPv6 in brackets) and port of a `wss://` URL.
fn wss_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let bad = || {
        anyhow::Error::new(Failure::new(format!(
            "the data channel URL {:?} is not a wss:// URL",
            terminal_safe(&redact_query(url))
        )))
    };
    let rest = url.strip_prefix("wss://").ok_or_else(bad)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 443),
    };
    Ok((host.to_owned(), port))
}

/// A URL without its query (where tokens and signatures live), for messages.
pub fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

/// rustls with the aws-lc-rs provider (what the SDK uses), trusting the
/// system's roots and `AWS_CA_BUNDLE` ([`crate::trust`]).
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = crate::trust::root_store()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `https://HOST:PORT` (or `HOST:PORT`) → `HOST:PORT`.
fn parse_connect_to(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return fail(Failure::new(format!(
            "{CONNECT_TO_ENV} must look like https://HOST:PORT, not {:?}",
            terminal_safe(url)
        )));
    }
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !rest.ends_with(']'));
    Ok(if has_port {
        rest.to_owned()
    } else {
        format!("{rest}:443")
    })
}

/// An HTTP proxy reached with `CONNECT` (HTTPS_PROXY).
#[derive(Clone)]
struct Proxy {
    /// `host:port`
    addr: String,
    /// `Basic …` for `Proxy-Authorization`.
    authorization: Option<String>,
}

impl Proxy {
    fn parse(url: &str) -> anyhow::Result<Proxy> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return fail(
                    Failure::new(format!(
                        "HTTPS_PROXY uses scheme {:?}; eic-connect's tunnels support only http:// proxies",
                        terminal_safe(scheme)
                    ))
                    .hint("use an http:// proxy URL, or add the endpoint's host to NO_PROXY"),
                );
            }
            None => url,
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if hostport.is_empty() {
            return fail(Failure::new("HTTPS_PROXY names no host"));
        }
        let has_port = hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !hostport.ends_with(']'));
        let addr = if has_port {
            hostport.to_owned()
        } else {
            format!("{hostport}:80")
        };
        let authorization = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let plain = format!(
                "{}:{}",
                percent_decode_str(user).decode_utf8_lossy(),
                percent_decode_str(pass).decode_utf8_lossy()
            );
            format!("Basic {}", BASE64_STANDARD.encode(plain))
        });
        Ok(Proxy {
            addr,
            authorization,
        })
    }

    async fn connect(&self, host: &str, port: u16) -> anyhow::Result<TcpStream> {
        let mut tcp = TcpStream::connect(self.addr.as_str())
            .await
            .with_context(|| format!("connecting to the proxy {}", self.addr))?;
        let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let answer = read_connect_answer(&mut tcp).await?;
        if !(200..300).contains(&answer.code) {
            anyhow::bail!(
                "the proxy refused CONNECT {host}:{port}: {}",
                terminal_safe(&answer.status_line())
            );
        }
        Ok(tcp)
    }
}

/// Longest head (status line and header fields) accepted in the proxy's
/// answer to CONNECT.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// Most header fields accepted in the proxy's answer to CONNECT.
const MAX_CONNECT_HEADERS: usize = 64;

/// The status of the proxy's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAnswer {
    /// The minor version: `1` for HTTP/1.1.
    version: u8,
    code: u16,
    reason: String,
}

impl ConnectAnswer {
    fn status_line(&self) -> String {
        format!("HTTP/1.{} {} {}", self.version, self.code, self.reason)
            .trim_end()
            .to_owned()
    }
}

/// Parses the head of the proxy's answer to CONNECT: the answer and the
/// head's length once `buf` holds all of it, `None` while it may still be
/// coming.
pub fn parse_connect_head(buf: &[u8]) -> anyhow::Result<Option<(ConnectAnswer, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    // Only the status matters: header lines that are not quite HTTP do not.
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_responses(true)
        .parse_response(&mut response, buf);
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some((
            ConnectAnswer {
                version: response.version.unwrap_or(1),
                code: response.code.unwrap_or_default(),
                reason: response.reason.unwrap_or_default().to_owned(),
            },
            len,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => anyhow::bail!(
            "the proxy's answer to CONNECT has more than {MAX_CONNECT_HEADERS} header fields"
        ),
        Err(err) => anyhow::bail!("the proxy's answer to CONNECT is not HTTP/1.x ({err})"),
    }
}

/// Reads the proxy's answer to CONNECT off `tcp`, and not one byte more:
/// the tunnelled stream (the TLS handshake) starts right after its head, and
/// whatever follows the head of a successful answer belongs to that stream
/// (a client ignores Content-Length and Transfer-Encoding there, RFC 9110
/// §9.3.6). So the bytes waiting on the socket are peeked at, not read; only
/// those known to be part of the head are then taken off it.
async fn read_connect_answer(tcp: &mut TcpStream) -> anyhow::Result<ConnectAnswer> {
    let mut head: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = vec![0u8; 4096];
    loop {
        let room = MAX_CONNECT_HEAD.saturating_sub(head.len()).min(chunk.len());
        let Some(window) = chunk.get_mut(..room).filter(|w| !w.is_empty()) else {
            anyhow::bail!(
                "the proxy's answer to CONNECT is longer than {} KiB",
                MAX_CONNECT_HEAD / 1024
            );
        };
        let peeked = tcp
            .peek(window)
            .await
            .context("reading the proxy's answer to CONNECT")?;
        let Some(new) = window.get(..peeked).filter(|new| !new.is_empty()) else {
            anyhow::bail!("the proxy closed the connection before answering CONNECT in full");
        };
        let had = head.len();
        head.extend_from_slice(new);
        // While the head is incomplete every byte seen so far is part of
        // it; once complete, only the bytes up to its end are.
        let (answer, take) = match parse_connect_head(&head)? {
            Some((answer, len)) => (Some(answer), len.saturating_sub(had)),
            None => (None, peeked),
        };
        let Some(consumed) = chunk.get_mut(..take) else {
            anyhow::bail!("the proxy's answer to CONNECT could not be read");
        };
        tcp.read_exact(consumed)
            .await
            .context("reading the proxy's answer to CONNECT")?;
        if let Some(answer) = answer {
            return Ok(answer);
        }
    }
}

/// Whether NO_PROXY exempts `host:port` from the proxy. Entries are
/// separated by commas, compared without regard to case:
/// - `*` exempts every host;
/// - a domain exempts itself and every name under it (`example.com`,
///   `.example.com` and `*.example.com` alike);
/// - an IP address exempts that address, and a CIDR block (`10.0.0.0/8`,
///   `fd00::/8`) every address in it; host names are not resolved for this;
/// - a domain or an address may name a port (`example.com:443`,
///   `10.0.0.1:443`, `[fd00::1]:443`), and then exempts that port only.
///
/// Entries that are none of these (a port that is not a number, say) are
/// ignored.
pub fn no_proxy_matches(no_proxy: Option<&str>, host: &str, port: u16) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy.is_some_and(|list| {
        list.split(',')
            .filter_map(NoProxyRule::parse)
            .any(|rule| rule.matches(&host, host_ip, port))
    })
}

/// One NO_PROXY entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyRule {
    All,
    Network(IpNet),
    Address(IpAddr, Option<u16>),
    Domain(String, Option<u16>),
}

impl NoProxyRule {
    fn parse(entry: &str) -> Option<NoProxyRule> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(NoProxyRule::All);
        }
        if let Ok(net) = entry.parse::<IpNet>() {
            return Some(NoProxyRule::Network(net));
        }
        // A bare IPv6 address: its colons are not a port's.
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Some(NoProxyRule::Address(ip, None));
        }
        let (name, port) = match entry.strip_prefix('[') {
            Some(bracketed) => {
                let (inside, after) = bracketed.split_once(']')?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':')?.parse::<u16>().ok()?),
                };
                (inside, port)
            }
            None => match entry.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => {
                    (name, Some(port.parse::<u16>().ok()?))
                }
                Some(_) => return None,
                None => (entry, None),
            },
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(NoProxyRule::Address(ip, port));
        }
        let domain = name
            .strip_prefix("*.")
            .or_else(|| name.strip_prefix('.'))
            .unwrap_or(name)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() || domain.contains(['*', '/', '[', ']', ':']) {
            return None;
        }
        Some(NoProxyRule::Domain(domain, port))
    }

    /// `host` in lower case without brackets; `host_ip` if it is an address.
    fn matches(&self, host: &str, host_ip: Option<IpAddr>, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            NoProxyRule::All => true,
            NoProxyRule::Network(net) => host_ip.is_some_and(|ip| net.contains(&ip)),
            NoProxyRule::Address(ip, p) => host_ip == Some(*ip) && port_ok(p),
            NoProxyRule::Domain(domain, p) => {
                host_ip.is_none()
                    && port_ok(p)
                    && host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
            }
        }
    }
}

/// Longest handshake answer head, and longest refusal body, read.
const MAX_ANSWER: usize = 64 * 1024;

/// How long to wait for the rest of a refusal's body once its head is in.
const BODY_WAIT: Duration = Duration::from_secs(2);

/// The WebSocket handshake over `stream` for the presigned `url`. A refusal
/// is read the way the service frames it (its body by `Content-Length`, or
/// up to the end of the connection), however the bytes arrive, so that the
/// service's error code and message reach the user.
pub async fn handshake<S>(
    mut stream: S,
    url: &str,
    host: &str,
    config: WebSocketConfig,
) -> anyhow::Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let broke = |err: &dyn std::fmt::Display| {
        anyhow::Error::new(Failure::new(format!(
            "the WebSocket handshake with {host} failed: {}",
            terminal_safe(&err.to_string())
        )))
    };
    let request = url
        .into_client_request()
        .context("building the tunnel request")?;
    let (request, key) =
        tokio_tungstenite::tungstenite::handshake::client::generate_request(request)
            .context("building the tunnel request")?;
    stream.write_all(&request).await.map_err(|e| broke(&e))?;
    stream.flush().await.map_err(|e| broke(&e))?;

    let mut buf = Vec::with_capacity(4096);
    let (answer, head_len) = loop {
        if let Some(parsed) = parse_answer_head(&buf).map_err(|e| broke(&e))? {
            break parsed;
        }
        if buf.len() > MAX_ANSWER {
            return Err(broke(&"the answer's head is too long"));
        }
        if read_some(&mut stream, &mut buf)
            .await
            .map_err(|e| broke(&e))?
            == 0
        {
            return Err(broke(
                &"the endpoint closed the connection without answering",
            ));
        }
    };
    let rest = buf.split_off(head_len);
    if answer.status == 101 {
        let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if answer.accept.as_deref() != Some(expected.as_str()) || !answer.upgrade_websocket {
            return Err(broke(&"the endpoint's answer is not a WebSocket upgrade"));
        }
        return Ok(
            WebSocketStream::from_partially_read(stream, rest, Role::Client, Some(config)).await,
        );
    }
    let body = read_body(&mut stream, rest, answer.content_length).await;
    Err(anyhow::Error::new(rejected(
        answer.status,
        &body,
        answer.request_id.as_deref(),
    )))
}

/// What the handshake needs from the answer's head.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerHead {
    pub status: u16,
    pub content_length: Option<usize>,
    pub accept: Option<String>,
    pub upgrade_websocket: bool,
    pub request_id: Option<String>,
}

/// The answer's head and its length, once all of it is in `buf`.
pub fn parse_answer_head(buf: &[u8]) -> Result<Option<(AnswerHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the answer is not HTTP ({e})")),
    };
    let mut head = AnswerHead {
        status: response.code.unwrap_or_default(),
        ..AnswerHead::default()
    };
    for h in response.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length =
                Some(value.parse().map_err(|_| {
                    format!("the answer's Content-Length {value:?} is not a number")
                })?);
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            head.accept = Some(value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket = value.eq_ignore_ascii_case("websocket");
        } else if h.name.eq_ignore_ascii_case("x-amzn-requestid") {
            head.request_id = Some(value);
        }
    }
    Ok(Some((head, len)))
}

/// A refusal's body: `Content-Length` bytes, or what comes until the
/// connection closes; at most [`MAX_ANSWER`] bytes and [`BODY_WAIT`].
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut body: Vec<u8>,
    length: Option<usize>,
) -> Vec<u8> {
    let want = length.unwrap_or(MAX_ANSWER).min(MAX_ANSWER);
    let _ = tokio::time::timeout(BODY_WAIT, async {
        while body.len() < want {
            match read_some(stream, &mut body).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    body.truncate(want);
    body
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A refused handshake: the service's message, and what to check.
pub fn rejected(status: u16, body: &[u8], request_id: Option<&str>) -> Failure {
    let (code, message) = error_body(body);
    let code = code.unwrap_or_default();
    let shown_code = if code.is_empty() {
        String::new()
    } else {
        format!(", {}", terminal_safe(&code))
    };
    let said = match message {
        Some(m) if !m.is_empty() => format!(": {}", terminal_safe(&m)),
        _ => String::new(),
    };
    let mut failure = Failure::new(format!(
        "the EC2 Instance Connect Endpoint refused the tunnel (HTTP {status}{shown_code}){said}"
    ));
    let lower = code.to_ascii_lowercase();
    if status == 401 || status == 403 || lower.contains("denied") || lower.contains("auth") {
        failure = failure
            .hint("your IAM identity needs ec2-instance-connect:OpenTunnel on the endpoint; policy conditions on remotePort, privateIpAddress and maxTunnelDuration must allow this tunnel")
            .hint("check which identity is in use: aws sts get-caller-identity; and that this machine's clock is correct");
    } else if status == 429 || lower.contains("throttl") || lower.contains("limit") {
        failure = failure.hint(
            "an endpoint carries at most 20 tunnels at once and throttles heavy use: wait a little and retry",
        );
    } else if status >= 500 {
        failure = failure.hint("this is on the AWS side and usually passes: try again shortly");
    } else {
        failure = failure.hint(
            "check the instance's private address and port: endpoints reach ports 22 and 3389 in their own VPC",
        );
    }
    failure = failure.hint(
        "the instance's security group must allow the port from the endpoint's security group",
    );
    if let Some(id) = request_id {
        failure = failure.detail(format!("request id {}", terminal_safe(id)));
    }
    failure
}

/// `{"ErrorCode": "...", "Message": "..."}` (either field may be missing;
/// a body that is not JSON is shown as it is, shortened).
fn error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| map.get(*n).and_then(|v| v.as_str()).map(str::to_owned))
        };
        return (
            field(&["ErrorCode", "errorCode", "__type", "code"]),
            field(&["Message", "message"]),
        );
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        (None, None)
    } else {
        (None, Some(text.chars().take(300).collect()))
    }
}

/// Opens tunnels to one target, each with a freshly presigned URL.
#[derive(Clone)]
pub struct Tunneller {
    pub config: SdkConfig,
    pub scope: Scope,
    pub target: TunnelTarget,
    pub connector: Connector,
}

impl Tunneller {
    pub async fn open(&self) -> anyhow::Result<Ws> {
        let started = Instant::now();
        let credentials = eice::credentials(&self.config, &self.scope).await?;
        let url = eice::presign(
            &self.target,
            &self.scope.region,
            &credentials,
            SystemTime::now(),
        )?;
        tracing::debug!(url = %eice::redact_url(&url), "opening tunnel");
        let ws = self.connector.open(&url, &self.target.host).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tunnel open"
        );
        Ok(ws)
    }

    /// Where the tunnel goes, for messages.
    pub fn describe(&self) -> String {
        describe_target(
            &self.target.private_ip,
            self.target.remote_port,
            &self.target.endpoint_id,
        )
    }
}

fn describe_target(ip: &IpAddr, port: u16, endpoint: &str) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port} through {endpoint}"),
        IpAddr::V4(v4) => format!("{v4}:{port} through {endpoint}"),
    }
}

/// How a relay ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The local side finished; the tunnel was closed by us.
    LocalClosed,
    /// The endpoint closed the tunnel normally (code 1000), maybe with a reason.
    RemoteClosed { reason: String },
}

/// Relays bytes between a local stream and the tunnel until one side ends.
/// Local EOF sends a close frame (and waits briefly for the answer); a close
/// from the endpoint shuts the local side's write half. A text frame or a
/// close with a code other than 1000 is an error carrying the reason.
pub async fn relay<S, R, W>(
    ws: WebSocketStream<S>,
    mut local_in: R,
    mut local_out: W,
) -> anyhow::Result<Ending>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    // Boxed (not stack-pinned) so that dropping them ends their borrows.
    let mut upstream = Box::pin(async {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let n = local_in.read(&mut buf).await.map_err(Up::Local)?;
            if n == 0 {
                break;
            }
            sink.send(Message::binary(buf[..n].to_vec()))
                .await
                .map_err(Up::Ws)?;
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        Ok::<(), Up>(())
    });
    let mut downstream = Box::pin(async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Binary(data)) => {
                    local_out.write_all(&data).await.map_err(Down::Local)?
                }
                Ok(Message::Text(_)) => return Err(Down::Text),
                Ok(Message::Close(frame)) => {
                    let _ = local_out.shutdown().await;
                    return Ok(Some(frame));
                }
                Ok(_) => {}
                Err(err) => return Err(Down::Ws(err)),
            }
        }
        let _ = local_out.shutdown().await;
        Ok(None)
    });
    let first = tokio::select! {
        up = &mut upstream => First::Up(up),
        down = &mut downstream => First::Down(down),
    };
    let mut text_frame = matches!(first, First::Down(Err(Down::Text)));
    let result = match first {
        First::Up(Ok(())) => {
            // Our close is sent: wait (briefly) for the endpoint's answer,
            // passing on whatever data was still in flight.
            match tokio::time::timeout(CLOSE_WAIT, &mut downstream).await {
                Ok(Err(Down::Local(_))) | Err(_) => Ok(Ending::LocalClosed),
                Ok(Ok(_)) => Ok(Ending::LocalClosed),
                Ok(Err(down)) => Err(down.into_error()),
            }
        }
        First::Up(Err(Up::Local(err))) => {
            Err(anyhow::Error::new(err).context("reading from the local side of the tunnel"))
        }
        First::Up(Err(Up::Ws(err))) => {
            // Often the endpoint closed the tunnel: prefer its reason.
            match tokio::time::timeout(Duration::from_secs(1), &mut downstream).await {
                Ok(Ok(frame)) => remote_close(frame),
                Ok(Err(down)) => {
                    text_frame = matches!(down, Down::Text);
                    Err(down.into_error())
                }
                Err(_) => Err(ws_failure(&err)),
            }
        }
        First::Down(Ok(frame)) => remote_close(frame),
        // The local side went away while data was still coming (ssh exits
        // as soon as its session is over): that is its way of closing.
        First::Down(Err(Down::Local(err)))
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(Ending::LocalClosed)
        }
        First::Down(Err(down)) => Err(down.into_error()),
    };
    drop(upstream);
    drop(downstream);
    // Finish the closing handshake, best effort: a protocol error gets its
    // own close frame; otherwise this sends (or flushes) our close or the
    // answer to the endpoint's.
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if text_frame {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Protocol,
                        reason: "text frame".into(),
                    })))
                    .await;
            }
            let _ = SinkExt::close(&mut ws).await;
        })
        .await;
    }
    result
}

enum First {
    Up(Result<(), Up>),
    Down(Result<Option<Option<CloseFrame>>, Down>),
}

enum Up {
    Local(io::Error),
    Ws(WsError),
}

enum Down {
    Local(io::Error),
    Ws(WsError),
    Text,
}

impl Down {
    fn into_error(self) -> anyhow::Error {
        match self {
            Down::Local(err) => {
                anyhow::Error::new(err).context("writing to the local side of the tunnel")
            }
            Down::Ws(err) => ws_failure(&err),
            Down::Text => anyhow::Error::new(
                Failure::new("the endpoint sent a text frame, which the tunnel protocol does not use; the tunnel was closed")
                    .hint("this is unexpected from AWS: please report it with the output of -v"),
            ),
        }
    }
}

fn ws_failure(err: &WsError) -> anyhow::Error {
    anyhow::Error::new(
        Failure::new(format!(
            "the tunnel broke: {}",
            terminal_safe(&err.to_string())
        ))
        .hint(TRY_AGAIN),
    )
}

/// What to do when a tunnel ends abnormally.
const TRY_AGAIN: &str = "this usually passes: try again; if it keeps happening, check your network and proxy, and the endpoint with: eic-connect doctor TARGET";

/// The endpoint's close: normal (1000) ends the relay, anything else is an
/// error showing its reason.
fn remote_close(frame: Option<Option<CloseFrame>>) -> anyhow::Result<Ending> {
    match frame {
        // The connection ended without a close frame.
        None => {
            fail(Failure::new("the endpoint dropped the tunnel without closing it").hint(TRY_AGAIN))
        }
        Some(None) => Ok(Ending::RemoteClosed {
            reason: String::new(),
        }),
        Some(Some(frame)) if frame.code == CloseCode::Normal => Ok(Ending::RemoteClosed {
            reason: frame.reason.to_string(),
        }),
        Some(Some(frame)) => {
            let reason = terminal_safe(frame.reason.as_str()).into_owned();
            let code = u16::from(frame.code);
            let message = if reason.is_empty() {
                format!("the endpoint closed the tunnel (code {code})")
            } else {
                format!("the endpoint closed the tunnel (code {code}): {reason}")
            };
            let failure = Failure::new(message);
            fail(if code == 1011 {
                failure
                    .hint("the endpoint could not reach or lost the instance: check that it runs and that its security group allows the port from the endpoint's security group")
                    .hint(TRY_AGAIN)
            } else {
                failure.hint(TRY_AGAIN)
            })
        }
    }
}

/// Standard output as an `AsyncWrite` without std's line buffering (binary
/// data must reach ssh at once): a duplicate of fd 1, written on tokio's
/// blocking pool.
pub fn stdout() -> anyhow::Result<tokio::fs::File> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard output")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Standard input as an `AsyncRead`, read on a thread of its own: a
/// blocking read of stdin must never keep the process from exiting once the
/// tunnel is closed.
pub struct StdinReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl StdinReader {
    pub fn spawn() -> StdinReader {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                use std::io::Read;
                let mut stdin = std::io::stdin().lock();
                loop {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.blocking_send(Ok(buf)).is_err() {
                                break;
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            let _ = tx.blocking_send(Err(err));
                            break;
                        }
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::debug!(%err, "could not start the stdin thread");
        }
        StdinReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl AsyncRead for StdinReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos >= this.chunk.len() {
            match ready!(this.rx.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(err)) => return Poll::Ready(Err(err)),
                Some(Ok(chunk)) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
            }
        }
        let n = out.remaining().min(this.chunk.len() - this.pos);
        out.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Ends when `limit` passes before anything was `seen`; otherwise never.
async fn silence(seen: Arc<std::sync::atomic::AtomicBool>, limit: Option<Duration>) {
    match limit {
        Some(limit) => {
            tokio::time::sleep(limit).await;
            if seen.load(std::sync::atomic::Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A writer that notes its first write.
struct FirstWrite<W> {
    inner: W,
    seen: Arc<std::sync::atomic::AtomicBool>,
    /// The instance answered: a step towards letting standard error go.
    quiet: Option<Arc<crate::ssh::QuietWhen>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FirstWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !buf.is_empty()
            && !this.seen.swap(true, std::sync::atomic::Ordering::Relaxed)
            && let Some(quiet) = &this.quiet
        {
            quiet.done();
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One tunnel on standard input and output. With `quiet` (the connection
/// may become ssh's shared master), the instance's first answer is a step
/// towards letting standard error go ([`crate::ssh::QuietWhen`]).
pub async fn stdio(
    tunneller: Tunneller,
    max_duration: Option<u32>,
    quiet: Option<Arc<crate::ssh::QuietWhen>>,
) -> anyhow::Result<ExitCode> {
    let ws = tunneller.open().await?;
    let opened = Instant::now();
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = FirstWrite {
        inner: stdout()?,
        seen: answered.clone(),
        quiet,
    };
    // An ssh server speaks first: a tunnel to port 22 that stays silent is
    // stalled (ssh itself would wait for its banner forever).
    let limit = (tunneller.target.remote_port == 22).then_some(tunneller.connector.timeout);
    let ending = tokio::select! {
        ending = relay(ws, StdinReader::spawn(), out) => ending,
        () = silence(answered, limit) => fail(
            Failure::new(format!(
                "the tunnel to port 22 stayed silent for {:.0?}: nothing came from the instance",
                tunneller.connector.timeout
            ))
            .hint("the endpoint accepted the tunnel, but sshd did not answer: check that the instance is healthy and sshd runs")
            .hint("raise the limit with --api-timeout SECONDS if the network is slow"),
        ),
    };
    let elapsed = opened.elapsed();
    let reached_max = max_duration
        .is_some_and(|max| elapsed + Duration::from_millis(500) >= Duration::from_secs(max.into()));
    let max_note = |max: Option<u32>| {
        format!(
            "the tunnel reached its maximum duration of {} s (--max-tunnel-duration) and the endpoint closed it",
            max.unwrap_or_default()
        )
    };
    match ending {
        Ok(Ending::LocalClosed) => Ok(ExitCode::SUCCESS),
        Ok(Ending::RemoteClosed { reason }) => {
            let reason = crate::sanitize::terminal_safe(&reason).into_owned();
            if reached_max {
                let said = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                eprintln!("eic-connect: {}{said}", max_note(max_duration));
            } else if !reason.is_empty() {
                eprintln!("eic-connect: the endpoint closed the tunnel: {reason}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) if reached_max => Err(err.context(max_note(max_duration))),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wss_urls_give_host_and_port() {
        assert_eq!(
            wss_host_port("wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe").unwrap(),
            ("ssmmessages.eu-west-1.amazonaws.com".into(), 443)
        );
        assert_eq!(
            wss_host_port("wss://127.0.0.1:8443/v1/data-channel/s").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            wss_host_port("wss://[::1]:9/x").unwrap(),
            ("[::1]".into(), 9)
        );
        assert_eq!(
            wss_host_port("wss://[::1]/x").unwrap(),
            ("[::1]".into(), 443)
        );
        for bad in ["https://a/b", "wss://", "wss://u@h/x", "wss://h:port/x"] {
            assert!(wss_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(redact_query("wss://h/p?token=x"), "wss://h/p?…");
    }

    #[test]
    fn connect_to_override_forms() {
        assert_eq!(
            parse_connect_to("https://127.0.0.1:8443").unwrap(),
            "127.0.0.1:8443"
        );
        assert_eq!(
            parse_connect_to("https://127.0.0.1:8443/").unwrap(),
            "127.0.0.1:8443"
        );
        assert_eq!(parse_connect_to("localhost").unwrap(), "localhost:443");
        assert_eq!(parse_connect_to("https://[::1]:9").unwrap(), "[::1]:9");
        assert!(parse_connect_to("https://h/x").is_err());
    }

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("http://user:p%40ss@proxy.corp:3128/").unwrap();
        assert_eq!(p.addr, "proxy.corp:3128");
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        let p = Proxy::parse("proxy.corp").unwrap();
        assert_eq!(p.addr, "proxy.corp:80");
        assert!(p.authorization.is_none());
        assert!(Proxy::parse("socks5://proxy:1080").is_err());
    }

    #[test]
    fn proxy_credentials_are_percent_decoded_and_base64_encoded() {
        // RFC 7617's example, with the space percent-encoded.
        let p = Proxy::parse("http://Aladdin:open%20sesame@proxy:3128").unwrap();
        assert_eq!(
            p.authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        // No password; a `%` that starts no escape stays as it is.
        let p = Proxy::parse("http://u%zz@proxy:3128").unwrap();
        assert_eq!(p.authorization.as_deref(), Some("Basic dSV6ejo="));
        // Padding of every length.
        for (user, expected) in [("f", "Zjo="), ("fo", "Zm86"), ("foo", "Zm9vOg==")] {
            let p = Proxy::parse(&format!("http://{user}@proxy")).unwrap();
            assert_eq!(
                p.authorization.as_deref(),
                Some(format!("Basic {expected}").as_str())
            );
        }
    }

    #[test]
    fn no_proxy_domains() {
        let host = "eice-1.ec2-instance-connect-endpoint.us-east-1.amazonaws.com";
        assert!(no_proxy_matches(Some("*"), host, 443));
        assert!(no_proxy_matches(
            Some("localhost, .amazonaws.com"),
            host,
            443
        ));
        assert!(no_proxy_matches(Some("amazonaws.com"), host, 443));
        assert!(no_proxy_matches(Some("*.amazonaws.com"), host, 443));
        assert!(no_proxy_matches(Some("AmazonAWS.COM."), host, 443));
        assert!(no_proxy_matches(Some(host), host, 443));
        assert!(no_proxy_matches(
            Some("amazonaws.com"),
            "AMAZONAWS.com.",
            443
        ));
        assert!(!no_proxy_matches(Some("example.com,zonaws.com"), host, 443));
        assert!(!no_proxy_matches(Some("eice-1"), host, 443));
        assert!(!no_proxy_matches(Some(""), host, 443));
        assert!(!no_proxy_matches(Some(" , ,"), host, 443));
        assert!(!no_proxy_matches(None, host, 443));
        // `*` only as the whole entry.
        assert!(!no_proxy_matches(Some("*amazonaws.com"), host, 443));
    }

    #[test]
    fn no_proxy_ports() {
        let host = "eice-1.ec2-instance-connect-endpoint.us-east-1.amazonaws.com";
        assert!(no_proxy_matches(Some("amazonaws.com:443"), host, 443));
        assert!(no_proxy_matches(Some(".amazonaws.com:443"), host, 443));
        assert!(!no_proxy_matches(Some("amazonaws.com:8443"), host, 443));
        assert!(!no_proxy_matches(Some("amazonaws.com:https"), host, 443));
        assert!(!no_proxy_matches(Some("amazonaws.com:99999"), host, 443));
        assert!(!no_proxy_matches(Some("amazonaws.com:"), host, 443));
        assert!(no_proxy_matches(Some("127.0.0.1:443"), "127.0.0.1", 443));
        assert!(!no_proxy_matches(Some("127.0.0.1:444"), "127.0.0.1", 443));
        assert!(no_proxy_matches(Some("[::1]:443"), "::1", 443));
        assert!(no_proxy_matches(Some("[::1]"), "[::1]", 443));
        assert!(!no_proxy_matches(Some("[::1]:22"), "::1", 443));
        assert!(!no_proxy_matches(Some("[::1"), "::1", 443));
    }

    #[test]
    fn no_proxy_addresses_and_cidr_blocks() {
        assert!(no_proxy_matches(Some("10.0.0.0/8"), "10.1.2.3", 443));
        assert!(!no_proxy_matches(Some("10.0.0.0/8"), "11.0.0.1", 443));
        assert!(no_proxy_matches(Some("192.168.1.7/32"), "192.168.1.7", 443));
        assert!(no_proxy_matches(Some("fd00::/8"), "fd00::5", 443));
        assert!(no_proxy_matches(Some("fd00::/8"), "[fd00::5]", 443));
        assert!(!no_proxy_matches(Some("fd00::/8"), "fe80::1", 443));
        assert!(no_proxy_matches(Some("::1"), "::1", 443));
        assert!(no_proxy_matches(Some("127.0.0.1"), "127.0.0.1", 443));
        assert!(!no_proxy_matches(Some("127.0.0.1"), "127.0.0.2", 443));
        // Names are not resolved, and a domain never matches an address.
        assert!(!no_proxy_matches(Some("0.0.0.0/0"), "localhost", 443));
        assert!(!no_proxy_matches(Some("0.1"), "10.0.0.1", 443));
        // A malformed block is ignored, not taken for a domain.
        assert!(!no_proxy_matches(Some("10.0.0.0/33"), "10.0.0.1", 443));
    }

    /// A stand-in proxy that sends `parts` (a short pause after each), then
    /// closes; and the client's end of the connection to it.
    async fn proxy_answering(parts: Vec<Vec<u8>>) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.set_nodelay(true).unwrap();
            for part in parts {
                conn.write_all(&part).await.unwrap();
                conn.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        TcpStream::connect(addr).await.unwrap()
    }

    async fn rest_of(mut tcp: TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        rest
    }

    #[tokio::test]
    async fn connect_answer_leaves_the_tunnel_bytes_on_the_socket() {
        let mut tcp = proxy_answering(vec![
            b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n\x16\x03\x01TLS".to_vec(),
        ])
        .await;
        let answer = read_connect_answer(&mut tcp).await.unwrap();
        assert_eq!(answer.code, 200);
        assert_eq!(answer.status_line(), "HTTP/1.1 200 Connection established");
        assert_eq!(rest_of(tcp).await, b"\x16\x03\x01TLS");
    }

    #[tokio::test]
    async fn connect_answer_in_pieces() {
        let answer = b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\nafter";
        let parts = answer.iter().map(|b| vec![*b]).collect();
        let mut tcp = proxy_answering(parts).await;
        let got = read_connect_answer(&mut tcp).await.unwrap();
        assert_eq!(got.status_line(), "HTTP/1.0 200 OK");
        assert_eq!(rest_of(tcp).await, b"after");
    }

    #[tokio::test]
    async fn a_body_after_a_successful_answer_belongs_to_the_tunnel() {
        let mut tcp = proxy_answering(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ])
        .await;
        assert_eq!(read_connect_answer(&mut tcp).await.unwrap().code, 200);
        assert_eq!(rest_of(tcp).await, b"hello");
    }

    #[tokio::test]
    async fn a_refusal_with_a_body_is_read_to_its_head() {
        let mut tcp = proxy_answering(vec![
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 11\r\n\r\n<html>\x1b[2J"
                .to_vec(),
        ])
        .await;
        let answer = read_connect_answer(&mut tcp).await.unwrap();
        assert_eq!(answer.code, 407);
        assert_eq!(
            answer.status_line(),
            "HTTP/1.1 407 Proxy Authentication Required"
        );
        assert_eq!(rest_of(tcp).await, b"<html>\x1b[2J");
    }

    #[tokio::test]
    async fn a_truncated_connect_answer_fails() {
        for truncated in [
            &b""[..],
            b"HTTP/1.1 200",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nVia: x\r\n\r",
        ] {
            let mut tcp = proxy_answering(vec![truncated.to_vec()]).await;
            let err = read_connect_answer(&mut tcp).await.unwrap_err().to_string();
            assert!(
                err.contains("closed the connection"),
                "{truncated:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_connect_answer_fails() {
        let mut long = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
        long.resize(MAX_CONNECT_HEAD + 100, b'a');
        let mut tcp = proxy_answering(vec![long]).await;
        let err = read_connect_answer(&mut tcp).await.unwrap_err().to_string();
        assert!(err.contains("longer than 16 KiB"), "{err}");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_CONNECT_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut tcp = proxy_answering(vec![many]).await;
        let err = read_connect_answer(&mut tcp).await.unwrap_err().to_string();
        assert!(err.contains("header fields"), "{err}");
    }

    #[test]
    fn connect_heads_that_are_not_http_fail() {
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            // Control characters have no place in a status line.
            b"HTTP/1.1 403 Forbidden\x1b[2J\r\n\r\n",
            b"\x16\x03\x01\x00\x00",
        ] {
            let err = parse_connect_head(bad).unwrap_err().to_string();
            assert!(err.contains("not HTTP/1.x"), "{bad:?}: {err}");
        }
        assert_eq!(parse_connect_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        let (answer, len) = parse_connect_head(b"HTTP/1.1 204\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((answer.code, len), (204, 16));
        assert_eq!(answer.status_line(), "HTTP/1.1 204");
    }

    #[tokio::test]
    async fn connect_through_a_refusing_proxy_names_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let mut n = 0;
            while !head[..n].ends_with(b"\r\n\r\n") {
                n += conn.read(&mut head[n..]).await.unwrap();
            }
            conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                .await
                .unwrap();
            head.truncate(n);
            String::from_utf8(head).unwrap()
        });
        let proxy = Proxy::parse(&format!("http://u:p@{addr}")).unwrap();
        let err = proxy
            .connect("eice.example", 443)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the proxy refused CONNECT eice.example:443: HTTP/1.1 403 Forbidden"
        );
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("CONNECT eice.example:443 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Proxy-Authorization: Basic dTpw\r\n"),
            "{head}"
        );
    }

    #[test]
    fn rejected_handshakes_show_the_service_message_safely() {
        let f = rejected(
            403,
            br#"{"ErrorCode":"AccessDeniedException","Message":"not allowed\u001b[2J to OpenTunnel"}"#,
            Some("req-1"),
        );
        assert!(
            f.message.contains("HTTP 403, AccessDeniedException"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("not allowed\\u{1b}[2J to OpenTunnel"),
            "{}",
            f.message
        );
        assert!(
            f.hints
                .iter()
                .any(|h| h.contains("ec2-instance-connect:OpenTunnel"))
        );
        assert_eq!(f.details, ["request id req-1"]);
        let f = rejected(400, b"plain text error", None);
        assert!(f.message.ends_with(": plain text error"), "{}", f.message);
        let f = rejected(429, b"", None);
        assert!(f.hints[0].contains("20 tunnels"));
    }

    #[test]
    fn remote_close_codes() {
        assert_eq!(
            remote_close(Some(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into()
            })))
            .unwrap(),
            Ending::RemoteClosed {
                reason: "bye".into()
            }
        );
        let err = remote_close(Some(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "instance unreachable\n".into(),
        })))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the endpoint closed the tunnel (code 1011): instance unreachable\\n"
        );
        assert!(remote_close(None).is_err());
    }

    /// An endpoint on the other end of a pipe: reads the handshake request,
    /// then sends `parts` (in separate writes, 50 ms apart), then closes;
    /// `{accept}` in a part becomes the right Sec-WebSocket-Accept.
    fn endpoint_answering(parts: Vec<Vec<u8>>) -> tokio::io::DuplexStream {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                if read_some(&mut server, &mut request).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or_default()
                .to_owned();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            for mut part in parts {
                if let Some(at) = part.windows(8).position(|w| w == b"{accept}") {
                    part.splice(at..at + 8, accept.bytes());
                }
                let _ = server.write_all(&part).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        client
    }

    async fn shake(
        parts: Vec<Vec<u8>>,
    ) -> anyhow::Result<WebSocketStream<tokio::io::DuplexStream>> {
        let config = WebSocketConfig::default();
        handshake(
            endpoint_answering(parts),
            "wss://eice-0123.ec2-instance-connect-endpoint.us-east-1.amazonaws.com/openTunnel?a=b",
            "eice-0123.ec2-instance-connect-endpoint.us-east-1.amazonaws.com",
            config,
        )
        .await
    }

    #[tokio::test]
    async fn a_refusal_body_is_read_by_its_content_length_however_it_arrives() {
        let body = br#"{"ErrorCode":"AccessDeniedException","Message":"not authorized to perform: ec2-instance-connect:OpenTunnel"}"#;
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nx-amzn-RequestId: req-1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // Head alone, then the body in two pieces.
        let parts = vec![head.into_bytes(), body[..20].to_vec(), body[20..].to_vec()];
        let err = shake(parts).await.expect_err("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains("(HTTP 403, AccessDeniedException): not authorized to perform"),
            "{text}"
        );
        let failure = err.downcast_ref::<Failure>().expect("a Failure");
        assert!(format!("{failure:?}").contains("req-1"), "{failure:?}");
    }

    #[tokio::test]
    async fn a_refusal_without_a_length_is_read_to_the_end_of_the_connection() {
        let parts = vec![
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n".to_vec(),
            br#"{"ErrorCode":"ResourceNotFoundException","#.to_vec(),
            br#""Message":"The instanceConnectEndpoint ID 'eice-0123' does not exist"}"#.to_vec(),
        ];
        let err = shake(parts).await.expect_err("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains("(HTTP 404, ResourceNotFoundException): The instanceConnectEndpoint ID"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_upgrade_keeps_the_bytes_that_came_with_it() {
        // The answer's head and a first binary frame ("hi") in one write.
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
        answer.extend_from_slice(&[0x82, 2, b'h', b'i']);
        let mut ws = shake(vec![answer]).await.expect("upgraded");
        let first = ws.next().await.expect("a message").expect("no error");
        assert_eq!(first, Message::binary(b"hi".to_vec()));
    }

    #[tokio::test]
    async fn answers_that_are_not_an_upgrade_fail_clearly() {
        for (answer, expected) in [
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: wrong\r\n\r\n"[..],
                "not a WebSocket upgrade",
            ),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP"),
            (b"", "closed the connection without answering"),
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: x\r\n\r\n", "not a number"),
        ] {
            let err = shake(vec![answer.to_vec()]).await.expect_err("failed");
            let text = format!("{err:#}");
            assert!(text.contains(expected), "{text}");
        }
    }
}
