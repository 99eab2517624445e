//! HTTP/2 streams run on their connection's task.
//!
//! Data path, under `server`. Each stream an HTTP/2 connection accepts
//! (the proxy's future for the request, then the response's sending,
//! `h2.rs`) joins its connection's [`Streams`] instead of becoming a task
//! of its own, as HAProxy and nginx serve all streams of a connection in
//! one place: no task allocation, no registration in the runtime's task
//! list, no trip through the scheduler at each wake and no second wake, of
//! the connection's task, for every frame a stream sends. The connection's
//! task polls the woken streams first, so what they send goes out in the
//! connection's poll that follows. Measured in benches/README.md ("HTTP/2
//! streams on the connection's task").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream as _};

/// The streams of one connection, polled by its task. Allocated at the
/// first stream.
pub(crate) struct Streams<F> {
    running: Option<FuturesUnordered<Entry<F>>>,
}

impl<F> Default for Streams<F> {
    fn default() -> Self {
        Streams { running: None }
    }
}

/// A stream, or the one entry that never finishes and is never woken.
/// `FuturesUnordered` wakes its own task whenever one call has polled as
/// many futures as it holds (its guard against starving the executor),
/// which for a connection is nearly every time all its woken streams have
/// been polled: a spurious wake, and a poll of the whole connection, each
/// time. Polled once when it joins, the sentinel keeps that count out of
/// reach; the other guard (two futures that woke themselves while polled)
/// stays.
enum Entry<F> {
    Sentinel,
    Stream(F),
}

impl<F: Future<Output = ()> + Unpin> Future for Entry<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Entry::Sentinel => Poll::Pending,
            Entry::Stream(f) => Pin::new(f).poll(cx),
        }
    }
}

impl<F: Future<Output = ()> + Unpin> Streams<F> {
    /// Takes in a stream; it runs at the next [`Streams::poll`].
    pub(crate) fn push(&mut self, stream: F) {
        self.running
            .get_or_insert_with(|| {
                let set = FuturesUnordered::new();
                set.push(Entry::Sentinel);
                set
            })
            .push(Entry::Stream(stream));
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

    #[tokio::test]
    async fn streams_run_on_the_polling_task_until_each_is_done() {
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut streams = Streams::<Boxed>::default();
        assert!(streams.is_empty());
        let counted = Arc::clone(&done);
        streams.push(Box::pin(async move {
            let _ = rx.await;
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        let counted = Arc::clone(&done);
        streams.push(Box::pin(async move {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
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
        let mut streams = Streams::<Boxed>::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        streams.push(Box::pin(async move {
            // Two messages: woken by the first, it waits again.
            let _ = rx.recv().await;
            let _ = rx.recv().await;
        }));
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
}
