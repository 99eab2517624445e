//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front of tidegate names the real client in a header before the first
//! byte of TLS or HTTP.
//!
//! Data path, once per connection on listeners with `proxy_protocol =
//! true` (a header is then required: anyone who can reach such a port
//! could otherwise claim any address). Reads exactly the header's bytes,
//! never a byte of what follows. `PROXY UNKNOWN` (v1) and the `LOCAL`
//! command (v2, a balancer's own health check) keep the socket's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Address block bytes accepted after a v2 header (TLVs included).
const V2_MAX_BLOCK: usize = 1024;

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> HeaderError {
        HeaderError::Io(e.to_string())
    }
}

/// Reads one header from `io`: the client it names, or `None` when it
/// names none (`UNKNOWN`, `LOCAL`).
pub(crate) async fn read_header<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Option<SocketAddr>, HeaderError> {
    let mut start = [0u8; 12];
    io.read_exact(&mut start[..5]).await?;
    if &start[..5] == b"PROXY" {
        let mut line = start[..5].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(HeaderError::V1("longer than 107 bytes"));
            }
            line.push(io.read_u8().await?);
        }
        return parse_v1(&line);
    }
    io.read_exact(&mut start[5..]).await?;
    if start != V2_SIGNATURE {
        return Err(HeaderError::Missing);
    }
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if len > V2_MAX_BLOCK {
        return Err(HeaderError::V2("address block too long"));
    }
    let mut block = vec![0u8; len];
    io.read_exact(&mut block).await?;
    parse_v2(head[0], head[1], &block)
}

/// `PROXY TCP4 src dst sport dport\r\n` (or TCP6, or UNKNOWN ...).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(HeaderError::V1("does not start with `PROXY `"));
    }
    let family = parts.next().ok_or(HeaderError::V1("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(HeaderError::V1("expected source, destination and two ports"));
    };
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(src.parse().map_err(|_| HeaderError::V1("bad IPv4 source"))?),
        "TCP6" => IpAddr::V6(src.parse().map_err(|_| HeaderError::V1("bad IPv6 source"))?),
        _ => return Err(HeaderError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    if sport.is_empty() || sport.starts_with('0') && sport != "0" {
        return Err(HeaderError::V1("bad source port"));
    }
    let port: u16 = sport.parse().map_err(|_| HeaderError::V1("bad source port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// The 16-byte header's version/command and family bytes, then the block.
fn parse_v2(ver_cmd: u8, family: u8, block: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::V2("version is not 2"));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own connection
        1 => {}
        _ => return Err(HeaderError::V2("command is not LOCAL or PROXY")),
    }
    match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let b = block.get(..12).ok_or(HeaderError::V2("IPv4 block too short"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let b = block.get(..36).ok_or(HeaderError::V2("IPv6 block too short"))?;
            let octets: [u8; 16] = b[..16].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([b[32], b[33]]),
            )))
        }
        // UNSPEC, UDP, UNIX: no client address to take.
        0x00 => Ok(None),
        _ => Err(HeaderError::V2("not a TCP connection")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let mut io = bytes;
        let r = read_header(&mut io).await;
        (r, io.to_vec())
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request_unread() {
        let (r, rest) = read(b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("198.51.100.7:5555".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:5555".parse().unwrap())));
        let (r, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test]
    async fn malformed_v1_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 198.51.100.7 10.0.0.1 5555\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 5555 443\r\n",
            b"PROXY TCP5 198.51.100.7 10.0.0.1 5555 443\r\n",
            b"PROXY TCP4 198.51.100.7 10.0.0.1 05555 443\r\n",
            b"PROXY TCP4 198.51.100.7 10.0.0.1 70000 443\r\n",
        ] {
            assert!(
                matches!(read(bad).await.0, Err(HeaderError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(read(&long).await.0, Err(HeaderError::V1("longer than 107 bytes")));
        assert_eq!(read(b"GET / HTTP/1.1\r\n\r\n").await.0, Err(HeaderError::Missing));
    }

    fn v2(cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | cmd, family]);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_keeps_the_socket() {
        let mut block = vec![198, 51, 100, 7, 10, 0, 0, 1];
        block.extend_from_slice(&5555u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend_from_slice(b"GET /");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r, Ok(Some("198.51.100.7:5555".parse().unwrap())));
        assert_eq!(rest, b"GET /");
        assert_eq!(read(&v2(0, 0x00, &[])).await.0, Ok(None));
        assert!(matches!(
            read(&v2(1, 0x11, &[1, 2, 3])).await.0,
            Err(HeaderError::V2(_))
        ));
        let mut wrong_version = v2(1, 0x11, &block);
        wrong_version[12] = 0x11;
        assert!(matches!(read(&wrong_version).await.0, Err(HeaderError::V2(_))));
    }
}
