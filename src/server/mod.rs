//! Client-facing listeners: accept, optional TLS, HTTP/1.1 + HTTP/2 on one
//! port, connection limits, graceful shutdown.
//!
//! Data path entry, the top of the data path (imports `proxy`, `state`,
//! never the control path). [`serve`] takes a listener it was given (it
//! never binds; `bind.rs` does, before anything serves)
//! and a shutdown signal. Each accepted connection gets its own task: an
//! HTTP/2 one (by prior knowledge or ALPN) is served on the `h2` crate
//! directly (`h2.rs`), its streams on that task too (`streams.rs`), not a
//! task each; any other is HTTP/1.1, served by hyper around a [`Proxy`]
//! service. Limits that
//! protect the proxy: at most `max_connections` open connections (further
//! accepts wait), a first-byte and header-read timeout (slowloris, kept
//! by the framing guard), header size and count
//! limits (431), a TLS handshake timeout, and a strict HTTP/1 framing
//! check under hyper (`h1_guard.rs`) that refuses what could be smuggled.
//!
//! An HTTP/1.1 connection that rests between requests is parked
//! (`park.rs`): hyper's buffers are freed and the socket waits for the
//! next request on its own.
//!
//! Shutdown: stop accepting, ask every connection to finish its in-flight
//! requests (HTTP/1.1 stops keep-alive, HTTP/2 sends GOAWAY; a parked
//! connection closes), and wait for them up to the deadline.

pub mod bind;
mod h1_guard;
mod h2;
pub mod nofile;
mod park;
mod proxy_protocol;
mod stall;
mod streams;
pub mod tls;

pub use bind::{bind, bind_admin, Bound, StartError};
use h1_guard::{H1Guard, HeadTimerHere};
use h2::H2Conn;
use park::{Parking, PARK_AFTER};
use stall::SendTimeout;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::proxy::{ClientConn, Proxy, CLIENT_SEND_TIMEOUT};
use crate::shutdown::{accept, stopped};
use crate::state::State;

/// How an HTTP/2 client that vanished without closing (no FIN: a phone
/// that lost its network, a crashed NAT) is found: TCP keepalive probes
/// after this long without traffic, then every [`PROBE_INTERVAL`], and the
/// kernel resets the connection after [`PROBES`] unanswered ones (about a
/// minute). HTTP/2 connections have no idle timeout, so without this one
/// would be held for ever. HTTP/2 PINGs would find it too, but timing them
/// means reading the clock at every frame received (hyper's keep-alive,
/// when it served HTTP/2 here, cost about 1 % of an h2c request,
/// benches/README.md); the kernel's probes cost nothing per request.
/// HTTP/1.1 connections need none: the header-read timeout closes one that
/// rests.
const PROBE_AFTER: Duration = Duration::from_secs(30);
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
const PROBES: u32 = 3;

/// Turns on TCP keepalive probes for an HTTP/2 client connection.
fn probe_when_idle(stream: &TcpStream, peer: SocketAddr) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(PROBE_AFTER)
        .with_interval(PROBE_INTERVAL)
        .with_retries(PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(%peer, error = %e, "TCP keepalive not set");
    }
}

/// The connection settings for one set of limits.
struct Builders {
    /// hyper's HTTP/1.1 server.
    h1: http1::Builder,
    /// The `h2` crate's server.
    h2: ::h2::server::Builder,
}

fn builders(limits: &Limits) -> Builders {
    let mut h1 = http1::Builder::new();
    // The header-read timeout is the framing guard's (`h1_guard.rs`);
    // hyper's is set, to keep how it reads, but never fires.
    h1.timer(HeadTimerHere::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        // Flatten head and body into one buffer and one write(): fewer
        // instructions than queueing iovecs, and bodies streamed in small
        // chunks go out in fewer, larger writes (benches/README.md).
        .writev(false)
        .keep_alive(true);
    Builders {
        h1,
        h2: h2::builder(limits),
    }
}

/// A client connection as [`Connection::serve`] drives it: hyper's
/// HTTP/1.1 connection or an [`H2Conn`] with its streams.
trait Served {
    type Error: std::fmt::Display;

    /// Ready when the connection (and every stream on it) has ended.
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// Finish what is in flight, take nothing new.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<IO> Served for http1::UpgradeableConnection<TokioIo<IO>, TowerToHyperService<Proxy>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Error = hyper::Error;

    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll(cx)
    }

    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Served for H2Conn<IO> {
    type Error = ::h2::Error;

    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ::h2::Error>> {
        self.get_mut().poll(cx)
    }

    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }
}

