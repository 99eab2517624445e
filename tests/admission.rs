//! Admission through real sockets: per-backend concurrency limits, the
//! bounded FIFO queue, balancing across backends, and in-flight accounting.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_freed_slot_goes_to_the_oldest_waiter() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "max_concurrency = 1")).await;
    let holder = tokio::spawn(get(p.addr, "/products/0?delay=300"));
    eventually("the holder has the slot", || async { p.in_flight().await == 1 }).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 1..=4 {
        let (addr, order) = (p.addr, Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let a = get(addr, format!("/products/{i}")).await;
            order.lock().unwrap().push(i);
            a.status
        }));
        eventually("the request is queued", || async { p.queue_depth().await == i as u64 }).await;
    }
    assert_eq!(holder.await.unwrap().status, 200);
    for w in waiters {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4], "served in arrival order");
    assert_eq!(p.queue_depth().await, 0);
    p.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(
        &[b.addr],
        "",
        "max_concurrency = 1\nqueue = { max_depth = 1, timeout = \"5s\" }",
    ))
    .await;
    let holder = tokio::spawn(get(p.addr, "/?delay=500"));
    eventually("the holder has the slot", || async { p.in_flight().await == 1 }).await;
    let queued = tokio::spawn(get(p.addr, "/"));
    eventually("one request is queued", || async { p.queue_depth().await == 1 }).await;
    let refused = get(p.addr, "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.headers["x-tidegate-error"], "queue_full");
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(
        &[b.addr],
        "",
        "max_concurrency = 1\nqueue = { max_depth = 10, timeout = \"200ms\" }",
    ))
    .await;
    let holder = tokio::spawn(get(p.addr, "/?delay=1500"));
    eventually("the holder has the slot", || async { p.in_flight().await == 1 }).await;
    let late = get(p.addr, "/").await;
    assert_eq!(late.status, 503);
    assert_eq!(late.headers["x-tidegate-error"], "queue_timeout");
    assert_eq!(late.headers["retry-after"], "1");
    assert_eq!(p.queue_depth().await, 0);
    assert_eq!(holder.await.unwrap().status, 200);
    p.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_while_queued_leaves_the_queue_at_once() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(
        &[b.addr],
        "",
        "max_concurrency = 1\nqueue = { max_depth = 10, timeout = \"30s\" }",
    ))
    .await;
    let holder = tokio::spawn(get(p.addr, "/?delay=800"));
    eventually("the holder has the slot", || async { p.in_flight().await == 1 }).await;
    // HTTP/1.1 client: closes its socket while queued.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    eventually("the request is queued", || async { p.queue_depth().await == 1 }).await;
    drop(s);
    eventually("the departed client left the queue", || async {
        p.queue_depth().await == 0
    })
    .await;
    // HTTP/2 client: resets its stream while queued.
    let mut h = h2(p.addr).await;
    let req = http::Request::builder()
        .uri("http://a/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { h.send_request(req).await });
    eventually("the h2 request is queued", || async { p.queue_depth().await == 1 }).await;
    pending.abort();
    eventually("the reset stream left the queue", || async {
        p.queue_depth().await == 0
    })
    .await;
    assert_eq!(holder.await.unwrap().status, 200);
    p.shutdown().await;
}

#[tokio::test]
async fn least_conn_spreads_concurrent_load_evenly() {
    let (b1, b2, b3) = (backend("b1").await, backend("b2").await, backend("b3").await);
    let p = tidegate(&config_text(
        &[b1.addr, b2.addr, b3.addr],
        "",
        "balance = \"least_conn\"\nmax_concurrency = 4",
    ))
    .await;
    let tasks: Vec<_> = (0..12)
        .map(|i| tokio::spawn(get(p.addr, format!("/products/{i}?delay=300"))))
        .collect();
    eventually("all twelve are in flight", || async { p.in_flight().await == 12 }).await;
    for b in p.pool().await["backends"].as_array().unwrap() {
        assert_eq!(b["in_flight"], 4, "{b}");
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    p.shutdown().await;
}

#[tokio::test]
async fn hash_on_a_cookie_keeps_a_cart_on_one_backend() {
    let (b1, b2, b3) = (backend("b1").await, backend("b2").await, backend("b3").await);
    let p = tidegate(&config_text(
        &[b1.addr, b2.addr, b3.addr],
        "",
        "balance = \"hash\"\nhash_key = \"cookie:cart\"",
    ))
    .await;
    for cart in ["alice", "bob", "carol", "dave"] {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let mut s = h1(p.addr).await;
            let mut req = request("GET", "/cart", "");
            req.headers_mut()
                .insert("cookie", format!("session=1; cart={cart}").parse().unwrap());
            seen.insert(collect(s.send_request(req).await.unwrap()).await.backend());
        }
        assert_eq!(seen.len(), 1, "cart {cart} went to {seen:?}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn in_flight_returns_to_zero_after_success_error_and_client_cancel() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let p = tidegate(&config_text(&[b1.addr, b2.addr], "", "balance = \"p2c\"")).await;
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                // Success, with a body read to the end.
                0 => assert_eq!(get(addr, "/products/1").await.status, 200),
                // Client cancels mid-download of a large body.
                1 => {
                    let mut s = h1(addr).await;
                    let resp = s.send_request(request("GET", "/bytes/100000000", "")).await.unwrap();
                    let mut body = resp.into_body();
                    let _ = http_body_util::BodyExt::frame(&mut body).await;
                    drop(body);
                    drop(s);
                }
                // Client gives up before the response head arrives.
                2 => {
                    let _ = tokio::time::timeout(Duration::from_millis(20), get(addr, "/?delay=200")).await;
                }
                // A backend error status passes through.
                _ => assert_eq!(get(addr, "/status/500").await.status, 500),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("every slot is released", || async { p.in_flight().await == 0 }).await;
    p.shutdown().await;
}
