//! Who is on the other end of a mutual-TLS connection.
//!
//! Every certificate issued by [`crate::pki`] carries exactly one SAN URI naming its role:
//! `portcullis://controller`, `portcullis://agent/<host>` or `portcullis://admin/<name>`.
//! This module turns a peer's leaf certificate (DER) into a [`PeerIdentity`] and keeps the
//! revoked-serial list ([`RevocationList`]) fresh. It does not verify chains: rustls has
//! already done that against the CA before a handler runs.
//!
//! Serial numbers are compared as **normalized hex**: lowercase, no colons, leading zero
//! bytes stripped (`00:8f:01` -> `8f01`, zero -> `00`). [`serial_hex`] produces it from raw
//! bytes (rcgen's input or x509-parser's `raw_serial()`), [`normalize_serial`] from operator
//! input; `issued.json`, `revoked.txt` and [`PeerIdentity::serial`] all use this form.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use x509_parser::extensions::GeneralName;

/// URI scheme prefix carried in the SAN of every Portcullis certificate.
pub const URI_PREFIX: &str = "portcullis://";

/// The role a certificate grants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An agent that may speak only for this host.
    Agent(String),
    /// An operator allowed to call the `Admin` service.
    Admin(String),
    /// The controller's server certificate.
    Controller,
}

impl Role {
    /// The SAN URI that encodes this role.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{self}")
    }

    /// The host name if this is an agent.
    pub fn agent_host(&self) -> Option<&str> {
        match self {
            Role::Agent(host) => Some(host),
            _ => None,
        }
    }

    /// Whether this role may call the `Admin` service.
    pub fn is_admin(&self) -> bool {
        matches!(self, Role::Admin(_))
    }
}

/// `agent/<host>`, `admin/<name>` or `controller`: the same spelling as the URI path.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Agent(host) => write!(f, "agent/{host}"),
            Role::Admin(name) => write!(f, "admin/{name}"),
            Role::Controller => f.write_str("controller"),
        }
    }
}

/// The authenticated peer: role from the SAN URI, serial in normalized hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Role granted by the certificate.
    pub role: Role,
    /// Normalized hex serial (see the module docs).
    pub serial: String,
}

/// Why a certificate does not carry a usable Portcullis identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate has no `{URI_PREFIX}` SAN URI")]
    NoRoleUri,
    #[error("certificate has {} `{URI_PREFIX}` SAN URIs ({}), expected exactly one", .0.len(), .0.join(", "))]
    ManyRoleUris(Vec<String>),
    #[error(
        "unknown role URI `{0}`: expected {URI_PREFIX}agent/<host>, {URI_PREFIX}admin/<name> or {URI_PREFIX}controller"
    )]
    BadUri(String),
}

/// Reading `revoked.txt` failed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{line}: expected a hex serial number, found `{text}`", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

// One serial form for the controller, the agent and the CLI: the revocation list's
// (`portcullis-trust`), so a serial revoked here is the serial checked there.
pub use portcullis_trust::list::{normalize_serial, serial_hex};

/// Whether `name` is a valid agent host / admin name: 1..=253 chars of `[A-Za-z0-9._-]`,
/// not starting with `.` or `-` (safe in file names and URI paths).
pub fn is_valid_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a role URI such as `portcullis://agent/web1`.
pub fn parse_role_uri(uri: &str) -> Result<Role, IdentityError> {
    let bad = || IdentityError::BadUri(uri.to_owned());
    let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(bad)?;
    let role = match rest.split_once('/') {
        None if rest == "controller" => Role::Controller,
        Some(("agent", host)) if is_valid_name(host) => Role::Agent(host.to_owned()),
        Some(("admin", name)) if is_valid_name(name) => Role::Admin(name.to_owned()),
        _ => return Err(bad()),
    };
    Ok(role)
}

/// Extracts the Portcullis identity from a DER certificate (the peer's leaf).
pub fn identity_from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut uris: Vec<String> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.len() {
        0 => return Err(IdentityError::NoRoleUri),
        1 => uris.remove(0),
        _ => return Err(IdentityError::ManyRoleUris(uris)),
    };
    Ok(PeerIdentity {
        role: parse_role_uri(&uri)?,
        serial: serial_hex(cert.tbs_certificate.raw_serial()),
    })
}

/// The normalized serial and the `notAfter` of a DER certificate (the accept loop's view
/// of a peer: what revocation and expiry act on).
pub fn serial_and_expiry(der: &[u8]) -> Result<(String, SystemTime), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((
        serial_hex(cert.tbs_certificate.raw_serial()),
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(not_after),
    ))
}

/// The identity of the peer of a tonic request (TCP + TLS servers only).
///
/// `Unauthenticated` if the connection carried no client certificate, `PermissionDenied`
/// if the certificate carries no valid role URI. Revocation is checked by [`authorize`].
#[allow(clippy::result_large_err)]
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    identity_from_der(leaf).map_err(|e| tonic::Status::permission_denied(e.to_string()))
}

