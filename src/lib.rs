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

pub mod admin;
pub mod autoscale;
pub mod balance;
pub mod config;
pub mod control;
pub mod demo;
pub mod health;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod server;
pub mod sim;
pub mod state;
pub mod stats;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

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

/// Loads a listener's certificates, if it has TLS.
pub fn load_tls(l: &config::Listener) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    match &l.tls {
        Some(t) => server::tls::acceptor(t).map(Some).map_err(|source| StartError::Tls {
            name: l.name.clone(),
            source,
        }),
        None => Ok(None),
    }
}

/// Binds one listener.
pub async fn bind_listener(l: &config::Listener, tls: Option<tokio_rustls::TlsAcceptor>) -> Result<Bound, StartError> {
    let listener = TcpListener::bind(l.listen).await.map_err(|source| StartError::Bind {
        name: l.name.clone(),
        addr: l.listen,
        source,
    })?;
    Ok(Bound {
        name: l.name.clone(),
        listener,
        tls: Arc::new(arc_swap::ArcSwapOption::new(tls.map(Arc::new))),
    })
}

/// Loads every listener's certificates, then binds every listener. Nothing
/// is bound unless all certificates load.
pub async fn bind(config: &Config) -> Result<Vec<Bound>, StartError> {
    let acceptors = config.listeners.iter().map(load_tls).collect::<Result<Vec<_>, _>>()?;
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (l, tls) in config.listeners.iter().zip(acceptors) {
        bound.push(bind_listener(l, tls).await?);
    }
    Ok(bound)
}

/// Binds the admin listener, if the config has one.
pub async fn bind_admin(config: &Config) -> Result<Option<TcpListener>, StartError> {
    match &config.admin {
        Some(a) => TcpListener::bind(a.listen)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: a.listen,
                source,
            }),
        None => Ok(None),
    }
}

/// Serves `bound` listeners with the live `state` until `shutdown`
/// completes, then drains (see [`control::run`] for the full form with an
/// admin listener and reload triggers).
pub async fn run(state: Arc<State>, bound: Vec<Bound>, shutdown: impl Future<Output = ()>) {
    control::run(state, bound, None, control::Options::default(), shutdown).await
}
