//! Logging what a caller can trigger at any rate, without letting it flood
//! the log: at most a few lines per second, the next line saying how many
//! were left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window the limit counts lines in.
const WINDOW: Duration = Duration::from_secs(1);

/// At most `per_second` lines per second.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    logged: u32,
    left_out: u64,
}

impl LogLimit {
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new(State {
                window_start: Instant::now(),
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// `Some(lines left out since the last one logged)` when this line may be
    /// logged, `None` when it is one too many for this second.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.window_start) >= WINDOW {
            state.window_start = now;
            state.logged = 0;
        }
        if state.logged >= self.per_second {
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

    #[test]
    fn lines_over_the_limit_are_counted_and_reported_with_the_next() {
        let limit = LogLimit::new(2);
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.state.lock().expect("lock").window_start -= WINDOW;
        assert_eq!(limit.allow(), Some(2));
    }
}