/// [`peer_identity`] plus the revocation check (`PermissionDenied` if revoked).
#[allow(clippy::result_large_err)]
pub fn authorize<T>(
    req: &tonic::Request<T>,
    revoked: &RevocationList,
) -> Result<PeerIdentity, tonic::Status> {
    let peer = peer_identity(req)?;
    if revoked.is_revoked(&peer.serial) {
        return Err(tonic::Status::permission_denied(format!(
            "certificate {} (serial {}) is revoked",
            peer.role, peer.serial
        )));
    }
    Ok(peer)
}

/// Reads `revoked.txt`: one hex serial per line, `#` starts a comment, blank lines ignored.
/// A missing file means nothing is revoked.
pub fn load_revoked(path: &Path) -> Result<BTreeSet<String>, RevocationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(RevocationError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    // The same parser the agents and the CLI use on the signed copy of this file.
    portcullis_trust::list::parse_serials(text.as_bytes(), &path.display().to_string()).map_err(
        |e| match e {
            portcullis_trust::TrustError::BadList { line, text, .. } => RevocationError::BadLine {
                path: path.to_owned(),
                line,
                text,
            },
            other => RevocationError::BadLine {
                path: path.to_owned(),
                line: 0,
                text: other.to_string(),
            },
        },
    )
}

/// What identifies one version of the file: (mtime, size, inode). `None`: file absent.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

fn stamp(path: &Path) -> Result<Stamp, RevocationError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.modified().ok(), meta.len(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RevocationError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    serials: BTreeSet<String>,
}

/// The revoked serials from `revoked.txt`, reloaded whenever the file's mtime, size or
/// inode changes. Costs one `stat` per [`RevocationList::is_revoked`] call.
///
/// If a reload fails (unreadable or malformed file) the previous set stays in force and a
/// warning is logged: a typo in the file never un-revokes anything.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl RevocationList {
    /// Loads the list now; fails if the file exists but cannot be read or parsed.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RevocationError> {
        let path = path.into();
        let stamp = stamp(&path)?;
        let serials = load_revoked(&path)?;
        Ok(Self {
            path,
            cached: Mutex::new(Cached { stamp, serials }),
        })
    }

    /// A list that loads lazily on the first [`RevocationList::is_revoked`]. Prefer
    /// [`RevocationList::open`] at startup: it refuses a malformed file instead of logging
    /// a warning and treating it as empty until it is fixed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            // A stamp no real file has, so the first call loads.
            cached: Mutex::new(Cached {
                stamp: Some((None, u64::MAX, u64::MAX)),
                serials: BTreeSet::new(),
            }),
        }
    }

    /// Path of the watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `serial` (any spelling [`normalize_serial`] accepts) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        let Some(serial) = normalize_serial(serial) else {
            return false;
        };
        let mut cached = match self.cached.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.refresh(&mut cached);
        cached.serials.contains(&serial)
    }

    /// A snapshot of the current set (after a refresh).
    pub fn serials(&self) -> BTreeSet<String> {
        let mut cached = match self.cached.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.refresh(&mut cached);
        cached.serials.clone()
    }

    fn refresh(&self, cached: &mut Cached) {
        let result = stamp(&self.path).and_then(|now| {
            if now == cached.stamp {
                return Ok(());
            }
            cached.serials = load_revoked(&self.path)?;
            cached.stamp = now;
            tracing::info!(path = %self.path.display(), count = cached.serials.len(), "revocation list reloaded");
            Ok(())
        });
        if let Err(error) = result {
            tracing::warn!(%error, "keeping previous revocation list");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms_agree() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0, 0]), "00");
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(normalize_serial("00:8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("0x0f01").as_deref(), Some("0f01"));
        assert_eq!(normalize_serial("f01").as_deref(), Some("0f01"));
        assert_eq!(normalize_serial("000").as_deref(), Some("00"));
        assert_eq!(normalize_serial("web1"), None);
        assert_eq!(normalize_serial(""), None);
    }

    #[test]
    fn names() {
        for ok in ["web1", "a", "mail-01.example.org", "x_y", &"a".repeat(253)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a b", "ä", "a:b", &"a".repeat(254)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn role_uris() {
        for role in [
            Role::Controller,
            Role::Agent("web1".into()),
            Role::Admin("alice".into()),
        ] {
            assert_eq!(parse_role_uri(&role.uri()).ok(), Some(role));
        }
        for bad in [
            "portcullis://agent/",
            "portcullis://agent/a/b",
            "portcullis://root/x",
            "portcullis://controller/x",
            "https://agent/x",
        ] {
            assert!(parse_role_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revoked_file_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked.txt");
        assert!(load_revoked(&path).expect("missing is empty").is_empty());
        std::fs::write(&path, "# header\n\n0A:BC  # agent/x\n00ff\n").expect("write");
        let set = load_revoked(&path).expect("load");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["0abc", "ff"]);
        std::fs::write(&path, "ff\nnot-hex\n").expect("write");
        let err = load_revoked(&path).expect_err("bad line");
        assert!(err.to_string().contains(":2:"), "{err}");
    }
}
