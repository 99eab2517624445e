//! The micro-cache through real sockets: concurrent misses of one key
//! reach the backend once, a leaving client does not fail the others,
//! each never-store rule holds, `Age` grows, stale copies are served
//! while refreshing and while the backend is down, and a reload keeps
//! what is stored.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::server::conn::http1 as server;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A backend that counts requests per path and query, answers after
/// `delay`, and adds a response field for each `h=name:value` query
/// parameter. Dropping `stop` (or sending on it) closes every connection.
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: watch::Sender<bool>,
}

impl Origin {
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn down(&self) {
        self.stop.send_replace(true);
    }
}

async fn origin(delay: Duration) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        let mut accept_stop = stopped.clone();
        loop {
            let s = tokio::select! {
                a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => break },
                _ = accept_stop.changed() => break,
            };
            let counted = Arc::clone(&counted);
            let mut stop = stopped.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let counted = Arc::clone(&counted);
                    async move {
                        let pq = req.uri().path_and_query().unwrap().as_str().to_string();
                        let n = {
                            let mut h = counted.lock().unwrap();
                            let n = h.entry(pq.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        tokio::time::sleep(delay).await;
                        let mut resp = http::Response::builder().header("x-served", n.to_string());
                        for pair in req.uri().query().unwrap_or("").split('&') {
                            if let Some(field) = pair.strip_prefix("h=") {
                                let (k, v) = field.split_once(':').unwrap();
                                resp = resp.header(k, v);
                            }
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(format!("body of {pq}")))).unwrap())
                    }
                });
                let conn = server::Builder::new().serve_connection(TokioIo::new(s), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });
    Origin { addr, hits, stop }
}

fn cached_config(backend: SocketAddr, cache: &str) -> String {
    format!(
        "[[route]]\npath_prefix = \"/\"\npool = \"shop\"\ncache = {{ {cache} }}\n{}",
        config_text(&[backend], "", "")
    )
}

async fn get_with(addr: SocketAddr, method: &str, path: &str, fields: &[(&str, &str)]) -> Answer {
    let mut s = h1(addr).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.test");
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(BOUND, s.send_request(req.body(Full::new(Bytes::new())).unwrap()))
        .await
        .unwrap()
        .unwrap();
    collect(resp).await
}

fn x_cache(a: &Answer) -> &str {
    a.headers.get("x-cache").map_or("-", |v| v.to_str().unwrap())
}

fn age(a: &Answer) -> u64 {
    a.headers["age"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_of_a_cold_key_reach_the_backend_once() {
    let o = origin(Duration::from_millis(200)).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\"")).await;
    let addr = t.addr;
    let clients: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async move { get_with(addr, "GET", "/product/1", &[]).await }))
        .collect();
    let mut results: HashMap<String, usize> = HashMap::new();
    for c in clients {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "body of /product/1");
        *results.entry(x_cache(&a).to_string()).or_default() += 1;
    }
    assert_eq!(o.hits("/product/1"), 1, "exactly one upstream request");
    assert_eq!(results.get("MISS"), Some(&1), "{results:?}");
    assert_eq!(results.get("HIT"), Some(&999), "{results:?}");
    let stats = t.stats().await;
    let shop = &stats["cache"]["pools"][0];
    // Those that arrived while the fetch ran waited for it; the rest (a
    // thousand connections take a while to open) found it stored.
    let coalesced = shop["coalesced"].as_u64().unwrap();
    assert!((1..=999).contains(&coalesced), "coalesced {coalesced}");
    assert_eq!(shop["hit"], 999);
    // A hit is no demand: the pool (and its autoscaler) counted one arrival.
    assert_eq!(stats["pools"][0]["arrivals_total"], 1);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tidegate_cache_requests_total{pool=\"shop\",result=\"hit\"} 999\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_first_client_leaving_does_not_fail_the_others() {
    let o = origin(Duration::from_millis(300)).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\"")).await;
    let mut first = TcpStream::connect(t.addr).await.unwrap();
    first
        .write_all(b"GET /leaving HTTP/1.1\r\nhost: shop.test\r\n\r\n")
        .await
        .unwrap();
    eventually("the fetch reached the backend", || async { o.hits("/leaving") == 1 }).await;
    let addr = t.addr;
    let others: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get_with(addr, "GET", "/leaving", &[]).await }))
        .collect();
    drop(first);
    for o in others {
        let a = o.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(x_cache(&a), "HIT");
    }
    assert_eq!(o.hits("/leaving"), 1);
}