/// Serves one listener until `shutdown` turns true, then drains its
/// connections for at most the configured shutdown timeout and closes what
/// is left at the deadline. Limits (other than `max_connections`, fixed
/// when the listener starts) and the drain deadline come from the snapshot
/// current at each accept.
pub(crate) async fn serve(bound: Bound, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let Bound { name, listener, tls } = bound;
    // Every connection task is owned here, so the deadline can end them.
    let mut connections = JoinSet::new();
    // Shared by every connection of this listener (it holds a list: the
    // trusted proxies), replaced when a reload changes it.
    let mut limits = Arc::new(state.load().config.limits.clone());
    let mut builders = Arc::new(builders(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let Some((stream, peer)) = accept(&listener, &mut shutdown, &name).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let snapshot = state.load();
        let current = &snapshot.config.limits;
        if *current != *limits {
            limits = Arc::new(current.clone());
            builders = Arc::new(self::builders(&limits));
        }
        let proxy_protocol = snapshot
            .config
            .listeners
            .iter()
            .any(|l| l.name == name && l.proxy_protocol);
        drop(snapshot);
        let conn = Connection {
            builders: Arc::clone(&builders),
            state: Arc::clone(&state),
            shutdown: shutdown.clone(),
            limits: Arc::clone(&limits),
            proxy_protocol,
        };
        let tls = tls.load_full();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            conn.run(stream, peer, tls).await;
            drop(permit);
        });
    }
    drop(listener);
    let drain_timeout = state.load().config.runtime.shutdown_timeout;
    tracing::info!(listener = %name, "stopped accepting; draining connections");
    // Each connection saw the stop: hyper's finish what is in flight,
    // parked ones close.
    let drained = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => tracing::info!(listener = %name, "all connections finished"),
        Err(_) => {
            tracing::warn!(listener = %name, open = connections.len(), "drain deadline passed; closing the rest");
        }
    }
    // Dropping a connection's task closes its socket and frees the slots
    // its requests held.
    connections.shutdown().await;
}

struct Connection {
    builders: Arc<Builders>,
    state: Arc<State>,
    /// The listener's stop: hyper finishes what is in flight (HTTP/1.1
    /// stops keep-alive, HTTP/2 sends GOAWAY), a parked connection closes.
    shutdown: watch::Receiver<bool>,
    limits: Arc<Limits>,
    /// A PROXY protocol header comes first and names the client.
    proxy_protocol: bool,
}

/// nginx's answer to plain HTTP on a TLS port, so a misconfigured client
/// learns why instead of seeing the connection drop.
const PLAIN_HTTP_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 54\r\nx-tidegate-error: bad_request\r\nconnection: close\r\n\r\ntidegate: a plain HTTP request was sent to a TLS port\n";

