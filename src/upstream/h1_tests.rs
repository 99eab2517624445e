//! The upstream HTTP/1.1 client against a scripted backend on a real
//! socket: each test's backend reads request heads and answers with exact
//! bytes, so framing, reuse and refusal are checked on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::body::RequestBody;
use super::h1::{self, Conn, Io};
use super::HeadLimits;

const LIMITS: HeadLimits = HeadLimits {
    bytes: 8 * 1024,
    fields: 16,
};

/// The response deadline where a test does not look at it.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A backend that takes connections one at a time and, for each request
/// head it reads, writes the next of `answers`; it closes the connection
/// after the last answer (or at a request when none is left). It reports
/// each request head, with the connection's number, as they come.
async fn backend(answers: Vec<&'static [u8]>) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        let mut accepted = 0;
        'conns: while let Ok((mut s, _)) = listener.accept().await {
            accepted += 1;
            let mut buf = Vec::new();
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => continue 'conns,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head: Vec<u8> = buf.drain(..end).collect();
                let _ = tx.send(format!("conn {accepted}: {}", String::from_utf8_lossy(&head)));
                match answers.next() {
                    Some(a) => s.write_all(a).await.unwrap(),
                    None => continue 'conns,
                }
                if answers.len() == 0 {
                    continue 'conns;
                }
            }
        }
    });
    (addr, rx)
}

async fn connect(addr: SocketAddr) -> Conn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Conn::new(Io::Tcp(tcp))
}

fn get(path: &str) -> Request<RequestBody> {
    Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "shop")
        .body(RequestBody::empty())
        .unwrap()
}

/// `GET /` on a new connection to a backend that answers with `answer`.
async fn get_from(answer: &'static [u8]) -> Result<http::Response<h1::Body>, h1::Error> {
    let (addr, _heads) = backend(vec![answer]).await;
    send(connect(addr).await, get("/")).await
}

async fn send(conn: Conn, req: Request<RequestBody>) -> Result<http::Response<h1::Body>, h1::Error> {
    match h1::send(conn, req, std::iter::empty(), LIMITS, ANSWER_WITHIN).await {
        Ok(r) => Ok(r),
        Err(h1::SendError::Failed(e)) => Err(e),
        Err(h1::SendError::Closed(_)) => Err(h1::Error::Closed),
        Err(h1::SendError::Unsent(e, _)) => panic!("unsent: {e}"),
    }
}

/// The body's data, its trailers, and whether its connection is reusable.
async fn read_all(mut body: h1::Body) -> (Result<Vec<u8>, h1::Error>, Option<http::HeaderMap>, Option<Conn>) {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Err(e) => return (Err(e), trailers, None),
        }
    }
    let conn = body.reusable();
    (Ok(data), trailers, conn)
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_is_decoded_and_its_connection_reused() {
    let (addr, mut heads) = backend(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n",
        b"HTTP/1.1 201 Made\r\ncontent-length: 2\r\nx-a: \r\n\r\nok",
    ])
    .await;
    let via = (http::header::VIA, http::HeaderValue::from_static("1.1 tidegate"));
    let resp = match h1::send(
        connect(addr).await,
        get("/a?q=1"),
        [(&via.0, &via.1)].into_iter(),
        LIMITS,
        ANSWER_WITHIN,
    )
    .await
    {
        Ok(r) => r,
        Err(_) => panic!("send failed"),
    };
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, trailers, conn) = read_all(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"hello world");
    assert_eq!(trailers.expect("trailers")["x-sum"], "9");
    let head = heads.recv().await.unwrap();
    // The extra fields come after the request's own.
    assert_eq!(
        head,
        "conn 1: GET /a?q=1 HTTP/1.1\r\nhost: shop\r\nvia: 1.1 tidegate\r\n\r\n"
    );

    let resp = send(conn.expect("reusable"), get("/b")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.extensions().get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes(),
        b"Made"
    );
    assert_eq!(resp.headers()["x-a"], "");
    let (data, _, conn) = read_all(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");
    assert!(conn.is_some());
    assert!(heads.recv().await.unwrap().starts_with("conn 1: GET /b "));
}

