//! A stop signal for many client tasks that costs no lock per poll.
//!
//! Client loops poll the stop future every time their socket has nothing
//! more to read; with thousands of clients a shared `Notify` (or a
//! `watch` channel) would take one mutex on each of those polls. Here each
//! client has a waker slot of its own and the signal is a flag.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// Raised once; every client sees it.
#[derive(Debug)]
pub(crate) struct Stop {
    raised: AtomicBool,
    wakers: Box<[AtomicWaker]>,
}

impl Stop {
    /// A signal for `clients` clients.
    pub(crate) fn new(clients: usize) -> Self {
        Self {
            raised: AtomicBool::new(false),
            wakers: (0..clients).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// Raises the signal and wakes every client waiting for it.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        for waker in &*self.wakers {
            waker.wake();
        }
    }

    /// Whether [`raise`](Self::raise) was called.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised (client `index` waits).
    ///
    /// Only one future per index may wait at a time.
    pub(crate) async fn wait(&self, index: usize) {
        poll_fn(|cx| {
            if let Some(waker) = self.wakers.get(index) {
                waker.register(cx.waker());
            }
            if self.is_raised() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_every_waiter() {
        let stop = Arc::new(Stop::new(3));
        let waiters: Vec<_> = (0..3)
            .map(|i| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.wait(i).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!stop.is_raised());
        stop.raise();
        for waiter in waiters {
            let joined = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert!(matches!(joined, Ok(Ok(()))));
        }
        // Raised stays raised.
        let again = tokio::time::timeout(Duration::from_secs(5), stop.wait(0)).await;
        assert!(again.is_ok());
    }
}
