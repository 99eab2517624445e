//! The access log: one line per request, written off the workers.
//!
//! Data path (the sending half) and its own writer thread (the other half).
//! A request that finishes hands its [`Entry`] to [`AccessLog::send`]: one
//! push onto a bounded lock-free queue, never a wait, never a system call
//! and never a write on a worker. A dedicated thread wakes every
//! [`POLL`], formats what is queued (JSON or the combined log format) and
//! writes it with one flush: waking the writer per request cost a futex
//! wake, two context switches and a write per line, which measured +45 %
//! proxy CPU per request. When the writer falls behind and the queue is
//! full, the entry is dropped and counted ([`dropped`],
//! `tidegate_access_log_dropped_total`): a slow disk never slows the proxy.
//!
//! `SIGUSR1` (for logrotate) asks every writer to reopen its file
//! ([`reopen_all`]); the writer does so before its next batch. The log is
//! part of the snapshot: a reload that keeps the `[access_log]` table keeps
//! the writer and its file; one that changes it starts a new writer, and
//! the old one ends (after writing what it holds) when the last request that
//! held it has logged. At exit, [`AccessLog::flush`] waits for the last
//! lines.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use std::time::Duration;

use http::{HeaderValue, Method, Uri, Version};

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Entries the writer has not taken yet, at most.
const QUEUE: usize = 8192;

/// How often the writer looks at its queue (8,192 entries per 20 ms: the
/// log keeps up to about 400,000 requests a second).
const POLL: Duration = Duration::from_millis(20);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Entries dropped because a writer was behind (process lifetime).
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Asks every writer to reopen its file before its next line (SIGUSR1).
pub(crate) fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// When the request arrived, Unix milliseconds.
    pub(crate) start_unix_ms: u64,
    pub(crate) request_id: HeaderValue,
    pub(crate) client: IpAddr,
    pub(crate) method: Method,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) status: u16,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// Arrival to the last byte of the response (or the client leaving).
    pub(crate) duration: Duration,
    /// Time spent waiting for a backend slot.
    pub(crate) queue: Duration,
    pub(crate) pool: Option<Arc<str>>,
    pub(crate) backend: Option<SocketAddr>,
    /// The `x-tidegate-error` label of a response tidegate wrote itself.
    pub(crate) error: Option<&'static str>,
    /// The `[[rate_limit]]` rule that refused the request (429), if one did.
    pub(crate) rate_limit: Option<Arc<str>>,
    /// The route's priority class (`critical`, `normal`, `sheddable`), once routed.
    pub(crate) priority: Option<&'static str>,
    /// What the micro-cache did (`hit`, `miss`, `stale`, `bypass`), on a cached route.
    pub(crate) cache: Option<&'static str>,
    /// The response ended before its last byte (client gone, backend cut).
    pub(crate) incomplete: bool,
}

/// The sending half of one `[access_log]`.
pub(crate) struct AccessLog {
    config: AccessLogConfig,
    queue: Arc<Queue>,
    writer: std::thread::Thread,
}

/// What the workers and the writer share.
struct Queue {
    entries: ArrayQueue<Entry>,
    /// The sending half is gone: write what is left and end.
    closed: AtomicBool,
    /// Batches written (each a drain of the queue and a flush).
    batches: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("config", &self.config).finish()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Relaxed);
        self.writer.unpark();
    }
}

impl AccessLog {
    /// Starts the writer thread for `config`; the file is opened (append,
    /// created if missing) before this returns, so a bad path is an error
    /// here, not a silent loss later.
    pub(crate) fn start(config: &AccessLogConfig) -> std::io::Result<Arc<AccessLog>> {
        let sink = Sink::open(config.path.clone())?;
        let queue = Arc::new(Queue {
            entries: ArrayQueue::new(QUEUE),
            closed: AtomicBool::new(false),
            batches: AtomicU64::new(0),
        });
        let format = config.format;
        let theirs = Arc::clone(&queue);
        let writer = std::thread::Builder::new()
            .name("tidegate-access-log".into())
            .spawn(move || write_loop(&theirs, sink, format))?;
        Ok(Arc::new(AccessLog {
            config: config.clone(),
            queue,
            writer: writer.thread().clone(),
        }))
    }

