//! Start, check and stop: graceful shutdown (in-process and by SIGTERM to
//! the real binary), `tidegate check`, and the demo's child processes.

mod common;

use common::*;
use tidegate::config::Config;
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_tidegate");

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let b = backend("b1").await;
    let mut p = tidegate(&config_text(&[b.addr], "", "")).await;
    let addr = p.addr;
    let slow = tokio::spawn(get(addr, "/products/1?delay=400"));
    eventually("the request is in flight", || async { p.in_flight().await == 1 }).await;
    p.signal_shutdown();
    let a = slow.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight request finished normally");
    p.join().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_that_outlast_the_deadline() {
    let b = backend("b1").await;
    let mut p = tidegate(&config_text(&[b.addr], "[runtime]\nshutdown_timeout = \"200ms\"\n", "")).await;
    let _stuck = tokio::spawn(get(p.addr, "/?delay=20000"));
    eventually("the request is in flight", || async { p.in_flight().await == 1 }).await;
    let started = tokio::time::Instant::now();
    p.signal_shutdown();
    p.join().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped at the deadline"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut g = gate().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, config_text(&[g.addr], "", "")).unwrap();
    let (mut child, addr, _) =
        spawn_tidegate(&[std::ffi::OsStr::new("run"), "--config".as_ref(), path.as_os_str()]).await;
    let in_flight = tokio::spawn(get(addr, "/products/2"));
    tokio::time::timeout(BOUND, g.arrived.recv()).await.unwrap().unwrap();
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    // Once the listener has closed, the in-flight request is answered.
    until_refused(addr).await;
    g.release.notify_one();
    let a = in_flight.await.unwrap();
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "gated"));
    let status = tokio::time::timeout(BOUND, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_with_a_shutdown_delay_fails_readiness_first_and_keeps_serving() {
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let delay = std::time::Duration::from_secs(2);
    let top = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_delay = \"2s\"\n";
    std::fs::write(&path, config_text(&[b.addr], top, "")).unwrap();
    let (mut child, addr, admin) =
        spawn_tidegate(&[std::ffi::OsStr::new("run"), "--config".as_ref(), path.as_os_str()]).await;
    let admin = admin.expect("the admin address is logged");
    // The address is logged before serving starts: wait for readiness.
    eventually("/readyz passes", || async { get(admin, "/readyz").await.status == 200 }).await;
    let sent = tokio::time::Instant::now();
    signal(&child, "-TERM").await;
    eventually("/readyz fails", || async { get(admin, "/readyz").await.status == 503 }).await;
    // Not ready, yet still accepting and serving new connections.
    for i in 0..5 {
        let a = get(addr, format!("/products/{i}")).await;
        assert_eq!((a.status.as_u16(), a.backend().as_str()), (200, "b1"));
    }
    assert!(child.try_wait().unwrap().is_none(), "still running during the delay");
    let status = tokio::time::timeout(BOUND, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() >= delay,
        "exited only after the delay ({:?})",
        sent.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

async fn until_refused(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the listener never closed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn check_accepts_the_shipped_configs_and_names_file_line_col_key_for_a_bad_one() {
    for file in ["conf/tidegate.toml", "conf/demo.toml"] {
        let out = Command::new(EXE)
            .args(["check", "--config", file])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok: "), "{file}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[pools.shop]\nbalance = \"fastest\"\nbackends = []\n").unwrap();
    let out = Command::new(EXE)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:6:11: pools.shop.balance: unknown variant `fastest`", path.display());
    assert!(err.contains(&expected), "{err}");
}

#[tokio::test]
async fn probe_passes_on_2xx_and_fails_otherwise() {
    let b = backend("b1").await;
    let dead = dead_addr().await;
    for (url, ok) in [
        (format!("http://{}/healthz", b.addr), true),
        (format!("http://{}/status/503", b.addr), false),
        (format!("http://{dead}/healthz"), false),
        ("ftp://example/".to_string(), false),
    ] {
        let (passed, _, err) = tidegate_cli(&["probe".as_ref(), url.as_ref()], &[]).await;
        assert_eq!(passed, ok, "{url}: {err}");
        if !ok {
            assert!(err.starts_with("tidegate: "), "one clear line: {err}");
        }
    }
}

/// The configs shipped under `docker/` are valid (`check` resolves names, so
/// the compose and Kubernetes backends are replaced by a loopback address).
#[tokio::test]
async fn the_container_configs_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let compose = std::fs::read_to_string("docker/compose/tidegate.toml")
        .unwrap()
        .replace("backend-1:8080", "127.0.0.1:8081")
        .replace("backend-2:8080", "127.0.0.1:8082")
        .replace("backend-3:8080", "127.0.0.1:8083");
    let manifest = std::fs::read_to_string("docker/kubernetes/configmap.yaml").unwrap();
    let embedded: String = manifest
        .split_once("tidegate.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let image = std::fs::read_to_string("docker/tidegate.toml").unwrap();
    for (name, text) in [("image", image), ("compose", compose), ("kubernetes", embedded)] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let args = ["check".as_ref(), "--config".as_ref(), path.as_os_str()];
        let (ok, out, err) = tidegate_cli(&args, &[("TIDEGATE_ADMIN_TOKEN", "t")]).await;
        assert!(ok && out.contains(": ok: "), "{name}: {err}");
    }
}

#[tokio::test]
async fn demo_backends_run_as_child_processes_and_are_gone_after_stop() {
    let (a1, a2) = (free_addr().await, free_addr().await);
    let config = Config::parse(&config_text(&[a1, a2], "", ""), "t.toml", std::path::Path::new(".")).unwrap();
    let children = tidegate::demo::Children::start(&config, std::path::Path::new(EXE))
        .await
        .unwrap();
    let pids = children.pids();
    assert_eq!(pids.len(), 2);
    for addr in [a1, a2] {
        let a = get(addr, "/healthz").await;
        assert_eq!(a.text(), "ok\n");
    }
    children.stop().await;
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} still exists"
        );
    }
}

