//! Backends and the connections tidegate keeps to them.
//!
//! `backend.rs` is the per-backend object the data path reads (atomics) and
//! the control path carries across reloads; `upstream.rs` holds the
//! keep-alive connections to one backend.

pub mod backend;
pub mod upstream;

pub use backend::{Backend, BackendState};
