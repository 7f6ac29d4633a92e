//! Requests this worker put back in the queue while it lived: its broker
//! session was lost while it held them (a network blip), or it had to give
//! one back by a negative acknowledgement. The broker marks such a request
//! redelivered, as it marks one whose worker died; a redelivery of a request
//! this process returned is not counted as a death (docs/architecture.md,
//! "The queue and message contract"). What this worker knows only it knows:
//! a request returned here and redelivered to another worker still counts
//! there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a returned request is remembered: past this, its redelivery
/// has come long ago or went to another worker.
const REMEMBER_FOR: Duration = Duration::from_secs(600);
/// The most returned requests remembered (their correlation ids).
const REMEMBER_AT_MOST: usize = 65_536;

/// One delivery this worker holds: the broker session it came on and its
/// delivery tag. Held requests are keyed by delivery, not correlation id: a
/// copy given back can reach this worker while the original is still held,
/// and each must be tracked on its own.
pub type DeliveryKey = (u64, u64);

/// The requests held now (by delivery) and those returned alive (by
/// correlation id, with how many times: that is all a redelivery shows).
#[derive(Debug, Default)]
pub struct Returned {
    /// Deliveries held now, and whether their return was counted already
    /// (by the loss of their session).
    held: Mutex<HashMap<DeliveryKey, (String, bool)>>,
    returned: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Marks a delivery held until dropped.
#[derive(Debug)]
pub struct Held {
    returned: Arc<Returned>,
    key: DeliveryKey,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.returned.held).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a set inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Returned {
    /// This worker holds the delivery `key` of request `id` until the guard drops.
    pub fn hold(self: &Arc<Self>, key: DeliveryKey, id: &str) -> Held {
        lock(&self.held).insert(key, (id.to_owned(), false));
        Held {
            returned: Arc::clone(self),
            key,
        }
    }

    /// The broker session `session` ended while this worker lived: every
    /// delivery it held goes back to the queue without a death.
    pub fn session_lost(&self, session: u64) {
        let held: Vec<String> = lock(&self.held)
            .iter_mut()
            .filter(|((of, _), (_, counted))| *of == session && !*counted)
            .map(|(_, (id, counted))| {
                *counted = true;
                id.clone()
            })
            .collect();
        for id in held {
            self.returned(&id);
        }
    }

    /// The delivery `key` of request `id` goes back to the queue while this
    /// worker lives (a failed ack or a nack), unless the loss of its
    /// session counted it already: one return, one excused redelivery.
    pub fn returned_delivery(&self, key: DeliveryKey, id: &str) {
        let counted = lock(&self.held).get(&key).is_some_and(|(_, counted)| *counted);
        if !counted {
            self.returned(id);
        }
    }

    /// The request `id` goes back to the queue, marked redelivered, while
    /// this worker lives.
    pub fn returned(&self, id: &str) {
        let mut returned = lock(&self.returned);
        let now = Instant::now();
        if returned.len() >= REMEMBER_AT_MOST {
            returned.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER_FOR);
        }
        if returned.len() < REMEMBER_AT_MOST || returned.contains_key(id) {
            let entry = returned.entry(id.to_owned()).or_insert((0, now));
            *entry = (entry.0.saturating_add(1), now);
        }
    }

    /// Whether this worker returned `id` alive (forgetting one return: one
    /// redelivery per return).
    pub fn take(&self, id: &str) -> bool {
        let mut returned = lock(&self.returned);
        let Some((count, at)) = returned.get_mut(id) else {
            return false;
        };
        let fresh = at.elapsed() < REMEMBER_FOR;
        *count -= 1;
        if *count == 0 {
            returned.remove(id);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_held_when_the_session_ended_was_returned_once() {
        let returned = Arc::new(Returned::default());
        let held = returned.hold((1, 1), "a");
        let _other = returned.hold((1, 2), "b");
        let _next_session = returned.hold((2, 1), "c");
        drop(held);
        returned.session_lost(1);
        assert!(!returned.take("a"), "no longer held when the session ended");
        assert!(returned.take("b"));
        assert!(!returned.take("b"), "one redelivery per return");
        assert!(!returned.take("c"), "held on a session that lives");
    }

    #[test]
    fn a_copy_held_beside_its_original_is_tracked_on_its_own() {
        // A request given back as a copy reaches this worker again before
        // the original's hold ends: both carry one correlation id.
        let returned = Arc::new(Returned::default());
        let original = returned.hold((1, 1), "a");
        let _copy = returned.hold((1, 2), "a");
        drop(original);
        returned.session_lost(1);
        assert!(
            returned.take("a"),
            "the copy was held when the session ended: its redelivery is not a death"
        );
    }

    #[test]
    fn a_delivery_returned_with_its_session_is_counted_once() {
        // The session drops; the task that held the delivery then fails to
        // acknowledge it: one return, one redelivery excused.
        let returned = Arc::new(Returned::default());
        let _held = returned.hold((1, 7), "a");
        returned.session_lost(1);
        returned.returned_delivery((1, 7), "a");
        assert!(returned.take("a"));
        assert!(!returned.take("a"), "not excused twice");
    }

    #[test]
    fn two_returns_of_one_request_excuse_two_redeliveries() {
        let returned = Arc::new(Returned::default());
        let _first = returned.hold((1, 1), "a");
        let _second = returned.hold((1, 2), "a");
        returned.session_lost(1);
        assert!(returned.take("a"));
        assert!(returned.take("a"));
        assert!(!returned.take("a"));
    }
}
