//! The micro-cache: responses of `cache = { ... }` routes kept in memory
//! for a second or so, with one upstream request per key at a time.
//!
//! Data path, below `proxy` (which serves from it and fetches for it) and
//! `state` (which carries the one [`Cache`] from snapshot to snapshot, so
//! a reload keeps what is stored); it imports only the `config` leaf.
//! Nothing here awaits or does I/O: `proxy/cached.rs` runs the fetches.
//!
//! - Storage is `moka` (a concurrent, size-bounded cache): each object
//!   weighs its bytes (with the placeholders of the fields each answer
//!   sets), all entries together at most `[cache] max_bytes`, and each
//!   expires at the end of its grace. Evictions of objects for size are
//!   counted by moka's eviction listener.
//! - One map holds everything, keyed by base key (host, path, query) or
//!   variant key (the base key and the request's values of the `Vary`
//!   fields). Under its base key sits either the object, when its
//!   response named no `Vary`, or the `Vary` list of its last response,
//!   from which a lookup builds the variant key: a hit of an object that
//!   does not vary is one read. A list shares the size bound and is kept
//!   an hour after its last read; a list evicted or expired makes its
//!   variants unreachable until the next miss writes it again.
//! - A [`Flight`] per key being fetched lets concurrent misses wait for
//!   that one request (coalescing) instead of each going upstream; the
//!   flight table is a `DashMap` whose shard lock is held only to insert
//!   or remove, never across an await.
//! - A key whose answer could not be stored is marked hit-for-miss until
//!   the route's `ttl` has passed: later misses go upstream at once
//!   rather than queueing behind each other.
//! - The rules of what may be stored are pure functions in [`rules`].
//!
//! Invariants: an object is never served past `lifetime + grace`; a
//! flight is always landed (a dropped [`Leader`] lands `Uncacheable`), so
//! no waiter waits past its `lock_timeout`.

pub(crate) mod rules;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use rules::Freshness;

/// How long a base key's `Vary` list is kept after it was last read (its
/// objects come and go).
const VARY_KEEP: Duration = Duration::from_secs(3600);
/// Hit-for-miss marks remembered, at most.
const PASS_KEYS: u64 = 100_000;
/// What an object weighs beyond its body and key (its head, bookkeeping).
const OVERHEAD: usize = 256;

/// One stored response.
#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) status: StatusCode,
    /// The backend's fields minus hop-by-hop ones, with placeholders for
    /// the fields each answer sets (`Age`, `x-cache`).
    pub(crate) headers: HeaderMap,
    /// The fields of its `Vary`, so a waiter can tell whether it is its variant.
    pub(crate) vary: Arc<[HeaderName]>,
    pub(crate) body: Bytes,
    stored: Instant,
    freshness: Freshness,
    /// Set while one background request refreshes this stale object.
    refreshing: AtomicBool,
}

/// What a key holds.
#[derive(Debug, Clone)]
enum Entry {
    Object(Arc<Object>),
    /// Under a base key: its responses vary on these fields, and their
    /// objects are under the variant keys.
    Vary(Arc<[HeaderName]>),
}

impl Entry {
    fn object(self) -> Option<Arc<Object>> {
        match self {
            Entry::Object(o) => Some(o),
            Entry::Vary(_) => None,
        }
    }

    fn weight(&self, key: &str) -> u32 {
        match self {
            Entry::Object(o) => o.weight(key),
            Entry::Vary(fields) => weigh(key.len() + fields.iter().map(|f| f.as_str().len()).sum::<usize>()),
        }
    }

    fn keep_for(&self) -> Duration {
        match self {
            Entry::Object(o) => o.keep_for(),
            Entry::Vary(_) => VARY_KEEP,
        }
    }
}

/// Whether an object may be served now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usable {
    Fresh,
    /// Past its lifetime, within its grace.
    Stale,
    /// Past its grace: as good as absent.
    Dead,
}

