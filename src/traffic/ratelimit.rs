//! Per-client rate limits: GCRA (the generic cell rate algorithm) over a
//! keyed concurrent map with a bounded key count.
//!
//! Data path ([`RateLimit::check`]), with a control-path upkeep
//! ([`RateLimit::sweep`], run off the workers once a second by the
//! composition root).
//!
//! **GCRA.** Each client (key) has one number: its theoretical arrival time
//! (TAT), in nanoseconds of [`crate::clock::clock_ns`]. A request at `now`
//! is admitted when `max(TAT, now) + T - now <= burst * T` (`T` = the
//! period divided by the rate), and then moves the TAT to
//! `max(TAT, now) + T`. So an idle client may send `burst` requests at once,
//! then one per `T`; a refused request changes nothing and learns how long
//! until one would pass ([`Gcra::decide`], a pure function). A key whose TAT
//! is not after `now` is idle: forgetting it loses nothing.
//!
//! **No global lock.** The TATs live in a [`DashMap`] of 64 shards, each
//! an `AtomicU64`: a known client takes a shard's *read* lock and one CAS;
//! only a new client takes a shard's write lock to insert itself.
//!
//! **Bounded memory.** A rule remembers at most `max_keys` clients. The
//! count is reserved with one atomic add *before* inserting, so it can
//! never overshoot. When the table is full, a new client is admitted
//! **untracked** (and counted, `untracked_total`) rather than growing the
//! table or refusing it: refusing every new client while the table is full
//! would let whoever fills it lock out all other customers, which is the
//! outage rate limits exist to prevent; an attacker already holding
//! `max_keys` live entries gains nothing from one more. The sweep removes
//! idle keys every [`SWEEP_INTERVAL`] (each shard under its own write lock,
//! briefly), so room comes back within a second of clients going quiet.
//!
//! **Keys.** IPv4 clients by address, IPv6 clients by their leading
//! `ipv6_prefix` bits (a /64 by default); header and cookie values by a
//! keyed 64-bit hash (SipHash with a per-process random key, so nobody can
//! aim collisions), stored in the `ff..ff::/64` corner of the address space,
//! which is multicast and so never a client's source address.
//!
//! **Reloads.** The [`Limiter`] (the map and the counters) belongs to the
//! rule's name: `state/build.rs` hands it from one snapshot's rule to the
//! next one of the same name, so a reload neither resets a client's budget
//! nor its rule's counts; new parameters (rate, burst) apply to the TATs
//! already there.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::config::{HashKey, RateLimitConfig};

/// How often idle keys are swept away.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Shards of each rule's map: enough that a sweep holds any one shard's
/// lock only briefly (1,000,000 keys: ~16,000 a shard).
const SHARDS: usize = 64;

/// Clients shown as "limited now" per rule (the ones furthest over).
const LIMITED_SHOWN: usize = 5;

/// The high 64 bits of a hashed (header or cookie) key: `ffff:ffff:ffff:ffff::/64`,
/// multicast, never a source address.
const VALUE_KEYS: u128 = (u64::MAX as u128) << 64;

// === impl Gcra ===

/// One rule's GCRA parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// `T`: the period divided by the rate.
    interval_ns: u64,
    /// `burst * T`: how far ahead of `now` a TAT may run.
    tolerance_ns: u64,
}

impl Gcra {
    /// `burst` requests at once, then one per `interval_ns`.
    pub(crate) fn new(interval_ns: u64, burst: u32) -> Gcra {
        let interval_ns = interval_ns.max(1);
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// A request at `now` against a client whose TAT is `tat` (0 for a
    /// client never seen): `Ok(new TAT)` when admitted, `Err(ns)` until a
    /// request would be admitted when refused.
    #[inline]
    pub(crate) fn decide(self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval_ns);
        let ahead = next - now;
        if ahead <= self.tolerance_ns {
            Ok(next)
        } else {
            Err(ahead - self.tolerance_ns)
        }
    }

    /// Whether a client with this TAT would be refused at `now`.
    fn refuses(self, tat: u64, now: u64) -> bool {
        self.decide(tat, now).is_err()
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(1_000_000_000).max(1)
}

// === impl Key ===

/// A client as a rule tells clients apart: an address (or IPv6 prefix), or
/// the hash of a header or cookie value. Fixed size: no allocation per
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u128);

