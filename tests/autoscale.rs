//! The elastic pool end to end: real HTTP load through tidegate to real
//! `tidegate backend` processes started by the provisioner.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

fn elastic(hook: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nmax_concurrency = 2\nqueue = {{ max_depth = 10000, timeout = \"30s\" }}\nbackends = []\n\
autoscale = {{ min = 1, max = 4, provisioning_delay = \"1s\", scale_down_window = \"3s\", hook = {hook} }}\n"
    )
}

/// Wall-clock seconds: schedules and history files are keyed by real time.
#[allow(clippy::disallowed_methods)]
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Addresses of the members taking traffic.
async fn active(m: &Tidegate) -> Vec<SocketAddr> {
    members(m, |b| b["state"] == "active").await
}

/// Addresses of the members matching `which`, as `/stats` lists them.
async fn members(m: &Tidegate, which: impl Fn(&serde_json::Value) -> bool) -> Vec<SocketAddr> {
    m.pool().await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| which(b))
        .map(|b| b["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Members still in the pool (not draining), and whether any draining one
/// still carries a request.
async fn in_pool_and_draining_busy(m: &Tidegate) -> (usize, bool) {
    let pool = m.pool().await;
    let backends = pool["backends"].as_array().unwrap();
    let in_pool = backends.iter().filter(|b| b["state"] != "draining").count();
    let busy = backends
        .iter()
        .any(|b| b["state"] == "draining" && b["in_flight"].as_u64().unwrap() > 0);
    (in_pool, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_under_load_and_shrinks_back_without_a_failed_request() {
    let m = tidegate(&elastic(
        "{ kind = \"local\", service_time = \"100ms\", concurrency = 2 }",
    ))
    .await;
    eventually("the first backend is provisioned and healthy", || async {
        active(&m).await.len() == 1
    })
    .await;

    // Twelve clients; ten stop after the pool has grown, two keep going
    // while it shrinks, so scale-in happens under load.
    let ok = Arc::new(AtomicU64::new(0));
    let (stop_most, stop_rest) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut clients = Vec::new();
    for i in 0..12 {
        let stop = Arc::clone(if i < 6 { &stop_most } else { &stop_rest });
        let (addr, ok) = (m.addr, Arc::clone(&ok));
        clients.push(tokio::spawn(async move {
            let mut c = h1(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .send_request(request("GET", &format!("/products/{i}"), ""))
                    .await
                    .expect("no connection error");
                let a = collect(resp).await;
                assert_eq!(a.status, 200, "{}", a.text());
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually("the signal sees requests waiting in the queue", || async {
        m.stats().await["pools"][0]["autoscale"]["queue_wait_ms"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    eventually("the pool grows to four ready backends", || async {
        active(&m).await.len() == 4
    })
    .await;
    let grown = active(&m).await;
    stop_most.store(true, Ordering::Relaxed);
    // Lower the ceiling by a reload while two clients keep going: the loop
    // must drain two members and deprovision them without cutting a request.
    m.write_config(
        &elastic("{ kind = \"local\", service_time = \"100ms\", concurrency = 2 }").replace("max = 4", "max = 2"),
    );
    assert_eq!(m.reload().await.status, 200);
    eventually("the pool shrinks to two while two clients keep going", || async {
        in_pool_and_draining_busy(&m).await == (2, false)
    })
    .await;
    stop_rest.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("every response was a 200, also while the pool shrank");
    }
    eventually("back to the minimum, nothing draining", || async {
        active(&m).await.len() == 1 && in_pool_and_draining_busy(&m).await == (1, false)
    })
    .await;
    // Load was real: every client was answered (how many times depends on
    // how fast the pool grew, which is the point of the test).
    assert!(
        ok.load(Ordering::Relaxed) >= 12,
        "{} answers",
        ok.load(Ordering::Relaxed)
    );
    let pool = m.pool().await;
    let errors = pool["responses"]["5xx"].as_u64().unwrap() + pool["responses"]["error"].as_u64().unwrap();
    assert_eq!(errors, 0, "no 5xx and no failed exchange behind the proxy: {pool}");
    let kept = active(&m).await[0];
    for addr in grown.into_iter().filter(|a| *a != kept) {
        eventually("a removed backend's process is gone", || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
    let stats = m.stats().await;
    let auto = &stats["pools"][0]["autoscale"];
    assert_eq!(auto["desired"], 1, "{auto}");
    assert!(auto["decisions"].as_array().unwrap().len() >= 2, "{auto}");
    assert!(
        auto["hook_calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["result"] == "ok"),
        "{auto}"
    );
    let metrics = get(m.admin, "/metrics").await.text();
    assert!(
        metrics.contains("tidegate_hook_calls_total{pool=\"shop\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tidegate_pool_desired_backends{pool=\"shop\"}"));
    assert!(metrics.contains("tidegate_autoscale_decisions_total{pool=\"shop\",direction=\"up\"}"));
    m.shutdown().await;
}

fn exec_hook(dir: &tempfile::TempDir, body: &str) -> String {
    format!(
        "{{ kind = \"exec\", command = [\"{}\"], timeout = \"5s\" }}",
        script(dir, "provision.sh", body)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_hook_script_provides_the_members() {
    // The "cloud": three slow backends already running; the script hands
    // out the first `desired` of them.
    let pool: Vec<TestBackend> = vec![
        backend_with("c1", std::time::Duration::from_millis(100), 0).await,
        backend_with("c2", std::time::Duration::from_millis(100), 0).await,
        backend_with("c3", std::time::Duration::from_millis(100), 0).await,
    ];
    let list: Vec<String> = pool.iter().map(|b| format!("'\"{}\"'", b.addr)).collect();
    let dir = tempfile::tempdir().unwrap();
    let hook = exec_hook(
        &dir,
        &format!(
            r#"desired=$(sed -E 's/.*"desired":([0-9]+).*/\1/')
all=({})
out=$(IFS=,; echo "${{all[*]:0:$desired}}")
echo "{{\"members\":[$out]}}""#,
            list.join(" ")
        ),
    );
    let m = tidegate(&elastic(&hook).replace("max = 4", "max = 3")).await;
    eventually("one member", || async { active(&m).await.len() == 1 }).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (addr, stop) = (m.addr, Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut c = h1(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let a = collect(c.send_request(request("GET", "/", "")).await.unwrap()).await;
                assert_eq!(a.status, 200);
                seen.insert(a.backend());
            }
            seen
        }));
    }
    eventually("three members ready", || async { active(&m).await.len() == 3 }).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    assert!(seen.contains("c3"), "traffic reached the newest member: {seen:?}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_loop_back_or_exceed_max_are_refused_and_the_pool_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("answer.json");
    std::fs::write(&answer, r#"{"members":[]}"#).unwrap();
    let hook = exec_hook(&dir, &format!("cat > /dev/null; cat {}", answer.display()));
    let m = tidegate(&elastic(&hook)).await;
    let failures = || async {
        m.stats().await["pools"][0]["autoscale"]["hook_failures"]
            .as_u64()
            .unwrap_or(0)
    };
    let last_error = || async {
        m.stats().await["pools"][0]["autoscale"]["hook_calls"][0]["error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // tidegate's own listener as a member: every request would loop.
    std::fs::write(&answer, format!(r#"{{"members":["{}"]}}"#, m.addr)).unwrap();
    eventually("the looping answer is refused", || async {
        last_error().await.contains("own listeners")
    })
    .await;
    // More members than `max = 4`.
    let many: Vec<String> = (1..=6).map(|i| format!("\"127.0.0.1:{}\"", 1000 + i)).collect();
    std::fs::write(&answer, format!(r#"{{"members":[{}]}}"#, many.join(","))).unwrap();
    eventually("the oversized answer is refused", || async {
        last_error().await.contains("more than the pool may hold")
    })
    .await;
    assert!(failures().await >= 2);
    assert!(members(&m, |_| true).await.is_empty(), "no refused member was used");
    // A good answer is taken: the loop went on after the refusals.
    let good = backend("good").await;
    std::fs::write(&answer, format!(r#"{{"members":["{}"]}}"#, good.addr)).unwrap();
    eventually("the good member serves", || async {
        active(&m).await == vec![good.addr]
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn a_failing_hook_leaves_the_pool_serving_and_is_retried_with_backoff() {
    let fixed = backend("fixed").await;
    let dir = tempfile::tempdir().unwrap();
    let hook = exec_hook(&dir, "cat > /dev/null; echo 'cloud says no' >&2; exit 1");
    let text = elastic(&hook).replace(
        "backends = []",
        &format!("backends = [ {{ address = \"{}\" }} ]", fixed.addr),
    );
    let m = tidegate(&text.replace("min = 1", "min = 2")).await;
    eventually("the hook has failed once", || async {
        m.stats().await["pools"][0]["autoscale"]["hook_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(m.addr, "/").await.backend(),
            "fixed",
            "the static backend keeps serving"
        );
    }
    let stats = m.stats().await;
    let call = &stats["pools"][0]["autoscale"]["hook_calls"][0];
    assert_eq!(call["result"], "failed", "{call}");
    assert!(call["error"].as_str().unwrap().contains("cloud says no"), "{call}");
    m.shutdown().await;
}

#[tokio::test]
async fn scheduled_capacity_is_provisioned_without_any_load() {
    // A daily entry in force now (UTC), wrapping midnight if need be.
    let now = unix_secs() % 86_400;
    let hhmm = |s: u64| format!("{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60);
    let (start, end) = (hhmm(now + 86_400 - 120), hhmm(now + 1200));
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nmax_concurrency = 4\nbackends = []\n\n[pools.shop.autoscale]\nmin = 1\nmax = 5\nprovisioning_delay = \"1s\"\n\
hook = {{ kind = \"local\", service_time = \"10ms\", concurrency = 4 }}\n\n\
[[pools.shop.autoscale.schedule]]\nstart = \"{start}\"\nend = \"{end}\"\nmin = 3\n"
    );
    let m = tidegate(&text).await;
    eventually("the scheduled three are ready", || async {
        active(&m).await.len() == 3
    })
    .await;
    assert_eq!(m.stats().await["pools"][0]["autoscale"]["desired"], 3);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_becomes_healthy_is_reported_and_replaced() {
    let good = backend("good").await;
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    // The "cloud" first hands out a machine that never answers; once asked
    // to remove it, a good one.
    let marker = dir.path().join("replaced");
    let hook = exec_hook(
        &dir,
        &format!(
            r#"input=$(cat)
case "$input" in *'"remove":["{dead}"]'*) touch '{m}';; esac
if [ -e '{m}' ]; then echo '{{"members":["{good}"]}}'; else echo '{{"members":["{dead}"]}}'; fi"#,
            m = marker.display(),
            good = good.addr,
        ),
    );
    let text = elastic(&hook).replace("scale_down_window", "ready_deadline = \"2s\", scale_down_window");
    let m = tidegate(&text).await;
    eventually("the good member replaced the dead one and is ready", || async {
        active(&m).await == vec![good.addr]
    })
    .await;
    assert!(
        members(&m, |_| true).await.iter().all(|a| *a != dead),
        "the dead member left the pool"
    );
    assert_eq!(get(m.addr, "/").await.backend(), "good");
    eventually("the loop has seen the good member come up", || async {
        m.stats().await["pools"][0]["autoscale"]["provisioning_delay_learned"] == true
    })
    .await;
    let stats = m.stats().await;
    let auto = &stats["pools"][0]["autoscale"];
    assert_eq!(auto["replaced"], 1, "{auto}");
    assert_eq!(auto["provisioning_delay_learned"], true, "{auto}");
    assert!(
        auto["provisioning_delay_s"].as_f64().unwrap() < 2.0,
        "learned from the good member, not the 1 s guess's replacement: {auto}"
    );
    let metrics = get(m.admin, "/metrics").await.text();
    assert!(
        metrics.contains("tidegate_autoscale_replaced_total{pool=\"shop\"} 1"),
        "{metrics}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_history_pre_scales_an_idle_pool_before_yesterdays_peak() {
    // Yesterday, in the minutes just ahead of now, the shop had 400 req/s.
    let state_dir = tempfile::tempdir().unwrap();
    let now_minute = unix_secs() / 60;
    let mut csv = String::from("minute,arrivals_per_second,peak_concurrency,peak_queued,peak_queue_wait_ms\n");
    for minute in now_minute - 1440 - 10..now_minute - 1440 + 10 {
        csv.push_str(&format!("{minute},400.000,20.0,0.0,0.0\n"));
    }
    csv.push_str("garbage line from a torn write\n");
    let file = state_dir.path().join("shop.minutes.csv");
    std::fs::write(&file, csv).unwrap();
    let text = elastic("{ kind = \"local\", service_time = \"10ms\", concurrency = 2 }")
        .replace("max = 4", "max = 3")
        .replace(
            "[admin]",
            &format!("[runtime]\nstate_dir = \"{}\"\n\n[admin]", state_dir.path().display()),
        );
    let m = tidegate(&text).await;
    eventually("three members ready with no load at all", || async {
        active(&m).await.len() == 3
    })
    .await;
    let stats = m.stats().await;
    let auto = &stats["pools"][0]["autoscale"];
    assert_eq!(auto["forecast_rate"], 400.0, "{auto}");
    assert_eq!(auto["history_minutes"], 20, "{auto}");
    assert!(
        auto["decisions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("forecast 400 req/s"),
        "{auto}"
    );
    // The file was rewritten without the torn line and stays the history.
    let kept = std::fs::read_to_string(&file).unwrap();
    assert_eq!(kept.lines().count(), 21, "{kept}");
    assert!(!kept.contains("garbage"));
    m.shutdown().await;
}

#[tokio::test]
async fn dry_run_shows_guarded_decisions_and_never_calls_the_hook() {
    let fixed = backend("fixed").await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("called");
    let hook = exec_hook(
        &dir,
        &format!(
            "cat > /dev/null; touch '{}'; echo '{{\"members\":[]}}'",
            marker.display()
        ),
    );
    let text = elastic(&hook)
        .replace(
            "backends = []",
            &format!("backends = [ {{ address = \"{}\" }} ]", fixed.addr),
        )
        .replace("min = 1", "min = 3, dry_run = true, max_step_up = 1");
    let m = tidegate(&text).await;
    eventually("the wanted size reaches the minimum, one step at a time", || async {
        m.stats().await["pools"][0]["autoscale"]["desired"] == 3
    })
    .await;
    let stats = m.stats().await;
    let auto = &stats["pools"][0]["autoscale"];
    let steps: Vec<(u64, u64)> = auto["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| (d["from"].as_u64().unwrap(), d["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(steps, vec![(0, 2), (2, 3)], "{auto}");
    assert!(
        auto["decisions"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("wants 3, max_step_up 1"),
        "{auto}"
    );
    assert_eq!(auto["dry_run"], true);
    assert!(auto["hook_calls"].as_array().unwrap().is_empty(), "{auto}");
    assert!(!marker.exists(), "a dry run never calls the hook");
    assert_eq!(in_pool_and_draining_busy(&m).await, (1, false));
    assert_eq!(get(m.addr, "/").await.backend(), "fixed");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_loop_and_simulate_stdio_decide_the_same_on_one_recorded_signal() {
    // A dry-run elastic pool under a changing load records what its step
    // saw each second (GET /history); replaying that recording through
    // `tidegate simulate --stdio` with the same pool's settings must ask
    // for the same size every second: one step function for both.
    let b = backend_with("b1", std::time::Duration::from_millis(30), 0).await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nmax_concurrency = 2\nqueue = {{ max_depth = 10000, timeout = \"30s\" }}\nbackends = [ {{ address = \"{}\" }} ]\n\
autoscale = {{ min = 1, max = 20, dry_run = true, slo = \"50ms\", scale_down_window = \"4s\", max_step_up = 3, hook = {{ kind = \"exec\", command = [\"/bin/false\"] }} }}\n",
        b.addr
    );
    let m = tidegate(&text).await;
    // Load in three phases: light, heavy (it queues), light again.
    for (clients, secs) in [(1usize, 3u64), (12, 4), (1, 5)] {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        let workers: Vec<_> = (0..clients)
            .map(|i| {
                let addr = m.addr;
                tokio::spawn(async move {
                    let mut c = h1(addr).await;
                    while tokio::time::Instant::now() < deadline {
                        let resp = c
                            .send_request(request("GET", &format!("/products/{i}"), ""))
                            .await
                            .unwrap();
                        assert_eq!(collect(resp).await.status, 200);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    }
    let history = get(m.admin, "/history?pool=shop").await;
    assert_eq!(history.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&history.body).unwrap();
    let seconds = body["pools"]["shop"].as_array().unwrap().clone();
    assert!(seconds.len() >= 10, "{} seconds recorded", seconds.len());
    assert!(
        seconds.iter().any(|s| s["queued"].as_u64().unwrap() > 0),
        "the heavy phase queued"
    );
    let desired: Vec<u64> = seconds.iter().map(|s| s["desired"].as_u64().unwrap()).collect();
    assert!(
        desired.iter().max() > desired.first(),
        "the pool was asked to grow: {desired:?}"
    );

    let mut input = String::new();
    for s in &seconds {
        input.push_str(
            &serde_json::json!({
                "t": s["t"], "arrivals": s["arrivals"], "completions": s["completions"],
                "in_flight": s["in_flight"], "queued": s["queued"], "ready": s["ready"],
                "pending": s["pending"], "queue_wait_ms": s["queue_wait_ms"],
                "queue_wait_ms_by_class": s["queue_wait_ms_by_class"],
                "service_cv": s["service_cv"],
            })
            .to_string(),
        );
        input.push('\n');
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["simulate", "--stdio", "--pool", "shop", "--config"])
        .arg(&m.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let replayed: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["desired"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(replayed, desired, "live and replayed decisions, second by second");
    m.shutdown().await;
}
