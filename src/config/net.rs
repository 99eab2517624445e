//! Network names in configuration: address ranges (`trusted_proxies`,
//! CIDR blocks) and the DNS names pools take members from; and an address
//! as text for the data path ([`ip_text`]).
//!
//! Control path parses them; the data path asks [`IpNet::contains`] (a
//! mask and a compare, no allocation).

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::DnsLookup;

/// The address as text, on the stack (an IPv6 address is at most 45
/// characters). IPv4, nearly every client, without `fmt`. One writer for
/// every place that prints a client's address per request
/// (`X-Forwarded-For`, the access log).
pub(crate) fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let mut n = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
        }
        IpAddr::V6(_) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            n = 48 - w.len();
        }
    }
    &buf[..n]
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare
/// address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the block. An IPv4 address mapped into IPv6
    /// (`::ffff:10.1.2.3`, as a dual-stack socket reports it) matches the
    /// IPv4 block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or block such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{s}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `backends_from.dns`: `name:port` asks for A and AAAA records, a name
/// whose first label starts with `_` (`_http._tcp.shop.svc`) for SRV
/// records, which carry their own ports.
pub(crate) fn dns_target(s: &str) -> Result<(String, DnsLookup), String> {
    let srv = s.starts_with('_');
    let (name, lookup) = match (s.rsplit_once(':'), srv) {
        (Some((_, _)), true) => return Err(format!("`{s}`: an SRV name carries its ports; write it without one")),
        (None, true) => (s, DnsLookup::Srv),
        (None, false) => {
            return Err(format!(
                "`{s}` needs a port (`name:8080`), or an SRV name (`_http._tcp.name`)"
            ))
        }
        (Some((name, port)), false) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (name, DnsLookup::Address { port }),
            _ => return Err(format!("`{s}`: the port must be 1 to 65535")),
        },
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("`{name}` is not a DNS name"));
    }
    if bare.parse::<IpAddr>().is_ok() {
        return Err(format!("`{name}` is an address; list it in `backends` instead"));
    }
    Ok((name.to_string(), lookup))
}

/// `backends_from.nameserver`: `address` or `address:port` (default 53).
pub(crate) fn nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{s}` is not an address or address:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_like_display() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "10.0.9.100",
            "203.0.113.7",
            "255.255.255.255",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn dns_targets_are_a_name_and_a_port_or_an_srv_name() {
        assert_eq!(
            dns_target("shop.default.svc.cluster.local:8080"),
            Ok((
                "shop.default.svc.cluster.local".to_string(),
                DnsLookup::Address { port: 8080 }
            ))
        );
        assert_eq!(
            dns_target("_http._tcp.shop.default.svc"),
            Ok(("_http._tcp.shop.default.svc".to_string(), DnsLookup::Srv))
        );
        assert!(dns_target("shop.local").unwrap_err().contains("needs a port"));
        assert!(dns_target("_http._tcp.shop:80").unwrap_err().contains("SRV"));
        assert!(dns_target("shop.local:0").is_err());
        assert!(dns_target("shop.local:99999").is_err());
        assert!(dns_target("sh op.local:80").unwrap_err().contains("not a DNS name"));
        assert!(dns_target("-shop.local:80").is_err());
        assert!(dns_target("shop..local:80").is_err());
        assert!(dns_target("10.0.0.1:80").unwrap_err().contains("backends"));
        assert_eq!(nameserver("127.0.0.1"), Ok("127.0.0.1:53".parse().unwrap()));
        assert_eq!(nameserver("127.0.0.1:5353"), Ok("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(nameserver("[::1]:5353"), Ok("[::1]:5353".parse().unwrap()));
        assert_eq!(nameserver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert!(nameserver("dns.local").is_err());
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_and_only_those() {
        assert!(net("10.0.0.0/8").contains("10.200.1.2".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("127.0.0.1").contains("127.0.0.1".parse().unwrap()));
        assert!(!net("127.0.0.1").contains("127.0.0.2".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("203.0.113.7".parse().unwrap()));
        assert!(net("2001:db8::/32").contains("2001:db8:1::9".parse().unwrap()));
        assert!(!net("2001:db8::/32").contains("2001:db9::1".parse().unwrap()));
        assert!(net("10.0.0.0/8").contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_blocks_are_refused() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("shop.example/8".parse::<IpNet>().is_err());
        assert!("::/129".parse::<IpNet>().is_err());
    }
}
