//! Durable files: the one way Portcullis writes a file that must survive a crash or a
//! power cut (the agent's last-known-good, commit-confirm records, denial spool and
//! fail-closed marker; the kept revocation list; the controller's keys, certificates and
//! PKI ledgers).
//!
//! [`write_atomic`] writes `<name>.tmp` in the same directory (a leftover of a crashed
//! write is removed first, never followed if it is a symlink), sets its mode before any
//! data is written (exactly `mode`, whatever the umask: a key is never readable by others,
//! not even for a moment), fsyncs it, renames it over `<name>` and fsyncs the directory:
//! after a crash the file is either the old one or the new one, never torn, and a file
//! [`write_atomic`] returned `Ok` for is on disk. Every step's error is returned with the
//! path and the step ([`DurableError`]), never logged and forgotten: a caller whose safety
//! depends on the record aborts what it was about to do. One writer per path at a time
//! (each caller serializes its own writes).
//!
//! [`write_synced`] and [`rename_synced`] are the two halves, for a caller that writes
//! early and decides later whether the record becomes true (last-known-good).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A failed step, with the file it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{}: {action}: {source}", path.display())]
pub struct DurableError {
    pub path: PathBuf,
    /// The step: "create", "set mode", "write", "fsync", "rename", "remove", ...
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl DurableError {
    fn new(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self {
            path,
            action,
            source,
        }
    }
}

/// The temporary file [`write_atomic`] uses for `path`: `<path>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically and durably (temp file with `mode`, e.g. `0o600`,
/// fsync, rename, directory fsync). On error `path` is untouched and the temporary file
/// is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let tmp = tmp_path(path);
    let written = write_synced(&tmp, bytes, mode).and_then(|()| rename_synced(&tmp, path));
    if written.is_err() {
        discard_leftover(&tmp);
    }
    written
}

/// [`write_atomic`] without the syncs: another process reads the old or the new file,
/// never half of one, but a power cut may lose it. Only for a record that means nothing
/// after a reboot.
pub fn replace_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let tmp = tmp_path(path);
    discard_leftover(&tmp);
    let written = create(&tmp, mode)
        .and_then(|mut f| f.write_all(bytes).map_err(DurableError::new(&tmp, "write")));
    let renamed =
        written.and_then(|()| fs::rename(&tmp, path).map_err(DurableError::new(path, "rename")));
    if renamed.is_err() {
        discard_leftover(&tmp);
    }
    renamed
}

/// The first half: `bytes` into `tmp` (a leftover file or symlink there removed first;
/// created with exactly `mode` before any byte is written), fsynced.
pub fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    discard_leftover(tmp);
    let mut file = create(tmp, mode)?;
    file.write_all(bytes)
        .map_err(DurableError::new(tmp, "write"))?;
    file.sync_all().map_err(DurableError::new(tmp, "fsync"))
}

/// Opens `path` for writing (created, or truncated when something that is not a regular
/// file or a symlink is in the way, e.g. a device) and, if it is a regular file, sets
/// exactly `mode` on it before anything is written.
fn create(path: &Path, mode: u32) -> Result<File, DurableError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(DurableError::new(path, "create"))?;
    let meta = file
        .metadata()
        .map_err(DurableError::new(path, "read metadata"))?;
    if meta.is_file() && meta.permissions().mode() & 0o7777 != mode {
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(DurableError::new(path, "set mode"))?;
    }
    Ok(file)
}

/// Removes a leftover temporary file (a crashed write's, or ours after a failed step): a
/// regular file or a symlink (the link itself, never its target). Anything else is left
/// for the create to report.
fn discard_leftover(tmp: &Path) {
    if let Ok(meta) = fs::symlink_metadata(tmp)
        && (meta.is_file() || meta.file_type().is_symlink())
    {
        let _ = fs::remove_file(tmp);
    }
}

/// Appends `bytes` to `path` (created with `mode` if absent; then the directory is
/// fsynced too) and syncs the file's data: an append-only log. A crash can leave a torn
/// last line, which the reader must tolerate; everything a call returned `Ok` for is on
/// disk.
pub fn append_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)
        .map_err(DurableError::new(path, "open for append"))?;
    file.write_all(bytes)
        .map_err(DurableError::new(path, "append"))?;
    file.sync_data().map_err(DurableError::new(path, "fsync"))?;
    if !existed {
        sync_parent(path)?;
    }
    Ok(())
}

/// The second half: `tmp` renamed over `path`, then the directory fsynced.
pub fn rename_synced(tmp: &Path, path: &Path) -> Result<(), DurableError> {
    fs::rename(tmp, path).map_err(DurableError::new(path, "rename"))?;
    sync_parent(path)
}

/// Deletes `path` durably (directory fsynced); no error when it does not exist.
pub fn remove(path: &Path) -> Result<(), DurableError> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::new(path, "remove")(e)),
    }
}

/// Fsyncs the directory holding `path` (so renames and removals in it survive a crash).
pub fn sync_parent(path: &Path) -> Result<(), DurableError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs `dir` itself.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DurableError::new(dir, "fsync directory"))
}

#[cfg(test)]
mod tests;