    /// Blocks until what was queued before the call is written and
    /// flushed, at most `timeout` (at exit: the last lines are not lost).
    pub(crate) fn flush(&self, timeout: Duration) {
        // The batch running now may have drained before our last entries:
        // wait for the one after it.
        let target = self.queue.batches.load(Ordering::Acquire) + 2;
        let tries = timeout.as_millis().max(1);
        for _ in 0..tries {
            if self.queue.batches.load(Ordering::Acquire) >= target {
                return;
            }
            self.writer.unpark();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The settings this writer was started with.
    pub(crate) fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Queues one line; never waits, never wakes the writer. A full
    /// queue drops it (counted).
    pub(crate) fn send(&self, entry: Entry) {
        if self.queue.entries.push(entry).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where lines go: stderr (`path = "-"`) or a file.
enum Sink {
    Stderr(std::io::BufWriter<std::io::Stderr>),
    File {
        path: PathBuf,
        out: std::io::BufWriter<std::fs::File>,
    },
}

impl Sink {
    fn open(path: Option<PathBuf>) -> std::io::Result<Sink> {
        Ok(match path {
            None => Sink::Stderr(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr())),
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                Sink::File {
                    path,
                    out: std::io::BufWriter::with_capacity(64 * 1024, file),
                }
            }
        })
    }

    fn write(&mut self, line: &[u8]) {
        let result = match self {
            Sink::Stderr(out) => out.write_all(line),
            Sink::File { out, .. } => out.write_all(line),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write the access log");
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Sink::Stderr(out) => out.flush(),
            Sink::File { out, .. } => out.flush(),
        };
    }

    /// Reopens a file sink at its path (logrotate moved the old one away).
    fn reopen(&mut self) {
        if let Sink::File { path, out } = self {
            let _ = out.flush();
            match std::fs::OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(file) => *out = std::io::BufWriter::with_capacity(64 * 1024, file),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                }
            }
        }
    }
}

