//! HTTP/2 (h2c and over TLS), TLS with SNI and ALPN, h2c upstreams, and
//! protocol upgrades, and idle HTTP/1.1 connections parked, through a real
//! proxy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn h2c_with_prior_knowledge_multiplexes_requests() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let s = h2(p.addr).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut s = s.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("http://shop.test/products/{i}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            collect(s.send_request(req).await.unwrap()).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        assert!(a.text().contains(&format!("\"id\":\"{i}\"")));
    }
    let mut s2 = s.clone();
    let req = http::Request::builder()
        .uri("http://shop.test/headers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let seen = collect(s2.send_request(req).await.unwrap()).await.text();
    assert!(
        seen.contains("host: shop.test\n"),
        "HTTP/2 :authority becomes Host upstream:\n{seen}"
    );
    assert!(seen.contains("via: 2 tidegate\n"), "{seen}");
    p.shutdown().await;
}

/// The streams of one HTTP/2 connection run on its task (not a task each):
/// a stream waiting for its backend holds up neither the next stream nor
/// its cancellation, and a stream in flight at shutdown is finished.
#[tokio::test]
async fn the_streams_of_one_h2_connection_wait_cancel_and_finish_independently() {
    let mut g = gate().await;
    let mut p = tidegate(&config_text(&[g.addr], "", "")).await;
    let s = h2(p.addr).await;
    let send = |path: &'static str| {
        let mut s = s.clone();
        tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("http://shop.test{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            collect(s.send_request(req).await.unwrap()).await
        })
    };
    let first = send("/first");
    g.arrived.recv().await.unwrap();
    let second = send("/second");
    g.arrived.recv().await.unwrap();
    assert_eq!(p.in_flight().await, 2, "both streams reached the backend");
    // The client gives up on the first: RST_STREAM ends that stream alone
    // and its backend slot is freed while the second still waits.
    first.abort();
    eventually("the cancelled stream's slot is freed", || async {
        p.in_flight().await == 1
    })
    .await;
    let third = send("/third");
    g.arrived.recv().await.unwrap();
    p.signal_shutdown();
    // Released until both are answered: a handler that has not started
    // waiting yet misses one release.
    let answers = async { (second.await.unwrap(), third.await.unwrap()) };
    tokio::pin!(answers);
    let (second, third) = loop {
        g.release.notify_waiters();
        tokio::select! {
            both = &mut answers => break both,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    for answer in [second, third] {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "gated");
    }
    p.join().await;
}

/// An HTTP/2 upload the client cancels (RST_STREAM CANCEL, as a browser
/// or curl sends when it gives up) is an aborted exchange: the backend,
/// fed a chunked body, never sees its last chunk, so it never takes the
/// part it got for the whole request.
#[tokio::test]
async fn an_h2_upload_the_client_cancels_never_reaches_the_backend_as_complete() {
    // A backend that only records what it is sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = tx.send(buf[..n].to_vec());
                }
            });
        }
    });
    let p = tidegate(&config_text(&[addr], "", "")).await;
    let (mut client, conn) = h2::client::handshake(TcpStream::connect(p.addr).await.unwrap())
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://shop.test/cart").body(()).unwrap();
    let (_answer, mut upload) = client.send_request(req, false).unwrap();
    upload
        .send_data(bytes::Bytes::from_static(b"first-part"), false)
        .unwrap();
    let mut seen = Vec::new();
    while !seen.windows(10).any(|w| w == b"first-part") {
        let more = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        seen.extend(more.expect("the first part reaches the backend").unwrap());
    }
    upload.send_reset(h2::Reason::CANCEL);
    eventually("the cancelled exchange is over", || async { p.in_flight().await == 0 }).await;
    while let Ok(more) = rx.try_recv() {
        seen.extend(more);
    }
    let sent = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(sent.contains("transfer-encoding: chunked"), "{sent}");
    assert!(
        !sent.contains("\r\n0\r\n\r\n"),
        "the backend got the cancelled upload as whole:\n{sent}"
    );
    p.shutdown().await;
}

