//! Hot reload: one path for file changes, SIGHUP and POST /reload; a bad
//! file changes nothing; and not one request fails while the config churns.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

fn shop(backends: &[SocketAddr], balance: &str, extra_route: bool) -> String {
    let mut text = config_text(
        backends,
        ADMIN,
        &format!("balance = \"{balance}\"\nmax_concurrency = 64"),
    );
    text.push_str("\n[[route]]\npath_prefix = \"/\"\npool = \"shop\"\n");
    if extra_route {
        text.push_str(&format!(
            "\n[[route]]\npath_prefix = \"/products/9\"\npool = \"api\"\n\n[pools.api]\nbackends = [ {{ address = \"{}\" }} ]\n",
            backends[0]
        ));
    }
    text
}

#[tokio::test]
async fn a_bad_file_changes_nothing_and_reports_file_line_col_key() {
    let b = backend("b1").await;
    let m = tidegate(&shop(&[b.addr], "least_conn", false)).await;
    m.write_config(&shop(&[b.addr], "least_conn", false).replace("balance = \"least_conn\"", "balance = \"fastest\""));
    let a = m.reload().await;
    assert_eq!(a.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("tidegate.toml:") && error.contains("pools.shop.balance") && error.contains("fastest"),
        "{error}"
    );
    assert_eq!(
        get(m.addr, "/products/1").await.status,
        200,
        "the old config still serves"
    );
    let stats = m.stats().await;
    assert_eq!(stats["config"]["generation"], 1);
    assert_eq!(stats["config"]["reloads"]["error_total"], 1);
    assert_eq!(stats["config"]["reloads"]["recent"][0]["ok"], false);
    assert!(stats["config"]["reloads"]["recent"][0]["error"]
        .as_str()
        .unwrap()
        .contains("pools.shop.balance"));
    let metrics = get(m.admin, "/metrics").await.text();
    assert!(
        metrics.contains("tidegate_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_picked_up_by_the_watcher() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let m = tidegate_watching(&shop(&[b1.addr], "least_conn", false)).await;
    m.write_config(&shop(&[b2.addr], "least_conn", false));
    eventually("generation 2", || async { m.generation().await == 2 }).await;
    assert_eq!(get(m.addr, "/").await.backend(), "b2");
    assert_eq!(m.stats().await["config"]["reloads"]["recent"][0]["trigger"], "file");
    m.shutdown().await;
}

#[tokio::test]
async fn a_file_written_in_two_steps_is_loaded_whole_not_half_way() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let m = tidegate_watching(&shop(&[b1.addr], "least_conn", false)).await;
    // The new file's first half is a valid config on its own (the same
    // pool, p2c); the second half, a second later, moves it to b2.
    let whole = shop(&[b2.addr], "p2c", false);
    let first = shop(&[b1.addr], "p2c", false);
    let path = m.path.clone();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.sync_all().unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        f.set_len(0).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(whole.as_bytes()).unwrap();
    }
    eventually("the whole file is loaded", || async {
        get(m.addr, "/").await.backend() == "b2"
    })
    .await;
    assert_eq!(
        m.generation().await,
        2,
        "one reload: the half-written file was never applied"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_symlinked_config_reloads_when_the_link_is_swapped() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, link) = (
        dir.path().join("v1.toml"),
        dir.path().join("v2.toml"),
        dir.path().join("live.toml"),
    );
    std::fs::write(&v1, shop(&[b1.addr], "least_conn", false)).unwrap();
    std::fs::write(&v2, shop(&[b2.addr], "p2c", false)).unwrap();
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    let m = tidegate_at(&link, true).await;
    assert_eq!(get(m.addr, "/").await.backend(), "b1");
    let tmp = dir.path().join("live.tmp");
    std::os::unix::fs::symlink(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    eventually("the swapped link is loaded", || async {
        get(m.addr, "/").await.backend() == "b2"
    })
    .await;
    assert_eq!(m.pool().await["balance"], "p2c");
    m.shutdown().await;
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_touching_the_others() {
    let b = backend("b1").await;
    let base = shop(&[b.addr], "least_conn", false);
    let m = tidegate(&base).await;
    let with_extra = format!("{base}\n[[listener]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n");
    m.write_config(&with_extra);
    assert_eq!(m.reload().await.status, 200);
    let stats = m.stats().await;
    let extra: SocketAddr = stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "extra")
        .map(|l| l["address"].as_str().unwrap().parse().unwrap())
        .expect("the new listener is listed");
    assert_eq!(get(extra, "/products/1").await.status, 200);
    let mut kept = h1(m.addr).await;
    m.write_config(&base);
    assert_eq!(m.reload().await.status, 200);
    eventually("the removed listener is closed", || async {
        tokio::net::TcpStream::connect(extra).await.is_err()
    })
    .await;
    // The kept listener's existing keep-alive connection still works.
    let a = collect(kept.send_request(request("GET", "/products/2", "")).await.unwrap()).await;
    assert_eq!(a.status, 200);
    m.shutdown().await;
}

/// The acceptance test: continuous HTTP/1.1 keep-alive and HTTP/2 load
/// while the config is reloaded 50 times (backends added and removed,
/// policy switched, a route added), with invalid files in between. Every
/// response must be the backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_not_one_request() {
    let backends: Vec<TestBackend> = futures_join(["b1", "b2", "b3", "b4"]).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let variants = [
        shop(&addrs[0..2], "least_conn", false),
        shop(&addrs[0..3], "p2c", false),
        shop(&addrs[1..4], "round_robin", true),
        shop(&[addrs[3], addrs[0]], "peak_ewma", false),
        shop(&addrs[2..4], "hash", true),
    ];
    let invalid = [
        variants[0].replace("balance = \"least_conn\"", "balance = \"fastest\""),
        variants[1].replace("[pools.shop]", "[pools.shop]\nunknown_key = 1"),
        "[[listener]\nname = broken".to_string(),
    ];
    let m = tidegate(&variants[0]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (addr, stop, ok) = (m.addr, Arc::clone(&stop), Arc::clone(&ok));
        clients.push(tokio::spawn(async move {
            let mut c = h1(addr).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/products/{}", (n + i) % 10);
                let resp = c
                    .send_request(request("GET", &path, ""))
                    .await
                    .expect("h1 connection survived");
                let a = collect(resp).await;
                assert_eq!(a.status, 200, "{}", a.text());
                assert!(
                    a.text().contains("price_cents") && !a.backend().is_empty(),
                    "{}",
                    a.text()
                );
                ok.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for _ in 0..2 {
        let (addr, stop, ok) = (m.addr, Arc::clone(&stop), Arc::clone(&ok));
        clients.push(tokio::spawn(async move {
            let c = h2(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let mut streams = Vec::new();
                for k in 0..8 {
                    let mut c = c.clone();
                    streams.push(tokio::spawn(async move {
                        let req = http::Request::builder()
                            .uri(format!("http://shop.test/products/{k}"))
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap();
                        collect(c.send_request(req).await.expect("h2 stream")).await
                    }));
                }
                for s in streams {
                    let a = s.await.unwrap();
                    assert_eq!(a.status, 200, "{}", a.text());
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut applied = 0;
    for round in 0..50 {
        let before = ok.load(Ordering::Relaxed);
        if round % 7 == 3 {
            m.write_config(&invalid[round % invalid.len()]);
            assert_eq!(m.reload().await.status, 400);
        }
        m.write_config(&variants[round % variants.len()]);
        let a = m.reload().await;
        assert_eq!(a.status, 200, "{}", a.text());
        applied += 1;
        // Let some traffic through each generation.
        eventually("traffic flows after the reload", || {
            let ok = Arc::clone(&ok);
            async move { ok.load(Ordering::Relaxed) >= before + 20 }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client saw a failed request");
    }
    let stats = m.stats().await;
    assert_eq!(stats["config"]["generation"], applied + 1);
    assert!(ok.load(Ordering::Relaxed) > 1000, "{}", ok.load(Ordering::Relaxed));
    m.shutdown().await;
}

async fn futures_join<const N: usize>(names: [&str; N]) -> Vec<TestBackend> {
    let mut out = Vec::with_capacity(N);
    for n in names {
        out.push(backend(n).await);
    }
    out
}

#[tokio::test]
async fn pool_totals_survive_a_reload_that_replaces_every_backend() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let m = tidegate(&shop(&[b1.addr], "least_conn", false)).await;
    for _ in 0..5 {
        get(m.addr, "/").await;
    }
    m.write_config(&shop(&[b2.addr], "least_conn", false));
    assert_eq!(m.reload().await.status, 200);
    for _ in 0..3 {
        assert_eq!(get(m.addr, "/").await.backend(), "b2");
    }
    let pool = &m.stats().await["pools"][0];
    assert_eq!(pool["requests_total"], 8, "{pool}");
    assert_eq!(
        pool["backends"][0]["requests_total"], 3,
        "the new backend counts its own"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_config_path_that_would_block_is_refused_and_reloads_go_on() {
    let b = backend("b1").await;
    let m = tidegate(&shop(&[b.addr], "least_conn", false)).await;
    // The config file becomes a FIFO nobody writes to: reading it would
    // block forever.
    std::fs::remove_file(&m.path).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&m.path).status().unwrap();
    assert!(made.success());
    let refused = m.reload().await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("not a regular file"), "{}", refused.text());
    // The control task is not wedged: the next reload of a real file works.
    std::fs::remove_file(&m.path).unwrap();
    std::fs::write(&m.path, shop(&[b.addr], "p2c", false)).unwrap();
    assert_eq!(m.reload().await.status, 200);
    assert_eq!(m.pool().await["balance"], "p2c");
    m.shutdown().await;
}
