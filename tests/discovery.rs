//! `backends_from = { dns = ... }`: a pool's members follow what a real DNS
//! server on loopback answers, on the wire (UDP), for A records and for SRV
//! records. The server is written here on hickory's message types; the
//! answers change while clients keep sending, and none of them fails.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// What the test server answers; changed by the test while it runs.
#[derive(Default)]
struct Zone {
    /// A records of `shop.test.`.
    shop: Vec<Ipv4Addr>,
    /// SRV records of `_http._tcp.shop.test.`: (target label, port);
    /// every target is `<label>.shop.test.` at 127.0.0.1.
    srv: Vec<(String, u16)>,
    /// Answer SERVFAIL to everything.
    broken: bool,
}

struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Serves on its own thread: the test's runtime is busy sending load,
    /// and a DNS server that waits its turn there answers late enough for
    /// tidegate's resolutions to time out (which keep the old members).
    async fn start() -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, s) = (Arc::clone(&zone), Arc::clone(&queries), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue; // the read timeout: look at `stop` again
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let answer = answer(&query, &z.lock().unwrap());
                let _ = socket.send_to(&answer.to_vec().unwrap(), from);
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            stop,
        }
    }
    fn set(&self, change: impl FnOnce(&mut Zone)) {
        change(&mut self.zone.lock().unwrap());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// The response to `query` from `zone`.
fn answer(query: &Message, zone: &Zone) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let Some(q) = query.queries().first() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    m.add_query(q.clone());
    if zone.broken {
        m.set_response_code(ResponseCode::ServFail);
        return m;
    }
    let asked = q.name().to_ascii().to_ascii_lowercase();
    let a = |owner: &Name, ip: Ipv4Addr| Record::from_rdata(owner.clone(), 1, RData::A(A(ip)));
    match (asked.as_str(), q.query_type()) {
        ("shop.test.", RecordType::A) => {
            for ip in &zone.shop {
                m.add_answer(a(q.name(), *ip));
            }
        }
        ("shop.test.", _) => {}
        ("_http._tcp.shop.test.", RecordType::SRV) => {
            for (label, port) in &zone.srv {
                let target = name(&format!("{label}.shop.test."));
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    1,
                    RData::SRV(SRV::new(0, 10, *port, target.clone())),
                ));
                m.add_additional(a(&target, Ipv4Addr::LOCALHOST));
            }
        }
        (target, RecordType::A) if zone.srv.iter().any(|(l, _)| target == format!("{l}.shop.test.")) => {
            m.add_answer(a(q.name(), Ipv4Addr::LOCALHOST));
        }
        (target, _) if zone.srv.iter().any(|(l, _)| target == format!("{l}.shop.test.")) => {}
        _ => {
            m.set_response_code(ResponseCode::NXDomain);
        }
    }
    m
}

/// Three backends on 127.0.0.1, .2 and .3, all on one port (as the
/// members of a Kubernetes Service are).
async fn three_on_one_port() -> Vec<TestBackend> {
    loop {
        let first = backend_on("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = first.addr.port();
        let at = |last: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port);
        if let (Ok(b2), Ok(b3)) = (backend_on("b2", at(2)).await, backend_on("b3", at(3)).await) {
            return vec![first, b2, b3];
        }
    }
}

/// Sends GETs until `stop`; counts answers that were not 200.
fn steady_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            if get(addr, "/products/1").await.status == 200 {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        (ok, failed)
    })
}

/// The backends `/stats` lists for the pool, as (address, state).
async fn members(t: &Tidegate) -> Vec<(String, String)> {
    let pool = t.pool().await;
    let mut out: Vec<(String, String)> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Which backends answer 30 requests.
async fn served_by(addr: SocketAddr) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let a = get(addr, format!("/products/{i}")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        seen.insert(a.backend());
    }
    seen
}

