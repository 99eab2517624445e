//! The one test harness: real sockets on 127.0.0.1 with ephemeral ports.
//! Backends are the real `tidegate backend` server run in-process (or small
//! purpose-built servers below); tidegate is the real library started the
//! way `tidegate run --config FILE` starts it (a file, the admin listener,
//! reloadable); clients are hyper's or raw sockets. Tests observe tidegate
//! through its admin API (`/stats`), never its internals.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tidegate::config::Config;
use tidegate::demo::shop::{self, BackendOptions};
use tidegate::state::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a test: a safety net, never a
/// synchronisation mechanism.
pub(crate) const BOUND: Duration = Duration::from_secs(10);

pub(crate) struct TestBackend {
    pub(crate) addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

pub(crate) async fn backend(name: &str) -> TestBackend {
    backend_with(name, Duration::ZERO, 0).await
}

pub(crate) async fn backend_with(name: &str, service_time: Duration, concurrency: usize) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let opts = BackendOptions {
        name: name.to_string(),
        service_time,
        concurrency,
    };
    tokio::spawn(shop::serve(listener, opts, rx));
    TestBackend { addr, _stop: tx }
}

/// A backend on a given address (say `127.0.0.2:PORT`, for members that
/// share a port, as DNS answers give them).
pub(crate) async fn backend_on(name: &str, addr: SocketAddr) -> std::io::Result<TestBackend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let opts = BackendOptions {
        name: name.to_string(),
        service_time: Duration::ZERO,
        concurrency: 0,
    };
    tokio::spawn(shop::serve(listener, opts, rx));
    Ok(TestBackend { addr, _stop: tx })
}