fn write_loop(queue: &Queue, mut sink: Sink, format: AccessLogFormat) {
    let mut seen_reopen = REOPEN.load(Ordering::Relaxed);
    let mut line = String::with_capacity(512);
    loop {
        // Read before draining: whatever was queued before the close is
        // written.
        let last = queue.closed.load(Ordering::Relaxed);
        let asked = REOPEN.load(Ordering::Relaxed);
        if asked != seen_reopen {
            seen_reopen = asked;
            sink.reopen();
        }
        while let Some(entry) = queue.entries.pop() {
            line.clear();
            match format {
                AccessLogFormat::Json => json(&entry, &mut line),
                AccessLogFormat::Combined => combined(&entry, &mut line),
            }
            sink.write(line.as_bytes());
        }
        sink.flush();
        queue.batches.fetch_add(1, Ordering::Release);
        if last {
            return;
        }
        std::thread::park_timeout(POLL);
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A JSON string: quotes, backslashes and control characters escaped;
/// bytes that are not UTF-8 (header values may carry them) as U+FFFD.
fn json_str(out: &mut String, s: &[u8]) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole (most fields are
    // all of one run); in valid UTF-8, bytes from 0x80 up need none.
    let text = String::from_utf8_lossy(s);
    let bytes = text.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&text[run..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&text[run..]);
    out.push('"');
}

fn json_opt(out: &mut String, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-02T14:03:05.123Z`.
pub(crate) fn rfc3339_ms(unix_ms: u64, out: &mut String) {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_ms % 1000
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn json(e: &Entry, out: &mut String) {
    out.push_str("{\"time\":\"");
    rfc3339_ms(e.start_unix_ms, out);
    out.push_str("\",\"request_id\":");
    json_str(out, e.request_id.as_bytes());
    let _ = write!(out, ",\"client\":\"{}\",\"method\":", e.client);
    json_str(out, e.method.as_str().as_bytes());
    out.push_str(",\"host\":");
    json_opt(out, e.host.as_ref().map(HeaderValue::as_bytes));
    out.push_str(",\"path\":");
    json_str(out, e.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"queue_ms\":{:.3},\"pool\":",
        version(e.version),
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1000.0,
        e.queue.as_secs_f64() * 1000.0,
    );
    json_opt(out, e.pool.as_deref().map(str::as_bytes));
    out.push_str(",\"priority\":");
    json_opt(out, e.priority.map(str::as_bytes));
    out.push_str(",\"cache\":");
    json_opt(out, e.cache.map(str::as_bytes));
    match e.backend {
        Some(b) => {
            let _ = write!(out, ",\"backend\":\"{b}\"");
        }
        None => out.push_str(",\"backend\":null"),
    }
    out.push_str(",\"error\":");
    json_opt(out, e.error.map(str::as_bytes));
    out.push_str(",\"rate_limit\":");
    json_opt(out, e.rate_limit.as_deref().map(str::as_bytes));
    out.push_str(",\"user_agent\":");
    json_opt(out, e.user_agent.as_ref().map(HeaderValue::as_bytes));
    out.push_str(",\"referer\":");
    json_opt(out, e.referer.as_ref().map(HeaderValue::as_bytes));
    if e.incomplete {
        out.push_str(",\"incomplete\":true");
    }
    out.push_str("}\n");
}

/// A quoted field of the combined format: `"` and `\` escaped, control
/// bytes as `\xHH`, as nginx escapes them.
fn clf_quoted(out: &mut String, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.push_str("\"-\"");
        return;
    };
    out.push('"');
    for &b in v {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
    out.push('"');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The combined log format (Apache's and nginx's `combined`), plus the
/// request id, duration and pool at the end:
/// `client - - [02/Dec/2026:14:03:05 +0000] "GET /p HTTP/1.1" 200 512 "ref" "ua" id 1.234 pool`.
fn combined(e: &Entry, out: &mut String) {
    let secs = e.start_unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{} - - [{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000] ",
        e.client,
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let request = format!(
        "{} {} {}",
        e.method,
        e.uri.path_and_query().map_or("/", |p| p.as_str()),
        version(e.version)
    );
    clf_quoted(out, Some(request.as_bytes()));
    let _ = write!(out, " {} {} ", e.status, e.bytes_out);
    clf_quoted(out, e.referer.as_ref().map(HeaderValue::as_bytes));
    out.push(' ');
    clf_quoted(out, e.user_agent.as_ref().map(HeaderValue::as_bytes));
    out.push(' ');
    clf_quoted(out, Some(e.request_id.as_bytes()));
    let _ = writeln!(
        out,
        " {:.3} {}",
        e.duration.as_secs_f64(),
        e.pool.as_deref().unwrap_or("-")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start_unix_ms: 1_796_220_185_123,
            request_id: HeaderValue::from_static("4f2a"),
            client: "203.0.113.7".parse().unwrap(),
            method: Method::GET,
            host: Some(HeaderValue::from_static("shop.example")),
            uri: Uri::from_static("/products/42?q=x"),
            version: Version::HTTP_11,
            user_agent: Some(HeaderValue::from_static("curl/8")),
            referer: None,
            status: 200,
            bytes_in: 0,
            bytes_out: 512,
            duration: Duration::from_micros(1234),
            queue: Duration::ZERO,
            pool: Some(Arc::from("shop")),
            backend: Some("127.0.0.1:9001".parse().unwrap()),
            error: None,
            rate_limit: None,
            priority: Some("normal"),
            cache: None,
            incomplete: false,
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_bytes_and_keep_utf8() {
        let mut out = String::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}f é/ü".as_bytes());
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001e\\u007ff é/ü\"");
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e\u{7f}f é/ü");
        out.clear();
        json_str(&mut out, b"bad \xff byte");
        assert_eq!(out, "\"bad \u{fffd} byte\"");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let mut s = String::new();
        rfc3339_ms(0, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        rfc3339_ms(951_782_400_000, &mut s); // a leap day
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        s.clear();
        rfc3339_ms(1_796_220_185_123, &mut s);
        assert_eq!(s, "2026-12-02T14:03:05.123Z");
    }

    #[test]
    fn a_json_line_is_valid_json_with_every_field() {
        let mut line = String::new();
        json(&entry(), &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-02T14:03:05.123Z");
        assert_eq!(v["path"], "/products/42?q=x");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_out"], 512);
        assert_eq!(v["pool"], "shop");
        assert_eq!(v["priority"], "normal");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["rate_limit"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 1.234);
        let mut limited = entry();
        limited.status = 429;
        limited.error = Some("rate_limited");
        limited.rate_limit = Some(Arc::from("api"));
        line.clear();
        json(&limited, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["error"].as_str(), v["rate_limit"].as_str()),
            (Some("rate_limited"), Some("api"))
        );
    }

    #[test]
    fn hostile_bytes_cannot_forge_a_line() {
        let mut e = entry();
        e.user_agent = Some(HeaderValue::from_bytes(b"x\"}, {\"status\":1 \xff\t").unwrap());
        let mut line = String::new();
        json(&e, &mut line);
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["user_agent"], "x\"}, {\"status\":1 \u{fffd}\t");
        line.clear();
        combined(&e, &mut line);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains(r#""x\"}, {\"status\":1 \xFF\x09""#), "{line}");
    }

    #[test]
    fn the_combined_format_reads_like_nginx() {
        let mut line = String::new();
        combined(&entry(), &mut line);
        assert_eq!(
            line,
            "203.0.113.7 - - [02/Dec/2026:14:03:05 +0000] \"GET /products/42?q=x HTTP/1.1\" 200 512 \"-\" \"curl/8\" \"4f2a\" 0.001 shop\n"
        );
    }
}
