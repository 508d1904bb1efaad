//! A token bucket for a client's incoming messages.

use std::time::Duration;

use tokio::time::Instant;

/// How many messages (pings included) a client may send: `per_second` on
/// average, with bursts of up to `burst`. Past the limit, messages are
/// dropped (the
/// handler may tell the client, see
/// [`Handler::on_throttled`](crate::Handler::on_throttled)); after
/// `close_after` drops in a row the client is closed with 1008.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained messages per second.
    per_second: f64,
    /// Messages that may arrive at once.
    burst: u32,
    /// Drops in a row before the client is closed with 1008.
    close_after: u32,
}

impl RateLimit {
    /// `per_second` on average with bursts of `burst`, closing after 100
    /// drops in a row.
    #[must_use]
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst: burst.max(1),
            close_after: 100,
        }
    }

    /// Drops in a row before the client is closed with 1008.
    #[must_use]
    pub fn close_after(mut self, drops: u32) -> Self {
        self.close_after = drops.max(1);
        self
    }
}

/// What the bucket says about one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Dropped; this many in a row so far.
    Drop(u32),
    Close,
}

#[derive(Debug)]
pub(crate) struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
    dropped_in_a_row: u32,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            last: Instant::now(),
            dropped_in_a_row: 0,
        }
    }

    pub(crate) fn take(&mut self) -> Verdict {
        let now = Instant::now();
        let elapsed = now
            .saturating_duration_since(self.last)
            .min(Duration::from_secs(3600));
        self.last = now;
        let refill = elapsed.as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.dropped_in_a_row = 0;
            return Verdict::Pass;
        }
        self.dropped_in_a_row += 1;
        if self.dropped_in_a_row >= self.limit.close_after {
            Verdict::Close
        } else {
            Verdict::Drop(self.dropped_in_a_row)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_then_closes() {
        let mut bucket = Bucket::new(RateLimit::new(2.0, 3).close_after(3));
        assert_eq!(
            [bucket.take(), bucket.take(), bucket.take()],
            [Verdict::Pass, Verdict::Pass, Verdict::Pass]
        );
        assert_eq!(bucket.take(), Verdict::Drop(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(bucket.take(), Verdict::Pass);
        assert_eq!(bucket.take(), Verdict::Drop(1));
        assert_eq!(bucket.take(), Verdict::Drop(2));
        assert_eq!(bucket.take(), Verdict::Close);
    }
}
