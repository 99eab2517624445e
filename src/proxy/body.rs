//! The body returned to the client, never buffered whole.
//!
//! Data path. [`ResponseBody`] is either the backend's body, carrying the
//! request's in-flight slot and its keep-alive connection until the last
//! byte has gone (so in-flight falls when the response has really finished,
//! and a half-read connection is never reused), or a short body tidegate
//! wrote itself. (The request body on its way to a backend is
//! `upstream::body::RequestBody`.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use crate::pool::InFlight;
use crate::upstream::body::RequestBody;

/// What a finished upstream body gives back.
struct Lease {
    slot: InFlight,
    conn: Option<http1::SendRequest<RequestBody>>,
}

/// The body returned to the client.
pub(crate) struct ResponseBody(Kind);

enum Kind {
    Upstream { inner: Incoming, lease: Option<Lease> },
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// The backend's body, holding the slot (and the HTTP/1.1 connection
    /// to return to the pool) until it ends.
    pub(crate) fn upstream(
        inner: Incoming,
        slot: InFlight,
        conn: Option<http1::SendRequest<RequestBody>>,
    ) -> ResponseBody {
        let mut body = ResponseBody(Kind::Upstream {
            inner,
            lease: Some(Lease { slot, conn }),
        });
        if body.is_end_stream() {
            body.finish();
        }
        body
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody(Kind::Full(Some(bytes.into())))
    }

    pub(crate) fn empty() -> ResponseBody {
        ResponseBody(Kind::Full(None))
    }

    /// The body ended cleanly: the connection may carry another request.
    fn finish(&mut self) {
        if let Kind::Upstream { lease, .. } = &mut self.0 {
            if let Some(Lease { slot, conn }) = lease.take() {
                if let Some(conn) = conn {
                    slot.backend().upstream.check_in(conn);
                }
                drop(slot);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let (inner, lease) = match &mut this.0 {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { inner, lease } => (inner, lease),
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => {
                // Broken upstream body: free the slot, drop the connection.
                lease.take();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
