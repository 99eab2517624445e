//! The admin listener: /stats, /metrics, the dashboard (in a real headless
//! Chromium), health/readiness, the bearer token, SIGHUP and certificate
//! reloads.

mod common;

use common::*;
use tokio::process::Command;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn stats_reports_pools_backends_queue_latency_and_config() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let m = tidegate(&config_text(
        &[b1.addr, b2.addr],
        ADMIN,
        "max_concurrency = 1\nqueue = { max_depth = 8, timeout = \"5s\" }",
    ))
    .await;
    for i in 0..10 {
        assert_eq!(get(m.addr, format!("/products/{i}")).await.status, 200);
    }
    assert_eq!(get(m.addr, "/status/503").await.status, 503);
    // Hold both slots and queue one request, then read the live numbers.
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(get(m.addr, "/?delay=400"))).collect();
    eventually("both slots held", || async { m.in_flight().await == 2 }).await;
    let queued = tokio::spawn(get(m.addr, "/"));
    eventually("one queued", || async { m.queue_depth().await == 1 }).await;
    let s = m.stats().await;
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "shop");
    assert_eq!(pool["queue_depth"], 1);
    assert_eq!(pool["queue_max_depth"], 8);
    assert_eq!(pool["in_flight"], 2);
    assert_eq!(pool["requests_total"], 11);
    assert_eq!(pool["responses"]["5xx"], 1);
    assert_eq!(pool["errors_total"], 1);
    assert!(pool["latency_ms"]["p99"].as_f64().unwrap() >= pool["latency_ms"]["p50"].as_f64().unwrap());
    assert!(pool["autoscale"].is_null(), "room for the autoscaler");
    let backends = pool["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for b in backends {
        assert_eq!(b["state"], "active");
        assert_eq!(b["in_flight"], 1);
        assert_eq!(b["max_concurrency"], 1);
        assert!(b["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(b["health"]["ejected"] == false);
    }
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["listeners"][0]["name"], "web");
    assert_eq!(s["ready"], true);
    for h in held {
        h.await.unwrap();
    }
    queued.await.unwrap();
    m.shutdown().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_documented_names() {
    let b = backend("b1").await;
    let m = tidegate(&config_text(&[b.addr], ADMIN, "max_concurrency = 1")).await;
    let held = tokio::spawn(get(m.addr, "/?delay=200"));
    eventually("held", || async { m.in_flight().await == 1 }).await;
    let queued = tokio::spawn(get(m.addr, "/"));
    held.await.unwrap();
    queued.await.unwrap();
    assert_eq!(m.reload().await.status, 200);
    let backend_label = format!("backend=\"{}\"", b.addr);
    eventually("the tick has published pool gauges", || async {
        get(m.admin, "/metrics")
            .await
            .text()
            .contains("tidegate_pool_backends{pool=\"shop\",state=\"active\"} 1")
    })
    .await;
    let a = get(m.admin, "/metrics").await;
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = a.text();
    for needle in [
        "# TYPE tidegate_requests_total counter",
        "tidegate_requests_total{pool=\"shop\",",
        &backend_label,
        "code=\"2xx\"",
        "# TYPE tidegate_request_duration_seconds histogram",
        "tidegate_request_duration_seconds_bucket{",
        "# TYPE tidegate_queue_wait_seconds histogram",
        "tidegate_pool_queue_depth{pool=\"shop\"}",
        "tidegate_backend_in_flight{pool=\"shop\",",
        "tidegate_config_reloads_total{result=\"ok\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_token_protects_every_admin_route_but_health_and_readiness() {
    let b = backend("b1").await;
    let m = tidegate(&config_text(&[b.addr], &format!("{ADMIN}token = \"s3cret\"\n"), "")).await;
    for path in ["/", "/stats", "/history", "/metrics", "/nope"] {
        let a = get(m.admin, path).await;
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(a.headers["www-authenticate"], "Bearer");
    }
    // Probes carry no secret: liveness and readiness answer anyone.
    let healthz = get(m.admin, "/healthz").await;
    assert_eq!((healthz.status.as_u16(), healthz.text().as_str()), (200, "ok\n"));
    assert_eq!(get(m.admin, "/readyz").await.status, 200);
    // Only GET is open: a POST to the same paths still needs the token,
    // and so does a reload.
    let mut s = h1(m.admin).await;
    for path in ["/healthz", "/reload"] {
        let req = http::Request::post(path)
            .header("host", "a")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        assert_eq!(
            collect(s.send_request(req).await.unwrap()).await.status,
            401,
            "POST {path}"
        );
    }
    let mut s = h1(m.admin).await;
    let req = http::Request::get("/stats")
        .header("host", "a")
        .header("authorization", "Bearer s3cret")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(collect(s.send_request(req).await.unwrap()).await.status, 200);
    let req = http::Request::get("/stats")
        .header("host", "a")
        .header("authorization", "Bearer s3crex")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(collect(s.send_request(req).await.unwrap()).await.status, 401);
    // `?token=` opens the dashboard page only; the page sends the header.
    assert_eq!(get(m.admin, "/?token=s3cret").await.status, 200);
    assert_eq!(get(m.admin, "/stats?token=s3cret").await.status, 401);
    // The scheme is case-insensitive; a longer or shorter guess is wrong.
    for (given, status) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer s3cret2", 401),
        ("Bearer s3cre", 401),
    ] {
        let a = ask(m.admin, "GET", "/stats", &[("authorization", given)]).await;
        assert_eq!(a.status, status, "{given}");
    }
    m.shutdown().await;
}

/// One admin request with `headers` (Host defaults to the listener's
/// address).
async fn ask(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| *k == "host") {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    collect(h1(addr).await.send_request(req).await.unwrap()).await
}

#[tokio::test]
async fn head_works_and_a_wrong_method_is_told_what_is_allowed() {
    let b = backend("b1").await;
    let m = tidegate(&config_text(&[b.addr], ADMIN, "")).await;
    let head = ask(m.admin, "HEAD", "/stats", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "no body for HEAD");
    assert!(head.headers.contains_key("content-length"));
    let wrong = ask(m.admin, "DELETE", "/stats", &[]).await;
    assert_eq!(
        (wrong.status.as_u16(), &wrong.headers["allow"]),
        (405, &"GET, HEAD".parse::<http::HeaderValue>().unwrap())
    );
    let wrong = ask(m.admin, "GET", "/reload", &[]).await;
    assert_eq!(
        (wrong.status.as_u16(), &wrong.headers["allow"]),
        (405, &"POST".parse::<http::HeaderValue>().unwrap())
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_web_page_cannot_read_through_dns_rebinding_or_reload_cross_site() {
    let b = backend("b1").await;
    let m = tidegate(&config_text(
        &[b.addr],
        &format!("{ADMIN}allowed_hosts = [\"admin.shop.internal\"]\n"),
        "",
    ))
    .await;
    let browser = ("sec-fetch-mode", "cors");
    // A page on evil.example whose name now resolves to 127.0.0.1.
    let rebound = ask(m.admin, "GET", "/stats", &[("host", "evil.example:9090"), browser]).await;
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    // The same Host from a program (Prometheus, curl) is not a browser's.
    assert_eq!(
        ask(m.admin, "GET", "/stats", &[("host", "evil.example:9090")])
            .await
            .status,
        200
    );
    // Names the operator listed, IP literals and localhost are fine.
    for host in [
        "admin.shop.internal:9090",
        "localhost:9090",
        "127.0.0.1:9090",
        "[::1]:9090",
    ] {
        assert_eq!(
            ask(m.admin, "GET", "/stats", &[("host", host), browser]).await.status,
            200,
            "{host}"
        );
    }
    // A page elsewhere posting to /reload.
    let cross = ask(
        m.admin,
        "POST",
        "/reload",
        &[("origin", "http://evil.example"), browser],
    )
    .await;
    assert_eq!(cross.status, 403);
    // The dashboard itself (same origin) may.
    let origin = format!("http://{}", m.admin);
    let same = ask(
        m.admin,
        "POST",
        "/reload",
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.text());
    m.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_wrong_methods() {
    let b = backend("b1").await;
    let m = tidegate(&config_text(&[b.addr], ADMIN, "")).await;
    assert_eq!(get(m.admin, "/healthz").await.text(), "ok\n");
    assert_eq!(get(m.admin, "/readyz").await.status, 200);
    assert_eq!(get(m.admin, "/reload").await.status, 405);
    assert_eq!(get(m.admin, "/nope").await.status, 404);
    m.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, config_text(&[b1.addr], ADMIN, "")).unwrap();
    let args = [
        std::ffi::OsStr::new("run"),
        "--no-watch".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ];
    let (mut child, web, admin) = spawn_tidegate(&args).await;
    let admin = admin.expect("the admin address is logged");
    assert_eq!(get(web, "/").await.backend(), "b1");
    std::fs::write(&path, config_text(&[b2.addr], ADMIN, "")).unwrap();
    signal(&child, "-HUP").await;
    eventually("the HUP reload is applied", || async {
        get(web, "/").await.backend() == "b2"
    })
    .await;
    let stats: serde_json::Value = serde_json::from_slice(&get(admin, "/stats").await.body).unwrap();
    assert_eq!(stats["config"]["reloads"]["recent"][0]["trigger"], "signal");
    stop_gracefully(&mut child).await;
}

/// Runs headless Chromium (Debian's `chromium`, installed by `.ci/run`).
async fn chromium(args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args);
    tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finished")
        .expect("chromium is installed (apt-get install chromium)")
}

#[tokio::test]
async fn the_dashboard_renders_the_backends_table_from_stats_in_a_real_browser() {
    let (b1, b2) = (toggle("b1").await, toggle("b2").await);
    let checks = "health = { interval = \"50ms\", timeout = \"100ms\", healthy = 1, unhealthy = 1 }";
    let m = tidegate(&config_text(&[b1.addr, b2.addr], ADMIN, checks)).await;
    for i in 0..20 {
        get(m.addr, format!("/products/{i}")).await;
    }
    b2.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("b2 is down", || async { m.backend_state(1).await == "down" }).await;
    let url = format!("http://{}/", m.admin);
    let out = chromium(&["--dump-dom".into(), url.clone()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-rendered=\"true\""),
        "the page rendered /stats:\n{dom}"
    );
    let stats = m.stats().await;
    for b in stats["pools"][0]["backends"].as_array().unwrap() {
        let addr = b["address"].as_str().unwrap();
        let row_start = dom
            .find(&format!("data-backend=\"{addr}\""))
            .unwrap_or_else(|| panic!("no row for {addr}:\n{dom}"));
        let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
        let state = b["state"].as_str().unwrap();
        assert!(
            row.contains(&format!(">{state}<")),
            "row for {addr} shows {state}: {row}"
        );
    }
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = chromium(&[
        "--window-size=1280,900".into(),
        format!("--screenshot={}", shot.display()),
        url,
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot at {}",
        shot.display()
    );
    println!("dashboard screenshot: {}", shot.display());
    m.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_shows_an_elastic_pools_decisions_and_hook_calls() {
    let fixed = backend("fixed").await;
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        &dir,
        "provision.sh",
        "cat > /dev/null; echo 'quota exceeded' >&2; exit 1",
    );
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nbackends = [ {{ address = \"{}\" }} ]\n\
autoscale = {{ min = 2, max = 3, hook = {{ kind = \"exec\", command = [\"{}\"] }} }}\n",
        fixed.addr, hook
    );
    let m = tidegate(&text).await;
    eventually("the hook has been called", || async {
        m.stats().await["pools"][0]["autoscale"]["hook_calls"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    let out = chromium(&["--dump-dom".into(), format!("http://{}/", m.admin)]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    let row_start = dom
        .find("data-seq=\"1\"")
        .unwrap_or_else(|| panic!("no row for hook call 1:\n{dom}"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    assert!(row.contains("failed: ") && row.contains("quota exceeded"), "{row}");
    assert!(
        dom.contains("tidegate: "),
        "the decisions table shows the reason:\n{dom}"
    );
    assert!(dom.contains("desired 2, current 1"), "the size line:\n{dom}");
    m.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_shows_limited_clients_in_a_real_browser() {
    let b = backend("b1").await;
    // One request a minute: after its first request, the client is over
    // its budget for a whole minute, whatever the load on this machine
    // (a busy loop at 2/s could be starved between two sweeps and look
    // idle to the page).
    let top = format!("{ADMIN}\n[[rate_limit]]\nname = \"api\"\nrate = \"1/m\"\nburst = 1\n");
    let m = tidegate(&config_text(&[b.addr], &top, "")).await;
    assert_eq!(get(m.addr, "/").await.status, 200);
    assert_eq!(get(m.addr, "/").await.status, 429);
    eventually("the sweep saw the limited client", || async {
        m.stats().await["rate_limits"][0]["limited_now"]["clients"] == 1
    })
    .await;
    let out = chromium(&["--dump-dom".into(), format!("http://{}/", m.admin)]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    let row_start = dom
        .find("data-rule=\"api\"")
        .unwrap_or_else(|| panic!("no row for the rule:\n{dom}"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    assert!(row.contains("1/m, burst 1"), "{row}");
    assert!(row.contains("127.0.0.1"), "the limited client is named: {row}");
    m.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_shows_the_cache_hit_ratio_in_a_real_browser() {
    let b = backend("b1").await;
    let route = "[[route]]\npath_prefix = \"/\"\npool = \"shop\"\ncache = { ttl = \"30s\" }\n";
    let m = tidegate(&config_text(&[b.addr], &format!("{ADMIN}{route}"), "")).await;
    // One miss, three hits: 75 %.
    for _ in 0..4 {
        assert_eq!(get(m.addr, "/products/1").await.status, 200);
    }
    let out = chromium(&["--dump-dom".into(), format!("http://{}/", m.admin)]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("hit ratio 75.0 %"), "the cache summary:\n{dom}");
    let row_start = dom
        .find("data-cache-pool=\"shop\"")
        .unwrap_or_else(|| panic!("no cache row for the pool:\n{dom}"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    assert!(row.contains(">75.0 %<"), "{row}");
    m.shutdown().await;
}
