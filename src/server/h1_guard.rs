//! A strict HTTP/1 framing check in front of hyper's parser.
//!
//! Data path, first thing after the socket (or TLS). hyper is lenient where
//! a proxy must not be: it accepts bare LF as a line end, and when a request
//! carries both `Content-Length` and `Transfer-Encoding` it quietly drops the
//! former and forwards the request. A front proxy that reads such bytes
//! differently from the backend is how requests are smuggled, so anything
//! ambiguous is refused before hyper parses it.
//!
//! The guard follows message boundaries on the client's byte stream: request
//! heads (line by line), then each body by its framing (`Content-Length`
//! bytes, or chunk-size lines, chunk data and trailers). It refuses:
//! - a bare LF (an LF not preceded by CR) in a head, chunk line or trailer;
//! - `Content-Length` together with `Transfer-Encoding`, in either order;
//! - differing `Content-Length` values;
//! - a chunk-size line that is not hex digits (plus an extension) or whose
//!   chunk data is not followed by CRLF.
//!
//! Refusing means the bytes hyper receives are cut at the offending byte and
//! followed by a NUL, which no HTTP/1 parser accepts: hyper answers 400 and
//! closes the connection (inside a body, the body fails and the upstream
//! exchange is aborted). The connection then reads as closed.
//!
//! It sees HTTP/1 only: the server tells an HTTP/2 connection by its
//! first bytes and never puts this guard in front of one. An `Upgrade`
//! request is *not* a reason to step aside:
//! the bytes after it are still HTTP/1 until the proxy has actually
//! switched the connection (a `101` answered and a tunnel started), which
//! it signals through the shared `switched` flag. (Stepping aside at the
//! request let a refused upgrade smuggle unchecked requests behind it.)
//!
//! The guard also keeps the header-read timeout (slowloris): from the
//! moment the connection waits for a request head, with every earlier
//! exchange ended, until that head has been read whole. When it passes,
//! the read fails and hyper closes the connection without an answer, as
//! its own header timer did. hyper's timer is still configured, since with
//! it set hyper reads the socket after every response (which parking
//! relies on), but it is [`HeadTimerHere`]: it allocates nothing, reads
//! no clock and never fires. The guard's one timer is set once per
//! connection and runs on (benches/README.md: about 1,000 instructions a
//! request less than hyper's boxed sleep made and cancelled per head).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::ClientConn;

/// Longest chunk-size line accepted (size digits plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// What replaces refused bytes: hyper rejects NUL anywhere in a head or a
/// chunk-size line.
const POISON: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head.
    Head,
    /// `Content-Length` body bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Chunk data bytes left, then CRLF.
    ChunkData(u64),
    /// Expecting the CR after chunk data.
    ChunkCr,
    /// Expecting the LF after chunk data.
    ChunkLf,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Not HTTP/1 any more (the connection switched protocols).
    Passthrough,
    /// Refused; everything after reads as end of stream.
    Refused,
}

/// Framing facts gathered from one head.
#[derive(Debug, Default)]
struct HeadFacts {
    lines: usize,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    /// Empty lines came before the request line (allowed, but not a rest:
    /// a client sending only those must meet the header-read timeout).
    blank_before: bool,
}

pub(crate) struct H1Guard<IO> {
    io: IO,
    phase: Phase,
    /// The current line (head, chunk size or trailer), without its LF.
    line: Vec<u8>,
    head: HeadFacts,
    /// Request heads completed on this connection.
    heads: u64,
    /// Limit on a head line; longer lines are left for hyper (431).
    max_line: usize,
    /// Shared with the proxy: `switched` once this connection became a
    /// tunnel; told when the client speaks HTTP/2.
    conn: Arc<ClientConn>,
    /// Exchanges that had ended before this guard's first head (a woken
    /// connection's guard counts heads from zero).
    ended_before: u64,
    /// The header-read timeout.
    head_timeout: Duration,
    /// When the wait for the current head began (read at the first read
    /// that found nothing, with every earlier exchange ended).
    waiting_since: Option<Instant>,
    /// Allocated at the first wait; reset only when it fires for a wait
    /// that is over.
    timer: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Refuse,
}

impl<IO> H1Guard<IO> {
    /// Guards `io`; `conn` is what the connection shares with the proxy.
    /// A request head must be read whole within `head_timeout` of the
    /// connection starting to wait for it.
    pub(crate) fn new(io: IO, max_head_bytes: usize, head_timeout: Duration, conn: Arc<ClientConn>) -> H1Guard<IO> {
        H1Guard {
            io,
            phase: Phase::Head,
            line: Vec::with_capacity(128),
            head: HeadFacts::default(),
            heads: 0,
            max_line: max_head_bytes,
            ended_before: conn.exchanges_ended(),
            conn,
            head_timeout,
            waiting_since: None,
            timer: None,
        }
    }