impl Connection {
    async fn run(self, mut stream: TcpStream, mut peer: SocketAddr, tls: Option<Arc<TlsAcceptor>>) {
        // What the connection shares with the proxy: the tunnel flag the
        // framing guard reads, the HTTP/2 stall accounting.
        let shared = Arc::new(ClientConn::default());
        if self.proxy_protocol {
            let read = proxy_protocol::read_header(&mut stream);
            match tokio::time::timeout(self.limits.header_read_timeout, read).await {
                Ok(Ok(Some(client))) => peer = client,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "PROXY protocol header refused; closing");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no PROXY protocol header in time; closing");
                    return;
                }
            }
        }
        match tls {
            None => {
                // The header-read timeout starts at hyper's first read,
                // once the protocol is known; a client that connects and
                // sends nothing is bounded here instead. The first bytes
                // tell an HTTP/2 connection.
                match h2::starts_with_preface(&stream, self.limits.header_read_timeout).await {
                    Some(true) => {
                        probe_when_idle(&stream, peer);
                        shared.set_h2();
                        let io = SendTimeout::new(stream, self.limits.client_send_timeout, Arc::clone(&shared));
                        // Boxed, as the TLS path: every connection's task
                        // is sized for its largest path.
                        Box::pin(self.serve_h2(io, peer, false, shared)).await
                    }
                    Some(false) => self.run_plain(stream, peer, shared).await,
                    None => {}
                }
            }
            // The TLS path (the handshake's state, the plain-HTTP probe's
            // buffer) is boxed: every connection's task is sized for its
            // largest path, and a plain connection idles in a quarter of it.
            Some(acceptor) => Box::pin(self.run_tls(stream, peer, acceptor, shared)).await,
        }
    }

    /// A plain HTTP/1.1 connection: served by hyper while it works, parked
    /// while it rests, until it closes, rests past the header-read
    /// timeout, or the listener stops.
    async fn run_plain(mut self, mut stream: TcpStream, peer: SocketAddr, shared: Arc<ClientConn>) {
        let send_timeout = self.limits.client_send_timeout;
        loop {
            let guard = H1Guard::new(
                stream,
                self.limits.max_header_bytes,
                self.limits.header_read_timeout,
                Arc::clone(&shared),
            );
            let (io, mut parked) = Parking::new(guard, Arc::clone(&shared));
            let io = SendTimeout::new(io, send_timeout, Arc::clone(&shared));
            // Boxed: a parked connection's task keeps none of hyper's state.
            Box::pin(self.serve_h1(io, peer, false, Arc::clone(&shared))).await;
            // A parked socket is handed back before hyper reads the end of
            // the stream, so it is here now or never (a tunnel keeps the
            // sender and runs on its own).
            let Ok(back) = parked.try_recv() else {
                return;
            };
            stream = back;
            // The rest so far was at least PARK_AFTER; the framing guard
            // would have closed the connection at the header-read timeout
            // (which, if not above PARK_AFTER, closes it before it parks).
            let idle = self.limits.header_read_timeout.saturating_sub(PARK_AFTER);
            let _parked = self.state.count_parked();
            let woke = tokio::select! {
                r = tokio::time::timeout(idle, stream.readable()) => matches!(r, Ok(Ok(()))),
                _ = stopped(&mut self.shutdown) => false,
            };
            if !woke {
                return;
            }
        }
    }

    /// A TLS connection: answers plain HTTP with 400, shakes hands, serves.
    async fn run_tls(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        acceptor: Arc<TlsAcceptor>,
        shared: Arc<ClientConn>,
    ) {
        let send_timeout = self.limits.client_send_timeout;
        // A TLS connection opens with a handshake record (0x16);
        // anything else is most likely plain HTTP on the wrong port.
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.limits.tls_handshake_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 0x16 => {}
            Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Read what was sent first, so closing does not
                // reset the connection before the answer is read.
                let mut request = [0u8; 4096];
                let _ = tokio::time::timeout(self.limits.header_read_timeout, stream.read(&mut request)).await;
                let _ = tokio::time::timeout(send_timeout, stream.write_all(PLAIN_HTTP_ON_TLS_PORT)).await;
                let _ = stream.shutdown().await;
                return;
            }
            _ => return,
        }
        match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    probe_when_idle(tls_stream.get_ref().0, peer);
                    shared.set_h2();
                    let io = SendTimeout::new(tls_stream, send_timeout, Arc::clone(&shared));
                    return self.serve_h2(io, peer, true, shared).await;
                }
                let io = H1Guard::new(
                    tls_stream,
                    self.limits.max_header_bytes,
                    self.limits.header_read_timeout,
                    Arc::clone(&shared),
                );
                let io = SendTimeout::new(io, send_timeout, Arc::clone(&shared));
                self.serve_h1(io, peer, true, shared).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Serves an HTTP/1.1 connection with hyper.
    async fn serve_h1<IO>(&self, io: IO, peer: SocketAddr, tls: bool, shared: Arc<ClientConn>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(Proxy::new(Arc::clone(&self.state), peer, tls, Arc::clone(&shared)));
        let conn = self
            .builders
            .h1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        self.serve(conn, peer, shared).await
    }

    /// Serves an HTTP/2 connection on the `h2` crate.
    async fn serve_h2<IO>(&self, io: IO, peer: SocketAddr, tls: bool, shared: Arc<ClientConn>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = Proxy::new(Arc::clone(&self.state), peer, tls, Arc::clone(&shared));
        self.serve(H2Conn::new(io, &self.builders.h2, proxy), peer, shared)
            .await
    }

    /// Serves the connection until it ends, or until its client stopped
    /// taking what it is sent for `client_send_timeout` (a write that made
    /// no progress, or HTTP/2 responses nobody asked for): then it is
    /// closed, freeing every slot its responses held.
    async fn serve(&self, conn: impl Served, peer: SocketAddr, shared: Arc<ClientConn>) {
        let mut conn = std::pin::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        // Whether the stop signal moved: one atomic load, where polling
        // `stop` takes the watch's lock and its waiter list's mutex.
        let probe = self.shutdown.clone();
        let mut stop = std::pin::pin!(stopped(&mut shutdown));
        let mut stop_polled = false;
        let mut stall = std::pin::pin!(shared.stalled(self.limits.client_send_timeout));
        let mut finishing = false;
        // No select!: this runs at every wake of every connection. `stop`
        // is polled once (its waiter keeps this task's waker, the same at
        // every wake) and again only once the signal has moved; `stall`
        // only on HTTP/2, the one protocol that counts untaken responses.
        let outcome = std::future::poll_fn(|cx| {
            if !finishing && (!stop_polled || probe.has_changed().unwrap_or(true)) {
                stop_polled = true;
                if stop.as_mut().poll(cx).is_ready() {
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
            }
            match conn.as_mut().poll_served(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending if !shared.is_h2() => Poll::Pending,
                Poll::Pending => stall.as_mut().poll(cx).map(|()| None),
            }
        })
        .await;
        let stalled = match outcome {
            Some(r) => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                shared.send_timed_out.load(Ordering::Relaxed)
            }
            None => true,
        };
        if stalled {
            tracing::info!(%peer, timeout = ?self.limits.client_send_timeout, "the client took nothing it was sent; closing the connection");
            self.state.count_error(CLIENT_SEND_TIMEOUT);
        }
    }
}
