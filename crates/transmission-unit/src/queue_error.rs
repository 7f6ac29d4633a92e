//! Why a call to the unit's own queue failed, and what the gRPC edge makes
//! of it (its code, and whether another attempt may get through).

use dnet_edge::error::{BackendError, Retry};
use tonic::Code;

/// Why a call to the unit's own queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No broker session right now; the unit is reconnecting.
    #[error("not connected to RabbitMQ at {broker}; reconnecting in the background")]
    NotConnected { broker: String },
    /// The broker connection died while the call waited for its reply.
    #[error("the connection to RabbitMQ was lost before the reply arrived")]
    ConnectionLost,
    /// No computation unit replied before the call's deadline.
    #[error("no reply from a computation unit on queue '{queue}' within {waited_ms} ms")]
    Timeout { queue: String, waited_ms: u128 },
    /// The request is larger than the configured message limit.
    #[error("request of {size} bytes exceeds the message size limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The broker refused the message (negative publisher confirm).
    #[error("RabbitMQ refused the request for queue '{queue}'")]
    Refused { queue: String },
    /// The broker closed the publish channel while this call published on
    /// it (a message it refuses: over its `max_message_size`, an expiration
    /// it does not accept, a permission it lacks). The unit reopens the
    /// channel; the call is tried once more (another call's message may
    /// have been the cause), then answered with this.
    #[error("RabbitMQ closed the channel publishing to queue '{queue}': {text} (AMQP {code})")]
    ChannelClosed { queue: String, code: u16, text: String },
    /// The broker refused this very message for its size (over its
    /// `max_message_size`, which a unit checks at start against
    /// `--max-message-bytes`: the broker's setting changed since). Never
    /// sent again: it would close the channel again.
    #[error("RabbitMQ refused a request of {size} bytes for its size: {text}")]
    OverBrokerLimit { size: usize, text: String },
    /// The AMQP operation itself failed (channel or connection error).
    #[error("RabbitMQ operation on queue '{queue}' failed: {source}")]
    Amqp {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

impl From<QueueError> for BackendError {
    fn from(error: QueueError) -> Self {
        let (code, retry) = match &error {
            QueueError::Timeout { .. } => (Code::DeadlineExceeded, Retry::Never),
            QueueError::TooLarge { .. } | QueueError::OverBrokerLimit { .. } => (Code::ResourceExhausted, Retry::Never),
            // The message that made the broker close the channel may have
            // been another call's.
            QueueError::ChannelClosed { code, .. } => (
                match *code {
                    403 => Code::PermissionDenied,
                    406 => Code::FailedPrecondition,
                    _ => Code::Unavailable,
                },
                Retry::Once,
            ),
            // A request that reached a worker before the connection broke may
            // be computed twice: its first reply finds no caller.
            QueueError::NotConnected { .. }
            | QueueError::ConnectionLost
            | QueueError::Refused { .. }
            | QueueError::Amqp { .. } => (Code::Unavailable, Retry::Yes),
        };
        BackendError {
            code,
            message: error.to_string(),
            retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_the_broker_refused_for_its_size_is_never_sent_again() {
        let error = BackendError::from(QueueError::OverBrokerLimit {
            size: 10,
            text: "message size 10 is larger than configured max size 5".to_owned(),
        });
        assert_eq!(error.code, Code::ResourceExhausted);
        assert!(matches!(error.retry, Retry::Never));
        // Another call's message closing the shared channel: this one may go once more.
        let error = BackendError::from(QueueError::ChannelClosed {
            queue: "q".to_owned(),
            code: 406,
            text: "message size 99 is larger than configured max size 5".to_owned(),
        });
        assert!(matches!(error.retry, Retry::Once));
    }
}