impl Key {
    /// The client's address: IPv4 whole (an IPv4-mapped IPv6 address is
    /// the IPv4 client), IPv6 cut to its first `ipv6_prefix` bits.
    #[inline]
    pub(crate) fn client(ip: IpAddr, ipv6_prefix: u8) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                    .unwrap_or(0);
                Key(u128::from(v6) & mask)
            }
        }
    }

    /// A header's or cookie's value.
    #[inline]
    pub(crate) fn value(bytes: &[u8]) -> Key {
        static SEED: OnceLock<RandomState> = OnceLock::new();
        Key(VALUE_KEYS | u128::from(SEED.get_or_init(RandomState::new).hash_one(bytes)))
    }

    /// As `/stats` shows it: the address, the IPv6 prefix, or `#hash`.
    fn describe(self, ipv6_prefix: u8) -> String {
        if self.0 & VALUE_KEYS == VALUE_KEYS {
            return format!("#{:016x}", self.0 as u64);
        }
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("{v6}/{ipv6_prefix}"),
        }
    }
}

// === impl Limiter ===

/// What a rule remembers across reloads: each client's TAT and the rule's
/// counts.
pub(crate) struct Limiter {
    tats: DashMap<Key, AtomicU64>,
    /// Keys held (reserved before inserting, released by the sweep).
    len: AtomicUsize,
    limited: AtomicU64,
    untracked: AtomicU64,
    /// The clients refused at the last sweep, furthest over first.
    limited_now: Mutex<LimitedNow>,
}

/// The rule's refusing clients as of the last sweep.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct LimitedNow {
    /// How many clients would have been refused at that moment.
    pub(crate) clients: usize,
    /// The ones furthest over their limit, with the wait each was facing.
    pub(crate) top: Vec<LimitedClient>,
}

/// One refusing client, as `/stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LimitedClient {
    pub(crate) key: String,
    pub(crate) retry_after_ms: u64,
}

impl Limiter {
    fn new() -> Limiter {
        Limiter {
            tats: DashMap::with_shard_amount(SHARDS),
            len: AtomicUsize::new(0),
            limited: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            limited_now: Mutex::new(LimitedNow::default()),
        }
    }

