//! The `webhook` provisioner: an HTTP POST of the request; a 2xx answer's
//! body is the answer.
//!
//! Control path. HTTP, or HTTPS verified against the system's CAs (or the
//! hook's `ca`), on a fresh connection per call, bounded by the hook's
//! timeout as a whole (connect, TLS, send, read). IPv6 literals
//! (`http://[::1]:9000/`) work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{parse_answer, Call, HookAnswer, HookError, HookRequest, Provisioner, MAX_ANSWER_BYTES};
use crate::config::UpstreamTls;
use crate::upstream::tls::Connector;

/// `hook = { kind = "webhook", url = "http(s)://...", ca = "..." }`.
pub(crate) struct Webhook {
    pub(crate) url: http::Uri,
    pub(crate) timeout: Duration,
    pub(crate) ca: Option<PathBuf>,
}

impl Provisioner for Webhook {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(call_webhook(&self.url, req, self.timeout, self.ca.as_deref()))
    }
}

/// POSTs the request to `url`; a 2xx body is the answer. An `https://`
/// URL is verified against `ca` (PEM), or the system's CAs.
pub async fn call_webhook(
    url: &http::Uri,
    req: &HookRequest,
    timeout: Duration,
    ca: Option<&Path>,
) -> Result<HookAnswer, HookError> {
    let run = async {
        let authority = url
            .authority()
            .ok_or_else(|| HookError::Http(format!("`{url}` has no host")))?
            .clone();
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(HookError::Http(format!("`{url}`: expected http:// or https://"))),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `[::1]` in a URL is `::1` to connect to.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| HookError::Http(format!("connect {authority}: {e}")))?;
        let mut sender = if https {
            let tls = UpstreamTls {
                server_name: Some(host.to_string()),
                ca: ca.map(Path::to_path_buf),
            };
            let connector = Connector::new(&tls).map_err(|e| HookError::Http(e.to_string()))?;
            let name = connector.name_for(Some(host), (std::net::Ipv4Addr::UNSPECIFIED, port).into());
            let secured = connector
                .connect(name, stream, false)
                .await
                .map_err(|e| HookError::Http(format!("TLS with {authority}: {e}")))?;
            handshake(TokioIo::new(secured)).await?
        } else {
            handshake(TokioIo::new(stream)).await?
        };
        let body = serde_json::to_vec(req).expect("a request always serialises");
        let request = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "tidegate-autoscaler")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError::Http(e.to_string()))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| HookError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| HookError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(HookError::Status {
                status: status.as_u16(),
                body,
            });
        }
        parse_answer(&bytes)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| HookError::Timeout(timeout))?
}

/// An HTTP/1.1 connection for one call.
async fn handshake<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, HookError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HookError::Http(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}
