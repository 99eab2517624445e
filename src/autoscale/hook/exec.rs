//! The `exec` provisioner: a command run once per call, the request on its
//! stdin, the answer on its stdout.
//!
//! Control path. A non-zero exit, a timeout or an invalid answer is a
//! failure, and the child is killed rather than left behind.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{parse_answer, Call, HookAnswer, HookError, HookRequest, Provisioner, MAX_ANSWER_BYTES};

/// `hook = { kind = "exec", command = [...] }`.
pub(crate) struct Exec {
    pub(crate) command: Vec<String>,
    pub(crate) timeout: Duration,
}

impl Provisioner for Exec {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(call_exec(&self.command, req, self.timeout))
    }
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