    /// One request of `key` at `now`: `Err(ns until one would pass)` when
    /// over the limit.
    fn check(&self, key: Key, now: u64, gcra: Gcra, max_keys: usize) -> Result<(), u64> {
        if let Some(tat) = self.tats.get(&key) {
            return self.take(&tat, now, gcra);
        }
        // A new client: reserve its place first, so the count never passes
        // `max_keys` however many insert at once.
        if self.len.fetch_add(1, Ordering::Relaxed) >= max_keys {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.tats.entry(key) {
            Entry::Occupied(e) => {
                // Another request of the same client inserted it first.
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.take(e.get(), now, gcra)
            }
            Entry::Vacant(e) => match gcra.decide(0, now) {
                Ok(tat) => {
                    e.insert(AtomicU64::new(tat));
                    Ok(())
                }
                // Only when `now` is before the clock's first reading.
                Err(wait) => {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    Err(wait)
                }
            },
        }
    }

    /// Moves one client's TAT forward if the request passes (a CAS loop:
    /// concurrent requests of one client each take their own `T`).
    #[inline]
    fn take(&self, tat: &AtomicU64, now: u64, gcra: Gcra) -> Result<(), u64> {
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = gcra.decide(current, now).inspect_err(|_| {
                self.limited.fetch_add(1, Ordering::Relaxed);
            })?;
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Forgets idle clients (TAT not after `now`) and notes who is refused
    /// at `now`. Returns how many keys it removed.
    fn sweep(&self, now: u64, gcra: Gcra, ipv6_prefix: u8) -> usize {
        let mut removed = 0;
        let mut refusing = 0;
        let mut top: Vec<(u64, Key)> = Vec::with_capacity(LIMITED_SHOWN + 1);
        self.tats.retain(|key, tat| {
            let tat = tat.load(Ordering::Relaxed);
            if tat <= now {
                removed += 1;
                return false;
            }
            if gcra.refuses(tat, now) {
                refusing += 1;
                let wait = gcra.decide(tat, now).err().unwrap_or(0);
                if top.len() < LIMITED_SHOWN || top.last().is_some_and(|(w, _)| *w < wait) {
                    let at = top.partition_point(|(w, _)| *w >= wait);
                    top.insert(at, (wait, *key));
                    top.truncate(LIMITED_SHOWN);
                }
            }
            true
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        let now_limited = LimitedNow {
            clients: refusing,
            top: top
                .into_iter()
                .map(|(wait, key)| LimitedClient {
                    key: key.describe(ipv6_prefix),
                    retry_after_ms: wait.div_ceil(1_000_000),
                })
                .collect(),
        };
        *self.limited_now.lock().unwrap_or_else(|p| p.into_inner()) = now_limited;
        removed
    }
}

// === impl RateLimit ===

/// One `[[rate_limit]]` rule as a snapshot holds it: what it matches, its
/// parameters, and its [`Limiter`] (shared with the previous and next
/// snapshots' rule of the same name).
pub(crate) struct RateLimit {
    pub(crate) name: Arc<str>,
    pub(crate) config: RateLimitConfig,
    gcra: Gcra,
    limiter: Arc<Limiter>,
}

/// A rule's counts, for `/stats` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RateLimitCounts {
    /// Requests refused since the rule appeared (kept across reloads).
    pub(crate) limited_total: u64,
    /// Clients remembered now.
    pub(crate) keys: usize,
    /// New clients admitted untracked because the table was full.
    pub(crate) untracked_total: u64,
    /// Who was over the limit at the last sweep.
    pub(crate) limited_now: LimitedNow,
}

impl RateLimit {
    /// The rule for `config`, keeping `previous`'s limiter (the same name's
    /// rule in the snapshot being replaced) when there is one.
    pub(crate) fn new(config: &RateLimitConfig, previous: Option<&RateLimit>) -> RateLimit {
        RateLimit {
            name: previous.map_or_else(|| Arc::from(config.name.as_str()), |p| Arc::clone(&p.name)),
            config: config.clone(),
            gcra: Gcra::new(config.rate.interval_ns(), config.burst),
            limiter: previous.map_or_else(|| Arc::new(Limiter::new()), |p| Arc::clone(&p.limiter)),
        }
    }

    /// Whether the rule applies to a request for `host` (without port,
    /// any case) and `path`.
    #[inline]
    pub(crate) fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.config.host, host) {
            (None, _) => true,
            (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
            (Some(_), None) => false,
        };
        host_ok && self.config.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }

    /// What tells this rule's clients apart.
    #[inline]
    pub(crate) fn key_kind(&self) -> &HashKey {
        &self.config.key
    }

    /// The key of a client known only by its address.
    #[inline]
    pub(crate) fn client_key(&self, ip: IpAddr) -> Key {
        Key::client(ip, self.config.ipv6_prefix)
    }

    /// One request of `key` at `now` (ns, [`crate::clock::clock_ns`]):
    /// `Err(ns until a request would pass)` when over the limit.
    #[inline]
    pub(crate) fn check(&self, key: Key, now: u64) -> Result<(), u64> {
        self.limiter.check(key, now, self.gcra, self.config.max_keys)
    }

    /// Control path: forgets idle clients and notes who is limited.
    pub(crate) fn sweep(&self, now: u64) -> usize {
        self.limiter.sweep(now, self.gcra, self.config.ipv6_prefix)
    }

    /// Whether the rule remembers anyone (nothing to sweep otherwise).
    pub(crate) fn has_keys(&self) -> bool {
        self.limiter.len.load(Ordering::Relaxed) > 0
    }

    /// Its counts now.
    pub(crate) fn counts(&self) -> RateLimitCounts {
        let l = &self.limiter;
        RateLimitCounts {
            limited_total: l.limited.load(Ordering::Relaxed),
            keys: l.len.load(Ordering::Relaxed),
            untracked_total: l.untracked.load(Ordering::Relaxed),
            limited_now: l.limited_now.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.name)
            .field("gcra", &self.gcra)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Rate;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn rule(rate: &str, burst: u32, max_keys: usize) -> RateLimit {
        let config = RateLimitConfig {
            name: "api".into(),
            host: None,
            path_prefix: None,
            key: HashKey::ClientIp,
            rate: crate::config::units::parse_rate(rate).unwrap(),
            burst,
            ipv6_prefix: 64,
            max_keys,
        };
        RateLimit::new(&config, None)
    }

    fn ip(s: &str) -> Key {
        Key::client(s.parse().unwrap(), 64)
    }

    /// Requests admitted out of `n` sent at `now` (all at the same instant).
    fn admitted(r: &RateLimit, key: Key, now: u64, n: usize) -> usize {
        (0..n).filter(|_| r.check(key, now).is_ok()).count()
    }

    #[test]
    fn gcra_admits_exactly_the_burst_then_one_per_interval() {
        // 20/s with a burst of 40: T = 50 ms, 40 at once.
        let g = Gcra::new(
            Rate {
                count: 20,
                per: Duration::from_secs(1),
            }
            .interval_ns(),
            40,
        );
        let now = 10 * SEC;
        let mut tat = 0;
        for i in 0..40 {
            tat = g
                .decide(tat, now)
                .unwrap_or_else(|_| panic!("request {i} is within the burst"));
        }
        assert_eq!(tat, now + 40 * 50 * MS);
        // The 41st waits exactly one interval.
        assert_eq!(g.decide(tat, now), Err(50 * MS));
        assert_eq!(g.decide(tat, now + 49 * MS), Err(MS));
        assert_eq!(g.decide(tat, now + 50 * MS), Ok(tat + 50 * MS));
    }

    #[test]
    fn exact_admission_counts_for_rate_and_burst_on_a_controlled_clock() {
        let r = rule("20/s", 40, 100);
        let k = ip("203.0.113.7");
        let t0 = 5 * SEC;
        assert_eq!(admitted(&r, k, t0, 100), 40, "the burst");
        // One second later: 20 intervals have passed, so 20 more.
        assert_eq!(admitted(&r, k, t0 + SEC, 100), 20, "the rate");
        // A steady client at exactly the rate is never refused.
        let mut now = t0 + SEC;
        for _ in 0..100 {
            now += 50 * MS;
            assert!(r.check(k, now).is_ok());
        }
        // Idle for burst * T: the whole burst is back.
        assert_eq!(admitted(&r, k, now + 2 * SEC, 100), 40);
        // Other clients were never affected.
        assert_eq!(admitted(&r, ip("203.0.113.8"), now, 100), 40);
        assert_eq!(r.counts().limited_total, 60 + 80 + 60 + 60);
    }

    #[test]
    fn per_minute_rates_and_retry_after() {
        let r = rule("6/m", 2, 100);
        let k = ip("198.51.100.1");
        let t0 = SEC;
        assert_eq!(admitted(&r, k, t0, 2), 2);
        // T = 10 s; the third request may pass one T after the first.
        let wait = r.check(k, t0).unwrap_err();
        assert_eq!(wait, 10 * SEC);
        assert_eq!(retry_after_secs(wait), 10);
        let wait = r.check(k, t0 + 9 * SEC + 500 * MS).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1, "rounded up, never 0");
        assert!(r.check(k, t0 + 10 * SEC).is_ok());
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(SEC), 1);
        assert_eq!(retry_after_secs(SEC + 1), 2);
    }

    #[test]
    fn ipv6_clients_share_their_prefix_and_ipv4_mapped_is_ipv4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(
            Key::client("2001:db8::1".parse().unwrap(), 128),
            Key::client("2001:db8::1".parse().unwrap(), 128)
        );
        assert_ne!(
            Key::client("2001:db8::1".parse().unwrap(), 128),
            Key::client("2001:db8::2".parse().unwrap(), 128)
        );
        assert_eq!(ip("192.0.2.1").describe(64), "192.0.2.1");
        assert_eq!(ip("2001:db8:1:2::1").describe(64), "2001:db8:1:2::/64");
        assert!(Key::value(b"abc").describe(64).starts_with('#'));
        assert_eq!(Key::value(b"abc"), Key::value(b"abc"));
        assert_ne!(Key::value(b"abc"), Key::value(b"abd"));
    }

