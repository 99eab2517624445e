//! The built-in `docker` provisioner: backend containers started and
//! removed through the Docker Engine API on its Unix socket (HTTP/1.1 over
//! a `UnixStream`, JSON in and out; no CLI, no output parsing).
//!
//! Control path, called by a pool's autoscaling loop like any provisioner.
//! Every container it starts carries the labels `tidegate.pool=<pool>` and
//! the operator's `labels`; a call first lists the containers carrying
//! them, so a restarted tidegate adopts the containers it left running
//! instead of leaking them (and removes stopped leftovers). A member is a
//! running container's address on `network` with the backends' `port`;
//! with `network = "host"` the containers share the host's network and a
//! member is `127.0.0.1` with a free port chosen for each container
//! (labelled `tidegate.port`). `{port}` in `command` is the member's port.
//! Containers are removed only when tidegate sends them as `remove`
//! (after their drain) or when more run than `desired` (those tidegate
//! does not use first). Images are never pulled: they must exist locally.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::{Call, HookAnswer, HookError, HookRequest, Provisioner, MAX_ANSWER_BYTES};

/// The Engine API version spoken (Docker 20.10 and later understand it).
const API: &str = "/v1.41";
/// The label naming the pool a container serves.
const POOL_LABEL: &str = "tidegate.pool";
/// The label holding a host-network container's port.
const PORT_LABEL: &str = "tidegate.port";
/// The network that is the host's own.
const HOST_NETWORK: &str = "host";

/// `hook = { kind = "docker", ... }`.
pub(super) struct Docker {
    pub(super) image: String,
    pub(super) network: String,
    pub(super) port: u16,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) command: Vec<String>,
    pub(super) timeout: Duration,
    pub(super) engine: Engine,
}

impl Provisioner for Docker {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(async move {
            let timeout = self.timeout;
            tokio::time::timeout(timeout, self.reconcile(req))
                .await
                .map_err(|_| HookError::Timeout(timeout))?
        })
    }
}

/// A container of the pool, as the list shows it.
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State")]
    state: String,
    #[serde(rename = "NetworkSettings")]
    network_settings: Option<Networks>,
    #[serde(rename = "Labels", default)]
    labels: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Networks {
    #[serde(rename = "Networks", default)]
    networks: HashMap<String, Endpoint>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    #[serde(rename = "IPAddress", default)]
    ip_address: String,
}

/// `GET /containers/{id}/json`, the part read.
#[derive(Debug, Deserialize)]
struct Inspected {
    #[serde(rename = "NetworkSettings")]
    network_settings: Networks,
}

