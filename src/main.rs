//! The `tidegate` command line: choose the allocator, parse arguments, set
//! up logging, load and validate the config, bind, and hand over to the
//! library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tidegate::config::{units::parse_duration, Config};
use tidegate::demo::{shop, Children};
use tidegate::state::State;

/// jemalloc, with its background thread, instead of glibc's malloc. A
/// burst of keep-alive clients takes hyper's buffers for each of them;
/// once they rest and park (`server/park.rs`) those buffers are freed, but
/// glibc keeps the pages between the small blocks that stay (10,000 idle
/// connections kept 14 KiB each). jemalloc groups blocks by size and its
/// background thread gives empty pages back after about 10 s (1.7 KiB
/// each), and it runs the hot path in 2-3 % fewer instructions
/// (benches/README.md, "jemalloc"). Built without the `jemalloc` feature,
/// the binary keeps glibc's malloc, which heaptrack can see.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A Layer-7 load balancer that turns its own queue into capacity"
)]
struct Cli {
    /// Without a command, the demo runs on the embedded `conf/demo.toml`,
    /// its backends started as child processes.
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines on stderr: `text` or `json` (one object per line).
    /// `TIDEGATE_LOG` sets the level filter (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy on a config file.
    Run {
        /// The config file (TOML); reloaded when it changes, on SIGHUP and
        /// on `POST /reload`.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not reload when the config file changes (SIGHUP and
        /// `POST /reload` still do).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file and exit (like `nginx -t`): every error, each
    /// with its file:line:col and key.
    Check {
        /// The config file to validate.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the effective config (defaults filled in, `${VAR}`s
        /// replaced, secrets masked) instead of the summary.
        #[arg(long)]
        dump: bool,
    },
    /// Replay a traffic trace through the autoscaling policies and compare
    /// them with the Erlang-C oracle.
    Simulate(Box<SimulateArgs>),
    /// GET a URL once and exit 0 on a 2xx answer: the container images'
    /// HEALTHCHECK (`tidegate probe http://127.0.0.1:9090/healthz`).
    Probe {
        /// An http:// URL.
        url: String,
        /// Give up after this long, e.g. "2s".
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Play the demo's flash sale against a running proxy (quiet, 10x for
    /// 40 s, quiet: about 100 s), e.g. `tidegate load --target tidegate:8080`.
    Load {
        /// host:port of the proxy.
        #[arg(long)]
        target: String,
        /// The quiet rate, requests per second (the sale is 10x).
        #[arg(long, default_value_t = 150.0)]
        rate: f64,
        /// Keep-alive connections sharing the rate.
        #[arg(long, default_value_t = 128)]
        workers: usize,
    },
    /// Run a simulated shop backend (for the demo, tests and benchmarks).
    Backend {
        /// Address to listen on, e.g. 127.0.0.1:9001.
        #[arg(long)]
        listen: SocketAddr,
        /// Time each request takes, e.g. "20ms".
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        service_time: Duration,
        /// Requests served at once; more wait inside the backend (0 = no limit).
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
        /// Name reported in the `x-backend` response header.
        #[arg(long)]
        name: Option<String>,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

/// `tidegate simulate`.
#[derive(Args)]
struct SimulateArgs {
    /// A built-in scenario: step, spike, diurnal, flash-sale, shop-14d,
    /// or a corpus family (ramp-slow, ramp-fast, sale-announced,
    /// sale-unannounced, spike, bot-storm, onoff, diurnal-weekly,
    /// quiet-rare, slow-deploy).
    #[arg(long, conflicts_with_all = ["trace", "corpus"])]
    scenario: Option<String>,
    /// A CSV trace: header `second,arrivals` (per second) or
    /// `minute,requests` (per minute, spread as a Poisson process
    /// within each minute); `second,critical,normal,sheddable` or
    /// `minute,critical,normal,sheddable` give a count per priority class
    /// and add violations per class to the report.
    #[arg(long, conflicts_with = "corpus")]
    trace: Option<PathBuf>,
    /// The training and validation corpus: `train`, `validation` or
    /// `all`; prints the verdict table per family and delay.
    #[arg(long)]
    corpus: Option<String>,
    /// The NASA per-minute trace for the corpus (its `nasa` family).
    #[arg(long, requires = "corpus")]
    nasa: Option<PathBuf>,
    /// Only these corpus families (quick A/B runs), e.g. "spike,nasa".
    #[arg(long, value_delimiter = ',', requires = "corpus")]
    families: Vec<String>,
    /// Provisioning delay.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    delay: Duration,
    /// Several provisioning delays (`--corpus`), e.g. "5s,30s,120s".
    #[arg(long, value_delimiter = ',', value_parser = parse_duration)]
    delays: Vec<Duration>,
    /// Queue-wait SLO (more than 0).
    #[arg(long, default_value = "100ms", value_parser = positive_duration)]
    slo: Duration,
    /// Concurrency limit per backend (at least 1).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
    /// Mean service time (more than 0).
    #[arg(long, default_value = "20ms", value_parser = positive_duration)]
    service_time: Duration,
    /// Mean arrival rate (req/s): a generated scenario's base, or what a
    /// `--trace` is scaled to (default: as recorded).
    #[arg(long)]
    rate: Option<f64>,
    /// Multiply a `--trace`'s counts by this.
    #[arg(long, conflicts_with = "rate")]
    scale: Option<f64>,
    /// Seeds (generated scenarios).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The operator's `max` for every policy, as a multiple of the
    /// oracle's peak (0 = 1000 backends).
    #[arg(long, default_value_t = 2.0)]
    max_factor: f64,
    /// The queueing model: `fluid` (fast), `exact` (a per-request event
    /// simulation: the referee, for traces of hours), or `referee`
    /// (both, side by side).
    #[arg(long, default_value = "fluid")]
    model: String,
    /// Service times of the exact model: `exp`, `fixed`, or a
    /// coefficient of variation (log-normal).
    #[arg(long, default_value = "exp")]
    service_dist: String,
    /// Overrides of tidegate's policy parameters, `key=value,...` (A/B
    /// runs: `trend=off`, `headroom_quantile=0.9`, ...).
    #[arg(long, default_value = "")]
    policy: String,
    /// One JSON object per policy (and the oracle) instead of a table.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of the first seed here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Drive tidegate's decision step from an outside simulator: one
    /// JSON second per stdin line in, one `{"t","desired"}` line out.
    /// With `--config FILE [--pool NAME]` the pool's autoscale table
    /// sets the step, as the live loop reads it.
    #[arg(long, conflicts_with_all = ["scenario", "trace", "corpus", "json", "svg"])]
    stdio: bool,
    /// With `--stdio`: the config file whose pool's autoscale table sets
    /// the step.
    #[arg(long, short, requires = "stdio")]
    config: Option<PathBuf>,
    /// Fewest backends (`--stdio`).
    #[arg(long, default_value_t = 1)]
    min: u32,
    /// Most backends (`--stdio`).
    #[arg(long, default_value_t = 1000)]
    max: u32,
    /// The autoscaled pool of `--config` whose settings `--stdio` uses
    /// (default: the only autoscaled pool).
    #[arg(long, requires = "stdio")]
    pool: Option<String>,
}

/// A duration that must not be zero (a zero service time or SLO has no
/// meaning to the simulator, and one made it loop forever).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        None => run(None, false),
        Some(Command::Run { config, no_watch }) => run(Some(config), !no_watch),
        Some(Command::Check { config, dump }) => check(&config, dump),
        Some(Command::Simulate(args)) => simulate(*args),
        Some(Command::Probe { url, timeout }) => runtime(Some(1)).and_then(|rt| {
            rt.block_on(tidegate::health::check_url(&url, timeout))
                .map_err(anyhow::Error::from)
        }),
        Some(Command::Load { target, rate, workers }) => {
            runtime(Some(1)).and_then(|rt| rt.block_on(load(&target, rate, workers)))
        }
        Some(Command::Backend {
            listen,
            service_time,
            concurrency,
            name,
            threads,
        }) => {
            let opts = shop::BackendOptions {
                name: name.unwrap_or_else(|| listen.to_string()),
                service_time,
                concurrency,
            };
            runtime(Some(threads)).and_then(|rt| {
                tracing::info!(
                    name = %opts.name,
                    service_time = ?opts.service_time,
                    "tidegate backend listening on http://{listen}/"
                );
                rt.block_on(async {
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    let serve = shop::run(listen, opts, rx);
                    tokio::pin!(serve);
                    tokio::select! {
                        r = &mut serve => r.with_context(|| format!("backend on {listen}")),
                        _ = shutdown_signal() => { let _ = tx.send(true); Ok(()) }
                    }
                })
            })
        }
    };
    finish(result)
}

/// Logs go to stderr: as text (coloured only on a terminal, and never
/// with `NO_COLOR` set) or as one JSON object per line. `TIDEGATE_LOG`
/// filters them (`info` by default; e.g. `TIDEGATE_LOG=debug` or
/// `TIDEGATE_LOG=info,tidegate::autoscale=debug`).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEGATE_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `simulate --stdio`: the step's settings from the flags, or from a
/// pool of `--config`.
fn simulate_stdio(
    config: Option<PathBuf>,
    pool: Option<String>,
    delay: Duration,
    slo: Duration,
    slots: u32,
    min: u32,
    max: u32,
) -> anyhow::Result<()> {
    use tidegate::sim::{run_stdio, StdioSettings};
    let settings = match config {
        Some(path) => {
            let config = Config::load(&path)?;
            let autoscaled: Vec<&String> = config
                .pools
                .iter()
                .filter(|(_, p)| p.autoscale.is_some())
                .map(|(n, _)| n)
                .collect();
            let name = match (pool, autoscaled.as_slice()) {
                (Some(name), _) => name,
                (None, [only]) => (*only).clone(),
                (None, _) => anyhow::bail!(
                    "{}: name the autoscaled pool with --pool (autoscaled: {})",
                    path.display(),
                    autoscaled.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            };
            let pool = config
                .pools
                .get(&name)
                .with_context(|| format!("{}: no pool named `{name}`", path.display()))?;
            StdioSettings::Pool(Box::new((**pool).clone()))
        }
        None => StdioSettings::Flags {
            delay: delay.as_secs_f64(),
            slo: slo.as_secs_f64(),
            slots,
            min,
            max,
        },
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    run_stdio(settings, stdin, stdout).context("simulate --stdio")
}

/// `tidegate check`: the config's every error (positions included), then
/// the certificates as the listeners will load them (a key that does not
/// match its certificate); the summary, or with `--dump` the effective
/// config.
fn check(path: &std::path::Path, dump: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            tidegate::server::tls::acceptor(tls)
                .with_context(|| format!("{}: listener `{}`: tls", path.display(), l.name))?;
        }
    }
    if dump {
        println!("{}", config.dump());
    } else {
        println!("{}", config.summary());
    }
    Ok(())
}

/// `tidegate simulate`: the corpus, a trace or a scenario through every
/// policy, or `--stdio`.
fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    if a.stdio {
        return simulate_stdio(a.config.clone(), a.pool, a.delay, a.slo, a.slots, a.min, a.max);
    }
    let params = tidegate::sim::model::SimParams {
        delay: a.delay.as_secs(),
        slo: a.slo.as_secs_f64(),
        slots: a.slots,
        service: a.service_time.as_secs_f64(),
        max_factor: a.max_factor,
        ..Default::default()
    };
    let delays = if a.delays.is_empty() {
        vec![a.delay]
    } else {
        a.delays.clone()
    };
    let (model, service_dist, policy, json, svg) = (
        a.model.as_str(),
        a.service_dist.as_str(),
        a.policy.as_str(),
        a.json,
        a.svg.clone(),
    );
    use tidegate::sim::{self, corpus, des::ServiceDist, families, scenario as sc, Model};
    let dist = ServiceDist::parse(service_dist).map_err(anyhow::Error::msg)?;
    let variant = sim::tidegate_variant(policy).map_err(anyhow::Error::msg)?;
    let models: Vec<(&str, Model)> = match model {
        "fluid" => vec![("fluid", Model::Fluid)],
        "exact" => vec![("exact", Model::Exact(dist, 7))],
        "referee" => vec![("fluid", Model::Fluid), ("exact", Model::Exact(dist, 7))],
        other => anyhow::bail!("--model `{other}`: expected fluid, exact or referee"),
    };
    let delays: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
    if let Some(split) = &a.corpus {
        let split = corpus::Split::parse(split).map_err(anyhow::Error::msg)?;
        let nasa = match &a.nasa {
            Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
            None => None,
        };
        let mut instances = corpus::instances(split, nasa.as_deref()).map_err(anyhow::Error::msg)?;
        if !a.families.is_empty() {
            instances.retain(|i| a.families.contains(&i.family));
            anyhow::ensure!(!instances.is_empty(), "--families: no corpus family of that name");
        }
        for (name, m) in models {
            let runs = corpus::run(&instances, &delays, &params, m, variant);
            let rows = corpus::summaries(&runs, &delays);
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!("model: {name}\n");
                print!("{}", corpus::report(&rows));
            }
        }
        return Ok(());
    }
    let traces = match (a.scenario.clone(), a.trace.clone()) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let scale = match (a.rate, a.scale) {
                (Some(r), _) => sc::Scale::MeanRate(r),
                (None, Some(k)) => sc::Scale::Factor(k),
                (None, None) => sc::Scale::AsIs,
            };
            vec![sc::from_csv(&path.display().to_string(), &text, scale, 1)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?]
        }
        (Some(name), None) => {
            let rate = a.rate.unwrap_or(200.0);
            (1..=a.seeds.max(1))
                .map(|seed| sc::generate(&name, rate, seed).or_else(|| families::generate(&name, rate, seed)))
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!(
                        "unknown scenario `{name}` (known: {}, {})",
                        sc::SCENARIOS.join(", "),
                        families::FAMILIES.join(", ")
                    )
                })?
        }
        (None, None) => anyhow::bail!("give --scenario NAME, --trace FILE or --corpus SPLIT"),
    };
    for (name, m) in models {
        for &delay in &delays {
            let params = tidegate::sim::model::SimParams { delay, ..params };
            let (rows, outcomes, need) = sim::compare(&traces, &params, m, variant);
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                if model == "referee" {
                    println!("model: {name}\n");
                }
                print!("{}", sim::table(&rows));
            }
            if let (Some(path), "fluid" | "exact") = (&svg, name) {
                std::fs::write(path, sim::chart(&traces[0], &outcomes, &need, &params))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// `tidegate load`: the flash sale against `target`; fails when not one
/// request succeeded.
async fn load(target: &str, rate: f64, workers: usize) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
    let addr = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving --target {target}"))?
        .next()
        .with_context(|| format!("--target {target} resolves to no address"))?;
    let (ok, failed) = tidegate::demo::play_against(addr, rate, workers).await;
    println!("load: done: requests ok {ok}, failed {failed}");
    anyhow::ensure!(ok > 0, "not one request to {target} succeeded");
    Ok(())
}

/// One worker thread gets tokio's single-threaded scheduler (no
/// work-stealing queues or cross-thread wake-ups: measurably cheaper per
/// request, as HAProxy's `nbthread 1`); more get the multi-threaded one.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().context("starting the async runtime")
}

