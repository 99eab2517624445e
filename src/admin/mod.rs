//! The admin listener: `/stats`, `/metrics`, the live dashboard, health and
//! readiness, `/demand` (for scaling from outside: KEDA), and
//! `POST /reload`.
//!
//! Control path, on its own listener (loopback unless configured, and then
//! only with a token). It reads the snapshot, atomics, the control path's
//! published view (`control::View`) and the autoscalers' statuses, and
//! never writes them; a reload is a request to the owner task in
//! `control/`. With
//! `admin.token` set, every route needs `Authorization: Bearer <token>`
//! (or `?token=` in the URL, for opening the dashboard in a browser),
//! except `GET /healthz` and `GET /readyz`: probes (Kubernetes, Docker's
//! `HEALTHCHECK`, a cloud load balancer) rarely carry a secret, and the two
//! answers reveal nothing but "alive" and "ready".

mod demand;
mod metrics;
mod process;
mod stats;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::autoscale::live::Statuses;
use crate::control::{Trigger, View};
use crate::shutdown::accept;

/// What the admin routes read.
pub(crate) struct Shared {
    pub(crate) view: Arc<View>,
    pub(crate) autoscale: Arc<Statuses>,
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves the admin routes until `shutdown` turns true.
pub(crate) async fn serve(listener: TcpListener, shared: Shared, mut shutdown: watch::Receiver<bool>) {
    let shared = Arc::new(shared);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let Some((stream, _)) = accept(&listener, &mut shutdown, "admin").await else {
            return;
        };
        let (shared, builder) = (Arc::clone(&shared), Arc::clone(&builder));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    respond(status, "application/json", body)
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let snapshot = shared.view.state.load();
    let Some(token) = snapshot.config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return true;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    [bearer, query]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /history[?pool=NAME]`: each autoscaled pool's last half hour, one
/// record per second (compact JSON: up to 1,800 records a pool).
fn history(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let wanted = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("pool=")));
    let pools: serde_json::Map<String, serde_json::Value> = shared
        .autoscale
        .pools()
        .into_iter()
        .filter(|p| wanted.is_none_or(|w| w == p))
        .filter_map(|p| {
            let seconds = shared.autoscale.seconds(&p)?;
            Some((p, serde_json::to_value(seconds).ok()?))
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "pools": pools })).unwrap_or_default();
    respond(StatusCode::OK, "application/json", body)
}

/// The routes anyone may ask: liveness and readiness, read-only and
/// revealing nothing.
fn open_route(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz")
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !open_route(&req) && !authorized(shared, &req) {
        let mut r = respond(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, "/stats") => json(StatusCode::OK, &stats::collect(shared)),
        (&Method::GET, "/history") => history(shared, req.uri().query()),
        (&Method::GET, "/demand") => json(StatusCode::OK, &demand::collect(shared)),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(shared),
        ),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.view.ready.load(Ordering::SeqCst) {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::POST, "/reload") => match shared.view.control.reload(Trigger::Admin).await {
            Ok(generation) => json(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "generation": generation }),
            ),
            Err(error) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "ok": false, "error": error }),
            ),
        },
        (_, "/" | "/stats" | "/history" | "/demand" | "/metrics" | "/healthz" | "/readyz" | "/reload") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n")
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
