//! Header rewriting between client and backend (RFC 9110 section 7.6).
//!
//! Data path. Hop-by-hop fields, and every field the `Connection` header
//! names, apply to one connection only and are removed in both directions;
//! the forwarded-for family is added on the way in. `Host` is kept as the
//! client sent it (for HTTP/2 clients it is taken from `:authority`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::config::net::ip_text;

/// Fields that describe one connection, never forwarded (RFC 9110 7.6.1,
/// plus the legacy ones still seen in the wild). `Trailer` is deliberately
/// absent: RFC 2616 listed it, RFC 9110 does not, and hyper only sends the
/// trailer fields a response declares in it.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    // RFC 9113 3.2.1 (via RFC 7540): connection-specific, and only ever
    // part of the h2c upgrade, which is never forwarded.
    HeaderName::from_static("http2-settings"),
];

/// End-to-end fields that `Connection` may not remove: the ones the
/// backend needs to be addressed and to trust the request, and the ones
/// tidegate itself reads. (`Connection: host` stripping `Host`, or
/// `Connection: x-forwarded-for` stripping what tidegate adds, is an
/// attack, not a hop-by-hop option.)
const PROTECTED: [HeaderName; 10] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::COOKIE,
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-request-id"),
];
// Constants, so the names are checked once at compile time, not per request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop fields, and the fields `Connection` names (except the
/// protected end-to-end ones). With `upgrade`, `Connection: upgrade` and
/// `Upgrade` are kept so the peer can switch protocols. Returns whether the
/// message accepts trailers (`TE: trailers`), which is forwarded.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> bool {
    // One pass over the names first: most messages carry none of these
    // (`TE` and `Connection` among them), and asking for an absent name
    // still costs a hash and a probe.
    let te_trailers = headers.keys().any(|k| HOP_BY_HOP.contains(k)) && strip_present(headers, upgrade);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    te_trailers
}

/// [`strip_hop_by_hop`] for a message that carries some hop-by-hop field
/// (all but the final `Connection: upgrade`).
fn strip_present(headers: &mut HeaderMap, upgrade: bool) -> bool {
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    if let Some(conn) = headers.get(header::CONNECTION) {
        if conn.as_bytes().contains(&b',') || !is_common_connection_value(conn.as_bytes()) {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(PROTECTED.contains(n) || upgrade && n == header::UPGRADE))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    te_trailers
}

fn is_common_connection_value(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// The hop a request arrived over, as [`forwarded`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The connection's peer (the socket's, or the PROXY header's) as a
    /// field value: [`peer_value`], made once per connection.
    pub peer: &'a HeaderValue,
    /// The peer is a trusted proxy: what it says about earlier hops is kept.
    pub trusted: bool,
    /// The client connection is TLS.
    pub tls: bool,
}

/// `bytes` as a field value in one allocation whose clones are counts
/// (`None`: not a valid value). A value copied from a slice is a vector
/// that allocates again, for a shared owner, at its first clone.
pub fn shared_value(bytes: &[u8]) -> Option<HeaderValue> {
    /// Room for a long host name with its port.
    const INLINE: usize = 120;
    struct Inline {
        len: u8,
        bytes: [u8; INLINE],
    }
    impl AsRef<[u8]> for Inline {
        fn as_ref(&self) -> &[u8] {
            &self.bytes[..usize::from(self.len)]
        }
    }
    if bytes.len() > INLINE {
        return HeaderValue::from_bytes(bytes).ok();
    }
    let mut inline = Inline {
        len: bytes.len() as u8,
        bytes: [0; INLINE],
    };
    inline.bytes[..bytes.len()].copy_from_slice(bytes);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(inline)).ok()
}

/// A peer's address as the `X-Forwarded-For` value it becomes (made once
/// per connection: copying it into each request's field allocated).
pub fn peer_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_bytes(ip_text(ip, &mut [0; 48])).expect("an address is a valid field value")
}

/// The forwarding fields a request gains on its way to a backend
/// (`X-Forwarded-For`, `-Proto`, `-Host` and `Via`), computed once per
/// request by [`forwarded`]. Over HTTP/1.1 they are written after the
/// request's own fields (`upstream/h1.rs`) and never enter its header map:
/// inserting them made a map sized to the client's fields grow (reallocate
/// and rehash), ~1,000 instructions a request from an HTTP/2 client.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// In the order of [`FORWARDED_NAMES`]; `None`: not added (the
    /// request's own field, if any, stands).
    values: [Option<HeaderValue>; 4],
}

static FORWARDED_NAMES: [HeaderName; 4] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, header::VIA];

impl Forwarded {
    /// The fields to add, name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        FORWARDED_NAMES
            .iter()
            .zip(&self.values)
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    }

    /// Adds the fields to `headers` (for a backend spoken to through a
    /// header map: h2c).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Takes the fields [`Forwarded::insert_into`] added out again (a
    /// request that came back unsent, to be sent another way).
    pub fn remove_from(&self, headers: &mut HeaderMap) {
        for (name, _) in self.iter() {
            headers.remove(name);
        }
    }
}

