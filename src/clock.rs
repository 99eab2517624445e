//! The two clocks tidegate reads, in one place.
//!
//! Leaf: imports no other tidegate module. [`clock_ns`] is tokio's
//! monotonic clock (so `start_paused` tests control it) as nanoseconds since
//! the process's first reading: the data path stamps latency EWMAs with it,
//! the control path ejections and slow start. [`unix_ms`] is the wall clock,
//! used only for records a person reads (reloads, autoscaling decisions,
//! hook calls, the access log) and for the history file's minute keys.

use std::sync::OnceLock;
use std::time::SystemTime;

/// Nanoseconds since the process's first call, on tokio's clock.
pub(crate) fn clock_ns() -> u64 {
    clock_ns_at(tokio::time::Instant::now())
}

/// [`clock_ns`] at an instant already read (one clock reading serves two
/// figures).
pub(crate) fn clock_ns_at(at: tokio::time::Instant) -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(|| at)).as_nanos() as u64
}

/// Wall-clock milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the one wall-clock reading
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