#[tokio::test]
async fn each_never_store_rule_sends_every_request_upstream() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\"")).await;
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("/r?h=cache-control:no-store", &[]),
        ("/r?h=cache-control:private", &[]),
        ("/r?h=vary:*", &[]),
        ("/r?h=set-cookie:a=1", &[]),
        ("/r?h=cache-control:max-age=0", &[]),
        ("/r?auth", &[("authorization", "Bearer x")]),
    ];
    for (path, fields) in cases {
        for _ in 0..2 {
            let a = get_with(t.addr, "GET", path, fields).await;
            assert_eq!((a.status.as_u16(), x_cache(&a)), (200, "MISS"), "{path}");
        }
        assert_eq!(o.hits(path), 2, "{path} was stored");
    }
    // `public` lets a response to an authorized request be stored.
    let path = "/r?h=cache-control:public";
    for _ in 0..2 {
        get_with(t.addr, "GET", path, &[("authorization", "Bearer x")]).await;
    }
    assert_eq!(o.hits(path), 1);
}

#[tokio::test]
async fn hits_carry_a_growing_age_and_bypass_skips_the_cache() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(
        o.addr,
        "ttl = \"30s\", ignore_query = [\"utm_*\"], bypass_cookies = [\"session\"]",
    ))
    .await;
    let miss = get_with(t.addr, "GET", "/a?x=1&utm_source=mail", &[]).await;
    assert_eq!((x_cache(&miss), age(&miss)), ("MISS", 0));
    let hit = get_with(t.addr, "HEAD", "/a?x=1", &[]).await;
    assert_eq!(x_cache(&hit), "HIT", "HEAD shares GET's entry, utm_* is not in the key");
    assert!(hit.body.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = get_with(t.addr, "GET", "/a?x=1", &[]).await;
    assert_eq!(x_cache(&later), "HIT");
    assert!(age(&later) >= 1, "age {}", age(&later));
    let bypass = get_with(t.addr, "GET", "/a?x=1", &[("cookie", "session=abc")]).await;
    assert_eq!(x_cache(&bypass), "BYPASS");
    let post = get_with(t.addr, "POST", "/a?x=1", &[]).await;
    assert_eq!(x_cache(&post), "BYPASS");
    let refresh = get_with(t.addr, "GET", "/a?x=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(x_cache(&refresh), "MISS");
    assert_eq!(o.hits("/a?x=1&utm_source=mail") + o.hits("/a?x=1"), 4);
    let log_free = t.stats().await;
    assert!(log_free["cache"]["entries"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn stale_is_served_while_one_request_refreshes_it_and_while_the_backend_is_down() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"200ms\", grace = \"30s\"")).await;
    assert_eq!(x_cache(&get_with(t.addr, "GET", "/s", &[]).await), "MISS");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = get_with(t.addr, "GET", "/s", &[]).await;
    assert_eq!((stale.status.as_u16(), x_cache(&stale)), (200, "STALE"));
    eventually("the background refresh", || async { o.hits("/s") == 2 }).await;
    eventually("the refreshed copy is served", || async {
        x_cache(&get_with(t.addr, "GET", "/s", &[]).await) == "HIT"
    })
    .await;

    o.down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let a = get_with(t.addr, "GET", "/s", &[]).await;
        assert_eq!((a.status.as_u16(), x_cache(&a)), (200, "STALE"), "stale-if-error");
        assert_eq!(a.text(), "body of /s");
    }
}

#[tokio::test]
async fn a_reload_keeps_what_is_stored() {
    let o = origin(Duration::ZERO).await;
    let text = cached_config(o.addr, "ttl = \"30s\"");
    let t = tidegate(&text).await;
    assert_eq!(x_cache(&get_with(t.addr, "GET", "/kept", &[]).await), "MISS");
    let admin = format!("[admin]\nlisten = \"{}\"\n", t.admin);
    t.write_config(&format!(
        "{admin}{}",
        text.replace("[pools.shop]\n", "[pools.shop]\nmax_concurrency = 9\n")
    ));
    assert_eq!(t.reload().await.status, 200);
    let a = get_with(t.addr, "GET", "/kept", &[]).await;
    assert_eq!(x_cache(&a), "HIT");
    assert_eq!(o.hits("/kept"), 1);
}

