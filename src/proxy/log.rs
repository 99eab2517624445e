//! Filling a request's access-log entry as it goes: the request's side at
//! arrival ([`start`]), the response's head once it exists ([`respond`]);
//! the body adds its bytes and sends the entry when it ends
//! (`body.rs`). Data path; only runs when `[access_log]` is set.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{HOST, REFERER, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::Logged;
use super::{Place, Who};
use crate::access_log::{AccessLog, Entry};
use crate::clock::unix_ms;
use crate::config::Priority;

/// The entry as far as the request tells it.
pub(super) fn start(log: &Arc<AccessLog>, req: &Request<Incoming>, who: &Who, request_id: &HeaderValue) -> Box<Logged> {
    let headers = req.headers();
    let has_body = !http_body::Body::is_end_stream(req.body());
    Box::new(Logged {
        log: Arc::clone(log),
        started: Instant::now(),
        bytes_in: has_body.then(|| Arc::new(AtomicU64::new(0))),
        entry: Entry {
            start_unix_ms: unix_ms(),
            request_id: request_id.clone(),
            client: who.ip,
            method: req.method().clone(),
            host: req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| headers.get(HOST).cloned()),
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: headers.get(USER_AGENT).cloned(),
            referer: headers.get(REFERER).cloned(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: std::time::Duration::ZERO,
            queue: std::time::Duration::ZERO,
            pool: None,
            backend: None,
            error: None,
            rate_limit: None,
            priority: None,
            cache: None,
            incomplete: false,
        },
    })
}

/// What routing, admission and the response head added.
pub(super) fn respond(l: &mut Logged, at: &Place, status: StatusCode) {
    l.entry.status = status.as_u16();
    l.entry.queue = at.queued;
    l.entry.backend = at.backend;
    l.entry.pool = at.pool.map(|i| Arc::clone(&at.snapshot.pools[i].name));
    l.entry.priority = at.priority().map(Priority::as_str);
    l.entry.cache = at.cache.map(crate::cache::Outcome::as_str);
}
