//! HTTP/2 streams run on their connection's task.
//!
//! Data path, under `server`. hyper's HTTP/2 server hands every accepted
//! stream (the proxy's future for the request, then the response's
//! sending) to an executor. `TokioExecutor` spawns a task per stream: an
//! allocation, a registration in the runtime's task list, a trip through
//! the scheduler at each wake, and a second wake, of the connection's
//! task, for every frame the stream sends. [`OnConnection`] keeps them on
//! the connection's own task instead (as HAProxy and nginx serve all
//! streams of a connection in one place): hyper's connection accepts them
//! into [`ACCEPTED`] while the connection's task polls it (once the
//! connection is known to be HTTP/2: an HTTP/1.1 one pays nothing), and
//! [`Streams`] polls them, woken one by one, in that same task, before
//! the connection writes what they sent. Measured in benches/README.md
//! ("HTTP/2 streams on the connection's task").
//!
//! Outside that scope (the first poll of a plain connection, before its
//! preface is read) a stream is spawned as before.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream as _};

/// A stream hyper handed over: boxed, since hyper's type is not nameable.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// Streams the connection accepted during the current poll, not yet
    /// polled themselves.
    static ACCEPTED: RefCell<Vec<Stream>>;
}

/// hyper's executor for HTTP/2 streams: onto the connection's task.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OnConnection;

impl<F> hyper::rt::Executor<F> for OnConnection
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Some(fut);
        let _ = ACCEPTED.try_with(|accepted| {
            if let Some(f) = fut.take() {
                accepted.borrow_mut().push(Box::pin(f));
            }
        });
        if let Some(f) = fut {
            tokio::spawn(f);
        }
    }
}

/// The streams of one connection, polled by its task. Allocated at the
/// first stream: an HTTP/1.1 connection never has one.
#[derive(Default)]
pub(crate) struct Streams {
    running: Option<FuturesUnordered<Stream>>,
    /// Where [`ACCEPTED`] lives between polls, so its capacity is kept.
    spare: Vec<Stream>,
}

/// A set holding, besides the streams, one future that never finishes and
/// is never woken. `FuturesUnordered` wakes its own task whenever one call
/// has polled as many futures as it holds (its guard against starving the
/// executor), which for a connection is nearly every time all its woken
/// streams have been polled: a spurious wake, and a poll of the whole
/// connection, each time. Polled once when it joins, the sentinel keeps
/// that count out of reach; the other guard (two futures that woke
/// themselves while polled) stays.
fn with_sentinel() -> FuturesUnordered<Stream> {
    let set = FuturesUnordered::new();
    set.push(Box::pin(std::future::pending()) as Stream);
    set
}

impl Streams {
    /// Runs `poll_conn` (one poll of the connection) with a place for the
    /// streams it accepts, then takes them in; true if it accepted any.
    pub(crate) fn accepting<R>(&mut self, poll_conn: impl FnOnce() -> R) -> (R, bool) {
        let place = RefCell::new(std::mem::take(&mut self.spare));
        let (r, mut accepted) = ACCEPTED.sync_scope(place, || {
            let r = poll_conn();
            (r, ACCEPTED.with(|a| std::mem::take(&mut *a.borrow_mut())))
        });
        let any = !accepted.is_empty();
        if any {
            let running = self.running.get_or_insert_with(with_sentinel);
            for stream in accepted.drain(..) {
                running.push(stream);
            }
        }
        self.spare = accepted;
        (r, any)
    }

    /// Polls the streams that were woken (or are new) until each is done
    /// or waits; `cx` is woken when one of them can go on.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        while let Poll::Ready(Some(())) = Pin::new(&mut *running).poll_next(cx) {}
    }

    /// Whether no stream is left running (the sentinel is not one).
    pub(crate) fn is_empty(&self) -> bool {
        self.running.as_ref().is_none_or(|r| r.len() <= 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn accepted_streams_run_on_the_polling_task_until_each_is_done() {
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut streams = Streams::default();
        assert!(streams.is_empty());
        let ((), any) = streams.accepting(|| {
            let counted = Arc::clone(&done);
            OnConnection.execute(async move {
                let _ = rx.await;
                counted.fetch_add(1, Ordering::Relaxed);
            });
            let counted = Arc::clone(&done);
            OnConnection.execute(async move {
                counted.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert!(any);
        assert!(!streams.accepting(|| ()).1, "each stream is taken in once");
        std::future::poll_fn(|cx| {
            streams.poll(cx);
            Poll::Ready(())
        })
        .await;
        assert_eq!(
            done.load(Ordering::Relaxed),
            1,
            "the ready stream ran, the waiting one waits"
        );
        assert!(!streams.is_empty());
        tx.send(()).unwrap();
        std::future::poll_fn(|cx| {
            streams.poll(cx);
            if streams.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert_eq!(done.load(Ordering::Relaxed), 2);
    }

    /// Counts the wakes of the task polling the streams.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_woken_stream_that_waits_again_does_not_wake_the_connection() {
        let mut streams = Streams::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        streams.accepting(|| {
            OnConnection.execute(async move {
                // Two messages: woken by the first, it waits again.
                let _ = rx.recv().await;
                let _ = rx.recv().await;
            })
        });
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        streams.poll(&mut cx);
        tx.send(()).unwrap();
        let woken = wakes.0.load(Ordering::Relaxed);
        assert!(woken >= 1, "the message woke the connection");
        // The only stream is polled and waits again: nothing else to do.
        streams.poll(&mut cx);
        assert!(!streams.is_empty());
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            woken,
            "a poll that leaves every stream waiting asks for no other"
        );
        tx.send(()).unwrap();
        streams.poll(&mut cx);
        assert!(streams.is_empty());
    }

    #[tokio::test]
    async fn outside_a_connection_a_stream_is_spawned() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        OnConnection.execute(async move {
            let _ = tx.send(7);
        });
        assert_eq!(rx.await.unwrap(), 7);
    }
}
