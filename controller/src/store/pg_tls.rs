//! TLS to PostgreSQL (rustls, ring): `sslmode=require` (or `prefer` against a server with
//! TLS on) verifies the server certificate against `--db-ca`; without one nothing is
//! trusted, so a TLS connection fails closed rather than trusting any certificate. A Unix
//! socket never uses TLS.

use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;

/// Whether any connection may use TLS: not with `sslmode=disable`, nor when every host
/// is a Unix socket (PostgreSQL never uses TLS there).
pub fn needed(config: &tokio_postgres::Config) -> bool {
    config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable
        && config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)))
}

/// The connector for the pool: roots from `ca` (PEM bundle), none without it.
pub fn connector(ca: Option<&Path>) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for root in portcullis_trust::list::read_roots(ca)
            .with_context(|| format!("reading the PostgreSQL CA bundle {}", ca.display()))?
        {
            roots
                .add(root)
                .with_context(|| format!("a certificate in {}", ca.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
