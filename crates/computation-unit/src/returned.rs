//! Requests this worker put back in the queue while it lived: its broker
//! session was lost while it held them (a network blip), or it had to give
//! one back by a negative acknowledgement. The broker marks such a request
//! redelivered, as it marks one whose worker died; a redelivery of a request
//! this process returned is not counted as a death (docs/architecture.md,
//! "The queue and message contract"). What this worker knows only it knows:
//! a request returned here and redelivered to another worker still counts
//! there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a returned request is remembered: past this, its redelivery
/// has come long ago or went to another worker.
const REMEMBER_FOR: Duration = Duration::from_secs(600);
/// The most returned requests remembered (their correlation ids).
const REMEMBER_AT_MOST: usize = 65_536;

/// The requests held now and those returned alive, by correlation id.
#[derive(Debug, Default)]
pub struct Returned {
    held: Mutex<HashSet<String>>,
    returned: Mutex<HashMap<String, Instant>>,
}

/// Marks a request held until dropped.
#[derive(Debug)]
pub struct Held {
    returned: Arc<Returned>,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.returned.held).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a set inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Returned {
    /// This worker holds the request `id` until the guard drops.
    pub fn hold(self: &Arc<Self>, id: &str) -> Held {
        lock(&self.held).insert(id.to_owned());
        Held {
            returned: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// The broker session ended while this worker lived: everything it
    /// held goes back to the queue without a death.
    pub fn session_lost(&self) {
        let held: Vec<String> = lock(&self.held).iter().cloned().collect();
        for id in held {
            self.returned(&id);
        }
    }

    /// The request `id` goes back to the queue, marked redelivered, while
    /// this worker lives.
    pub fn returned(&self, id: &str) {
        let mut returned = lock(&self.returned);
        let now = Instant::now();
        if returned.len() >= REMEMBER_AT_MOST {
            returned.retain(|_, at| now.duration_since(*at) < REMEMBER_FOR);
        }
        if returned.len() < REMEMBER_AT_MOST {
            returned.insert(id.to_owned(), now);
        }
    }

    /// Whether this worker returned `id` alive (forgetting it: one
    /// redelivery per return).
    pub fn take(&self, id: &str) -> bool {
        lock(&self.returned)
            .remove(id)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_held_when_the_session_ended_was_returned_once() {
        let returned = Arc::new(Returned::default());
        let held = returned.hold("a");
        let _other = returned.hold("b");
        drop(held);
        returned.session_lost();
        assert!(!returned.take("a"), "no longer held when the session ended");
        assert!(returned.take("b"));
        assert!(!returned.take("b"), "one redelivery per return");
    }
}
