//! Admission: a request holds one in-flight slot on one backend, or waits in
//! its pool's bounded FIFO queue until a slot frees or its timeout fires.
//!
//! Data path. The uncontended path takes no lock: when nobody is queued, the
//! balancer picks a backend and [`InFlight::claim`] takes a slot with one CAS.
//! Only a saturated pool touches the waiter list, under a short mutex that is
//! never held across an `.await` (and never while a slot is being released,
//! see [`Queue::dispatch`]).
//!
//! Invariants:
//! - FIFO: while anyone waits, new requests queue behind them, and a freed
//!   slot goes to the oldest waiter still there.
//! - No lost wake-up: a releaser decrements `in_flight` *then* reads the
//!   waiter count; an enqueuer publishes the count *then* tries to claim.
//!   With `SeqCst` on both, one of the two always sees the other.
//! - A waiter that gives up (client gone, timeout) leaves the list at once,
//!   so `depth()` counts only live waiters.
//! - An [`InFlight`] is the only way a slot is held; dropping it frees the
//!   slot wherever it is (response body finished, error, client cancel).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Backend, PoolShared};
use crate::histogram::SecondsHistogram;

/// A claimed slot on one backend of a pool. Dropping it gives the slot back
/// and, if anyone is queued, hands it straight to the oldest waiter.
pub struct InFlight {
    backend: Arc<Backend>,
    pool: Arc<PoolShared>,
}

impl InFlight {
    /// Claims a slot on `backend` if it is active and below its limit.
    #[inline]
    pub fn claim(backend: &Arc<Backend>, pool: &Arc<PoolShared>) -> Option<InFlight> {
        backend.try_claim_slot().then(|| InFlight {
            backend: Arc::clone(backend),
            pool: Arc::clone(pool),
        })
    }

    /// Claims a slot on a backend that is down, for a pool failing open.
    pub(crate) fn claim_fail_open(backend: &Arc<Backend>, pool: &Arc<PoolShared>) -> Option<InFlight> {
        backend.try_claim_slot_fail_open().then(|| InFlight {
            backend: Arc::clone(backend),
            pool: Arc::clone(pool),
        })
    }

    /// The backend the slot is on.
    #[inline]
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The pool's shared state (its counters and queue).
    #[inline]
    pub(crate) fn pool(&self) -> &Arc<PoolShared> {
        &self.pool
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.release_slot();
        if self.pool.queue.depth() > 0 {
            let (backend, pool) = (&self.backend, &self.pool);
            pool.queue.dispatch(|| InFlight::claim(backend, pool));
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlight").field(&self.backend.address).finish()
    }
}

/// Why a request left the queue without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// `max_depth` requests were already waiting.
    #[error("queue full")]
    Full,
    /// No slot came within the queue timeout.
    #[error("waited {0:?} in the queue")]
    Timeout(Duration),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<InFlight>,
}

/// One pool's waiting room. Carried by identity across reloads (keyed by
/// pool name), so requests already queued stay queued when the config
/// changes.
pub struct Queue {
    waiters: Mutex<VecDeque<Waiter>>,
    depth: AtomicUsize,
    max_depth: AtomicUsize,
    next_id: AtomicU64,
    /// Time spent queued, for `/metrics`.
    wait_seconds: SecondsHistogram,
    /// Requests that left the queue and their summed wait, for the
    /// autoscaler's per-second mean.
    waited: AtomicU64,
    waited_nanos: AtomicU64,
    /// The queue-wait SLO (the pool's `autoscale.slo`, or the default).
    slo_ns: AtomicU64,
    /// Requests that broke it: waited longer, or found the queue full.
    late: AtomicU64,
}

impl Queue {
    /// An empty queue holding at most `max_depth` waiters.
    pub fn new(max_depth: usize) -> Queue {
        Queue {
            waiters: Mutex::new(VecDeque::new()),
            depth: AtomicUsize::new(0),
            max_depth: AtomicUsize::new(max_depth),
            next_id: AtomicU64::new(0),
            wait_seconds: SecondsHistogram::default(),
            waited: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
            slo_ns: AtomicU64::new(crate::config::defaults::AUTOSCALE_SLO.as_nanos() as u64),
            late: AtomicU64::new(0),
        }
    }

    /// Live waiters.
    #[inline]
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Requests that have left the queue (served or timed out) and the
    /// nanoseconds they waited in all, since the queue was created.
    pub(crate) fn waited(&self) -> (u64, u64) {
        (
            self.waited.load(Ordering::Relaxed),
            self.waited_nanos.load(Ordering::Relaxed),
        )
    }

    /// Time spent queued, for `/metrics`.
    pub(crate) fn wait_histogram(&self) -> &SecondsHistogram {
        &self.wait_seconds
    }