/// The forwarded-for family and `Via` for a request on its way to a
/// backend; the fields they replace are removed from `headers`. From a
/// trusted proxy, `X-Forwarded-For` is appended to and its
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are kept when present; from
/// anyone else they are replaced (a client's claim is not a fact), and a
/// `Forwarded` field is removed. `Via` is appended to.
pub fn forwarded(headers: &mut HeaderMap, hop: Hop<'_>, host: Option<&HeaderValue>, version: Version) -> Forwarded {
    // One pass over the names first: most requests carry none of the
    // fields below, and asking for an absent one still costs a hash and a
    // probe (six of them).
    let any = headers
        .keys()
        .any(|k| FORWARDED_NAMES.contains(k) || k == header::FORWARDED);
    // An untrusted peer's list is replaced: not read, only removed.
    let mut joined = Vec::new();
    if hop.trusted && any {
        for v in headers.get_all(&X_FORWARDED_FOR).iter().filter(|v| v.to_str().is_ok()) {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
    }
    let xff = if joined.is_empty() {
        Some(hop.peer.clone())
    } else {
        joined.extend_from_slice(hop.peer.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
    };
    let via_hop = match version {
        Version::HTTP_10 => "1.0 tidegate",
        Version::HTTP_2 => "2 tidegate",
        _ => "1.1 tidegate",
    };
    // What a trusted peer sent is kept; nothing is looked up when none of
    // the names is there.
    let trusted_sent = |name: &HeaderName| hop.trusted && any && headers.contains_key(name);
    let proto =
        (!trusted_sent(&X_FORWARDED_PROTO)).then(|| HeaderValue::from_static(if hop.tls { "https" } else { "http" }));
    let replace_host = !trusted_sent(&X_FORWARDED_HOST);
    let via = match any.then(|| headers.get(header::VIA)).flatten().map(HeaderValue::to_str) {
        Some(Ok(prev)) => HeaderValue::from_str(&format!("{prev}, {via_hop}")).ok(),
        _ => Some(HeaderValue::from_static(via_hop)),
    };
    if any {
        if xff.is_some() {
            headers.remove(&X_FORWARDED_FOR);
        }
        if proto.is_some() {
            headers.remove(&X_FORWARDED_PROTO);
        }
        if replace_host {
            headers.remove(&X_FORWARDED_HOST);
        }
        if !hop.trusted {
            headers.remove(header::FORWARDED);
        }
        if via.is_some() {
            headers.remove(header::VIA);
        }
    }
    Forwarded {
        values: [xff, proto, host.filter(|_| replace_host).cloned(), via],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_shared_value_holds_its_bytes_whole_and_refuses_what_a_field_cannot_hold() {
        let host = shared_value(b"shop.example:8443").unwrap();
        assert_eq!(host, "shop.example:8443");
        assert_eq!(host.clone(), host);
        let long = "a".repeat(300);
        assert_eq!(
            shared_value(long.as_bytes()).unwrap(),
            long.as_str(),
            "past the inline room"
        );
        assert_eq!(shared_value(b"").unwrap(), "");
        assert!(shared_value(b"a\r\nb").is_none());
        assert!(shared_value(format!("{long}\n").as_bytes()).is_none());
    }

    #[test]
    fn removes_hop_by_hop_and_every_field_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        assert!(strip_hop_by_hop(&mut h, false));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_fields_for_an_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(!strip_hop_by_hop(&mut h, true));
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_is_appended_for_trusted_proxies_and_replaced_for_others() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        let peer = peer_value("127.0.0.1".parse().unwrap());
        let hop = |trusted| Hop {
            peer: &peer,
            trusted,
            tls: false,
        };
        let mut from_proxy = h.clone();
        let fields = forwarded(&mut from_proxy, hop(true), Some(&host), Version::HTTP_11);
        // Taken out of the map, to be written with the head; a trusted
        // proxy's scheme stays in it.
        let left: Vec<&str> = from_proxy.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-forwarded-proto"]);
        fields.insert_into(&mut from_proxy);
        assert_eq!(from_proxy["x-forwarded-for"], "203.0.113.7, 10.0.0.1, 127.0.0.1");
        assert_eq!(from_proxy.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            from_proxy["x-forwarded-proto"], "https",
            "a trusted proxy's scheme is kept"
        );
        assert_eq!(from_proxy["x-forwarded-host"], "shop.example");
        assert_eq!(from_proxy["via"], "1.1 tidegate");
        // Taken out again (a request that came back unsent): what was the
        // request's own is still there.
        fields.remove_from(&mut from_proxy);
        let left: Vec<&str> = from_proxy.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-forwarded-proto"]);
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        forwarded(&mut h, hop(false), Some(&host), Version::HTTP_11).insert_into(&mut h);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "anyone else's claim is replaced");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key(header::FORWARDED));
    }

    #[test]
    fn connection_cannot_strip_host_or_fields_tidegate_relies_on() {
        let mut h = map(&[
            ("connection", "host, authorization, cookie, x-forwarded-for, x-other"),
            ("host", "shop.example"),
            ("authorization", "Bearer t"),
            ("cookie", "cart=1"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-other", "gone"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "cookie", "host", "x-forwarded-for"]);
    }
}
