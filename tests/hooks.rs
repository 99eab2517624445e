//! Provisioning hooks with real child processes and a real HTTP server: a
//! hook that answers, hangs, crashes or prints garbage is reported as such,
//! never left running, and never trusted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tidegate::autoscale::hook::{call_exec, call_webhook, HookError, HookRequest, LocalProvisioner};

fn request(desired: u32, remove: &[&str]) -> HookRequest {
    HookRequest {
        version: 1,
        pool: "shop".into(),
        seq: 7,
        epoch: None,
        desired,
        current: 1,
        ready: 1,
        members: vec!["127.0.0.1:9001".into()],
        remove: remove.iter().map(|s| s.to_string()).collect(),
        reason: "test".into(),
    }
}

/// An exec hook's command line: one script.
fn command(dir: &tempfile::TempDir, name: &str, body: &str) -> Vec<String> {
    vec![script(dir, name, body)]
}

#[tokio::test]
async fn an_exec_hook_gets_the_request_on_stdin_and_answers_members() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("request.json");
    let hook = command(
        &dir,
        "provision.sh",
        &format!(
            r#"req=$(cat); echo "$req" > {}
desired=$(echo "$req" | sed -E 's/.*"desired":([0-9]+).*/\1/')
m=""; for i in $(seq 1 "$desired"); do m="$m\"127.0.0.1:$((9000 + i))\","; done
echo "{{\"members\":[${{m%,}}]}}""#,
            seen.display()
        ),
    );
    let a = call_exec(&hook, &[], &request(3, &[]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        a.members.iter().map(|m| m.port()).collect::<Vec<_>>(),
        vec![9001, 9002, 9003]
    );
    let req: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(
        (req["version"].as_u64(), req["pool"].as_str(), req["seq"].as_u64()),
        (Some(1), Some("shop"), Some(7))
    );
    // Declarative: the same request again gives the same answer.
    assert_eq!(
        call_exec(&hook, &[], &request(3, &[]), Duration::from_secs(5))
            .await
            .unwrap(),
        a
    );
}

#[tokio::test]
async fn a_hanging_exec_hook_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let hook = command(
        &dir,
        "hang.sh",
        &format!("echo $$ > {}\nexec sleep 30", pid_file.display()),
    );
    let started = tokio::time::Instant::now();
    let e = call_exec(&hook, &[], &request(2, &[]), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    eventually("the hung hook is gone", || async {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
}

/// Whether process `pid` is still alive.
fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_hook_that_leaves_a_job_running_is_answered_when_it_exits() {
    // The job inherits stdout, so stdout never reaches EOF while it runs:
    // the answer is what the command wrote by the time it exited.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("job");
    let hook = command(
        &dir,
        "starts-a-job.sh",
        &format!(
            r#"cat > /dev/null; sleep 30 & echo $! > {}
echo '{{"members":["127.0.0.1:9001"]}}'"#,
            pid_file.display()
        ),
    );
    let a = call_exec(&hook, &[], &request(1, &[]), Duration::from_secs(5)).await;
    let job = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    assert_eq!(a.unwrap().members.len(), 1);
    // A hook that exited cleanly may start what it likes: it keeps running.
    assert!(alive(&job));
    std::process::Command::new("kill").arg(&job).status().unwrap();
}

#[tokio::test]
async fn a_timed_out_hook_is_killed_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("job");
    let hook = command(
        &dir,
        "hangs-with-a-job.sh",
        &format!("sleep 30 & echo $! > {}\nexec sleep 30", pid_file.display()),
    );
    let e = call_exec(&hook, &[], &request(2, &[]), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Timeout(_)), "{e}");
    let job = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    eventually("the job the hook started is gone too", || async { !alive(&job) }).await;
}

