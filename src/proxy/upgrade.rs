//! Protocol upgrades (WebSocket): deciding that a request asks for one, and
//! the raw tunnel both ways once the backend agreed with `101`.
//!
//! Data path. The tunnel holds the request's in-flight slot until either
//! side closes or it is idle for `tunnel_idle_timeout`, so an upgraded
//! connection counts against its backend's limit like any request and an
//! abandoned one gives its slot back.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::TUNNEL_IDLE_TIMEOUT;
use crate::clock::clock_ns;
use crate::pool::InFlight;
use crate::upstream::h1::Upgraded;

/// The protocol this request may switch to, as the `Upgrade` value to
/// forward: an HTTP/1.1 request with `Connection: upgrade` and an `Upgrade`
/// naming exactly one protocol that the route allows (compared without
/// case; a `/version` suffix is kept). Anything else, `h2c` included, is
/// `None`: the request is served as an ordinary one, its upgrade fields
/// stripped as hop-by-hop, so nothing can tunnel past routing and limits.
pub(super) fn allowed_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || allowed.is_empty() {
        return None;
    }
    let h = req.headers();
    let asks = h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
    });
    if !asks {
        return None;
    }
    let mut values = h.get_all(header::UPGRADE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let protocol = value.to_str().ok()?.trim();
    if protocol.is_empty() || protocol.contains(',') {
        return None;
    }
    let name = protocol.split('/').next().unwrap_or(protocol);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(name))
        .then(|| HeaderValue::from_str(protocol).ok())
        .flatten()
}

/// Whether a `101` switches to the protocol that was asked for.
pub(super) fn switches_to<B>(resp: &Response<B>, asked: &HeaderValue) -> bool {
    let name = |v: &[u8]| -> Vec<u8> {
        let s = v.split(|&b| b == b'/').next().unwrap_or(v);
        s.trim_ascii().to_ascii_lowercase()
    };
    resp.headers()
        .get(header::UPGRADE)
        .is_some_and(|got| name(got.as_bytes()) == name(asked.as_bytes()))
}

/// Copies both ways until either side closes, or nothing crossed in either
/// direction for `idle` (as HAProxy's `timeout tunnel`); then frees the
/// slot.
pub(super) async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Upgraded, slot: InFlight, idle: Duration) {
    match client.await {
        Ok(c) => {
            let activity = Arc::new(AtomicU64::new(clock_ns()));
            let mut c = Activity::new(TokioIo::new(c), Arc::clone(&activity));
            let mut u = Activity::new(upstream, Arc::clone(&activity));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded tunnel ended with an error");
                    }
                }
                _ = idle_for(&activity, idle) => {
                    tracing::info!(backend = %slot.backend().address, ?idle, "tunnel idle; closing it");
                    slot.pool().count_error(TUNNEL_IDLE_TIMEOUT);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(slot);
}

/// Completes once `activity` (a clock reading) is `idle` old.
async fn idle_for(activity: &AtomicU64, idle: Duration) {
    let idle_ns = idle.as_nanos() as u64;
    loop {
        let last = activity.load(Ordering::Relaxed);
        let now = clock_ns();
        if now.saturating_sub(last) >= idle_ns {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(last + idle_ns - now)).await;
    }
}

/// An upgraded stream that stamps `activity` whenever bytes cross it.
struct Activity<IO> {
    io: IO,
    activity: Arc<AtomicU64>,
}

impl<IO> Activity<IO> {
    fn new(io: IO, activity: Arc<AtomicU64>) -> Activity<IO> {
        Activity { io, activity }
    }

    fn stamp(&self) {
        self.activity.store(clock_ns(), Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Activity<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Activity<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
