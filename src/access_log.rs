//! The access log: one line per request, written off the workers.
//!
//! Data path (the sending half) and its own writer thread (the other half).
//! A line is written in two steps on the worker, into a buffer recycled
//! from the writer: the request's side when it arrives
//! ([`AccessLog::begin`]: time, client, request line, host, user agent,
//! referer, request id, copied out of the request at once, so nothing of
//! it (its header bytes, and with them the connection's read buffer) is
//! held while the request is in flight), and the outcome's side when the
//! response has ended ([`AccessLog::send`]: status, bytes, durations,
//! where it went). A request in flight holds its line's buffer (512 bytes
//! at first) from arrival to the end. The finished line goes onto a
//! bounded lock-free queue: never a wait, never a system call, never a
//! write on a worker. A dedicated thread wakes every [`POLL`], writes what
//! is queued with one flush and hands the buffers back: waking the writer
//! per request cost a futex wake, two context switches and a write per
//! line, which measured +45 % proxy CPU per request. When the writer falls
//! behind and the queue is full, the line is dropped and counted
//! ([`dropped`], `tidegate_access_log_dropped_total`): a slow disk never
//! slows the proxy.
//!
//! `SIGUSR1` (for logrotate) asks every writer to reopen its file
//! ([`reopen_all`]); the writer does so before its next batch. The log is
//! part of the snapshot: a reload that keeps the `[access_log]` table keeps
//! the writer and its file; one that changes it starts a new writer, and
//! the old one ends (after writing what it holds) when the last request that
//! held it has logged. At exit, [`AccessLog::flush`] waits for the last
//! lines.

use std::cell::Cell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use std::time::Duration;

use http::Version;

use crate::config::net::ip_text;
use crate::config::{AccessLogConfig, AccessLogFormat};

/// Lines the writer has not taken yet, at most.
const QUEUE: usize = 8192;

/// Written lines' buffers kept for reuse, at most (a burst allocates more;
/// they are freed instead of kept).
const SPARE: usize = 1024;

/// A line buffer's first capacity; one that grew past [`KEPT_CAPACITY`]
/// (a very long path or user agent) is not reused.
const LINE_CAPACITY: usize = 512;
const KEPT_CAPACITY: usize = 4096;

/// How often the writer looks at its queue (8,192 lines per 20 ms: the
/// log keeps up to about 400,000 requests a second).
const POLL: Duration = Duration::from_millis(20);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because a writer was behind (process lifetime).
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Asks every writer to reopen its file before its next line (SIGUSR1).
pub(crate) fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// What a request tells when it arrives, borrowed from it for
/// [`AccessLog::begin`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival<'a> {
    /// When the request arrived, Unix milliseconds.
    pub(crate) unix_ms: u64,
    pub(crate) request_id: &'a [u8],
    pub(crate) client: IpAddr,
    pub(crate) method: &'a str,
    pub(crate) host: Option<&'a [u8]>,
    /// The path and query.
    pub(crate) target: &'a str,
    pub(crate) version: Version,
    pub(crate) user_agent: Option<&'a [u8]>,
    pub(crate) referer: Option<&'a [u8]>,
}

/// What the rest of the exchange tells: routing, the response, its end.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
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

/// A line begun at arrival: the request's side written, the outcome's to
/// come.
#[derive(Debug)]
pub(crate) struct Line {
    buf: Vec<u8>,
    /// Where the outcome's first part goes (the combined format puts the
    /// status between the request line and the request's other fields).
    split: usize,
}

/// The sending half of one `[access_log]`.
pub(crate) struct AccessLog {
    config: AccessLogConfig,
    queue: Arc<Queue>,
    writer: std::thread::Thread,
}

