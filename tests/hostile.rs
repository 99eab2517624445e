//! No single client, backend or request may take a pool down: timeouts
//! after the response head, blame where it belongs, one authority per
//! request. Real sockets, raw bytes where a well-behaved client library
//! would refuse to misbehave.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The count `/metrics` shows for `tidegate_proxy_errors_total` with these
/// labels (0 when absent).
async fn errors(t: &Tidegate, pool: &str, reason: &str) -> f64 {
    let (head, tail) = (
        format!("tidegate_proxy_errors_total{{pool=\"{pool}\",code="),
        format!(",reason=\"{reason}\"}} "),
    );
    t.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&head))
        .find_map(|l| l.split_once(&tail).map(|(_, v)| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn clients_that_stop_reading_lose_their_slots_after_the_send_timeout() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "[limits]\nclient_send_timeout = \"1s\"\n",
        "max_concurrency = 4\nqueue = { max_depth = 10, timeout = \"30s\" }",
    ))
    .await;
    // Four clients ask for 100 MB each and never read a byte.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(b"GET /bytes/100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    eventually("every slot is held", || async { t.in_flight().await == 4 }).await;
    eventually("the stalled clients are cut and their slots freed", || async {
        t.in_flight().await == 0
    })
    .await;
    assert_eq!(get(t.addr, "/products/1").await.status, 200, "the pool serves again");
    assert_eq!(errors(&t, "", "client_send_timeout").await, 4.0);
    t.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_with_a_zero_window_loses_its_slots_after_the_send_timeout() {
    use h2raw::*;
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "[limits]\nclient_send_timeout = \"1s\"\n",
        "max_concurrency = 4",
    ))
    .await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may be sent a byte.
    let mut setting = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    setting.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&frame(SETTINGS, 0, 0, &setting)).await.unwrap();
    for stream in [1u32, 3, 5, 7] {
        let block = headers(&[
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/bytes/1000000"),
            (":authority", b"a"),
        ]);
        s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &block))
            .await
            .unwrap();
    }
    eventually("every slot is held", || async { t.in_flight().await == 4 }).await;
    eventually("the stalled connection is cut and its slots freed", || async {
        t.in_flight().await == 0
    })
    .await;
    // The proxy closed the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(BOUND, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was closed");
    assert_eq!(errors(&t, "", "client_send_timeout").await, 1.0);
    t.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_stalls_after_its_head_is_cut_after_the_read_timeout_and_blamed() {
    let stalling = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
    let t = tidegate(&config_text(
        &[stalling.addr],
        "",
        "timeouts = { read = \"1s\" }\npassive = { consecutive_failures = 1, ejection = \"60s\", max_ejected_percent = 100 }",
    ))
    .await;
    let mut c = h1(t.addr).await;
    let resp = c.send_request(request("GET", "/", "")).await.unwrap();
    assert_eq!(resp.status(), 200, "the head came through");
    let body = tokio::time::timeout(BOUND, http_body_util::BodyExt::collect(resp.into_body())).await;
    assert!(body.unwrap().is_err(), "the body ends short, not as if complete");
    eventually("the slot is freed", || async { t.in_flight().await == 0 }).await;
    assert_eq!(errors(&t, "shop", "upstream_read_timeout").await, 1.0);
    eventually("the stalling backend is ejected (a backend fault)", || async {
        t.backend_state(0).await == "down"
    })
    .await;
    t.shutdown().await;
}

#[tokio::test]
async fn an_idle_tunnel_gives_its_slot_back_after_the_tunnel_timeout() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "[limits]\ntunnel_idle_timeout = \"1s\"\n", "")).await;
    let (_s, head) = status_line(
        t.addr,
        b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(&head, b"HTTP/1.1 101");
    eventually("the tunnel holds a slot", || async { t.in_flight().await == 1 }).await;
    eventually("the idle tunnel is closed", || async { t.in_flight().await == 0 }).await;
    assert_eq!(errors(&t, "shop", "tunnel_idle_timeout").await, 1.0);
    t.shutdown().await;
}

#[tokio::test]
async fn clients_that_abort_uploads_never_get_a_healthy_backend_ejected() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "",
        "passive = { consecutive_failures = 2, ejection = \"60s\", max_ejected_percent = 100 }",
    ))
    .await;
    for _ in 0..12 {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(b"POST /cart HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'x'; 20_000]).await.unwrap();
        drop(s);
    }
    eventually("every aborted upload is over", || async { t.in_flight().await == 0 }).await;
    let backend = t.backend(0).await;
    assert_eq!(backend["state"], "active", "{backend}");
    assert_eq!(backend["health"]["ejections"], 0, "{backend}");
    assert_eq!(get(t.addr, "/products/1").await.status, 200);
    assert!(errors(&t, "shop", "client_aborted").await >= 1.0);
    t.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunk_mid_body_is_the_clients_400_not_a_502() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "", "")).await;
    let out = raw(
        t.addr,
        b"POST /cart HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(t.backend_state(0).await, "active");
    t.shutdown().await;
}

