//! Publishing with publisher confirms, the one way DNet programs publish
//! (requests by the transmission unit, replies and copies given back by the
//! worker): only the broker's positive confirm counts as published.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

/// Why a message was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused it (a negative confirm: e.g. a full queue that rejects publishing).
    #[error("the broker refused it (nack)")]
    Refused,
    /// The channel is not in confirm mode: nothing tells whether it arrived.
    #[error("the channel is not in confirm mode")]
    Unconfirmed,
    /// The publish or its confirm failed (the channel or connection closed).
    #[error("{0}")]
    Failed(#[source] lapin::Error),
}

/// Publishes `body` to the default exchange with `routing_key` and waits
/// for the broker's confirm.
///
/// # Errors
/// Anything but a positive confirm.
pub async fn publish(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map_err(PublishError::Failed)?
        .await
        .map_err(PublishError::Failed)?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err(PublishError::Refused),
        Confirmation::NotRequested => Err(PublishError::Unconfirmed),
    }
}
