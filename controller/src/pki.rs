//! The controller's certificate authority: `portcullis ca init|issue|revoke|list`.
//!
//! A [`Pki`] is a directory holding `ca.crt` and `ca/ca.key` (ECDSA P-256; the key apart,
//! so `serve` never needs to read it: it reads only `ca.crt`, its own pair and
//! `revoked.txt`), the issued leaf
//! certificates and keys (`controller.*`, `agent-<host>.*`, `admin-<name>.*`), the ledger
//! `issued.json` and the revocation list `revoked.txt` that the server reads through
//! [`crate::identity::RevocationList`]. Each leaf carries exactly one role URI
//! (`portcullis://agent/<host>`, ...; see [`crate::identity`]).
//!
//! Every file is written atomically (temporary file + rename); keys are created with mode
//! 0600 and never exist with wider permissions. Nothing is overwritten without `force`.
//! Every operation returns the paths it wrote. This module does no networking; the TLS
//! configurations built from these files live in [`tls`].

mod revoke;
mod store;
pub mod tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

pub use crate::identity::load_revoked;
use crate::identity::{self, RevocationError, Role};
pub use revoke::{Listed, Revoked};
pub use store::{CertRole, IssuedRecord};
pub use tls::{client_tls, server_tls};

const DAY: u64 = 24 * 60 * 60;
/// Validity of the CA certificate (10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// Validity of leaf certificates (2 years).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(730 * DAY);
/// Certificates are valid from this long before issuance, to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Errors of the PKI layer.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing a file failed (the path and the step are in it).
    #[error(transparent)]
    Write(#[from] portcullis_os::DurableError),
    #[error("no CA in {}: run `portcullis ca init` first", .0.display())]
    NoCa(PathBuf),
    #[error(
        "invalid name `{0}`: expected 1-253 characters of [A-Za-z0-9._-], not starting with `.` or `-`"
    )]
    InvalidName(String),
    #[error("invalid subject alternative name `{0}`: expected an IP address or a DNS name")]
    InvalidSan(String),
    #[error("the controller certificate needs at least one --san (IP address or DNS name)")]
    NoSan,
    #[error("{}: {source}", path.display())]
    Ledger {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("no random bytes for a serial number")]
    Random,
    #[error("time out of range for a certificate")]
    Time,
    #[error(
        "nothing to revoke matches `{0}`: expected a serial (hex), agent/<host>, admin/<name>, controller or an issued name"
    )]
    NoMatch(String),
    #[error("`{input}` is ambiguous, it matches {}: say which", .candidates.join(" and "))]
    Ambiguous {
        input: String,
        candidates: Vec<String>,
    },
    #[error(
        "refusing to revoke the CA certificate; run `portcullis ca init --force` to replace it"
    )]
    RevokeCa,
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("signing the revocation list: {0}")]
    Sign(String),
}

