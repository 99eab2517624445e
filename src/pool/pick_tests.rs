//! Invariants of the balancer over the pool's real backends, as
//! properties over random pools: a full, draining, down or excluded backend
//! is never picked, p2c never draws one backend twice, ties are broken at
//! random.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use proptest::prelude::*;

use super::{Backend, BackendState};
use crate::balance::{hash_bytes, p2c_candidates, Balancer, PickContext};
use crate::config::Balance;

fn backend(port: u16, weight: u32, limit: u32, in_flight: u32, state: BackendState) -> Arc<Backend> {
    let b = Arc::new(Backend::new(([127, 0, 0, 1], port).into(), weight, limit, 1));
    for _ in 0..in_flight.min(limit) {
        assert!(b.try_claim_slot());
    }
    b.set_state(state);
    b
}

const POLICIES: [Balance; 5] = [
    Balance::LeastConn,
    Balance::P2c,
    Balance::RoundRobin,
    Balance::PeakEwma,
    Balance::Hash,
];

fn state_strategy() -> impl Strategy<Value = BackendState> {
    prop_oneof![
        6 => Just(BackendState::Active),
        1 => Just(BackendState::Warming),
        1 => Just(BackendState::Draining),
        1 => Just(BackendState::Down),
    ]
}

proptest! {
    #[test]
    fn p2c_never_draws_the_same_backend_twice(seed in any::<u64>(), n in 2usize..2000) {
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..50 {
            let (a, b) = p2c_candidates(&mut rng, n);
            prop_assert_ne!(a, b);
            prop_assert!(a < n && b < n);
        }
    }

    #[test]
    fn no_policy_picks_a_full_draining_down_or_excluded_backend(
        seed in any::<u64>(),
        spec in prop::collection::vec((1u32..5, 1u32..4, 0u32..5, state_strategy()), 1..40),
        exclude_mask in any::<u64>(),
        key in any::<u64>(),
    ) {
        let backends: Vec<_> = spec
            .iter()
            .enumerate()
            .map(|(i, &(w, limit, inf, st))| backend(9000 + i as u16, w, limit, inf, st))
            .collect();
        let exclude: Vec<usize> = (0..backends.len()).filter(|i| exclude_mask & (1 << (i % 64)) != 0 && i % 3 == 0).collect();
        let any_eligible = (0..backends.len()).any(|i| backends[i].has_free_slot() && !exclude.contains(&i));
        for policy in POLICIES {
            let bal = Balancer::new(policy, &backends, Arc::new(AtomicUsize::new(0)));
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..8 {
                let mut cx = PickContext { rng: &mut rng, hash: Some(key), exclude: &exclude };
                match bal.pick(&backends, &mut cx) {
                    Some(i) => {
                        prop_assert!(backends[i].state() == BackendState::Active, "{policy}: picked {:?}", backends[i]);
                        prop_assert!(backends[i].in_flight() < backends[i].limit(), "{policy}: picked a full backend");
                        prop_assert!(!exclude.contains(&i), "{policy}: picked an excluded backend");
                    }
                    None => prop_assert!(!any_eligible, "{policy}: found nothing although a backend was free"),
                }
            }
        }
    }

    #[test]
    fn least_conn_picks_a_least_loaded_backend(
        seed in any::<u64>(),
        loads in prop::collection::vec(0u32..20, 1..50),
    ) {
        let backends: Vec<_> = loads.iter().enumerate().map(|(i, &l)| backend(9000 + i as u16, 1, 100, l, BackendState::Active)).collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut cx = PickContext { rng: &mut rng, hash: None, exclude: &[] };
        let i = Balancer::LeastConn.pick(&backends, &mut cx).unwrap();
        prop_assert_eq!(loads[i], *loads.iter().min().unwrap());
    }
}

#[test]
fn least_conn_breaks_ties_at_random() {
    let backends: Vec<_> = (0..3)
        .map(|i| backend(9000 + i, 1, 10, 2, BackendState::Active))
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut counts = [0; 3];
    for _ in 0..3000 {
        let mut cx = PickContext {
            rng: &mut rng,
            hash: None,
            exclude: &[],
        };
        counts[Balancer::LeastConn.pick(&backends, &mut cx).unwrap()] += 1;
    }
    for c in counts {
        assert!((800..1200).contains(&c), "{counts:?}");
    }
}

#[test]
fn least_conn_honours_weights() {
    // Weight 3 with 5 in flight (load 2) beats weight 1 with 2 in flight (load 3).
    let backends = vec![
        backend(9000, 1, 10, 2, BackendState::Active),
        backend(9001, 3, 10, 5, BackendState::Active),
    ];
    let mut rng = fastrand::Rng::with_seed(1);
    let mut cx = PickContext {
        rng: &mut rng,
        hash: None,
        exclude: &[],
    };
    assert_eq!(Balancer::LeastConn.pick(&backends, &mut cx), Some(1));
}

#[test]
fn p2c_prefers_the_less_loaded_of_its_two() {
    let backends = vec![
        backend(9000, 1, 100, 50, BackendState::Active),
        backend(9001, 1, 100, 0, BackendState::Active),
    ];
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..100 {
        let mut cx = PickContext {
            rng: &mut rng,
            hash: None,
            exclude: &[],
        };
        assert_eq!(Balancer::P2c.pick(&backends, &mut cx), Some(1));
    }
}

#[test]
fn peak_ewma_avoids_the_slow_backend() {
    let backends = vec![
        backend(9000, 1, 100, 0, BackendState::Active),
        backend(9001, 1, 100, 0, BackendState::Active),
    ];
    backends[0].record(Some(200), 200_000_000, 1, 10e9);
    backends[1].record(Some(200), 2_000_000, 1, 10e9);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut cx = PickContext {
        rng: &mut rng,
        hash: None,
        exclude: &[],
    };
    assert_eq!(Balancer::PeakEwma.pick(&backends, &mut cx), Some(1));
}

#[test]
fn round_robin_follows_smooth_weights() {
    let backends: Vec<_> = (0..3)
        .map(|i| backend(9000 + i, 1, 10, 0, BackendState::Active))
        .collect();
    let bal = Balancer::new(Balance::RoundRobin, &backends, Arc::new(AtomicUsize::new(0)));
    let mut rng = fastrand::Rng::with_seed(1);
    let picks: Vec<_> = (0..6)
        .map(|_| {
            bal.pick(
                &backends,
                &mut PickContext {
                    rng: &mut rng,
                    hash: None,
                    exclude: &[],
                },
            )
            .unwrap()
        })
        .collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn hash_keeps_a_key_on_one_backend_and_moves_it_only_when_full() {
    let backends: Vec<_> = (0..5)
        .map(|i| backend(9000 + i, 1, 2, 0, BackendState::Active))
        .collect();
    let bal = Balancer::new(Balance::Hash, &backends, Arc::new(AtomicUsize::new(0)));
    let key = hash_bytes(b"cart-42");
    let mut rng = fastrand::Rng::with_seed(1);
    let pick = |rng: &mut fastrand::Rng| {
        bal.pick(
            &backends,
            &mut PickContext {
                rng,
                hash: Some(key),
                exclude: &[],
            },
        )
        .unwrap()
    };
    let owner = pick(&mut rng);
    for _ in 0..10 {
        assert_eq!(pick(&mut rng), owner);
    }
    assert!(backends[owner].try_claim_slot() && backends[owner].try_claim_slot());
    assert_ne!(pick(&mut rng), owner, "a full owner spills to the next on the ring");
}
