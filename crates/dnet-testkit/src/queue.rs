//! A computation queue no other test uses, deleted when the test ends.

use crate::broker::Broker;

/// A unique queue name on a broker. The programs declare the queue (as the
/// original does: not auto-delete), so `Drop` deletes it, also when the test
/// failed. Drop the programs that consume it first (declare it before them).
#[derive(Debug)]
pub struct TestQueue {
    name: String,
    broker: Broker,
}

impl TestQueue {
    /// A fresh name, `dnet-test-<uuid>`; nothing is declared yet.
    #[must_use]
    pub fn new(broker: &Broker) -> TestQueue {
        TestQueue {
            name: format!("dnet-test-{}", uuid::Uuid::new_v4()),
            broker: broker.clone(),
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // A queue nobody declared (the test failed before) is not an error worth a word.
        if let Err(error) = self.broker.delete_queue(&self.name) {
            if !error.to_string().to_lowercase().contains("not found") {
                eprintln!("[testkit] could not delete queue {}: {error}", self.name);
            }
        }
    }
}
