//! Protocol upgrades (WebSocket): deciding that a request asks for one, and
//! the raw tunnel both ways once the backend agreed with `101`.
//!
//! Data path. The tunnel holds the request's in-flight slot until either
//! side closes, so an upgraded connection counts against its backend's
//! limit like any request.

use http::header;
use http::{Request, Version};
use hyper_util::rt::TokioIo;

use crate::pool::InFlight;

pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

pub(super) async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, slot: InFlight) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded tunnel ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(slot);
}