fn resolutions(metrics: &str, result: &str) -> u64 {
    let prefix = format!("tidegate_discovery_resolutions_total{{pool=\"shop\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_pool_follows_the_a_records_of_its_name_and_keeps_them_through_dns_failures() {
    let backends = three_on_one_port().await;
    let port = backends[0].addr.port();
    let dns = DnsServer::start().await;
    dns.set(|z| z.shop = vec![Ipv4Addr::new(127, 0, 0, 1)]);
    let pool = format!(
        "backends_from = {{ dns = \"shop.test:{port}\", interval = \"1s\", nameserver = \"{}\" }}",
        dns.addr
    );
    let t = tidegate(&config_text(&[], "", &pool)).await;
    let b = |last: u8| format!("127.0.0.{last}:{port}");

    eventually("the first member is active", || async {
        members(&t).await == vec![(b(1), "active".to_string())]
    })
    .await;
    assert_eq!(served_by(t.addr).await, ["b1".to_string()].into());

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(t.addr, Arc::clone(&stop));

    // The Service scales out: two more addresses join, warm up, serve.
    dns.set(|z| z.shop = (1..=3).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect());
    eventually("three active members", || async {
        members(&t).await.iter().filter(|(_, s)| s == "active").count() == 3
    })
    .await;
    assert_eq!(served_by(t.addr).await.len(), 3);

    // And in: the two that vanish drain and leave; the clients see nothing.
    dns.set(|z| z.shop = vec![Ipv4Addr::new(127, 0, 0, 2)]);
    eventually("only the second member is left", || async {
        members(&t).await == vec![(b(2), "active".to_string())]
    })
    .await;
    assert_eq!(served_by(t.addr).await, ["b2".to_string()].into());

    // DNS breaks (SERVFAIL), then the name answers nothing: the pool keeps
    // what it has, and the metric says what happened.
    dns.set(|z| z.broken = true);
    eventually("a failed resolution is counted", || async {
        resolutions(&t.metrics().await, "error") >= 2
    })
    .await;
    dns.set(|z| {
        z.broken = false;
        z.shop.clear();
    });
    eventually("an empty answer is counted", || async {
        resolutions(&t.metrics().await, "empty") >= 2
    })
    .await;
    assert_eq!(members(&t).await, vec![(b(2), "active".to_string())]);
    assert_eq!(served_by(t.addr).await, ["b2".to_string()].into());

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while members changed",
        ok + failed
    );
    assert!(resolutions(&t.metrics().await, "ok") >= 3);
    assert!(dns.queries.load(Ordering::Relaxed) >= 5);
    t.shutdown().await;
}

#[tokio::test]
async fn srv_records_bring_each_member_with_its_own_port() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let dns = DnsServer::start().await;
    dns.set(|z| z.srv = vec![("one".into(), b1.addr.port())]);
    let pool = format!(
        "backends_from = {{ dns = \"_http._tcp.shop.test\", interval = \"1s\", nameserver = \"{}\" }}",
        dns.addr
    );
    let t = tidegate(&config_text(&[], "", &pool)).await;
    eventually("the first target is active", || async {
        members(&t).await == vec![(b1.addr.to_string(), "active".to_string())]
    })
    .await;

    dns.set(|z| z.srv.push(("two".into(), b2.addr.port())));
    eventually("both targets are active", || async {
        members(&t).await.iter().filter(|(_, s)| s == "active").count() == 2
    })
    .await;
    assert_eq!(served_by(t.addr).await, ["b1".to_string(), "b2".to_string()].into());
    t.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_changes_the_name_resolves_the_new_one() {
    let backends = three_on_one_port().await;
    let port = backends[0].addr.port();
    let dns = DnsServer::start().await;
    dns.set(|z| {
        z.shop = vec![Ipv4Addr::new(127, 0, 0, 3)];
        z.srv = vec![("one".into(), port)];
    });
    let pool = |target: &str| {
        format!(
            "backends_from = {{ dns = \"{target}\", interval = \"1h\", nameserver = \"{}\" }}",
            dns.addr
        )
    };
    let t = tidegate(&config_text(&[], "", &pool(&format!("shop.test:{port}")))).await;
    eventually("the A record's member is active", || async {
        members(&t).await == vec![(format!("127.0.0.3:{port}"), "active".to_string())]
    })
    .await;
    // The interval is an hour: only a new loop for the new name can
    // explain the change.
    t.write_config(&config_text(&[], "", &pool("_http._tcp.shop.test")));
    assert_eq!(t.reload().await.status, 200);
    eventually("the SRV target replaced it", || async {
        members(&t).await == vec![(format!("127.0.0.1:{port}"), "active".to_string())]
    })
    .await;
    t.shutdown().await;
}
