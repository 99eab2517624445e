//! TLS from tidegate to a pool's backends (`upstream_tls`), verified by
//! rustls against a given CA file or the system's trust store.
//!
//! Data path below the proxy: a [`Connector`] is built once per pool
//! config (off the hot path, by the snapshot builder) and used only when a
//! new upstream connection is dialled; pooled connections carry no TLS
//! cost per request. ALPN asks for `http/1.1` or `h2` to match the pool's
//! upstream protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamTls;

/// Where distributions keep their CA bundle (Debian and Ubuntu, Fedora and
/// RHEL, Alpine and others), after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why a pool's TLS client could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamTlsError {
    #[error("{0}: {1}")]
    Ca(String, String),
    #[error("no CA bundle found (set SSL_CERT_FILE, or `ca` in upstream_tls)")]
    NoSystemRoots,
}

/// One pool's TLS client settings.
pub(crate) struct Connector {
    http1: TlsConnector,
    h2: TlsConnector,
    /// The name every backend is verified against, when the config gives one.
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    /// Builds the client from `cfg` (reads the CA file or the system's).
    pub(crate) fn new(cfg: &UpstreamTls) -> Result<Connector, UpstreamTlsError> {
        Ok(Connector::with_roots(
            roots(cfg.ca.as_deref())?,
            cfg.server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_string()).ok()),
        ))
    }

    /// A client that trusts no one: every handshake fails (for a pool whose
    /// CA could not be read, which must never fall back to plain TCP).
    pub(crate) fn refusing() -> Connector {
        Connector::with_roots(RootCertStore::empty(), None)
    }

    fn with_roots(roots: RootCertStore, server_name: Option<ServerName<'static>>) -> Connector {
        let client = |alpn: &[u8]| {
            let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(c))
        };
        Connector {
            http1: client(b"http/1.1"),
            h2: client(b"h2"),
            server_name,
        }
    }

    /// The name to verify a backend against: the configured one, else the
    /// backend's host name, else its address.
    pub(crate) fn name_for(&self, host: Option<&str>, addr: std::net::SocketAddr) -> ServerName<'static> {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        host.and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// Runs the handshake on a connected socket.
    pub(crate) async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
        h2: bool,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = if h2 { &self.h2 } else { &self.http1 };
        connector.connect(name, tcp).await
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How to reach one backend over TLS: its pool's connector and the name
/// its certificate must carry.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) connector: Arc<Connector>,
    pub(crate) name: ServerName<'static>,
}

/// The trust store: `ca`'s certificates, or the system bundle's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, UpstreamTlsError> {
    let path: PathBuf = match ca {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .or_else(|| SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()))
            .ok_or(UpstreamTlsError::NoSystemRoots)?,
    };
    let shown = path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|i| i.collect())
        .map_err(|e| UpstreamTlsError::Ca(shown.clone(), e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UpstreamTlsError::Ca(shown, "no usable certificate".into()));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_configured_one_then_the_host_then_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let addr = "10.0.0.5:443".parse().unwrap();
        let named = Connector::new(&UpstreamTls {
            server_name: Some("shop.internal".into()),
            ca: Some(ca.clone()),
        })
        .unwrap();
        assert_eq!(
            format!("{:?}", named.name_for(Some("b1.internal"), addr)),
            "DnsName(\"shop.internal\")"
        );
        let plain = Connector::new(&UpstreamTls {
            server_name: None,
            ca: Some(ca),
        })
        .unwrap();
        assert_eq!(
            format!("{:?}", plain.name_for(Some("b1.internal"), addr)),
            "DnsName(\"b1.internal\")"
        );
        assert!(matches!(plain.name_for(None, addr), ServerName::IpAddress(_)));
        let missing = Connector::new(&UpstreamTls {
            server_name: None,
            ca: Some(dir.path().join("nope.pem")),
        });
        assert!(matches!(missing, Err(UpstreamTlsError::Ca(..))));
    }
}