fn run(path: Option<PathBuf>, watch: bool) -> anyhow::Result<()> {
    let demo = path.is_none();
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::demo(),
    };
    let rt = runtime(config.runtime.worker_threads)?;
    let result = rt.block_on(async move {
        let children = if demo {
            let exe = std::env::current_exe().context("locating the tidegate binary")?;
            Some(
                Children::start(&config, &exe)
                    .await
                    .context("starting the demo backends")?,
            )
        } else {
            None
        };
        let wanted = tidegate::server::nofile::needed(&config);
        match tidegate::server::nofile::raise(wanted) {
            Some(limit) if limit.soft < wanted => tracing::warn!(
                "the config may hold about {wanted} file descriptors open (client connections of every listener \
                 and upstream connections of every backend), \
                 but the limit is {} (hard {}): raise it (ulimit -n, LimitNOFILE= in the systemd unit) or \
                 lower limits.max_connections; past it, accepts wait and new upstream connections fail",
                limit.soft,
                limit.hard
            ),
            Some(limit) => tracing::debug!(soft = limit.soft, wanted, "open-file limit"),
            None => tracing::warn!("the open-file limit could not be read"),
        }
        let bound = tidegate::server::bind(&config).await?;
        let admin = tidegate::server::bind_admin(&config).await?;
        for (l, b) in config.listeners.iter().zip(&bound) {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            tracing::info!(listener = %l.name, "serving on {scheme}://{}", b.listener.local_addr()?);
        }
        if let Some(a) = &admin {
            tracing::info!("admin (dashboard, /stats, /metrics) on http://{}/", a.local_addr()?);
        }
        if demo {
            let web = bound[0].listener.local_addr()?;
            println!("tidegate demo: proxying http://{web}/ to an elastic pool of shop backends (local provisioner)");
            if let Some(a) = &admin {
                println!(
                    "  dashboard: http://{}/   stats: http://{}/stats",
                    a.local_addr()?,
                    a.local_addr()?
                );
            }
            println!("  try:  curl -i http://{web}/products/42");
            println!(
                "  a built-in load generator plays a flash sale once the first backend is up (Ctrl-C stops the demo)"
            );
        }
        let web = bound[0].listener.local_addr()?;
        let state = State::new(config);
        if demo {
            tokio::spawn(tidegate::demo::play_flash_sale(web, std::sync::Arc::clone(&state)));
        }
        let opts = tidegate::app::Options {
            config_path: path.clone(),
            watch_file: watch && path.is_some(),
            reload_on_sighup: true,
            tidegate_exe: std::env::current_exe().ok(),
        };
        tidegate::app::run(state, bound, admin, opts, shutdown_signal()).await;
        if let Some(c) = children {
            c.stop().await;
        }
        tracing::info!("stopped");
        Ok(())
    });
    // A blocking read stuck on a hung mount must not keep the process
    // from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
