//! HTTP/1.1 forwarding semantics (RFC 9110/9112) through a real proxy to a
//! real backend.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_get_is_forwarded_with_host_kept_and_forwarded_headers_added() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = h1(p.addr).await;
    let req = http::Request::builder()
        .uri("/headers?x=1")
        .header("host", "shop.example:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let a = collect(s.send_request(req).await.unwrap()).await;
    assert_eq!(a.status, 200);
    let seen = a.text();
    assert!(seen.starts_with("GET /headers?x=1 HTTP/1.1\n"), "{seen}");
    assert!(seen.contains("host: shop.example:8443\n"), "{seen}");
    // An untrusted client's claim is replaced (see tests/operator.rs for
    // trusted proxies).
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: shop.example:8443\n"), "{seen}");
    assert!(seen.contains("via: 1.1 tidegate\n"), "{seen}");
    p.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_and_those_connection_names_are_not_forwarded() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let out = raw(
        p.addr,
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-private\r\nX-Private: secret\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-Public: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    for gone in ["x-private", "keep-alive: timeout", "proxy-connection", "te: gzip"] {
        assert!(!text.contains(gone), "{gone} was forwarded:\n{text}");
    }
    assert!(text.contains("x-public: yes"));
    p.shutdown().await;
}

#[tokio::test]
async fn head_204_and_304_carry_no_body() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = h1(p.addr).await;
    for (method, path, status) in [
        ("HEAD", "/products/1", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
    ] {
        let a = collect(s.send_request(request(method, path, "")).await.unwrap()).await;
        assert_eq!(a.status, status, "{method} {path}");
        assert!(a.body.is_empty(), "{method} {path} had a body");
    }
    // The keep-alive connection is still in step after bodiless responses.
    let a = collect(s.send_request(request("GET", "/products/7", "")).await.unwrap()).await;
    assert!(a.text().contains("\"id\":\"7\""));
    p.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_a_100_then_the_response() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /cart HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut rest = vec![0u8; 1024];
    let n = tokio::time::timeout(BOUND, s.read(&mut rest)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&rest[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("{\"received\":5}\n"), "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn trailers_pass_through_to_a_client_that_accepts_them() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = h1(p.addr).await;
    let mut req = request("GET", "/trailers", "");
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let a = collect(s.send_request(req).await.unwrap()).await;
    assert_eq!(a.text(), "hello");
    assert_eq!(a.trailers.expect("trailers")["x-checksum"], "abc123");
    p.shutdown().await;
}

#[tokio::test]
async fn an_http10_client_is_served() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let out = raw(p.addr, b"GET /products/3 HTTP/1.0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(text.ends_with("\"price_cents\":1999}\n"), "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways_without_being_buffered() {
    const MIB: usize = 1024 * 1024;
    let b = backend("b1").await;
    let route = "[[route]]\npool = \"shop\"\nmax_body = \"1GiB\"\n";
    let p = tidegate(&config_text(&[b.addr], route, "")).await;

    // Download 256 MiB: generated by the backend as it is read.
    let mut s = h1(p.addr).await;
    let resp = s
        .send_request(request("GET", &format!("/bytes/{}", 256 * MIB), ""))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, Bytes::len);
    }
    assert_eq!(total, 256 * MIB);

    // Upload 64 MiB, chunked, echoed back as it streams.
    let stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut up, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = Sevens { left: 64 };
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "a")
        .body(body)
        .unwrap();
    let resp = up.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut echoed = 0usize;
    while let Some(frame) = body.frame().await {
        let f = frame.unwrap();
        if let Some(d) = f.data_ref() {
            assert!(d.iter().all(|&x| x == 7));
            echoed += d.len();
        }
    }
    assert_eq!(echoed, 64 * MIB);
    p.shutdown().await;
}

/// `left` chunks of 1 MiB of sevens, with no length known up front (sent
/// chunked).
struct Sevens {
    left: usize,
}

impl http_body::Body for Sevens {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![7u8; 1024 * 1024])))))
    }
}

