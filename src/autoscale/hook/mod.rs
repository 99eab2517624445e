//! The provisioning hook: how the autoscaler asks for backends.
//!
//! Control path (it does I/O: processes, HTTP). One JSON object per call
//! (contract in `docs/HOOKS.md`): `{"version":1,"pool":"shop","seq":17,
//! "desired":5,"current":3,"ready":3,"members":[...],"remove":[...],
//! "reason":"..."}`; the answer is `{"members":[...]}`, every address the
//! provisioner now provides for the pool. Calls are declarative and
//! idempotent. Each kind is one file behind the [`Provisioner`] trait:
//! - `exec.rs`: a command; the request on stdin, the answer on stdout;
//! - `webhook.rs`: HTTP POST of the same JSON; a 2xx answer carries it;
//! - `local.rs`: built in; `tidegate backend` children on free loopback
//!   ports (the demo's provisioner);
//! - `docker.rs`: built in; containers through the Docker Engine API on
//!   its Unix socket, labelled so a restarted tidegate adopts them.
//!
//! A failure changes nothing in the pool; the caller logs it, counts it and
//! retries after [`backoff`]. Nothing here touches the data path.

mod docker;
mod exec;
mod local;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HookConfig;
pub use exec::call_exec;
use exec::Exec;
pub use local::{backend_command, LocalProvisioner};
pub use webhook::call_webhook;
use webhook::Webhook;

/// Largest answer read from a hook (a list of addresses).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// First retry delay after a failed call, and the longest.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One call. Field names are the public contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    /// The contract's version: 1.
    pub version: u32,
    /// The pool's name in the config.
    pub pool: String,
    /// Call number, increasing (a provisioner may ignore reordered ones).
    pub seq: u64,
    /// In etcd cluster mode: the calling leader's epoch (its election
    /// revision). `(epoch, seq)` identifies a call; a provisioner may
    /// refuse calls from an epoch older than one it has seen. Absent
    /// outside cluster mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Members the provisioner should provide after this call.
    pub desired: u32,
    /// Members known now (serving, warming and draining).
    pub current: u32,
    /// Members passing health checks.
    pub ready: u32,
    /// The addresses tidegate uses now.
    pub members: Vec<String>,
    /// Drained members to stop.
    pub remove: Vec<String>,
    /// The policy's explanation, for the provisioner's logs.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    members: Vec<String>,
}

/// What the provisioner now provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnswer {
    /// Every address the provisioner now provides for the pool.
    pub members: Vec<SocketAddr>,
}

/// Why a hook call failed (the pool is then unchanged).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No answer within the hook's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The command could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("exited with {status}: {stderr}")]
    Exit {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of what it wrote to stderr.
        stderr: String,
    },
    /// The answer was not `{"members":[...]}` of socket addresses.
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    /// The webhook could not be reached or read.
    #[error("webhook: {0}")]
    Http(String),
    /// The webhook answered with a non-2xx status.
    #[error("webhook answered {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The built-in provisioner failed.
    #[error("local provisioner: {0}")]
    Local(String),
    /// The Docker Engine could not be reached or refused a request.
    #[error("docker: {0}")]
    Docker(String),
}

impl HookError {
    /// Stable label for `tidegate_hook_calls_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Timeout(_) => "timeout",
            HookError::Spawn { .. } | HookError::Exit { .. } | HookError::Local(_) | HookError::Docker(_) => "failed",
            HookError::InvalidAnswer(_) => "invalid",
            HookError::Http(_) | HookError::Status { .. } => "failed",
        }
    }
}

/// Parses and checks an answer: JSON `{"members":[...]}` of `host:port`
/// socket addresses, no duplicates.
pub(crate) fn parse_answer(bytes: &[u8]) -> Result<HookAnswer, HookError> {
    let raw: RawAnswer = serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        HookError::InvalidAnswer(format!("{e} (answer began {shown:?})"))
    })?;
    let mut members = Vec::with_capacity(raw.members.len());
    let mut seen = std::collections::HashSet::with_capacity(raw.members.len());
    for m in raw.members {
        let addr: SocketAddr = m
            .parse()
            .map_err(|_| HookError::InvalidAnswer(format!("`{m}` is not an address such as 127.0.0.1:9001")))?;
        if !seen.insert(addr) {
            return Err(HookError::InvalidAnswer(format!("{addr} is listed twice")));
        }
        members.push(addr);
    }
    Ok(HookAnswer { members })
}

/// Checks an answer against what the pool may hold: at most `limit`
/// members (the pool's `max` plus those still draining), none of them one
/// of tidegate's own listeners (`own`), which would loop every request
/// back into tidegate.
pub(crate) fn check_members(answer: &HookAnswer, limit: usize, own: &[SocketAddr]) -> Result<(), HookError> {
    if answer.members.len() > limit {
        return Err(HookError::InvalidAnswer(format!(
            "{} members, more than the pool may hold ({limit}: its max plus members still draining)",
            answer.members.len()
        )));
    }
    if let Some(m) = answer.members.iter().find(|m| is_own(**m, own)) {
        return Err(HookError::InvalidAnswer(format!(
            "{m} is one of tidegate's own listeners: every request would loop back"
        )));
    }
    Ok(())
}

