//! Who the client is, and the request id it is known by.
//!
//! Data path. The connection's peer is the socket's address, or the one a
//! PROXY protocol header named (`server/proxy_protocol.rs`). When that peer
//! is one of `limits.trusted_proxies`, the addresses it reports in
//! `X-Forwarded-For` are believed, from the right, up to the first address
//! that is not itself a trusted proxy: that is the client (for hashing,
//! the access log and rate limits), and the header is kept and appended to.
//! Anyone else's `X-Forwarded-For` is a claim, not a fact: it is replaced.
//! No allocation unless a trusted proxy actually sent the header.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::net::IpNet;

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept from a trusted client.
const MAX_REQUEST_ID: usize = 200;

/// Whether `ip` is a trusted proxy.
pub(super) fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client's address: `peer`, or behind trusted proxies, the rightmost
/// `X-Forwarded-For` entry that is not a trusted proxy (an entry that is
/// not an address ends the walk at the last good one).
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    // Values in order, entries right to left: the last value's last entry
    // is the hop nearest to us.
    for v in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for entry in s.rsplit(',') {
            match parse_entry(entry.trim()) {
                Some(ip) => {
                    client = ip;
                    if !is_trusted(trusted, ip) {
                        return client;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn parse_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':')
        .and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
}

/// The request's id: a trusted client's `X-Request-Id` when it is sane
/// (visible ASCII, at most 200 bytes), else a new random one; set on the
/// request so the backend sees it.
pub(super) fn request_id(headers: &mut HeaderMap, trusted: bool) -> HeaderValue {
    if trusted {
        if let Some(v) = headers.get(X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
    }
    let id = new_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// 128 random bits as 32 lower-case hex digits.
///
/// The value is shared by the upstream request and the request's own copy
/// (access log, error response): built on a reference-counted owner, its
/// clone is a count, where a copied slice's first clone allocates again.
fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for digits in out.chunks_exact_mut(16) {
        let bits = fastrand::u64(..);
        for (i, c) in digits.iter_mut().enumerate() {
            *c = HEX[((bits >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out)).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["198.51.100.1"]);
        let peer = "203.0.113.7".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &[]), peer);
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = "10.0.0.2".parse().unwrap();
        // A forged entry on the left is never reached.
        let h = xff(&["1.2.3.4, 198.51.100.9", "10.0.0.7"]);
        assert_eq!(client_ip(peer, &h, &trusted), "198.51.100.9".parse::<IpAddr>().unwrap());
        let h = xff(&["[2001:db8::5]:443, 203.0.113.1:999"]);
        assert_eq!(client_ip(peer, &h, &trusted), "203.0.113.1".parse::<IpAddr>().unwrap());
        // Garbage ends the walk at the last address believed.
        let h = xff(&["198.51.100.9, nonsense, 10.0.0.8"]);
        assert_eq!(client_ip(peer, &h, &trusted), "10.0.0.8".parse::<IpAddr>().unwrap());
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_clients_and_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut h.clone(), true), "abc-123");
        let mine = request_id(&mut h, false);
        assert_ne!(mine, "abc-123");
        assert_eq!(h[X_REQUEST_ID], mine, "set on the request");
        assert_eq!(mine.len(), 32);
        let mut long = HeaderMap::new();
        long.insert(X_REQUEST_ID, HeaderValue::from_str(&"x".repeat(201)).unwrap());
        assert_eq!(request_id(&mut long, true).len(), 32);
        let mut spaced = HeaderMap::new();
        spaced.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(request_id(&mut spaced, true).len(), 32);
    }
}