/// What the workers and the writer share.
struct Queue {
    /// Formatted lines, oldest first.
    lines: ArrayQueue<Vec<u8>>,
    /// Empty buffers the writer handed back.
    spare: ArrayQueue<Vec<u8>>,
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
            lines: ArrayQueue::new(QUEUE),
            spare: ArrayQueue::new(SPARE),
            closed: AtomicBool::new(false),
            batches: AtomicU64::new(0),
        });
        let theirs = Arc::clone(&queue);
        let writer = std::thread::Builder::new()
            .name("tidegate-access-log".into())
            .spawn(move || write_loop(&theirs, sink))?;
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

    /// Writes the request's side of its line.
    pub(crate) fn begin(&self, arrival: &Arrival<'_>) -> Line {
        let buf = self
            .queue
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY));
        begin_line(self.config.format, arrival, buf)
    }

    /// Ends `line` with `outcome` and queues it; never waits, never wakes
    /// the writer. A full queue drops it (counted).
    pub(crate) fn send(&self, line: Line, outcome: &Outcome) {
        if self
            .queue
            .lines
            .push(end_line(self.config.format, line, outcome))
            .is_err()
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The request's side of a line, into `buf` (empty).
fn begin_line(format: AccessLogFormat, a: &Arrival<'_>, mut buf: Vec<u8>) -> Line {
    match format {
        AccessLogFormat::Json => json_arrival(a, &mut buf),
        AccessLogFormat::Combined => return combined_arrival(a, buf),
    }
    let split = buf.len();
    Line { buf, split }
}

/// The whole line: `line` with the outcome's side added.
fn end_line(format: AccessLogFormat, line: Line, o: &Outcome) -> Vec<u8> {
    match format {
        AccessLogFormat::Json => {
            let mut buf = line.buf;
            json_outcome(o, &mut buf);
            buf
        }
        AccessLogFormat::Combined => combined_outcome(line, o),
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

fn write_loop(queue: &Queue, mut sink: Sink) {
    let mut seen_reopen = REOPEN.load(Ordering::Relaxed);
    loop {
        // Read before draining: whatever was queued before the close is
        // written.
        let last = queue.closed.load(Ordering::Relaxed);
        let asked = REOPEN.load(Ordering::Relaxed);
        if asked != seen_reopen {
            seen_reopen = asked;
            sink.reopen();
        }
        while let Some(mut line) = queue.lines.pop() {
            sink.write(&line);
            if line.capacity() <= KEPT_CAPACITY {
                line.clear();
                let _ = queue.spare.push(line);
            }
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

/// Bytes a JSON string cannot carry as they are: `"`, `\`, control bytes
/// (and DEL, escaped too so a terminal shows nothing raw).
const fn json_escapes() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
}
const JSON_ESCAPES: [bool; 256] = json_escapes();

/// A JSON string: quotes, backslashes and control characters escaped;
/// bytes that are not UTF-8 (header values may carry them) as U+FFFD.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if plain_ascii(s) {
        out.extend_from_slice(s);
    } else if s.is_ascii() {
        json_escaped(out, s);
    } else {
        json_escaped(out, String::from_utf8_lossy(s).as_bytes());
    }
    out.push(b'"');
}

/// Printable ASCII with no `"` or `\`: what nearly every field is, and
/// what goes into a JSON string as it is. Eight bytes at a time (a byte's
/// high bit set in `x - k` or in `k' - x` flags it below or above a
/// bound; see "Bit Twiddling Hacks", haszero/hasless).
fn plain_ascii(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let flagged = |x: u64| {
        let below_space = x.wrapping_sub(ONES * 0x20) & !x;
        // DEL (0x7f) and anything from 0x80: bit 7 of x + 1 per byte.
        let del_or_high = (x & !HIGH).wrapping_add(ONES) | x;
        ((below_space | del_or_high) & HIGH)
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
    };
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if flagged(x) != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| !JSON_ESCAPES[usize::from(b)] && b < 0x80)
}

/// UTF-8 bytes, escaped for a JSON string. Runs that need no escape (most
/// fields are one run) are copied whole; from 0x80 up nothing needs one.
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !JSON_ESCAPES[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn json_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-02T14:03:05.123Z`.
fn rfc3339_ms(unix_ms: u64, out: &mut Vec<u8>) {
    second(out, unix_ms, AccessLogFormat::Json);
    out.push(b'.');
    padded(out, unix_ms % 1000, 3);
    out.push(b'Z');
}

/// The date and clock of `unix_ms`'s second as `format` writes them
/// (`2026-12-02T14:03:05`, `02/Dec/2026:14:03:05`). Consecutive lines
/// nearly always share their second: each thread keeps the last one
/// written and copies it.
fn second(out: &mut Vec<u8>, unix_ms: u64, format: AccessLogFormat) {
    /// `(Unix second, format, text, its length)`.
    type Written = (u64, AccessLogFormat, [u8; 20], usize);
    thread_local! {
        static LAST: Cell<Option<Written>> = const { Cell::new(None) };
    }
    let unix_s = unix_ms / 1000;
    if let Some((s, f, text, len)) = LAST.get() {
        if (s, f) == (unix_s, format) {
            out.extend_from_slice(&text[..len]);
            return;
        }
    }
    let start = out.len();
    let ((y, m, d), second_of_day) = civil(unix_ms);
    match format {
        AccessLogFormat::Json => {
            padded(out, y, 4);
            out.push(b'-');
            padded(out, u64::from(m), 2);
            out.push(b'-');
            padded(out, u64::from(d), 2);
            out.push(b'T');
        }
        AccessLogFormat::Combined => {
            padded(out, u64::from(d), 2);
            out.push(b'/');
            out.extend_from_slice(MONTHS[(m - 1) as usize].as_bytes());
            out.push(b'/');
            padded(out, y, 4);
            out.push(b':');
        }
    }
    clock(out, second_of_day);
    let written = &out[start..];
    let mut text = [0u8; 20];
    if let Some(slot) = text.get_mut(..written.len()) {
        slot.copy_from_slice(written);
        LAST.set(Some((unix_s, format, text, written.len())));
    }
}

// Numbers and addresses are written digit by digit: `core::fmt` (write!)
// was most of the log's cost per line.

/// `n` in decimal.
fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The last `width` decimal digits of `n` (zero-padded; dates' fields).
fn padded(out: &mut Vec<u8>, n: u64, width: u32) {
    let mut div = 10u64.pow(width - 1);
    while div > 0 {
        out.push(b'0' + (n / div % 10) as u8);
        div /= 10;
    }
}

/// `thousandths` as a decimal with three places (`1.234`).
fn decimal3(out: &mut Vec<u8>, thousandths: u64) {
    number(out, thousandths / 1000);
    out.push(b'.');
    padded(out, thousandths % 1000, 3);
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(ip_text(ip, &mut [0; 48]));
}

fn socket(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => ip(out, IpAddr::V4(*v4.ip())),
        SocketAddr::V6(v6) => {
            out.push(b'[');
            ip(out, IpAddr::V6(*v6.ip()));
            out.push(b']');
        }
    }
    out.push(b':');
    number(out, u64::from(addr.port()));
}

/// A Unix time in milliseconds as its UTC date (year, month, day) and
/// second of the day.
fn civil(unix_ms: u64) -> ((u64, u32, u32), u64) {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    ((y.max(0) as u64, m, d), secs % 86_400)
}

/// `HH:MM:SS` of a second of the day.
fn clock(out: &mut Vec<u8>, second_of_day: u64) {
    padded(out, second_of_day / 3600, 2);
    out.push(b':');
    padded(out, second_of_day / 60 % 60, 2);
    out.push(b':');
    padded(out, second_of_day % 60, 2);
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

/// `{"time":..., ..., "referer":...` (the request's fields).
fn json_arrival(a: &Arrival<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_ms(a.unix_ms, out);
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(out, a.request_id);
    out.extend_from_slice(b",\"client\":\"");
    ip(out, a.client);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, a.method.as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_opt(out, a.host);
    out.extend_from_slice(b",\"path\":");
    json_str(out, a.target.as_bytes());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(version(a.version).as_bytes());
    out.extend_from_slice(b"\",\"user_agent\":");
    json_opt(out, a.user_agent);
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, a.referer);
}

/// `,"status":..., ...}` and the newline (the outcome's fields).
fn json_outcome(o: &Outcome, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(o.status));
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, o.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, o.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    decimal3(out, o.duration.as_micros() as u64);
    out.extend_from_slice(b",\"queue_ms\":");
    decimal3(out, o.queue.as_micros() as u64);
    out.extend_from_slice(b",\"pool\":");
    json_opt(out, o.pool.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"priority\":");
    json_opt(out, o.priority.map(str::as_bytes));
    out.extend_from_slice(b",\"cache\":");
    json_opt(out, o.cache.map(str::as_bytes));
    match o.backend {
        Some(b) => {
            out.extend_from_slice(b",\"backend\":\"");
            socket(out, b);
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"backend\":null"),
    }
    out.extend_from_slice(b",\"error\":");
    json_opt(out, o.error.map(str::as_bytes));
    out.extend_from_slice(b",\"rate_limit\":");
    json_opt(out, o.rate_limit.as_deref().map(str::as_bytes));
    if o.incomplete {
        out.extend_from_slice(b",\"incomplete\":true");
    }
    out.extend_from_slice(b"}\n");
}

/// A quoted field of the combined format: `"` and `\` escaped, control
/// bytes as `\xHH`, as nginx escapes them.
fn clf_quoted(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.extend_from_slice(b"\"-\"");
        return;
    };
    out.push(b'"');
    clf_escaped(out, v);
    out.push(b'"');
}

/// Bytes of a quoted field, escaped as [`clf_quoted`] says.
fn clf_escaped(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)].to_ascii_uppercase());
                out.push(HEX[usize::from(b & 0xf)].to_ascii_uppercase());
            }
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The combined log format (Apache's and nginx's `combined`), plus the
/// request id, duration and pool at the end:
/// `client - - [02/Dec/2026:14:03:05 +0000] "GET /p HTTP/1.1" 200 512 "ref" "ua" "id" 1.234 pool`.
/// At arrival: all but the status, the bytes, the duration and the pool,
/// with the split after the request line.
fn combined_arrival(a: &Arrival<'_>, mut out: Vec<u8>) -> Line {
    ip(&mut out, a.client);
    out.extend_from_slice(b" - - [");
    second(&mut out, a.unix_ms, AccessLogFormat::Combined);
    out.extend_from_slice(b" +0000] \"");
    clf_escaped(&mut out, a.method.as_bytes());
    out.push(b' ');
    clf_escaped(&mut out, a.target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version(a.version).as_bytes());
    out.extend_from_slice(b"\" ");
    let split = out.len();
    clf_quoted(&mut out, a.referer);
    out.push(b' ');
    clf_quoted(&mut out, a.user_agent);
    out.push(b' ');
    clf_quoted(&mut out, Some(a.request_id));
    Line { buf: out, split }
}

