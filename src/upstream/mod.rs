//! Keep-alive connections from tidegate to one backend.
//!
//! Data path, below `proxy/` and beside `pool/` (a backend owns one
//! [`Upstream`]); imports nothing above it. HTTP/1.1 (tidegate's own
//! client, `h1.rs`): a lock-free stack of idle connections
//! (`crossbeam_queue::ArrayQueue`); a request pops one that is still open
//! or dials a new one, and the response body hands it back when it has
//! been read to the end (a connection whose body was abandoned is closed,
//! never reused half-read). h2c (hyper's client): one multiplexed
//! connection shared by every request, replaced when it closes.
//!
//! Connecting here, rather than inside a generic client, is what lets the
//! proxy retry another backend after a connect failure with the request
//! still in hand: nothing has been sent yet.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) mod body;
pub(crate) mod h1;
#[cfg(test)]
mod h1_tests;
pub(crate) mod tls;

use body::RequestBody;

/// What a backend's response head may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Bytes (at least 8 KiB, hyper's floor).
    pub(crate) bytes: usize,
    /// Header fields.
    pub(crate) fields: usize,
}

/// Upper bound on idle HTTP/1.1 connections kept per backend, whatever the
/// config says (the stack is allocated once, at this size or smaller).
const IDLE_CAPACITY_CAP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl ConnectError {
    /// Whether the connect failed for want of something of tidegate's own
    /// (file descriptors, buffers, local ports), not because of the
    /// backend: such a failure must never count toward its ejection.
    pub(crate) fn is_local(&self) -> bool {
        // ENOMEM, ENFILE, EMFILE, EADDRNOTAVAIL, ENOBUFS (Linux numbers).
        const LOCAL: [i32; 5] = [12, 23, 24, 99, 105];
        matches!(self, ConnectError::Io(e) if e.raw_os_error().is_some_and(|n| LOCAL.contains(&n)))
    }
}

struct Idle {
    conn: h1::Conn,
    since: Instant,
}

impl Idle {
    /// Closed by the backend, or idle longer than `idle_timeout`.
    fn expired(&mut self, idle_timeout: Duration) -> bool {
        self.since.elapsed() > idle_timeout || !self.conn.is_open()
    }
}

/// A backend's response body, from either client.
pub(crate) enum UpstreamBody {
    H1(h1::Body),
    H2(Incoming),
}

/// Why a backend's response (head or body) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error(transparent)]
    H1(#[from] h1::Error),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl UpstreamBody {
    /// The HTTP/1.1 connection, once the body has ended cleanly and the
    /// connection may carry another request.
    pub(crate) fn reusable(&mut self) -> Option<h1::Conn> {
        match self {
            UpstreamBody::H1(b) => b.reusable(),
            UpstreamBody::H2(_) => None,
        }
    }

    /// Whether [`UpstreamBody::upgraded`] will give a connection.
    pub(crate) fn can_upgrade(&self) -> bool {
        matches!(self, UpstreamBody::H1(b) if b.can_upgrade())
    }

    /// The connection a 101 switched (HTTP/1.1 only).
    pub(crate) fn upgraded(self) -> Option<h1::Upgraded> {
        match self {
            UpstreamBody::H1(b) => b.upgraded(),
            UpstreamBody::H2(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(UpstreamError::from),
            UpstreamBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(UpstreamError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

pub(crate) struct Upstream {
    idle: ArrayQueue<Idle>,
    max_idle: AtomicUsize,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
}

impl Upstream {
    pub(crate) fn new(max_idle: usize) -> Upstream {
        Upstream {
            idle: ArrayQueue::new(max_idle.clamp(1, IDLE_CAPACITY_CAP)),
            max_idle: AtomicUsize::new(max_idle),
            h2: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn set_max_idle(&self, max_idle: usize) {
        self.max_idle.store(max_idle, Ordering::Relaxed);
    }

    /// A pooled HTTP/1.1 connection that is still open and younger than
    /// `idle_timeout`, if there is one.
    pub(crate) fn pooled_h1(&self, idle_timeout: Duration) -> Option<h1::Conn> {
        while let Some(mut idle) = self.idle.pop() {
            if !idle.expired(idle_timeout) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Closes pooled HTTP/1.1 connections idle longer than `idle_timeout`
    /// (or already closed by the backend), so an idle pool holds no
    /// sockets past the timeout. Control path (the health upkeep), at most
    /// one pass over the stack; requests may pop and push meanwhile.
    pub(crate) fn reap(&self, idle_timeout: Duration) -> usize {
        let mut kept = Vec::new();
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            let Some(mut idle) = self.idle.pop() else { break };
            if idle.expired(idle_timeout) {
                closed += 1;
            } else {
                kept.push(idle);
            }
        }
        // Back in the order they left (oldest first): the queue keeps its order.
        for idle in kept {
            let _ = self.idle.push(idle);
        }
        closed
    }

    /// Gives an HTTP/1.1 connection back after its response body was read to
    /// the end. Dropped instead when the pool is full.
    /// The probe (see [`h1::Conn::is_open`]) also leaves no task's waker
    /// registered on an idle socket.
    pub(crate) fn check_in(&self, mut conn: h1::Conn) {
        if self.idle.len() >= self.max_idle.load(Ordering::Relaxed) || !conn.is_open() {
            return;
        }
        let _ = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Dials a new HTTP/1.1 connection, over TLS when `tls` is given.
    pub(crate) async fn connect_h1(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&tls::Target>,
    ) -> Result<h1::Conn, ConnectError> {
        let tcp = dial(addr, connect_timeout).await?;
        Ok(h1::Conn::new(match tls {
            None => h1::Io::Tcp(tcp),
            Some(t) => h1::Io::Tls(Box::new(secure(t, tcp, false, connect_timeout).await?)),
        }))
    }

    /// The shared h2 connection, when it is open and can take a stream.
    pub(crate) fn h2_ready(&self) -> Option<http2::SendRequest<RequestBody>> {
        let current = self.h2.load_full()?;
        (!current.is_closed() && current.is_ready()).then(|| (*current).clone())
    }

    /// Dials a new shared h2 connection and shakes hands on it.
    pub(crate) async fn dial_h2(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&tls::Target>,
    ) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
        let tcp = dial(addr, connect_timeout).await?;
        let sender = match tls {
            None => h2_handshake(TokioIo::new(tcp), addr).await?,
            Some(t) => h2_handshake(TokioIo::new(secure(t, tcp, true, connect_timeout).await?), addr).await?,
        };
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// The TLS handshake with a backend, bounded by the connect timeout.
async fn secure(
    t: &tls::Target,
    tcp: TcpStream,
    h2: bool,
    connect_timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    tokio::time::timeout(connect_timeout, t.connector.connect(t.name.clone(), tcp, h2))
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))?
        .map_err(ConnectError::Tls)
}

async fn h2_handshake<IO>(io: IO, addr: SocketAddr) -> Result<http2::SendRequest<RequestBody>, ConnectError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}

async fn dial(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
