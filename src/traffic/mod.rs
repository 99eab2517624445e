//! Traffic control at the edge: what a request may do before it asks a
//! pool for a slot.
//!
//! Data path, below `proxy` (which asks) and `state` (which builds these
//! objects into each snapshot and carries their counters across reloads);
//! it imports only the `config` and `clock` leaves. Nothing here does I/O
//! or awaits: the control path's periodic upkeep (the rate-limit sweep) is
//! driven from the composition root.
//!
//! - [`ratelimit`]: per-client GCRA limits on a keyed concurrent map with a
//!   bounded key count (`[[rate_limit]]`).

pub(crate) mod ratelimit;
