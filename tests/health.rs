//! Health through real sockets: active probes take failing or hanging
//! backends out and bring them back; passive ejection; an all-down pool
//! answers 503 at once, or fails open.

mod common;

use std::sync::atomic::Ordering;

use common::*;

const FAST_CHECKS: &str = "health = { interval = \"50ms\", timeout = \"100ms\", healthy = 2, unhealthy = 2 }";

#[tokio::test]
async fn a_failing_backend_is_taken_out_and_comes_back_after_passing_again() {
    let (sick, well) = (toggle("sick").await, toggle("well").await);
    let p = tidegate(&config_text(&[sick.addr, well.addr], "", FAST_CHECKS)).await;
    sick.healthy.store(false, Ordering::SeqCst);
    eventually("the failing backend is down", || async {
        p.backend_state(0).await == "down"
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(p.addr, "/").await.backend(),
            "well",
            "a down backend gets no traffic"
        );
    }
    let stats_error = p.backend(0).await["health"]["last_error"].clone();
    assert!(stats_error.as_str().unwrap().contains("status 503"), "{stats_error}");
    sick.healthy.store(true, Ordering::SeqCst);
    eventually("the backend is back", || async { p.backend_state(0).await == "active" }).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(get(p.addr, "/").await.backend());
    }
    assert!(seen.contains("sick"), "it takes traffic again: {seen:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_hanging_backend_fails_its_checks_by_timeout() {
    let hang = gate().await; // accepts and never answers
    let well = toggle("well").await;
    let p = tidegate(&config_text(&[hang.addr, well.addr], "", FAST_CHECKS)).await;
    eventually("the hanging backend is down", || async {
        p.backend_state(0).await == "down"
    })
    .await;
    let detail = p.backend(0).await["health"].clone();
    assert!(
        detail["last_error"].as_str().unwrap().contains("no answer within"),
        "{detail}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_tcp_check_only_needs_the_port_to_accept() {
    let live = gate().await;
    let dead = dead_addr().await;
    let checks = "health = { kind = \"tcp\", interval = \"50ms\", timeout = \"100ms\", healthy = 1, unhealthy = 1 }";
    let p = tidegate(&config_text(&[live.addr, dead], "", checks)).await;
    eventually("the closed port is down", || async {
        p.backend_state(1).await == "down"
    })
    .await;
    assert_eq!(p.backend_state(0).await, "active");
    p.shutdown().await;
}

#[tokio::test]
async fn when_every_backend_is_down_the_pool_answers_503_at_once_or_fails_open() {
    let sick = toggle("sick").await;
    sick.healthy.store(false, Ordering::SeqCst);
    let p = tidegate(&config_text(&[sick.addr], "", FAST_CHECKS)).await;
    eventually("down", || async { p.backend_state(0).await == "down" }).await;
    let started = tokio::time::Instant::now();
    let a = get(p.addr, "/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["x-tidegate-error"], "no_backend");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "not queued until the timeout"
    );
    p.shutdown().await;

    let p = tidegate(&config_text(
        &[sick.addr],
        "",
        &format!("{FAST_CHECKS}\nfail_open = true"),
    ))
    .await;
    eventually("down", || async { p.backend_state(0).await == "down" }).await;
    let a = get(p.addr, "/").await;
    assert_eq!(
        (a.status.as_u16(), a.backend().as_str()),
        (200, "sick"),
        "failing open sends it anyway"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn consecutive_failures_eject_a_backend_within_the_pool_cap() {
    let s = slammer().await;
    let good = backend("good").await;
    let passive = "balance = \"round_robin\"\npassive = { consecutive_failures = 2, ejection = \"60s\", max_ejected_percent = 50 }";
    let p = tidegate(&config_text(&[s.addr, good.addr], "", passive)).await;
    for _ in 0..4 {
        let _ = get(p.addr, "/").await;
    }
    assert_eq!(p.backend_state(0).await, "down", "ejected after two failures");
    let heads = s.heads.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/").await.backend(), "good");
    }
    assert_eq!(s.heads.load(Ordering::SeqCst), heads, "an ejected backend gets nothing");
    assert_eq!(p.backend(0).await["health"]["ejections"], 1);
    p.shutdown().await;

    // Two failing backends at a 50 % cap: only one may be out at a time.
    let (s1, s2) = (slammer().await, slammer().await);
    let passive = "passive = { consecutive_failures = 1, ejection = \"60s\", max_ejected_percent = 50 }";
    let p = tidegate(&config_text(&[s1.addr, s2.addr], "", passive)).await;
    for _ in 0..6 {
        let _ = get(p.addr, "/").await;
    }
    let pool = p.pool().await;
    let down = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "down")
        .count();
    assert_eq!(down, 1);
    p.shutdown().await;
}
