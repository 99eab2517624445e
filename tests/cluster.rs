//! etcd cluster mode end to end: a real etcd (Debian's `etcd-server`,
//! started here on free loopback ports with its data in a temporary
//! directory, killed by PID), three real tidegate processes sharing one
//! prefix, load spread over them, and an `exec` hook script that records
//! every call's `(epoch, seq, desired)` and hands out test backends.
//!
//! The tests run one at a time (each starts four processes on a shared
//! machine) and are skipped, saying so, where no `etcd` binary exists.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::time::Instant;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The instances' lease: a dead leader is replaced within it plus 2 s.
const LEASE: Duration = Duration::from_secs(3);

// === etcd ===

/// A single-member etcd on free loopback ports; killed on drop.
struct EtcdServer {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn etcd_installed() -> bool {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl EtcdServer {
    async fn start() -> EtcdServer {
        let mut etcd = EtcdServer {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    /// Starts (or restarts, on the same data) the server and waits until
    /// it answers.
    async fn spawn(&mut self) {
        let (c, p) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("default={p}")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        within(Duration::from_secs(20), "etcd answers", || async {
            tokio::net::TcpStream::connect(self.client).await.is_ok()
                && get(self.client, "/health").await.text().contains("true")
        })
        .await;
    }

    /// Kills the server by its PID and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// === tidegate instances ===

/// One tidegate process.
struct Node {
    name: String,
    child: tokio::process::Child,
    web: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    async fn stats(&self) -> serde_json::Value {
        let a = get(self.admin, "/stats").await;
        assert_eq!(a.status, 200, "{}", a.text());
        serde_json::from_slice(&a.body).unwrap()
    }

    async fn role(&self) -> String {
        self.stats().await["cluster"]["role"].as_str().unwrap_or("").to_string()
    }

    /// The pool's members taking traffic (healthy, not draining), sorted.
    async fn members(&self) -> Vec<String> {
        let stats = self.stats().await;
        let mut m: Vec<String> = stats["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "active")
            .map(|b| b["address"].as_str().unwrap().to_string())
            .collect();
        m.sort();
        m
    }
}

/// Three instances sharing a prefix, the test backends they scale over,
/// and the hook's log.
struct Cluster {
    nodes: Vec<Node>,
    _backends: Vec<TestBackend>,
    dir: tempfile::TempDir,
    hook_log: std::path::PathBuf,
}

impl Cluster {
    async fn start(etcd: &EtcdServer, max: u32) -> Cluster {
        let mut backends = Vec::new();
        for i in 0..max {
            backends.push(backend_with(&format!("b{i}"), Duration::from_millis(100), 0).await);
        }
        let dir = tempfile::tempdir().unwrap();
        let hook_log = dir.path().join("hook.log");
        let list: Vec<String> = backends.iter().map(|b| format!("'\"{}\"'", b.addr)).collect();
        let hook = script(
            &dir,
            "provision.sh",
            &format!(
                r#"req=$(cat)
field() {{ echo "$req" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }}
desired=$(field desired)
echo "$(field epoch) $(field seq) $desired" >> '{}'
all=({})
out=$(IFS=,; echo "${{all[*]:0:$desired}}")
echo "{{\"members\":[$out]}}""#,
                hook_log.display(),
                list.join(" ")
            ),
        );
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let name = format!("edge-{i}");
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[cluster]\ninstance = \"{name}\"\netcd = {{ endpoints = [\"{}\"], prefix = \"/tidegate/test\", lease = \"{}s\" }}\n\n\
[pools.shop]\nmax_concurrency = 2\nqueue = {{ max_depth = 10000, timeout = \"60s\" }}\nbackends = []\n\
autoscale = {{ min = 1, max = {max}, provisioning_delay = \"1s\", scale_down_window = \"120s\", \
hook = {{ kind = \"exec\", command = [\"{hook}\"], timeout = \"5s\" }} }}\n",
                    etcd.endpoint(),
                    LEASE.as_secs()
                ),
            )
            .unwrap();
            let args = [
                std::ffi::OsStr::new("run"),
                "--no-watch".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
            ];
            let (child, web, admin) = spawn_tidegate(&args).await;
            nodes.push(Node {
                name,
                child,
                web,
                admin: admin.expect("the admin address is logged"),
            });
        }
        Cluster {
            nodes,
            _backends: backends,
            dir,
            hook_log,
        }
    }

    /// Every `(epoch, seq, desired)` the hook saw, in call order.
    fn hook_calls(&self) -> Vec<(u64, u64, u32)> {
        std::fs::read_to_string(&self.hook_log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 3, "every call carries an epoch: `{l}`");
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
            })
            .collect()
    }