impl Networks {
    /// The container's address on `network`, if it has one.
    fn address(&self, network: &str, port: u16) -> Option<SocketAddr> {
        let ip: IpAddr = self.networks.get(network)?.ip_address.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

impl Docker {
    /// Lists the pool's containers, removes what must go, starts what is
    /// missing; the answer is every running member.
    async fn reconcile(&mut self, req: &HookRequest) -> Result<HookAnswer, HookError> {
        let mut running: Vec<(String, SocketAddr)> = Vec::new();
        for c in self.list(&req.pool).await? {
            let address = if self.network == HOST_NETWORK {
                c.labels.get(PORT_LABEL).and_then(|p| p.parse().ok()).map(loopback)
            } else {
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.address(&self.network, self.port))
            };
            match (c.state.as_str(), address) {
                ("running", Some(addr)) => running.push((c.id, addr)),
                // Exited, dead, never started, or not on the network: a
                // leftover (of a crash, or of a call that timed out).
                _ => self.engine.remove(&c.id).await?,
            }
        }
        let remove: Vec<SocketAddr> = req.remove.iter().filter_map(|m| m.parse().ok()).collect();
        let mut kept = Vec::with_capacity(running.len());
        for (id, addr) in running {
            if remove.contains(&addr) {
                self.engine.remove(&id).await?;
            } else {
                kept.push((id, addr));
            }
        }
        while kept.len() > req.desired as usize {
            // Beyond `desired`: first a container tidegate does not use.
            let unused = kept
                .iter()
                .position(|(_, a)| !req.members.contains(&a.to_string()))
                .unwrap_or(kept.len() - 1);
            let (id, _) = kept.remove(unused);
            self.engine.remove(&id).await?;
        }
        while kept.len() < req.desired as usize {
            kept.push(self.start(&req.pool).await?);
        }
        Ok(HookAnswer {
            members: kept.into_iter().map(|(_, a)| a).collect(),
        })
    }

    /// Every label a container of `pool` carries.
    fn labels(&self, pool: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(POOL_LABEL.to_string(), pool.to_string());
        labels
    }

    /// The pool's containers, running or not.
    async fn list(&self, pool: &str) -> Result<Vec<Listed>, HookError> {
        let wanted: Vec<String> = self.labels(pool).iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = serde_json::json!({ "label": wanted }).to_string();
        let path = format!("{API}/containers/json?all=true&filters={}", percent_encode(&filters));
        let body = self.engine.expect(Method::GET, &path, None, &[StatusCode::OK]).await?;
        serde_json::from_slice(&body).map_err(|e| HookError::Docker(format!("container list: {e}")))
    }

    /// Creates and starts one container and returns it with its address.
    async fn start(&self, pool: &str) -> Result<(String, SocketAddr), HookError> {
        let name = format!("tidegate-{}-{:08x}", container_name_part(pool), fastrand::u32(..));
        let host = self.network == HOST_NETWORK;
        let mut labels = self.labels(pool);
        let port = if host {
            let port = super::free_loopback()
                .map_err(|e| HookError::Docker(format!("no free loopback port: {e}")))?
                .port();
            labels.insert(PORT_LABEL.to_string(), port.to_string());
            port
        } else {
            self.port
        };
        let mut spec = serde_json::json!({
            "Image": self.image,
            "Labels": labels,
            "HostConfig": { "NetworkMode": self.network },
        });
        if !host {
            spec["ExposedPorts"] = serde_json::json!({ format!("{port}/tcp"): {} });
            spec["NetworkingConfig"] = serde_json::json!({ "EndpointsConfig": { self.network.clone(): {} } });
        }
        if !self.command.is_empty() {
            let port = port.to_string();
            let cmd: Vec<String> = self.command.iter().map(|a| a.replace("{port}", &port)).collect();
            spec["Cmd"] = serde_json::json!(cmd);
        }
        let path = format!("{API}/containers/create?name={name}");
        let created = self
            .engine
            .expect(Method::POST, &path, Some(spec), &[StatusCode::CREATED])
            .await
            .map_err(|e| match e {
                HookError::Docker(m) if m.contains(" 404 ") => HookError::Docker(format!(
                    "image `{}` is not on this Docker host (tidegate never pulls): {m}",
                    self.image
                )),
                e => e,
            })?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let id = serde_json::from_slice::<Created>(&created)
            .map_err(|e| HookError::Docker(format!("container create: {e}")))?
            .id;
        let started = self
            .engine
            .expect(
                Method::POST,
                &format!("{API}/containers/{id}/start"),
                None,
                &[StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED],
            )
            .await;
        let inspected = match started {
            Ok(_) => {
                self.engine
                    .expect(
                        Method::GET,
                        &format!("{API}/containers/{id}/json"),
                        None,
                        &[StatusCode::OK],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let address = inspected.and_then(|body| {
            let inspected = serde_json::from_slice::<Inspected>(&body)
                .map_err(|e| HookError::Docker(format!("container inspect: {e}")))?;
            if host {
                return Ok(loopback(port));
            }
            inspected
                .network_settings
                .address(&self.network, port)
                .ok_or_else(|| HookError::Docker(format!("{name} has no address on network `{}`", self.network)))
        });
        match address {
            Ok(addr) => {
                tracing::info!(pool, container = %name, member = %addr, "started a backend container");
                Ok((id, addr))
            }
            Err(e) => {
                // Not left half-made: the next call would only remove it.
                let _ = self.engine.remove(&id).await;
                Err(e)
            }
        }
    }
}

/// A host-network member's address.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

/// A Docker Engine reached over its Unix socket.
pub(super) struct Engine {
    pub(super) socket: PathBuf,
}

impl Engine {
    /// One request on a fresh connection; the status and the body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), HookError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| HookError::Docker(format!("{what} {path}: {e}"));
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| HookError::Docker(format!("cannot connect to {}: {e}", self.socket.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| fail("handshake for", &e))?;
        tokio::spawn(conn);
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "docker")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| fail("building", &e))?;
        let resp = sender.send_request(req).await.map_err(|e| fail("sending", &e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| fail("reading the answer to", &e))?
            .to_bytes();
        Ok((status, body))
    }

    /// [`Engine::request`], failing unless the status is one of `ok`; the
    /// error carries Docker's own message.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        ok: &[StatusCode],
    ) -> Result<Bytes, HookError> {
        let shown = format!("{method} {path}");
        let (status, answer) = self.request(method, path, body).await?;
        if ok.contains(&status) {
            return Ok(answer);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned());
        Err(HookError::Docker(format!("{shown}: {} {message}", status.as_u16())))
    }

    /// Removes a container, running or not (it was drained first); one
    /// already gone is fine.
    async fn remove(&self, id: &str) -> Result<(), HookError> {
        let path = format!("{API}/containers/{id}?force=true");
        self.expect(
            Method::DELETE,
            &path,
            None,
            &[StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
        )
        .await?;
        tracing::info!(container = %&id[..id.len().min(12)], "removed a backend container");
        Ok(())
    }
}

/// A pool name as a container name may carry it (`[a-zA-Z0-9_.-]`).
fn container_name_part(pool: &str) -> String {
    pool.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_percent_encoded_and_names_sanitised() {
        assert_eq!(
            percent_encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
        assert_eq!(container_name_part("shop eu/1"), "shop-eu-1");
    }

    #[test]
    fn a_member_is_the_address_on_the_configured_network() {
        let listed: Listed = serde_json::from_str(
            r#"{"Id":"abc","State":"running","NetworkSettings":{"Networks":{"shop":{"IPAddress":"172.18.0.5"},"other":{"IPAddress":"10.0.0.2"}}}}"#,
        )
        .unwrap();
        let n = listed.network_settings.unwrap();
        assert_eq!(n.address("shop", 8080), Some("172.18.0.5:8080".parse().unwrap()));
        assert_eq!(n.address("missing", 8080), None);
    }
}
