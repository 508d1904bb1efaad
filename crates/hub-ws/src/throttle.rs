//! Log lines that clients can cause, limited in rate: a flood of refused
//! handshakes must not flood the log too. What happens is counted in
//! [`WsStats`](crate::WsStats) either way.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Lines allowed per window.
const PER_WINDOW: u32 = 10;
/// How long a window lasts.
const WINDOW: Duration = Duration::from_secs(10);

/// Lets through the first [`PER_WINDOW`] lines of every [`WINDOW`]; the
/// first line of a later window tells how many were left out before it.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    logged: u32,
    /// Lines left out since the last one logged.
    left_out: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                window_start: Instant::now(),
                logged: 0,
                left_out: 0,
            }),
        }
    }
}

impl LogThrottle {
    /// `Some(n)` if a line may be logged now, `n` being how many were left
    /// out before it; `None` if this one is left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.window_start) >= WINDOW {
            state.window_start = now;
            state.logged = 0;
        }
        if state.logged >= PER_WINDOW {
            state.left_out += 1;
            return None;
        }
        state.logged += 1;
        Some(std::mem::take(&mut state.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lets_a_few_through_per_window_and_counts_the_rest() {
        let throttle = LogThrottle::default();
        for _ in 0..PER_WINDOW {
            assert_eq!(throttle.admit(), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(WINDOW).await;
        assert_eq!(throttle.admit(), Some(1000));
        assert_eq!(throttle.admit(), Some(0));
    }
}
