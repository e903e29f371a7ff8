//! The CA-signed revocation list: `revoked.txt` (one hex serial a line, `#` comments)
//! and `revoked.sig` (hex of the CA key's ECDSA P-256 / SHA-256 signature over the exact
//! bytes of `revoked.txt`), written by `portcullis ca revoke`.
//!
//! [`verify`] accepts a list only if a certificate of the CA bundle signed it.
//! [`Revocations`] is the copy a client keeps (the agent in its state dir): replaced only
//! by a verified list that revokes at least everything the kept one does, so an old list
//! replayed by a revoked controller cannot un-revoke it. The kept file holds the signature
//! and the list together (one atomic rename) and is verified again at every load: an edit
//! on disk makes it unusable rather than trusted.

use crate::TrustError;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Normalized hex of a big-endian serial: lowercase, leading zero bytes stripped.
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let digits = hex::encode(&bytes[start..]);
    if digits.is_empty() {
        "00".to_owned()
    } else {
        digits
    }
}

/// Normalizes a typed serial (`0x`, colons, case, odd length, leading zeros); `None` if
/// it is not hex. Same form as the controller's `identity::normalize_serial`.
pub fn normalize_serial(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digits = digits.to_ascii_lowercase();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("00".to_owned());
    }
    let pad = if trimmed.len() % 2 == 1 { "0" } else { "" };
    Some(format!("{pad}{trimmed}"))
}

/// The serials of a `revoked.txt` text; `name` is used in errors (`name:line: ...`).
pub fn parse_serials(list: &[u8], name: &str) -> Result<BTreeSet<String>, TrustError> {
    let text = std::str::from_utf8(list).map_err(|e| TrustError::BadList {
        name: name.to_owned(),
        line: 0,
        text: format!("not UTF-8: {e}"),
    })?;
    let mut set = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let serial = normalize_serial(entry).ok_or_else(|| TrustError::BadList {
            name: name.to_owned(),
            line: index + 1,
            text: entry.to_owned(),
        })?;
        set.insert(serial);
    }
    Ok(set)
}

/// `revoked.sig`'s text for a signature.
pub fn encode_signature(signature: &[u8]) -> String {
    format!("{}\n", hex::encode(signature))
}

/// A signature from `revoked.sig`'s text.
pub fn decode_signature(text: &[u8]) -> Result<Vec<u8>, TrustError> {
    let text = String::from_utf8_lossy(text);
    hex::decode(text.trim()).map_err(|e| TrustError::BadSignature(e.to_string()))
}

/// The serials of `list` if a certificate in `roots` (the CA bundle) signed it.
pub fn verify(
    list: &[u8],
    signature: &[u8],
    roots: &[CertificateDer<'_>],
) -> Result<BTreeSet<String>, TrustError> {
    let signed = roots.iter().any(|root| {
        x509_parser::parse_x509_certificate(root.as_ref()).is_ok_and(|(_, cert)| {
            let key = &cert.public_key().subject_public_key.data;
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                key.as_ref(),
            )
            .verify(list, signature)
            .is_ok()
        })
    });
    if !signed {
        return Err(TrustError::NotSigned);
    }
    parse_serials(list, "revoked.txt")
}

/// Every certificate of a PEM file (the CA bundle).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    use rustls_pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TrustError::Pem {
            path: path.to_owned(),
            why: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// What [`Revocations::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A newer list: kept (and persisted).
    Newer,
    /// The list in force already.
    Same,
    /// It lacks serials the kept list has (an older list replayed): ignored.
    Older,
}

/// The revoked controller serials a client enforces, from the last verified list.
#[derive(Debug)]
pub struct Revocations {
    /// Where the verified list is kept (`None`: memory only).
    file: Option<PathBuf>,
    roots: RwLock<Vec<CertificateDer<'static>>>,
    serials: RwLock<BTreeSet<String>>,
}

