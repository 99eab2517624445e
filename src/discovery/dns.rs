//! One pool's DNS name asked through hickory's stub resolver: A and AAAA
//! records with the configured port, or SRV records with their targets'
//! addresses and ports.
//!
//! Control path, below `discovery/mod.rs`. The name server is the
//! configured one (UDP, then TCP for truncated answers) or the system's
//! (`/etc/resolv.conf`: search domains, ndots). The resolver's cache is
//! cleared before every resolution, so `interval` is how stale members
//! can be, whatever TTL the zone sets.

use std::net::SocketAddr;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{DnsLookup, DnsMembers};

/// Why a resolution gave no members.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("cannot read the system's resolver configuration: {0}")]
    System(String),
    #[error("{0}")]
    Lookup(#[from] hickory_resolver::ResolveError),
    #[error("no answer within the interval")]
    Timeout,
}

/// The server answered, and the answer is that there is nothing (the
/// name does not exist, or has no records of the type): not a failure to
/// resolve, which SERVFAIL, REFUSED or a timeout are.
fn answered_nothing(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    matches!(
        e.proto().map(|p| p.kind()),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError | ResponseCode::NXDomain,
            ..
        })
    )
}

/// A resolver for one pool's name.
pub(crate) struct Resolver {
    inner: TokioResolver,
    name: String,
    lookup: DnsLookup,
}

impl Resolver {
    /// Reads the system's configuration unless `from` names a server.
    pub(crate) fn new(from: &DnsMembers) -> Result<Resolver, ResolveError> {
        let mut builder = match from.nameserver {
            Some(server) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(|e| ResolveError::System(e.to_string()))?,
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = from.interval.min(std::time::Duration::from_secs(5));
        Ok(Resolver {
            inner: builder.build(),
            name: from.name.clone(),
            lookup: from.lookup,
        })
    }

    /// The addresses the name stands for now (unsorted, maybe repeated);
    /// none when the name does not exist or has no such records.
    pub(crate) async fn members(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        match self.lookup().await {
            Err(ResolveError::Lookup(e)) if answered_nothing(&e) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn lookup(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        self.inner.clear_cache();
        match self.lookup {
            DnsLookup::Address { port } => {
                let ips = self.inner.lookup_ip(self.name.as_str()).await?;
                Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
            }
            DnsLookup::Srv => {
                let records = self.inner.srv_lookup(self.name.as_str()).await?;
                let mut found = Vec::new();
                let mut failed = None;
                for srv in records.iter().take(super::MAX_MEMBERS) {
                    // The targets' addresses usually came in the SRV
                    // answer's additional section and are cached by now.
                    // A target that does not resolve is left out; all of
                    // them failing is the resolution failing.
                    match self.inner.lookup_ip(srv.target().clone()).await {
                        Ok(ips) => found.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port()))),
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) if found.is_empty() => Err(e.into()),
                    _ => Ok(found),
                }
            }
        }
    }
}
