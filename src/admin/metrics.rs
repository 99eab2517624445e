//! The Prometheus recorder behind `GET /metrics`.
//!
//! Installed once per process, before the first backend exists (the first
//! [`crate::state::State`] does it): metric handles bind to the recorder
//! present when they are created, so handles made earlier would stay no-ops.
//! The data path only touches handles kept on backends and queues.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::control::{CONFIG_RELOADS_TOTAL, POOL_BACKENDS};
use crate::pool::backend::names;

/// Histogram buckets for every `_seconds` metric: 1 ms to 30 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::REQUESTS_TOTAL,
        "Responses by pool, backend and status class (error = no response)"
    );
    describe_histogram!(
        names::REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from sending a request to its response head"
    );
    describe_histogram!(
        names::QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time requests spent in a pool's queue"
    );
    describe_gauge!(names::POOL_QUEUE_DEPTH, "Requests waiting in a pool's queue");
    describe_gauge!(names::BACKEND_IN_FLIGHT, "Requests in flight on a backend");
    describe_gauge!(POOL_BACKENDS, "Backends of a pool by state");
    describe_counter!(CONFIG_RELOADS_TOTAL, "Config reload attempts by result");
}
