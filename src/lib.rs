//! tidegate: a Layer-7 reverse-proxy load balancer that turns its own queue
//! into capacity.
//!
//! # Module map (layers; every import points down)
//!
//! ```text
//! tooling      main.rs (CLI edge)   demo/ (only main.rs imports it)   sim/ (imports only pure autoscale)
//! composition  app.rs               the only place that starts the long-lived services
//! control      control/  the reload transaction and the view the admin reads
//!              admin/    /stats, /metrics, dashboard, /healthz, /readyz, POST /reload
//!              health/   the probe supervisor (active checks, upkeep)
//!              autoscale/ pure: signal policy erlang forecast guard warmup schedule step
//!                         live/ (per-pool loop, status, history file), hook/ (one file per kind)
//!              cluster/  several instances through etcd: lease, election, summed demand, membership
//!              discovery/ members from DNS (A/AAAA, SRV), re-resolved per pool
//! data         server/   accept (TCP/TLS), bind, strict HTTP/1 framing (h1_guard)
//!              proxy/    per request: prepare, limit, admit, send, upgrade, respond, errors
//!              traffic/  edge traffic control before admission (per-client rate limits)
//!              cache/    the micro-cache: moka store, coalescing flights, RFC 9111 rules
//!              state/    the snapshot behind ArcSwap, its builder, the router
//!              pool/     admission, backends, the queue, per-backend health accounting
//!              balance/  pick (pure)      upstream/  keep-alive connections, request body
//!              histogram.rs   access_log.rs (the writer thread; requests only try_send)
//! leaves       config/  clock.rs  shutdown.rs  telemetry.rs (every metric name + HELP)
//!              sd_notify.rs (systemd's readiness protocol)
//! ```
//!
//! **Data path** (per request; no lock on the uncontended path, no await
//! while holding a guard): `server` accepts and speaks HTTP/1.1 + HTTP/2,
//! `proxy` loads the live snapshot once (`state`), routes host + path,
//! checks the matching rate limits (`traffic`), serves a cached route's
//! hits from `cache` (a hit never asks for a slot), asks `pool` admission for
//! a slot (`balance` picks, or the request waits in its priority lane of
//! the pool's bounded queue), forwards over an `upstream` keep-alive
//! connection and streams the body back with the slot inside it.
//!
//! **Control path** (one writer per kind of change; the hot path only sees
//! whole snapshots): `control` runs reloads, `autoscale::live` publishes
//! membership, `discovery` applies DNS answers, `health` probes backends; `admin` only reads.
//!
//! The dependency rules are checked by `tests/architecture.rs`.

pub(crate) mod access_log;
pub(crate) mod admin;
pub mod app;
pub mod autoscale;
pub mod balance;
pub(crate) mod cache;
pub(crate) mod clock;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod control;
pub mod demo;
pub(crate) mod discovery;
pub mod health;
pub(crate) mod histogram;
pub mod pool;
pub mod proxy;
pub(crate) mod sd_notify;
pub mod server;
pub(crate) mod shutdown;
pub mod sim;
pub mod state;
pub(crate) mod telemetry;
pub(crate) mod traffic;
pub(crate) mod upstream;