impl Object {
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
        now: Instant,
    ) -> Object {
        Object {
            status,
            vary: rules::vary_fields(&headers).unwrap_or_default().into(),
            headers,
            body,
            stored: now,
            freshness,
            refreshing: AtomicBool::new(false),
        }
    }

    /// Its age now (RFC 9111 4.2.3: what it had on arrival plus its time here).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age + now.saturating_duration_since(self.stored)
    }

    pub(crate) fn usable(&self, now: Instant) -> Usable {
        let age = self.age(now);
        if age < self.freshness.lifetime {
            Usable::Fresh
        } else if age < self.freshness.lifetime + self.freshness.grace {
            Usable::Stale
        } else {
            Usable::Dead
        }
    }

    /// `true` for the one caller that should refresh this stale object.
    pub(crate) fn claim_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Its refresh failed: the next stale request may try again.
    pub(crate) fn refresh_failed(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// How long after it was stored moka may drop it.
    fn keep_for(&self) -> Duration {
        (self.freshness.lifetime + self.freshness.grace).saturating_sub(self.freshness.initial_age)
    }

    fn weight(&self, key: &str) -> u32 {
        let head: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        weigh(key.len() + head + self.body.len())
    }
}

/// moka's weight of an entry of `bytes` (key and value) plus [`OVERHEAD`].
fn weigh(bytes: usize) -> u32 {
    u32::try_from(bytes + OVERHEAD).unwrap_or(u32::MAX)
}

/// How a fetch ended, as the requests waiting for it see it.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// Stored under this key. A waiter whose request differs in a field
    /// the response varies on (the leader could not know the `Vary` list
    /// before the answer came) may not use it.
    Stored(Arc<str>, Arc<Object>),
    /// Not stored (not storable, too large, or the backend failed): each
    /// waiter goes upstream itself.
    Uncacheable,
}

/// One key being fetched.
struct Flight {
    landed: watch::Sender<Option<Landing>>,
}

/// The request that fetches a key; the others wait on its [`Follower`].
/// Dropping it without [`Leader::land`] releases them as `Uncacheable`.
pub(crate) struct Leader {
    cache: Arc<Cache>,
    key: Arc<str>,
    flight: Arc<Flight>,
}

/// A request waiting for a leader's answer.
pub(crate) struct Follower(watch::Receiver<Option<Landing>>);

/// A miss either fetches the key or waits for the request that does.
pub(crate) enum Role {
    Leader(Leader),
    Follower(Follower),
}

/// Results a request of a cached route can have (the `x-cache` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 4] = [Outcome::Hit, Outcome::Miss, Outcome::Stale, Outcome::Bypass];

    /// The `x-cache` value.
    pub(crate) fn header(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// The metric label and access-log value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }
}

/// A pool's cache counts.
#[derive(Debug, Default)]
pub(crate) struct PoolCounts {
    results: [AtomicU64; 4],
    /// Misses that waited for another request's fetch.
    coalesced: AtomicU64,
}

/// A point-in-time copy of the counts, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub(crate) pools: Vec<(Arc<str>, [u64; 4], u64)>,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) max_bytes: u64,
    pub(crate) evictions: u64,
    pub(crate) stored: u64,
    pub(crate) not_stored: u64,
    pub(crate) refreshes: u64,
}

impl Counts {
    /// Requests answered from the cache (hits and stale serves), and all
    /// that could have been (those and the misses; bypasses left out).
    pub(crate) fn served_and_usable(&self) -> (u64, u64) {
        self.pools.iter().fold((0, 0), |(s, a), (_, [hit, miss, stale, _], _)| {
            (s + hit + stale, a + hit + miss + stale)
        })
    }
}

