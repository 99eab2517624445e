//! The elastic pool's decision layer: control path, pure.
//!
//! `signal.rs` keeps one sample per second; `policy.rs` turns the history
//! into a desired size (tidegate's default and faithful KPA/HPA baselines);
//! `erlang.rs` is the queueing math the default policy and the simulator's
//! oracle share. Nothing here does I/O or reads a clock, so the live loop
//! and the simulator run the same code.

pub mod erlang;
pub mod forecast;
pub mod guard;
pub mod history_file;
pub mod hook;
pub mod policy;
pub mod run;
pub mod schedule;
pub mod signal;
pub mod warmup;
