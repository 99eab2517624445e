//! A cached route's requests: served from the micro-cache, or fetched once
//! for every client asking at the same time.
//!
//! Data path, inside `proxy` (it calls the handler's `upstream` and
//! `attempts`), over `cache` (store, flights, RFC 9111 rules). For each
//! request of a route with `cache = { ... }`:
//! 1. a request that may not use the cache (not GET/HEAD, a body, an
//!    upgrade, a `bypass_cookies` cookie) goes upstream as usual: BYPASS;
//! 2. a fresh object is served with its `Age`: HIT. It takes no backend
//!    slot and the pool counts no arrival, so the autoscaler sizes for
//!    misses only;
//! 3. a stale object within its grace is served at once, and the first
//!    such request starts one background refresh: STALE
//!    (stale-while-revalidate). A refresh that fails (no answer, 5xx)
//!    leaves the stale object in place (stale-if-error) and lets the next
//!    stale request try again;
//! 4. a miss joins the key's flight: the first becomes the leader and
//!    fetches on a task of its own (a client that leaves does not cancel
//!    the fetch for the others); the rest wait up to `lock_timeout` for
//!    the object (HIT), else go upstream themselves: MISS. An answer that
//!    may not be stored releases them at once and marks the key
//!    hit-for-miss for `ttl`, so later misses do not queue.
//!
//! `Cache-Control: no-cache` on a request makes it a miss that refreshes
//! the stored object for everyone (it joins, or leads, the key's flight).
//! The fetch is always a GET without the client's conditional or range
//! fields, so the stored object is the whole representation.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::body::{ResponseBody, ResponseBodyError};
use super::request::{content_length, head_of, request_host, upstream_request};
use super::{affinity, attempts, upstream, ConnContext, Place, Plan, ProxyError, Who};
use crate::cache::rules::{self, NotStored};
use crate::cache::{variant_of, Cache, Landing, Leader, Object, Outcome, Role, Usable};
use crate::config::CacheConfig;
use crate::upstream::body::{ClientBody, RequestBody};

/// The response field that says what the cache did.
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Request fields the fetch leaves out: the stored object must be the whole
/// representation, whatever the first client already had.
const NOT_FETCHED: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// The key a request's object sits under: its variant key from
/// [`Cache::lookup`], or else the base key itself.
fn key_of(variant: Option<Arc<str>>, base: &str) -> Arc<str> {
    variant.unwrap_or_else(|| base.into())
}

/// Serves one request of a cached route.
pub(super) async fn serve(
    conn: &Arc<ConnContext>,
    req: Request<ClientBody>,
    who: &Who,
    at: &mut Place,
    policy: &Arc<CacheConfig>,
    cache: &Arc<Cache>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let pool = Arc::clone(&at.snapshot.pools[at.pool.expect("routed")].name);
    let has_body = !http_body::Body::is_end_stream(req.body());
    if !rules::may_use(req.method(), req.headers(), has_body, policy) {
        note(cache, &pool, at, Outcome::Bypass, false);
        return upstream(conn, req, who, at).await;
    }
    let head_only = req.method() == Method::HEAD;
    let base = rules::base_key(
        conn.tls,
        request_host(&req),
        req.uri().path(),
        req.uri().query(),
        &policy.ignore_query,
    );
    let now = Instant::now();
    // The variant key, when the base key's responses vary; the base key
    // itself is built only when needed (a fresh hit does not need it).
    let (variant, found) = cache.lookup(&base, req.headers());
    if let Some(object) = found.filter(|_| !rules::wants_refresh(req.headers())) {
        match object.usable(now) {
            Usable::Fresh => {
                note(cache, &pool, at, Outcome::Hit, false);
                return Ok(answer(&object, now, head_only));
            }
            Usable::Stale => {
                if object.claim_refresh() {
                    cache.count_refresh();
                    let key = key_of(variant, &base);
                    let job = Fetch::new(conn, &req, who, at, policy, cache, base, key, None);
                    // Boxed, as the leader's below.
                    tokio::spawn(Box::pin(job.run(Some(Arc::clone(&object)))));
                }
                note(cache, &pool, at, Outcome::Stale, false);
                return Ok(answer(&object, now, head_only));
            }
            Usable::Dead => {}
        }
    }
    let key = key_of(variant, &base);
    if cache.passing(&key, now) {
        note(cache, &pool, at, Outcome::Miss, false);
        return upstream(conn, req, who, at).await;
    }
    match cache.join(&key) {
        Role::Leader(leader) => {
            let job = Fetch::new(conn, &req, who, at, policy, cache, base, key, Some(leader));
            let (tx, rx) = oneshot::channel();
            // Boxed: the fetch (an upstream exchange) is kilobytes that
            // spawning would otherwise copy through each of its layers.
            let run = Box::pin(job.run(None));
            tokio::spawn(async move {
                let _ = tx.send(run.await);
            });
            let Ok((fetched, place)) = rx.await else {
                return Err(ProxyError::UpstreamInvalid("the cache's fetch ended without an answer"));
            };
            at.backend = place.backend;
            at.queued = place.queued;
            note(cache, &pool, at, Outcome::Miss, false);
            fetched.map(|f| match f {
                Fetched::Object(object) => answer(&object, Instant::now(), head_only),
                Fetched::Passed(resp) => *resp,
            })
        }
        Role::Follower(follower) => match follower.wait(policy.lock_timeout).await {
            Some(Landing::Stored(stored, object)) if variant_of(&base, &object, req.headers()) == stored => {
                note(cache, &pool, at, Outcome::Hit, true);
                Ok(answer(&object, Instant::now(), head_only))
            }
            _ => {
                note(cache, &pool, at, Outcome::Miss, true);
                upstream(conn, req, who, at).await
            }
        },
    }
}

