//! The elastic pool: control path.
//!
//! **Pure** (no tokio, no I/O, no clock; time and randomness come in as
//! arguments, and none of these import `state` or `pool`): `signal.rs`
//! (one sample per second, a bounded history), `policy.rs` (the policies
//! and the KPA/HPA baselines), `tidegate.rs` (the default policy),
//! `erlang.rs` (the queueing math the policy and the simulator's oracle
//! share), `forecast.rs` (per-minute
//! history, same minutes yesterday and last week), `guard.rs` (step limits
//! and cooldowns), `schedule.rs` (the flash-sale calendar's floor),
//! `warmup.rs` (learning the provisioning delay, choosing scale-in
//! victims) and `step.rs`, the one step function (sample -> view ->
//! decide -> guard) that the live loop and `tidegate simulate` both run.
//!
//! **I/O**: `hook/` (one file per provisioner kind behind one trait) and
//! `live/` (the per-pool loop on tokio, its status, the history file).

pub(crate) mod erlang;
pub(crate) mod forecast;
pub(crate) mod guard;
pub mod hook;
pub(crate) mod live;
pub(crate) mod policy;
pub(crate) mod schedule;
pub(crate) mod signal;
pub(crate) mod step;
pub(crate) mod tidegate;
pub(crate) mod warmup;