/// The store, its flights and its counts; one per process, kept across
/// reloads while `[cache] max_bytes` stays the same.
pub(crate) struct Cache {
    /// Objects, and the `Vary` lists of base keys whose responses vary.
    entries: moka::sync::Cache<Arc<str>, Entry>,
    /// Hit-for-miss marks: the key's answer was not storable until then.
    passes: moka::sync::Cache<Arc<str>, Instant>,
    /// Set before the first mark: until then a miss skips `passes`.
    marked: AtomicBool,
    flights: DashMap<Arc<str>, Arc<Flight>>,
    counts: DashMap<Arc<str>, Arc<PoolCounts>>,
    max_bytes: u64,
    evictions: Arc<AtomicU64>,
    /// `Vary` lists among the entries (not objects).
    vary_lists: Arc<AtomicU64>,
    stored: AtomicU64,
    not_stored: AtomicU64,
    refreshes: AtomicU64,
}

struct ExpireAtGrace;

impl moka::Expiry<Arc<str>, Entry> for ExpireAtGrace {
    fn expire_after_create(&self, _: &Arc<str>, value: &Entry, _: std::time::Instant) -> Option<Duration> {
        Some(value.keep_for())
    }

    /// A `Vary` list lives while its variants are read: each read past
    /// half its time gives it the whole of it again (objects keep theirs).
    fn expire_after_read(
        &self,
        _: &Arc<str>,
        value: &Entry,
        _: std::time::Instant,
        left: Option<Duration>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        match value {
            Entry::Vary(_) if left.is_some_and(|d| d < VARY_KEEP / 2) => Some(VARY_KEEP),
            _ => left,
        }
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        value: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for())
    }
}