/// Result of issuing one certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The ledger entry (role, name, serial, expiry).
    pub record: IssuedRecord,
    /// Certificate path (PEM).
    pub cert: PathBuf,
    /// Private key path (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// Every file written, in write order (key, certificate, `issued.json`).
    pub written: Vec<PathBuf>,
}

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A handle on an existing (or future) PKI directory; no I/O.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Creates the directory (0700) and a new CA in it: `ca.crt` and `ca/ca.key`.
    pub fn init(dir: impl Into<PathBuf>, force: bool) -> Result<Issued, PkiError> {
        let pki = Self::new(dir);
        let (cert, key) = (pki.ca_cert(), pki.ca_key());
        store::refuse_existing(&[&cert, &key], force)?;
        store::ensure_dir(&pki.dir)?;
        if let Some(key_dir) = key.parent() {
            store::ensure_dir(key_dir)?;
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (serial, not_after) = fill_common(&mut params, CA_VALIDITY)?;
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = params.self_signed(&key_pair)?;
        let record = IssuedRecord {
            role: CertRole::Ca,
            name: "ca".to_owned(),
            serial,
            not_after,
            file: "ca.crt".to_owned(),
        };
        pki.write_issued(record, &key_pair, &der.pem(), cert, key)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `ca.crt`: the trust root for both server and clients.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// `ca/ca.key`: the CA key lives in a subdirectory of its own (0700), so the server,
    /// which reads this directory, can be denied it (`InaccessiblePaths=`, group
    /// permissions) or run where it was never copied. A PKI made before this layout
    /// (`ca.key` beside `ca.crt`) is still read.
    pub fn ca_key(&self) -> PathBuf {
        let apart = self.dir.join("ca").join("ca.key");
        let legacy = self.dir.join("ca.key");
        if !apart.exists() && legacy.exists() {
            return legacy;
        }
        apart
    }
    /// `issued.json`.
    pub fn issued_path(&self) -> PathBuf {
        self.dir.join("issued.json")
    }
    /// `revoked.txt`.
    pub fn revoked_path(&self) -> PathBuf {
        self.dir.join("revoked.txt")
    }
    /// Certificate and key paths for a role: `controller.crt`, `agent-<host>.crt`, ...
    pub fn cert_paths(&self, role: &Role) -> (PathBuf, PathBuf) {
        let stem = match role {
            Role::Controller => "controller".to_owned(),
            Role::Agent(host) => format!("agent-{host}"),
            Role::Admin(name) => format!("admin-{name}"),
        };
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// Issues the controller's server certificate for `sans` (IP addresses or DNS names),
    /// with the URI `portcullis://controller`, EKU serverAuth + clientAuth.
    pub fn issue_controller(&self, sans: &[String], force: bool) -> Result<Issued, PkiError> {
        if sans.is_empty() {
            return Err(PkiError::NoSan);
        }
        let alt_names = sans
            .iter()
            .map(|san| host_san(san).ok_or_else(|| PkiError::InvalidSan(san.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        self.issue_leaf(
            Role::Controller,
            alt_names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            force,
        )
    }

    /// Issues an agent certificate: URI `portcullis://agent/<host>`, plus `<host>` as a DNS
    /// or IP SAN when it is one; EKU clientAuth.
    pub fn issue_agent(&self, host: &str, force: bool) -> Result<Issued, PkiError> {
        let name = checked_name(host)?;
        let alt_names = host_san(&name).into_iter().collect();
        self.issue_leaf(
            Role::Agent(name),
            alt_names,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            force,
        )
    }

    /// Issues an operator certificate: URI `portcullis://admin/<name>`; EKU clientAuth.
    pub fn issue_admin(&self, name: &str, force: bool) -> Result<Issued, PkiError> {
        let name = checked_name(name)?;
        self.issue_leaf(
            Role::Admin(name),
            Vec::new(),
            &[ExtendedKeyUsagePurpose::ClientAuth],
            force,
        )
    }

    fn issue_leaf(
        &self,
        role: Role,
        mut alt_names: Vec<SanType>,
        ekus: &[ExtendedKeyUsagePurpose],
        force: bool,
    ) -> Result<Issued, PkiError> {
        let (cert, key) = self.cert_paths(&role);
        store::refuse_existing(&[&cert, &key], force)?;
        let issuer = self.load_issuer()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, role.to_string());
        alt_names.push(SanType::URI(role.uri().try_into()?));
        params.subject_alt_names = alt_names;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus.to_vec();
        params.use_authority_key_identifier_extension = true;
        let (serial, not_after) = fill_common(&mut params, LEAF_VALIDITY)?;
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pem = params.signed_by(&key_pair, &issuer)?.pem();

        let (cert_role, name) = match &role {
            Role::Controller => (CertRole::Controller, "controller".to_owned()),
            Role::Agent(host) => (CertRole::Agent, host.clone()),
            Role::Admin(name) => (CertRole::Admin, name.clone()),
        };
        let file = file_name(&cert);
        let record = IssuedRecord {
            role: cert_role,
            name,
            serial,
            not_after,
            file,
        };
        self.write_issued(record, &key_pair, &pem, cert, key)
    }

    fn write_issued(
        &self,
        record: IssuedRecord,
        key_pair: &KeyPair,
        cert_pem: &str,
        cert: PathBuf,
        key: PathBuf,
    ) -> Result<Issued, PkiError> {
        store::write_atomic(&key, key_pair.serialize_pem().as_bytes(), store::KEY_MODE)?;
        store::write_atomic(&cert, cert_pem.as_bytes(), store::PUBLIC_MODE)?;
        let ledger = self.issued_path();
        store::append_issued(&ledger, record.clone())?;
        let written = vec![key.clone(), cert.clone(), ledger];
        Ok(Issued {
            record,
            cert,
            key,
            written,
        })
    }

    fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if !cert.exists() || !key.exists() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        let key_pair = KeyPair::from_pem(&store::read_text(&key)?)?;
        // During a CA rotation ca.crt is a bundle (old + new): issue with the certificate
        // that belongs to ca.key.
        let public = rcgen::PublicKeyData::subject_public_key_info(&key_pair);
        let ca = tls::pem_certs(&cert)?
            .into_iter()
            .find(|der| {
                x509_parser::parse_x509_certificate(der.as_ref())
                    .is_ok_and(|(_, c)| c.public_key().raw == public.as_slice())
            })
            .ok_or_else(|| {
                PkiError::Tls(format!(
                    "{}: no certificate in it belongs to {}",
                    cert.display(),
                    key.display()
                ))
            })?;
        Ok(Issuer::from_ca_cert_der(&ca, key_pair)?)
    }
}

/// Sets validity and a random positive 16-byte serial; returns (serial hex, not_after).
fn fill_common(
    params: &mut CertificateParams,
    validity: Duration,
) -> Result<(String, String), PkiError> {
    let mut serial = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| PkiError::Random)?;
    // Positive, and a non-zero first byte so every serial has 32 hex digits.
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 1;
    }
    params.serial_number = Some(SerialNumber::from_slice(&serial));

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Time)?;
    let not_before = now.saturating_sub(BACKDATE);
    let not_after = now + validity;
    params.not_before = asn1_time(not_before)?.to_datetime();
    params.not_after = asn1_time(not_after)?.to_datetime();
    let not_after =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(not_after.as_secs()));
    Ok((identity::serial_hex(&serial), not_after.to_string()))
}

/// A time since the epoch as x509-parser's `ASN1Time`, whose `to_datetime()` is the
/// `time::OffsetDateTime` rcgen wants (same `time` crate), so we need no `time` dependency.
fn asn1_time(since_epoch: Duration) -> Result<x509_parser::time::ASN1Time, PkiError> {
    let secs = i64::try_from(since_epoch.as_secs()).map_err(|_| PkiError::Time)?;
    x509_parser::time::ASN1Time::from_timestamp(secs).map_err(|_| PkiError::Time)
}

fn checked_name(name: &str) -> Result<String, PkiError> {
    if identity::is_valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err(PkiError::InvalidName(name.to_owned()))
    }
}

/// An IP SAN if `text` is an address, a DNS SAN if it is a valid DNS name, else `None`.
fn host_san(text: &str) -> Option<SanType> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SanType::IpAddress(ip));
    }
    if !is_dns_name(text) {
        return None;
    }
    text.to_owned().try_into().ok().map(SanType::DnsName)
}

/// RFC 1123 host name: dot-separated labels of 1-63 `[A-Za-z0-9-]`, no `-` at either
/// end of a label, 253 characters at most.
pub fn is_dns_name(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
