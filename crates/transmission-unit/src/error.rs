//! What can go wrong in a call, and the gRPC status each kind becomes.

use tonic::{Code, Status};

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
    /// The AMQP operation itself failed (channel or connection error).
    #[error("RabbitMQ operation on queue '{queue}' failed: {source}")]
    Amqp {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// Why a `Compute` call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A computation unit answered with bytes that are not a ComputationResponse,
    /// or with NOT_SUCCESS but no next request.
    #[error("invalid reply from a computation unit: {0}")]
    BadReply(String),
    /// A direct unit's own model could not compute the request before its deadline.
    #[error("not computed before the deadline: {0}")]
    Expired(String),
    /// A direct unit's own model is still loading (its health says NOT_SERVING).
    #[error("this unit is still loading its model")]
    Loading,
    /// A direct unit's own model has stopped taking requests.
    #[error("this unit is stopping and computes no more requests")]
    Stopping,
    /// None of the next unit's addresses is serving (grpc.health): it is
    /// down, and waiting for it is no use to the caller.
    #[error("next unit {address} is unavailable: none of its addresses is serving")]
    NextDown { address: String },
    /// The call could not be sent to the next unit: nothing reached it.
    #[error("next unit {address} is unavailable: {message}")]
    NextNotSent { address: String, message: String },
    /// The call broke after it was sent: the next unit may have computed it
    /// (or died of it), so it is not sent again.
    #[error("next unit {address} failed during the call (not retried: it may have been computed): {message}")]
    NextBroken { address: String, message: String },
    /// The next unit did not answer within the remaining deadline.
    #[error("next unit {address} did not answer before the deadline")]
    NextDeadline { address: String },
    /// The next unit answered with a gRPC error, passed on with its code.
    #[error("next unit {address}: {message}")]
    Next {
        address: String,
        code: Code,
        message: String,
    },
}

impl Error {
    /// The gRPC code this error is answered with.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Error::Queue(QueueError::Timeout { .. }) | Error::NextDeadline { .. } | Error::Expired(_) => {
                Code::DeadlineExceeded
            }
            Error::Queue(QueueError::TooLarge { .. }) => Code::ResourceExhausted,
            Error::Queue(QueueError::ChannelClosed { code, .. }) => match *code {
                403 => Code::PermissionDenied,
                406 => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
            Error::Queue(_)
            | Error::NextDown { .. }
            | Error::NextNotSent { .. }
            | Error::NextBroken { .. }
            | Error::Loading
            | Error::Stopping => Code::Unavailable,
            Error::BadReply(_) => Code::Internal,
            Error::Next { code, .. } => *code,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// tonic refuses a message over `--max-message-bytes` with `OUT_OF_RANGE`;
/// gRPC's status-code table says `RESOURCE_EXHAUSTED` ("received message
/// larger than max"), which is what clients of other gRPC implementations
/// expect. Applied to every response of the server: only tonic's size check
/// is rewritten, naming the flag that sets the limit.
pub fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        let exhausted = Status::resource_exhausted(format!("{} (--max-message-bytes)", status.message()));
        // Replaces grpc-status and grpc-message; only fails for a message that cannot be a header.
        let _ = exhausted.add_header(response.headers_mut());
    }
    response
}