/// A loopback address whose port is free now, for a member started on this
/// host. The member binds it a moment later: another process could take it
/// in between, and the member's health check then never passes, so it is
/// replaced.
fn free_loopback() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// Whether `member` reaches one of the listeners at `own`: the same port
/// and the same address, or a listener on every address and a loopback or
/// unspecified member.
fn is_own(member: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|l| {
        l.port() == member.port()
            && (l.ip() == member.ip()
                || (l.ip().is_unspecified() && (member.ip().is_loopback() || member.ip().is_unspecified())))
    })
}

/// Delay before retry number `attempt` (1-based): doubling from 1 s up to
/// 60 s, with up to 20 % jitter drawn from `rng` so hooks do not retry in
/// lockstep.
pub(crate) fn backoff(attempt: u32, rng: &mut fastrand::Rng) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 + rng.f64() * 0.2).min(BACKOFF_MAX)
}

/// A future a provisioner returns.
pub(crate) type Call<'a> = Pin<Box<dyn Future<Output = Result<HookAnswer, HookError>> + Send + 'a>>;

/// One kind of provisioner: answers a request with the members it now
/// provides. Implementations bound their own time (the configured timeout).
pub(crate) trait Provisioner: Send {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a>;
}

/// The provisioner a pool's `hook` table describes. `exe` is the tidegate
/// binary, which the `local` kind starts as its backends.
pub(crate) fn provisioner(hook: &HookConfig, exe: Option<PathBuf>) -> Box<dyn Provisioner> {
    match hook {
        HookConfig::Exec { command, timeout, env } => Box::new(Exec {
            command: command.clone(),
            timeout: *timeout,
            env: env.clone(),
        }),
        HookConfig::Webhook { url, timeout, ca } => Box::new(Webhook {
            url: url.clone(),
            timeout: *timeout,
            ca: ca.clone(),
        }),
        HookConfig::Docker {
            image,
            network,
            port,
            labels,
            socket,
            command,
            timeout,
        } => Box::new(docker::Docker {
            image: image.clone(),
            network: network.clone(),
            port: *port,
            labels: labels.clone(),
            command: command.clone(),
            timeout: *timeout,
            engine: docker::Engine { socket: socket.clone() },
        }),
        HookConfig::Local {
            service_time,
            concurrency,
            timeout,
        } => Box::new(local::Local {
            timeout: *timeout,
            inner: exe.map(|exe| LocalProvisioner::new(exe, *service_time, *concurrency)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let a = parse_answer(br#"{"members":["127.0.0.1:9001","[::1]:9002"]}"#).unwrap();
        assert_eq!(a.members.len(), 2);
        for (bad, why) in [
            (&br#"{"members":["localhost"]}"#[..], "not an address"),
            (br#"{"members":["127.0.0.1:1","127.0.0.1:1"]}"#, "listed twice"),
            (br#"{"members":[], "extra": 1}"#, "unknown field"),
            (b"garbage", "answer began"),
        ] {
            let e = parse_answer(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn answers_over_the_limit_or_looping_back_are_refused() {
        let own: Vec<SocketAddr> = vec!["0.0.0.0:8080".parse().unwrap(), "10.0.0.1:8443".parse().unwrap()];
        let answer = |list: &[&str]| HookAnswer {
            members: list.iter().map(|a| a.parse().unwrap()).collect(),
        };
        assert!(check_members(&answer(&["10.0.0.2:8080", "10.0.0.1:9000"]), 2, &own).is_ok());
        let e = check_members(&answer(&["10.0.0.2:1", "10.0.0.2:2", "10.0.0.2:3"]), 2, &own).unwrap_err();
        assert!(e.to_string().contains("3 members, more than"), "{e}");
        for looping in ["127.0.0.1:8080", "[::1]:8080", "10.0.0.1:8443"] {
            let e = check_members(&answer(&[looping]), 5, &own).unwrap_err();
            assert!(e.to_string().contains("own listeners"), "{looping}: {e}");
        }
    }

    #[test]
    fn a_long_answer_is_parsed_in_linear_time() {
        // 45,000 members (the size that once took the pool down) parse
        // quickly with the set; the old quadratic scan did 10^9 compares.
        let list: Vec<String> = (0..45_000u32)
            .map(|i| format!("\"10.{}.{}.{}:80\"", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let text = format!("{{\"members\":[{}]}}", list.join(","));
        assert_eq!(parse_answer(text.as_bytes()).unwrap().members.len(), 45_000);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut rng = fastrand::Rng::with_seed(3);
        let d: Vec<Duration> = (1..=8).map(|n| backoff(n, &mut rng)).collect();
        assert!(d[0] >= Duration::from_secs(1) && d[0] <= Duration::from_millis(1200));
        assert!(d[3] >= Duration::from_secs(8) && d[3] <= Duration::from_millis(9600));
        assert_eq!(d[7], BACKOFF_MAX);
    }

    #[test]
    fn the_request_serialises_with_the_contract_field_names() {
        let req = HookRequest {
            version: 1,
            pool: "shop".into(),
            seq: 17,
            epoch: None,
            desired: 5,
            current: 3,
            ready: 3,
            members: vec!["127.0.0.1:9001".into()],
            remove: vec!["127.0.0.1:9003".into()],
            reason: "r".into(),
        };
        let v = serde_json::to_value(&req).unwrap();
        for key in [
            "version", "pool", "seq", "desired", "current", "ready", "members", "remove", "reason",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        // `epoch` only in cluster mode, so single-instance answers and
        // scripts see exactly the version 1 fields.
        assert!(v.get("epoch").is_none());
        let v = serde_json::to_value(HookRequest { epoch: Some(42), ..req }).unwrap();
        assert_eq!(v["epoch"], 42);
    }
}
