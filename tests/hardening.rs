//! Bad input: request smuggling shapes (sent as raw bytes) and resource
//! limits. Each smuggling case checks the answer *and* that the backend
//! received nothing at all.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn refused_without_reaching_the_backend(input: &[u8], expect_status: &str) {
    let rec = recorder().await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    let out = raw(p.addr, input).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with(expect_status),
        "for {:?}\ngot {text:?}",
        String::from_utf8_lossy(input)
    );
    assert!(
        rec.received.lock().unwrap().is_empty(),
        "the backend received {:?}",
        String::from_utf8_lossy(&rec.received.lock().unwrap())
    );
    p.shutdown().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    refused_without_reaching_the_backend(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
        "HTTP/1.1 400",
    )
    .await;
    refused_without_reaching_the_backend(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX",
        "HTTP/1.1 400",
    )
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    refused_without_reaching_the_backend(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 400",
    )
    .await;
    refused_without_reaching_the_backend(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "HTTP/1.1 400",
    )
    .await;
}

#[tokio::test]
async fn malformed_chunk_sizes_are_refused() {
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
    ] {
        let input = [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat();
        refused_without_reaching_the_backend(&input, "HTTP/1.1 400").await;
    }
}

#[tokio::test]
async fn obfuscated_transfer_encodings_are_refused() {
    for te in [
        &b"Transfer-Encoding: xchunked\r\n"[..],
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding:\x0bchunked\r\n",
    ] {
        let input = [&b"POST / HTTP/1.1\r\nHost: a\r\n"[..], te, b"\r\n0\r\n\r\n"].concat();
        refused_without_reaching_the_backend(&input, "HTTP/1.1 400").await;
    }
}

#[tokio::test]
async fn bare_lf_and_nul_in_headers_are_refused() {
    refused_without_reaching_the_backend(b"GET / HTTP/1.1\nHost: a\n\n", "HTTP/1.1 400").await;
    refused_without_reaching_the_backend(
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 400",
    )
    .await;
    refused_without_reaching_the_backend(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", "HTTP/1.1 400").await;
}

#[tokio::test]
async fn a_request_without_host_or_with_two_is_refused() {
    refused_without_reaching_the_backend(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", "HTTP/1.1 400").await;
    refused_without_reaching_the_backend(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400").await;
}

/// A minimal HTTP/2 client speaking raw frames, for what hyper's client
/// refuses to send.
mod h2raw {
    pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK literal header fields without indexing, no Huffman.
    pub(crate) fn headers(fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        out
    }

    pub(crate) const DATA: u8 = 0;
    pub(crate) const HEADERS: u8 = 1;
    pub(crate) const RST_STREAM: u8 = 3;
    pub(crate) const SETTINGS: u8 = 4;
    pub(crate) const GOAWAY: u8 = 7;
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
}

/// Sends frames after the preface and returns the error code of the first
/// RST_STREAM or GOAWAY the proxy answers with, or the status of a response.
async fn h2_exchange(addr: std::net::SocketAddr, frames: &[Vec<u8>]) -> String {
    use h2raw::*;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    for f in frames {
        s.write_all(f).await.unwrap();
    }
    loop {
        let mut head = [0u8; 9];
        if tokio::time::timeout(BOUND, s.read_exact(&mut head)).await.is_err() {
            return "timeout".into();
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        match head[3] {
            RST_STREAM => return format!("RST_STREAM {}", u32::from_be_bytes(payload[..4].try_into().unwrap())),
            GOAWAY => return format!("GOAWAY {}", u32::from_be_bytes(payload[4..8].try_into().unwrap())),
            HEADERS => {
                // A literal ":status" is what a proxy error would look like;
                // hpack-indexed statuses start with 0x88 (200) .. 0x8e (500).
                return format!("HEADERS {:02x}", payload.first().copied().unwrap_or(0));
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn http2_header_values_with_cr_or_lf_never_reach_the_backend() {
    use h2raw::*;
    let rec = recorder().await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    for evil in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\rb"] {
        let block = headers(&[
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/"),
            (":authority", b"a"),
            ("x-evil", evil),
        ]);
        let answer = h2_exchange(p.addr, &[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]).await;
        assert!(answer == "RST_STREAM 1" || answer == "GOAWAY 1", "{answer}");
    }
    assert!(rec.received.lock().unwrap().is_empty());
    p.shutdown().await;
}

#[tokio::test]
async fn http2_content_length_mismatches_never_reach_the_backend() {
    use h2raw::*;
    let rec = recorder().await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    for (declared, sent) in [(&b"10"[..], &b"hello"[..]), (b"3", b"hello")] {
        let block = headers(&[
            (":method", b"POST"),
            (":scheme", b"http"),
            (":path", b"/cart"),
            (":authority", b"a"),
            ("content-length", declared),
        ]);
        let answer = h2_exchange(
            p.addr,
            &[frame(HEADERS, END_HEADERS, 1, &block), frame(DATA, END_STREAM, 1, sent)],
        )
        .await;
        assert!(
            answer == "RST_STREAM 1" || answer == "GOAWAY 1" || answer.starts_with("HEADERS"),
            "{answer}"
        );
        assert_ne!(answer, "HEADERS 88", "a 200 means it was forwarded");
    }
    assert!(
        rec.received.lock().unwrap().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&rec.received.lock().unwrap())
    );
    p.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let rec = recorder().await;
    let p = tidegate(&config_text(
        &[rec.addr],
        "[limits]\nmax_header_bytes = \"16KiB\"\nmax_headers = 20\n",
        "",
    ))
    .await;
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "x".repeat(20 * 1024));
    let out = raw(p.addr, big.as_bytes()).await;
    assert!(out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw(p.addr, format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await;
    assert!(out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
    assert!(rec.received.lock().unwrap().is_empty());
    p.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413_whether_declared_or_chunked() {
    let rec = recorder().await;
    let route = "[[route]]\npool = \"shop\"\nmax_body = 10\n";
    let p = tidegate(&config_text(&[rec.addr], route, "")).await;
    let out = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&out));
    let out = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&out));
    assert!(rec.received.lock().unwrap().is_empty());
    p.shutdown().await;
}

#[tokio::test]
async fn slow_or_silent_clients_are_disconnected_after_the_header_timeout() {
    let rec = recorder().await;
    let p = tidegate(&config_text(
        &[rec.addr],
        "[limits]\nheader_read_timeout = \"300ms\"\n",
        "",
    ))
    .await;
    let started = tokio::time::Instant::now();
    // Silent: connects and sends nothing.
    let silent = raw(p.addr, b"").await;
    // Slowloris: a head that never ends.
    let slow = raw(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
    let elapsed = started.elapsed();
    assert!(elapsed < BOUND, "the proxy closed both connections itself");
    assert!(silent.is_empty());
    assert!(
        slow.is_empty() || slow.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&slow)
    );
    assert!(rec.received.lock().unwrap().is_empty());
    p.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "[limits]\nmax_connections = 2\n", "")).await;
    let mut first = h1(p.addr).await;
    let mut second = h1(p.addr).await;
    for s in [&mut first, &mut second] {
        assert_eq!(
            collect(s.send_request(request("GET", "/", "")).await.unwrap())
                .await
                .status,
            200
        );
    }
    let third = tokio::spawn(get(p.addr, "/products/3"));
    // Not served while two connections are open (bounded negative check).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served over the limit");
    drop(first);
    let a = tokio::time::timeout(BOUND, third).await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    p.shutdown().await;
}
