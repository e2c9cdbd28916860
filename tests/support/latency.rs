//! A user-space TCP proxy that adds network latency (this machine's kernel
//! has no netem), and counts round trips.
//!
//! [`DelayProxy::start`] listens on an address and forwards every accepted
//! connection to an upstream address, holding each chunk it reads for a
//! fixed one-way delay `d` before writing it on: a 25 ms delay is a 50 ms
//! round-trip time. Each direction has its own queue of `(read at + d,
//! bytes)` in read order, so byte order is kept, and chunks read together
//! are not merged into one late delivery: every chunk leaves `d` after it
//! arrived (up to a millisecond later: tokio's timer; or later still, if
//! the receiver is slow to read). With no delay, chunks pass at once.
//!
//! The TCP handshake costs what it costs on a network. The upstream
//! connection is opened 3·d after the client connected, when a server's
//! `accept` would return (SYN, SYN-ACK, ACK). The client's `connect`
//! returns at once here, where on a network it would return one RTT (2·d)
//! later, so everything the client does before it hears from the server
//! happens 2·d early: what it sends until then is held 3·d (2·d, plus the
//! trip) instead of d. So a server-first protocol (ssh's banner) reaches
//! the client 2 RTT after its `connect`; a request sent at once on a fresh
//! connection is answered 2 RTT after `connect`; and work the client does
//! between `connect` and its first write (a TLS library seeding its random
//! number generator) is not hidden by the handshake, as on a network.
//!
//! Per connection the proxy counts **turns**: the round trips the client
//! waited for. A turn starts when the client sends after data came from
//! the server (the first client data starts one too), unless that is
//! within one RTT (2·d) of the start of the previous turn: nothing sent in
//! answer to the previous turn can have come back so soon, so the client
//! is still reacting to messages the server sent unprompted in the same
//! flight (ssh's banner and key-exchange offer). One HTTP request and its
//! response are one turn; TLS 1.3 adds one (ClientHello, then Finished
//! with the request); a client that sends without waiting for an answer
//! (pipelining) costs no turn. Turns are counted where the proxy reads, so
//! they follow the real ordering of the exchange; with no delay the
//! one-RTT rule cannot tell a flight from an answer, and the counts can be
//! higher. The TCP handshake is not a turn: [`Totals::connections`] counts
//! those.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks a direction may hold before the proxy stops reading from its
/// sender (a window, as TCP's: the sender then waits).
const QUEUE_CHUNKS: usize = 1024;
const CHUNK: usize = 64 * 1024;

/// What the proxy saw on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Round trips the client waited for (see the module's notes).
    pub turns: u64,
    /// Bytes client → server and server → client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Both directions are finished (or the upstream could not be reached).
    pub closed: bool,
    /// The upstream connection could not be opened.
    pub upstream_failed: bool,
    last: Option<Dir>,
    turn_started: Option<Instant>,
}

/// Sums over every connection the proxy has accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub turns: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Totals {
    /// What happened between `earlier` and `self` (both from the same proxy).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            connections: self.connections - earlier.connections,
            turns: self.turns - earlier.turns,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// client → server
    Up,
    /// server → client
    Down,
}

type Stats = Arc<Mutex<Vec<ConnStats>>>;

/// A running delay proxy (its own thread and tokio runtime); stops on drop.
pub struct DelayProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
    stats: Stats,
    thread: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DelayProxy {
    /// Listen on `listen` (port 0: any free port) and forward to `upstream`
    /// with `one_way` delay in each direction (zero: no delay, but
    /// connections and turns are still counted).
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
    ) -> std::io::Result<DelayProxy> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats: Stats = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("testbed-delay-{addr}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("build the delay proxy's runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener)
                            .expect("register the delay proxy's listener");
                        tokio::select! {
                            _ = accept_loop(listener, upstream, one_way, stats) => {}
                            _ = rx => {}
                        }
                    });
                })?
        };
        Ok(DelayProxy {
            addr,
            upstream,
            delay: one_way,
            stats,
            thread: Some(thread),
            stop: Some(tx),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }
    /// The one-way delay (half the round-trip time it adds).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Every connection so far, in accept order.
    pub fn connections(&self) -> Vec<ConnStats> {
        self.stats.lock().expect("delay proxy stats").clone()
    }

    pub fn totals(&self) -> Totals {
        let conns = self.stats.lock().expect("delay proxy stats");
        Totals {
            connections: conns.len() as u64,
            turns: conns.iter().map(|c| c.turns).sum(),
            bytes_up: conns.iter().map(|c| c.bytes_up).sum(),
            bytes_down: conns.iter().map(|c| c.bytes_down).sum(),
        }
    }

    /// Wait until every connection accepted so far has finished (the
    /// counts are final then). Returns whether they did within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.connections().iter().all(|c| c.closed) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
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

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, delay: Duration, stats: Stats) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let accepted = Instant::now();
        let idx = {
            let mut s = stats.lock().expect("delay proxy stats");
            s.push(ConnStats::default());
            s.len() - 1
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let failed = connection(client, accepted, upstream, delay, &stats, idx)
                .await
                .is_err();
            let mut s = stats.lock().expect("delay proxy stats");
            s[idx].closed = true;
            s[idx].upstream_failed = failed;
        });
    }
}

