//! `pick` per policy at 4, 64 and 1024 backends, with random loads.
//! Run: `cargo bench --bench pick` (figures in benches/README.md).
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tidegate::balance::{hash_bytes, Balancer, PickContext};
use tidegate::config::Balance;
use tidegate::pool::Backend;
use tidegate::pool::{InFlight, PoolShared};

fn pool(n: usize, rng: &mut fastrand::Rng) -> (Vec<Arc<Backend>>, Vec<InFlight>) {
    let pool = Arc::new(PoolShared::new(1024));
    let backends: Vec<_> = (0..n)
        .map(|i| Arc::new(Backend::new(([10, 0, (i >> 8) as u8, i as u8], 80).into(), 1, 64, 1)))
        .collect();
    // Hold a random number of slots on each backend (0..48 of 64).
    let mut held = Vec::new();
    for b in &backends {
        for _ in 0..rng.u32(..48) {
            held.push(InFlight::claim(b, &pool).unwrap());
        }
    }
    (backends, held)
}

fn bench_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [4usize, 64, 1024] {
        let mut rng = fastrand::Rng::with_seed(42);
        let (backends, _held) = pool(n, &mut rng);
        for policy in [
            Balance::LeastConn,
            Balance::P2c,
            Balance::RoundRobin,
            Balance::PeakEwma,
            Balance::Hash,
        ] {
            let balancer = Balancer::new(policy, &backends, Arc::new(AtomicUsize::new(0)));
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(policy.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    let mut cx = PickContext {
                        rng: &mut rng,
                        hash: Some(hash_bytes(&key.to_le_bytes())),
                        exclude: &[],
                    };
                    std::hint::black_box(balancer.pick(&backends, &mut cx))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
