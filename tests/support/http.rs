//! A deliberately small HTTP/1.1 server for the AWS stand-in.
//!
//! Why not hyper: the AWS SDK already pulls hyper in with client-only
//! features; a dev-dependency enabling hyper's `server` feature would change
//! hyper's feature set for test builds and force a second full compile of
//! the whole AWS stack (aws-sdk-ec2 alone is minutes and GBs). Everything here
//! uses only tokio features the binary already enables, plus `httparse`,
//! which is already in the tree with the same features.
//!
//! Supports keep-alive, `Content-Length` and chunked request bodies and
//! `Expect: 100-continue`. Every response carries a `Content-Length`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Raw path as on the request line, without the query.
    pub path: String,
    /// Raw query string (no `?`), empty if none.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sleep this long before sending (for timeout tests).
    pub delay: Duration,
    /// How the answer travels (whole, or broken on purpose).
    pub delivery: Delivery,
}

/// How a response is sent: whole, or broken the ways networks break it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    #[default]
    Whole,
    /// No answer: the connection is reset (RST) once the request is read.
    Reset,
    /// The head (with the full `Content-Length`) and half the body, then
    /// the connection closes.
    Truncated,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            delay: Duration::ZERO,
            delivery: Delivery::Whole,
        }
    }
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Accept connections forever, one task per connection.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Transient accept errors (EMFILE...) should not kill the bed.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = connection(stream, peer, handler).await;
        });
    }
}

/// [`serve`] over TLS (the API stand-in's HTTPS mode): each connection's
/// handshake, then the same HTTP/1.1 as in plain mode. A client that does
/// not speak TLS (or does not trust the certificate) gets no HTTP answer.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Handler,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = connection(tls, peer, handler).await;
        });
    }
}

/// A connection the server speaks HTTP on: plain TCP, or TLS over TCP.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP connection underneath (for `SO_LINGER`).
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn connection<S: Conn>(
    mut stream: S,
    peer: SocketAddr,
    handler: Handler,
) -> std::io::Result<()> {
    stream.tcp().set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Read until the end of the head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return write_simple(&mut stream, 431, "request head too large").await;
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                // Clean EOF between requests (TLS: answered with close_notify).
                let _ = stream.shutdown().await;
                return Ok(());
            }
        };

        let mut headers_storage = [httparse::EMPTY_HEADER; 96];
        let mut parsed = httparse::Request::new(&mut headers_storage);
        let (method, target, headers) = match parsed.parse(&buf[..head_end]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = parsed.method.unwrap_or("").to_owned();
                let target = parsed.path.unwrap_or("/").to_owned();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                (method, target, headers)
            }
            _ => return write_simple(&mut stream, 400, "malformed request").await,
        };
        buf.drain(..head_end);

        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            match read_chunked(&mut stream, &mut buf).await? {
                Some(b) => b,
                None => return write_simple(&mut stream, 400, "bad chunked body").await,
            }
        } else {
            let len: usize = match get("content-length").map(|v| v.trim().parse()) {
                None => 0,
                Some(Ok(n)) if n <= MAX_BODY => n,
                Some(_) => return write_simple(&mut stream, 400, "bad content-length").await,
            };
            while buf.len() < len {
                if read_more(&mut stream, &mut buf).await? == 0 {
                    return Ok(());
                }
            }
            buf.drain(..len).collect()
        };

        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (target.clone(), String::new()),
        };
        let req = Request {
            method,
            path,
            query,
            headers,
            body,
            peer,
        };
        let resp = handler(req);
        if !resp.delay.is_zero() {
            tokio::time::sleep(resp.delay).await;
        }
        match resp.delivery {
            Delivery::Whole => write_response(&mut stream, &resp, close).await?,
            Delivery::Reset => {
                // SO_LINGER 0: closing sends RST instead of FIN. (Tokio
                // deprecates it because a non-zero linger blocks on drop;
                // zero never does.)
                #[allow(deprecated)]
                let _ = stream.tcp().set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Delivery::Truncated => {
                let mut cut = resp.clone();
                cut.body.truncate(resp.body.len() / 2);
                let head = head_of(&resp, true);
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&cut.body).await?;
                stream.flush().await?;
                return Ok(());
            }
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

async fn read_more<S: Conn>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Decode a chunked body from `buf` (reading more as needed). Trailers are
/// skipped. `None` on a protocol error.
async fn read_chunked<S: Conn>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            if buf.len() > MAX_HEAD || read_more(stream, buf).await? == 0 {
                return Ok(None);
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_str = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            return Ok(None);
        };
        buf.drain(..line_end + 2);
        if size == 0 {
            // Skip trailers up to the empty line.
            loop {
                let end = loop {
                    if let Some(p) = find(buf, b"\r\n") {
                        break p;
                    }
                    if read_more(stream, buf).await? == 0 {
                        return Ok(None);
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Ok(None);
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Ok(None);
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn write_response<S: Conn>(
    stream: &mut S,
    resp: &Response,
    close: bool,
) -> std::io::Result<()> {
    let mut out = head_of(resp, close).into_bytes();
    out.extend_from_slice(&resp.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Status line and headers, `Content-Length` of the whole body included.
fn head_of(resp: &Response, close: bool) -> String {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Date: {}\r\n",
        super::timefmt::http_date(std::time::SystemTime::now())
    ));
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

async fn write_simple<S: Conn>(stream: &mut S, status: u16, msg: &str) -> std::io::Result<()> {
    let resp = Response::new(status, "text/plain", msg);
    write_response(stream, &resp, true).await?;
    stream.shutdown().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
