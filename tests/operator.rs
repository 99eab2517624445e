//! What an operator reads: the access log, request ids, forwarded-for
//! trust, and the metrics for what tidegate answers itself.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

/// Lines of the access log at `path`, parsed.
fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn send(addr: std::net::SocketAddr, req: http::Request<Full<Bytes>>) -> Answer {
    let mut s = h1(addr).await;
    collect(s.send_request(req).await.unwrap()).await
}

fn get_req(path: &str) -> http::request::Builder {
    http::Request::get(path).header("host", "shop.example")
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_with_what_happened() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "[access_log]\nformat = \"json\"\npath = \"access.log\"\n",
        "",
    ))
    .await;
    let log = t.path.with_file_name("access.log");
    let seen = send(t.addr, get_req("/headers").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(seen.status, 200);
    let posted = send(
        t.addr,
        http::Request::post("/products/1?x=1")
            .header("host", "shop.example")
            .header("user-agent", "operator-test")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .unwrap(),
    )
    .await;
    assert_eq!(posted.status, 200);
    eventually("both lines are written", || async { log_lines(&log).len() == 2 }).await;
    let lines = log_lines(&log);
    let first = &lines[0];
    // The id the backend was given is the one logged.
    let id = first["request_id"].as_str().unwrap();
    assert!(seen.text().contains(&format!("x-request-id: {id}")), "{}", seen.text());
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.example");
    assert_eq!(first["path"], "/headers");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["pool"], "shop");
    assert_eq!(first["backend"], b.addr.to_string());
    assert_eq!(first["error"], serde_json::Value::Null);
    assert_eq!(first["bytes_out"].as_u64().unwrap(), seen.body.len() as u64);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(first["duration_ms"].as_f64().unwrap() >= first["queue_ms"].as_f64().unwrap());
    let second = &lines[1];
    assert_eq!(second["method"], "POST");
    assert_eq!(second["path"], "/products/1?x=1");
    assert_eq!(second["bytes_in"], 10);
    assert_eq!(second["user_agent"], "operator-test");
    assert_ne!(second["request_id"], first["request_id"]);
    t.shutdown().await;
}

#[tokio::test]
async fn responses_tidegate_writes_itself_are_logged_and_counted_with_their_code() {
    let slow = backend_with("slow", Duration::from_millis(300), 0).await;
    let t = tidegate(&config_text(
        &[slow.addr],
        "[access_log]\nformat = \"json\"\npath = \"access.log\"\n",
        "max_concurrency = 1\nqueue = { max_depth = 1, timeout = \"5s\" }",
    ))
    .await;
    let log = t.path.with_file_name("access.log");
    let answers = futures_join(t.addr, 5).await;
    let full: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(full.len(), 3, "one served, one queued, three refused");
    for a in &full {
        assert_eq!(a.headers["x-tidegate-error"], "queue_full");
        assert_eq!(a.headers["x-request-id"].len(), 32, "error responses carry the id");
    }
    eventually("five lines are written", || async { log_lines(&log).len() == 5 }).await;
    let refused: Vec<serde_json::Value> = log_lines(&log).into_iter().filter(|l| l["status"] == 503).collect();
    assert_eq!(refused.len(), 3);
    for l in &refused {
        assert_eq!(l["error"], "queue_full");
        assert_eq!(l["pool"], "shop");
        assert_eq!(l["backend"], serde_json::Value::Null);
    }
    let ids: Vec<&str> = full
        .iter()
        .map(|a| a.headers["x-request-id"].to_str().unwrap())
        .collect();
    for l in &refused {
        assert!(ids.contains(&l["request_id"].as_str().unwrap()));
    }
    let m = t.metrics().await;
    assert!(
        m.contains("tidegate_proxy_errors_total{pool=\"shop\",code=\"503\",reason=\"queue_full\"} 3\n"),
        "{m}"
    );
    t.shutdown().await;
}

