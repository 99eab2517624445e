//! `autoscale.mode = "export"`: the real binary decides for a pool under
//! load and exports the decision (`GET /demand`, `tidegate_pool_demand`,
//! `tidegate_pool_desired_backends`) without calling any hook.

mod common;

use common::*;

const TOKEN: &str = "export-test-token";

/// `GET path` on the admin listener with the bearer token.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Answer {
    let mut s = h1(admin).await;
    let req = http::Request::get(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    collect(s.send_request(req).await.unwrap()).await
}

async fn demand(admin: std::net::SocketAddr) -> serde_json::Value {
    let a = admin_get(admin, "/demand").await;
    assert_eq!(a.status, 200, "{}", a.text());
    serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()["pools"]["shop"].clone()
}

#[tokio::test]
async fn export_mode_publishes_demand_and_the_decision_and_calls_no_hook() {
    let mut g = gate().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let top = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let pool = "max_concurrency = 1\nqueue = { max_depth = 64, timeout = \"30s\" }\n\
                autoscale = { mode = \"export\", min = 1, max = 6 }";
    std::fs::write(&path, config_text(&[g.addr], &top, pool)).unwrap();
    let args = [
        std::ffi::OsStr::new("run"),
        "--no-watch".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ];
    let (mut child, web, admin) = spawn_tidegate(&args).await;
    let admin = admin.expect("the admin address is logged");

    // /demand is an admin route like any other: the token is required.
    assert_eq!(get(admin, "/demand").await.status, 401);
    let idle = demand(admin).await;
    assert_eq!(idle["demand"], 0);
    assert_eq!(idle["mode"], "export");
    assert_eq!(idle["ready"], 1);
    assert_eq!(idle["max_concurrency"], 1);
    assert_eq!(idle["target_per_backend"], 0.7);

    // One request holds the backend's only slot; four more queue: demand 5.
    let mut held = vec![tokio::spawn(get(web, "/products/0"))];
    tokio::time::timeout(BOUND, g.arrived.recv()).await.unwrap().unwrap();
    held.extend((1..5).map(|i| tokio::spawn(get(web, format!("/products/{i}")))));
    eventually("demand is in flight + queued", || async {
        let d = demand(admin).await;
        d["demand"] == 5 && d["in_flight"] == 1 && d["queued"] == 4
    })
    .await;
    eventually("the autoscaler wants more than one backend", || async {
        demand(admin).await["desired"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let d = demand(admin).await;
    assert_eq!(d["ready"], 1, "nothing was provisioned: {d}");
    assert!(d["demand_1m"].as_f64().unwrap() > 0.0, "{d}");

    let metrics = admin_get(admin, "/metrics").await.text();
    assert!(metrics.contains("# TYPE tidegate_pool_demand gauge"), "{metrics}");
    assert!(metrics.contains("tidegate_pool_demand{pool=\"shop\"} 5"), "{metrics}");
    let desired = d["desired"].as_u64().unwrap();
    let line = format!("tidegate_pool_desired_backends{{pool=\"shop\"}} {desired}");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    assert!(!metrics.contains("tidegate_hook_calls_total"), "no hook was called");
    let stats: serde_json::Value = serde_json::from_slice(&admin_get(admin, "/stats").await.body).unwrap();
    let autoscale = &stats["pools"][0]["autoscale"];
    assert_eq!(autoscale["mode"], "export");
    assert_eq!(autoscale["hook_calls"].as_array().unwrap().len(), 0, "{autoscale}");
    assert_eq!(stats["pools"][0]["backends"].as_array().unwrap().len(), 1);

    // Let every request through: demand falls back to 0.
    for i in 0..5 {
        g.release.notify_one();
        if i < 4 {
            tokio::time::timeout(BOUND, g.arrived.recv()).await.unwrap().unwrap();
        }
    }
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    eventually("demand is back to 0", || async { demand(admin).await["demand"] == 0 }).await;

    stop_gracefully(&mut child).await;
}
