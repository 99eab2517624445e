//! Sending one request to one backend over a pooled connection.
//!
//! Data path. HTTP/1.1 takes an idle keep-alive connection or dials one;
//! a pooled connection that turns out to be closed hands the request back
//! unsent and a fresh connection is tried on the same backend. h2c shares
//! one multiplexed connection per backend. A connect failure returns the
//! request untouched, so the caller may try another backend.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use crate::config::{PoolConfig, UpstreamProtocol};
use crate::pool::Backend;
use crate::upstream::body::{BodyTooLarge, RequestBody, RequestBodyError};
use crate::upstream::ConnectError;

pub(super) enum SendError {
    /// Nothing reached the backend; the request comes back for a retry.
    Connect(ConnectError, Box<Request<RequestBody>>),
    Timeout,
    Failed(hyper::Error),
}

pub(super) type Sent = (Response<Incoming>, Option<http1::SendRequest<RequestBody>>);

/// Sends one request to one backend. A pooled HTTP/1.1 connection that
/// turns out to be closed hands the request back unsent, and a fresh
/// connection is tried on the same backend.
pub(super) async fn send(
    cfg: &PoolConfig,
    backend: &Backend,
    mut req: Request<RequestBody>,
) -> Result<Sent, SendError> {
    let up = &backend.upstream;
    let header_timeout = cfg.response_header_timeout;
    match cfg.upstream {
        UpstreamProtocol::Http1 => loop {
            let (mut sender, fresh) = match up.pooled_h1(cfg.idle_timeout).await {
                Some(s) => (s, false),
                None => match up.connect_h1(backend.address, cfg.connect_timeout).await {
                    Ok(s) => (s, true),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            match tokio::time::timeout(header_timeout, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => return Ok((resp, Some(sender))),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    Some(back) => {
                        return Err(SendError::Connect(
                            ConnectError::Handshake(e.into_error()),
                            Box::new(back),
                        ))
                    }
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        },
        UpstreamProtocol::H2c => {
            let mut sender = match up.h2(backend.address, cfg.connect_timeout).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            };
            match tokio::time::timeout(header_timeout, sender.try_send_request(req)).await {
                Err(_) => Err(SendError::Timeout),
                Ok(Ok(resp)) => Ok((resp, None)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => Err(SendError::Connect(
                        ConnectError::Handshake(e.into_error()),
                        Box::new(back),
                    )),
                    None => Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

pub(super) fn is_body_too_large(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<BodyTooLarge>().is_some()
            || matches!(
                s.downcast_ref::<RequestBodyError>(),
                Some(RequestBodyError::TooLarge(_))
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}
