//! One active health probe: an HTTP GET of the check's path expecting its
//! status range, or a TCP connect, bounded by the check's timeout.
//!
//! Control path; no state of its own. The result is applied to the backend
//! by `pool::health::apply_probe`.

use std::net::SocketAddr;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::config::{CheckKind, HealthCheck};

/// One probe, bounded by the check's timeout; `Err` says why it failed.
pub(crate) async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(addr, check)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection task ends with the exchange (`Connection: close`) or
    // when `sender` is dropped at the end of this probe.
    tokio::spawn(conn);
    let req = http::Request::get(&check.path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "tidegate-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let code = resp.status().as_u16();
    if (check.expect.0..=check.expect.1).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}, expected {}-{}", check.expect.0, check.expect.1))
    }
}
