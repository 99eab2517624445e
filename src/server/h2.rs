//! HTTP/2 client connections, served on the `h2` crate directly.
//!
//! Data path, under `server`. hyper's HTTP/2 server is a layer over `h2`
//! that a proxy pays for without using: it copies each request into its own
//! body type, boxes every stream for an executor, strips connection headers
//! with a lookup per name, and pipes each response through a generic body
//! adapter (about 2,000 of an h2c request's 40,000 instructions,
//! benches/README.md "HTTP/2 on the h2 crate"). [`H2Conn`] does the same
//! work in one place: it accepts streams, runs each on the connection's
//! task (`streams.rs`) as an [`H2Stream`] (the proxy's answer, then its
//! body sent within the client's flow-control window), and ends with the
//! connection. What hyper's server did that a client sees is kept: a
//! `date` on every response, `content-length` when the body's size is
//! known, connection-specific fields removed (HTTP/2 forbids them), a
//! stream the client resets dropped at once (freeing its backend slot),
//! and GOAWAY on graceful shutdown with the streams in flight finished.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

use crate::clock::unix_ms;
use crate::config::Limits;
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::{Proxy, ProxyFuture, ResponseBody};
use crate::upstream::body::{ClientBody, H2Body};

use super::streams::Streams;

/// What an HTTP/2 connection by prior knowledge starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's defaults for what the limits leave open: 1 MiB stream and
/// connection windows (a response streams without waiting on the client's
/// WINDOW_UPDATEs), 16 KiB frames, 400 KiB buffered per stream.
const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client may make fail before the connection is ended
/// (the "MadeYouReset" guard, as hyper).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Whether a plain connection speaks HTTP/2 by prior knowledge: its first
/// bytes are the whole preface. None if it sent nothing (or only a part of
/// the preface) within `timeout`, or closed first. The bytes stay in the
/// socket.
///
/// A part of the preface is peeked again only when more bytes arrive: the
/// peek that finds it clears the socket's readiness (`try_io`), so a client
/// that sends `P` and waits costs one wake, not one per poll interval.
pub(super) async fn starts_with_preface(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let look = async {
        let mut first = [0u8; PREFACE.len()];
        loop {
            let ready = stream.ready(Interest::READABLE).await.ok()?;
            let peeked = stream.try_io(Interest::READABLE, || {
                let (n, _) = rustix::net::recv(stream, &mut first[..], rustix::net::RecvFlags::PEEK)?;
                let partial = n > 0 && n < PREFACE.len() && first[..n] == PREFACE[..n];
                if partial && !ready.is_read_closed() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match peeked {
                Ok(0) => return None,
                Ok(n) => return Some(first[..n] == PREFACE[..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(timeout, look).await.ok().flatten()
}

/// The `h2` server settings for one set of limits.
pub(super) fn builder(limits: &Limits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// One HTTP/2 client connection and its streams.
pub(super) struct H2Conn<IO> {
    state: State<IO>,
    proxy: Proxy,
    streams: Streams<H2Stream>,
    /// Asked to finish before the handshake was done.
    close_pending: bool,
    /// How the connection ended, once it has (its streams may still run).
    ended: Option<Result<(), h2::Error>>,
}

enum State<IO> {
    Handshaking(Handshake<IO, Bytes>),
    Serving(Connection<IO, Bytes>),
    /// The connection is gone; the streams still running see it so.
    Ended,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> H2Conn<IO> {
    pub(super) fn new(io: IO, builder: &h2::server::Builder, proxy: Proxy) -> H2Conn<IO> {
        H2Conn {
            state: State::Handshaking(builder.handshake(io)),
            proxy,
            streams: Streams::default(),
            close_pending: false,
            ended: None,
        }
    }

    /// Stops taking streams (GOAWAY); those in flight finish.
    pub(super) fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.close_pending = true,
            State::Serving(c) => c.graceful_shutdown(),
            State::Ended => {}
        }
    }

    /// Drives the connection and its streams: ready once the connection
    /// has ended and no stream is left.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        // The woken streams first: what they queue goes out in the
        // connection's poll below.
        self.streams.poll(cx);
        if let State::Handshaking(hs) = &mut self.state {
            match Pin::new(hs).poll(cx) {
                Poll::Ready(Ok(mut c)) => {
                    if self.close_pending {
                        c.graceful_shutdown();
                    }
                    self.state = State::Serving(c);
                }
                Poll::Ready(Err(e)) => self.end(Err(e), cx),
                Poll::Pending => return Poll::Pending,
            }
        }
        if let State::Serving(c) = &mut self.state {
            let mut accepted = false;
            let ended = loop {
                match c.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let answer = self.proxy.handle(request(req));
                        self.streams.push(H2Stream::Answering { answer, respond });
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => break Some(Err(e)),
                    Poll::Ready(None) => break Some(Ok(())),
                    Poll::Pending => break None,
                }
            };
            match ended {
                Some(r) => self.end(r, cx),
                None if accepted => self.streams.poll(cx),
                None => {}
            }
            if matches!(self.state, State::Serving(_)) {
                return Poll::Pending;
            }
        }
        if self.streams.is_empty() {
            Poll::Ready(self.ended.take().unwrap_or(Ok(())))
        } else {
            Poll::Pending
        }
    }

    /// The connection is over: dropping it fails what its streams still
    /// wait on, and they finish.
    fn end(&mut self, how: Result<(), h2::Error>, cx: &mut Context<'_>) {
        self.state = State::Ended;
        self.ended = Some(how);
        self.streams.poll(cx);
    }
}

/// A request as the proxy takes it: `h2`'s head with a body that streams
/// the client's DATA frames.
fn request(req: Request<RecvStream>) -> Request<ClientBody> {
    req.map(|recv| ClientBody::H2(H2Body::new(recv)))
}

/// One stream: the proxy's answer, then its body. Held in its node of
/// the connection's `FuturesUnordered` (one allocation): boxing the larger
/// state would add one a request.
#[allow(clippy::large_enum_variant)]
pub(super) enum H2Stream {
    Answering {
        answer: ProxyFuture,
        respond: SendResponse<Bytes>,
    },
    Sending {
        body: ResponseBody,
        send: SendStream<Bytes>,
        /// A frame polled from the body, waiting for flow-control capacity.
        held: Option<(Bytes, bool)>,
    },
    Done,
}

impl Future for H2Stream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let H2Stream::Answering { answer, respond } = this {
            let response = match answer.as_mut().poll(cx) {
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => {
                    // The client may cancel while it waits: the answer is
                    // dropped then, and its backend slot with it.
                    if respond.poll_reset(cx).is_ready() {
                        *this = H2Stream::Done;
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            };
            let (mut head, body) = response.into_parts();
            fit_for_h2(&mut head.headers);
            if !body.is_end_stream() {
                if let Some(len) = body.size_hint().exact() {
                    head.headers
                        .entry(header::CONTENT_LENGTH)
                        .or_insert_with(|| HeaderValue::from(len));
                }
            }
            let end = body.is_end_stream();
            let sent = respond.send_response(Response::from_parts(head, ()), end);
            *this = match sent {
                Ok(send) if !end => H2Stream::Sending { body, send, held: None },
                Ok(_) => H2Stream::Done,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 response not sent");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    H2Stream::Done
                }
            };
        }
        if let H2Stream::Sending { body, send, held } = this {
            if pump(body, send, held, cx).is_pending() {
                return Poll::Pending;
            }
            *this = H2Stream::Done;
        }
        Poll::Ready(())
    }
}

/// Sends `body` on `send` as the client's window allows (as hyper's
/// `PipeToSendStream`): ready when the body has ended, failed, or the
/// client reset the stream.
fn pump(
    body: &mut ResponseBody,
    send: &mut SendStream<Bytes>,
    held: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if let Some((data, end)) = held.take() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => {
                        *held = Some((data, end));
                        return reset_or_wait(send, cx);
                    }
                }
            }
            if send.send_data(data, end).is_err() || end {
                return Poll::Ready(());
            }
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if data.is_empty() {
                        // An empty frame needs no capacity (it may carry
                        // the end of the stream).
                        if send.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                        continue;
                    }
                    // A minimal claim on the window: the frame is in hand,
                    // and `send_data` raises the claim to its length.
                    send.reserve_capacity(1);
                    *held = Some((data, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        if let Err(e) = send.send_trailers(trailers) {
                            tracing::debug!(error = %e, "response trailers not sent; resetting the stream");
                            send.send_reset(Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                }
            },
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(reset_reason(&e));
                return Poll::Ready(());
            }
            Poll::Ready(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
            Poll::Pending => return reset_or_wait(send, cx),
        }
    }
}

/// About to wait: unless the client has reset the stream already (then
/// it is over), its reset wakes this stream too.
fn reset_or_wait(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<()> {
    send.poll_reset(cx).map(|_| ())
}

/// The RST_STREAM code for a response body that failed: the code of the
/// backend's HTTP/2 error when there is one, INTERNAL_ERROR otherwise
/// (and for NO_ERROR, which a client could read as a clean end).
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(Reason::NO_ERROR) | None => Reason::INTERNAL_ERROR,
                Some(reason) => reason,
            };
        }
        source = s.source();
    }
    Reason::INTERNAL_ERROR
}

