//! Turning listener config into bound sockets, before anything serves.
//!
//! Data path entry (start-up and reload, never per request). Certificates
//! are loaded for every listener before any socket is bound, so a bad
//! certificate binds nothing; a bind error names the listener and address.
//! The control path's reload transaction uses the same functions for the
//! listeners a new config adds.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::tls::{self, TlsError};
use crate::config::{Config, ConfigError, Listener};

/// A bound listener with what it needs to serve. The TLS acceptor sits
/// behind an `ArcSwapOption` so a reload can replace certificates under a
/// live listener; each handshake uses the acceptor current at accept time.
pub struct Bound {
    /// The listener's name in the config.
    pub name: String,
    /// The bound socket.
    pub listener: TcpListener,
    /// Its TLS acceptor, if it terminates TLS.
    pub tls: Arc<ArcSwapOption<TlsAcceptor>>,
}

/// Why tidegate could not start (or a reload could not add a listener).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener's certificates could not be loaded.
    #[error("{name}: certificates")]
    Tls {
        /// The listener.
        name: String,
        /// Why.
        source: TlsError,
    },
    /// A listener's address could not be bound (the OS error is the
    /// source, printed once after this).
    #[error("{name}: cannot bind {addr}")]
    Bind {
        /// The listener.
        name: String,
        /// Its address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Loads a listener's certificates, if it has TLS.
pub fn load_tls(l: &Listener) -> Result<Option<TlsAcceptor>, StartError> {
    match &l.tls {
        Some(t) => tls::acceptor(t).map(Some).map_err(|source| StartError::Tls {
            name: l.describe(),
            source,
        }),
        None => Ok(None),
    }
}

/// Binds one listener with its (already loaded) certificates.
pub async fn bind_listener(l: &Listener, tls: Option<TlsAcceptor>) -> Result<Bound, StartError> {
    let listener = TcpListener::bind(l.listen).await.map_err(|source| StartError::Bind {
        name: l.describe(),
        addr: l.listen,
        source,
    })?;
    Ok(Bound {
        name: l.name.clone(),
        listener,
        tls: Arc::new(ArcSwapOption::new(tls.map(Arc::new))),
    })
}

/// Loads and binds one listener.
pub async fn bind_one(l: &Listener) -> Result<Bound, StartError> {
    let tls = load_tls(l)?;
    bind_listener(l, tls).await
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
                name: "admin.listen".into(),
                addr: a.listen,
                source,
            }),
        None => Ok(None),
    }
}
