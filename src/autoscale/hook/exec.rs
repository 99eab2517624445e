//! The `exec` provisioner: a command run once per call, the request on its
//! stdin, the answer on its stdout.
//!
//! Control path. A non-zero exit, a timeout or an invalid answer is a
//! failure. The command runs in a process group of its own and gets only an
//! allow-listed environment (tidegate's own may hold secrets the hook has
//! no business with). The answer is what the command wrote by the time it
//! exited: a background job it left holding stdout does not make the call
//! wait. On a timeout the whole group is killed, so no retry leaves an
//! orphan behind; after a clean exit, what it started keeps running.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{parse_answer, Call, HookAnswer, HookError, HookRequest, Provisioner, MAX_ANSWER_BYTES};

/// `hook = { kind = "exec", command = [...], env = [...] }`.
pub(crate) struct Exec {
    pub(crate) command: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) env: Vec<String>,
}

impl Provisioner for Exec {
    fn call<'a>(&'a mut self, req: &'a HookRequest) -> Call<'a> {
        Box::pin(call_exec(&self.command, &self.env, req, self.timeout))
    }
}

/// Variables every exec hook gets from tidegate's environment (when set);
/// a hook's `env` list adds more.
pub(crate) const ENV_ALLOWED: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

/// After the command exits, how long what it wrote may still take to be
/// read (a pipe a background job keeps open never reaches EOF).
const AFTER_EXIT: Duration = Duration::from_millis(200);

/// Runs `command` with the request on stdin; the answer is its stdout.
/// `env` names variables passed on besides [`ENV_ALLOWED`].
pub async fn call_exec(
    command: &[String],
    env: &[String],
    req: &HookRequest,
    timeout: Duration,
) -> Result<HookAnswer, HookError> {
    let (program, args) = command.split_first().ok_or_else(|| HookError::Spawn {
        command: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let passed = ENV_ALLOWED
        .iter()
        .copied()
        .chain(env.iter().map(String::as_str))
        .filter_map(|name| std::env::var_os(name).map(|v| (name, v)));
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(passed)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            command: command.join(" "),
            source,
        })?;
    let group = child.id();
    let input = serde_json::to_vec(req).expect("a request always serialises");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let run = async {
        // A hook that never reads its stdin must not block us: the write is
        // inside the timeout, and a closed pipe is not an error here.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        let reads = async {
            tokio::join!(
                read_capped(stdout, &mut out, MAX_ANSWER_BYTES),
                read_capped(stderr, &mut err, 4096)
            )
        };
        tokio::pin!(reads);
        tokio::select! {
            _ = &mut reads => child.wait().await,
            status = child.wait() => {
                let _ = tokio::time::timeout(AFTER_EXIT, &mut reads).await;
                status
            }
        }
    };
    let Ok(status) = tokio::time::timeout(timeout, run).await else {
        // Nothing of a timed-out call may outlive it: what the command
        // started would hold its pipes and pile up, one per retry. (A call
        // that exited may leave jobs running: starting backends is what
        // some hooks are for.)
        if let Some(pid) = group {
            kill_group(pid).await;
        }
        return Err(HookError::Timeout(timeout));
    };
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

/// Reads `from` into `into` until EOF or `cap` bytes.
async fn read_capped(from: impl AsyncRead + Unpin, into: &mut Vec<u8>, cap: usize) {
    let _ = from.take(cap as u64).read_to_end(into).await;
}

/// SIGKILL to the process group `pid` leads (the hook and anything it
/// started), through kill(1): the crate forbids `unsafe`, and this runs
/// only on a timeout. A group already gone is fine.
async fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