    /// Requests that broke the queue-wait SLO since the queue was created
    /// (waited longer than it, or were refused because the queue was full).
    pub(crate) fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Control path: the SLO `late` counts against.
    pub(crate) fn set_slo(&self, slo: Duration) {
        self.slo_ns.store(slo.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_max_depth(&self, max_depth: usize) {
        self.max_depth.store(max_depth, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiter>> {
        // A panic while holding this lock cannot leave the deque invalid
        // (every critical section is a push, a pop or a retain).
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_depth(&self, q: &VecDeque<Waiter>) {
        self.depth.store(q.len(), Ordering::SeqCst);
    }

    /// Joins the back of the queue. The caller must then call
    /// [`Queue::dispatch`] once, to catch a slot freed while it was joining.
    pub(crate) fn enqueue(self: &Arc<Self>) -> Result<Waiting, QueueError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.lock();
            if q.len() >= self.max_depth.load(Ordering::Relaxed) {
                self.late.fetch_add(1, Ordering::Relaxed);
                return Err(QueueError::Full);
            }
            q.push_back(Waiter { id, tx });
            self.publish_depth(&q);
        }
        Ok(Waiting {
            id,
            rx,
            queue: Arc::clone(self),
            since: Instant::now(),
        })
    }

    /// Hands slots to waiters, oldest first, for as long as `claim` finds
    /// one. A slot whose waiter has just gone is offered to the next.
    ///
    /// A leftover slot is dropped only after the lock is released: its drop
    /// re-enters `dispatch`, and the mutex is not re-entrant.
    pub(crate) fn dispatch(&self, mut claim: impl FnMut() -> Option<InFlight>) {
        let mut spare: Option<InFlight> = None;
        {
            let mut q = self.lock();
            while !q.is_empty() {
                let Some(slot) = spare.take().or_else(&mut claim) else {
                    break;
                };
                let waiter = q.pop_front().expect("checked non-empty");
                if let Err(slot) = waiter.tx.send(slot) {
                    spare = Some(slot);
                }
            }
            self.publish_depth(&q);
        }
        drop(spare);
    }
}

/// A place in the queue. Dropping it (client gone) leaves the queue at once.
pub struct Waiting {
    id: u64,
    rx: oneshot::Receiver<InFlight>,
    queue: Arc<Queue>,
    since: Instant,
}

impl Waiting {
    /// Waits for a slot, at most `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<InFlight, QueueError> {
        let result = match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(slot)) => Ok(slot),
            // The sender is only dropped after a successful send or by
            // `Waiting::drop`, so a closed channel cannot happen here; treat
            // it as a timeout rather than panic.
            Ok(Err(_)) => Err(QueueError::Timeout(timeout)),
            // A slot may have arrived in the instant the timer fired.
            Err(_) => self.rx.try_recv().map_err(|_| QueueError::Timeout(timeout)),
        };
        let waited = self.since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.queue.wait_seconds.record_ns(waited);
        self.queue.waited.fetch_add(1, Ordering::Relaxed);
        self.queue.waited_nanos.fetch_add(waited, Ordering::Relaxed);
        if waited > self.queue.slo_ns.load(Ordering::Relaxed) {
            self.queue.late.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        let before = q.len();
        q.retain(|w| w.id != self.id);
        if q.len() != before {
            self.queue.publish_depth(&q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_depth: usize) -> (Arc<PoolShared>, Arc<Queue>) {
        let p = Arc::new(PoolShared::new(max_depth));
        let q = Arc::clone(&p.queue);
        (p, q)
    }

    fn backend(limit: u32) -> Arc<Backend> {
        Arc::new(Backend::new("127.0.0.1:1".parse().unwrap(), 1, limit, 1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_oldest_waiter() {
        let b = backend(1);
        let (p, q) = pool(10);
        let held = InFlight::claim(&b, &p).unwrap();
        let first = q.enqueue().unwrap();
        let second = q.enqueue().unwrap();
        assert_eq!(q.depth(), 2);
        let (first_id, second_id) = (first.id, second.id);
        let t1 = tokio::spawn(first.wait(Duration::from_secs(5)));
        let t2 = tokio::spawn(second.wait(Duration::from_secs(5)));
        tokio::task::yield_now().await;
        drop(held);
        let got = t1.await.unwrap().expect("oldest waiter gets the slot");
        assert_eq!(b.in_flight(), 1, "slot handed over, not freed");
        assert_eq!(q.depth(), 1);
        assert!(first_id < second_id);
        drop(got);
        let got2 = t2.await.unwrap().expect("second waiter next");
        drop(got2);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_and_leaves_the_queue() {
        let b = backend(1);
        let (p, q) = pool(10);
        let _held = InFlight::claim(&b, &p).unwrap();
        let w = q.enqueue().unwrap();
        let start = Instant::now();
        let r = w.wait(Duration::from_millis(250)).await;
        assert_eq!(r.unwrap_err(), QueueError::Timeout(Duration::from_millis(250)));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_at_once_and_does_not_swallow_the_slot() {
        let b = backend(1);
        let (p, q) = pool(10);
        let held = InFlight::claim(&b, &p).unwrap();
        let gone = q.enqueue().unwrap();
        let stays = q.enqueue().unwrap();
        drop(gone);
        assert_eq!(q.depth(), 1);
        let t = tokio::spawn(stays.wait(Duration::from_secs(5)));
        tokio::task::yield_now().await;
        drop(held);
        assert!(t.await.unwrap().is_ok());
    }

    #[test]
    fn a_full_queue_refuses() {
        let (_p, q) = pool(1);
        let _w = q.enqueue().unwrap();
        assert_eq!(q.enqueue().err(), Some(QueueError::Full));
    }

    #[test]
    fn a_slot_offered_to_a_departed_waiter_passes_to_the_next() {
        let b = backend(1);
        let (p, q) = pool(10);
        // The race: the receiver is closed but the entry is still listed
        // (its Drop has not run yet).
        let mut gone = q.enqueue().unwrap();
        gone.rx.close();
        let mut stays = q.enqueue().unwrap();
        q.dispatch(|| InFlight::claim(&b, &p));
        assert_eq!(q.depth(), 0);
        let slot = stays.rx.try_recv().expect("the next waiter got the slot");
        assert_eq!(b.in_flight(), 1, "one slot, not two");
        drop(slot);
        drop((gone, stays));
        assert_eq!(b.in_flight(), 0);
    }
}