    /// Between requests: every byte seen belonged to a whole request
    /// (head and body), none of the next one has come.
    pub(crate) fn at_rest(&self) -> bool {
        self.phase == Phase::Head && self.line.is_empty() && self.head.lines == 0 && !self.head.blank_before
    }

    /// Request heads completed so far (each is one exchange for the proxy).
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// The read found nothing: true once the connection has waited for a
    /// head longer than the header-read timeout. Waiting means reading a
    /// head (or nothing yet) with every exchange before it ended: while a
    /// response is produced or sent, hyper reads too, and that is no wait.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.phase != Phase::Head || self.ended_before + self.heads != self.conn.exchanges_ended() {
            return false;
        }
        let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + self.head_timeout;
        loop {
            let Some(timer) = self.timer.as_mut() else {
                self.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
                continue;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Later waits end later: a timer set for an earlier one fired
            // early, and is set again for this one.
            if timer.deadline() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// The guarded stream back.
    pub(crate) fn into_inner(self) -> IO {
        self.io
    }

    /// Runs the framing state machine over newly read bytes. Returns the
    /// offset of the first refused byte, if any.
    fn inspect(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < buf.len() {
            match self.phase {
                Phase::Passthrough | Phase::Refused => return None,
                Phase::Body(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.phase = if take == left {
                        Phase::Head
                    } else {
                        Phase::Body(left - take)
                    };
                }
                Phase::ChunkData(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.phase = if take == left {
                        Phase::ChunkCr
                    } else {
                        Phase::ChunkData(left - take)
                    };
                }
                Phase::ChunkCr => {
                    if buf[i] != b'\r' {
                        return Some(i);
                    }
                    self.phase = Phase::ChunkLf;
                    i += 1;
                }
                Phase::ChunkLf => {
                    if buf[i] != b'\n' {
                        return Some(i);
                    }
                    self.phase = Phase::ChunkSize;
                    i += 1;
                }
                Phase::Head | Phase::ChunkSize | Phase::Trailers => {
                    let rest = &buf[i..];
                    match memchr::memchr(b'\n', rest) {
                        None => {
                            if self.line.len() + rest.len() > self.line_limit() {
                                return self.too_long_line(i);
                            }
                            self.line.extend_from_slice(rest);
                            return None;
                        }
                        Some(nl) => {
                            if self.line.len() + nl > self.line_limit() {
                                return self.too_long_line(i);
                            }
                            // A line read whole is checked where it lies;
                            // only one split across reads is put together.
                            let verdict = if self.line.is_empty() {
                                self.end_of_line(&rest[..nl])
                            } else {
                                let mut line = std::mem::take(&mut self.line);
                                line.extend_from_slice(&rest[..nl]);
                                let verdict = self.end_of_line(&line);
                                line.clear();
                                self.line = line;
                                verdict
                            };
                            if verdict == Verdict::Refuse {
                                return Some(i + nl);
                            }
                            i += nl + 1;
                        }
                    }
                }
            }
        }
        None
    }

    fn line_limit(&self) -> usize {
        match self.phase {
            Phase::ChunkSize => MAX_CHUNK_LINE,
            _ => self.max_line,
        }
    }

    /// An over-long head line is hyper's to refuse (431); an over-long chunk
    /// line is ours.
    fn too_long_line(&mut self, at: usize) -> Option<usize> {
        match self.phase {
            Phase::ChunkSize => Some(at),
            _ => {
                self.phase = Phase::Passthrough;
                None
            }
        }
    }

    /// A line up to its `\n`: refused unless it ends in `\r`, else checked
    /// without it.
    fn end_of_line(&mut self, line: &[u8]) -> Verdict {
        let Some((b'\r', line)) = line.split_last() else {
            return Verdict::Refuse;
        };
        match self.phase {
            Phase::Head => self.head_line(line),
            Phase::ChunkSize => self.chunk_size_line(line),
            Phase::Trailers => {
                if line.is_empty() {
                    self.phase = Phase::Head;
                }
                Verdict::Ok
            }
            _ => Verdict::Ok,
        }
    }

    fn head_line(&mut self, line: &[u8]) -> Verdict {
        if self.head.lines == 0 {
            if line.is_empty() {
                // Empty lines before a request line are allowed (RFC 9112 2.2).
                self.head.blank_before = true;
                return Verdict::Ok;
            }
            self.head.lines = 1;
            return Verdict::Ok;
        }
        if line.is_empty() {
            return self.end_of_head();
        }
        self.head.lines += 1;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Verdict::Ok; // hyper refuses a field line without a colon
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let Some(n) = parse_decimal(trim(part)) else {
                    return Verdict::Refuse;
                };
                match self.head.content_length {
                    Some(prev) if prev != n => return Verdict::Refuse,
                    _ => self.head.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.transfer_encoding = true;
            // The last coding decides; hyper refuses anything else.
            self.head.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        }
        Verdict::Ok
    }

    fn end_of_head(&mut self) -> Verdict {
        let facts = std::mem::take(&mut self.head);
        self.waiting_since = None;
        self.heads += 1;
        if facts.transfer_encoding && facts.content_length.is_some() {
            return Verdict::Refuse;
        }
        self.phase = if facts.transfer_encoding {
            if facts.chunked {
                Phase::ChunkSize
            } else {
                return Verdict::Refuse;
            }
        } else {
            match facts.content_length {
                Some(n) if n > 0 => Phase::Body(n),
                _ => Phase::Head,
            }
        };
        Verdict::Ok
    }

    fn chunk_size_line(&mut self, line: &[u8]) -> Verdict {
        let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
        if digits_end == 0 || digits_end > 16 {
            return Verdict::Refuse;
        }
        let rest = &line[digits_end..];
        // After the size: optional whitespace, then `;` extensions.
        let ext = trim(rest);
        if !ext.is_empty() && ext[0] != b';' {
            return Verdict::Refuse;
        }
        if ext
            .iter()
            .any(|&b| b == 0 || b == b'\r' || (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Verdict::Refuse;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits_end]).unwrap_or("x"), 16);
        match size {
            Ok(0) => self.phase = Phase::Trailers,
            Ok(n) => self.phase = Phase::ChunkData(n),
            Err(_) => return Verdict::Refuse,
        }
        Verdict::Ok
    }
}

