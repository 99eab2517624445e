//! The `docker` provisioner against the real Docker Engine: an elastic pool
//! grows under load to containers that serve, shrinks by removing them
//! after their drain, and a restarted tidegate adopts the container it left
//! running. The backend image is built here from this build's binary
//! (`FROM scratch`, no registry); the test removes every container and
//! the image it made, whatever happens. The containers run on the host's
//! network and listen on 127.0.0.1 only.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Container starts and scale-downs take seconds, not milliseconds.
const DOCKER_BOUND: Duration = Duration::from_secs(90);

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Everything the test made on the Docker host, removed on drop.
struct Fixture {
    id: String,
    image: String,
}

impl Fixture {
    fn new() -> Fixture {
        let id = format!("{}-{:06x}", std::process::id(), fastrand::u32(..0xffffff));
        let f = Fixture {
            image: format!("tidegate-test-backend:{id}"),
            id,
        };
        f.build_image();
        f
    }

    /// This build's binary, its shared libraries and nothing else.
    fn build_image(&self) {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let exe = env!("CARGO_BIN_EXE_tidegate");
        let stripped = Command::new("strip")
            .args(["--strip-debug", "-o"])
            .arg(root.join("tidegate"))
            .arg(exe)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(exe, root.join("tidegate")).unwrap();
        }
        let ldd = Command::new("ldd").arg(exe).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap();
        }
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY root/ /\nENTRYPOINT [\"/tidegate\"]\n",
        )
        .unwrap();
        docker(&["build", "-q", "-t", &self.image, &ctx.path().display().to_string()]);
    }

    /// The ids of the containers the provisioner started for this test.
    fn containers(&self) -> Vec<String> {
        let filter = format!("label=tidegate-test={}", self.id);
        docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The containers share the host's network (`network = "host"`): each
    /// backend listens on 127.0.0.1 at the free port the provisioner chose
    /// for it (`{port}`), so nothing binds beyond loopback.
    fn config(&self) -> String {
        format!(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
[pools.shop]\nmax_concurrency = 2\nqueue = {{ max_depth = 1000, timeout = \"30s\" }}\nbackends = []\n\
[pools.shop.autoscale]\nmin = 1\nmax = 3\nprovisioning_delay = \"2s\"\nscale_down_window = \"3s\"\n\
hook = {{ kind = \"docker\", image = \"{}\", network = \"host\", labels = {{ tidegate-test = \"{}\" }}, \
command = [\"backend\", \"--listen\", \"127.0.0.1:{{port}}\", \"--service-time\", \"50ms\", \"--concurrency\", \"2\"] }}\n",
            self.image, self.id
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.containers() {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DOCKER_BOUND;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Active members of the pool, by address.
async fn active(t: &Tidegate) -> Vec<String> {
    t.pool().await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "active")
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_pool_grows_under_load_shrinks_after_drain_and_is_adopted_after_a_restart() {
    let f = Fixture::new();
    let t = tidegate(&f.config()).await;
    until("one container serves", async || active(&t).await.len() == 1).await;
    assert_eq!(f.containers().len(), 1);
    assert_eq!(get(t.addr, "/products/1").await.status, 200);

    // Twelve clients on 50 ms requests need about three backends of two
    // slots each: the pool grows to containers that serve.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let (addr, stop) = (t.addr, std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let mut failed = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if get(addr, format!("/products/{i}")).await.status != 200 {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    until("the pool grew to containers that serve", async || {
        active(&t).await.len() >= 2
    })
    .await;
    let grown = f.containers().len();
    assert!(grown >= 2, "{grown} containers");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        assert_eq!(c.await.unwrap(), 0, "no request failed while the pool grew");
    }

    // Idle again: the extra members drain and their containers are removed.
    until("the pool shrank back to one container", async || {
        active(&t).await.len() == 1 && f.containers().len() == 1
    })
    .await;
    let survivor = f.containers();
    let member = active(&t).await;
    t.shutdown().await;

    // The container outlives tidegate (it may serve another instance), and
    // a restarted tidegate adopts it instead of starting a new one.
    assert_eq!(f.containers(), survivor, "still running after tidegate stopped");
    let t = tidegate(&f.config()).await;
    until("the restarted tidegate serves from the adopted container", async || {
        active(&t).await == member
    })
    .await;
    assert_eq!(f.containers(), survivor, "adopted, not replaced");
    assert_eq!(get(t.addr, "/products/2").await.status, 200);
    let calls = t.pool().await["autoscale"]["hook_calls"].clone();
    assert!(calls.as_array().unwrap().iter().all(|c| c["result"] == "ok"), "{calls}");
    t.shutdown().await;

    let image = f.image.clone();
    drop(f);
    assert!(
        docker(&["ps", "-aq", "--filter", &format!("ancestor={image}")]).is_empty(),
        "nothing left running"
    );
}