    #[test]
    fn a_sweep_forgets_idle_clients_and_reports_the_limited_ones() {
        let r = rule("1/s", 2, 100);
        let t0 = SEC;
        for i in 0..10u8 {
            r.check(Key::client(IpAddr::from([10, 0, 0, i]), 64), t0).unwrap();
        }
        // One client is over its limit.
        let hot = ip("10.0.0.1");
        assert_eq!(admitted(&r, hot, t0, 5), 1);
        assert_eq!(r.counts().keys, 10);
        assert_eq!(r.sweep(t0), 0, "nobody is idle yet");
        let c = r.counts();
        assert_eq!(c.limited_now.clients, 1);
        assert_eq!(c.limited_now.top[0].key, "10.0.0.1");
        assert_eq!(c.limited_now.top[0].retry_after_ms, 1000);
        // After 1 s the nine clients that sent one request are idle.
        assert_eq!(r.sweep(t0 + SEC), 9);
        assert_eq!(r.counts().keys, 1);
        assert_eq!(r.sweep(t0 + 2 * SEC), 1);
        assert_eq!(r.counts().keys, 0);
        assert_eq!(r.counts().limited_now.clients, 0);
    }

    #[test]
    fn a_million_random_clients_never_hold_more_than_max_keys() {
        let max_keys = 50_000;
        let r = rule("10/s", 10, max_keys);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut now = SEC;
        for round in 0..10 {
            for _ in 0..100_000 {
                let key = if rng.bool() {
                    Key::client(IpAddr::from(rng.u32(..).to_be_bytes()), 64)
                } else {
                    Key::client(IpAddr::from(rng.u128(..).to_be_bytes()), 64)
                };
                assert!(r.check(key, now).is_ok(), "a client's first request always passes");
                assert!(r.limiter.len.load(Ordering::Relaxed) <= max_keys);
            }
            assert!(r.counts().keys <= max_keys, "round {round}");
            // Half a second later: still within their first interval (100 ms
            // each, so all idle after 100 ms); sweep every other round only.
            now += 500 * MS;
            if round % 2 == 1 {
                r.sweep(now);
                assert_eq!(r.counts().keys, 0, "every one-request client is idle");
            }
        }
        let c = r.counts();
        assert_eq!(c.keys, 0);
        assert!(c.untracked_total > 0, "a full table admits newcomers untracked");
        // The map never grew beyond what max_keys entries need.
        assert!(
            r.limiter.tats.capacity() <= 4 * max_keys,
            "{}",
            r.limiter.tats.capacity()
        );
    }

