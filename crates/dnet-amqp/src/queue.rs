//! How the computation queue is declared: the contract with the original
//! programs (docs/architecture.md, "The queue and message contract").

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// Options every DNet program declares the computation queue with.
///
/// They match the original Python worker (`queue_declare(queue=name)`):
/// non-durable, not exclusive, not auto-delete, no arguments. RabbitMQ refuses
/// a declare whose options differ from the queue's, so both sides must agree.
#[must_use]
pub fn computation_queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
    }
}

/// Arguments of the computation queue declaration (none, as the original).
#[must_use]
pub fn computation_queue_arguments() -> FieldTable {
    FieldTable::default()
}
