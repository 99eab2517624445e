//! Admission: a request holds one in-flight slot on one backend, or waits in
//! its pool's bounded queue until a slot frees or its timeout fires.
//!
//! Data path. The uncontended path takes no lock: when nobody is queued, the
//! balancer picks a backend and [`InFlight::claim`] takes a slot with one CAS.
//! Only a saturated pool touches the waiter lists, under a short mutex that is
//! never held across an `.await` (and never while a slot is being released,
//! see [`Queue::dispatch`]).
//!
//! Priority lanes (HAProxy's `set-priority-class`): each route's class
//! ([`Priority`]) has its own FIFO lane; a freed slot goes to the oldest
//! waiter of the first non-empty lane (critical, normal, sheddable).
//! Sheddable waiters hold at most `sheddable_share` of `max_depth`; a
//! critical request that finds the queue full takes the place of the newest
//! sheddable (else normal) waiter, which leaves with [`QueueError::Evicted`].
//!
//! Invariants:
//! - By class, then FIFO: while anyone waits, new requests queue too, and a
//!   freed slot goes to the oldest waiter of the highest class still there.
//! - No lost wake-up: a releaser decrements `in_flight` *then* reads the
//!   waiter count; an enqueuer publishes the count *then* tries to claim.
//!   With `SeqCst` on both, one of the two always sees the other.
//! - A waiter that gives up (client gone, timeout) or is evicted leaves its
//!   lane at once, so `depth()` counts only live waiters.
//! - An [`InFlight`] is the only way a slot is held; dropping it frees the
//!   slot wherever it is (response body finished, error, client cancel).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Backend, PoolShared};
use crate::config::Priority;
use crate::histogram::SecondsHistogram;

/// One FIFO lane per [`Priority`], in serving order.
type Lanes = [VecDeque<Waiter>; 3];

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
    /// A critical request took this waiter's place in a full queue.
    #[error("evicted from a full queue by a critical request")]
    Evicted,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<InFlight>,
}

/// One pool's waiting room. Carried by identity across reloads (keyed by
/// pool name), so requests already queued stay queued when the config
/// changes.
pub struct Queue {
    waiters: Mutex<Lanes>,
    depth: AtomicUsize,
    /// Live waiters per class (for `/stats` and `/metrics`).
    class_depth: [AtomicUsize; 3],
    max_depth: AtomicUsize,
    /// Most waiters the sheddable lane may hold.
    sheddable_max: AtomicUsize,
    /// Waiters evicted by critical requests, per class.
    evicted: [AtomicU64; 3],
    next_id: AtomicU64,
    /// Time spent queued, for `/metrics`.
    wait_seconds: SecondsHistogram,
    /// Requests that left the queue and their summed wait, per class, for
    /// the autoscaler's per-second means.
    waited: [AtomicU64; 3],
    waited_nanos: [AtomicU64; 3],
    /// The queue-wait SLO (the pool's `autoscale.slo`, or the default).
    slo_ns: AtomicU64,
    /// Requests that broke it, per class: waited longer, or found the
    /// queue full.
    late: [AtomicU64; 3],
}

impl Queue {
    /// An empty queue holding at most `max_depth` waiters (sheddable ones:
    /// the default share of it).
    pub fn new(max_depth: usize) -> Queue {
        Queue {
            waiters: Mutex::new(Default::default()),
            depth: AtomicUsize::new(0),
            class_depth: Default::default(),
            max_depth: AtomicUsize::new(max_depth),
            sheddable_max: AtomicUsize::new(sheddable_max(max_depth, crate::config::defaults::QUEUE_SHEDDABLE_SHARE)),
            evicted: Default::default(),
            next_id: AtomicU64::new(0),
            wait_seconds: SecondsHistogram::default(),
            waited: Default::default(),
            waited_nanos: Default::default(),
            slo_ns: AtomicU64::new(crate::config::defaults::AUTOSCALE_SLO.as_nanos() as u64),
            late: Default::default(),
        }
    }

    /// Live waiters.
    #[inline]
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Per class, in [`Priority::ALL`] order: requests that have left the
    /// queue (served or timed out) and the nanoseconds they waited in all,
    /// since the queue was created.
    pub(crate) fn waited(&self) -> [(u64, u64); 3] {
        std::array::from_fn(|i| {
            (
                self.waited[i].load(Ordering::Relaxed),
                self.waited_nanos[i].load(Ordering::Relaxed),
            )
        })
    }

    /// Time spent queued, for `/metrics`.
    pub(crate) fn wait_histogram(&self) -> &SecondsHistogram {
        &self.wait_seconds
    }