#[tokio::test]
async fn informational_answers_are_skipped_and_head_or_204_carry_no_body() {
    let (addr, _heads) = backend(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])
    .await;
    let resp = send(connect(addr).await, get("/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, _, conn) = read_all(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");

    let mut head = get("/");
    *head.method_mut() = http::Method::HEAD;
    let resp = send(conn.unwrap(), head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "5000");
    let (data, _, conn) = read_all(resp.into_body()).await;
    assert!(data.unwrap().is_empty());

    let resp = send(conn.expect("a HEAD answer is complete without its body"), get("/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (data, _, conn) = read_all(resp.into_body()).await;
    assert!(data.unwrap().is_empty());
    assert!(conn.is_some());
}

#[tokio::test]
async fn a_body_read_until_close_or_framed_twice_never_reuses_its_connection() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..],
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
    ] {
        let resp = get_from(answer).await.unwrap();
        // Framed both ways: the chunked coding wins, the length goes.
        assert!(!resp.headers().contains_key("content-length") || !resp.headers().contains_key("transfer-encoding"));
        let (data, _, conn) = read_all(resp.into_body()).await;
        let data = data.unwrap();
        assert!(data == b"ok" || data == b"until the end", "{data:?}");
        assert!(conn.is_none(), "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn malformed_or_truncated_answers_are_errors() {
    let invalid: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\nl: 1\r\nm: 1\r\nn: 1\r\no: 1\r\np: 1\r\nq: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nfolded: a\r\n b\r\n\r\n",
    ];
    for answer in invalid {
        let err = get_from(answer).await.err();
        assert!(
            matches!(err, Some(h1::Error::Invalid(_))),
            "{}: {err:?}",
            String::from_utf8_lossy(answer)
        );
    }
    // A head larger than the limit, never completed.
    let huge: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(9000))
            .into_bytes()
            .into_boxed_slice(),
    );
    assert!(matches!(get_from(huge).await, Err(h1::Error::Invalid(_))));

    // Bodies that break off, or lie about their chunks.
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2 x\r\nok\r\n0\r\n\r\n",
        // A trailer section ended by bare LFs, with bytes after it.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: a\n\nJUNK\r\n\r\n",
    ] {
        let resp = get_from(answer).await.unwrap();
        let (data, _, conn) = read_all(resp.into_body()).await;
        assert!(data.is_err(), "{}", String::from_utf8_lossy(answer));
        assert!(conn.is_none());
    }
    // Closed before answering; closed after an interim answer only.
    let (addr, _heads) = backend(vec![]).await;
    assert!(matches!(
        send(connect(addr).await, get("/")).await,
        Err(h1::Error::Closed)
    ));
    assert!(matches!(
        get_from(b"HTTP/1.1 100 Continue\r\n\r\n").await,
        Err(h1::Error::Incomplete)
    ));
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_not_open() {
    let (addr, _heads) = backend(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let resp = send(connect(addr).await, get("/")).await.unwrap();
    let mut conn = read_all(resp.into_body()).await.2.expect("reusable");
    assert!(conn.is_open(), "the backend keeps it open for its second answer");
    let resp = send(conn, get("/")).await.unwrap();
    // The backend hangs up after its last answer.
    let mut conn = read_all(resp.into_body()).await.2.expect("reusable by its framing");
    let mut open = true;
    for _ in 0..200 {
        open = conn.is_open();
        if !open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!open, "an idle connection the backend closed still looks open");
}

#[tokio::test]
async fn a_bodiless_request_the_backend_closed_on_comes_back_whole() {
    // A backend that answers one request, reads the next and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (read_second, second_read) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        let _ = read_second.send(String::from_utf8_lossy(&buf[..n]).into_owned());
    });
    let resp = send(connect(addr).await, get("/first")).await.unwrap();
    let conn = read_all(resp.into_body()).await.2.unwrap();
    let mut req = get("/again?x=1");
    req.headers_mut().insert("x-tag", "7".parse().unwrap());
    match h1::send(conn, req, std::iter::empty(), LIMITS, ANSWER_WITHIN).await {
        Err(h1::SendError::Closed(back)) => {
            assert_eq!(back.method(), http::Method::GET);
            assert_eq!(back.uri(), "/again?x=1");
            assert_eq!(back.headers()["x-tag"], "7");
        }
        Err(h1::SendError::Unsent(e, _)) => panic!("unsent: {e}"),
        Err(h1::SendError::Failed(e)) => panic!("failed: {e}"),
        Ok(_) => panic!("answered"),
    }
    assert!(second_read.await.unwrap().starts_with("GET /again?x=1 "));
}

