//! A small etcd v3 client over etcd's built-in gRPC gateway (JSON over
//! HTTP/1.1 at `/v3/...` on the client URL; keys and values in base64).
//!
//! Control path only, and only the few calls the coordinator needs: grant,
//! keep alive and revoke a lease, put (bound to a lease), range by key or
//! prefix, and a one-compare-set transaction. Chosen over gRPC so the build
//! needs neither `protoc` nor tonic: a request is one short POST on a fresh
//! loopback-cheap connection, bounded by [`REQUEST_TIMEOUT`] as a whole.
//! Endpoints are tried in order, starting from the last one that answered.
//! etcd's JSON writes 64-bit integers as strings and leaves zero values
//! out; the types below accept both forms and default what is absent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;

/// One call (connect, send, read) gives up after this long.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer read (a range over every instance's demand).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EtcdError {
    /// No endpoint could be reached within the timeout.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error status (gRPC error in the body).
    #[error("etcd answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from etcd: {0}")]
    Decode(String),
    /// The lease is gone (expired or revoked): a new one is needed.
    #[error("lease {0} expired")]
    LeaseExpired(i64),
}

/// A key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub(crate) struct KeyValue {
    #[serde(deserialize_with = "b64")]
    pub(crate) key: Vec<u8>,
    #[serde(deserialize_with = "b64")]
    pub(crate) value: Vec<u8>,
    #[serde(deserialize_with = "int")]
    pub(crate) create_revision: i64,
    #[serde(deserialize_with = "int")]
    pub(crate) mod_revision: i64,
    #[serde(deserialize_with = "int")]
    pub(crate) lease: i64,
}

/// A transaction's single compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision(i64),
    /// The key's value equals this.
    Value(Vec<u8>),
}

/// What a transaction did: whether its compares held, the store's
/// revision after it, and the failure branch's range of the compared key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnResult {
    pub(crate) succeeded: bool,
    pub(crate) revision: i64,
    /// On failure: the first compared key as it is now (if it exists).
    pub(crate) current: Option<KeyValue>,
}

/// An etcd client over its JSON gateway.
pub(crate) struct Etcd {
    endpoints: Vec<http::Uri>,
    /// The endpoint that answered last.
    preferred: AtomicUsize,
}

impl Etcd {
    pub(crate) fn new(endpoints: Vec<http::Uri>) -> Etcd {
        Etcd {
            endpoints,
            preferred: AtomicUsize::new(0),
        }
    }