/// The kernel's timer on the proxy's end of the connection from `client`
/// to `proxy`, from /proc/net/tcp (`tr`: 0 none, 1 retransmit, 2
/// keepalive, 3 TIME_WAIT, 4 zero-window probe).
fn proxy_side_timer(proxy: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (port(f[1]) == proxy.port() && port(f[2]) == client.port())
            .then(|| u8::from_str_radix(f[5].split(':').next().unwrap(), 16).unwrap())
    })
}

/// An HTTP/2 client that vanishes without closing is found by TCP
/// keepalive probes (an HTTP/2 connection has no idle timeout); an
/// HTTP/1.1 one is left to its header-read timeout.
#[tokio::test]
async fn an_h2_client_connection_is_probed_when_idle_an_http11_one_is_not() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let h2_client = stream.local_addr().unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let h1_client = stream.local_addr().unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        http::Request::builder()
            .uri("http://shop.test/products/1")
            .header("host", "shop.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(collect(h2.send_request(get()).await.unwrap()).await.status, 200);
    assert_eq!(collect(h1.send_request(get()).await.unwrap()).await.status, 200);
    // Idle now: the keepalive timer runs on the HTTP/2 connection only.
    eventually("the idle h2 connection's keepalive timer runs", || async {
        proxy_side_timer(p.addr, h2_client) == Some(2)
    })
    .await;
    assert_eq!(proxy_side_timer(p.addr, h1_client), Some(0));
    p.shutdown().await;
}

#[tokio::test]
async fn an_h2c_upstream_pool_speaks_http2_to_its_backends() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "upstream = \"h2c\"")).await;
    for _ in 0..3 {
        let a = get(p.addr, "/headers").await;
        assert_eq!(a.status, 200);
        assert!(
            a.text().starts_with("GET http://shop.test/headers HTTP/2.0\n"),
            "{}",
            a.text()
        );
        // The forwarding fields, added to the h2 request's header map.
        for field in [
            "x-forwarded-for: 127.0.0.1\n",
            "x-forwarded-proto: http\n",
            "via: 1.1 tidegate\n",
        ] {
            assert!(a.text().contains(field), "{field} missing:\n{}", a.text());
        }
    }
    p.shutdown().await;
}

