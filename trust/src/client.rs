//! TLS to the controller for agents and the admin CLI: the usual WebPKI checks against
//! the CA bundle (chain, name, validity: an expired controller certificate fails here),
//! then the controller certificate's serial against [`Revocations`]. The handshake is
//! done by us (tokio-rustls) inside a tonic connector, so the refusal happens before a
//! single byte of HTTP/2 is exchanged.

use crate::TrustError;
use crate::list::{Revocations, read_roots, serial_hex};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint, Uri};

/// WebPKI server verification plus the revocation list.
#[derive(Debug)]
pub struct RefuseRevoked {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    revoked: Arc<Revocations>,
}

impl ServerCertVerifier for RefuseRevoked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let serial = serial_hex(cert.tbs_certificate.raw_serial());
        if self.revoked.is_revoked(&serial) {
            tracing::error!(%serial, "the controller presented a revoked certificate: refused");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client configuration: trust the CA bundle at `ca`, present `cert`/`key`, refuse
/// a revoked controller certificate; ALPN h2.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    revoked: Arc<Revocations>,
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in read_roots(ca)? {
        roots.add(root).map_err(|e| TrustError::Pem {
            path: ca.to_owned(),
            why: e.to_string(),
        })?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TrustError::Tls(e.to_string()))?;
    let chain = read_roots(cert)?;
    let key_bytes = std::fs::read(key).map_err(|source| TrustError::Io {
        path: key.to_owned(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TrustError::Pem {
        path: key.to_owned(),
        why: e.to_string(),
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RefuseRevoked { inner, revoked }))
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TrustError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An endpoint for `https://HOST:PORT` whose connections are made by [`connect`] (tonic
/// sees `http://`, the TLS is ours). Tune it (timeouts, keepalive) before connecting.
pub fn endpoint(url: &str) -> Result<(Endpoint, Target), TrustError> {
    let bad = |why: &str| TrustError::Url(url.to_owned(), why.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("expected https://HOST:PORT"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone())
        .map_err(|_| bad("host is neither an IP address nor a DNS name"))?;
    let plain = match uri.authority() {
        Some(a) => format!("http://{a}"),
        None => return Err(bad("no host")),
    };
    let endpoint = Endpoint::from_shared(plain).map_err(|e| bad(&e.to_string()))?;
    Ok((
        endpoint,
        Target {
            host,
            port,
            name,
            addr: None,
            local: None,
        },
    ))
}

/// Where [`connect`] dials and which name the controller certificate must carry.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    name: ServerName<'static>,
    /// Dial this address instead of resolving `host` (see [`Target::at`]).
    addr: Option<SocketAddr>,
    /// Connect from this local address (see [`Target::from_local`]).
    local: Option<std::net::IpAddr>,
}

impl Target {
    /// The URL's host (an IP address or a DNS name, without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URL's port (443 when the URL has none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Dial `addr` (e.g. one of the addresses the URL's DNS name resolves to) while the
    /// controller certificate is still checked against the URL's host name (SNI too).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Connect from `local` (a port the kernel picks) instead of the address the kernel
    /// would choose: e.g. simulated agents on loopback, each from an address of its own.
    pub fn from_local(mut self, local: std::net::IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Check the controller certificate against `domain` instead of the URL's host.
    pub fn with_domain(mut self, domain: &str) -> Result<Self, TrustError> {
        self.name = ServerName::try_from(domain.to_owned())
            .map_err(|_| TrustError::Url(domain.to_owned(), "not a DNS name".to_owned()))?;
        Ok(self)
    }
}

/// Connect `endpoint` to `target` over our TLS with `config`.
pub async fn connect(
    endpoint: &Endpoint,
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let target = target.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (target, config) = (target.clone(), config.clone());
        async move {
            let tcp = match (target.addr, target.local) {
                (Some(addr), None) => tokio::net::TcpStream::connect(addr).await?,
                (None, None) => {
                    tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?
                }
                (addr, Some(local)) => {
                    let addr = match addr {
                        Some(a) => a,
                        None => tokio::net::lookup_host((target.host.as_str(), target.port))
                            .await?
                            .find(|a| a.is_ipv4() == local.is_ipv4())
                            .ok_or_else(|| {
                                std::io::Error::other("no address of the local address's family")
                            })?,
                    };
                    let socket = match local {
                        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.bind(SocketAddr::new(local, 0))?;
                    socket.connect(addr).await?
                }
            };
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(target.name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint.connect_with_connector(connector).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn at_dials_the_address_and_keeps_the_urls_name() {
        let (_, t) = endpoint("https://ctl.example.net:7443").unwrap();
        assert_eq!(
            (t.host(), t.port(), t.addr),
            ("ctl.example.net", 7443, None)
        );
        let addr: SocketAddr = "10.77.0.2:7443".parse().unwrap();
        let t = t.at(addr);
        assert_eq!(t.addr, Some(addr));
        assert_eq!(t.name, ServerName::try_from("ctl.example.net").unwrap());
        let (_, t) = endpoint("https://[fd77::1]").unwrap();
        assert_eq!((t.host(), t.port()), ("fd77::1", 443));
    }

    #[tokio::test]
    async fn from_local_connects_from_that_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (endpoint, target) = endpoint(&format!("https://127.0.0.1:{}", addr.port())).unwrap();
        let local: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let target = target.at(addr).from_local(local);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let dial =
            tokio::spawn(
                async move { connect(&endpoint, &target, Arc::new(config)).await.is_err() },
            );
        let (socket, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), local);
        drop(socket);
        assert!(dial.await.unwrap(), "no TLS server there: the dial fails");
    }
}
