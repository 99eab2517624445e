//! Sending one request to one backend over a pooled connection.
//!
//! Data path. HTTP/1.1 takes an idle keep-alive connection or dials one;
//! a pooled connection that turns out to be closed hands the request back
//! unsent and a fresh connection is tried on the same backend. h2c shares
//! one multiplexed connection per backend. A connect failure returns the
//! request untouched, so the caller may try another backend.

use http::{Request, Response};

use super::error::ProxyError;
use super::headers::Forwarded;
use crate::config::{PoolConfig, UpstreamProtocol};
use crate::pool::Backend;
use crate::upstream::body::{BodyTooLarge, ClientBodyError, RequestBody, RequestBodyError};
use crate::upstream::{h1, ConnectError, HeadLimits, UpstreamBody, UpstreamError};

pub(super) enum SendError {
    /// Nothing reached the backend; the request comes back for a retry.
    Connect(ConnectError, Box<Request<RequestBody>>),
    /// No response head within `response_header` of the body being sent.
    Timeout,
    /// The exchange broke (the request may have reached the backend).
    Failed(UpstreamError),
    /// The backend answered something that must not be passed on.
    Invalid(&'static str),
}

pub(super) type Sent = Response<UpstreamBody>;

/// Sends one request to one backend. A pooled HTTP/1.1 connection that
/// turns out to be closed hands the request back unsent, and a fresh
/// connection is tried on the same backend. The backend has
/// `response_header` to answer, counted from when the request body has been
/// sent (a slow upload is the client's time, not the backend's; Envoy
/// counts the same way): over HTTP/1.1 the connection keeps that deadline
/// (`h1::send`), over h2c a timer here does.
pub(super) async fn send(
    cfg: &PoolConfig,
    head: HeadLimits,
    backend: &Backend,
    mut req: Request<RequestBody>,
    forwarded: &Forwarded,
) -> Result<Sent, SendError> {
    let up = &backend.upstream;
    let header_timeout = cfg.response_header_timeout;
    let mut resent = false;
    match cfg.upstream {
        UpstreamProtocol::Http1 => loop {
            // After a crossed close, a new connection (not another pooled
            // one, which may be as stale).
            let pooled = if resent { None } else { up.pooled_h1(cfg.idle_timeout) };
            let (conn, fresh) = match pooled {
                Some(c) => (c, false),
                // Dialing (and a TLS handshake) is a large future and a
                // rare one: boxed, so every request's future (copied into
                // its box per request) stays small.
                None => match Box::pin(up.connect_h1(backend.address, cfg.connect_timeout, backend.tls().as_deref()))
                    .await
                {
                    Ok(c) => (c, true),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            match h1::send(conn, req, forwarded.iter(), head, header_timeout).await {
                Ok(resp) => return Ok(resp.map(UpstreamBody::H1)),
                // A pooled connection the backend had just closed: the
                // request never left, so a fresh connection may carry it.
                Err(h1::SendError::Unsent(_, back)) if !fresh => req = *back,
                Err(h1::SendError::Unsent(e, back)) => return Err(SendError::Connect(ConnectError::Io(e), back)),
                // The backend's idle close crossed an idempotent request on
                // a kept-alive connection: once more, on a new connection.
                // (A stale connection is not the backend failing: this is
                // not the pool's `retry_idempotent`, which is off by default.)
                Err(h1::SendError::Closed(back)) if !fresh && !resent && back.method().is_idempotent() => {
                    resent = true;
                    req = *back;
                }
                Err(h1::SendError::Closed(_)) => return Err(SendError::Failed(h1::Error::Closed.into())),
                Err(h1::SendError::Failed(h1::Error::Invalid(why))) => return Err(SendError::Invalid(why)),
                Err(h1::SendError::Failed(h1::Error::Timeout)) => return Err(SendError::Timeout),
                Err(h1::SendError::Failed(e)) => return Err(SendError::Failed(e.into())),
            }
        },
        UpstreamProtocol::H2c => {
            let mut sender = match up.h2_ready() {
                Some(s) => s,
                None => {
                    let tls = backend.tls();
                    match Box::pin(up.dial_h2(backend.address, cfg.connect_timeout, tls.as_deref())).await {
                        Ok(s) => s,
                        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                    }
                }
            };
            // Into the request's map only now: a request that comes back
            // unsent may be routed next to an HTTP/1.1 pool, which writes
            // the fields itself.
            forwarded.insert_into(req.headers_mut());
            let sent = req.body().sent();
            let answer_by = async move {
                sent.await;
                tokio::time::sleep(header_timeout).await;
            };
            let result = tokio::select! {
                r = sender.try_send_request(req) => r,
                _ = answer_by => return Err(SendError::Timeout),
            };
            match result {
                Ok(resp) => Ok(resp.map(UpstreamBody::H2)),
                Err(mut e) => match e.take_message() {
                    Some(mut back) => {
                        forwarded.remove_from(back.headers_mut());
                        Err(SendError::Connect(
                            ConnectError::Handshake(e.into_error()),
                            Box::new(back),
                        ))
                    }
                    None => Err(SendError::Failed(e.into_error().into())),
                },
            }
        }
    }
}

/// The client's part in a failed exchange: `Some` when the request body
/// failed on the client's side (too large, too slow, malformed, aborted),
/// so the backend is not to blame; `None` when the backend broke it.
pub(super) fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<BodyTooLarge>().is_some() {
            return Some(ProxyError::PayloadTooLarge);
        }
        if let Some(b) = s.downcast_ref::<RequestBodyError>() {
            return Some(body_error(b));
        }
        if let Some(UpstreamError::H1(h1::Error::BodyLength)) = s.downcast_ref::<UpstreamError>() {
            return Some(ProxyError::BadRequest(
                "request body length does not match its Content-Length",
            ));
        }
        source = s.source();
    }
    None
}

/// What a failed client body means for the client.
pub(super) fn body_error(e: &RequestBodyError) -> ProxyError {
    match e {
        RequestBodyError::TooLarge(_) => ProxyError::PayloadTooLarge,
        RequestBodyError::Timeout(_) => ProxyError::ClientBodyTimeout,
        RequestBodyError::Client(h) if client_went_away(h) => ProxyError::ClientAborted,
        RequestBodyError::Client(_) => ProxyError::BadRequest("malformed request body"),
    }
}

/// Whether a client body error means the client left (closed, reset,
/// cancelled its stream) rather than sent something malformed.
fn client_went_away(e: &ClientBodyError) -> bool {
    let h1 = match e {
        ClientBodyError::H1(h1) => h1,
        ClientBodyError::H2(h2) => return h2_went_away(h2),
    };
    if h1.is_incomplete_message() || h1.is_canceled() || h1.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(h1);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
            );
        }
        source = s.source();
    }
    false
}

/// Whether an HTTP/2 stream error is the client leaving: its connection
/// gone, or its stream cancelled or refused.
fn h2_went_away(e: &h2::Error) -> bool {
    e.is_io()
        || e.is_go_away()
        || matches!(
            e.reason(),
            Some(h2::Reason::CANCEL | h2::Reason::NO_ERROR | h2::Reason::REFUSED_STREAM)
        )
}
