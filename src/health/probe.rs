//! One active health probe: an HTTP GET of the check's path expecting its
//! status range (over TLS for an `upstream_tls` pool, verified as requests
//! are), or a TCP connect, bounded by the check's timeout.
//!
//! Control path; no state of its own. The result is applied to the backend
//! by `pool::health::apply_probe`.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::config::{CheckKind, HealthCheck};
use crate::upstream::tls::Target;

/// One probe, bounded by the check's timeout; `Err` says why it failed.
pub(crate) async fn probe(addr: SocketAddr, check: &HealthCheck, tls: Option<Arc<Target>>) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(addr, check, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, check: &HealthCheck, tls: Option<Arc<Target>>) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let mut sender = match tls {
        None => exchange(TokioIo::new(stream)).await?,
        Some(t) => {
            let secured = t
                .connector
                .connect(t.name.clone(), stream, false)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            exchange(TokioIo::new(secured)).await?
        }
    };
    let req = http::Request::get(&check.path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "tidegate-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    drop(sender);
    let code = resp.status().as_u16();
    if (check.expect.0..=check.expect.1).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}, expected {}-{}", check.expect.0, check.expect.1))
    }
}

/// An HTTP/1.1 connection for one probe; its task ends with the exchange
/// (`Connection: close`) or when the sender is dropped.
async fn exchange<IO>(io: IO) -> Result<http1::SendRequest<Empty<bytes::Bytes>>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake::<_, Empty<bytes::Bytes>>(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}
