//! The built-in `local` provisioner: `tidegate backend` children on free
//! loopback ports, so a new user sees the whole elastic loop on one
//! machine (the demo's provisioner).
//!
//! Control path. Children are ended (by PID) when they are removed or when
//! the provisioner is dropped; none outlives tidegate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{Call, HookAnswer, HookError, HookRequest, Provisioner};

/// `hook = { kind = "local" }`: the provisioner plus its time bound.
pub(super) struct Local {
    pub(super) timeout: Duration,
    /// `None` when tidegate could not find its own binary.
    pub(super) inner: Option<LocalProvisioner>,
}

impl Provisioner for Local {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(async move {
            let timeout = self.timeout;
            let local = self
                .inner
                .as_mut()
                .ok_or_else(|| HookError::Local("no tidegate binary to start".into()))?;
            tokio::time::timeout(timeout, local.call(req))
                .await
                .map_err(|_| HookError::Timeout(timeout))?
        })
    }
}

/// `tidegate backend` on `addr`, named after it, ended when its handle is
/// dropped: the demo's children and this provisioner's.
pub fn backend_command(exe: &Path, addr: SocketAddr, service_time: Duration, concurrency: usize) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["backend", "--listen", &addr.to_string(), "--name", &addr.to_string()])
        .args(["--service-time", &format!("{}ms", service_time.as_millis())])
        .args(["--concurrency", &concurrency.to_string()])
        .kill_on_drop(true);
    cmd
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
    /// Children run `exe backend` with this service time and concurrency.
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
            let port = super::free_loopback().map_err(|e| HookError::Local(format!("no free port: {e}")))?;
            let child = backend_command(&self.exe, port, self.service_time, self.concurrency)
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
