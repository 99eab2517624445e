//! tidegate's own HTTP/1.1 client, for its connections to backends.
//!
//! Data path, below `proxy/`; the pool of idle connections is in `mod.rs`.
//! hyper's client drives each connection from a task of its own: a request
//! crosses a channel to that task, its response comes back through
//! another, and each response's read buffer is allocated anew while the
//! last response's header values still point into the old one. That was a
//! third of the proxy's instructions per request (benches/README.md). Here
//! the request's own task writes the head and reads the response, and the
//! response body owns the connection: nothing is spawned, nothing crosses
//! a channel, and the read buffer is reused from one response to the next
//! (the response head is copied out of it, small body frames too).
//!
//! The request body is written while the response is read (an echoing
//! backend answers before the upload has ended), by whoever polls the
//! exchange: the send future, then the response body. What a response may
//! be is decided as RFC 9112 says, as hyper did: 1xx skipped (but 101),
//! no body for HEAD, 204 and 304, chunked when the last transfer coding
//! is, otherwise `Content-Length` (all values equal), otherwise until the
//! backend closes. A response that is not reusable (HTTP/1.0,
//! `Connection: close`, both framings, read to close, bytes after its end,
//! an upload not finished) closes its connection instead of going back to
//! the pool. A chunked upload's trailer fields go with its last chunk when
//! the request's `Trailer` field announced them, as hyper's client did.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

use super::body::{RequestBody, RequestBodyError};
use super::HeadLimits;

/// Room made for a read, at first: enough for a typical response whole.
/// A read that fills it doubles it for the next, up to [`MAX_READ`] (a
/// large body comes in fewer, larger reads); the pool gets the connection
/// back at the first size.
const READ_SIZE: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;

/// A read buffer that grew past this (a large head or body) is not kept
/// while its connection is idle.
const KEPT_READ: usize = 16 * 1024;

/// The most fields a connection's spare map keeps room for between
/// exchanges.
const SPARE_FIELDS: usize = 64;

/// A head buffer that grew past this (an upload's batches) is not kept
/// while its connection is idle.
const KEPT_WRITE: usize = 4 * 1024;

/// Body frames shorter than this are copied out of the read buffer, so the
/// buffer is not pinned by a frame the server is still writing.
const COPY_BELOW: usize = 4 * 1024;

/// Response header fields parsed without a heap array.
const STACK_FIELDS: usize = 256;

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Request body bytes gathered into one write, at most.
const UPLOAD_BATCH: usize = 64 * 1024;

/// How an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("backend connection: {0}")]
    Io(#[from] io::Error),
    #[error("the backend closed the connection without answering")]
    Closed,
    #[error("the backend closed the connection mid-response")]
    Incomplete,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("the request body does not match its Content-Length")]
    BodyLength,
    #[error("reading the request body")]
    Body(#[source] RequestBodyError),
    #[error("the backend did not answer in time")]
    Timeout,
}

/// A failed send, with the request back where it may be sent again.
pub(crate) enum SendError {
    /// Writing the head of a bodiless request failed: nothing reached the
    /// backend.
    Unsent(io::Error, Box<Request<RequestBody>>),
    /// The backend closed the connection without a byte of answer to a
    /// bodiless request (on a kept-alive connection, the backend's idle
    /// close crossing the request: RFC 9112 9.3.1 lets an idempotent one be
    /// sent again).
    Closed(Box<Request<RequestBody>>),
    Failed(Error),
}

/// The socket under a connection.
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to a backend, between exchanges.
pub(crate) struct Conn {
    io: Io,
    /// Bytes read and not yet consumed (empty between exchanges).
    rbuf: BytesMut,
    /// The request head being written; kept for its capacity.
    wbuf: Vec<u8>,
    /// Room made for the next read.
    read_size: usize,
    /// The last request's field map, emptied: the next response head is
    /// read into it. A map for a dozen fields is larger than what the
    /// allocator serves from its per-thread cache, and over HTTP/2 nothing
    /// else gives one back. Boxed: a connection is moved with every
    /// exchange, and its size decides how.
    spare: Box<HeaderMap>,
    /// The response deadline's timer, made once and run on from one
    /// exchange to the next (see [`Conn::poll_deadline`]).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub(crate) fn new(io: Io) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            read_size: READ_SIZE,
            spare: Box::default(),
            timer: None,
        }
    }

    /// Ready once `deadline` has passed. The connection's one timer is
    /// armed for the first exchange and left to run: a later exchange's
    /// deadline is later still, so the timer fires early, at most once per
    /// timeout while requests keep coming, and is then set again for the
    /// exchange at hand. (A timer made and cancelled per exchange cost
    /// about 700 instructions a request in the timer wheel.)
    fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(std::future::Future::poll(timer.as_mut(), cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier exchange: on to this one's.
            timer.as_mut().reset(deadline);
        }
    }

    /// Whether the backend has left the connection open and silent: a
    /// read that would block. End of stream, an error, or bytes nobody
    /// asked for all mean it must not carry another request.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Reads more into the read buffer: the count, 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes `wbuf` from `*at` on, then flushes.
    fn poll_write_out(&mut self, at: &mut usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        write_all(&mut self.io, &self.wbuf, at, cx)
    }
}

