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
    /// In etcd cluster mode: this instance's view of the cluster.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
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
    // `Bearer` in any case (RFC 9110 §11.1: the scheme is case-insensitive).
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // `?token=` only opens the dashboard page (a link a browser can
    // follow); the page itself sends the header, and a URL that could
    // reload or read data must not carry the secret into logs and history.
    let query = (is_get(req) && req.uri().path() == "/")
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    [bearer, query]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares in a time that depends on the secret's length only: not on how
/// much of a guess was right, nor on the guess's length.
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    for (i, s) in secret.iter().enumerate() {
        diff |= s ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// GET, or HEAD (GET without the body: hyper leaves it out).
fn is_get(req: &Request<Incoming>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
}

/// A request a browser made (it sends `Origin` on cross-site and unsafe
/// requests and `Sec-Fetch-*` on all): a page may be behind it.
fn from_browser(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(header::ORIGIN) || h.contains_key("sec-fetch-mode") || h.contains_key("sec-fetch-site")
}

/// Why a browser's request is refused, if it is: DNS rebinding (a page on
/// `evil.example` resolving to 127.0.0.1 sends `Host: evil.example`) and
/// cross-site writes (a page elsewhere posting to `/reload`). Programs
/// (Prometheus, probes, curl) send neither header and are not checked.
fn browser_refusal(allowed_hosts: &[String], req: &Request<Incoming>) -> Option<&'static str> {
    if !from_browser(req) {
        return None;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !host_allowed(host, allowed_hosts) {
        return Some("this Host is not the admin listener's (add it to admin.allowed_hosts)");
    }
    if !is_get(req) {
        let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let same = origin.is_some_and(|o| {
            o.split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
        });
        let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if !same && site != Some("same-origin") {
            return Some("a cross-site request may not change anything here");
        }
    }
    None
}

/// An IP literal, `localhost`, or a listed name (any port).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The methods each admin path answers (`None`: no such path).
fn methods(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/stats" | "/history" | "/demand" | "/metrics" | "/healthz" | "/readyz" => Some("GET, HEAD"),
        "/reload" => Some("POST"),
        _ => None,
    }
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
    is_get(req) && matches!(req.uri().path(), "/healthz" | "/readyz")
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let snapshot = shared.view.state.load();
    let allowed_hosts = snapshot.config.admin.as_ref().map_or(&[][..], |a| &a.allowed_hosts[..]);
    if let Some(why) = browser_refusal(allowed_hosts, &req) {
        return respond(StatusCode::FORBIDDEN, "text/plain", format!("forbidden: {why}\n"));
    }
    drop(snapshot);
    if !open_route(&req) && !authorized(shared, &req) {
        let mut r = respond(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path();
    match (is_get(&req), req.method() == Method::POST, path) {
        (true, _, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (true, _, "/stats") => json(StatusCode::OK, &stats::collect(shared)),
        (true, _, "/history") => history(shared, req.uri().query()),
        (true, _, "/demand") => json(StatusCode::OK, &demand::collect(shared)),
        (true, _, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(shared),
        ),
        (true, _, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (true, _, "/readyz") => {
            if shared.view.ready.load(Ordering::SeqCst) {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (_, true, "/reload") => match shared.view.control.reload(Trigger::Admin).await {
            Ok(generation) => json(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "generation": generation }),
            ),
            Err(error) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "ok": false, "error": error }),
            ),
        },
        _ => match methods(path) {
            Some(allow) => {
                let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n");
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        },
    }
}