    #[test]
    fn a_full_table_admits_newcomers_untracked_and_keeps_limiting_known_ones() {
        let r = rule("1/m", 1, 2);
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        assert!(r.check(a, SEC).is_ok());
        assert!(r.check(b, SEC).is_ok());
        assert!(r.check(c, SEC).is_ok(), "untracked");
        assert!(r.check(c, SEC).is_ok(), "still untracked");
        assert!(r.check(a, SEC).is_err(), "known clients are still limited");
        let counts = r.counts();
        assert_eq!((counts.keys, counts.untracked_total, counts.limited_total), (2, 2, 1));
    }

    #[test]
    fn a_reload_that_keeps_the_name_keeps_the_budget_and_counts() {
        let before = rule("1/m", 2, 10);
        let k = ip("192.0.2.9");
        assert_eq!(admitted(&before, k, SEC, 3), 2);
        let mut config = before.config.clone();
        config.burst = 3;
        let after = RateLimit::new(&config, Some(&before));
        assert_eq!(admitted(&after, k, SEC, 3), 1, "one more fits the bigger burst");
        assert_eq!(after.counts().limited_total, 1 + 2);
        let renamed = RateLimit::new(
            &RateLimitConfig {
                name: "other".into(),
                ..config
            },
            None,
        );
        assert_eq!(admitted(&renamed, k, SEC, 5), 3, "a new rule starts afresh");
    }

    #[test]
    fn matching_by_host_and_prefix() {
        let mut config = rule("1/s", 1, 1).config.clone();
        config.host = Some("shop.example".into());
        config.path_prefix = Some("/api".into());
        let r = RateLimit::new(&config, None);
        assert!(r.matches(Some("SHOP.example"), "/api/cart"));
        assert!(!r.matches(Some("shop.example"), "/cart"));
        assert!(!r.matches(Some("other.example"), "/api"));
        assert!(!r.matches(None, "/api"));
        assert!(rule("1/s", 1, 1).matches(None, "/"));
    }

    #[test]
    fn concurrent_requests_share_one_budget_and_one_key_bound() {
        // Four threads at the same instant: one client's burst is taken
        // exactly once between them, and racing newcomers never push the
        // table past max_keys.
        let r = Arc::new(rule("1/m", 100, 1_000));
        let hot = ip("192.0.2.1");
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for i in 0..5_000u32 {
                        if r.check(hot, SEC).is_ok() {
                            admitted += 1;
                        }
                        let other = Key::client(IpAddr::from(((t << 16) | (i % 2_000)).to_be_bytes()), 64);
                        let _ = r.check(other, SEC);
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 100, "the burst, once");
        assert_eq!(r.counts().keys, 1_000, "full, never over");
        assert_eq!(r.limiter.tats.len(), 1_000);
    }
}
