//! Traffic control at the edge through real sockets: per-client rate
//! limits refuse with 429 before a backend sees a byte, key clients by the
//! address tidegate established (never a forged header), and keep their
//! counts across reloads that keep the rule's name.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

/// `GET path` with extra header fields, on a fresh connection.
async fn get_with(addr: std::net::SocketAddr, path: &str, fields: &[(&str, &str)]) -> Answer {
    let mut s = h1(addr).await;
    let mut req = http::Request::get(path).header("host", "shop.test");
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let resp = s
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    collect(resp).await
}

/// Request heads a [`Recorder`] backend has received.
fn heads(r: &Recorder) -> usize {
    let seen = r.received.lock().unwrap();
    seen.windows(4).filter(|w| w == b"\r\n\r\n").count()
}

fn rule(name: &str, rate: &str, burst: u32, extra: &str) -> String {
    format!("[[rate_limit]]\nname = \"{name}\"\nrate = \"{rate}\"\nburst = {burst}\n{extra}\n")
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.status.as_u16()).collect()
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_with_retry_after_and_never_reaches_the_backend() {
    let b = recorder().await;
    let top = format!(
        "[access_log]\npath = \"access.log\"\n{}",
        rule("api", "1/m", 5, "match = { path_prefix = \"/api\" }")
    );
    let t = tidegate(&config_text(&[b.addr], &top, "")).await;
    let mut answers = Vec::new();
    for i in 0..8 {
        answers.push(get(t.addr, format!("/api/items/{i}")).await);
    }
    assert_eq!(statuses(&answers), [200, 200, 200, 200, 200, 429, 429, 429]);
    for refused in &answers[5..] {
        assert_eq!(refused.headers["x-tidegate-error"], "rate_limited");
        // One request per minute: the next passes a minute after the first.
        let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((55..=60).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(heads(&b), 5, "the backend saw only the admitted requests");
    // A path the rule does not match is not limited.
    assert_eq!(get(t.addr, "/products/1").await.status, 200);
    assert_eq!(heads(&b), 6);

    let stats = t.stats().await;
    let api = &stats["rate_limits"][0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["rate"], "1/m");
    assert_eq!(api["key"], "client_ip");
    assert_eq!(api["limited_total"], 3);
    assert_eq!(api["keys"], 1);
    let metrics = t.metrics().await;
    for line in [
        "tidegate_rate_limited_total{rule=\"api\"} 3\n",
        "tidegate_rate_limit_keys{rule=\"api\"} 1\n",
        "tidegate_proxy_errors_total{pool=\"shop\",code=\"429\",reason=\"rate_limited\"} 3\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // The access log names the rule on the refused lines only.
    let log = t.path.with_file_name("access.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    eventually("every request is logged", || async { lines().len() == 9 }).await;
    let limited: Vec<_> = lines().into_iter().filter(|l| l["status"] == 429).collect();
    assert_eq!(limited.len(), 3);
    assert!(limited
        .iter()
        .all(|l| l["rate_limit"] == "api" && l["error"] == "rate_limited"));
    assert!(lines()
        .iter()
        .filter(|l| l["status"] == 200)
        .all(|l| l["rate_limit"].is_null()));
    assert!(
        lines().iter().all(|l| l["priority"] == "normal"),
        "every line names the route's class"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn the_sweep_reports_who_is_limited_and_forgets_idle_clients() {
    let b = backend("b1").await;
    // Two requests a second: a client that stops is idle within a second.
    let t = tidegate(&config_text(&[b.addr], &rule("api", "2/s", 1, ""), "")).await;
    assert_eq!(get(t.addr, "/").await.status, 200);
    assert_eq!(get(t.addr, "/").await.status, 429);
    // A client that keeps asking is over its budget almost all the time,
    // so a sweep (once a second) finds it refused.
    eventually("the sweep saw the limited client", || async {
        let _ = get(t.addr, "/").await;
        t.stats().await["rate_limits"][0]["limited_now"]["top"][0]["key"] == "127.0.0.1"
    })
    .await;
    assert!(t.stats().await["rate_limits"][0]["limited_total"].as_u64() >= Some(1));
    eventually("the idle client is forgotten", || async {
        t.stats().await["rate_limits"][0]["keys"] == 0
    })
    .await;
    assert_eq!(get(t.addr, "/").await.status, 200);
    t.shutdown().await;
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_keyed_by_the_peer() {
    let b = backend("b1").await;
    let limit = rule("per-client", "1/m", 2, "");
    let spoofs = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];

    let untrusted = tidegate(&config_text(&[b.addr], &limit, "")).await;
    let mut answers = Vec::new();
    for xff in spoofs {
        answers.push(get_with(untrusted.addr, "/", &[("x-forwarded-for", xff)]).await);
    }
    assert_eq!(
        statuses(&answers),
        [200, 200, 429],
        "one client (the peer), whatever it claims"
    );
    untrusted.shutdown().await;

    // Behind a trusted proxy the same header names three clients.
    let top = format!("[limits]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{limit}");
    let trusted = tidegate(&config_text(&[b.addr], &top, "")).await;
    let mut answers = Vec::new();
    for xff in spoofs {
        answers.push(get_with(trusted.addr, "/", &[("x-forwarded-for", xff)]).await);
    }
    assert_eq!(statuses(&answers), [200, 200, 200]);
    for _ in 0..2 {
        answers.push(get_with(trusted.addr, "/", &[("x-forwarded-for", spoofs[0])]).await);
    }
    assert_eq!(statuses(&answers[3..]), [200, 429], "198.51.100.1's own budget");
    assert_eq!(trusted.stats().await["rate_limits"][0]["keys"], 3);
    trusted.shutdown().await;
}

#[tokio::test]
async fn a_header_key_limits_each_value_and_a_missing_header_falls_back_to_the_address() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        &rule("tenant", "1/m", 1, "key = \"header:x-api-key\""),
        "",
    ))
    .await;
    let addr = t.addr;
    let a = |key: &'static str| async move { get_with(addr, "/", &[("x-api-key", key)]).await };
    assert_eq!(a("alpha").await.status, 200);
    assert_eq!(a("beta").await.status, 200);
    assert_eq!(a("alpha").await.status, 429);
    assert_eq!(get(t.addr, "/").await.status, 200, "keyed by 127.0.0.1");
    assert_eq!(get(t.addr, "/").await.status, 429);
    t.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_keeps_the_rule_name_keeps_its_count() {
    let b = backend("b1").await;
    let before = config_text(&[b.addr], &rule("api", "1/m", 3, ""), "");
    let t = tidegate(&before).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(t.addr, "/").await);
    }
    assert_eq!(statuses(&answers), [200, 200, 200, 429]);

    // Same rule name, other settings changed: the client's budget is still spent.
    let generation = t.generation().await;
    t.write_config(&format!(
        "[admin]\nlisten = \"{}\"\n{}",
        t.admin,
        config_text(&[b.addr], &rule("api", "1/m", 3, ""), "max_concurrency = 8")
    ));
    assert_eq!(t.reload().await.status, 200);
    assert!(t.generation().await > generation);
    assert_eq!(get(t.addr, "/").await.status, 429);
    let api = &t.stats().await["rate_limits"][0];
    assert_eq!(
        (api["limited_total"].as_u64(), api["keys"].as_u64()),
        (Some(2), Some(1))
    );

    // A renamed rule is a new rule: a fresh budget and fresh counts.
    t.write_config(&format!(
        "[admin]\nlisten = \"{}\"\n{}",
        t.admin,
        config_text(&[b.addr], &rule("api-v2", "1/m", 3, ""), "")
    ));
    assert_eq!(t.reload().await.status, 200);
    assert_eq!(get(t.addr, "/").await.status, 200);
    let limits = t.stats().await["rate_limits"].clone();
    assert_eq!(limits.as_array().unwrap().len(), 1);
    assert_eq!(limits[0]["name"], "api-v2");
    assert_eq!(limits[0]["limited_total"], 0);
    assert!(t
        .metrics()
        .await
        .contains("tidegate_rate_limited_total{rule=\"api-v2\"} 0\n"));
    t.shutdown().await;
}

/// Routes: `/cart` (the checkout) critical, everything else sheddable browse.
const LANES: &str = "[[route]]\npath_prefix = \"/cart\"\npool = \"shop\"\npriority = \"critical\"\n\n\
                     [[route]]\npath_prefix = \"/\"\npool = \"shop\"\npriority = \"sheddable\"\n";

#[tokio::test]
async fn a_critical_request_takes_the_place_of_the_newest_sheddable_waiter_and_is_served_first() {
    let mut g = gate().await;
    let t = tidegate(&config_text(
        &[g.addr],
        LANES,
        "max_concurrency = 1\nqueue = { max_depth = 2, timeout = \"10s\", sheddable_share = 1.0, sheddable_timeout = \"10s\" }",
    ))
    .await;
    let holder = tokio::spawn(get(t.addr, "/products/0"));
    g.arrived.recv().await.unwrap();
    let old_browse = tokio::spawn(get(t.addr, "/products/1"));
    eventually("one browse request waits", || async { t.queue_depth().await == 1 }).await;
    let new_browse = tokio::spawn(get(t.addr, "/products/2"));
    eventually("two browse requests wait", || async { t.queue_depth().await == 2 }).await;
    let checkout = tokio::spawn(get(t.addr, "/cart"));
    // The newest browse request is answered at once: 503, come back later.
    let evicted = new_browse.await.unwrap();
    assert_eq!(evicted.status, 503);
    assert_eq!(evicted.headers["x-tidegate-error"], "queue_evicted");
    assert_eq!(evicted.headers["retry-after"], "1");
    let pool = t.pool().await;
    assert_eq!(pool["queue_by_class"]["critical"], 1);
    assert_eq!(pool["queue_by_class"]["sheddable"], 1);
    assert_eq!(pool["queue_evicted"]["sheddable"], 1);
    // The slot the holder frees goes to checkout, though browse came first.
    g.release.notify_one();
    assert_eq!(holder.await.unwrap().status, 200);
    g.arrived.recv().await.unwrap();
    g.release.notify_one();
    assert_eq!(checkout.await.unwrap().status, 200);
    assert!(!old_browse.is_finished(), "browse waits behind checkout");
    g.arrived.recv().await.unwrap();
    g.release.notify_one();
    assert_eq!(old_browse.await.unwrap().status, 200);
    let metrics = t.metrics().await;
    for line in [
        "tidegate_queue_evicted_total{pool=\"shop\",class=\"sheddable\"} 1\n",
        "tidegate_pool_queue_class_depth{pool=\"shop\",class=\"critical\"} 0\n",
        "tidegate_proxy_errors_total{pool=\"shop\",code=\"503\",reason=\"queue_evicted\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn under_a_browse_flood_checkout_is_served_and_browse_is_refused_quickly() {
    // One slot, 20 ms a request: 50 req/s. Offered: 150 browse/s and 10
    // checkouts/s for 2 s, each on its own connection.
    let b = backend_with("b1", std::time::Duration::from_millis(20), 0).await;
    let t = tidegate(&config_text(
        &[b.addr],
        LANES,
        "max_concurrency = 1\nqueue = { max_depth = 1024, timeout = \"5s\" }\n\
         autoscale = { min = 1, max = 4, dry_run = true, slo = \"50ms\", hook = { kind = \"exec\", command = [\"/bin/false\"] } }",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_micros(6_250));
    let mut tasks = Vec::new();
    for i in 0..320 {
        tick.tick().await;
        let (addr, checkout) = (t.addr, i % 16 == 0);
        tasks.push(tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let path = if checkout { "/cart" } else { "/products/1" };
            let a = get(addr, path).await;
            (checkout, a.status.as_u16(), asked.elapsed())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let flood = started.elapsed();
    let checkouts: Vec<_> = results.iter().filter(|r| r.0).collect();
    assert_eq!(checkouts.len(), 20);
    assert!(
        checkouts.iter().all(|r| r.1 == 200),
        "every checkout served: {checkouts:?}"
    );
    let refused: Vec<_> = results.iter().filter(|r| !r.0 && r.1 != 200).collect();
    assert!(
        refused.len() > 100,
        "the browse flood is shed: {} refused",
        refused.len()
    );
    assert!(refused.iter().all(|r| r.1 == 503));
    // Refused within the short deadline (100 ms) plus this machine's
    // scheduling: never anywhere near the 5 s queue timeout.
    let slowest = refused.iter().map(|r| r.2).max().unwrap();
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "a refusal took {slowest:?}"
    );
    eventually("the queue empties", || async { t.queue_depth().await == 0 }).await;
    // The autoscaler's signal says who waited: browse, not checkout.
    let history = get(t.admin, "/history?pool=shop").await;
    let seconds: serde_json::Value = serde_json::from_slice(&history.body).unwrap();
    let seconds = seconds["pools"]["shop"].as_array().unwrap().clone();
    let late = |k: usize| -> u64 {
        seconds
            .iter()
            .map(|s| s["violations_by_class"][k].as_u64().unwrap())
            .sum()
    };
    let worst_wait = |k: usize| -> f64 {
        seconds
            .iter()
            .map(|s| s["queue_wait_ms_by_class"][k].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert_eq!(late(0), 0, "no checkout broke the 50 ms SLO: {seconds:?}");
    assert!(late(2) > 100, "refused browse counts against the SLO: {}", late(2));
    assert!(worst_wait(2) > worst_wait(0), "browse waited longer: {seconds:?}");
    println!(
        "flood {flood:?}: checkout 20/20, slowest {:?}; browse {} refused, slowest refusal {slowest:?}",
        checkouts.iter().map(|r| r.2).max().unwrap(),
        refused.len()
    );
    t.shutdown().await;
}