fn write_all(io: &mut Io, bytes: &[u8], at: &mut usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    while *at < bytes.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &bytes[*at..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *at += n;
    }
    Pin::new(&mut *io).poll_flush(cx)
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request head into `out`: the request line, the fields, and
/// the framing field the body needs. A body with no length and no
/// `Content-Length` goes chunked; a length that the body knows exactly and
/// the head does not state is stated.
fn encode_head<'a>(
    parts: &http::request::Parts,
    extra: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body: &RequestBody,
    out: &mut Vec<u8>,
) -> Framing {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut stated = None;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            stated = stated.or_else(|| parse_length(value.as_bytes()));
        }
        field(out, name, value);
    }
    for (name, value) in extra {
        field(out, name, value);
    }
    let framing = if body.is_end_stream() {
        Framing::None
    } else if let Some(n) = stated {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The request body on its way out, after the head.
struct Upload {
    body: RequestBody,
    framing: Framing,
    /// Encoded bytes not yet written, from `at`.
    out: Vec<u8>,
    at: usize,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    /// The body has ended; `out` holds the last bytes.
    ended: bool,
    /// The trailer fields the request's `Trailer` field announced (as
    /// hyper's client did, only those are sent; only when chunked).
    announced: Vec<HeaderName>,
    /// The client's trailer section, when it sent one.
    trailers: Option<HeaderMap>,
}

impl Upload {
    fn new(body: RequestBody, framing: Framing, headers: &HeaderMap) -> Upload {
        let announced = if framing == Framing::Chunked {
            headers
                .get_all(header::TRAILER)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect()
        } else {
            Vec::new()
        };
        Upload {
            body,
            framing,
            out: Vec::new(),
            at: 0,
            owed: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            ended: false,
            announced,
            trailers: None,
        }
    }

    /// Writes the body: `Ready(Ok)` once all of it has left. What the
    /// client has already sent is gathered into one write (the head, when
    /// it is still in `out`, goes with the first bytes).
    fn poll(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while self.out.len() < UPLOAD_BATCH && !self.ended {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.push(&data)?,
                        Err(frame) => self.trailers = frame.into_trailers().ok(),
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::Body(e))),
                    Poll::Ready(None) => {
                        if self.owed > 0 {
                            return Poll::Ready(Err(Error::BodyLength));
                        }
                        if self.framing == Framing::Chunked {
                            self.last_chunk();
                        }
                        self.ended = true;
                    }
                    Poll::Pending => break,
                }
            }
            // `out` is cleared only once written and flushed: bytes in it
            // (or a flush still owed, as TLS can owe one) are written first.
            if self.out.is_empty() && !self.ended {
                return Poll::Pending;
            }
            ready!(write_all(io, &self.out, &mut self.at, cx))?;
            self.out.clear();
            self.at = 0;
            if self.ended {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// The last chunk, with the announced trailer fields the client sent.
    fn last_chunk(&mut self) {
        self.out.extend_from_slice(b"0\r\n");
        if let Some(trailers) = &self.trailers {
            for (name, value) in trailers.iter().filter(|(n, _)| self.announced.contains(n)) {
                field(&mut self.out, name, value);
            }
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn push(&mut self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Length(_) => {
                self.owed = self.owed.checked_sub(data.len() as u64).ok_or(Error::BodyLength)?;
                self.out.extend_from_slice(data);
            }
            Framing::Chunked => {
                let mut size = [0u8; 16];
                let hex = hex(data.len(), &mut size);
                self.out.extend_from_slice(hex);
                self.out.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
            Framing::None => return Err(Error::BodyLength),
        }
        Ok(())
    }
}

/// `n` in lower-case hexadecimal, written at the end of `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Sends `req` on `conn`, with the `extra` fields after its own (those
/// tidegate adds: they never enter the request's header map), and reads
/// the response head; the response's body owns the connection from then
/// on. A bodiless request comes back when its head could not be written,
/// or when the backend closed without answering it ([`SendError`]). The
/// backend has `answer_within` to send the whole response head, counted
/// from when the request (head and body) has been written: a slow upload
/// is the client's time, not the backend's (Envoy counts the same way).
pub(crate) async fn send<'a>(
    mut conn: Conn,
    req: Request<RequestBody>,
    extra: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    limits: HeadLimits,
    answer_within: Duration,
) -> Result<Response<Body>, SendError> {
    let (mut parts, body) = req.into_parts();
    let framing = encode_head(&parts, extra, &body, &mut conn.wbuf);
    let no_body = parts.method == Method::HEAD;
    let mut upload = (framing != Framing::None).then(|| Box::new(Upload::new(body, framing, &parts.headers)));
    let mut upload_failed = false;
    if upload.is_none() {
        // The head alone: if it cannot be written, the request comes back.
        let mut at = 0;
        if let Err(e) = std::future::poll_fn(|cx| conn.poll_write_out(&mut at, cx)).await {
            if at == 0 {
                return Err(SendError::Unsent(
                    e,
                    Box::new(Request::from_parts(parts, RequestBody::empty())),
                ));
            }
            return Err(SendError::Failed(e.into()));
        }
    } else if let Some(up) = &mut upload {
        // The head goes out with the first body bytes.
        std::mem::swap(&mut up.out, &mut conn.wbuf);
    }
    let bodiless = upload.is_none();
    let mut interim = false;
    let mut deadline = bodiless.then(|| Instant::now() + answer_within);
    let head = std::future::poll_fn(|cx| {
        if let Some(up) = &mut upload {
            match up.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => {
                    // Its buffer keeps its capacity for the next head.
                    conn.wbuf = std::mem::take(&mut up.out);
                    upload = None;
                }
                Poll::Ready(Err(e @ (Error::Body(_) | Error::BodyLength))) => return Poll::Ready(Err(e)),
                // The backend stopped reading: it may have answered already,
                // but the connection carries nothing more.
                Poll::Ready(Err(_)) => {
                    upload = None;
                    upload_failed = true;
                }
                Poll::Pending => {}
            }
            if upload.is_none() {
                deadline = Some(Instant::now() + answer_within);
            }
        }
        let head = poll_head(&mut conn, limits, &mut interim, cx);
        match deadline {
            Some(at) if head.is_pending() && conn.poll_deadline(at, cx).is_ready() => Poll::Ready(Err(Error::Timeout)),
            _ => head,
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(Error::Closed) if bodiless => {
            return Err(SendError::Closed(Box::new(Request::from_parts(
                parts,
                RequestBody::empty(),
            ))))
        }
        Err(e) => return Err(SendError::Failed(e)),
    };
    // The request's map, emptied, takes the next response's fields (one
    // that grew for a crowded request is let go).
    let mut spare = std::mem::take(&mut parts.headers);
    drop(parts);
    spare.clear();
    if spare.capacity() <= SPARE_FIELDS {
        *conn.spare = spare;
    }
    let Head {
        status,
        version,
        headers,
        reason,
        keep_alive,
    } = head;
    let decode = decoder(status, version, &headers, no_body).map_err(SendError::Failed)?;
    // A response framed both ways is read as chunked, and the connection
    // is not trusted with another exchange.
    let both = headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH);
    let reusable = keep_alive && !both && !upload_failed && !matches!(decode, Decode::Close | Decode::Upgrade);
    let mut headers = headers;
    if both {
        // RFC 9112 6.3: the length is the chunked coding's; an intermediary
        // removes the Content-Length that disagrees with it.
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut resp = Response::new(Body {
        conn: Some(conn),
        decode,
        upload,
        reusable,
        trailer_bytes: limits.bytes,
    });
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    if let Some(r) = reason {
        resp.extensions_mut().insert(r);
    }
    Ok(resp)
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    reason: Option<hyper::ext::ReasonPhrase>,
    keep_alive: bool,
}

/// Reads until a final response head (1xx but 101 skipped, noted in
/// `interim`) is complete. The backend closing (or resetting) before a
/// byte of answer is [`Error::Closed`].
fn poll_head(
    conn: &mut Conn,
    limits: HeadLimits,
    interim: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, Error>> {
    loop {
        if !conn.rbuf.is_empty() {
            match parse_head(&conn.rbuf, limits, &mut conn.spare)? {
                Some((len, head)) => {
                    conn.rbuf.advance(len);
                    if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                        *interim = true;
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
                None if conn.rbuf.len() >= limits.bytes => {
                    return Poll::Ready(Err(Error::Invalid("response head too large")))
                }
                None => {}
            }
        }
        let silent = conn.rbuf.is_empty() && !*interim;
        match ready!(conn.poll_fill(cx)) {
            Ok(0) if silent => return Poll::Ready(Err(Error::Closed)),
            Ok(0) => return Poll::Ready(Err(Error::Incomplete)),
            Ok(_) => {}
            // A reset, or TLS ended without close_notify: a close too.
            Err(e) if silent && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof) => {
                return Poll::Ready(Err(Error::Closed))
            }
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// Parses a response head at the start of `buf`: its length and the head,
/// or `None` when more bytes are needed. The head's bytes are copied once
/// (the field values are slices of that copy), so the read buffer is free
/// for the next read. The fields go into `spare`'s allocation.
fn parse_head(buf: &[u8], limits: HeadLimits, spare: &mut HeaderMap) -> Result<Option<(usize, Head)>, Error> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.fields <= STACK_FIELDS {
        &mut stack[..limits.fields]
    } else {
        heap.resize_with(limits.fields, MaybeUninit::uninit);
        &mut heap
    };
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many response header fields")),
        Err(_) => return Err(Error::Invalid("malformed response head")),
    };
    if len > limits.bytes {
        return Err(Error::Invalid("response head too large"));
    }
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code out of range"))?;
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = res
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    let copy = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    // The maps go round: over HTTP/1.1 the client connection keeps this
    // one, emptied, for its next request, whose map comes back here as
    // `spare`; each keeps the room the largest of them needed.
    let mut headers = std::mem::take(spare);
    headers.reserve(res.headers.len());
    let mut keep_alive = version == Version::HTTP_11;
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Invalid("bad field name"))?;
        let value = if h.value.is_empty() {
            HeaderValue::from_static("")
        } else {
            let at = h.value.as_ptr() as usize - base;
            HeaderValue::from_maybe_shared(copy.slice(at..at + h.value.len()))
                .map_err(|_| Error::Invalid("bad field value"))?
        };
        if name == header::CONNECTION && has_token(value.as_bytes(), "close") {
            keep_alive = false;
        }
        headers.append(name, value);
    }
    Ok(Some((
        len,
        Head {
            status,
            version,
            headers,
            reason,
            keep_alive,
        },
    )))
}

/// Whether a comma-separated list holds `token` (any case).
fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body is delimited (RFC 9112 6.3).
fn decoder(status: StatusCode, version: Version, headers: &HeaderMap, no_body: bool) -> Result<Decode, Error> {
    match status.as_u16() {
        101 => return Ok(Decode::Upgrade),
        204 | 304 => return Ok(Decode::Done),
        _ if no_body => return Ok(Decode::Done),
        _ => {}
    }
    // One pass over the fields for both (two hashed lookups cost more than
    // a walk over a response's handful); `Transfer-Encoding` decides when
    // present, whatever the lengths say.
    let mut te = None;
    let mut length = Ok(None);
    for (name, v) in headers {
        if name == header::TRANSFER_ENCODING {
            te = Some(v);
        } else if name == header::CONTENT_LENGTH {
            length = length.and_then(|seen| add_lengths(seen, v));
        }
    }
    if let Some(last) = te {
        if version == Version::HTTP_10 {
            return Err(Error::Invalid("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Decode::Chunked(Chunk::Size)
        } else {
            Decode::Close
        });
    }
    Ok(match length? {
        Some(0) => Decode::Done,
        Some(n) => Decode::Length(n),
        None => Decode::Close,
    })
}

/// The length `seen` so far with a `Content-Length` value's
/// comma-separated lengths, which must all agree.
fn add_lengths(seen: Option<u64>, v: &HeaderValue) -> Result<Option<u64>, Error> {
    v.as_bytes().split(|&b| b == b',').try_fold(seen, |seen, part| {
        let n = parse_length(part.trim_ascii()).ok_or(Error::Invalid("bad Content-Length"))?;
        match seen {
            Some(l) if l != n => Err(Error::Invalid("conflicting Content-Length values")),
            _ => Ok(Some(n)),
        }
    })
}

/// Where the response body's reading stands.
#[derive(Debug)]
enum Decode {
    /// Bytes left under `Content-Length`.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
    /// A 101: what follows is the upgraded protocol's.
    Upgrade,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section, its end searched for from this offset on.
    Trailers(usize),
}

/// A backend's response body, owning its connection until it has been read.
pub(crate) struct Body {
    conn: Option<Conn>,
    decode: Decode,
    /// The rest of the request body, when the backend answered first
    /// (boxed: most requests have none).
    upload: Option<Box<Upload>>,
    reusable: bool,
    /// How large the trailer section may be.
    trailer_bytes: usize,
}

impl Body {
    /// The connection, when the response ended cleanly and it may carry
    /// another request.
    pub(crate) fn reusable(&mut self) -> Option<Conn> {
        let ok = self.reusable
            && self.upload.is_none()
            && matches!(self.decode, Decode::Done)
            && self.conn.as_ref().is_some_and(|c| c.rbuf.is_empty());
        if !ok {
            return None;
        }
        let mut conn = self.conn.take()?;
        if conn.rbuf.capacity() > KEPT_READ {
            conn.rbuf = BytesMut::new();
        }
        // An upload's batch buffer became the head buffer: not kept large.
        if conn.wbuf.capacity() > KEPT_WRITE {
            conn.wbuf = Vec::new();
        }
        conn.read_size = READ_SIZE;
        Some(conn)
    }

    /// Whether this is a 101's with its connection free to switch (no
    /// request body still being written on it).
    pub(crate) fn can_upgrade(&self) -> bool {
        matches!(self.decode, Decode::Upgrade) && self.upload.is_none() && self.conn.is_some()
    }

    /// The connection after a 101, with what the backend already sent of
    /// the new protocol.
    pub(crate) fn upgraded(mut self) -> Option<Upgraded> {
        if !self.can_upgrade() {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Upgraded {
            pre: conn.rbuf.freeze(),
            io: conn.io,
        })
    }

    /// The body's part of a frame from the read buffer: copied when short.
    fn cut(rbuf: &mut BytesMut, n: usize) -> Bytes {
        if n < COPY_BELOW {
            let b = Bytes::copy_from_slice(&rbuf[..n]);
            rbuf.advance(n);
            b
        } else {
            rbuf.split_to(n).freeze()
        }
    }

    /// One step of decoding from what has been read: a frame, the end
    /// (`Ready(None)`), or `Pending` when more must be read.
    fn step(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let rbuf = &mut conn.rbuf;
        match &mut self.decode {
            Decode::Done | Decode::Upgrade => Poll::Ready(None),
            Decode::Length(left) => {
                if rbuf.is_empty() {
                    return Poll::Pending;
                }
                let n = (*left).min(rbuf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.decode = Decode::Done;
                }
                Poll::Ready(Some(Ok(Frame::data(Body::cut(rbuf, n)))))
            }
            Decode::Close => {
                if rbuf.is_empty() {
                    return Poll::Pending;
                }
                let n = rbuf.len();
                Poll::Ready(Some(Ok(Frame::data(Body::cut(rbuf, n)))))
            }
            Decode::Chunked(chunk) => match *chunk {
                Chunk::Size => {
                    let end = match rbuf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') {
                        Some(end) => end,
                        None if rbuf.len() >= MAX_CHUNK_LINE => {
                            return Poll::Ready(Some(Err(Error::Invalid("chunk size line too long"))))
                        }
                        None => return Poll::Pending,
                    };
                    let size = match chunk_size(&rbuf[..=end]) {
                        Some(s) => s,
                        None => return Poll::Ready(Some(Err(Error::Invalid("bad chunk size")))),
                    };
                    rbuf.advance(end + 1);
                    *chunk = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                    self.step()
                }
                Chunk::Data(left) => {
                    if rbuf.is_empty() {
                        return Poll::Pending;
                    }
                    let n = left.min(rbuf.len() as u64) as usize;
                    *chunk = if left == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                    Poll::Ready(Some(Ok(Frame::data(Body::cut(rbuf, n)))))
                }
                Chunk::DataEnd => {
                    if rbuf.len() < 2 {
                        return Poll::Pending;
                    }
                    if &rbuf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Invalid("no CRLF after a chunk"))));
                    }
                    rbuf.advance(2);
                    *chunk = Chunk::Size;
                    self.step()
                }
                Chunk::Trailers(from) => {
                    if rbuf.starts_with(b"\r\n") {
                        rbuf.advance(2);
                        self.decode = Decode::Done;
                        return Poll::Ready(None);
                    }
                    // Each read searches only what it added (and the 3
                    // bytes before it, where an end may have begun).
                    let Some(end) = rbuf[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i) else {
                        if rbuf.len() > self.trailer_bytes {
                            return Poll::Ready(Some(Err(Error::Invalid("trailer section too large"))));
                        }
                        *chunk = Chunk::Trailers(rbuf.len().saturating_sub(3));
                        return Poll::Pending;
                    };
                    let trailers = parse_trailers(&rbuf[..end + 4]);
                    rbuf.advance(end + 4);
                    self.decode = Decode::Done;
                    Poll::Ready(Some(trailers.map(Frame::trailers)))
                }
            },
        }
    }
}