/// Records what the cache did with a request (counts, `x-cache`, the
/// access log).
fn note(cache: &Cache, pool: &Arc<str>, at: &mut Place, outcome: Outcome, coalesced: bool) {
    cache.count(pool, outcome, coalesced);
    at.cache = Some(outcome);
}

/// A stored object as a response, with its current `Age`.
fn answer(object: &Object, now: Instant, head_only: bool) -> Response<ResponseBody> {
    let body = if head_only || object.body.is_empty() {
        ResponseBody::empty()
    } else {
        ResponseBody::full(object.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = object.status;
    *resp.headers_mut() = object.headers.clone();
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(object.age(now).as_secs()));
    resp
}

/// What a fetch gives its leader.
enum Fetched {
    Object(Arc<Object>),
    /// An answer that was not stored, passed on as it came (a body over
    /// `max_object` continues where the buffering stopped).
    Passed(Box<Response<ResponseBody>>),
}

/// One upstream request for a key, run on a task of its own.
struct Fetch {
    conn: Arc<ConnContext>,
    request: Request<RequestBody>,
    who: Who,
    at: Place,
    policy: Arc<CacheConfig>,
    cache: Arc<Cache>,
    base: String,
    key: Arc<str>,
    /// `None` for a background refresh (nobody waits on it).
    leader: Option<Leader>,
}

impl Fetch {
    #[allow(clippy::too_many_arguments)]
    fn new(
        conn: &Arc<ConnContext>,
        req: &Request<ClientBody>,
        who: &Who,
        at: &Place,
        policy: &Arc<CacheConfig>,
        cache: &Arc<Cache>,
        base: String,
        key: Arc<str>,
        leader: Option<Leader>,
    ) -> Fetch {
        let mut request = Request::new(RequestBody::empty());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = req.uri().clone();
        *request.version_mut() = req.version();
        *request.headers_mut() = req.headers().clone();
        for name in &NOT_FETCHED {
            request.headers_mut().remove(name);
        }
        Fetch {
            conn: Arc::clone(conn),
            request,
            who: who.clone(),
            at: at.fork(),
            policy: Arc::clone(policy),
            cache: Arc::clone(cache),
            base,
            key,
            leader,
        }
    }

    /// Fetches, stores what may be stored, and lands the flight. `stale`:
    /// the object a background refresh replaces.
    async fn run(mut self, stale: Option<Arc<Object>>) -> (Result<Fetched, ProxyError>, Place) {
        let result = self.fetch(stale.as_deref()).await;
        (result, self.at)
    }

    async fn fetch(&mut self, stale: Option<&Object>) -> Result<Fetched, ProxyError> {
        let snapshot = Arc::clone(&self.at.snapshot);
        let pool = &snapshot.pools[self.at.pool.expect("routed")];
        let cfg = &*pool.config;
        let route = &snapshot.config.routes[self.at.route];
        let asked = self.request.headers().clone();
        let request = std::mem::replace(&mut self.request, Request::new(RequestBody::empty()));
        let (first, forwarded) = upstream_request(request, None, &self.conn, &self.who, cfg);
        pool.shared.count_arrival();
        let mut plan = Plan {
            hash: affinity(pool, &asked, &self.who),
            priority: route.priority,
            replay: cfg.retry_idempotent.then(|| head_of(&first)),
            forwarded,
            upgrade: None,
            client_upgrade: None,
        };
        let resp = match attempts(&self.conn, first, &mut plan, &mut self.at).await {
            Ok(resp) => resp,
            Err(e) => {
                // stale-if-error: the stale object stays; the next stale
                // request may try again.
                if let Some(s) = stale {
                    s.refresh_failed();
                }
                return Err(e);
            }
        };
        let (mut parts, mut body) = resp.into_parts();
        let checked = rules::storable(&asked, parts.status, &parts.headers, &self.policy).and_then(|f| {
            match content_length(&parts.headers) {
                Some(n) if n > self.policy.max_object => Err(NotStored::TooLarge),
                _ => Ok(f),
            }
        });
        let freshness = match checked {
            Ok(f) => f,
            Err(_) => return Ok(self.not_stored(stale, Response::from_parts(parts, body))),
        };
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if let Some(s) = stale {
                    s.refresh_failed();
                }
                body_failed(e)
            })?;
            let Ok(data) = frame.into_data() else { continue };
            total += data.len() as u64;
            chunks.push(data);
            if total > self.policy.max_object {
                let seen = concat(chunks);
                let resp = Response::from_parts(parts, ResponseBody::resumed(seen, body));
                return Ok(self.not_stored(stale, resp));
            }
        }
        let bytes = concat(chunks);
        // The backend's `Age` is in `freshness`. The stored `Age` and
        // `x-cache` are placeholders that every answer overwrites (`answer`
        // and `proxy::handle`): replacing a field in the copy of the map
        // costs nothing, where a new one outgrew the copy, which is sized
        // to what it holds, and reallocated it on every hit.
        parts.headers.insert(header::AGE, HeaderValue::from_static("0"));
        parts.headers.insert(X_CACHE, HeaderValue::from_static("MISS"));
        parts.headers.remove(header::TRANSFER_ENCODING);
        if parts.status != StatusCode::NO_CONTENT {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        let object = Arc::new(Object::new(
            parts.status,
            parts.headers,
            bytes,
            freshness,
            Instant::now(),
        ));
        let key = self.cache.key_for(&self.base, &object, &asked);
        self.cache.store(Arc::clone(&key), Arc::clone(&object));
        if let Some(leader) = self.leader.take() {
            leader.land(Landing::Stored(key, Arc::clone(&object)));
        }
        Ok(Fetched::Object(object))
    }

    /// An answer that may not be stored: waiters go upstream themselves at
    /// once; the key is hit-for-miss for `ttl` unless the backend failed
    /// (a 5xx says nothing about the resource); a refresh's stale object
    /// stays on a 5xx (stale-if-error) and goes otherwise.
    fn not_stored(&mut self, stale: Option<&Object>, resp: Response<ResponseBody>) -> Fetched {
        let failed = resp.status().is_server_error();
        match (stale, failed) {
            (Some(s), true) => s.refresh_failed(),
            (Some(s), false) => self.cache.remove(&self.key, s),
            (None, _) => {}
        }
        if !failed {
            self.cache.pass(Arc::clone(&self.key), self.policy.ttl, Instant::now());
        }
        if let Some(leader) = self.leader.take() {
            leader.land(Landing::Uncacheable);
        }
        Fetched::Passed(Box::new(resp))
    }
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().expect("one chunk"),
        _ => {
            let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                all.extend_from_slice(&c);
            }
            Bytes::from(all)
        }
    }
}

fn body_failed(e: ResponseBodyError) -> ProxyError {
    match e {
        ResponseBodyError::Upstream(e) => ProxyError::Upstream(e),
        ResponseBodyError::ReadTimeout(_) => ProxyError::ResponseTimeout,
    }
}
