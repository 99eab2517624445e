//! The demo: tidegate on the embedded `conf/demo.toml` plus one
//! `tidegate backend` child process per static backend address in it, and a
//! flash sale played against it.
//!
//! Tooling: only `main.rs` imports this module. `shop.rs` is the simulated
//! shop backend (`tidegate backend`), `load.rs` the load generator.
//! Children are started with `kill_on_drop`, and [`Children::stop`] ends
//! them by PID when tidegate stops, so a demo never leaves processes
//! behind.

pub mod load;
pub mod shop;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::process::Child;

use crate::autoscale::hook::backend_command;
use crate::config::Config;

/// Service time each demo backend spends per request.
pub(crate) const DEMO_SERVICE_TIME: Duration = Duration::from_millis(20);
/// Requests each demo backend serves at once.
pub(crate) const DEMO_BACKEND_CONCURRENCY: usize = 16;
/// How long to wait for a child to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The demo's backend processes.
pub struct Children {
    children: Vec<Child>,
}

impl Children {
    /// Starts a backend process for every backend address in `config` and
    /// waits until each accepts connections.
    pub async fn start(config: &Config, exe: &Path) -> std::io::Result<Children> {
        let addrs: Vec<SocketAddr> = config
            .pools
            .values()
            .flat_map(|p| p.backends.iter().map(|b| b.address))
            .collect();
        let mut children = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            children.push(backend_command(exe, *addr, DEMO_SERVICE_TIME, DEMO_BACKEND_CONCURRENCY).spawn()?);
        }
        let started = Children { children };
        for addr in &addrs {
            wait_until_accepting(*addr).await?;
        }
        Ok(started)
    }

    /// The children's process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Ends every child (by its PID) and reaps it.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        for child in &mut self.children {
            let _ = child.wait().await;
        }
    }
}

async fn wait_until_accepting(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("demo backend {addr} did not start"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tidegate load`: the demo's flash sale around `base` requests per
/// second against `target` (any proxy, e.g. tidegate in a container),
/// with a progress line every 5 seconds; returns (ok, failed).
pub async fn play_against(target: SocketAddr, base: f64, workers: usize) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    println!(
        "load: flash sale against http://{target}/: {base} req/s, then {} req/s for 40 s, then {base} req/s",
        10.0 * base
    );
    let tally = Arc::new(load::Tally::default());
    let sale = tokio::spawn(load::play(
        target,
        load::flash_sale_at(base),
        workers.max(1),
        Arc::clone(&tally),
    ));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let counts = || (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    while !sale.is_finished() {
        tick.tick().await;
        let (ok, failed) = counts();
        println!(
            "load: t={:>3}s  requests ok {ok}, failed {failed}",
            started.elapsed().as_secs()
        );
    }
    counts()
}

/// `, sale page from the cache N of M` once the cache has served any.
fn cache_line(state: &crate::state::State) -> String {
    let Some(cache) = state.load().cache.clone() else {
        return String::new();
    };
    let (served, all) = cache.counts().served_and_usable();
    if all == 0 {
        return String::new();
    }
    format!(", sale page from the cache {served} of {all}")
}

/// The demo's story: once the first backend is up, play the flash sale
/// against `web` and print the pool's size every 5 seconds until the pool
/// is back to its minimum. Bounded: about two minutes.
pub async fn play_flash_sale(web: SocketAddr, state: std::sync::Arc<crate::state::State>) {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use crate::pool::BackendState;

    let pool_size = |state: &crate::state::State| {
        let snapshot = state.load();
        let pool = &snapshot.pools[0];
        let counts = pool.state_counts();
        (
            counts[BackendState::Active as usize],
            counts[BackendState::Warming as usize],
            pool.shared.queue.depth(),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pool_size(&state).0 == 0 {
        if tokio::time::Instant::now() > deadline {
            println!("demo: no backend became ready; not playing the sale");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = load::QUIET_RATE;
    println!(
        "demo: flash sale starting: {quiet} req/s, then {} req/s for 40 s, then {quiet} req/s (watch the dashboard)",
        10.0 * quiet
    );
    let tally = Arc::new(load::Tally::default());
    let sale = tokio::spawn(load::play(web, load::flash_sale(), 128, Arc::clone(&tally)));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let (ready, warming, queued) = pool_size(&state);
        println!(
            "demo: t={:>3}s  backends ready {ready}, warming {warming}, queued {queued}, \
             checkout ok {} failed {} (slowest {} ms), browse ok {} shed {}{}",
            started.elapsed().as_secs(),
            tally.checkout_ok.load(Ordering::Relaxed),
            tally.checkout_failed.load(Ordering::Relaxed),
            tally.take_slowest_checkout().as_millis(),
            tally.ok.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            cache_line(&state)
        );
        if sale.is_finished() && ready <= 1 && warming == 0 {
            println!("demo: the sale is over and the pool is back to its minimum (Ctrl-C stops the demo)");
            return;
        }
        if started.elapsed() > Duration::from_secs(240) {
            return;
        }
    }
}