#[test]
fn the_embedded_demo_config_is_valid() {
    let demo = Config::demo();
    let shop = &demo.pools["shop"];
    assert!(shop.backends.is_empty());
    assert!(shop.autoscale.is_some(), "the demo's pool is elastic");
}

#[tokio::test]
async fn simulate_compares_the_policies_and_writes_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("step.svg");
    let out = Command::new(EXE)
        .args(["simulate", "--scenario", "step", "--delay", "30s", "--json", "--svg"])
        .arg(&svg)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["tidegate", "kpa", "hpa", "static", "oracle"]);
    let tidegate = &rows[0];
    assert!(tidegate["time_to_capacity_s"].as_u64().unwrap() <= 34, "{tidegate}");
    assert!(tidegate["cost_vs_oracle"].as_f64().unwrap() < rows[1]["cost_vs_oracle"].as_f64().unwrap());
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let bad = Command::new(EXE)
        .args(["simulate", "--scenario", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scenario `nope`"));
}

#[tokio::test]
async fn simulate_reports_violations_per_class_for_a_trace_with_a_class_mix() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("classes.csv");
    // An hour of a shop: checkout, browse and bots per minute; a surprise
    // fourfold surge from minute 20 to 30.
    let mut csv = String::from("minute,critical,normal,sheddable\n");
    for m in 0..60 {
        let k = if (20..30).contains(&m) { 4 } else { 1 };
        csv.push_str(&format!("{m},{},{},{}\n", 600 * k, 3000 * k, 6000 * k));
    }
    std::fs::write(&trace, csv).unwrap();
    let run = |json: bool| {
        let mut cmd = Command::new(EXE);
        cmd.args(["simulate", "--delay", "30s", "--trace"]).arg(&trace);
        if json {
            cmd.arg("--json");
        }
        cmd.output()
    };
    let out = run(true).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kpa = rows.iter().find(|r| r["policy"] == "kpa").unwrap();
    let by_class: Vec<f64> = kpa["class_violation_share"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // The surge outruns a 30 s delay: the backlog is sheddable's, checkout
    // goes first.
    assert!(by_class[2] > 0.0, "{kpa}");
    assert!(by_class[0] < by_class[2] / 10.0, "{kpa}");
    let table = run(false).await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("critical / normal / sheddable"), "{table}");
}

/// `tidegate ARGS` with `env`; (success, stdout, stderr).
async fn tidegate_cli(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(EXE);
    cmd.args(args).env_remove("TG_TEST_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_substitutes_the_environment_resolves_hooks_and_dumps_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("provision.sh");
    std::fs::write(&hook, "#!/bin/sh\necho '{\"members\":[]}'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${TG_TEST_TOKEN}\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nbackends = []\nautoscale = { min = 1, max = 3, hook = { kind = \"exec\", command = [\"./provision.sh\"] } }\n";
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    let check = |dump: bool| {
        let mut args = vec![std::ffi::OsStr::new("check"), "--config".as_ref(), path.as_os_str()];
        if dump {
            args.push("--dump".as_ref());
        }
        args
    };
    // With the variable set: valid; the dump shows the resolved hook and
    // hides the token.
    let (ok, out, err) = tidegate_cli(&check(true), &[("TG_TEST_TOKEN", "s3cret-value")]).await;
    assert!(ok, "{err}");
    assert!(out.contains("********") && !out.contains("s3cret-value"), "{out}");
    assert!(
        out.contains(&hook.display().to_string()),
        "the hook resolved relative to the file:\n{out}"
    );
    // Unset: refused, with the place the variable is used.
    let (ok, _, err) = tidegate_cli(&check(false), &[]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}:3:10: admin.token: environment variable `TG_TEST_TOKEN` is not set",
            path.display()
        )),
        "{err}"
    );
    // A hook that is not there, or not executable: refused with its key.
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = tidegate_cli(&check(false), &[("TG_TEST_TOKEN", "x")]).await;
    assert!(!ok);
    assert!(
        err.contains("pools.shop.autoscale.hook.command:") && err.contains("is not an executable file"),
        "{err}"
    );
}

