//! TLS for gRPC: the server's certificate, an optional client-certificate
//! check, and TLS to the next unit. Keys are read from files, never logged.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::EdgeArgs;

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
}

/// The server's TLS settings, when `--tls-cert` is given.
///
/// # Errors
/// An unreadable certificate, key or CA file.
pub fn server(config: &EdgeArgs) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
    }
    Ok(Some(tls))
}

/// TLS settings for calling the next unit, when `--next-tls-ca` is given.
///
/// # Errors
/// An unreadable CA, certificate or key file.
pub fn next(config: &EdgeArgs, next_address: &str) -> Result<Option<ClientTlsConfig>, String> {
    let Some(ca) = &config.next_tls_ca else {
        return Ok(None);
    };
    let host = dnet_common::balance::first_host(next_address).unwrap_or_default();
    let domain = config.next_tls_domain.clone().unwrap_or(host);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca, "--next-tls-ca")?))
        .domain_name(domain);
    if let (Some(cert), Some(key)) = (&config.next_tls_cert, &config.next_tls_key) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "--next-tls-cert")?,
            read(key, "--next-tls-key")?,
        ));
    }
    Ok(Some(tls))
}