/// `n` parallel GETs of `/` on fresh connections.
async fn futures_join(addr: std::net::SocketAddr, n: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(get(addr, "/"))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn forwarded_for_and_request_ids_are_believed_only_from_trusted_proxies() {
    let b = backend("b1").await;
    let ask = |addr| async move {
        send(
            addr,
            get_req("/headers")
                .header("x-forwarded-for", "198.51.100.9")
                .header("x-forwarded-proto", "https")
                .header("x-request-id", "edge-42")
                .header("forwarded", "for=198.51.100.9")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .text()
    };
    let untrusted = tidegate(&config_text(&[b.addr], "", "")).await;
    let seen = ask(untrusted.addr).await;
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(!seen.contains("edge-42"), "{seen}");
    assert!(!seen.contains("forwarded: for="), "{seen}");
    untrusted.shutdown().await;

    let trusted = tidegate(&config_text(
        &[b.addr],
        "[limits]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[access_log]\npath = \"access.log\"\n",
        "",
    ))
    .await;
    let seen = ask(trusted.addr).await;
    assert!(seen.contains("x-forwarded-for: 198.51.100.9, 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("x-request-id: edge-42\n"), "{seen}");
    let log = trusted.path.with_file_name("access.log");
    eventually("the line is written", || async { log_lines(&log).len() == 1 }).await;
    let line = &log_lines(&log)[0];
    assert_eq!(line["client"], "198.51.100.9", "the client the trusted proxy names");
    assert_eq!(line["request_id"], "edge-42");
    trusted.shutdown().await;
}

#[tokio::test]
async fn the_combined_format_is_one_line_per_request() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "[access_log]\nformat = \"combined\"\npath = \"access.log\"\n",
        "",
    ))
    .await;
    let a = send(
        t.addr,
        get_req("/products/7")
            .header("referer", "https://shop.example/")
            .header("user-agent", "curl/8")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let log = t.path.with_file_name("access.log");
    eventually("the line is written", || async {
        std::fs::read_to_string(&log).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let line = std::fs::read_to_string(&log).unwrap();
    let expected_tail = format!(
        "\"GET /products/7 HTTP/1.1\" 200 {} \"https://shop.example/\" \"curl/8\" \"",
        a.body.len()
    );
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains(&expected_tail), "{line}");
    assert!(line.trim_end().ends_with(" shop"), "{line}");
    t.shutdown().await;
}

#[tokio::test]
async fn metrics_count_bytes_per_pool_and_describe_the_process() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "", "")).await;
    let a = send(
        t.addr,
        http::Request::post("/products/1")
            .header("host", "shop.example")
            .body(Full::new(Bytes::from(vec![b'x'; 1000])))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let sample = |m: &str, name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
    };
    eventually("the response's bytes are counted", || async {
        let m = t.metrics().await;
        sample(&m, "tidegate_pool_bytes_total{pool=\"shop\",direction=\"out\"}") == a.body.len() as f64
    })
    .await;
    let m = t.metrics().await;
    assert_eq!(
        sample(&m, "tidegate_pool_bytes_total{pool=\"shop\",direction=\"in\"}"),
        1000.0
    );
    assert!(sample(&m, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&m, "process_open_fds") >= 3.0);
    assert!(sample(&m, "process_cpu_seconds_total") >= 0.0);
    assert!(sample(&m, "tidegate_config_last_reload_success_timestamp_seconds") > 1.7e9);
    assert_eq!(sample(&m, "tidegate_access_log_dropped_total"), 0.0);
    for family in ["process_cpu_seconds_total", "tidegate_pool_bytes_total"] {
        assert!(m.contains(&format!("# HELP {family} ")), "{family} has no HELP");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        config_text(&[b.addr], "[access_log]\npath = \"access.log\"\n", ""),
    )
    .unwrap();
    let args = [
        std::ffi::OsStr::new("run"),
        "--no-watch".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ];
    let (mut child, web, _) = spawn_tidegate(&args).await;
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    assert_eq!(get(web, "/").await.status, 200);
    eventually("the first line is written", || async { log_lines(&log).len() == 1 }).await;
    std::fs::rename(&log, &rotated).unwrap();
    signal(&child, "-USR1").await;
    // The writer reopens before its next line: keep asking until a line
    // lands in the new file (the signal may arrive after a request).
    eventually("a line lands in the reopened file", || async {
        assert_eq!(get(web, "/").await.status, 200);
        !log_lines(&log).is_empty()
    })
    .await;
    assert!(!log_lines(&rotated).is_empty());
    stop_gracefully(&mut child).await;
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_is_a_config_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[access_log]\npath = \"no/such/dir/access.log\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[pools.shop]\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let err = tidegate::config::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("t.toml:2:8: access_log.path: cannot open"), "{err}");
}
