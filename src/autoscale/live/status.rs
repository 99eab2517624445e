//! What `/stats` and the dashboard show of one pool's autoscaler.
//!
//! Control path: written by the pool's loop once a second, read by the
//! admin listener (cloned under a short lock, never held across an await).

use std::collections::VecDeque;

/// Decisions and hook calls kept per pool.
pub(crate) const KEPT: usize = 20;
/// Seconds of per-second history kept per pool (30 minutes).
pub(crate) const SECONDS_KEPT: usize = 1800;

/// One second of an autoscaled pool: what the step saw and what it asked
/// for. `GET /history` serves the last [`SECONDS_KEPT`]; the same fields
/// (minus `unix`, `desired`, `violations`) are `tidegate simulate --stdio`'s
/// input, so a recorded history replays through the same step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct Second {
    /// Seconds since the pool's autoscaler started.
    pub(crate) t: u64,
    /// Wall-clock seconds (UTC).
    pub(crate) unix: u64,
    pub(crate) arrivals: u64,
    pub(crate) completions: u64,
    pub(crate) in_flight: u64,
    pub(crate) queued: u64,
    /// Mean queue wait of the requests that left the queue this second.
    pub(crate) queue_wait_ms: f64,
    /// The same per priority class: critical, normal, sheddable.
    pub(crate) queue_wait_ms_by_class: [f64; 3],
    /// Coefficient of variation of the service times measured so far
    /// (absent before any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) service_cv: Option<f64>,
    pub(crate) ready: u32,
    /// Members asked for and not ready yet.
    pub(crate) pending: u32,
    /// The size asked for after this second (the last decision).
    pub(crate) desired: u32,
    /// Requests that broke the queue-wait SLO this second.
    pub(crate) violations: u64,
    /// The same per priority class: critical, normal, sheddable.
    pub(crate) violations_by_class: [u64; 3],
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DecisionRecord {
    pub(crate) at_unix_ms: u64,
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct HookRecord {
    pub(crate) at_unix_ms: u64,
    pub(crate) seq: u64,
    pub(crate) desired: u32,
    pub(crate) removed: usize,
    pub(crate) result: &'static str,
    pub(crate) error: Option<String>,
    pub(crate) members: usize,
    pub(crate) duration_ms: u64,
}

/// One pool's autoscaler.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Status {
    pub(crate) dry_run: bool,
    /// `hook` (tidegate provisions) or `export` (something else scales).
    pub(crate) mode: &'static str,
    pub(crate) desired: u32,
    pub(crate) current: u32,
    pub(crate) ready: u32,
    pub(crate) draining: usize,
    pub(crate) hook_failures: u64,
    /// Seconds a new member takes to become ready: learned from the
    /// members seen so far, or the configured guess before any.
    pub(crate) provisioning_delay_s: f64,
    pub(crate) provisioning_delay_learned: bool,
    /// Members reported by the hook that never became ready in time.
    pub(crate) replaced: u64,
    /// Draining members removed at `drain_timeout` with requests still open.
    pub(crate) drain_timeouts: u64,
    /// Members the provisioner kept listing after it was asked to remove
    /// them (ignored from then on).
    pub(crate) ignored_removals: Vec<String>,
    /// The rate the recorded history expects within the lookahead.
    pub(crate) forecast_rate: Option<f64>,
    /// The scheduled minimum in force.
    pub(crate) scheduled_floor: u32,
    /// Mean queue wait of the requests that left the queue in the last second.
    pub(crate) queue_wait_ms: f64,
    /// The same per priority class: critical, normal, sheddable.
    pub(crate) queue_wait_ms_by_class: [f64; 3],
    /// Minutes of history recorded (and where, when kept on disk).
    pub(crate) history_minutes: usize,
    pub(crate) history_file: Option<String>,
    /// Newest first.
    pub(crate) decisions: VecDeque<DecisionRecord>,
    pub(crate) hook_calls: VecDeque<HookRecord>,
}
