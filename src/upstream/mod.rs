//! Keep-alive connections from tidegate to one backend.
//!
//! Data path, below `proxy/` and beside `pool/` (a backend owns one
//! [`Upstream`]); imports nothing above it. HTTP/1.1: a lock-free stack of idle `SendRequest` handles
//! (`crossbeam_queue::ArrayQueue`); a request pops one or dials a new
//! connection, and the response body hands it back when it has been read to
//! the end (a connection whose body was abandoned is closed, never reused
//! half-read). h2c: one multiplexed connection shared by every request,
//! replaced when it closes.
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
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) mod body;
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
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Idle {
    /// Closed by the backend, or idle longer than `idle_timeout`.
    fn expired(&self, idle_timeout: Duration) -> bool {
        self.sender.is_closed() || self.since.elapsed() > idle_timeout
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
    pub(crate) async fn pooled_h1(&self, idle_timeout: Duration) -> Option<http1::SendRequest<RequestBody>> {
        while let Some(idle) = self.idle.pop() {
            if idle.expired(idle_timeout) {
                continue;
            }
            let mut sender = idle.sender;
            if sender.is_ready() {
                return Some(sender);
            }
            // Just handed back: its connection task has not yet noticed the
            // previous exchange finished. That takes one task wake-up.
            if tokio::time::timeout(Duration::from_millis(100), sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Some(sender);
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
            let Some(idle) = self.idle.pop() else { break };
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
    pub(crate) fn check_in(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() || self.idle.len() >= self.max_idle.load(Ordering::Relaxed) {
            return;
        }
        let _ = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Dials a new HTTP/1.1 connection (with upgrade support, for WebSocket),
    /// over TLS when `tls` is given. A response head may take at most
    /// `head` bytes and `headers` fields; the read buffer never grows past
    /// `head` either, which bounds what a response to a slow client holds
    /// here.
    pub(crate) async fn connect_h1(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        head: HeadLimits,
        tls: Option<&tls::Target>,
    ) -> Result<http1::SendRequest<RequestBody>, ConnectError> {
        let tcp = dial(addr, connect_timeout).await?;
        let mut builder = http1::Builder::new();
        // One flattened write, as the client-facing server does (see
        // server/mod.rs).
        builder.max_buf_size(head.bytes).max_headers(head.fields).writev(false);
        match tls {
            None => h1_handshake(&builder, TokioIo::new(tcp), addr).await,
            Some(t) => {
                let stream = secure(t, tcp, false, connect_timeout).await?;
                h1_handshake(&builder, TokioIo::new(stream), addr).await
            }
        }
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

async fn h1_handshake<IO>(
    builder: &http1::Builder,
    io: IO,
    addr: SocketAddr,
) -> Result<http1::SendRequest<RequestBody>, ConnectError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = builder.handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
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
