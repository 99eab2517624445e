//! `tidegate backend`: a small shop backend for the demo, the tests and the
//! benchmarks. Not on tidegate's own data path; it stands where a shop's
//! application servers would.
//!
//! It speaks HTTP/1.1 and h2c, has a per-request service time and its own
//! concurrency capacity (requests beyond it wait inside the backend), so an
//! overloaded pool queues for real. Endpoints:
//! - `GET /healthz`: `ok`
//! - `GET /`: a tiny shop page; `GET /products/{id}`: a JSON product
//! - `GET|POST /cart`: the cart (POST reports how many bytes it received)
//! - `/echo`: streams the request body back (trailers included)
//! - `/headers`: the request line and headers as the backend received them
//! - `/bytes/{n}`: streams n bytes; `/status/{code}`: answers that status
//! - `/trailers`: a chunked body followed by a trailer field
//! - `/upgrade`: `101` to the protocol any `Upgrade` request asks for, then
//!   echoes raw bytes
//!
//! `?delay=<ms>` on any request overrides the service time. Every response
//! carries `x-backend: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::shutdown::accept;

type Out = BoxBody<Bytes, hyper::Error>;

/// How the simulated backend behaves.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Reported in the `x-backend` response header.
    pub name: String,
    /// Time each request takes before its response starts.
    pub service_time: Duration,
    /// Requests served at once; more wait inside the backend. 0 = no limit.
    pub concurrency: usize,
}

struct Shared {
    opts: BackendOptions,
    capacity: Option<Semaphore>,
    name: HeaderValue,
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, opts: BackendOptions, mut shutdown: watch::Receiver<bool>) {
    let shared = Arc::new(Shared {
        capacity: (opts.concurrency > 0).then(|| Semaphore::new(opts.concurrency)),
        name: HeaderValue::from_str(&opts.name).unwrap_or(HeaderValue::from_static("backend")),
        opts,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    loop {
        let Some((stream, _)) = accept(&listener, &mut shutdown, &shared.opts.name).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (shared, builder) = (Arc::clone(&shared), Arc::clone(&builder));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
        });
    }
}

fn full(text: impl Into<Bytes>) -> Out {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn delay_override(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay="))
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Result<Response<Out>, Infallible> {
    let _permit = match &shared.capacity {
        Some(s) => Some(s.acquire().await.expect("never closed")),
        None => None,
    };
    let service = delay_override(req.uri().query()).unwrap_or(shared.opts.service_time);
    if !service.is_zero() {
        tokio::time::sleep(service).await;
    }
    let path = req.uri().path().to_string();
    let mut resp = match path.as_str() {
        "/healthz" => Response::new(full("ok\n")),
        "/" => Response::new(full("<!doctype html><title>tidegate demo shop</title><h1>Shop</h1>\n")),
        "/cart" if req.method() == http::Method::POST => {
            let mut n = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, Bytes::len),
                    Err(_) => break,
                }
            }
            Response::new(full(format!("{{\"received\":{n}}}\n")))
        }
        "/cart" => Response::new(full("{\"items\":[]}\n")),
        "/echo" => Response::new(req.into_body().boxed()),
        "/headers" => {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
            }
            Response::new(full(text))
        }
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", HeaderValue::from_static("abc123"));
            let body = Trailing {
                data: Some(Bytes::from_static(b"hello")),
                trailers: Some(t),
            };
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert(http::header::TRAILER, HeaderValue::from_static("x-checksum"));
            r
        }
        "/upgrade" if req.headers().contains_key(http::header::UPGRADE) => {
            let protocol = req.headers()[http::header::UPGRADE].clone();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert(http::header::UPGRADE, protocol);
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            r
        }
        p if p.starts_with("/products/") => {
            let id = &p["/products/".len()..];
            Response::new(full(format!(
                "{{\"id\":\"{id}\",\"name\":\"Product {id}\",\"price_cents\":1999}}\n"
            )))
        }
        p if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
            Ok(n) => Response::new(Zeros { remaining: n }.boxed()),
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        p if p.starts_with("/status/") => match p["/status/".len()..]
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => status(code),
            None => status(StatusCode::BAD_REQUEST),
        },
        _ => status(StatusCode::NOT_FOUND),
    };
    resp.headers_mut().insert("x-backend", shared.name.clone());
    Ok(resp)
}

fn status(code: StatusCode) -> Response<Out> {
    let mut r = Response::new(full(format!("{code}\n")));
    *r.status_mut() = code;
    r
}

/// `n` zero bytes in 64 KiB chunks, generated as they are sent.
struct Zeros {
    remaining: u64,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Body for Zeros {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n as usize])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A data frame followed by trailers.
struct Trailing {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Trailing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Binds and serves on `addr` (used by the CLI).
pub async fn run(addr: SocketAddr, opts: BackendOptions, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve(listener, opts, shutdown).await;
    Ok(())
}