#[tokio::test]
async fn each_variant_named_by_vary_is_stored_apart() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\"")).await;
    let path = "/v?h=vary:accept-language";
    let mut seen = Vec::new();
    for lang in ["en", "en", "fr", "fr", "en"] {
        let a = get_with(t.addr, "GET", path, &[("accept-language", lang)]).await;
        seen.push(x_cache(&a).to_string());
    }
    assert_eq!(seen, ["MISS", "HIT", "MISS", "HIT", "HIT"]);
    assert_eq!(o.hits(path), 2);
}

#[tokio::test]
async fn a_body_over_max_object_streams_through_whole_and_uncached() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\", max_object = \"5B\"")).await;
    for path in ["/big", "/big?h=transfer-encoding:chunked"] {
        for _ in 0..2 {
            let a = get_with(t.addr, "GET", path, &[]).await;
            assert_eq!((a.status.as_u16(), x_cache(&a)), (200, "MISS"), "{path}");
            assert_eq!(a.text(), format!("body of {path}"));
        }
        assert_eq!(o.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn an_answer_that_may_not_be_stored_releases_the_waiters_and_marks_the_key_hit_for_miss() {
    let o = origin(Duration::from_millis(300)).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\", lock_timeout = \"20s\"")).await;
    let path = "/private?h=cache-control:private";
    let started = tokio::time::Instant::now();
    let addr = t.addr;
    let clients: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get_with(addr, "GET", path, &[]).await }))
        .collect();
    for c in clients {
        let a = c.await.unwrap();
        assert_eq!((a.status.as_u16(), x_cache(&a)), (200, "MISS"));
    }
    // The leader's answer (300 ms) released the waiters, who then went
    // upstream at once (300 ms more), long before their lock_timeout.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(o.hits(path), 10);
    // Hit-for-miss: the next miss goes upstream without waiting for anyone.
    assert_eq!(x_cache(&get_with(t.addr, "GET", path, &[]).await), "MISS");
    assert_eq!(o.hits(path), 11);
}

#[tokio::test]
async fn the_access_log_names_what_the_cache_did() {
    let o = origin(Duration::ZERO).await;
    let text = format!(
        "[access_log]\npath = \"access.log\"\n{}",
        cached_config(o.addr, "ttl = \"30s\", bypass_cookies = [\"cart\"]")
    );
    let t = tidegate(&text).await;
    get_with(t.addr, "GET", "/logged", &[]).await;
    get_with(t.addr, "GET", "/logged", &[]).await;
    get_with(t.addr, "GET", "/logged", &[("cookie", "cart=1")]).await;
    let log = t.path.with_file_name("access.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    eventually("every request is logged", || async { lines().len() == 3 }).await;
    let seen: Vec<_> = lines()
        .iter()
        .map(|l| l["cache"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["miss", "hit", "bypass"]);
    // Only the miss and the bypass reached a backend.
    let backends: Vec<bool> = lines().iter().map(|l| l["backend"].is_string()).collect();
    assert_eq!(backends, [true, false, true]);
}

#[tokio::test]
async fn max_bytes_bounds_the_store_by_evicting() {
    let o = origin(Duration::ZERO).await;
    let text = format!(
        "[cache]\nmax_bytes = \"2KiB\"\n{}",
        cached_config(o.addr, "ttl = \"30s\"")
    );
    let t = tidegate(&text).await;
    for i in 0..30 {
        assert_eq!(get_with(t.addr, "GET", &format!("/e/{i}"), &[]).await.status, 200);
    }
    eventually("evictions are counted", || async {
        let cache = &t.stats().await["cache"];
        cache["evictions_total"].as_u64().unwrap() > 0 && cache["bytes"].as_u64().unwrap() <= 2048
    })
    .await;
    let metrics = t.metrics().await;
    assert!(metrics.contains("tidegate_cache_evictions_total "), "{metrics}");
}

#[tokio::test]
async fn head_and_http2_clients_get_the_same_answers() {
    let o = origin(Duration::ZERO).await;
    let t = tidegate(&cached_config(o.addr, "ttl = \"30s\"")).await;
    // An unstorable answer to a HEAD leader: its head only.
    let head = get_with(t.addr, "HEAD", "/h?h=cache-control:no-store", &[]).await;
    assert_eq!((head.status.as_u16(), x_cache(&head)), (200, "MISS"));
    assert!(head.body.is_empty());
    let mut h2 = h2(t.addr).await;
    for expected in ["MISS", "HIT"] {
        let req = http::Request::get("http://shop.test/two")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = collect(h2.send_request(req).await.unwrap()).await;
        assert_eq!((a.status.as_u16(), x_cache(&a)), (200, expected));
        assert_eq!(a.text(), "body of /two");
    }
}
