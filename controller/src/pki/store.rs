//! Files of the PKI directory: atomic writes with an explicit mode, the `issued.json`
//! ledger and appends to `revoked.txt`. No crypto here.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::PkiError;

/// Mode of private keys.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates and ledgers.
pub const PUBLIC_MODE: u32 = 0o644;

/// What a certificate was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    Ca,
    Controller,
    Agent,
    Admin,
}

impl CertRole {
    /// Lowercase name, as in `issued.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Ca => "ca",
            CertRole::Controller => "controller",
            CertRole::Agent => "agent",
            CertRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `issued.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub role: CertRole,
    /// Host (agent), operator (admin), `controller` or `ca`.
    pub name: String,
    /// Normalized hex serial (see [`crate::identity`]).
    pub serial: String,
    /// RFC 3339, UTC, seconds precision.
    pub not_after: String,
    /// Certificate file name, relative to the PKI directory.
    pub file: String,
}

impl IssuedRecord {
    /// `agent/web1`, `admin/alice`, `controller` or `ca`.
    pub fn label(&self) -> String {
        match self.role {
            CertRole::Agent | CertRole::Admin => format!("{}/{}", self.role, self.name),
            CertRole::Ca | CertRole::Controller => self.role.to_string(),
        }
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fails with [`PkiError::Exists`] naming the first existing path, unless `force`.
pub fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(PkiError::Exists(path.to_path_buf())),
        None => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically and durably with exactly `mode`
/// ([`portcullis_os::write_atomic`]): the file never exists with wider permissions.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    Ok(portcullis_os::write_atomic(path, bytes, mode)?)
}

/// Reads `issued.json`; a missing file is an empty ledger.
pub fn read_issued(path: &Path) -> Result<Vec<IssuedRecord>, PkiError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PkiError::Ledger {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Appends `record` to `issued.json` (rewritten atomically).
pub fn append_issued(path: &Path, record: IssuedRecord) -> Result<(), PkiError> {
    let mut records = read_issued(path)?;
    records.push(record);
    let mut json = serde_json::to_vec_pretty(&records).map_err(|source| PkiError::Ledger {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    write_atomic(path, &json, PUBLIC_MODE)
}

/// Appends `serial  # comment` lines to `revoked.txt` (rewritten atomically, existing
/// content and comments kept).
pub fn append_revoked(path: &Path, entries: &[(String, String)]) -> Result<(), PkiError> {
    let mut text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            "# Revoked certificate serials (lowercase hex), one per line.\n".to_owned()
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for (serial, comment) in entries {
        text.push_str(&format!("{serial}  # {comment}\n"));
    }
    write_atomic(path, text.as_bytes(), PUBLIC_MODE)
}

/// Creates the PKI directory (mode 0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Reads a whole file as UTF-8 (PEM).
pub fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}