/// Makes a response head valid for HTTP/2: connection-specific fields
/// (RFC 9113 8.2.2) and those `connection` names removed, by the proxy's
/// own hop-by-hop rule (a no-op on backends' responses, which had theirs
/// removed already), then a `date` added if missing.
fn fit_for_h2(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers, false);
    headers.entry(header::DATE).or_insert_with(http_date);
}

thread_local! {
    /// The `date` value of the current second, made once per second.
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The current time as an HTTP date.
fn http_date() -> HeaderValue {
    let secs = unix_ms() / 1000;
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = httpdate::fmt_http_date(at);
            *d = (
                secs,
                HeaderValue::from_str(&text).expect("an HTTP date is a valid field value"),
            );
        }
        d.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_and_those_named_are_removed_and_a_date_added() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        fit_for_h2(&mut h);
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "date"]);
        assert!(httpdate::parse_http_date(h[header::DATE].to_str().unwrap()).is_ok());
    }

    #[test]
    fn a_date_from_the_backend_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::DATE, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        fit_for_h2(&mut h);
        assert_eq!(h[header::DATE], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(h.len(), 1);
    }

    #[tokio::test]
    async fn the_preface_is_recognised_only_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(5);
        for (sent, expected) in [
            (&PREFACE[..], Some(true)),
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Some(false)),
            (&b"PRI * HTTP/1.1\r\n\r\n"[..], Some(false)),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, sent).await.unwrap();
            assert_eq!(starts_with_preface(&server, timeout).await, expected, "{sent:?}");
        }
        // The preface in two parts is waited for.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, &PREFACE[..10])
            .await
            .unwrap();
        let looking = tokio::spawn(async move { starts_with_preface(&server, timeout).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, &PREFACE[10..])
            .await
            .unwrap();
        assert_eq!(looking.await.unwrap(), Some(true));
        // A part, then silence: not waited for past the timeout.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PR").await.unwrap();
        assert_eq!(starts_with_preface(&server, Duration::from_millis(50)).await, None);
        // A part, then the end of the stream: HTTP/1.1's to refuse, at once
        // (the closed socket stays readable; a later peek would spin).
        tokio::io::AsyncWriteExt::shutdown(&mut client).await.unwrap();
        assert_eq!(starts_with_preface(&server, timeout).await, Some(false));
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_not_waited_for_past_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(starts_with_preface(&server, Duration::from_millis(50)).await, None);
    }
}