    /// Requests that broke the queue-wait SLO since the queue was created
    /// (waited longer than it, or were refused because the queue was
    /// full), per class in [`Priority::ALL`] order.
    pub(crate) fn late(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.late[i].load(Ordering::Relaxed))
    }

    /// Control path: the SLO `late` counts against.
    pub(crate) fn set_slo(&self, slo: Duration) {
        self.slo_ns.store(slo.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Control path: the queue's bounds (a reload may change them).
    pub(crate) fn set_limits(&self, max_depth: usize, sheddable_share: f64) {
        self.max_depth.store(max_depth, Ordering::Relaxed);
        self.sheddable_max
            .store(sheddable_max(max_depth, sheddable_share), Ordering::Relaxed);
    }

    /// Live waiters per class, in [`Priority::ALL`] order.
    pub(crate) fn class_depths(&self) -> [usize; 3] {
        std::array::from_fn(|i| self.class_depth[i].load(Ordering::Relaxed))
    }

    /// Waiters evicted by critical requests since the queue was created,
    /// per class, in [`Priority::ALL`] order.
    pub(crate) fn evicted(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.evicted[i].load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // A panic while holding this lock cannot leave a lane invalid
        // (every critical section is a push, a pop or a retain).
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_depth(&self, q: &Lanes) {
        for (lane, n) in q.iter().zip(&self.class_depth) {
            n.store(lane.len(), Ordering::Relaxed);
        }
        self.depth.store(q.iter().map(VecDeque::len).sum(), Ordering::SeqCst);
    }

    /// Joins the back of `class`'s lane. The caller must then call
    /// [`Queue::dispatch`] once, to catch a slot freed while it was joining.
    ///
    /// A full queue refuses ([`QueueError::Full`]), except to a critical
    /// request when a sheddable or normal request waits: the newest of those
    /// (sheddable first) is evicted and its place given to the critical one.
    pub(crate) fn enqueue(self: &Arc<Self>, class: Priority) -> Result<Waiting, QueueError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted;
        {
            let mut q = self.lock();
            let full = q.iter().map(VecDeque::len).sum::<usize>() >= self.max_depth.load(Ordering::Relaxed);
            evicted = match class {
                Priority::Critical if full => {
                    let from = [Priority::Sheddable, Priority::Normal]
                        .into_iter()
                        .find(|c| !q[c.lane()].is_empty());
                    from.and_then(|c| q[c.lane()].pop_back().map(|w| (c, w)))
                }
                _ => None,
            };
            let refused = match class {
                Priority::Critical => full && evicted.is_none(),
                Priority::Normal => full,
                Priority::Sheddable => {
                    full || q[Priority::Sheddable.lane()].len() >= self.sheddable_max.load(Ordering::Relaxed)
                }
            };
            if refused {
                self.late[class.lane()].fetch_add(1, Ordering::Relaxed);
                return Err(QueueError::Full);
            }
            q[class.lane()].push_back(Waiter { id, tx });
            self.publish_depth(&q);
        }
        // Outside the lock: dropping its sender wakes the evicted waiter.
        if let Some((c, waiter)) = evicted {
            self.evicted[c.lane()].fetch_add(1, Ordering::Relaxed);
            drop(waiter);
        }
        Ok(Waiting {
            id,
            class,
            rx,
            queue: Arc::clone(self),
            since: Instant::now(),
        })
    }

    /// Hands slots to waiters, by class then oldest first, for as long as
    /// `claim` finds one. A slot whose waiter has just gone is offered to
    /// the next.
    ///
    /// A leftover slot is dropped only after the lock is released: its drop
    /// re-enters `dispatch`, and the mutex is not re-entrant.
    pub(crate) fn dispatch(&self, mut claim: impl FnMut() -> Option<InFlight>) {
        let mut spare: Option<InFlight> = None;
        {
            let mut q = self.lock();
            while let Some(lane) = q.iter_mut().find(|l| !l.is_empty()) {
                let Some(slot) = spare.take().or_else(&mut claim) else {
                    break;
                };
                let waiter = lane.pop_front().expect("checked non-empty");
                if let Err(slot) = waiter.tx.send(slot) {
                    spare = Some(slot);
                }
            }
            self.publish_depth(&q);
        }
        drop(spare);
    }
}

/// Waiters the sheddable lane may hold: `share` of `max_depth`, rounded down.
fn sheddable_max(max_depth: usize, share: f64) -> usize {
    (max_depth as f64 * share.clamp(0.0, 1.0)).floor() as usize
}

/// A place in the queue. Dropping it (client gone) leaves the queue at once.
pub struct Waiting {
    id: u64,
    class: Priority,
    rx: oneshot::Receiver<InFlight>,
    queue: Arc<Queue>,
    since: Instant,
}

impl Waiting {
    /// Waits for a slot, at most `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<InFlight, QueueError> {
        let result = match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(slot)) => Ok(slot),
            // The sender is dropped unsent only when a critical request
            // evicted this waiter (a sent slot is received; `Waiting::drop`
            // runs after this).
            Ok(Err(_)) => Err(QueueError::Evicted),
            // A slot may have arrived in the instant the timer fired.
            Err(_) => self.rx.try_recv().map_err(|_| QueueError::Timeout(timeout)),
        };
        let waited = self.since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.queue.wait_seconds.record_ns(waited);
        let lane = self.class.lane();
        self.queue.waited[lane].fetch_add(1, Ordering::Relaxed);
        self.queue.waited_nanos[lane].fetch_add(waited, Ordering::Relaxed);
        if waited > self.queue.slo_ns.load(Ordering::Relaxed) {
            self.queue.late[lane].fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        let lane = &mut q[self.class.lane()];
        let before = lane.len();
        lane.retain(|w| w.id != self.id);
        if lane.len() != before {
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
        let first = q.enqueue(Priority::Normal).unwrap();
        let second = q.enqueue(Priority::Normal).unwrap();
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
        let w = q.enqueue(Priority::Normal).unwrap();
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
        let gone = q.enqueue(Priority::Normal).unwrap();
        let stays = q.enqueue(Priority::Normal).unwrap();
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
        let _w = q.enqueue(Priority::Normal).unwrap();
        assert_eq!(q.enqueue(Priority::Normal).err(), Some(QueueError::Full));
    }

    #[test]
    fn a_slot_offered_to_a_departed_waiter_passes_to_the_next() {
        let b = backend(1);
        let (p, q) = pool(10);
        // The race: the receiver is closed but the entry is still listed
        // (its Drop has not run yet).
        let mut gone = q.enqueue(Priority::Normal).unwrap();
        gone.rx.close();
        let mut stays = q.enqueue(Priority::Normal).unwrap();
        q.dispatch(|| InFlight::claim(&b, &p));
        assert_eq!(q.depth(), 0);
        let slot = stays.rx.try_recv().expect("the next waiter got the slot");
        assert_eq!(b.in_flight(), 1, "one slot, not two");
        drop(slot);
        drop((gone, stays));
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_go_by_class_then_arrival() {
        let b = backend(1);
        let (p, q) = pool(10);
        let held = InFlight::claim(&b, &p).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, class) in [
            ("shed-1", Priority::Sheddable),
            ("normal-1", Priority::Normal),
            ("crit-1", Priority::Critical),
            ("shed-2", Priority::Sheddable),
            ("crit-2", Priority::Critical),
            ("normal-2", Priority::Normal),
        ] {
            let w = q.enqueue(class).unwrap();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let slot = w.wait(Duration::from_secs(5)).await.unwrap();
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(slot);
            }));
        }
        assert_eq!(q.class_depths(), [2, 2, 2]);
        tokio::task::yield_now().await;
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["crit-1", "crit-2", "normal-1", "normal-2", "shed-1", "shed-2"]
        );
        assert_eq!((q.depth(), q.class_depths()), (0, [0, 0, 0]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_request_evicts_the_newest_sheddable_then_normal_waiter() {
        let (_p, q) = pool(3);
        q.set_limits(3, 1.0);
        let normal = q.enqueue(Priority::Normal).unwrap();
        let old_shed = q.enqueue(Priority::Sheddable).unwrap();
        let new_shed = q.enqueue(Priority::Sheddable).unwrap();
        assert_eq!(
            q.enqueue(Priority::Normal).err(),
            Some(QueueError::Full),
            "normal never evicts"
        );
        assert_eq!(q.enqueue(Priority::Sheddable).err(), Some(QueueError::Full));
        let crit_1 = q.enqueue(Priority::Critical).unwrap();
        assert_eq!(q.class_depths(), [1, 1, 1]);
        assert_eq!(
            new_shed.wait(Duration::from_secs(5)).await.unwrap_err(),
            QueueError::Evicted
        );
        let crit_2 = q.enqueue(Priority::Critical).unwrap();
        let crit_3 = q.enqueue(Priority::Critical).unwrap();
        assert_eq!(
            old_shed.wait(Duration::from_secs(5)).await.unwrap_err(),
            QueueError::Evicted
        );
        assert_eq!(
            normal.wait(Duration::from_secs(5)).await.unwrap_err(),
            QueueError::Evicted
        );
        assert_eq!(q.class_depths(), [3, 0, 0]);
        assert_eq!(
            q.enqueue(Priority::Critical).err(),
            Some(QueueError::Full),
            "nothing left to evict"
        );
        assert_eq!(q.evicted(), [0, 1, 2]);
        drop((crit_1, crit_2, crit_3));
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn sheddable_waiters_hold_at_most_their_share() {
        let (_p, q) = pool(10);
        q.set_limits(10, 0.3);
        let shed: Vec<_> = (0..3).map(|_| q.enqueue(Priority::Sheddable).unwrap()).collect();
        assert_eq!(q.enqueue(Priority::Sheddable).err(), Some(QueueError::Full));
        let others: Vec<_> = (0..7).map(|_| q.enqueue(Priority::Normal).unwrap()).collect();
        assert_eq!(q.depth(), 10);
        q.set_limits(10, 0.0);
        drop(shed);
        assert_eq!(
            q.enqueue(Priority::Sheddable).err(),
            Some(QueueError::Full),
            "share 0: never queues"
        );
        drop(others);
    }
}