    /// A new lease of `ttl`; its ID.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        #[derive(Deserialize)]
        struct Granted {
            #[serde(rename = "ID", deserialize_with = "int", default)]
            id: i64,
        }
        let g: Granted = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.as_secs().max(1).to_string() }))
            .await?;
        Ok(g.id)
    }

    /// Renews a lease; its remaining TTL in seconds, or
    /// [`EtcdError::LeaseExpired`].
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        // The gateway streams `{"result": ...}` objects; one request body
        // gives one answer.
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Renewed {
            #[serde(rename = "TTL", deserialize_with = "int")]
            ttl: i64,
        }
        #[derive(Deserialize)]
        struct Wrapped {
            result: Option<Renewed>,
        }
        let w: Wrapped = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        match w.result {
            Some(r) if r.ttl > 0 => Ok(r.ttl),
            _ => Err(EtcdError::LeaseExpired(lease)),
        }
    }

    /// Revokes a lease: its keys go at once (a clean stop hands leadership
    /// over without waiting for the TTL).
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let _: serde_json::Value = self
            .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(())
    }

    /// Puts `value` at `key`, bound to `lease` (0: none).
    pub(crate) async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let _: serde_json::Value = self.call("/v3/kv/put", put_body(key, value, lease)).await?;
        Ok(())
    }

    /// Every key starting with `prefix`.
    pub(crate) async fn range_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Range {
            kvs: Vec<KeyValue>,
        }
        let r: Range = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) }),
            )
            .await?;
        Ok(r.kvs)
    }

    /// If `key` passes `compare`, puts `value` at `put_key` (bound to
    /// `lease`); otherwise reads `key`.
    pub(crate) async fn txn(
        &self,
        key: &str,
        compares: &[Compare],
        put_key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<TxnResult, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Header {
            #[serde(deserialize_with = "int")]
            revision: i64,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct RangeResp {
            kvs: Vec<KeyValue>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Op {
            response_range: Option<RangeResp>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Txn {
            header: Header,
            succeeded: bool,
            responses: Vec<Op>,
        }
        let compare: Vec<serde_json::Value> = compares
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(r) => json!({
                    "key": B64.encode(key), "result": "EQUAL", "target": "CREATE",
                    "create_revision": r.to_string(),
                }),
                Compare::Value(v) => json!({
                    "key": B64.encode(key), "result": "EQUAL", "target": "VALUE", "value": B64.encode(v),
                }),
            })
            .collect();
        let body = json!({
            "compare": compare,
            "success": [{ "request_put": put_body(put_key, value, lease) }],
            "failure": [{ "request_range": { "key": B64.encode(key) } }],
        });
        let t: Txn = self.call("/v3/kv/txn", body).await?;
        let current = if t.succeeded {
            None
        } else {
            t.responses
                .into_iter()
                .find_map(|o| o.response_range)
                .and_then(|r| r.kvs.into_iter().next())
        };
        Ok(TxnResult {
            succeeded: t.succeeded,
            revision: t.header.revision,
            current,
        })
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T, EtcdError> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("JSON always serialises"));
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable("no endpoint".into());
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            let call = post(&self.endpoints[at], path, body.clone());
            match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(Ok((status, bytes))) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return decode(status, &bytes);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last =
                        EtcdError::Unreachable(format!("{}: no answer within {REQUEST_TIMEOUT:?}", self.endpoints[at]))
                }
            }
        }
        Err(last)
    }
}

/// The JSON of a put.
fn put_body(key: &str, value: &[u8], lease: i64) -> serde_json::Value {
    let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if lease != 0 {
        put["lease"] = json!(lease.to_string());
    }
    put
}

/// The first key after every key starting with `prefix` (etcd's
/// `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A status and body into `T`, or the error etcd sent.
fn decode<T: DeserializeOwned>(status: http::StatusCode, bytes: &[u8]) -> Result<T, EtcdError> {
    if !status.is_success() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct GrpcError {
            error: String,
            message: String,
        }
        let e: GrpcError = serde_json::from_slice(bytes).unwrap_or_default();
        let message = if e.message.is_empty() { e.error } else { e.message };
        if message.contains("requested lease not found") {
            return Err(EtcdError::LeaseExpired(0));
        }
        return Err(EtcdError::Status {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| EtcdError::Decode(e.to_string()))
}

/// One POST on a fresh HTTP/1.1 connection.
async fn post(endpoint: &http::Uri, path: &str, body: Bytes) -> Result<(http::StatusCode, Bytes), EtcdError> {
    let authority = endpoint
        .authority()
        .ok_or_else(|| EtcdError::Unreachable(format!("`{endpoint}` has no host")))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(2379);
    let unreachable = |e: &dyn std::fmt::Display| EtcdError::Unreachable(format!("{endpoint}: {e}"));
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let request = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| unreachable(&e))?;
    let resp = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, bytes))
}

/// An int64 that etcd writes as a string (or, rarely, a number).
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Base64 bytes.
fn b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_of_a_prefix_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn gateway_json_with_string_integers_and_absent_zeroes_decodes() {
        let kv: KeyValue =
            serde_json::from_str(r#"{"key":"L2EvYg==","value":"eA==","create_revision":"7","lease":"42"}"#).unwrap();
        assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (&b"/a/b"[..], &b"x"[..]));
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (7, 0, 42));
    }

    #[test]
    fn a_lease_not_found_answer_is_an_expired_lease() {
        let body = br#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#;
        let r: Result<serde_json::Value, _> = decode(http::StatusCode::NOT_FOUND, body);
        assert_eq!(r, Err(EtcdError::LeaseExpired(0)));
    }
}