/// The combined line finished: `status bytes ` at the split, the duration
/// and the pool at the end.
fn combined_outcome(line: Line, o: &Outcome) -> Vec<u8> {
    let Line { buf: mut out, split } = line;
    let tail = out.len();
    number(&mut out, u64::from(o.status));
    out.push(b' ');
    number(&mut out, o.bytes_out);
    out.push(b' ');
    let moved = out.len() - tail;
    out[split..].rotate_right(moved);
    out.push(b' ');
    decimal3(&mut out, o.duration.as_millis() as u64);
    out.push(b' ');
    clf_escaped(&mut out, o.pool.as_deref().unwrap_or("-").as_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival() -> Arrival<'static> {
        Arrival {
            unix_ms: 1_796_220_185_123,
            request_id: b"4f2a",
            client: "203.0.113.7".parse().unwrap(),
            method: "GET",
            host: Some(b"shop.example"),
            target: "/products/42?q=x",
            version: Version::HTTP_11,
            user_agent: Some(b"curl/8"),
            referer: None,
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            status: 200,
            bytes_out: 512,
            duration: Duration::from_micros(1234),
            pool: Some(Arc::from("shop")),
            backend: Some("127.0.0.1:9001".parse().unwrap()),
            priority: Some("normal"),
            ..Outcome::default()
        }
    }

    /// The line for `a` and `o`, begun and ended as a request would.
    fn line(format: AccessLogFormat, a: &Arrival<'_>, o: &Outcome) -> Vec<u8> {
        end_line(format, begin_line(format, a, Vec::new()), o)
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_bytes_and_keep_utf8() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}f é/ü".as_bytes());
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001e\\u007ff é/ü\"");
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e\u{7f}f é/ü");
        let mut out = Vec::new();
        json_str(&mut out, b"bad \xff byte");
        assert_eq!(String::from_utf8(out).unwrap(), "\"bad \u{fffd} byte\"");
    }

    #[test]
    fn the_fast_scan_agrees_with_the_byte_table() {
        // Every byte value at every position of strings around the word
        // size, on a background of plain letters.
        for len in [1usize, 7, 8, 9, 16, 17] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let expected = !JSON_ESCAPES[usize::from(b)] && b < 0x80;
                    assert_eq!(plain_ascii(&s), expected, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(plain_ascii(b"Mozilla/5.0 (X11; Linux x86_64) ~"));
        assert!(plain_ascii(b""));
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let date = |ms| {
            let mut s = Vec::new();
            rfc3339_ms(ms, &mut s);
            String::from_utf8(s).unwrap()
        };
        assert_eq!(date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(date(951_782_400_000), "2000-02-29T00:00:00.000Z"); // a leap day
        assert_eq!(date(1_796_220_185_123), "2026-12-02T14:03:05.123Z");
        // The second remembered per thread: the same second again, in the
        // other format, then the next second.
        let combined = |ms| {
            let mut s = Vec::new();
            second(&mut s, ms, AccessLogFormat::Combined);
            String::from_utf8(s).unwrap()
        };
        assert_eq!(date(1_796_220_185_999), "2026-12-02T14:03:05.999Z");
        assert_eq!(combined(1_796_220_185_500), "02/Dec/2026:14:03:05");
        assert_eq!(date(1_796_220_185_001), "2026-12-02T14:03:05.001Z");
        assert_eq!(date(1_796_220_186_000), "2026-12-02T14:03:06.000Z");
        assert_eq!(combined(1_796_220_186_000), "02/Dec/2026:14:03:06");
    }

    #[test]
    fn a_json_line_is_valid_json_with_every_field() {
        let json = |a: &Arrival<'_>, o: &Outcome| {
            let line = line(AccessLogFormat::Json, a, o);
            assert_eq!(line.iter().position(|&b| b == b'\n'), Some(line.len() - 1));
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()
        };
        let v = json(&arrival(), &outcome());
        assert_eq!(v["time"], "2026-12-02T14:03:05.123Z");
        assert_eq!(v["path"], "/products/42?q=x");
        assert_eq!(
            (&v["host"], &v["user_agent"], &v["referer"]),
            (&"shop.example".into(), &"curl/8".into(), &serde_json::Value::Null)
        );
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_out"], 512);
        assert_eq!(v["pool"], "shop");
        assert_eq!(v["priority"], "normal");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["rate_limit"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 1.234);
        let mut limited = outcome();
        limited.status = 429;
        limited.error = Some("rate_limited");
        limited.rate_limit = Some(Arc::from("api"));
        let v = json(&arrival(), &limited);
        assert_eq!(
            (v["error"].as_str(), v["rate_limit"].as_str()),
            (Some("rate_limited"), Some("api"))
        );
        let mut v6 = arrival();
        v6.client = "2001:db8::7".parse().unwrap();
        let mut o = outcome();
        o.backend = Some("[::1]:9001".parse().unwrap());
        o.duration = Duration::from_nanos(12_345_678_901);
        o.queue = Duration::from_micros(50);
        let v = json(&v6, &o);
        assert_eq!(
            (&v["client"], &v["backend"], &v["duration_ms"], &v["queue_ms"]),
            (
                &serde_json::json!("2001:db8::7"),
                &serde_json::json!("[::1]:9001"),
                &serde_json::json!(12345.678),
                &serde_json::json!(0.05)
            )
        );
    }

    #[test]
    fn hostile_bytes_cannot_forge_a_line() {
        let mut a = arrival();
        a.user_agent = Some(b"x\"}, {\"status\":1 \xff\t");
        let json = line(AccessLogFormat::Json, &a, &outcome());
        assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["user_agent"], "x\"}, {\"status\":1 \u{fffd}\t");
        let line = String::from_utf8(line(AccessLogFormat::Combined, &a, &outcome())).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains(r#""x\"}, {\"status\":1 \xFF\x09""#), "{line}");
    }

    #[test]
    fn the_combined_format_reads_like_nginx() {
        assert_eq!(
            String::from_utf8(line(AccessLogFormat::Combined, &arrival(), &outcome())).unwrap(),
            "203.0.113.7 - - [02/Dec/2026:14:03:05 +0000] \"GET /products/42?q=x HTTP/1.1\" 200 512 \"-\" \"curl/8\" \"4f2a\" 0.001 shop\n"
        );
    }
}
