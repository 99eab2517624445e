//! The one place where a failed request becomes an HTTP response and a
//! metric label.
//!
//! Data path. Every error the proxy can meet is a [`ProxyError`]; the
//! handler turns it into a short plain-text answer that says which failure
//! it was, with the status an operator expects from a proxy: 400/413 for
//! bad input, 404 when no route matches, 429 (+ `Retry-After`) when a
//! client is over a rate limit, 502 when a backend could not be reached or
//! broke the exchange, 503 (+ `Retry-After`) when there is no capacity, 504
//! when a backend was too slow to answer.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::pool::{AdmitError, QueueError};
use crate::upstream::ConnectError;

/// Every error label, indexed by [`ProxyError::index`]. Those whose
/// [`CODES`] entry is 0 are failures after the response head was sent
/// (nothing can be answered then): they are counted and logged, never sent.
pub(crate) const REASONS: [&str; 18] = [
    "bad_request",
    "payload_too_large",
    "no_route",
    "no_backend",
    "queue_full",
    "queue_timeout",
    "connect_failed",
    "response_timeout",
    "upstream_failed",
    "method_not_allowed",
    "client_body_timeout",
    "client_aborted",
    "upstream_invalid",
    "client_send_timeout",
    "upstream_read_timeout",
    "tunnel_idle_timeout",
    "rate_limited",
    "queue_evicted",
];

/// The status tidegate answers for each reason of [`REASONS`] (0: a
/// failure after the head, which has its own status already).
pub(crate) const CODES: [u16; 18] = [
    400, 413, 404, 503, 503, 503, 502, 504, 502, 405, 408, 499, 502, 0, 0, 0, 429, 503,
];

/// Indices into [`REASONS`] of the failures after the head.
pub(crate) const CLIENT_SEND_TIMEOUT: usize = 13;
pub(crate) const UPSTREAM_READ_TIMEOUT: usize = 14;
pub(crate) const TUNNEL_IDLE_TIMEOUT: usize = 15;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no backend available")]
    NoBackend,
    #[error("queue full")]
    QueueFull,
    #[error("timed out waiting in the queue")]
    QueueTimeout,
    /// A critical request took this request's place in a full queue.
    #[error("evicted from the queue by a critical request")]
    QueueEvicted,
    #[error("could not connect to a backend: {0}")]
    Connect(#[from] ConnectError),
    #[error("backend did not send a response head in time")]
    ResponseTimeout,
    #[error("backend failed: {0}")]
    Upstream(crate::upstream::UpstreamError),
    /// CONNECT: tidegate is a reverse proxy, not a tunnel to anywhere.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The client stopped sending its body (`client_body_timeout`).
    #[error("the client's upload made no progress")]
    ClientBodyTimeout,
    /// The client went away mid-upload (closed, reset).
    #[error("the client aborted its request")]
    ClientAborted,
    /// The backend answered something no proxy may pass on (a `101` to a
    /// request that did not ask for that protocol).
    #[error("backend sent an invalid response: {0}")]
    UpstreamInvalid(&'static str),
    /// The client is over the `[[rate_limit]]` named `rule`; a request
    /// would pass in `retry_after` seconds.
    #[error("over the rate limit `{rule}`")]
    RateLimited { rule: Arc<str>, retry_after: u64 },
}

impl From<AdmitError> for ProxyError {
    fn from(e: AdmitError) -> ProxyError {
        match e {
            AdmitError::NoBackend => ProxyError::NoBackend,
            AdmitError::Queue(QueueError::Full) => ProxyError::QueueFull,
            AdmitError::Queue(QueueError::Timeout(_)) => ProxyError::QueueTimeout,
            AdmitError::Queue(QueueError::Evicted) => ProxyError::QueueEvicted,
        }
    }
}

impl ProxyError {
    /// The status answered: [`CODES`] at [`ProxyError::index`] (499, as
    /// nginx's, for a client that aborted: nobody reads it, but logs and
    /// counters say who ended the exchange).
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(CODES[self.index()]).expect("every error before the head has a status")
    }

    /// Stable label for the `x-tidegate-error` header, logs and the
    /// `reason` of `tidegate_proxy_errors_total`.
    pub(crate) fn label(&self) -> &'static str {
        REASONS[self.index()]
    }

    /// Position of [`ProxyError::label`] in [`REASONS`] (the per-pool error
    /// counters are indexed by it).
    pub(crate) fn index(&self) -> usize {
        match self {
            ProxyError::BadRequest(_) => 0,
            ProxyError::PayloadTooLarge => 1,
            ProxyError::NoRoute => 2,
            ProxyError::NoBackend => 3,
            ProxyError::QueueFull => 4,
            ProxyError::QueueTimeout => 5,
            ProxyError::Connect(_) => 6,
            ProxyError::ResponseTimeout => 7,
            ProxyError::Upstream(_) => 8,
            ProxyError::MethodNotAllowed => 9,
            ProxyError::ClientBodyTimeout => 10,
            ProxyError::ClientAborted => 11,
            ProxyError::UpstreamInvalid(_) => 12,
            ProxyError::RateLimited { .. } => 16,
            ProxyError::QueueEvicted => 17,
        }
    }

    pub(crate) fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        if status.is_server_error() {
            tracing::debug!(error = %self, "request failed");
        }
        // The client learns which failure it was, never the internals
        // behind it (addresses, OS errors): those go to the log above.
        let body = match &self {
            ProxyError::BadRequest(why) => format!("tidegate: bad request: {why}\n"),
            other => format!("tidegate: {}\n", other.label()),
        };
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            http::HeaderName::from_static("x-tidegate-error"),
            HeaderValue::from_static(self.label()),
        );
        if matches!(
            self,
            ProxyError::QueueFull | ProxyError::QueueTimeout | ProxyError::QueueEvicted | ProxyError::NoBackend
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::RateLimited { retry_after, .. } = &self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
            );
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::PayloadTooLarge
                | ProxyError::MethodNotAllowed
                | ProxyError::ClientBodyTimeout
                | ProxyError::ClientAborted
        ) {
            // The rest of the request may still be on the wire, unread.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
