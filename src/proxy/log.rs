//! Filling a request's access-log line as it goes: the request's side
//! written at arrival ([`start`]), the response's head once it exists
//! ([`respond`]); the body adds its bytes and sends the line when it ends
//! (`body.rs`). Data path; only runs when `[access_log]` is set.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{HOST, REFERER, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use tokio::time::Instant;

use super::body::Logged;
use super::{Place, Who};
use crate::access_log::{AccessLog, Arrival, Outcome};
use crate::clock::unix_ms;
use crate::config::Priority;
use crate::upstream::body::ClientBody;

/// The line as far as the request tells it.
pub(super) fn start(
    log: &Arc<AccessLog>,
    req: &Request<ClientBody>,
    who: &Who,
    request_id: &HeaderValue,
) -> Box<Logged> {
    let headers = req.headers();
    let has_body = !http_body::Body::is_end_stream(req.body());
    let uri = req.uri();
    let line = log.begin(&Arrival {
        unix_ms: unix_ms(),
        request_id: request_id.as_bytes(),
        client: who.ip,
        method: req.method().as_str(),
        host: uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| headers.get(HOST).map(HeaderValue::as_bytes)),
        target: uri.path_and_query().map_or("/", |p| p.as_str()),
        version: req.version(),
        user_agent: headers.get(USER_AGENT).map(HeaderValue::as_bytes),
        referer: headers.get(REFERER).map(HeaderValue::as_bytes),
    });
    Box::new(Logged {
        log: Arc::clone(log),
        line,
        outcome: Outcome::default(),
        started: Instant::now(),
        bytes_in: has_body.then(|| Arc::new(AtomicU64::new(0))),
    })
}

/// What routing, admission and the response head added.
pub(super) fn respond(l: &mut Logged, at: &Place, status: StatusCode) {
    let o = &mut l.outcome;
    o.status = status.as_u16();
    o.queue = at.queued;
    o.backend = at.backend;
    o.pool = at.pool.map(|i| Arc::clone(&at.snapshot.pools[i].name));
    o.priority = at.priority().map(Priority::as_str);
    o.cache = at.cache.map(crate::cache::Outcome::as_str);
}
