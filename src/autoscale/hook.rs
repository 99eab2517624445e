//! The provisioning hook: how the autoscaler asks for backends.
//!
//! Control path. One JSON object per call (contract in `docs/HOOKS.md`):
//! `{"version":1,"pool":"shop","seq":17,"desired":5,"current":3,"ready":3,
//! "members":[...],"remove":[...],"reason":"..."}`; the answer is
//! `{"members":[...]}`, every address the provisioner now provides for the
//! pool. Calls are declarative and idempotent. Three kinds:
//! - `exec`: a command; the request on stdin, the answer on stdout. A
//!   non-zero exit, a timeout or an invalid answer is a failure, and the
//!   child is killed rather than left behind.
//! - `webhook`: HTTP POST of the same JSON; a 2xx answer carries the reply.
//! - `local`: built in; starts and stops `tidegate backend` children on
//!   free loopback ports (the demo's provisioner).
//!
//! A failure changes nothing in the pool; the caller logs it, counts it and
//! retries after [`backoff`]. Nothing here touches the data path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Largest answer read from a hook (a list of addresses).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// First retry delay after a failed call, and the longest.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One call. Field names are the public contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    pub version: u32,
    pub pool: String,
    pub seq: u64,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub members: Vec<String>,
    /// Drained members to stop.
    pub remove: Vec<String>,
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
    pub members: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("exited with {status}: {stderr}")]
    Exit {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    #[error("webhook: {0}")]
    Http(String),
    #[error("webhook answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("local provisioner: {0}")]
    Local(String),
}

impl HookError {
    /// Stable label for `tidegate_hook_calls_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Timeout(_) => "timeout",
            HookError::Spawn { .. } | HookError::Exit { .. } | HookError::Local(_) => "failed",
            HookError::InvalidAnswer(_) => "invalid",
            HookError::Http(_) | HookError::Status { .. } => "failed",
        }
    }
}

/// Parses and checks an answer: JSON `{"members":[...]}` of `host:port`
/// socket addresses, no duplicates.
pub fn parse_answer(bytes: &[u8]) -> Result<HookAnswer, HookError> {
    let raw: RawAnswer = serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        HookError::InvalidAnswer(format!("{e} (answer began {shown:?})"))
    })?;
    let mut members = Vec::with_capacity(raw.members.len());
    for m in raw.members {
        let addr: SocketAddr = m
            .parse()
            .map_err(|_| HookError::InvalidAnswer(format!("`{m}` is not an address such as 127.0.0.1:9001")))?;
        if members.contains(&addr) {
            return Err(HookError::InvalidAnswer(format!("{addr} is listed twice")));
        }
        members.push(addr);
    }
    Ok(HookAnswer { members })
}

/// Delay before retry number `attempt` (1-based): doubling from 1 s up to
/// 60 s, with up to 20 % jitter drawn from `rng` so hooks do not retry in
/// lockstep.
pub fn backoff(attempt: u32, rng: &mut fastrand::Rng) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 + rng.f64() * 0.2).min(BACKOFF_MAX)
}

/// Runs `command` with the request on stdin; the answer is its stdout.
pub async fn call_exec(command: &[String], req: &HookRequest, timeout: Duration) -> Result<HookAnswer, HookError> {
    let (program, args) = command.split_first().ok_or_else(|| HookError::Spawn {
        command: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            command: command.join(" "),
            source,
        })?;
    let input = serde_json::to_vec(req).expect("a request always serialises");
    let run = async {
        let mut stdin = child.stdin.take().expect("piped");
        // A hook that never reads its stdin must not block us: the write is
        // inside the timeout, and a closed pipe is not an error here.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut stdout = child.stdout.take().expect("piped").take(MAX_ANSWER_BYTES as u64);
        let mut stderr = child.stderr.take().expect("piped").take(4096);
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| HookError::Timeout(timeout))?;
    let status = status.map_err(|e| HookError::Exit {
        status: Default::default(),
        stderr: e.to_string(),
    })?;
    if !status.success() {
        return Err(HookError::Exit {
            status,
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    parse_answer(&out)
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

/// The built-in provisioner: `tidegate backend` children on free loopback
/// ports. Its children are ended (by PID) when they are removed or when it
/// is dropped.
pub struct LocalProvisioner {
    exe: PathBuf,
    service_time: Duration,
    concurrency: usize,
    children: BTreeMap<SocketAddr, Child>,
}

impl LocalProvisioner {
    pub fn new(exe: PathBuf, service_time: Duration, concurrency: usize) -> LocalProvisioner {
        LocalProvisioner {
            exe,
            service_time,
            concurrency,
            children: BTreeMap::new(),
        }
    }

    /// Stops what `remove` lists, then starts or stops children until
    /// `desired` run. Idempotent: the same request twice changes nothing.
    pub async fn call(&mut self, req: &HookRequest) -> Result<HookAnswer, HookError> {
        for m in &req.remove {
            if let Some(mut child) = m.parse().ok().and_then(|a: SocketAddr| self.children.remove(&a)) {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        // Children that died on their own no longer count.
        self.children.retain(|_, c| matches!(c.try_wait(), Ok(None)));
        while self.children.len() > req.desired as usize {
            let (_, mut child) = self.children.pop_last().expect("non-empty");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        while self.children.len() < req.desired as usize {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| HookError::Local(format!("no free port: {e}")))?;
            let child = crate::demo::backend_command(&self.exe, port, self.service_time, self.concurrency)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| HookError::Local(format!("cannot start {}: {e}", self.exe.display())))?;
            self.children.insert(port, child);
        }
        Ok(HookAnswer {
            members: self.children.keys().copied().collect(),
        })
    }

    /// Process ids of the running children.
    pub fn pids(&self) -> Vec<u32> {
        self.children.values().filter_map(Child::id).collect()
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
    }
}