    /// The index of the one leader, once there is exactly one.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut roles = Vec::new();
            for n in &self.nodes {
                roles.push(n.role().await);
            }
            let leaders: Vec<usize> = (0..roles.len()).filter(|&i| roles[i] == "leader").collect();
            if leaders.len() == 1 && roles.iter().all(|r| r == "leader" || r == "follower") {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "no single leader: {roles:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node routes to the same `n`-or-more members.
    async fn same_members_at_least(&self, n: usize, bound: Duration) -> Vec<String> {
        let deadline = Instant::now() + bound;
        loop {
            let first = self.nodes[0].members().await;
            let mut same = first.len() >= n;
            for node in &self.nodes[1..] {
                same &= node.members().await == first;
            }
            if same {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {bound:?} waiting until all instances route to the same {n}+ active members (first: {first:?}; hook calls {:?})",
                self.hook_calls()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// === load ===

/// Closed-loop clients on one instance, counting answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        }
    }

    fn add(&mut self, web: SocketAddr, clients: usize) {
        for i in 0..clients {
            let (stop, ok, failed) = (Arc::clone(&self.stop), Arc::clone(&self.ok), Arc::clone(&self.failed));
            self.tasks.push(tokio::spawn(async move {
                let Ok(stream) = tokio::net::TcpStream::connect(web).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Ok((mut c, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
                else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    match c.send_request(request("GET", &format!("/products/{i}"), "")).await {
                        Ok(resp) if resp.status() == 200 => {
                            let _ = collect(resp).await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            match other {
                                Ok(resp) => {
                                    let a = collect(resp).await;
                                    eprintln!("client on {web}: {} {}", a.status, a.text());
                                }
                                Err(e) => eprintln!("client on {web}: {e}"),
                            }
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
    }

    /// Stops the clients; `(answered, failed)`.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Polls (within `bound`) until an async condition holds.
async fn within<F, Fut>(bound: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The largest `desired` asked for since call `from`.
fn max_desired(calls: &[(u64, u64, u32)], from: usize) -> u32 {
    calls[from..].iter().map(|c| c.2).max().unwrap_or(0)
}

// === the scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_grow_one_pool_by_their_summed_demand() {
    if !etcd_installed() {
        eprintln!("skipped: no `etcd` binary (Debian: etcd-server)");
        return;
    }
    let _one = SERIAL.lock().await;
    let etcd = EtcdServer::start().await;
    let c = Cluster::start(&etcd, 16).await;
    let leader = c.leader().await;
    c.same_members_at_least(1, Duration::from_secs(10)).await;

    // Two closed-loop clients per instance: six requests in the system at
    // any time, a third of them on each instance. Each backend takes two;
    // sized at 70 % of that, six need about five backends. One instance
    // deciding on its own third would want two; three instances each
    // counting the whole would want about fifteen.
    let mut load = Load::new();
    for n in &c.nodes {
        load.add(n.web, 2);
    }
    let members = c.same_members_at_least(4, Duration::from_secs(30)).await;
    // Some seconds of steady load: the size settles, it does not run away.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let members_later = c.same_members_at_least(4, Duration::from_secs(5)).await;
    let (ok, failed) = load.finish().await;

    let calls = c.hook_calls();
    let epochs: std::collections::BTreeSet<u64> = calls.iter().map(|c| c.0).collect();
    assert_eq!(epochs.len(), 1, "one leader called the hook: {calls:?}");
    assert!(
        max_desired(&calls, 0) <= 10,
        "sized for the summed demand, not a multiple of it: {calls:?}"
    );
    assert!(
        members_later.len() >= members.len().min(4) && members_later.len() <= 10,
        "{members:?} then {members_later:?}"
    );
    assert_eq!(failed, 0, "no failed request ({ok} answered)");
    let stats = c.nodes[leader].stats().await;
    assert_eq!(stats["cluster"]["etcd_reachable"], true, "{}", stats["cluster"]);
    assert_eq!(stats["cluster"]["instance"], c.nodes[leader].name);
    eprintln!(
        "summed demand: members {} -> {}, hook calls {calls:?}, {ok} answers",
        members.len(),
        members_later.len()
    );
    drop(c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_hands_over_within_the_lease_without_duplicate_calls_or_failed_requests() {
    if !etcd_installed() {
        eprintln!("skipped: no `etcd` binary (Debian: etcd-server)");
        return;
    }
    let _one = SERIAL.lock().await;
    let etcd = EtcdServer::start().await;
    let mut c = Cluster::start(&etcd, 16).await;
    let leader = c.leader().await;
    c.same_members_at_least(1, Duration::from_secs(10)).await;
    let old_epoch = c.nodes[leader].stats().await["cluster"]["epoch"].as_u64().unwrap();

    let mut loads: Vec<Load> = c.nodes.iter().map(|_| Load::new()).collect();
    for (i, n) in c.nodes.iter().enumerate() {
        loads[i].add(n.web, 2);
    }
    c.same_members_at_least(3, Duration::from_secs(30)).await;

    // The leader's own clients stop first (its requests die with it).
    let _ = loads.remove(leader).finish().await;
    let victim = c.nodes.remove(leader);
    let mut child = victim.child;
    child.start_kill().unwrap(); // SIGKILL, by PID
    let killed = Instant::now();
    let _ = child.wait().await;
    let new_leader = 'found: loop {
        for (i, n) in c.nodes.iter().enumerate() {
            let s = n.stats().await;
            if s["cluster"]["role"] == "leader" && s["cluster"]["epoch"].as_u64() != Some(old_epoch) {
                break 'found i;
            }
        }
        assert!(killed.elapsed() < LEASE + Duration::from_secs(5), "no survivor leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = killed.elapsed();
    assert!(
        failover <= LEASE + Duration::from_secs(2),
        "took over after {failover:?}"
    );
    let new_epoch = c.nodes[new_leader].stats().await["cluster"]["epoch"].as_u64().unwrap();

    // More load on the survivors: the new leader acts under its epoch.
    for (i, n) in c.nodes.iter().enumerate() {
        loads[i].add(n.web, 2);
    }
    within(Duration::from_secs(20), "the new leader calls the hook", || async {
        c.hook_calls().iter().any(|call| call.0 == new_epoch)
    })
    .await;
    c.same_members_at_least(3, Duration::from_secs(10)).await;
    let mut answered = 0;
    for load in loads {
        let (ok, failed) = load.finish().await;
        assert_eq!(failed, 0, "a surviving instance failed a request ({ok} answered)");
        answered += ok;
    }

    let calls = c.hook_calls();
    let mut pairs: Vec<(u64, u64)> = calls.iter().map(|c| (c.0, c.1)).collect();
    pairs.sort_unstable();
    let before = pairs.len();
    pairs.dedup();
    assert_eq!(pairs.len(), before, "no (epoch, seq) actuated twice: {calls:?}");
    assert!(
        calls.iter().all(|call| call.0 == old_epoch || call.0 == new_epoch),
        "{calls:?}"
    );
    let first_new = calls.iter().position(|call| call.0 == new_epoch).unwrap();
    assert!(
        calls[first_new..].iter().all(|call| call.0 == new_epoch),
        "the old epoch never acts after the new one began: {calls:?}"
    );
    eprintln!("failover: {failover:?}; epochs {old_epoch} -> {new_epoch}; {} hook calls, 0 duplicate; survivors answered {answered}, failed 0", calls.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_gone_instances_keep_serving_and_scaling_pauses_until_it_returns() {
    if !etcd_installed() {
        eprintln!("skipped: no `etcd` binary (Debian: etcd-server)");
        return;
    }
    let _one = SERIAL.lock().await;
    let mut etcd = EtcdServer::start().await;
    let c = Cluster::start(&etcd, 16).await;
    c.leader().await;
    c.same_members_at_least(1, Duration::from_secs(10)).await;
    let mut load = Load::new();
    for n in &c.nodes {
        load.add(n.web, 1);
    }
    c.same_members_at_least(2, Duration::from_secs(30)).await;

    etcd.stop();
    within(Duration::from_secs(10), "every instance says it is paused", || async {
        let mut all = true;
        for n in &c.nodes {
            let s = n.stats().await;
            all &= s["cluster"]["role"] == "paused"
                && s["cluster"]["etcd_reachable"] == false
                && s["cluster"]["last_error"].is_string();
        }
        all
    })
    .await;
    // What each instance applied last (a write of the leader's may have
    // landed between the growth above and the pause): frozen from here.
    let mut frozen = Vec::new();
    for n in &c.nodes {
        frozen.push(n.members().await);
    }
    let before = frozen.iter().max_by_key(|m| m.len()).cloned().unwrap_or_default();
    let metrics = get(c.nodes[0].admin, "/metrics").await.text();
    assert!(metrics.contains("tidegate_cluster_etcd_up 0"), "{metrics}");
    assert!(metrics.contains("tidegate_cluster_leader 0"), "{metrics}");

    // Three times the load while paused: nobody acts alone.
    let calls_paused = c.hook_calls().len();
    for n in &c.nodes {
        load.add(n.web, 3);
    }
    // A window in which a decision would have been acted on: the absence
    // of a call is what is tested.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.hook_calls().len(), calls_paused, "no hook call while etcd is gone");
    for (n, kept) in c.nodes.iter().zip(&frozen) {
        assert_eq!(&n.members().await, kept, "{} kept its membership", n.name);
    }

    etcd.spawn().await;
    c.leader().await;
    within(
        Duration::from_secs(20),
        "scaling resumes for the higher load",
        || async { c.hook_calls().len() > calls_paused },
    )
    .await;
    let after = c.same_members_at_least(before.len() + 1, Duration::from_secs(20)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "serving never stopped ({ok} answered)");
    eprintln!(
        "etcd outage: members {} kept while paused, {} after; {ok} answers, 0 failed",
        before.len(),
        after.len()
    );
}
