//! tonic TLS configurations built from PKI files: the server requires a client certificate
//! signed by `ca.crt`; clients trust only `ca.crt` and present their own certificate.
//!
//! Only file loading happens here. Role checks (which certificate may call what) and
//! revocation are done per request with [`crate::identity`]. Callers must install the
//! rustls ring provider first (`rustls::crypto::ring::default_provider().install_default()`).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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

/// The rustls configuration the controller's own accept loop handshakes with (tonic then
/// serves the finished TLS stream): identity `controller.crt`/`controller.key`, client
/// certificates mandatory and verified against every certificate in `ca.crt` (a bundle
/// of the old and the new CA during a CA rotation), ALPN `h2`.
pub fn server_config(pki_dir: &Path) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let pki = Pki::new(pki_dir);
    let (cert, key) = pki.cert_paths(&Role::Controller);
    let bad = |path: &Path, what: String| PkiError::Tls(format!("{}: {what}", path.display()));
    let chain = pem_certs(&cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(store::read_text(&key)?.as_bytes())
        .map_err(|e| bad(&key, format!("expected a PEM private key: {e}")))?;
    let ca = pki.ca_cert();
    let mut roots = rustls::RootCertStore::empty();
    for root in pem_certs(&ca)? {
        roots
            .add(root)
            .map_err(|e| bad(&ca, format!("unusable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(&ca, format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(&cert, format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file (at least one).
pub fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let text = store::read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            PkiError::Tls(format!(
                "{}: expected PEM certificates: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(PkiError::Tls(format!(
            "{}: expected PEM certificates, found none",
            path.display()
        )));
    }
    Ok(certs)
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