#[tokio::test]
async fn run_needs_a_config_and_a_taken_port_is_named_once_with_its_place() {
    let (ok, _, err) = tidegate_cli(&["run".as_ref()], &[]).await;
    assert!(!ok);
    assert!(err.contains("--config"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"web\"\nlisten = \"{}\"\n\n[pools.shop]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (ok, _, err) = tidegate_cli(&["run".as_ref(), "--config".as_ref(), path.as_os_str()], &[]).await;
    assert!(!ok);
    let expected = format!(
        "{}:3:10: listener[0].listen (listener `web`): cannot bind",
        path.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[tokio::test]
async fn a_backend_says_where_it_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(EXE)
        .args(["backend", "--listen", &port.to_string()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(BOUND, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains(&format!("listening on http://{port}/")), "{line}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_open_file_limit_is_raised_and_a_config_that_cannot_fit_is_warned_about() {
    use tokio::io::AsyncBufReadExt;
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.toml");
    std::fs::write(&path, config_text(&[b.addr], "[limits]\nmax_connections = 10000\n", "")).unwrap();
    // A soft limit of 256 under a hard one of 1024: tidegate raises the soft
    // limit as far as it may, and says 10,000 connections cannot fit.
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -S -n 256 && ulimit -H -n 1024 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_tidegate"))
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = None;
    while let Ok(Some(line)) = tokio::time::timeout(BOUND, lines.next_line()).await.unwrap() {
        if line.contains("serving on") {
            break;
        }
        if line.contains("file descriptors") {
            warned = Some(line);
        }
    }
    let warned = warned.expect("a warning about the open-file limit");
    assert!(warned.contains("1024"), "{warned}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("1024"),
        "the soft limit was raised to the hard one: {open_files}"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn running_out_of_descriptors_does_not_eject_a_healthy_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.toml");
    std::fs::write(
        &path,
        config_text(
            &[b.addr],
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            "passive = { consecutive_failures = 1, ejection = \"60s\", max_ejected_percent = 100 }",
        ),
    )
    .unwrap();
    // 64 descriptors in all: idle clients can take every one left, and the
    // connects to the backend then fail with EMFILE.
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -S -n 64 && ulimit -H -n 64 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_tidegate"))
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut web, mut admin) = (None, None);
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        while web.is_none() || admin.is_none() {
            let line = tokio::time::timeout(BOUND, lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(rest) = line.split("serving on http://").nth(1) {
                web = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
            }
            if let Some(rest) = line.split("/metrics) on http://").nth(1) {
                admin = rest.trim().trim_end_matches('/').parse::<std::net::SocketAddr>().ok();
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }
    let (web, admin) = (web.unwrap(), admin.unwrap());
    // Fill the table with idle client connections (accepts past the limit
    // wait in the kernel's backlog), keeping one that already sent nothing.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(tokio::net::TcpStream::connect(web).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A request on an accepted connection now finds no descriptor for the
    // backend (one failure would eject it, were it blamed). Once that
    // client is answered, its descriptor serves the next connect.
    let mut failed = 0;
    for s in idle.iter_mut().take(6) {
        let _ = s
            .write_all(b"GET /products/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 502") {
            failed += 1;
        }
    }
    assert!(failed >= 1, "a connect failed for want of descriptors");
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Descriptors are back: the backend was never ejected and serves.
    let stats = get(admin, "/stats").await;
    let v: serde_json::Value = serde_json::from_str(&stats.text()).unwrap();
    let backend = &v["pools"][0]["backends"][0];
    assert_eq!(backend["state"], "active", "{backend}");
    assert_eq!(get(web, "/products/1").await.status, 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn simulate_refuses_settings_it_cannot_run_instead_of_spinning() {
    for bad in [["--slots", "0"], ["--service-time", "0s"], ["--slo", "0ms"]] {
        let out = tokio::time::timeout(
            BOUND,
            Command::new(env!("CARGO_BIN_EXE_tidegate"))
                .args(["simulate", "--scenario", "step"])
                .args(bad)
                .output(),
        )
        .await
        .expect("an answer, not a loop")
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn simulate_refuses_a_corpus_family_it_does_not_have() {
    let out = tokio::time::timeout(
        BOUND,
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["simulate", "--corpus", "train", "--families", "no-such-family"])
            .output(),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--families: no corpus family of that name"), "{err}");
}
