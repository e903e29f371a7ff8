//! Revocation and listing: which certificates a serial or name designates, appending
//! them to `revoked.txt`, signing it (`revoked.sig`, the CA key's signature over the
//! file's exact bytes, which agents and the CLI verify with `ca.crt`), and the ledger
//! with revocation flags. The server only reads `revoked.txt` (through
//! [`crate::identity::RevocationList`]); this module only writes it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::store::{self, CertRole, IssuedRecord};
use super::{Pki, PkiError, load_revoked};
use crate::identity;

/// Result of [`Pki::revoke`].
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serials newly added, with what they belonged to (`agent/web1`, or `unknown`).
    pub added: Vec<(String, String)>,
    /// Serials that matched but were already revoked.
    pub already: Vec<String>,
    /// Files written (`revoked.txt` if something was added, `revoked.sig`).
    pub written: Vec<PathBuf>,
}

/// A ledger entry with its revocation state, for `portcullis ca list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub record: IssuedRecord,
    pub revoked: bool,
}

impl Pki {
    /// Every certificate issued from this directory, oldest first.
    pub fn issued(&self) -> Result<Vec<IssuedRecord>, PkiError> {
        store::read_issued(&self.issued_path())
    }

    /// The ledger with revocation state, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>, PkiError> {
        let revoked = load_revoked(&self.revoked_path())?;
        Ok(self
            .issued()?
            .into_iter()
            .map(|record| Listed {
                revoked: revoked.contains(&record.serial),
                record,
            })
            .collect())
    }

    /// Revokes by serial (hex, any case, colons allowed), by `agent/<host>`,
    /// `admin/<name>`, `controller`, or by a bare issued name if it names one role only.
    /// All certificates issued to a matching name are revoked.
    pub fn revoke(&self, serial_or_name: &str) -> Result<Revoked, PkiError> {
        let input = serial_or_name.trim();
        let records = self.issued()?;
        let targets = select(&records, input)?;
        let path = self.revoked_path();
        let current = load_revoked(&path)?;
        let mut added: Vec<(String, String)> = Vec::new();
        let mut already = Vec::new();
        for (serial, label) in targets {
            if current.contains(&serial) || added.iter().any(|(s, _)| *s == serial) {
                already.push(serial);
            } else {
                added.push((serial, label));
            }
        }
        let mut written = Vec::new();
        if !added.is_empty() {
            store::append_revoked(&path, &added)?;
            written.push(path);
        }
        // Re-sign when the list changed, or its signature is missing or stale (a list
        // from before signing, or edited by hand): revoking anything again re-signs.
        if self.revoked_path().exists()
            && (!added.is_empty() || self.signed_revocations().is_none())
        {
            written.push(self.sign_revoked()?);
        }
        Ok(Revoked {
            added,
            already,
            written,
        })
    }
}

impl Pki {
    /// `revoked.sig`.
    pub fn revoked_sig_path(&self) -> PathBuf {
        self.dir().join("revoked.sig")
    }

    /// Signs `revoked.txt` as it is now with the CA key into `revoked.sig`.
    pub fn sign_revoked(&self) -> Result<PathBuf, PkiError> {
        use rcgen::SigningKey as _;
        let list_path = self.revoked_path();
        let list = std::fs::read(&list_path).map_err(store::io_err(&list_path))?;
        let key = rcgen::KeyPair::from_pem(&store::read_text(&self.ca_key())?)?;
        let signature = key.sign(&list).map_err(|e| PkiError::Sign(e.to_string()))?;
        let sig_path = self.revoked_sig_path();
        store::write_atomic(
            &sig_path,
            portcullis_trust::list::encode_signature(&signature).as_bytes(),
            0o644,
        )?;
        Ok(sig_path)
    }

    /// `revoked.txt` and `revoked.sig` as agents receive them, if both are there and the
    /// signature verifies against `ca.crt` (never distribute a list agents would refuse).
    pub fn signed_revocations(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let list = std::fs::read(self.revoked_path()).ok()?;
        let sig = std::fs::read(self.revoked_sig_path()).ok()?;
        let sig = portcullis_trust::list::decode_signature(&sig).ok()?;
        let roots = portcullis_trust::list::read_roots(&self.ca_cert()).ok()?;
        match portcullis_trust::list::verify(&list, &sig, &roots) {
            Ok(_) => Some((list, sig)),
            Err(error) => {
                tracing::warn!(%error, "revoked.sig does not match revoked.txt: run `portcullis ca revoke` again to re-sign; not sent to agents");
                None
            }
        }
    }
}

/// Which (serial, label) pairs `input` designates; see [`Pki::revoke`].
fn select(records: &[IssuedRecord], input: &str) -> Result<Vec<(String, String)>, PkiError> {
    let pairs = |matched: Vec<&IssuedRecord>| -> Result<Vec<(String, String)>, PkiError> {
        if matched.iter().any(|r| r.role == CertRole::Ca) {
            return Err(PkiError::RevokeCa);
        }
        Ok(matched
            .into_iter()
            .map(|r| (r.serial.clone(), r.label()))
            .collect())
    };
    let serial = identity::normalize_serial(input);
    if let Some(serial) = &serial {
        let by_serial: Vec<_> = records.iter().filter(|r| r.serial == *serial).collect();
        if !by_serial.is_empty() {
            return pairs(by_serial);
        }
    }
    let by_label: Vec<_> = records.iter().filter(|r| r.label() == input).collect();
    if !by_label.is_empty() {
        return pairs(by_label);
    }
    let by_name: Vec<_> = records
        .iter()
        .filter(|r| r.name == input && matches!(r.role, CertRole::Agent | CertRole::Admin))
        .collect();
    let labels: BTreeSet<String> = by_name.iter().map(|r| r.label()).collect();
    match labels.len() {
        0 => {}
        1 => return pairs(by_name),
        _ => {
            return Err(PkiError::Ambiguous {
                input: input.to_owned(),
                candidates: labels.into_iter().collect(),
            });
        }
    }
    match serial {
        Some(serial) => Ok(vec![(serial, "not in issued.json".to_owned())]),
        None => Err(PkiError::NoMatch(input.to_owned())),
    }
}
