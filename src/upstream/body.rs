//! The client's request body on its way to a backend, never buffered
//! whole.
//!
//! Data path. [`RequestBody`] streams the client's body through, enforcing
//! the route's size limit as bytes pass; the upstream connections in
//! `mod.rs` are typed on it. It lives here, below the proxy, because the
//! connection pool holds `SendRequest<RequestBody>` handles.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The request body exceeded the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("reading the client's body: {0}")]
    Client(#[from] hyper::Error),
}

/// The client's request body with a byte limit.
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    /// A frame read ahead by [`RequestBody::prime`], sent first.
    first: Option<Frame<Bytes>>,
    limit: u64,
    seen: u64,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            first: None,
            limit,
            seen: 0,
        }
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            first: None,
            limit: 0,
            seen: 0,
        }
    }

    /// Reads the first frame before any backend is involved, so a body
    /// that is malformed from its first byte (a bad chunk size, an HTTP/2
    /// length mismatch) or already over the limit fails here, and the
    /// request never reaches a backend. It also means a slow uploader holds
    /// no backend slot while tidegate waits for its first bytes.
    pub(crate) async fn prime(&mut self) -> Result<(), RequestBodyError> {
        use http_body_util::BodyExt;
        if self.first.is_some() || self.is_end_stream() {
            return Ok(());
        }
        match self.frame().await {
            Some(Ok(frame)) => self.first = Some(frame),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        Ok(())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyTooLarge { limit: this.limit }.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint makes the upstream request length-delimited, as the
        // client's was; chunked stays chunked. A primed frame counts too.
        let inner = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let first = self
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
