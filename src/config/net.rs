//! Address ranges in configuration (`trusted_proxies`): CIDR blocks.
//!
//! Control path parses them; the data path asks [`IpNet::contains`] (a
//! mask and a compare, no allocation).

use std::fmt;
use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
