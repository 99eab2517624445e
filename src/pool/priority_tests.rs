//! The flash-sale scenario for priority lanes, on tokio's paused
//! clock so every wait is exact: a pool that serves 100 req/s is offered
//! 300 req/s of sheddable browse plus 20 req/s of critical checkout for
//! 30 s. Checkout must be served (>= 99 %, p99 queue wait <= 50 ms),
//! browse refused quickly (never the full `queue.timeout`), and the queue
//! must be empty when the flood stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{test_pool, AdmitError, Pool, QueueError};
use crate::balance::PickContext;
use crate::config::Priority;

/// One backend, one slot, 10 ms a request: 100 req/s.
const SERVICE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Served,
    Full,
    Timeout,
    Evicted,
}

/// (class, outcome, time from arrival to a slot or a refusal)
type Record = (Priority, Outcome, Duration);

async fn arrive(pool: Arc<Pool>, class: Priority, at: Instant, log: Arc<Mutex<Vec<Record>>>) {
    tokio::time::sleep_until(at).await;
    let mut rng = fastrand::Rng::with_seed(at.elapsed().as_nanos() as u64);
    let mut cx = PickContext {
        rng: &mut rng,
        hash: None,
        exclude: &[],
    };
    let result = pool.admit(&mut cx, class).await;
    let waited = at.elapsed();
    let outcome = match &result {
        Ok(_) => Outcome::Served,
        Err(AdmitError::Queue(QueueError::Full)) => Outcome::Full,
        Err(AdmitError::Queue(QueueError::Timeout(_))) => Outcome::Timeout,
        Err(AdmitError::Queue(QueueError::Evicted)) => Outcome::Evicted,
        Err(AdmitError::NoBackend) => panic!("the backend is up"),
    };
    log.lock().unwrap().push((class, outcome, waited));
    if let Ok(slot) = result {
        tokio::time::sleep(SERVICE).await;
        drop(slot);
    }
}

fn p99(mut waits: Vec<Duration>) -> Duration {
    waits.sort_unstable();
    waits[(waits.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(start_paused = true)]
async fn checkout_is_served_while_a_browse_flood_is_shed_quickly() {
    let pool = Arc::new(test_pool(
        "max_concurrency = 1\nqueue = { max_depth = 1024, timeout = \"5s\" }\n\
         backends = [ { address = \"127.0.0.1:1\" } ]",
    ));
    let shed_deadline = pool.config.queue_sheddable_timeout;
    assert_eq!(shed_deadline, crate::config::defaults::QUEUE_SHEDDABLE_TIMEOUT);
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let flood = Duration::from_secs(30);
    let mut tasks = Vec::new();
    // 300 browse a second (one every 3.33 ms), 20 checkouts (one every 50 ms,
    // offset so they do not land on a browse arrival).
    let browse = (0..9000u64).map(|i| (Priority::Sheddable, Duration::from_nanos(i * 10_000_000 / 3)));
    let checkout = (0..600u64).map(|i| (Priority::Critical, Duration::from_micros(i * 50_000 + 1_234)));
    for (class, offset) in browse.chain(checkout) {
        assert!(offset < flood);
        tasks.push(tokio::spawn(arrive(
            Arc::clone(&pool),
            class,
            start + offset,
            Arc::clone(&log),
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let queue = &pool.shared.queue;
    assert_eq!(queue.depth(), 0, "the queue empties when the flood stops");
    assert_eq!(pool.backends[0].in_flight(), 0);

    let log = log.lock().unwrap();
    let of = |class| log.iter().filter(move |r: &&Record| r.0 == class);
    let checkout_served: Vec<Duration> = of(Priority::Critical)
        .filter(|r| r.1 == Outcome::Served)
        .map(|r| r.2)
        .collect();
    assert!(
        checkout_served.len() * 100 >= 600 * 99,
        "checkout served {} of 600",
        checkout_served.len()
    );
    let checkout_p99 = p99(checkout_served);
    assert!(
        checkout_p99 <= Duration::from_millis(50),
        "checkout p99 wait {checkout_p99:?}"
    );

    let browse: Vec<&Record> = of(Priority::Sheddable).collect();
    let refused: Vec<&&Record> = browse.iter().filter(|r| r.1 != Outcome::Served).collect();
    let slowest = browse.iter().map(|r| r.2).max().unwrap();
    // (tokio's timers tick in whole milliseconds; arrivals fall between.)
    assert!(
        slowest <= shed_deadline + Duration::from_millis(1),
        "a browse request waited {slowest:?}"
    );
    assert!(
        refused.len() > 9000 / 2,
        "the flood is shed: {} of 9000 refused",
        refused.len()
    );
    // What is left of the capacity still serves browse.
    let served = browse.len() - refused.len();
    assert!(served > 1500, "browse served {served}");
    println!(
        "checkout: 600/600 served, p99 wait {checkout_p99:?}; browse: {served} served, {} refused \
         (full {}, timeout {}, evicted {}), slowest answer {slowest:?}",
        refused.len(),
        refused.iter().filter(|r| r.1 == Outcome::Full).count(),
        refused.iter().filter(|r| r.1 == Outcome::Timeout).count(),
        refused.iter().filter(|r| r.1 == Outcome::Evicted).count(),
    );
}
