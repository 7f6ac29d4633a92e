//! How the computation queue is declared: the contract with the original
//! programs (docs/architecture.md, "The queue and message contract"), or,
//! with `--queue-type quorum`, a replicated queue on a RabbitMQ cluster.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ErrorKind, Queue};

/// The kind of RabbitMQ queue the computation queue is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// The original's queue: one node holds it (non-durable, no arguments).
    #[default]
    Classic,
    /// A Raft-replicated queue over a cluster's nodes: a confirmed message
    /// is on a majority of them, and losing a node loses nothing.
    Quorum,
}

impl QueueType {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// What every program on one queue must declare alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueContract {
    pub queue_type: QueueType,
    /// The workers' `--max-attempts`: a quorum queue's delivery limit derives from it.
    pub max_attempts: u32,
}

/// Deliveries of one message a quorum queue allows beyond `--max-attempts`
/// before it drops the message itself. The workers count the workers a
/// request stopped in a header and answer ERROR at `--max-attempts`; the
/// broker's own count also rises when a live worker loses its node, so its
/// limit is only a backstop, above that.
const DELIVERY_LIMIT_MARGIN: u32 = 2;

impl QueueContract {
    /// `x-delivery-limit` of a quorum queue.
    #[must_use]
    pub fn delivery_limit(self) -> u32 {
        self.max_attempts.saturating_add(DELIVERY_LIMIT_MARGIN)
    }

    /// The declare options: the original's for classic (non-durable, not
    /// exclusive, not auto-delete); durable for quorum (as RabbitMQ requires).
    #[must_use]
    pub fn options(self) -> QueueDeclareOptions {
        QueueDeclareOptions {
            passive: false,
            durable: self.queue_type == QueueType::Quorum,
            exclusive: false,
            auto_delete: false,
            nowait: false,
        }
    }

    /// The declare arguments: none for classic (as the original); the queue
    /// type and the delivery limit for quorum.
    #[must_use]
    pub fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit())),
            );
        }
        arguments
    }

    /// These settings as the flags that give them, for messages.
    #[must_use]
    pub fn flags(self) -> String {
        match self.queue_type {
            QueueType::Classic => "--queue-type classic".to_owned(),
            QueueType::Quorum => format!(
                "--queue-type quorum --max-attempts {} (x-delivery-limit {})",
                self.max_attempts,
                self.delivery_limit()
            ),
        }
    }
}

/// Why the computation queue could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with other settings (RabbitMQ's PRECONDITION_FAILED):
    /// the programs on it disagree, and no retry mends that.
    #[error(
        "queue '{queue}' exists with other settings than this program's {flags}: {existing} ({broker}). \
         Every program on one queue must give the same --queue-type (and, for quorum, --max-attempts); \
         align the flags, or delete the queue"
    )]
    Mismatch {
        queue: String,
        flags: String,
        /// What the broker's words say of the queue that exists, as flags.
        existing: String,
        broker: String,
    },
    /// Anything else (a lost connection, a node going down): worth a retry.
    #[error("cannot declare queue '{queue}': {source}")]
    Amqp {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// RabbitMQ's reply code for a declare whose settings differ from the queue's.
const PRECONDITION_FAILED: u16 = 406;

/// Declares the computation queue `name` on `channel` as `contract` says.
///
/// # Errors
/// `Mismatch` when the queue exists with other settings (the channel is
/// closed by the broker), `Amqp` otherwise.
pub async fn declare(channel: &Channel, name: &str, contract: QueueContract) -> Result<Queue, DeclareError> {
    channel
        .queue_declare(name.into(), contract.options(), contract.arguments())
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::ProtocolError(amqp) if amqp.get_id() == PRECONDITION_FAILED => DeclareError::Mismatch {
                queue: name.to_owned(),
                flags: contract.flags(),
                existing: existing_queue(amqp.get_message().as_str()),
                broker: amqp.get_message().to_string(),
            },
            _ => DeclareError::Amqp {
                queue: name.to_owned(),
                source,
            },
        })
}

/// The flags that declare the queue RabbitMQ describes in its refusal
/// ("inequivalent arg 'durable' ... received 'true' but current is 'false'").
fn existing_queue(broker: &str) -> String {
    let after = broker.rsplit("current is ").next().unwrap_or_default();
    // The first quoted value after "current is".
    let current = after.split('\'').nth(1).unwrap_or(after);
    let durable_differs = broker.contains("'durable'");
    if broker.contains("'x-queue-type'") {
        format!("it is a {current} queue")
    } else if durable_differs && current.contains("false") {
        "it is a classic, non-durable queue, as --queue-type classic (and the original programs) declare it".to_owned()
    } else if durable_differs && current.contains("true") {
        "it is durable: a quorum queue, as --queue-type quorum declares it, or another program's".to_owned()
    } else if broker.contains("'x-delivery-limit'") {
        format!("its delivery limit is {current}, from another --max-attempts")
    } else {
        "its settings differ".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_settings_of_the_queue_that_exists() {
        let classic = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'";
        assert!(existing_queue(classic).contains("--queue-type classic"));
        let quorum = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'";
        assert!(existing_queue(quorum).contains("--queue-type quorum"));
        let limit = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received the value '7' of type 'long' but current is the value '5' of type 'long'";
        assert_eq!(
            existing_queue(limit),
            "its delivery limit is 5, from another --max-attempts"
        );
    }

    #[test]
    fn classic_is_the_originals_declare_and_quorum_is_durable_with_a_limit() {
        let classic = QueueContract {
            queue_type: QueueType::Classic,
            max_attempts: 3,
        };
        assert!(!classic.options().durable);
        assert!(
            classic.arguments().inner().is_empty(),
            "the original declares no arguments"
        );
        let quorum = QueueContract {
            queue_type: QueueType::Quorum,
            max_attempts: 3,
        };
        assert!(quorum.options().durable);
        let arguments = quorum.arguments();
        assert_eq!(
            arguments.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            arguments.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(5))
        );
    }
}
