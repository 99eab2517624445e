//! The client's request body on its way to a backend, never buffered
//! whole.
//!
//! Data path. [`RequestBody`] streams the client's body through, enforcing
//! the route's size limit as bytes pass and `client_body_timeout` between
//! two reads (an upload that makes no progress is cut, as nginx's
//! `client_body_timeout` does); the upstream connections in `mod.rs` are
//! typed on it. It lives here, below the proxy, because the connection pool
//! holds `SendRequest<RequestBody>` handles. When its last byte has left,
//! it says so ([`RequestBody::sent`]): the backend's time to answer is
//! counted from then, not from the start of a slow upload.
//!
//! What it streams is a [`ClientBody`]: hyper's body on an HTTP/1.1
//! connection, the `h2` crate's stream on an HTTP/2 one (the server serves
//! HTTP/2 on `h2` directly).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The request body exceeded the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// Why the client's body stopped: always the client's doing, never the
/// backend's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("the client sent no body bytes for {0:?}")]
    Timeout(Duration),
    #[error("reading the client's body: {0}")]
    Client(#[from] ClientBodyError),
}

/// A client's body that failed as it was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    #[error(transparent)]
    H1(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// The client's body as its connection delivers it.
pub(crate) enum ClientBody {
    /// HTTP/1.1, through hyper.
    H1(Incoming),
    /// HTTP/2, the `h2` crate's stream.
    H2(H2Body),
}

/// An HTTP/2 request's body: its DATA frames, then its trailers. Each
/// frame handed on gives its bytes back to the client's flow-control
/// window, so an upload streams at the backend's pace. It gives no size:
/// a declared length travels in the request's `content-length`, which the
/// upstream request keeps (and `h2` holds the frames to it).
pub(crate) struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl H2Body {
    pub(crate) fn new(recv: h2::RecvStream) -> H2Body {
        H2Body { recv, data_done: false }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) stops the body early without failing
                // it (RFC 9113 8.1, as hyper reads it). Any other reset,
                // CANCEL above all, is an upload the client abandoned: it
                // fails, so the backend never takes it for whole.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// The client's request body with a byte limit and an idle timer.
///
/// A request without a body (most of them) is `None` and allocates
/// nothing; one with a body is boxed. Either way the upstream request is
/// small: it is moved through the upstream connection's request channel,
/// whose blocks hold 32 of them per connection (a 208-byte body inline
/// made each block 14.8 KB; benches/README.md).
pub(crate) struct RequestBody(Option<Box<Streaming>>);

/// A body that is still coming.
struct Streaming {
    inner: Option<ClientBody>,
    /// A frame read ahead by [`RequestBody::prime`], sent first.
    first: Option<Frame<Bytes>>,
    limit: u64,
    seen: u64,
    idle: Duration,
    /// Allocated on the first wait for the client, then re-armed.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Notified once when the last byte has been handed on.
    sent: Option<Arc<Notify>>,
    /// Counters the bytes read are added to when the body is done with
    /// (the pool's total, the request's access-log entry).
    tallies: Tallies,
}

/// Where a request body's byte count goes when it is dropped.
#[derive(Default)]
pub(crate) struct Tallies {
    pub(crate) pool: Option<Arc<AtomicU64>>,
    pub(crate) request: Option<Arc<AtomicU64>>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // Whatever was not sent will not be: the backend's time to answer
        // runs from here (a dropped upload must not leave it unarmed).
        self.finished();
        if self.seen > 0 {
            for t in [&self.tallies.pool, &self.tallies.request].into_iter().flatten() {
                t.fetch_add(self.seen, Ordering::Relaxed);
            }
        }
    }
}

impl RequestBody {
    /// Streams `inner`, at most `limit` bytes, cut after `idle` without a
    /// byte from the client.
    pub(crate) fn new(inner: ClientBody, limit: u64, idle: Duration, tallies: Tallies) -> RequestBody {
        if inner.is_end_stream() {
            return RequestBody::empty();
        }
        RequestBody(Some(Box::new(Streaming {
            inner: Some(inner),
            first: None,
            limit,
            seen: 0,
            idle,
            timer: None,
            armed: false,
            sent: Some(Arc::new(Notify::new())),
            tallies,
        })))
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody(None)
    }

    /// Completes once the whole body has been handed to the backend
    /// connection (at once for a bodiless request).
    pub(crate) fn sent(&self) -> impl Future<Output = ()> + Send + 'static {
        let sent = self.0.as_ref().and_then(|s| s.sent.clone());
        async move {
            if let Some(n) = sent {
                n.notified().await;
            }
        }
    }

    /// Reads the first frame before any backend is involved, so a body
    /// that is malformed from its first byte (a bad chunk size, an HTTP/2
    /// length mismatch) or already over the limit fails here, and the
    /// request never reaches a backend. It also means a slow uploader holds
    /// no backend slot while tidegate waits for its first bytes.
    pub(crate) async fn prime(&mut self) -> Result<(), RequestBodyError> {
        let Some(s) = self.0.as_deref_mut() else {
            return Ok(());
        };
        if s.first.is_some() || s.is_end_stream() {
            return Ok(());
        }
        match std::future::poll_fn(|cx| s.poll_frame(cx)).await {
            Some(Ok(frame)) => s.first = Some(frame),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        Ok(())
    }
}

impl Streaming {
    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.client_done()
    }

    /// Nothing more to read from the client (its body ended, or was cut).
    fn client_done(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn finished(&mut self) {
        if let Some(n) = self.sent.take() {
            n.notify_one();
        }
    }

    /// Waiting on the client: runs the idle timer; `Ready` when it expired.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.idle;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        if let Some(frame) = self.first.take() {
            if self.client_done() {
                self.finished();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(inner) = self.inner.as_mut() else {
            self.finished();
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.inner = None;
                        return Poll::Ready(Some(Err(BodyTooLarge { limit: self.limit }.into())));
                    }
                }
                if self.client_done() {
                    self.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.idle_expired(cx) {
                    self.inner = None;
                    return Poll::Ready(Some(Err(RequestBodyError::Timeout(self.idle))));
                }
                Poll::Pending
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.as_deref_mut() {
            Some(this) => this.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_deref().is_none_or(Streaming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint makes the upstream request length-delimited, as the
        // client's was; chunked stays chunked. A primed frame counts too.
        let Some(this) = self.0.as_deref() else {
            return SizeHint::with_exact(0);
        };
        let inner = this
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let first = this
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_request_carries_its_body_in_one_word() {
        // hyper's client moves each request through a channel whose blocks
        // hold 32 of them for the life of the connection: every byte here
        // is 64 bytes per upstream connection.
        assert_eq!(size_of::<RequestBody>(), size_of::<usize>());
        assert!(size_of::<http::Request<RequestBody>>() <= size_of::<http::request::Parts>() + 8);
        assert!(RequestBody::empty().is_end_stream());
        assert_eq!(RequestBody::empty().size_hint().exact(), Some(0));
    }
}
