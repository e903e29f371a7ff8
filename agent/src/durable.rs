//! Durable files: the one way the agent writes a record that must survive a crash or a
//! power cut (last-known-good, the commit-confirm records, the denial spool's metadata and
//! batches, the fail-closed marker).
//!
//! A record is written to `<name>.tmp` in the same directory, fsynced, renamed over
//! `<name>`, and the directory is fsynced: after a crash the file is either the old record
//! or the new one, never torn, and a record that [`write_atomic`] returned `Ok` for is on
//! disk. Every step's error is returned (never logged and forgotten): a caller whose
//! safety depends on the record aborts what it was about to do.
//! [`write_synced`] and [`rename_synced`] are the two halves, for a caller that writes
//! early and decides later whether the record becomes true (last-known-good).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A failed step, with the file it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{}: {action}: {source}", path.display())]
pub struct DurableError {
    pub path: PathBuf,
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

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, directory
/// fsync). The file gets `mode` (e.g. `0o600`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes, mode)?;
    if let Err(e) = rename_synced(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// [`write_atomic`] without the syncs: another process reads the old or the new file,
/// never half of one, but a power cut may lose it. Only for a record that means nothing
/// after a reboot.
pub fn replace_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let tmp = tmp_path(path);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(DurableError::new(&tmp, "write"))?;
    fs::rename(&tmp, path).map_err(DurableError::new(path, "rename"))
}

/// The first half: `bytes` into `tmp` (created or truncated, `mode`), fsynced.
pub fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)
        .map_err(DurableError::new(tmp, "create"))?;
    file.write_all(bytes)
        .map_err(DurableError::new(tmp, "write"))?;
    file.sync_all().map_err(DurableError::new(tmp, "fsync"))
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_replaces_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp_path(&path).exists());
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_write_is_an_error_and_leaves_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        // The temporary file cannot be created: a directory is in its way.
        fs::create_dir(tmp_path(&path)).unwrap();
        let err = write_atomic(&path, b"new", 0o600).unwrap_err();
        assert_eq!(err.action, "create", "{err}");
        assert!(err.to_string().contains("record.json.tmp"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_full_disk_is_an_error() {
        // /dev/full: every write fails with ENOSPC (the rename never happens).
        let full = Path::new("/dev/full");
        if !full.exists() {
            panic!("/dev/full is missing: cannot test ENOSPC");
        }
        let err = write_synced(full, b"x", 0o600).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(28), "{err}");
    }
}
