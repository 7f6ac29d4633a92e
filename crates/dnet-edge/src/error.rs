//! What can go wrong in a call, and the gRPC status each kind becomes.

use tonic::{Code, Status};

/// Whether another attempt of a failed call may get through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It did not get through (the broker session is down, or refused it).
    Yes,
    /// Once more: it may have been another call that made it fail.
    Once,
    /// No: it was answered, timed out, or may have been computed.
    Never,
}

/// Why a unit's backend (its queue, or its own model) could not answer:
/// the code the call is answered with, what to say, and whether to try again.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub code: Code,
    pub message: String,
    pub retry: Retry,
}

impl BackendError {
    #[must_use]
    pub fn new(code: Code, message: impl Into<String>, retry: Retry) -> Self {
        Self {
            code,
            message: message.into(),
            retry,
        }
    }
}

/// Why a `Compute` call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What computes this unit's exit failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A computation unit answered with bytes that are not a ComputationResponse,
    /// or with NOT_SUCCESS but no next request.
    #[error("invalid reply from a computation unit: {0}")]
    BadReply(String),
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
            Error::Backend(error) => error.code,
            Error::NextDeadline { .. } => Code::DeadlineExceeded,
            Error::NextDown { .. } | Error::NextNotSent { .. } | Error::NextBroken { .. } => Code::Unavailable,
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
