//! The `webhook` provisioner: an HTTP POST of the request; a 2xx answer's
//! body is the answer.
//!
//! Control path. Plain HTTP on a fresh connection per call, bounded by the
//! hook's timeout as a whole (connect, send, read).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{parse_answer, Call, HookAnswer, HookError, HookRequest, Provisioner, MAX_ANSWER_BYTES};

/// `hook = { kind = "webhook", url = "http://..." }`.
pub(crate) struct Webhook {
    pub(crate) url: http::Uri,
    pub(crate) timeout: Duration,
}

impl Provisioner for Webhook {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(call_webhook(&self.url, req, self.timeout))
    }
}

/// POSTs the request to `url` (plain HTTP); a 2xx body is the answer.
pub async fn call_webhook(url: &http::Uri, req: &HookRequest, timeout: Duration) -> Result<HookAnswer, HookError> {
    let run = async {
        let authority = url
            .authority()
            .ok_or_else(|| HookError::Http(format!("`{url}` has no host")))?
            .clone();
        if url.scheme_str() != Some("http") {
            return Err(HookError::Http(format!("`{url}`: only http:// webhooks are supported")));
        }
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| HookError::Http(format!("connect {authority}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HookError::Http(e.to_string()))?;
        tokio::spawn(conn);
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
