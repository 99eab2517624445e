//! The per-request handler: route, admit, forward, respond.
//!
//! Data path, above `pool/`, `balance/` and `upstream/`, below nothing but
//! `server/` (it never imports the control path). One [`Proxy`] service per
//! client connection (a `tower` service, served by hyper); for each request
//! it:
//! 1. loads the live snapshot once and rejects ambiguous framing (400,
//!    `request.rs`);
//! 2. routes host + path to a pool, enforcing the route's body limit (413);
//! 3. gets an in-flight slot from the pool's admission (pick, or queue);
//! 4. rewrites headers and sends the request over a pooled keep-alive
//!    connection (`send.rs`); a connect failure (nothing sent) tries another
//!    backend;
//! 5. returns the backend's response with the slot moved into its body, so
//!    in-flight falls when the body has finished streaming;
//! 6. tunnels the connection both ways after a `101 Switching Protocols`
//!    (`upgrade.rs`).
//!
//! Every failure is a [`ProxyError`], turned into a response and counted
//! (per pool, or before routing) in one place: [`Proxy::call`].

pub(crate) mod body;
mod error;
pub mod headers;
mod request;
mod send;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;

pub(crate) use body::ResponseBody;
pub(crate) use error::{ProxyError, REASONS};

use crate::balance::{Balancer, PickContext};
use crate::clock::clock_ns;
use crate::config::defaults::EWMA_DECAY;
use crate::pool::health::passive_outcome;
use crate::pool::{AdmitError, InFlight};
use crate::state::{Snapshot, State};
use crate::upstream::body::RequestBodyError;
use request::{
    affinity_key, check_framing, content_length, has_no_body, head_of, is_idempotent, rebuild, request_host,
    upstream_request,
};
use send::{is_body_too_large, send, SendError};
use upgrade::{tunnel, wants_upgrade};

/// The proxy service for one client connection.
#[derive(Clone)]
pub(crate) struct Proxy {
    conn: Arc<ConnContext>,
}

pub(crate) struct ConnContext {
    state: Arc<State>,
    client: SocketAddr,
    tls: bool,
}

impl Proxy {
    pub(crate) fn new(state: Arc<State>, client: SocketAddr, tls: bool) -> Proxy {
        Proxy {
            conn: Arc::new(ConnContext { state, client, tls }),
        }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let mut at = Place {
                snapshot: conn.state.load(),
                pool: None,
            };
            Ok(match forward(&conn, req, &mut at).await {
                Ok(resp) => resp,
                Err(e) => {
                    match at.pool {
                        Some(i) => at.snapshot.pools[i].shared.count_error(e.index()),
                        None => conn.state.count_error(e.index()),
                    }
                    e.into_response()
                }
            })
        })
    }
}

/// Where a request stands: the snapshot it uses and, once routed, its pool.
struct Place {
    snapshot: Arc<Snapshot>,
    pool: Option<usize>,
}

async fn forward(
    conn: &ConnContext,
    mut req: Request<Incoming>,
    at: &mut Place,
) -> Result<Response<ResponseBody>, ProxyError> {
    check_framing(&req)?;
    let target = at
        .snapshot
        .router
        .route(request_host(&req), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    at.pool = Some(target.pool);
    let max_body = at.snapshot.config.routes[target.route].max_body;
    let pool = &at.snapshot.pools[target.pool];
    pool.shared.count_arrival();
    let cfg = &*pool.config;
    if content_length(req.headers()).is_some_and(|n| n > max_body) {
        return Err(ProxyError::PayloadTooLarge);
    }
    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let hash = match pool.balancer {
        Balancer::Hash(_) => affinity_key(&cfg.hash_key, req.headers(), conn.client.ip()),
        _ => None,
    };
    let replayable = cfg.retry_idempotent && is_idempotent(req.method()) && has_no_body(&req);
    let mut first = upstream_request(req, upgrade, conn, cfg, max_body);
    first.body_mut().prime().await.map_err(|e| match e {
        RequestBodyError::TooLarge(_) => ProxyError::PayloadTooLarge,
        RequestBodyError::Client(_) => ProxyError::BadRequest("malformed request body"),
    })?;
    let mut request = Some(first);
    let replay = replayable.then(|| head_of(request.as_ref().expect("just built")));

    let mut rng = fastrand::Rng::new();
    let mut exclude: Vec<usize> = Vec::new();
    let mut connect_failures = 0;
    let mut replays_left = u32::from(replayable);
    loop {
        let snapshot = Arc::clone(&at.snapshot);
        let pool = &snapshot.pools[at.pool.expect("routed")];
        let cfg = &*pool.config;
        let mut cx = PickContext {
            rng: &mut rng,
            hash,
            exclude: &exclude,
        };
        let slot = match pool.admit(&mut cx).await {
            Ok(slot) => slot,
            Err(AdmitError::NoBackend) => {
                // A reload may have replaced every backend this snapshot
                // knows (they are draining now): route again on the live one.
                let fresh = conn.state.load();
                if fresh.generation == snapshot.generation {
                    return Err(ProxyError::NoBackend);
                }
                let req = request.as_ref().expect("not yet sent");
                let target = fresh
                    .router
                    .route(request_host(req), req.uri().path())
                    .ok_or(ProxyError::NoRoute)?;
                *at = Place {
                    snapshot: fresh,
                    pool: Some(target.pool),
                };
                exclude.clear();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let backend = Arc::clone(slot.backend());
        let started = tokio::time::Instant::now();
        let outcome = send(cfg, &backend, request.take().expect("a request per attempt")).await;
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        let status = outcome.as_ref().ok().map(|(r, _)| r.status().as_u16());
        let now_ns = clock_ns();
        let class = backend.record(status, elapsed_ns, now_ns, EWMA_DECAY.as_nanos() as f64);
        pool.shared.record(class, elapsed_ns);
        let failed = match &outcome {
            Ok((r, _)) => r.status().is_server_error(),
            Err(SendError::Connect(..)) | Err(SendError::Timeout) => true,
            Err(SendError::Failed(e)) => !is_body_too_large(e),
        };
        passive_outcome(pool, &backend, failed, now_ns);
        match outcome {
            Ok((resp, sender)) => return Ok(respond(resp, sender, slot, client_upgrade)),
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(backend = %backend.address, error = %e, "connect failed, trying another backend");
                connect_failures += 1;
                if connect_failures > cfg.connect_retries {
                    return Err(ProxyError::Connect(e));
                }
                exclude.extend(pool.index_of(&backend));
                request = Some(*back);
            }
            Err(SendError::Timeout) => return Err(ProxyError::ResponseTimeout),
            Err(SendError::Failed(e)) => {
                if is_body_too_large(&e) {
                    return Err(ProxyError::PayloadTooLarge);
                }
                match &replay {
                    Some(head) if replays_left > 0 => {
                        replays_left -= 1;
                        exclude.extend(pool.index_of(&backend));
                        request = Some(rebuild(head));
                    }
                    _ => return Err(ProxyError::Upstream(e)),
                }
            }
        }
    }
}

/// The client's response: the backend's head minus hop-by-hop fields, and
/// its body carrying the slot. A 101 to an upgrade request starts a tunnel
/// that holds the slot until either side closes.
fn respond(
    mut resp: Response<Incoming>,
    sender: Option<http1::SendRequest<crate::upstream::body::RequestBody>>,
    slot: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client, upstream, slot));
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ResponseBody::empty());
        }
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, ResponseBody::upstream(body, slot, sender))
}
