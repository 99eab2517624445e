//! Bad input: request smuggling shapes (sent as raw bytes) and resource
//! limits. Each smuggling case checks the answer *and* that the backend
//! received nothing at all.

mod common;

use std::time::Duration;

use common::*;

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

/// The header-read timeout runs while the proxy waits for a request head,
/// not while a backend takes its time: a response slower than the timeout
/// arrives on a kept-alive connection, which then closes once it has
/// rested past the timeout waiting for the next head.
#[tokio::test]
async fn a_slow_answer_is_not_cut_by_the_header_timeout_and_the_rest_after_it_is() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(
        &[b.addr],
        "[limits]\nheader_read_timeout = \"300ms\"\n",
        "",
    ))
    .await;
    let (mut s, status) = status_line(p.addr, b"GET /products/1?delay=900 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(&status, b"HTTP/1.1 200", "answered after three header timeouts");
    let answered = tokio::time::Instant::now();
    let rest = until_closed(&mut s).await;
    assert!(String::from_utf8_lossy(&rest).contains("\"id\":\"1\""));
    let closed = answered.elapsed();
    assert!(
        closed >= Duration::from_millis(250),
        "closed {closed:?} after the answer"
    );
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

#[tokio::test]
async fn an_h2c_upgrade_is_never_tunnelled_and_what_follows_it_is_still_checked() {
    // A backend that would switch to anything it is asked: the proxy must
    // not ask it to, and must not pass a 101 it did not ask for.
    let rec = scripted(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n").await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    let out = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("x-tidegate-error: upstream_invalid"), "{text}");
    let seen = String::from_utf8_lossy(&rec.received.lock().unwrap()).to_lowercase();
    assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "{seen}");
    p.shutdown().await;

    // With an ordinary backend the request is served as an ordinary one,
    // and a request smuggled behind it is refused, never forwarded.
    let rec = recorder().await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    let out = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n\
POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "the smuggled request is refused: {text}");
    let seen = String::from_utf8_lossy(&rec.received.lock().unwrap()).to_lowercase();
    assert_eq!(
        seen.matches("http/1.1\r\n").count(),
        1,
        "one request reached the backend: {seen}"
    );
    assert!(!seen.contains("upgrade") && !seen.contains("/admin"), "{seen}");
    p.shutdown().await;
}

#[tokio::test]
async fn only_allowed_protocols_are_tunnelled() {
    let b = backend("b1").await;
    let routes = "[[route]]\npath_prefix = \"/upgrade\"\npool = \"shop\"\nupgrade = []\n\n[[route]]\npool = \"shop\"\n";
    let p = tidegate(&config_text(&[b.addr], routes, "")).await;
    // `upgrade = []` on this route: a WebSocket request is an ordinary GET.
    let out = raw(
        p.addr,
        b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 404"),
        "served as an ordinary request: {text}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_host_that_is_not_one_host_and_port_never_reaches_the_backend() {
    for head in [
        &b"GET / HTTP/1.1\r\nHost: user@evil.example x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:80x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET http://user@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    ] {
        refused_without_reaching_the_backend(head, "HTTP/1.1 4").await;
    }
}

#[tokio::test]
async fn an_http2_host_that_disagrees_with_its_authority_never_reaches_the_backend() {
    use h2raw::*;
    let rec = recorder().await;
    let p = tidegate(&config_text(&[rec.addr], "", "")).await;
    for (authority, host) in [(&b"public.example"[..], &b"internal.example"[..]), (b"a@b", b"b")] {
        let block = headers(&[
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/"),
            (":authority", authority),
            ("host", host),
        ]);
        let answer = h2_exchange(p.addr, &[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]).await;
        assert_ne!(answer, "HEADERS 88", "a 200 means it was forwarded");
    }
    assert!(rec.received.lock().unwrap().is_empty());
    p.shutdown().await;
}