/// A chunk-size line (`1a;ext=v\r\n`): its size. Only spaces and tabs
/// may stand between the size and its extensions, and no control byte
/// anywhere in the line.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if line.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return None;
    }
    let digits = line.split(|&b| b == b';').next()?;
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

/// The trailer fields of a chunked body (ending in the empty line).
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, Error> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    // The section must end where its CRLF CRLF does: httparse also takes a
    // bare LF as a line end, and bytes past its end would be lost.
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((n, parsed))) if n == section.len() => parsed,
        _ => return Err(Error::Invalid("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Error::Invalid("bad trailer name"))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| Error::Invalid("bad trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let (Some(up), Some(conn)) = (&mut this.upload, &mut this.conn) {
            match up.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(e @ (Error::Body(_) | Error::BodyLength))) => {
                    this.upload = None;
                    this.reusable = false;
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.step() {
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.decode, Decode::Close) => {
                    this.decode = Decode::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done | Decode::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done | Decode::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A connection switched to another protocol by a 101.
pub(crate) struct Upgraded {
    /// Bytes the backend sent after the 101's head, read before it.
    pre: Bytes,
    io: Io,
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn decode(pairs: &[(&'static str, &'static str)]) -> Result<Decode, Error> {
        decoder(StatusCode::OK, Version::HTTP_11, &fields(pairs), false)
    }

    #[test]
    fn a_response_body_is_delimited_as_rfc_9112_says() {
        assert!(matches!(decode(&[("content-length", "5")]), Ok(Decode::Length(5))));
        assert!(matches!(
            decode(&[("content-length", "5, 5"), ("content-length", "5")]),
            Ok(Decode::Length(5))
        ));
        assert!(matches!(decode(&[("content-length", "0")]), Ok(Decode::Done)));
        assert!(matches!(decode(&[]), Ok(Decode::Close)));
        assert!(matches!(
            decode(&[("content-length", "5"), ("content-length", "6")]),
            Err(Error::Invalid("conflicting Content-Length values"))
        ));
        assert!(matches!(
            decode(&[("content-length", "5, x")]),
            Err(Error::Invalid("bad Content-Length"))
        ));
        // Transfer-Encoding decides, whatever the lengths say (before or after it).
        assert!(matches!(
            decode(&[("content-length", "x"), ("transfer-encoding", "gzip, chunked")]),
            Ok(Decode::Chunked(Chunk::Size))
        ));
        assert!(matches!(
            decode(&[("transfer-encoding", "chunked"), ("transfer-encoding", "gzip")]),
            Ok(Decode::Close)
        ));
        assert!(decoder(
            StatusCode::OK,
            Version::HTTP_10,
            &fields(&[("transfer-encoding", "chunked")]),
            false
        )
        .is_err());
        let no_content = decoder(
            StatusCode::NO_CONTENT,
            Version::HTTP_11,
            &fields(&[("content-length", "5")]),
            false,
        );
        assert!(matches!(no_content, Ok(Decode::Done)));
    }
}