/// hyper's header-read timer on HTTP/1.1 connections, left to the guard:
/// every sleep it makes is a zero-sized future that never finishes (a box
/// of nothing allocates nothing), and its clock is a fixed instant (hyper
/// reads it only to compute the deadline it will never see).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadTimerHere(std::time::Instant);

impl HeadTimerHere {
    pub(crate) fn new() -> HeadTimerHere {
        HeadTimerHere(Instant::now().into_std())
    }
}

/// A sleep that never ends.
struct Never;

impl Future for Never {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Never {}

impl hyper::rt::Timer for HeadTimerHere {
    fn sleep(&self, _duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Never)
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Never)
    }

    fn now(&self) -> std::time::Instant {
        self.0
    }

    fn reset(&self, _sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, _deadline: std::time::Instant) {}
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for H1Guard<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase != Phase::Refused && this.conn.switched.load(Ordering::Acquire) {
            this.phase = Phase::Passthrough;
        }
        match this.phase {
            Phase::Refused => return Poll::Ready(Ok(())),
            Phase::Passthrough => return Pin::new(&mut this.io).poll_read(cx, buf),
            _ => {}
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if r.is_pending() && this.head_timed_out(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request head within the header-read timeout",
            )));
        }
        if let Poll::Ready(Ok(())) = r {
            let fresh_end = buf.filled().len();
            if let Some(bad) = this.inspect(&buf.filled()[before..fresh_end]) {
                this.phase = Phase::Refused;
                let cut = before + bad;
                buf.set_filled(cut);
                let n = POISON.len().min(buf.remaining());
                buf.put_slice(&POISON[..n]);
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H1Guard<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the refused offset.
    fn refused_at(input: &[u8], step: usize) -> Option<usize> {
        let mut g = H1Guard::new((), 65536, Duration::from_secs(10), Arc::new(ClientConn::default()));
        let mut off = 0;
        for piece in input.chunks(step) {
            if let Some(bad) = g.inspect(piece) {
                return Some(off + bad);
            }
            off += piece.len();
        }
        None
    }

    fn every_split(input: &[u8]) -> Option<usize> {
        let whole = refused_at(input, input.len().max(1));
        for step in 1..input.len().min(40) {
            assert_eq!(refused_at(input, step), whole, "split into {step}-byte reads");
        }
        whole
    }

    #[test]
    fn accepts_well_formed_pipelined_requests() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /cart HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel\nl\
POST /cart HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhe\nlo\r\n0\r\nX-T: 1\r\n\r\n\
GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(every_split(input), None);
    }

    #[test]
    fn rests_only_between_whole_requests() {
        let mut g = H1Guard::new((), 65536, Duration::from_secs(10), Arc::new(ClientConn::default()));
        assert!(g.at_rest(), "nothing read yet");
        let mut steps = vec![];
        for piece in [
            &b"GET / HTTP/1.1\r\nHo"[..],
            b"st: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
            b"cd",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            b"0\r\n",
            b"\r\n",
            b"\r\n",
            b"G",
        ] {
            assert_eq!(g.inspect(piece), None);
            steps.push((g.at_rest(), g.heads()));
        }
        let rest: Vec<bool> = steps.iter().map(|s| s.0).collect();
        // A blank line before a request line is not a rest: a client
        // sending only those meets the header-read timeout.
        assert_eq!(rest, [false, true, false, true, false, false, true, false, false]);
        let heads: Vec<u64> = steps.iter().map(|s| s.1).collect();
        assert_eq!(heads, [0, 1, 2, 2, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn refuses_bare_lf_in_a_head() {
        assert_eq!(every_split(b"GET / HTTP/1.1\nHost: a\n\n"), Some(14));
        assert!(every_split(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n").is_some());
    }

    #[test]
    fn refuses_content_length_with_transfer_encoding_in_either_order() {
        assert!(
            every_split(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_some()
        );
        assert!(
            every_split(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
                .is_some()
        );
    }

    #[test]
    fn refuses_conflicting_or_malformed_content_length() {
        assert!(every_split(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_some());
        assert!(every_split(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n").is_some());
        assert_eq!(every_split(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhi"), None);
    }

    #[test]
    fn refuses_obfuscated_transfer_encoding() {
        assert!(every_split(b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n").is_some());
        assert!(every_split(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n").is_some());
    }

    #[test]
    fn refuses_malformed_chunks() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"zz\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"5\0\r\n",
            b"11111111111111111\r\n",
        ] {
            let input = [head.clone(), body.to_vec()].concat();
            assert!(every_split(&input).is_some(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn an_upgrade_request_is_not_a_reason_to_stop_checking() {
        // A refused upgrade is served as an ordinary request; what follows
        // it on the connection is checked like any pipelined request.
        let smuggled = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(every_split(smuggled).is_some());
        let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HTTP/1.1\nHost: a\n\n";
        assert!(every_split(connect).is_some());
    }

    #[test]
    fn once_the_proxy_switched_the_connection_bytes_pass_unchecked() {
        let conn = Arc::new(ClientConn::default());
        let mut g = H1Guard::new((), 65536, Duration::from_secs(10), Arc::clone(&conn));
        assert_eq!(
            g.inspect(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            None
        );
        conn.switched.store(true, Ordering::Release);
        // poll_read notices the flag before inspecting; model that here.
        if g.conn.switched.load(Ordering::Acquire) {
            g.phase = Phase::Passthrough;
        }
        assert_eq!(g.inspect(b"\x81\x82\n\0binary frames"), None);
    }

    /// Reads once from `guard` with a waker that does nothing.
    fn read_once(guard: &mut H1Guard<tokio::io::DuplexStream>) -> Poll<io::Result<usize>> {
        let mut bytes = [0u8; 256];
        let mut buf = ReadBuf::new(&mut bytes);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(guard)
            .poll_read(&mut cx, &mut buf)
            .map_ok(|()| buf.filled().len())
    }

    /// A guard (10 s header-read timeout) over one end of an in-memory
    /// pipe; the client's end and the connection's shared state.
    fn guarded_pipe() -> (
        tokio::io::DuplexStream,
        H1Guard<tokio::io::DuplexStream>,
        Arc<ClientConn>,
    ) {
        let conn = Arc::new(ClientConn::default());
        let (client, server) = tokio::io::duplex(1024);
        let guard = H1Guard::new(server, 65536, Duration::from_secs(10), Arc::clone(&conn));
        (client, guard, conn)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_read_whole_within_the_timeout_fails_the_read() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut g, _conn) = guarded_pipe();
        assert!(read_once(&mut g).is_pending(), "the wait for the first head starts");
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(read_once(&mut g), Poll::Ready(Ok(n)) if n > 0));
        assert!(read_once(&mut g).is_pending(), "six seconds into the wait");
        tokio::time::advance(Duration::from_secs(4)).await;
        match read_once(&mut g) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("ten seconds into the wait: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_starts_when_the_exchange_before_it_has_ended() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut g, conn) = guarded_pipe();
        // The first wait sets the timer (for 10 s); the head comes at 2 s
        // and is answered slowly: a response in progress is no wait.
        assert!(read_once(&mut g).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        let exchange = crate::proxy::OpenExchange::new(&conn);
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(matches!(read_once(&mut g), Poll::Ready(Ok(n)) if n > 0));
        // hyper reads on while it answers (to see a client leave).
        assert!(read_once(&mut g).is_pending());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(read_once(&mut g).is_pending(), "the response took 30 s");
        drop(exchange);
        // The wait for the second head starts now, at 32 s: the timer set
        // for the first wait has fired, and is set again for this one.
        assert!(read_once(&mut g).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(read_once(&mut g).is_pending(), "nine seconds into the second wait");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(read_once(&mut g), Poll::Ready(Err(_))), "ten seconds into it");
    }
}