/// A backend whose connections answer one request and hang up unanswered at
/// the next (as a backend's own idle timeout does when it crosses a
/// request): an idempotent request is sent again on a fresh connection, a
/// POST is not (the backend may have acted on it).
#[tokio::test]
async fn a_get_crossing_a_backends_idle_close_is_sent_again_and_a_post_is_not() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let p = tidegate(&config_text(&[addr], "", "")).await;
    assert_eq!(get(p.addr, "/a").await.status, 200);
    // Its connection went back to the pool; the backend hangs up on it at
    // the next request, which is sent again on a new one.
    let again = get(p.addr, "/b").await;
    assert_eq!((again.status.as_u16(), again.text().as_str()), (200, "ok"));
    let mut s = h1(p.addr).await;
    let post = collect(s.send_request(request("POST", "/c", "")).await.unwrap()).await;
    assert_eq!(post.status, 502);
    assert_eq!(post.headers["x-tidegate-error"], "upstream_failed");
    p.shutdown().await;
}

/// A backend whose first three connections answer one request each and
/// every connection hangs up unanswered at the next: a GET that crossed
/// the close is sent once more, on a new connection (not on the other
/// pooled ones, as stale), and then fails.
#[tokio::test]
async fn a_get_is_sent_again_at_most_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            accepted += 1;
            let answers = accepted <= 3;
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if answers {
                    if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                    // Held until all three are in, so they take three connections.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"GET /b ") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let p = tidegate(&config_text(&[addr], "", "")).await;
    let (a1, a2, a3) = tokio::join!(get(p.addr, "/a"), get(p.addr, "/a"), get(p.addr, "/a"));
    assert_eq!([a1.status, a2.status, a3.status], [200, 200, 200]);
    // Three connections pooled, each of which the backend hangs up on.
    let b = get(p.addr, "/b").await;
    assert_eq!(b.status, 502);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "sent on a pooled connection, then once more on a new one"
    );
    p.shutdown().await;
}

/// A chunked upload's trailer section reaches the backend with the fields
/// its `Trailer` field announced (and only those).
#[tokio::test]
async fn announced_request_trailers_reach_the_backend() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Until the last chunk's section has ended.
        while !(got.windows(5).any(|w| w == b"\r\n0\r\n") && got.ends_with(b"\r\n\r\n")) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await
            .unwrap();
        let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
    });
    let p = tidegate(&config_text(&[addr], "", "")).await;
    let out = raw(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n0\r\nx-checksum: abc\r\nx-secret: no\r\n\r\n",
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    let seen = rx.await.unwrap();
    assert!(seen.contains("trailer: x-checksum\r\n"), "{seen}");
    assert!(seen.ends_with("5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"), "{seen}");
    p.shutdown().await;
}

/// tidegate reads a response head into the field map its backend
/// connection's last request used, emptied, and over HTTP/1.1 the client
/// connection reads its next request into the last response's: nothing of
/// one message may show in another.
#[tokio::test]
async fn each_message_carries_only_its_own_fields_over_reused_connections() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let probe = |i: usize| {
        // Twenty fields, so the maps grow past their first size.
        let mut req = if i < 4 {
            http::Request::builder().uri("/headers").header("host", "shop.example")
        } else {
            http::Request::builder().uri("http://shop.example/headers")
        };
        for f in 0..20 {
            req = req.header(format!("x-probe-{i}-{f}"), format!("secret-{i}-{f}"));
        }
        req.body(http_body_util::Full::new(Bytes::new())).unwrap()
    };
    let check = |i: usize, a: &Answer, names: &mut Option<Vec<String>>| {
        assert_eq!(a.status, 200);
        let mut own: Vec<String> = a.headers.keys().map(|k| k.to_string()).collect();
        own.sort();
        assert!(
            a.headers.values().all(|v| !v.as_bytes().starts_with(b"secret")),
            "a request's field in response {i}: {:?}",
            a.headers
        );
        assert_eq!(names.get_or_insert_with(|| own.clone()), &own, "response {i}'s fields");
        let seen = a.text();
        assert!(seen.contains(&format!("x-probe-{i}-19: secret-{i}-19\n")), "{seen}");
        if i > 0 {
            assert!(
                !seen.contains(&format!("x-probe-{}-", i - 1)),
                "request {i} carried the last one's: {seen}"
            );
        }
        assert!(
            !seen.contains("x-backend"),
            "request {i} carried a response field: {seen}"
        );
    };
    let mut names = None;
    let mut s = h1(p.addr).await;
    for i in 0..4 {
        check(i, &collect(s.send_request(probe(i)).await.unwrap()).await, &mut names);
    }
    let mut s = h2(p.addr).await;
    for i in 4..8 {
        check(i, &collect(s.send_request(probe(i)).await.unwrap()).await, &mut names);
    }
    p.shutdown().await;
}
