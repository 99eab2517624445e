//! Failures mapped to responses in one place: what is retried, what is
//! 502/503/504/404, and that a request that may have reached a backend is
//! never resent unless it is idempotent and the pool allows it.

mod common;

use std::sync::atomic::Ordering;

use common::*;

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_backend() {
    let dead = dead_addr().await;
    let live = backend("live").await;
    let p = tidegate(&config_text(&[dead, live.addr], "", "balance = \"round_robin\"")).await;
    for _ in 0..10 {
        let a = get(p.addr, "/products/1").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.backend(), "live");
    }
    let dead_backend = p.backend(0).await;
    assert!(
        dead_backend["responses"]["error"].as_u64().unwrap() >= 1,
        "connect failures are counted on the dead backend: {dead_backend}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn when_no_backend_accepts_the_answer_is_502() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let p = tidegate(&config_text(&[d1, d2], "", "")).await;
    let a = get(p.addr, "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-tidegate-error"], "connect_failed");
    assert_eq!(a.text(), "tidegate: connect_failed\n", "the label, never the OS error");
    p.shutdown().await;
}

#[tokio::test]
async fn a_backend_too_slow_to_answer_gives_504() {
    let b = backend("slow").await;
    let p = tidegate(&config_text(
        &[b.addr],
        "",
        "timeouts = { response_header = \"150ms\" }",
    ))
    .await;
    let a = get(p.addr, "/?delay=3000").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.headers["x-tidegate-error"], "response_timeout");
    p.shutdown().await;
}

#[tokio::test]
async fn no_matching_route_is_404_and_a_pool_with_every_backend_down_is_503() {
    let b = toggle("b1").await;
    let route = "[[route]]\nhost = \"shop.example\"\npool = \"shop\"\n";
    let checks = "health = { interval = \"50ms\", timeout = \"100ms\", healthy = 1, unhealthy = 1 }";
    let p = tidegate(&config_text(&[b.addr], route, checks)).await;
    let a = get(p.addr, "/").await; // Host: shop.test
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["x-tidegate-error"], "no_route");

    let mut s = h1(p.addr).await;
    let mut req = request("GET", "/", "");
    req.headers_mut().insert("host", "shop.example".parse().unwrap());
    b.healthy.store(false, Ordering::SeqCst);
    eventually("the only backend is down", || async {
        p.backend_state(0).await == "down"
    })
    .await;
    let a = collect(s.send_request(req).await.unwrap()).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["x-tidegate-error"], "no_backend");
    assert_eq!(a.headers["retry-after"], "1");
    p.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_fails_mid_exchange_gives_502_and_the_request_is_not_resent() {
    let s = slammer().await;
    let p = tidegate(&config_text(&[s.addr], "", "")).await;
    let a = get(p.addr, "/cart").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-tidegate-error"], "upstream_failed");
    assert_eq!(s.heads.load(Ordering::SeqCst), 1, "sent exactly once");
    p.shutdown().await;
}

#[tokio::test]
async fn idempotent_requests_are_resent_only_when_the_pool_allows_it() {
    let s = slammer().await;
    let good = backend("good").await;
    let extra = "balance = \"round_robin\"\nretries = { idempotent = true }";
    let p = tidegate(&config_text(&[s.addr, good.addr], "", extra)).await;
    // Round robin starts at the slammer: the GET fails there, is resent to
    // the good backend.
    let a = get(p.addr, "/products/9").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.backend(), "good");
    assert_eq!(s.heads.load(Ordering::SeqCst), 1);
    // A POST that failed mid-exchange is never resent, whatever the pool says.
    let mut c = h1(p.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = c.send_request(request("POST", "/cart", "item=1")).await;
        statuses.push(match resp {
            Ok(r) => collect(r).await.status.as_u16(),
            Err(_) => {
                c = h1(p.addr).await;
                0
            }
        });
    }
    assert!(statuses.contains(&502), "{statuses:?}");
    assert_eq!(
        s.heads.load(Ordering::SeqCst),
        2,
        "the POST reached the slammer once, not twice"
    );
    p.shutdown().await;
}