/// One proxied connection. `Err` only if the upstream could not be reached.
async fn connection(
    client: TcpStream,
    accepted: Instant,
    upstream: SocketAddr,
    delay: Duration,
    stats: &Stats,
    idx: usize,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    // Set once the client has received its first bytes from the server.
    let heard = Arc::new(AtomicBool::new(false));
    let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
    let up_reader = tokio::spawn(read_side(
        client_rd,
        up_tx,
        delay,
        Dir::Up,
        stats.clone(),
        idx,
        heard.clone(),
    ));
    // The server's accept returns when the client's ACK arrives: 1.5 RTT.
    if !delay.is_zero() {
        tokio::time::sleep_until(accepted + delay * 3).await;
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            up_reader.abort();
            return Err(e);
        }
    };
    let _ = server.set_nodelay(true);
    let (server_rd, server_wr) = server.into_split();
    let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);
    let down_reader = tokio::spawn(read_side(
        server_rd,
        down_tx,
        delay,
        Dir::Down,
        stats.clone(),
        idx,
        heard.clone(),
    ));
    let ((), ()) = tokio::join!(
        write_side(up_rx, server_wr, None),
        write_side(down_rx, client_wr, Some(&heard))
    );
    // Both ends have had their end of stream (or a write failed, and a
    // reader may still wait on a peer that stays silent).
    up_reader.abort();
    down_reader.abort();
    Ok(())
}

/// Read chunks, stamp each with its delivery time, count turns and bytes;
/// a `None` marks the end of the stream (EOF or an error). Client chunks
/// sent before the client `heard` from the server wait 3·d (see the top).
#[allow(clippy::too_many_arguments)]
async fn read_side(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Option<Vec<u8>>)>,
    delay: Duration,
    dir: Dir,
    stats: Stats,
    idx: usize,
    heard: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rd.read(&mut buf).await.unwrap_or(0);
        let early = dir == Dir::Up && !heard.load(Ordering::SeqCst);
        let at = Instant::now() + if early { delay * 3 } else { delay };
        if n == 0 {
            let _ = tx.send((at, None)).await;
            return;
        }
        {
            let mut s = stats.lock().expect("delay proxy stats");
            let c = &mut s[idx];
            match dir {
                Dir::Up => {
                    let now = Instant::now();
                    let new_turn = match c.turn_started {
                        None => true,
                        Some(t) => c.last == Some(Dir::Down) && now - t >= delay * 2,
                    };
                    if new_turn {
                        c.turns += 1;
                        c.turn_started = Some(now);
                    }
                    c.bytes_up += n as u64;
                }
                Dir::Down => c.bytes_down += n as u64,
            }
            c.last = Some(dir);
        }
        if tx.send((at, Some(buf[..n].to_vec()))).await.is_err() {
            // The other side is gone; stop reading.
            return;
        }
    }
}

/// Deliver each chunk at its time; at the end, half-close (FIN) the
/// receiver's side. `heard` (the client's side) is set after the first
/// delivery.
async fn write_side(
    mut rx: mpsc::Receiver<(Instant, Option<Vec<u8>>)>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    heard: Option<&AtomicBool>,
) {
    while let Some((at, chunk)) = rx.recv().await {
        // No sleep when due: a zero delay costs no timer tick.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        match chunk {
            Some(bytes) => {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
                if let Some(heard) = heard {
                    heard.store(true, Ordering::SeqCst);
                }
            }
            None => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}
