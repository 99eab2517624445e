//! tidegate: a Layer-7 reverse-proxy load balancer that turns its own queue
//! into capacity.
//!
//! # Architecture
//!
//! **Data path** (per request; no lock on the uncontended path, no await
//! while holding a guard):
//!
//! ```text
//! server/    accept (TCP or TLS), HTTP/1.1 + HTTP/2 on one port, limits
//!   -> proxy/    load the live Snapshot once (state.rs), route host + path
//!   -> pool/     admission: pick a backend with a free slot (balance/),
//!                or wait in the pool's bounded FIFO queue (queue.rs)
//!   -> proxy/    rewrite headers, forward over a pooled keep-alive
//!                connection (pool/upstream.rs), stream bodies both ways
//!   -> proxy/body.rs  the in-flight slot rides in the response body and is
//!                freed when the body ends (handed to the oldest waiter)
//! ```
//!
//! **Control path** (one writer; the hot path only sees whole snapshots):
//! `config/` parses and validates the TOML file; `state.rs` builds a new
//! [`state::Snapshot`] from it, carrying pools' queues and backends (with
//! their counters and in-flight counts) by identity, and swaps it in.
//!
//! `demo/` holds the demo runner and the `tidegate backend` shop simulator.

pub mod balance;
pub mod config;
pub mod demo;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod server;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use config::Config;
use server::Bound;
use state::State;

/// Why tidegate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("listener `{name}`: {source}")]
    Tls {
        name: String,
        source: server::tls::TlsError,
    },
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Loads every listener's certificates, then binds every listener. Nothing
/// is bound unless all certificates load.
pub async fn bind(config: &Config) -> Result<Vec<Bound>, StartError> {
    let mut acceptors = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(t) => Some(server::tls::acceptor(t).map_err(|source| StartError::Tls {
                name: l.name.clone(),
                source,
            })?),
            None => None,
        };
        acceptors.push(tls);
    }
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (l, tls) in config.listeners.iter().zip(acceptors) {
        let listener = TcpListener::bind(l.listen).await.map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.listen,
            source,
        })?;
        bound.push(Bound {
            name: l.name.clone(),
            listener,
            tls,
        });
    }
    Ok(bound)
}

/// Serves `bound` listeners with the live `state` until `shutdown`
/// completes, then drains: stop accepting, let in-flight requests finish
/// within `runtime.shutdown_timeout`, return.
pub async fn run(state: Arc<State>, bound: Vec<Bound>, shutdown: impl Future<Output = ()>) {
    let config = Arc::clone(&state.load().config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = bound
        .into_iter()
        .map(|b| {
            tokio::spawn(server::serve(
                b,
                Arc::clone(&state),
                config.limits.clone(),
                stop_rx.clone(),
                config.runtime.shutdown_timeout,
            ))
        })
        .collect();
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
}
