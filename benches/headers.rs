//! Request header rewriting as the hot path does it per request: strip the
//! hop-by-hop fields, add the forwarded-for family. A browser-like request
//! with and without `Connection: keep-alive`, and one that already carries
//! `X-Forwarded-For` (behind a CDN).
//! Run: `cargo bench --bench headers` (figures in benches/README.md).
//! Wall time on a shared VM swings by 2x between runs; for an A/B, count
//! instructions instead: with `TIDEGATE_BENCH_ITERS=N` the binary runs each
//! case N times without criterion, for `valgrind --tool=callgrind`.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use criterion::{criterion_group, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Version;
use tidegate::proxy::headers::{forwarded, peer_value, strip_hop_by_hop, Forwarded, Hop};

fn browser(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "cart=7f3a9c; session=2b61e0d4"),
    ]
    .iter()
    .chain(extra)
    {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn cases() -> [(&'static str, HeaderMap); 3] {
    [
        ("plain", browser(&[])),
        ("keep-alive", browser(&[("connection", "keep-alive")])),
        (
            "behind-cdn",
            browser(&[("x-forwarded-for", "198.51.100.1"), ("via", "1.1 cdn")]),
        ),
    ]
}

/// The client's address as a field value, made once per connection.
fn client() -> HeaderValue {
    peer_value("203.0.113.7".parse().unwrap())
}

/// What the proxy does to a request's headers (the forwarding fields are
/// computed; over HTTP/1.1 they are written with the head, not inserted).
fn once(h: &mut HeaderMap, client: &HeaderValue) -> Forwarded {
    let host = h.get(http::header::HOST).cloned();
    strip_hop_by_hop(h, false);
    let hop = Hop {
        peer: client,
        trusted: false,
        tls: false,
    };
    forwarded(h, hop, host.as_ref(), Version::HTTP_11)
}

fn rewrite(c: &mut Criterion) {
    let client = client();
    for (name, headers) in cases() {
        c.bench_function(&format!("rewrite/{name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| once(h, &client),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, rewrite);

fn main() {
    if let Some(n) = std::env::var("TIDEGATE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let (client, cases) = (client(), cases());
        for (_, headers) in &cases {
            for _ in 0..n {
                let mut h = headers.clone();
                once(&mut h, &client);
                std::hint::black_box(&h);
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