#[tokio::test]
async fn a_response_with_many_set_cookie_fields_passes() {
    let mut answer = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..150 {
        answer.push_str(&format!("Set-Cookie: c{i}=v{i}\r\n"));
    }
    answer.push_str("Content-Length: 2\r\n\r\nok");
    let cookies = scripted(Box::leak(answer.into_bytes().into_boxed_slice())).await;
    let t = tidegate(&config_text(&[cookies.addr], "", "")).await;
    // (hyper's own client stops at 100 fields; read the raw answer.)
    let out = raw(t.addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert_eq!(text.matches("set-cookie: ").count(), 150);
    assert_eq!(t.backend_state(0).await, "active");
    t.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_is_the_clients_time_not_the_backends() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "",
        "timeouts = { response_header = \"500ms\" }",
    ))
    .await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(b"POST /cart HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        s.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let out = until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("{\"received\":15}"), "{text}");
    t.shutdown().await;
}

#[tokio::test]
async fn an_upload_that_stops_is_cut_after_the_body_timeout() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "[limits]\nclient_body_timeout = \"1s\"\n", "")).await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(b"POST /cart HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    let out = until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-tidegate-error: client_body_timeout"), "{text}");
    assert_eq!(t.in_flight().await, 0);
    assert_eq!(t.backend_state(0).await, "active");
    t.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_request_is_routed_and_forwarded_by_its_target_authority() {
    let (public, internal) = (recorder().await, recorder().await);
    let text = format!(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[[route]]\nhost = \"public.example\"\npool = \"public\"\n\n[[route]]\npool = \"internal\"\n\n\
[pools.public]\nbackends = [ {{ address = \"{}\" }} ]\n\n[pools.internal]\nbackends = [ {{ address = \"{}\" }} ]\n",
        public.addr, internal.addr
    );
    let t = tidegate(&text).await;
    let out = raw(
        t.addr,
        b"GET http://public.example/x HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let seen = String::from_utf8_lossy(&public.received.lock().unwrap()).to_lowercase();
    assert!(seen.starts_with("get /x http/1.1"), "{seen}");
    assert!(seen.contains("host: public.example\r\n"), "{seen}");
    assert!(!seen.contains("internal.example"), "one authority: {seen}");
    assert!(internal.received.lock().unwrap().is_empty());
    t.shutdown().await;
}

#[tokio::test]
async fn connection_cannot_remove_host_or_authorization() {
    let rec = recorder().await;
    let t = tidegate(&config_text(&[rec.addr], "", "")).await;
    let out = raw(
        t.addr,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer t\r\nCookie: cart=1\r\nConnection: host, authorization, cookie, close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let seen = String::from_utf8_lossy(&rec.received.lock().unwrap()).to_lowercase();
    for field in ["host: a.example", "authorization: bearer t", "cookie: cart=1"] {
        assert!(seen.contains(field), "{field} missing from {seen}");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn a_one_backend_pool_tries_a_dead_backend_once_and_counts_one_request() {
    let dead = dead_addr().await;
    let t = tidegate(&config_text(&[dead], "", "")).await;
    let a = get(t.addr, "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.text(), "tidegate: connect_failed\n", "the label, never the OS error");
    let pool = t.pool().await;
    assert_eq!(pool["requests_total"], 1, "{pool}");
    assert_eq!(pool["backends"][0]["responses"]["error"], 1, "one attempt: {pool}");
    t.shutdown().await;
}

/// A raw keep-alive HTTP/1.1 backend that counts its open connections.
async fn counting_backend() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let open = std::sync::Arc::clone(&counter);
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_at_the_idle_timeout_not_at_next_use() {
    use std::sync::atomic::Ordering;
    let (backend, open) = counting_backend().await;
    let t = tidegate(&config_text(
        &[backend],
        "",
        "timeouts = { idle = \"1s\" }\nmax_concurrency = 64",
    ))
    .await;
    // Twenty requests at once: up to twenty upstream connections, then idle.
    let addr = t.addr;
    let answers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/").await.status }))
        .collect();
    for a in answers {
        assert_eq!(a.await.unwrap(), 200);
    }
    assert!(
        open.load(Ordering::SeqCst) > 1,
        "several upstream connections were opened"
    );
    // Nothing uses them again: the upkeep closes them, within the timeout
    // plus its one-second pass.
    eventually("every idle upstream connection is closed", || async {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    t.shutdown().await;
}