/// An address free for a child process to bind (bound, then released:
/// another listener may take it meanwhile, so only for a process that
/// binds it at once).
pub(crate) async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// An address nothing listens on (bound, never listening).
pub(crate) async fn dead_addr() -> SocketAddr {
    // Bound but never listening, and kept bound for the life of the test
    // process: a connect is refused, and the port cannot be handed to a
    // listener another test starts meanwhile (a port freed at once could,
    // and the "dead" backend then answered 200).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A running tidegate: its first listener, its admin listener, its config
/// file.
pub(crate) struct Tidegate {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) path: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts tidegate on `text` (written to a file in a temporary folder; an
/// `[admin]` table on an ephemeral loopback port is added when absent).
pub(crate) async fn tidegate(text: &str) -> Tidegate {
    start(text, false).await
}

/// Like [`tidegate`], and reloading when the file changes.
pub(crate) async fn tidegate_watching(text: &str) -> Tidegate {
    start(text, true).await
}

async fn start(text: &str, watch_file: bool) -> Tidegate {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.toml");
    let text = if text.contains("[admin]") {
        text.to_string()
    } else {
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")
    };
    std::fs::write(&path, text).unwrap();
    let mut t = tidegate_at(&path, watch_file).await;
    t._dir = Some(dir);
    t
}

/// Starts tidegate on the config file at `path` (which must have an
/// `[admin]` table).
pub(crate) async fn tidegate_at(path: &std::path::Path, watch_file: bool) -> Tidegate {
    let config = Config::load(path).expect("valid test config");
    let bound = tidegate::server::bind(&config).await.expect("bind");
    let admin = tidegate::server::bind_admin(&config)
        .await
        .unwrap()
        .expect("an [admin] table");
    let (addr, admin_addr) = (bound[0].listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let state = State::new(config);
    let (tx, rx) = oneshot::channel::<()>();
    let opts = tidegate::app::Options {
        config_path: Some(path.to_path_buf()),
        watch_file,
        reload_on_sighup: false,
        tidegate_exe: Some(env!("CARGO_BIN_EXE_tidegate").into()),
    };
    let task = tokio::spawn(tidegate::app::run(state, bound, Some(admin), opts, async {
        let _ = rx.await;
    }));
    Tidegate {
        addr,
        admin: admin_addr,
        path: path.to_path_buf(),
        _dir: None,
        stop: Some(tx),
        task,
    }
}

impl Tidegate {
    /// Replaces the config file the way editors do: write aside, rename.
    pub(crate) fn write_config(&self, text: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// `POST /reload`.
    pub(crate) async fn reload(&self) -> Answer {
        let mut s = h1(self.admin).await;
        let req = http::Request::post("/reload")
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(s.send_request(req).await.unwrap()).await
    }

    /// `GET /stats`, parsed.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let a = get(self.admin, "/stats").await;
        assert_eq!(a.status, 200, "{}", a.text());
        serde_json::from_slice(&a.body).unwrap()
    }

    /// The first pool of `/stats`.
    pub(crate) async fn pool(&self) -> serde_json::Value {
        self.stats().await["pools"][0].clone()
    }

    pub(crate) async fn queue_depth(&self) -> u64 {
        self.pool().await["queue_depth"].as_u64().unwrap()
    }

    /// In flight on the first pool (serving and draining backends).
    pub(crate) async fn in_flight(&self) -> u64 {
        self.pool().await["in_flight"].as_u64().unwrap()
    }

    /// Backend `i` of the first pool, as `/stats` shows it.
    pub(crate) async fn backend(&self, i: usize) -> serde_json::Value {
        self.pool().await["backends"][i].clone()
    }

    /// `active`, `warming`, `draining` or `down`.
    pub(crate) async fn backend_state(&self, i: usize) -> String {
        self.backend(i).await["state"].as_str().unwrap().to_string()
    }

    pub(crate) async fn generation(&self) -> u64 {
        self.stats().await["config"]["generation"].as_u64().unwrap()
    }

    /// `GET /metrics`.
    pub(crate) async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.text()
    }

    /// Signals shutdown (as SIGTERM does) without waiting.
    pub(crate) fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for tidegate to return after a shutdown signal.
    pub(crate) async fn join(self) {
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("stopped in time")
            .unwrap();
    }

    /// Signals shutdown and waits for the drain to finish.
    pub(crate) async fn shutdown(mut self) {
        self.signal_shutdown();
        self.join().await;
    }
}

/// A config with one listener on an ephemeral port and a pool `shop` of
/// `backends`; `pool_extra` is appended to `[pools.shop]`, `top` goes first.
pub(crate) fn config_text(backends: &[SocketAddr], top: &str, pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    format!(
        "{top}\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[pools.shop]\n{pool_extra}\nbackends = [ {} ]\n",
        list.join(", ")
    )
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

pub(crate) async fn collect(resp: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

pub(crate) async fn h1(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

pub(crate) async fn h2(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

pub(crate) fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.test")
        .body(Full::new(body.into()))
        .unwrap()
}

/// One GET on a fresh HTTP/1.1 connection.
pub(crate) async fn get(addr: SocketAddr, path: impl Into<String>) -> Answer {
    let path: String = path.into();
    let mut s = h1(addr).await;
    let resp = tokio::time::timeout(BOUND, s.send_request(request("GET", &path, "")))
        .await
        .unwrap()
        .unwrap();
    collect(resp).await
}

/// Sends raw bytes and reads until the peer closes (or `BOUND` passes).
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut out)).await;
    out
}

/// Reads `s` until the peer closes it, which must happen within `BOUND`.
pub(crate) async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// Connects, sends `bytes`, and reads the answer's status line up to its
/// code (`HTTP/1.1 200`); the socket stays open for what follows.
pub(crate) async fn status_line(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, [u8; 12]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(BOUND, s.read_exact(&mut status))
        .await
        .unwrap()
        .unwrap();
    (s, status)
}

/// A raw TCP backend that records every byte it receives and answers each
/// request head with `200 ok` (used to prove that nothing reached it).
pub(crate) struct Recorder {
    pub(crate) addr: SocketAddr,
    pub(crate) received: Arc<Mutex<Vec<u8>>>,
}

pub(crate) async fn recorder() -> Recorder {
    scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
}

/// A raw TCP backend that records every byte it receives and answers each
/// request head with exactly `answer` (which may be a head and part of a
/// body: the connection then stays open, sending nothing more).
pub(crate) async fn scripted(answer: &'static [u8]) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = Arc::clone(&rec);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = s.write_all(answer).await;
                    }
                }
            });
        }
    });
    Recorder { addr, received }
}

/// A backend that reads one request head, counts it, and closes the
/// connection without answering (a crash mid-exchange).
pub(crate) struct Slammer {
    pub(crate) addr: SocketAddr,
    pub(crate) heads: Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) async fn slammer() -> Slammer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    Slammer { addr, heads }
}

/// A backend that reports each request head's arrival and answers `200`
/// only when the test releases it: for ordering events without sleeps.
pub(crate) struct Gate {
    pub(crate) addr: SocketAddr,
    pub(crate) arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub(crate) release: Arc<tokio::sync::Notify>,
}

pub(crate) async fn gate() -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let rel = Arc::clone(&release);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (tx, rel) = (tx.clone(), Arc::clone(&rel));
            tokio::spawn(async move {
                while read_head(&mut s).await {
                    let _ = tx.send(());
                    rel.notified().await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ngated").await;
                }
            });
        }
    });
    Gate { addr, arrived, release }
}