impl Cache {
    pub(crate) fn new(max_bytes: u64) -> Arc<Cache> {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&evictions);
        let vary_lists = Arc::new(AtomicU64::new(0));
        let lists = Arc::clone(&vary_lists);
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, v: &Entry| v.weight(k))
            .expire_after(ExpireAtGrace)
            .eviction_listener(move |_, v: Entry, cause| match v {
                Entry::Object(_) if cause == RemovalCause::Size => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Entry::Object(_) => {}
                // Every removal, a replacement too: each insert counted one.
                Entry::Vary(_) => {
                    lists.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .build();
        Arc::new(Cache {
            entries,
            passes: moka::sync::Cache::builder()
                .max_capacity(PASS_KEYS)
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            marked: AtomicBool::new(false),
            flights: DashMap::new(),
            counts: DashMap::new(),
            max_bytes,
            evictions,
            vary_lists,
            stored: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        })
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// What is stored for a request, and under which key: its variant key
    /// (the base key plus the values of the fields its base key's
    /// responses vary on) when they vary, `None` for the base key itself.
    pub(crate) fn lookup(&self, base: &str, request: &HeaderMap) -> (Option<Arc<str>>, Option<Arc<Object>>) {
        match self.entries.get(base) {
            Some(Entry::Object(found)) => (None, Some(found)),
            Some(Entry::Vary(fields)) => {
                let key: Arc<str> = rules::variant_key(base, &fields, request).into();
                let found = self.entries.get(&key).and_then(Entry::object);
                (Some(key), found)
            }
            None => (None, None),
        }
    }

    /// The key for `object`, fetched for a request with `request` fields.
    /// A varying object's `Vary` list is written under the base key, so
    /// later lookups build the same key; for one that does not vary this
    /// writes nothing (its [`Cache::store`] under the base key replaces
    /// any list there).
    pub(crate) fn key_for(&self, base: &str, object: &Object, request: &HeaderMap) -> Arc<str> {
        // An object that does not vary is stored under the base key itself
        // (replacing any `Vary` list there: its resource stopped varying).
        if !object.vary.is_empty() {
            let remembered = match self.entries.get(base) {
                Some(Entry::Vary(fields)) => fields[..] == object.vary[..],
                _ => false,
            };
            if !remembered {
                self.vary_lists.fetch_add(1, Ordering::Relaxed);
                self.entries.insert(base.into(), Entry::Vary(Arc::clone(&object.vary)));
            }
        }
        variant_of(base, object, request)
    }

    pub(crate) fn store(&self, key: Arc<str>, object: Arc<Object>) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        if self.any_passes() {
            self.passes.invalidate(&key);
        }
        self.entries.insert(key, Entry::Object(object));
    }

    /// Removes `stale`, the object under `key`, whose refresh was not
    /// storable; whatever has replaced it since (a newer object, or the
    /// `Vary` list of a response that now varies) stays.
    pub(crate) fn remove(&self, key: &Arc<str>, stale: &Object) {
        self.entries
            .entry(Arc::clone(key))
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(Entry::Object(o)) if std::ptr::eq(Arc::as_ptr(&o), stale) => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Marks `key` hit-for-miss for `ttl`: its answer was not storable.
    pub(crate) fn pass(&self, key: Arc<str>, ttl: Duration, now: Instant) {
        self.not_stored.fetch_add(1, Ordering::Relaxed);
        self.marked.store(true, Ordering::Relaxed);
        self.passes.insert(key, now + ttl);
    }

    /// Whether misses of `key` go upstream without waiting for each other.
    pub(crate) fn passing(&self, key: &str, now: Instant) -> bool {
        self.any_passes() && self.passes.get(key).is_some_and(|until| now < until)
    }

    /// Whether any key was ever marked hit-for-miss. Until then a miss
    /// skips the marks' map (a moka read and an invalidation: 1,200
    /// instructions of a miss's 31,000).
    fn any_passes(&self) -> bool {
        self.marked.load(Ordering::Relaxed)
    }

    /// Leads the fetch of `key`, or follows the request already leading it.
    pub(crate) fn join(self: &Arc<Cache>, key: &Arc<str>) -> Role {
        match self.flights.entry(Arc::clone(key)) {
            dashmap::Entry::Occupied(e) => Role::Follower(Follower(e.get().landed.subscribe())),
            dashmap::Entry::Vacant(e) => {
                let flight = Arc::new(Flight {
                    landed: watch::Sender::new(None),
                });
                e.insert(Arc::clone(&flight));
                Role::Leader(Leader {
                    cache: Arc::clone(self),
                    key: Arc::clone(key),
                    flight,
                })
            }
        }
    }

    /// Counts one request of a cached route in `pool`.
    pub(crate) fn count(&self, pool: &Arc<str>, outcome: Outcome, coalesced: bool) {
        let counts = match self.counts.get(pool) {
            Some(c) => Arc::clone(&c),
            None => Arc::clone(&self.counts.entry(Arc::clone(pool)).or_default()),
        };
        counts.results[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if coalesced {
            counts.coalesced.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A stale object is being refreshed in the background.
    pub(crate) fn count_refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> Counts {
        let mut pools: Vec<_> = self
            .counts
            .iter()
            .map(|e| {
                let c = e.value();
                (
                    Arc::clone(e.key()),
                    std::array::from_fn(|i| c.results[i].load(Ordering::Relaxed)),
                    c.coalesced.load(Ordering::Relaxed),
                )
            })
            .collect();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        self.entries.run_pending_tasks();
        Counts {
            pools,
            entries: self
                .entries
                .entry_count()
                .saturating_sub(self.vary_lists.load(Ordering::Relaxed)),
            bytes: self.entries.weighted_size(),
            max_bytes: self.max_bytes,
            evictions: self.evictions.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            not_stored: self.not_stored.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
        }
    }
}

/// The key `object` would have for a request with `request` fields.
pub(crate) fn variant_of(base: &str, object: &Object, request: &HeaderMap) -> Arc<str> {
    if object.vary.is_empty() {
        base.into()
    } else {
        rules::variant_key(base, &object.vary, request).into()
    }
}

// === impl Leader ===

impl Leader {
    /// Releases the waiters with `landing` and ends the flight.
    pub(crate) fn land(self, landing: Landing) {
        self.flight.landed.send_replace(Some(landing));
        // Drop removes the flight.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.cache
            .flights
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
        if self.flight.landed.borrow().is_none() {
            self.flight.landed.send_replace(Some(Landing::Uncacheable));
        }
    }
}

// === impl Follower ===

impl Follower {
    /// The leader's landing, or `None` after `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Option<Landing> {
        let landed = tokio::time::timeout(timeout, self.0.wait_for(Option::is_some)).await;
        match landed {
            Ok(Ok(l)) => l.clone(),
            // The sender is gone only after landing; be safe anyway.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moka::Expiry;

    fn fresh(secs: u64, grace: u64) -> Freshness {
        Freshness {
            lifetime: Duration::from_secs(secs),
            initial_age: Duration::ZERO,
            grace: Duration::from_secs(grace),
        }
    }

    /// A one-byte 200, fresh for 1 s and stale for 2 more.
    fn small(now: Instant) -> Object {
        Object::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            fresh(1, 2),
            now,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_is_fresh_then_stale_then_dead() {
        let now = Instant::now();
        let o = small(now);
        assert_eq!(o.usable(now), Usable::Fresh);
        assert_eq!(o.usable(now + Duration::from_millis(1500)), Usable::Stale);
        assert_eq!(o.usable(now + Duration::from_secs(3)), Usable::Dead);
        assert!(o.claim_refresh());
        assert!(!o.claim_refresh(), "one refresh per stale object");
    }

    #[tokio::test]
    async fn a_key_is_hit_for_miss_from_its_mark_until_an_answer_is_stored() {
        let cache = Cache::new(1 << 20);
        let now = Instant::now();
        let key: Arc<str> = "k".into();
        assert!(!cache.passing(&key, now), "nothing marked yet");
        cache.pass(Arc::clone(&key), Duration::from_secs(10), now);
        assert!(cache.passing(&key, now));
        assert!(!cache.passing("other", now));
        assert!(!cache.passing(&key, now + Duration::from_secs(10)), "the mark lapses");
        let object = small(now);
        cache.store(Arc::clone(&key), Arc::new(object));
        assert!(!cache.passing(&key, now), "a stored answer clears the mark");
    }

    #[tokio::test]
    async fn a_base_key_holds_its_object_or_the_vary_list_of_its_variants() {
        let cache = Cache::new(1 << 20);
        let now = Instant::now();
        let plain = Arc::new(small(now));
        let mut varying_fields = HeaderMap::new();
        varying_fields.insert(http::header::VARY, "accept-language".parse().unwrap());
        let varying = Arc::new(Object::new(
            StatusCode::OK,
            varying_fields,
            Bytes::from_static(b"en"),
            fresh(1, 2),
            now,
        ));
        let mut en = HeaderMap::new();
        en.insert(http::header::ACCEPT_LANGUAGE, "en".parse().unwrap());
        let mut fr = HeaderMap::new();
        fr.insert(http::header::ACCEPT_LANGUAGE, "fr".parse().unwrap());

        // An object that does not vary sits under the base key.
        let key = cache.key_for("b", &plain, &en);
        assert_eq!(&*key, "b");
        cache.store(key, Arc::clone(&plain));
        let (key, found) = cache.lookup("b", &fr);
        assert_eq!(key, None, "the base key");
        assert!(found.is_some_and(|o| Arc::ptr_eq(&o, &plain)));

        // The resource starts to vary: the base key holds the list, each
        // variant its own key, and only objects count as entries.
        let key = cache.key_for("b", &varying, &en);
        assert_ne!(&*key, "b");
        cache.store(Arc::clone(&key), Arc::clone(&varying));
        let (en_key, found) = cache.lookup("b", &en);
        assert_eq!(en_key.as_ref(), Some(&key));
        assert!(found.is_some_and(|o| Arc::ptr_eq(&o, &varying)));
        let (fr_key, found) = cache.lookup("b", &fr);
        let fr_key = fr_key.expect("a variant key");
        assert!(fr_key != key && fr_key.starts_with("b\n") && found.is_none());
        assert_eq!(cache.counts().entries, 1);
        // A refresh of the plain object that could not be stored removes
        // that object only, not the list that replaced it.
        let base: Arc<str> = "b".into();
        cache.remove(&base, &plain);
        assert!(cache.lookup("b", &en).1.is_some(), "the list stays");

        // It stops varying: the base key holds the object again.
        let key = cache.key_for("b", &plain, &fr);
        cache.store(key, Arc::clone(&plain));
        let (key, found) = cache.lookup("b", &en);
        assert_eq!(key, None);
        assert!(found.is_some_and(|o| Arc::ptr_eq(&o, &plain)));
        assert_eq!(
            cache.counts().entries,
            2,
            "the base object and the en variant, not yet expired"
        );
        cache.remove(&base, &plain);
        assert!(cache.lookup("b", &en).1.is_none(), "the stale object itself goes");
    }

    #[tokio::test]
    async fn entries_count_objects_only_as_vary_lists_come_and_go() {
        let cache = Cache::new(1 << 20);
        let now = Instant::now();
        let varying_on = |field: &'static str| {
            let mut fields = HeaderMap::new();
            fields.insert(http::header::VARY, http::HeaderValue::from_static(field));
            Arc::new(Object::new(
                StatusCode::OK,
                fields,
                Bytes::from_static(b"x"),
                fresh(60, 0),
                now,
            ))
        };
        let request = HeaderMap::new();
        // Two lists in turn under one base key, then a list replaced by an
        // object, then removed: each removal of a list is counted once.
        for (n, field) in ["accept-language", "accept-encoding"].into_iter().enumerate() {
            let object = varying_on(field);
            let key = cache.key_for("b", &object, &request);
            cache.store(key, object);
            assert_eq!(cache.counts().entries, n as u64 + 1, "{field}");
        }
        let plain = Arc::new(small(now));
        cache.store(cache.key_for("b", &plain, &request), Arc::clone(&plain));
        assert_eq!(cache.counts().entries, 3, "two variants and the base object");
        let object = varying_on("accept-language");
        cache.store(cache.key_for("b", &object, &request), object);
        cache.entries.invalidate("b");
        assert_eq!(cache.counts().entries, 2, "the list is gone, the variants stay");
        assert_eq!(cache.vary_lists.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_vary_list_in_use_is_kept_and_an_object_keeps_its_own_lifetime() {
        let (key, now): (Arc<str>, _) = ("b".into(), Instant::now().into_std());
        let list = Entry::Vary(vec![http::header::ACCEPT_LANGUAGE].into());
        let read = |entry: &Entry, left: Duration| ExpireAtGrace.expire_after_read(&key, entry, now, Some(left), now);
        assert_eq!(
            read(&list, VARY_KEEP / 3),
            Some(VARY_KEEP),
            "read in its last half: renewed"
        );
        assert_eq!(
            read(&list, VARY_KEEP * 2 / 3),
            Some(VARY_KEEP * 2 / 3),
            "in its first half: as it was"
        );
        let object = Entry::Object(Arc::new(small(Instant::now())));
        assert_eq!(read(&object, Duration::from_secs(1)), Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn followers_wait_for_the_leader_and_a_dropped_leader_releases_them() {
        let cache = Cache::new(1 << 20);
        let key: Arc<str> = "k".into();
        let Role::Leader(leader) = cache.join(&key) else {
            panic!("first is leader")
        };
        let Role::Follower(f) = cache.join(&key) else {
            panic!("second follows")
        };
        drop(leader);
        assert!(matches!(
            f.wait(Duration::from_secs(5)).await,
            Some(Landing::Uncacheable)
        ));
        assert!(matches!(cache.join(&key), Role::Leader(_)), "the flight ended");
    }
}