#[tokio::test]
async fn a_hook_gets_only_the_allowed_environment() {
    // Cargo sets CARGO_MANIFEST_DIR for this test process; tidegate's
    // environment is not the hook's unless listed.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("env");
    let hook = command(
        &dir,
        "env.sh",
        &format!(r#"cat > /dev/null; env > {}; echo '{{"members":[]}}'"#, seen.display()),
    );
    call_exec(&hook, &[], &request(0, &[]), Duration::from_secs(5))
        .await
        .unwrap();
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(!env.contains("CARGO_MANIFEST_DIR="), "{env}");
    let listed = ["CARGO_MANIFEST_DIR".to_string()];
    call_exec(&hook, &listed, &request(0, &[]), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(std::fs::read_to_string(&seen).unwrap().contains("CARGO_MANIFEST_DIR="));
}

#[tokio::test]
async fn a_crashing_or_babbling_exec_hook_is_a_failure_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let crash = command(&dir, "crash.sh", "cat > /dev/null; echo boom >&2; exit 3");
    let e = call_exec(&crash, &[], &request(2, &[]), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("exit status: 3") && e.to_string().contains("boom"),
        "{e}"
    );
    assert_eq!(e.label(), "failed");
    let garbage = command(&dir, "garbage.sh", "cat > /dev/null; echo hello world");
    let e = call_exec(&garbage, &[], &request(2, &[]), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "invalid", "{e}");
    let bad_addr = command(
        &dir,
        "bad.sh",
        r#"cat > /dev/null; echo '{"members":["not-an-address"]}'"#,
    );
    let e = call_exec(&bad_addr, &[], &request(2, &[]), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not-an-address"), "{e}");
    let missing = vec!["/nonexistent/provision.sh".to_string()];
    assert!(matches!(
        call_exec(&missing, &[], &request(2, &[]), Duration::from_secs(5)).await,
        Err(HookError::Spawn { .. })
    ));
}

/// A webhook server answering with `status` and `body` (or never, when
/// `hang`), recording request bodies.
async fn webhook(
    status: u16,
    body: &'static str,
    hang: bool,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        record
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&bytes).into_owned());
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let mut r =
                            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_webhook_gets_the_request_as_a_post_and_its_failures_are_reported() {
    let (addr, seen) = webhook(200, r#"{"members":["127.0.0.1:9101","127.0.0.1:9102"]}"#, false).await;
    let url: http::Uri = format!("http://{addr}/provision").parse().unwrap();
    let a = call_webhook(&url, &request(2, &[]), Duration::from_secs(5), None)
        .await
        .unwrap();
    assert_eq!(a.members.len(), 2);
    assert!(seen.lock().unwrap()[0].contains("\"desired\":2"));

    let (addr, _) = webhook(503, "busy", false).await;
    let url: http::Uri = format!("http://{addr}/").parse().unwrap();
    let e = call_webhook(&url, &request(2, &[]), Duration::from_secs(5), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Status { status: 503, .. }), "{e}");

    let (addr, _) = webhook(200, "<html>", false).await;
    let url: http::Uri = format!("http://{addr}/").parse().unwrap();
    assert_eq!(
        call_webhook(&url, &request(2, &[]), Duration::from_secs(5), None)
            .await
            .unwrap_err()
            .label(),
        "invalid"
    );

    let (addr, _) = webhook(200, "{}", true).await;
    let url: http::Uri = format!("http://{addr}/").parse().unwrap();
    let e = call_webhook(&url, &request(2, &[]), Duration::from_millis(300), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Timeout(_)), "{e}");

    let url: http::Uri = format!("http://{}/", dead_addr().await).parse().unwrap();
    assert!(matches!(
        call_webhook(&url, &request(2, &[]), Duration::from_secs(5), None).await,
        Err(HookError::Http(_))
    ));
}

#[tokio::test]
async fn the_local_provisioner_starts_and_stops_real_backends() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tidegate"));
    let mut local = LocalProvisioner::new(exe, Duration::from_millis(1), 4);
    let a = local.call(&request(3, &[])).await.unwrap();
    assert_eq!(a.members.len(), 3);
    for m in &a.members {
        let addr = *m;
        eventually("the backend answers", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert_eq!(get(addr, "/healthz").await.text(), "ok\n");
    }
    let first_pids = local.pids();
    // Idempotent.
    assert_eq!(local.call(&request(3, &[])).await.unwrap(), a);
    // Remove a drained member and go down to one.
    let gone = a.members[0].to_string();
    let b = local.call(&request(1, &[gone.as_str()])).await.unwrap();
    assert_eq!(b.members.len(), 1);
    assert!(!b.members.contains(&a.members[0]));
    drop(local);
    for pid in first_pids {
        eventually("every child is gone", || async {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await;
    }
}

#[tokio::test]
async fn an_https_webhook_is_verified_and_an_ipv6_url_is_reached() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use rustls::pki_types::pem::PemObject;
    // A CA and a leaf for 127.0.0.1 signed by it.
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let addr = https_server(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
        |_| r#"{"members":["127.0.0.1:9101"]}"#.to_string(),
    )
    .await;
    let url: http::Uri = format!("https://{addr}/provision").parse().unwrap();
    let a = call_webhook(&url, &request(1, &[]), Duration::from_secs(5), Some(&ca_path))
        .await
        .unwrap();
    assert_eq!(a.members, vec!["127.0.0.1:9101".parse().unwrap()]);
    // Without the CA the certificate is not trusted.
    let e = call_webhook(&url, &request(1, &[]), Duration::from_secs(5), None)
        .await
        .unwrap_err();
    assert!(matches!(&e, HookError::Http(m) if m.contains("TLS")), "{e}");

    // A webhook on an IPv6 literal: a raw server on [::1] that answers.
    let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await else {
        return; // no IPv6 loopback on this machine
    };
    let port = v6.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok((mut s, _)) = v6.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = r#"{"members":["[::1]:9102"]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
        }
    });
    let url: http::Uri = format!("http://[::1]:{port}/").parse().unwrap();
    let a = call_webhook(&url, &request(1, &[]), Duration::from_secs(5), None)
        .await
        .unwrap();
    assert_eq!(a.members, vec!["[::1]:9102".parse().unwrap()]);
}
