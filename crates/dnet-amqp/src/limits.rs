//! The broker's message size limit (`max_message_size`), read at start: a
//! body over it makes RabbitMQ close the channel it was published on, and a
//! caller who can send such a body must be refused before it is published,
//! with the limit that refuses it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ErrorKind};

/// A routing key no queue is bound to on the default exchange: the probe
/// is dropped once the broker has accepted it.
const PROBE_ROUTING_KEY: &str = "dnet.max-message-size-probe";

/// Whether the broker accepts a message of `bytes`: publishes a body of
/// that size to no queue, on a channel of its own, and reads the broker's
/// answer. The cost is sending `bytes` once, on connecting.
///
/// # Errors
/// The broker refused the size: a message naming both numbers and `flag`;
/// or the probe could not run (the connection failed), with why.
pub async fn check_message_size(connection: &Connection, bytes: usize, flag: &str) -> Result<(), SizeError> {
    // A broker that blocks publishing (a memory or disk alarm) never confirms.
    tokio::time::timeout(PROBE_WITHIN, probe(connection, bytes, flag))
        .await
        .unwrap_or(Err(SizeError::NoAnswer(PROBE_WITHIN)))
}

/// The longest the probe may take: its publish, and the broker's answer.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

async fn probe(connection: &Connection, bytes: usize, flag: &str) -> Result<(), SizeError> {
    let channel = connection.create_channel().await.map_err(SizeError::Amqp)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(SizeError::Amqp)?;
    let body = vec![0_u8; bytes];
    let published = async {
        channel
            .basic_publish(
                "".into(),
                PROBE_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    match published {
        Ok(_) => {
            let _ = channel.close(200, "message size read".into()).await;
            Ok(())
        }
        Err(error) => match error.kind() {
            ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => Err(SizeError::TooLarge(format!(
                "{flag} {bytes} is more than the broker accepts ({}): lower {flag} to the broker's \
                 max_message_size, or raise that in rabbitmq.conf",
                amqp.get_message()
            ))),
            _ => Err(SizeError::Amqp(error)),
        },
    }
}

/// Why the size check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// The broker refuses messages of this size: a configuration error.
    #[error("{0}")]
    TooLarge(String),
    /// The check could not run.
    #[error("cannot check the broker's message size limit: {0}")]
    Amqp(#[source] lapin::Error),
    /// The broker did not answer the probe in time (it may block publishing).
    #[error("the broker did not answer the message size probe within {0:?}")]
    NoAnswer(std::time::Duration),
}