/// A WebSocket upgrade request (the test backends answer it with 101 and echo).
const WEBSOCKET_UPGRADE: &[u8] = b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn an_upgrade_is_tunnelled_both_ways_and_holds_its_slot_until_closed() {
    let b = backend("b1").await;
    let p = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(WEBSOCKET_UPGRADE).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(BOUND, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert_eq!(p.in_flight().await, 1, "the tunnel holds a slot");
    // A masked WebSocket text frame "hi", and a second message, echoed byte for byte.
    for frame in [&b"\x81\x82\x01\x02\x03\x04\x69\x6b"[..], b"and more bytes"] {
        s.write_all(frame).await.unwrap();
        let mut back = vec![0u8; frame.len()];
        tokio::time::timeout(BOUND, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
    drop(s);
    eventually("the tunnel's slot is released", || async { p.in_flight().await == 0 }).await;
    p.shutdown().await;
}

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A CA and two leaf certificates (shop.example, admin.example) signed by
/// it, written as PEM files.
fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    for name in ["shop.example", "admin.example"] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    Pki {
        ca: ca.der().clone(),
        dir,
        ca_cert: ca,
        ca_key,
    }
}

async fn tls_connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_serves_h2_and_http11_by_alpn() {
    let pki = pki();
    let b = backend("b1").await;
    let d = pki.dir.path().display();
    let listener_tls = format!(
        "tls = {{ certificates = [ {{ cert = \"{d}/shop.example.pem\", key = \"{d}/shop.example.key\" }}, \
{{ cert = \"{d}/admin.example.pem\", key = \"{d}/admin.example.key\" }} ] }}"
    );
    let text = config_text(&[b.addr], "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{listener_tls}"),
    );
    let p = tidegate(&text).await;

    // SNI admin.example gets the second certificate (the handshake verifies
    // the name against the CA), and ALPN h2 gives HTTP/2.
    let tls = tls_connect(&pki, p.addr, "admin.example", b"h2")
        .await
        .expect("admin.example handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2_client = tls.get_ref().0.local_addr().unwrap();
    let (mut s, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://admin.example/headers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let seen = collect(s.send_request(req).await.unwrap()).await.text();
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    // Idle, the HTTP/2 connection is watched by TCP keepalive probes.
    eventually("the idle h2 connection's keepalive timer runs", || async {
        proxy_side_timer(p.addr, h2_client) == Some(2)
    })
    .await;

    // SNI shop.example with ALPN http/1.1.
    let tls = tls_connect(&pki, p.addr, "shop.example", b"http/1.1")
        .await
        .expect("shop.example handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let a = collect(s.send_request(request("GET", "/products/5", "")).await.unwrap()).await;
    assert_eq!(a.status, 200);

    // A name no certificate covers falls back to the first, which the
    // client then rejects: proof the fallback is not a wildcard.
    assert!(tls_connect(&pki, p.addr, "other.example", b"h2").await.is_err());
    p.shutdown().await;
}

#[tokio::test]
async fn a_listener_with_a_missing_certificate_is_refused_with_its_position() {
    let text = config_text(&[dead_addr().await], "", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntls = { certificates = [ { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" } ] }",
    );
    let err = tidegate::config::Config::parse(&text, "t.toml", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml:5:35: listener[0].tls.certificates[0].cert: /nonexistent/c.pem"),
        "{err}"
    );
    assert!(
        err.contains("listener[0].tls.certificates[0].key: /nonexistent/k.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_picks_up_a_renewed_certificate_without_rebinding() {
    let pki = pki();
    let b = backend("b1").await;
    let d = pki.dir.path().display();
    let text = config_text(&[b.addr], "[admin]\nlisten = \"127.0.0.1:0\"\n", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[pools",
        &format!("listen = \"127.0.0.1:0\"\ntls = {{ certificates = [ {{ cert = \"{d}/shop.example.pem\", key = \"{d}/shop.example.key\" }} ] }}\n\n[pools"),
    );
    let m = tidegate(&text).await;
    let peer_cert =
        |tls: &tokio_rustls::client::TlsStream<TcpStream>| tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let before = peer_cert(&tls_connect(&pki, m.addr, "shop.example", b"http/1.1").await.unwrap());
    // Renew: a new key and certificate for the same name, from the same CA.
    let renewed = self::renew(&pki, "shop.example");
    assert_ne!(renewed, before);
    assert_eq!(m.reload().await.status, 200);
    let after = peer_cert(&tls_connect(&pki, m.addr, "shop.example", b"http/1.1").await.unwrap());
    assert_eq!(after, renewed, "new handshakes get the renewed certificate");
    m.shutdown().await;
}

/// Rewrites `name`'s certificate and key with a fresh pair signed by the
/// same CA (a renewal, as an ACME client would do).
fn renew(pki: &Pki, name: &str) -> CertificateDer<'static> {
    use rcgen::{CertificateParams, KeyPair};
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &pki.ca_cert, &pki.ca_key)
        .unwrap();
    std::fs::write(pki.dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(pki.dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// One backend behind a listener serving `shop.example` over TLS.
fn shop_over_tls(pki: &Pki, backend: std::net::SocketAddr) -> String {
    let d = pki.dir.path().display();
    with_listener(
        &config_text(&[backend], "", ""),
        &format!(
            "tls = {{ certificates = [ {{ cert = \"{d}/shop.example.pem\", key = \"{d}/shop.example.key\" }} ] }}"
        ),
    )
}

/// `config_text` with `extra` added to the listener table.
fn with_listener(text: &str, extra: &str) -> String {
    text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    )
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_from_the_header() {
    let b = backend("b1").await;
    let p = tidegate(&with_listener(&config_text(&[b.addr], "", ""), "proxy_protocol = true")).await;
    let get = b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    // Version 1.
    let v1 = [&b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\n"[..], get].concat();
    let seen = String::from_utf8(raw(p.addr, &v1).await).unwrap();
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 198.51.100.7\n"), "{seen}");
    // Version 2, TCP over IPv6.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&[0x15, 0xb3, 0x00, 0x50]);
    v2.extend_from_slice(get);
    let seen = String::from_utf8(raw(p.addr, &v2).await).unwrap();
    assert!(seen.contains("x-forwarded-for: 2001:db8::7\n"), "{seen}");
    // No header (or a forged one): closed before any backend sees a byte.
    let r = recorder().await;
    let p2 = tidegate(&with_listener(&config_text(&[r.addr], "", ""), "proxy_protocol = true")).await;
    assert!(raw(p2.addr, get).await.is_empty());
    assert!(raw(p2.addr, b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .is_empty());
    assert!(r.received.lock().unwrap().is_empty());
    p.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test]
async fn plain_http_sent_to_a_tls_port_gets_a_400_that_says_so() {
    let pki = pki();
    let b = backend("b1").await;
    let text = shop_over_tls(&pki, b.addr);
    let p = tidegate(&text).await;
    let answer = String::from_utf8(raw(p.addr, b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n").await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(
        answer.ends_with("a plain HTTP request was sent to a TLS port\n"),
        "{answer}"
    );
    // TLS still works on the port.
    let tls = tls_connect(&pki, p.addr, "shop.example", b"http/1.1")
        .await
        .expect("handshake");
    drop(tls);
    p.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_file_is_loaded_without_being_asked() {
    let pki = pki();
    let b = backend("b1").await;
    let text = shop_over_tls(&pki, b.addr);
    let m = tidegate_watching(&text).await;
    let peer_cert =
        |tls: tokio_rustls::client::TlsStream<TcpStream>| tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let before = peer_cert(tls_connect(&pki, m.addr, "shop.example", b"http/1.1").await.unwrap());
    let renewed = renew(&pki, "shop.example");
    assert_ne!(renewed, before);
    eventually("the watcher reloads the renewed certificate", || async {
        peer_cert(tls_connect(&pki, m.addr, "shop.example", b"http/1.1").await.unwrap()) == renewed
    })
    .await;
    m.shutdown().await;
}

/// An HTTPS backend with `name`'s certificate from `pki`: answers every
/// request with `secure <path>`. Returns its address.
async fn tls_backend(pki: &Pki, name: &str) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let dir = pki.dir.path();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
    https_server(certs, key, |path| format!("secure {path}")).await
}

#[tokio::test]
async fn upstream_tls_verifies_the_backend_and_refuses_one_it_cannot_trust() {
    let pki = pki();
    std::fs::write(pki.dir.path().join("ca.pem"), pki.ca_cert.pem()).unwrap();
    let b = tls_backend(&pki, "shop.example").await;
    let ca = pki.dir.path().join("ca.pem");
    let trusted = format!(
        "upstream_tls = {{ server_name = \"shop.example\", ca = \"{}\" }}\nhealth = {{ path = \"/healthz\", interval = \"1s\" }}",
        ca.display()
    );
    let p = tidegate(&config_text(&[b], "", &trusted)).await;
    let a = get(p.addr, "/products/3").await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "secure /products/3"));
    eventually("the health check passes over TLS", || async {
        p.backend(0).await["health"]["consecutive_passes"].as_u64().unwrap() >= 2
    })
    .await;
    // An upload larger than any socket buffer, written through TLS (whose
    // writes can be accepted before the socket has taken them: the flush
    // they owe must not be forgotten).
    let mut s = h1(p.addr).await;
    let upload = vec![7u8; 16 * 1024 * 1024];
    let resp = s.send_request(request("POST", "/upload", upload)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], format!("received {}", 16 * 1024 * 1024).as_bytes());
    p.shutdown().await;

    // The certificate is for shop.example: another name is refused.
    let wrong_name = format!(
        "upstream_tls = {{ server_name = \"other.example\", ca = \"{}\" }}",
        ca.display()
    );
    let p = tidegate(&config_text(&[b], "", &wrong_name)).await;
    let a = get(p.addr, "/products/3").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-tidegate-error"], "connect_failed");
    p.shutdown().await;

    // A bad CA file is a config error with its position.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, config_text(&[b], "", "upstream_tls = { ca = \"missing.pem\" }")).unwrap();
    let err = tidegate::config::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("pools.shop.upstream_tls.ca: cannot read"), "{err}");
}

/// `tidegate_client_connections_parked` now.
async fn parked(t: &Tidegate) -> u64 {
    let metrics = t.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_client_connections_parked "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_requests() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = h1(t.addr).await;
    let first = collect(s.send_request(request("GET", "/products/1", "")).await.unwrap()).await;
    assert_eq!(first.status, 200);
    eventually("the idle connection is parked", || async { parked(&t).await == 1 }).await;
    // The same connection (a hyper client's sender is bound to one).
    let second = collect(s.send_request(request("GET", "/products/2", "")).await.unwrap()).await;
    assert_eq!(second.status, 200);
    assert_eq!(parked(&t).await, 0, "woken by its next request");
    eventually("parked again", || async { parked(&t).await == 1 }).await;

    // A parked connection takes pipelined requests whole.
    let (mut raw, answer) = status_line(t.addr, b"GET /products/3 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(&answer, b"HTTP/1.1 200");
    eventually("both connections parked", || async { parked(&t).await == 2 }).await;
    raw.write_all(
        b"GET /products/4 HTTP/1.1\r\nHost: a\r\n\r\nGET /products/5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let rest = until_closed(&mut raw).await;
    let text = String::from_utf8_lossy(&rest);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    t.shutdown().await;
}

#[tokio::test]
async fn a_connection_waiting_for_a_slow_answer_is_not_parked() {
    // The backend takes 2.5 s, longer than a connection rests before it is
    // parked; hyper reads the socket meanwhile (for a client that leaves).
    let b = backend_with("slow", Duration::from_millis(2500), 4).await;
    let t = tidegate(&config_text(&[b.addr], "", "")).await;
    let mut s = h1(t.addr).await;
    let answer = tokio::time::timeout(BOUND, s.send_request(request("GET", "/products/1", "")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(collect(answer).await.status, 200);
    // Its rest starts when the answer has gone, not when the request came.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parked(&t).await, 0, "parked right after a slow answer");
    eventually("parked after its rest", || async { parked(&t).await == 1 }).await;
    t.shutdown().await;
}

#[tokio::test]
async fn blank_lines_do_not_keep_a_connection_past_the_header_timeout() {
    // Blank lines before a request line are allowed, but are no request: a
    // client sending one now and then is closed at the header-read timeout
    // like any client that sends no request.
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "[limits]\nheader_read_timeout = \"3s\"\n", "")).await;
    let (s, _) = status_line(t.addr, b"GET /products/1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (mut read, mut write) = s.into_split();
    let started = tokio::time::Instant::now();
    let closed = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = read.read_to_end(&mut rest).await;
        started.elapsed()
    });
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        if closed.is_finished() || write.write_all(b"\r\n").await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(BOUND, closed).await.unwrap().unwrap();
    // Parked after 1-2 s of rest, woken by the first blank line at 2.5 s,
    // closed by the header-read timeout 3 s later.
    assert!(closed < Duration::from_secs(9), "open for {closed:?}");
    t.shutdown().await;
}

#[tokio::test]
async fn an_open_tunnel_does_not_hold_up_shutdown() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(&[b.addr], "[runtime]\nshutdown_timeout = \"20s\"\n", "")).await;
    let (s, answer) = status_line(t.addr, WEBSOCKET_UPGRADE).await;
    assert_eq!(&answer, b"HTTP/1.1 101");
    eventually("the tunnel is open", || async { t.in_flight().await == 1 }).await;
    let stopping = tokio::time::Instant::now();
    t.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "{:?}", stopping.elapsed());
    drop(s);
}

#[tokio::test]
async fn a_parked_connection_closes_at_the_header_timeout_and_at_shutdown() {
    let b = backend("b1").await;
    let t = tidegate(&config_text(
        &[b.addr],
        "[limits]\nheader_read_timeout = \"1500ms\"\n",
        "",
    ))
    .await;
    let request = b"GET /products/1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let (mut idle, _) = status_line(t.addr, request).await;
    let answered = tokio::time::Instant::now();
    eventually("parked", || async { parked(&t).await == 1 }).await;
    until_closed(&mut idle).await;
    let closed = answered.elapsed();
    assert!(closed >= Duration::from_millis(1400), "closed after {closed:?}");
    assert_eq!(parked(&t).await, 0);

    // At shutdown a parked connection closes at once; tidegate does not
    // wait for it.
    let (mut idle, _) = status_line(t.addr, request).await;
    eventually("parked", || async { parked(&t).await == 1 }).await;
    let stopping = tokio::time::Instant::now();
    t.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "{:?}", stopping.elapsed());
    until_closed(&mut idle).await;
}
