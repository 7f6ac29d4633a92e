//! Whether a failed gRPC call never reached the server, so that sending it
//! again cannot compute it twice (gRPC's retry design, gRFC A6: such calls
//! are retried transparently). Shared by a unit's calls to the next unit and
//! by test-unit's calls to the first.

use tonic::Status;

/// Whether the transport error behind `status` means that the request never
/// reached the server: the connection could not be made, the connection
/// ended (after a GOAWAY) while the request still waited to be handed to it
/// (hyper says canceled; tonic reports CANCELLED), or HTTP/2 says the server
/// did not process the stream (REFUSED_STREAM, or a GOAWAY that excludes it).
/// A status the server sent has no transport error behind it: `false`.
#[must_use]
pub fn never_sent(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2.is_go_away() && h2.is_remote());
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_the_server_sent_was_sent() {
        assert!(!never_sent(&Status::unavailable("the unit said so")));
    }
}
