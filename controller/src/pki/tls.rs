//! tonic TLS configurations built from PKI files: the server requires a client certificate
//! signed by `ca.crt`; clients trust only `ca.crt` and present their own certificate.
//!
//! Only file loading happens here. Role checks (which certificate may call what) and
//! revocation are done per request with [`crate::identity`]. Callers must install the
//! rustls ring provider first (`rustls::crypto::ring::default_provider().install_default()`).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::{Pki, PkiError, store};
use crate::identity::Role;

/// Server TLS for the controller: identity `controller.crt`/`controller.key` from
/// `pki_dir`, client certificates from `ca.crt` mandatory.
pub fn server_tls(pki_dir: &Path) -> Result<ServerTlsConfig, PkiError> {
    let pki = Pki::new(pki_dir);
    let (cert, key) = pki.cert_paths(&Role::Controller);
    let identity = Identity::from_pem(store::read_text(&cert)?, store::read_text(&key)?);
    let ca = Certificate::from_pem(store::read_text(&pki.ca_cert())?);
    Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
}

/// Client TLS for agents and operators: trust `ca`, present `cert`/`key`. `domain`
/// overrides the name checked against the controller certificate's SANs (default: the
/// host of the URI dialled).
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, PkiError> {
    let identity = Identity::from_pem(store::read_text(cert)?, store::read_text(key)?);
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(store::read_text(ca)?))
        .identity(identity);
    Ok(match domain {
        Some(domain) => config.domain_name(domain),
        None => config,
    })
}
