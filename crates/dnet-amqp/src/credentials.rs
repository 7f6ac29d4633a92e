//! Broker credentials given apart from the URI (`--amqp-user`,
//! `--amqp-password`, `--amqp-password-file`, e.g. from a Kubernetes
//! Secret), the flags every program with a broker takes, percent-encoded
//! into the URI here: a password with `@`, `:` or `/` spliced raw into a URI
//! breaks it, or sends part of the password as the host name.

use std::path::PathBuf;

use clap::Args;
use lapin::uri::AMQPUri;

use crate::redact;

/// Broker credentials apart from the URI, percent-encoded into it by the
/// program (any character is safe; a Secret can hold them as they are).
#[derive(Clone, Debug, Args)]
pub struct AmqpCredentials {
    /// RabbitMQ user, replacing the one in the broker address.
    #[arg(long, env = "DNET_AMQP_USER")]
    pub amqp_user: Option<String>,

    /// RabbitMQ password, replacing the one in the broker address. Pass it
    /// as DNET_AMQP_PASSWORD or in --amqp-password-file: on the command line
    /// every user of the machine sees it (`ps`).
    #[arg(long, env = "DNET_AMQP_PASSWORD", hide_env_values = true)]
    pub amqp_password: Option<String>,

    /// File holding the RabbitMQ password (e.g. a mounted Secret; one
    /// trailing newline is ignored), replacing the one in the broker address.
    #[arg(long, env = "DNET_AMQP_PASSWORD_FILE", conflicts_with = "amqp_password")]
    pub amqp_password_file: Option<PathBuf>,
}

impl AmqpCredentials {
    /// `uri` with these credentials in it.
    ///
    /// # Errors
    /// `uri` is not an amqp:// or amqps:// URI; the password file cannot be read.
    pub fn apply(&self, uri: &str) -> Result<String, String> {
        let from_file = match &self.amqp_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|text| text.strip_suffix('\n').unwrap_or(&text).to_owned())
                    .map_err(|e| format!("--amqp-password-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let password = from_file.as_deref().or(self.amqp_password.as_deref());
        with_credentials(uri, self.amqp_user.as_deref(), password)
    }

    /// Warns when the password was given as `--amqp-password` on the command
    /// line (not from DNET_AMQP_PASSWORD), where `ps` shows it.
    pub fn warn_if_password_on_command_line(&self) {
        let on_command_line =
            std::env::args().any(|arg| arg == "--amqp-password" || arg.starts_with("--amqp-password="));
        if on_command_line {
            tracing::warn!(
                "--amqp-password on the command line is visible to every user of this machine (ps); \
                 set DNET_AMQP_PASSWORD or --amqp-password-file instead"
            );
        }
    }
}

/// `uri` with the user and password replaced by those given (each only
/// when given), percent-encoded.
///
/// # Errors
/// `uri` is not an `amqp://` or `amqps://` URI.
pub fn with_credentials(uri: &str, user: Option<&str>, password: Option<&str>) -> Result<String, String> {
    if user.is_none() && password.is_none() {
        return Ok(uri.to_owned());
    }
    let mut parsed: AMQPUri = uri
        .parse()
        .map_err(|e| format!("'{}' is not an amqp:// or amqps:// URI: {e}", redact(uri)))?;
    if let Some(user) = user {
        user.clone_into(&mut parsed.authority.userinfo.username);
    }
    if let Some(password) = password {
        password.clone_into(&mut parsed.authority.userinfo.password);
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_with_uri_characters_survives_the_round_trip() {
        let password = "p@ss:w/rd?#%";
        let uri = with_credentials("amqp://broker:5672/%2f", Some("dnet"), Some(password)).expect("valid");
        let parsed: AMQPUri = uri.parse().expect("still a URI");
        assert_eq!(parsed.authority.host, "broker");
        assert_eq!(parsed.authority.userinfo.username, "dnet");
        assert_eq!(parsed.authority.userinfo.password, password);
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn without_credentials_the_uri_is_kept_as_given() {
        let uri = "amqp://u:p@broker/vhost";
        assert_eq!(with_credentials(uri, None, None).expect("valid"), uri);
        assert!(with_credentials("not a uri", Some("u"), None).is_err());
    }
}