#[tokio::test]
async fn what_the_backend_sends_after_a_101_reaches_the_tunnel_first() {
    let (addr, _heads) = backend(vec![
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nhello",
    ])
    .await;
    let resp = send(connect(addr).await, get("/ws")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.body().can_upgrade());
    let mut up = resp.into_body().upgraded().expect("an upgraded stream");
    let mut got = vec![0u8; 5];
    up.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // Nothing more is interpreted as HTTP: the stream is raw both ways.
    up.write_all(b"raw").await.unwrap();
}

#[tokio::test]
async fn a_trailer_section_split_across_reads_is_found() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        // The section's end begins in the first write and ends in the last.
        for part in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-a: 1\r"[..],
            b"\nx-b: 2\r",
            b"\n\r",
            b"\n",
        ] {
            s.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = s.read(&mut buf).await;
    });
    let resp = send(connect(addr).await, get("/")).await.unwrap();
    let (data, trailers, conn) = read_all(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");
    let trailers = trailers.expect("trailers");
    assert_eq!(
        (&trailers["x-a"], &trailers["x-b"]),
        (
            &"1".parse::<http::HeaderValue>().unwrap(),
            &"2".parse::<http::HeaderValue>().unwrap()
        )
    );
    assert!(conn.is_some());
}

/// The connection's one deadline timer runs on from one exchange to the
/// next: one that fires for an earlier exchange's deadline moves on to the
/// current one's (the answer after it is taken), and a backend silent past
/// the current deadline times the exchange out.
#[tokio::test(start_paused = true)]
async fn the_response_deadline_is_each_exchanges_own_over_a_kept_connection() {
    const WITHIN: Duration = Duration::from_secs(10);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers after 0 s, 6 s and 30 s.
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for delay in [0, 6, 30] {
            let mut buf = [0u8; 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed");
                seen.extend_from_slice(&buf[..n]);
            }
            tokio::time::sleep(Duration::from_secs(delay)).await;
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let exchange = |conn: Conn| async move {
        let started = tokio::time::Instant::now();
        let result = h1::send(conn, get("/"), std::iter::empty(), LIMITS, WITHIN).await;
        let reused = match result {
            Ok(resp) => Ok(read_all(resp.into_body()).await.2.expect("reusable")),
            Err(h1::SendError::Failed(e)) => Err(e),
            Err(_) => panic!("the request came back"),
        };
        (reused, started.elapsed())
    };
    // The timer is armed for 10 s from now.
    let (conn, took) = exchange(connect(addr).await).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // 7 s later, an answer that takes 6 s: past the first deadline (10 s),
    // within this one's (17 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (conn, took) = exchange(conn.unwrap()).await;
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(7),
        "{took:?}"
    );
    // Silent for 30 s: cut at 10 s.
    let (result, took) = exchange(conn.unwrap()).await;
    assert!(matches!(result, Err(h1::Error::Timeout)), "{:?}", result.err());
    assert!(took >= WITHIN && took < WITHIN + Duration::from_secs(1), "{took:?}");
}
