//! Broker credentials given apart from the URI (`--amqp-user`,
//! `--amqp-password`, e.g. from a Kubernetes Secret), percent-encoded into it
//! here: a password with `@`, `:` or `/` spliced raw into a URI breaks it, or
//! sends part of the password as the host name.

use lapin::uri::AMQPUri;

use crate::redact;

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