impl Revocations {
    /// Nothing revoked, nothing persisted (tests, or a client without a list).
    pub fn empty(roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            file: None,
            roots: RwLock::new(roots),
            serials: RwLock::new(BTreeSet::new()),
        }
    }

    /// Loads the kept list from `file` (if any) and verifies it against `roots`. A kept
    /// file that does not verify is reported and not used.
    pub fn open(file: PathBuf, roots: Vec<CertificateDer<'static>>) -> Self {
        let serials = match std::fs::read(&file) {
            Ok(bytes) => match split_kept(&bytes).and_then(|(l, s)| verify(l, &s, &roots)) {
                Ok(set) => set,
                Err(error) => {
                    tracing::error!(file = %file.display(), %error,
                        "kept revocation list does not verify; ignoring it until a signed one arrives");
                    BTreeSet::new()
                }
            },
            Err(_) => BTreeSet::new(),
        };
        Self {
            file: Some(file),
            roots: RwLock::new(roots),
            serials: RwLock::new(serials),
        }
    }

    /// Loads `revoked.txt` + `revoked.sig` from a PKI directory (the admin CLI next to its
    /// CA file); none there: nothing revoked. A list that is there but does not verify is
    /// an error.
    pub fn from_pki_files(
        dir: &Path,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TrustError> {
        let (list, sig) = (dir.join("revoked.txt"), dir.join("revoked.sig"));
        let this = Self::empty(roots);
        let (Ok(list_bytes), Ok(sig_bytes)) = (std::fs::read(&list), std::fs::read(&sig)) else {
            return Ok(this);
        };
        let set =
            verify(&list_bytes, &decode_signature(&sig_bytes)?, &this.roots()).map_err(|e| {
                TrustError::File {
                    path: list,
                    source: Box::new(e),
                }
            })?;
        *this.write() = set;
        Ok(this)
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CA bundle changed (a CA rotation): verify later lists against this one.
    pub fn set_roots(&self, roots: Vec<CertificateDer<'static>>) {
        *self.roots.write().unwrap_or_else(|p| p.into_inner()) = roots;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<String>> {
        self.serials.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the certificate with this normalized serial is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    /// The serials in force.
    pub fn serials(&self) -> BTreeSet<String> {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take a signed list if it verifies and revokes at least what is in force.
    pub fn update(&self, list: &[u8], signature: &[u8]) -> Result<Update, TrustError> {
        let new = verify(list, signature, &self.roots())?;
        let mut current = self.write();
        if *current == new {
            return Ok(Update::Same);
        }
        if !new.is_superset(&current) {
            return Ok(Update::Older);
        }
        if let Some(file) = &self.file {
            persist(file, list, signature)?;
        }
        *current = new;
        Ok(Update::Newer)
    }
}

/// Kept file: the signature's hex on the first line, then the list's exact bytes.
fn split_kept(bytes: &[u8]) -> Result<(&[u8], Vec<u8>), TrustError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| TrustError::BadSignature("no signature line".to_owned()))?;
    Ok((&bytes[nl + 1..], decode_signature(&bytes[..nl])?))
}

/// The kept list: its signature line, then the list, written durably (readable by all:
/// it is public, like `revoked.txt`).
fn persist(file: &Path, list: &[u8], signature: &[u8]) -> Result<(), TrustError> {
    let mut body = encode_signature(signature).into_bytes();
    body.extend_from_slice(list);
    Ok(portcullis_os::write_atomic(file, &body, 0o644)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::SigningKey as _;

    fn ca() -> (rcgen::KeyPair, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (key, cert.der().clone())
    }

    #[test]
    fn only_lists_signed_by_the_bundle_verify() {
        let (key, cert) = ca();
        let (other_key, other) = ca();
        let list = b"# revoked\n0a:bc\nff # controller\n";
        let sig = key.sign(list).unwrap();
        let set = verify(list, &sig, &[other.clone(), cert.clone()]).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["0abc", "ff"]);
        assert!(verify(list, &sig, std::slice::from_ref(&other)).is_err());
        assert!(
            verify(b"0abc\n", &sig, std::slice::from_ref(&cert)).is_err(),
            "edited list"
        );
        let forged = other_key.sign(list).unwrap();
        assert!(verify(list, &forged, &[cert]).is_err());
    }

    #[test]
    fn kept_list_only_grows_and_survives_a_restart_but_not_an_edit() {
        let (key, cert) = ca();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revocations.signed");
        let r = Revocations::open(file.clone(), vec![cert.clone()]);
        let (one, two) = (b"01\n".as_slice(), b"01\n02\n".as_slice());
        assert_eq!(
            r.update(one, &key.sign(one).unwrap()).unwrap(),
            Update::Newer
        );
        assert_eq!(
            r.update(two, &key.sign(two).unwrap()).unwrap(),
            Update::Newer
        );
        assert_eq!(
            r.update(one, &key.sign(one).unwrap()).unwrap(),
            Update::Older
        );
        assert_eq!(
            r.update(two, &key.sign(two).unwrap()).unwrap(),
            Update::Same
        );
        assert!(r.update(b"", b"junk").is_err());
        assert!(r.is_revoked("02"));
        let again = Revocations::open(file.clone(), vec![cert.clone()]);
        assert_eq!(again.serials(), r.serials());
        // An edited kept file is not trusted.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&file, bytes).unwrap();
        assert!(Revocations::open(file, vec![cert]).serials().is_empty());
    }

    #[test]
    fn serial_forms() {
        assert_eq!(serial_hex(&[0, 0x8f, 1]), "8f01");
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(normalize_serial("00:8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("f01").as_deref(), Some("0f01"));
        assert!(
            parse_serials(b"ff\nnope\n", "r")
                .unwrap_err()
                .to_string()
                .contains("r:2:")
        );
    }
}
