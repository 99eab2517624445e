//! systemd's notify protocol, spoken by the real binary to a real
//! `UnixDatagram` socket the test binds and names in `$NOTIFY_SOCKET` (a
//! path, and an abstract `@name`), as systemd does for `Type=notify`.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use common::*;

/// The next datagram tidegate sent, as text.
async fn next(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, socket.recv(&mut buf))
        .await
        .expect("a notification in time")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

/// Start, reload (SIGHUP), stop (SIGTERM) with `$NOTIFY_SOCKET` set to
/// `name`; `socket` is bound where it points.
async fn the_lifecycle_is_announced(socket: UnixDatagram, name: &std::ffi::OsStr) {
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::UnixDatagram::from_std(socket).unwrap();
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, config_text(&[b.addr], "", "")).unwrap();
    let args = [
        std::ffi::OsStr::new("run"),
        "--no-watch".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ];
    let (mut child, web, _) = spawn_tidegate_with_env(&args, &[("NOTIFY_SOCKET", name)]).await;

    let ready = next(&socket).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(field(&ready, "STATUS").unwrap().contains("generation 1"), "{ready:?}");
    // READY=1 came after the listener was bound: it serves.
    assert_eq!(get(web, "/").await.status, 200);

    signal(&child, "-HUP").await;
    let reloading = next(&socket).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC").unwrap().parse().unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    assert!(
        usec <= now_usec && now_usec - usec < BOUND.as_micros() as u64,
        "MONOTONIC_USEC {usec} is CLOCK_MONOTONIC (now {now_usec})"
    );
    let reloaded = next(&socket).await;
    assert_eq!(field(&reloaded, "READY"), Some("1"), "{reloaded:?}");
    assert!(
        field(&reloaded, "STATUS").unwrap().contains("generation 2"),
        "{reloaded:?}"
    );

    // A refused reload still ends the reload: READY=1, saying so.
    std::fs::write(&path, "not toml [").unwrap();
    signal(&child, "-HUP").await;
    assert_eq!(field(&next(&socket).await, "RELOADING"), Some("1"));
    let refused = next(&socket).await;
    assert_eq!(field(&refused, "READY"), Some("1"), "{refused:?}");
    assert!(field(&refused, "STATUS").unwrap().contains("refused"), "{refused:?}");

    signal(&child, "-TERM").await;
    let stopping = next(&socket).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let status = tokio::time::timeout(BOUND, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn ready_reloading_and_stopping_reach_a_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    the_lifecycle_is_announced(socket, path.as_os_str()).await;
}

#[tokio::test]
async fn ready_reloading_and_stopping_reach_an_abstract_socket() {
    let name = format!("tidegate-test-{}-{}", std::process::id(), fastrand::u64(..));
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    the_lifecycle_is_announced(socket, format!("@{name}").as_ref()).await;
}