/// A backend whose `/healthz` answers 200 or 503 as the test decides, and
/// every other path `200` with `x-backend: <name>`.
pub(crate) struct Toggle {
    pub(crate) addr: SocketAddr,
    pub(crate) healthy: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) async fn toggle(name: &'static str) -> Toggle {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let flag = Arc::clone(&flag);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ok = flag.load(Ordering::SeqCst);
                    async move {
                        let status = if req.uri().path() == "/healthz" && !ok {
                            503
                        } else {
                            200
                        };
                        let mut r = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        r.headers_mut()
                            .insert("x-backend", http::HeaderValue::from_static(name));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Toggle { addr, healthy }
}

/// An executable bash script `name` in `dir` running `body`; its path.
pub(crate) fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Polls (bounded) until an async condition holds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads until the end of a request head (bodies are not expected); `false`
/// when the peer closed first.
pub(crate) async fn read_head(s: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Starts the real binary with `args` (e.g. `["run", "--config", path]`)
/// and returns it with the proxy's address and, if it logs one, the admin's.
pub(crate) async fn spawn_tidegate(
    args: &[&std::ffi::OsStr],
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>) {
    spawn_tidegate_with_env(args, &[]).await
}

/// [`spawn_tidegate`] with extra environment variables.
pub(crate) async fn spawn_tidegate_with_env(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Logs go to stderr (without colour: it is not a terminal).
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut web, mut admin) = (None, None);
    let wants_admin = args
        .iter()
        .any(|a| std::fs::read_to_string(a).is_ok_and(|t| t.contains("[admin]")));
    while web.is_none() || (wants_admin && admin.is_none()) {
        let line = tokio::time::timeout(BOUND, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("tidegate exited early");
        if let Some(rest) = line.split("serving on http://").nth(1) {
            web = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.split("/metrics) on http://").nth(1) {
            admin = rest.trim().trim_end_matches('/').parse().ok();
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, web.unwrap(), admin)
}

/// A minimal HTTP/2 client speaking raw frames, for what hyper's client
/// refuses to send.
pub(crate) mod h2raw {
    pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK literal header fields without indexing, no Huffman.
    pub(crate) fn headers(fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        out
    }

    pub(crate) const DATA: u8 = 0;
    pub(crate) const HEADERS: u8 = 1;
    pub(crate) const RST_STREAM: u8 = 3;
    pub(crate) const SETTINGS: u8 = 4;
    pub(crate) const GOAWAY: u8 = 7;
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// Sends frames after the preface and returns the error code of the first
/// RST_STREAM or GOAWAY the proxy answers with, or the status of a response.
pub(crate) async fn h2_exchange(addr: std::net::SocketAddr, frames: &[Vec<u8>]) -> String {
    use h2raw::*;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    for f in frames {
        s.write_all(f).await.unwrap();
    }
    loop {
        let mut head = [0u8; 9];
        if tokio::time::timeout(BOUND, s.read_exact(&mut head)).await.is_err() {
            return "timeout".into();
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        match head[3] {
            RST_STREAM => return format!("RST_STREAM {}", u32::from_be_bytes(payload[..4].try_into().unwrap())),
            GOAWAY => return format!("GOAWAY {}", u32::from_be_bytes(payload[4..8].try_into().unwrap())),
            HEADERS => {
                // A literal ":status" is what a proxy error would look like;
                // hpack-indexed statuses start with 0x88 (200) .. 0x8e (500).
                return format!("HEADERS {:02x}", payload.first().copied().unwrap_or(0));
            }
            _ => {}
        }
    }
}

/// Sends `signal` (`"-HUP"`, `"-TERM"`, ...) to the process `child` with kill(1).
#[allow(dead_code)]
pub(crate) async fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("still running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// SIGTERM, then the exit within `BOUND`, which must be a clean one.
#[allow(dead_code)]
pub(crate) async fn stop_gracefully(child: &mut tokio::process::Child) {
    signal(child, "-TERM").await;
    let status = tokio::time::timeout(BOUND, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

/// An HTTP/1.1-over-TLS server on 127.0.0.1 with `certs` and `key`, answering
/// every request with `answer(path)`, but one to `/upload` with `received
/// <n>`, the count of body bytes it read. Returns its address.
#[allow(dead_code)]
pub(crate) async fn https_server(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    answer: fn(&str) -> String,
) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/upload" {
                        let mut body = req.into_body();
                        let mut n = 0;
                        while let Some(Ok(frame)) = body.frame().await {
                            n += frame.data_ref().map_or(0, Bytes::len);
                        }
                        format!("received {n}")
                    } else {
                        answer(req.uri().path())
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}
