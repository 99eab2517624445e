//! What `/stats` and the dashboard show of one pool's autoscaler.
//!
//! Control path: written by the pool's loop once a second, read by the
//! admin listener (cloned under a short lock, never held across an await).

use std::collections::VecDeque;

/// Decisions and hook calls kept per pool.
pub const KEPT: usize = 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    pub at_unix_ms: u64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HookRecord {
    pub at_unix_ms: u64,
    pub seq: u64,
    pub desired: u32,
    pub removed: usize,
    pub result: &'static str,
    pub error: Option<String>,
    pub members: usize,
    pub duration_ms: u64,
}

/// One pool's autoscaler.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub dry_run: bool,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub draining: usize,
    pub hook_failures: u64,
    /// Seconds a new member takes to become ready: learned from the
    /// members seen so far, or the configured guess before any.
    pub provisioning_delay_s: f64,
    pub provisioning_delay_learned: bool,
    /// Members reported by the hook that never became ready in time.
    pub replaced: u64,
    /// Draining members removed at `drain_timeout` with requests still open.
    pub drain_timeouts: u64,
    /// Members the provisioner kept listing after it was asked to remove
    /// them (ignored from then on).
    pub ignored_removals: Vec<String>,
    /// The rate the recorded history expects within the lookahead.
    pub forecast_rate: Option<f64>,
    /// The scheduled minimum in force.
    pub scheduled_floor: u32,
    /// Mean queue wait of the requests that left the queue in the last second.
    pub queue_wait_ms: f64,
    /// Minutes of history recorded (and where, when kept on disk).
    pub history_minutes: usize,
    pub history_file: Option<String>,
    /// Newest first.
    pub decisions: VecDeque<DecisionRecord>,
    pub hook_calls: VecDeque<HookRecord>,
}
