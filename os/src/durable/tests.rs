#![allow(clippy::unwrap_used)]

use super::*;

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn writes_replaces_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.json");
    write_atomic(&path, b"one", 0o600).unwrap();
    write_atomic(&path, b"two", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert_eq!(mode_of(&path), 0o600);
    assert!(!tmp_path(&path).exists());
    remove(&path).unwrap();
    remove(&path).unwrap();
    assert!(!path.exists());
}

#[test]
fn the_mode_is_exactly_the_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o644, 0o640] {
        let path = dir.path().join(format!("f{mode:o}"));
        write_atomic(&path, b"x", mode).unwrap();
        assert_eq!(mode_of(&path), mode);
    }
    // A file that was wider before is replaced by one with the narrow mode.
    let path = dir.path().join("key.pem");
    write_atomic(&path, b"public", 0o644).unwrap();
    write_atomic(&path, b"secret", 0o600).unwrap();
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn a_crashed_writes_leftover_is_replaced_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    write_atomic(&path, b"old", 0o600).unwrap();
    // A crash after the create left a world-readable, half-written temporary file.
    let tmp = tmp_path(&path);
    fs::write(&tmp, b"half of an old wri").unwrap();
    fs::set_permissions(&tmp, Permissions::from_mode(0o666)).unwrap();
    write_atomic(&path, b"new", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(mode_of(&path), 0o600);
    assert!(!tmp.exists());
}

#[test]
fn a_symlink_left_as_the_temporary_file_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    let path = dir.path().join("record.json");
    std::os::unix::fs::symlink(&victim, tmp_path(&path)).unwrap();
    write_atomic(&path, b"new", 0o600).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert!(
        !fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_failed_create_is_an_error_naming_the_file_and_leaves_the_old_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.json");
    write_atomic(&path, b"old", 0o600).unwrap();
    // The temporary file cannot be created: a directory is in its way.
    fs::create_dir(tmp_path(&path)).unwrap();
    let err = write_atomic(&path, b"new", 0o600).unwrap_err();
    assert_eq!(err.action, "create", "{err}");
    assert!(
        err.to_string().contains("record.json.tmp: create:"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert!(
        tmp_path(&path).is_dir(),
        "what was in the way is left alone"
    );
}

#[test]
fn an_unwritable_directory_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // No such directory.
    let path = dir.path().join("missing").join("record.json");
    let err = write_atomic(&path, b"x", 0o600).unwrap_err();
    assert_eq!(
        (err.action, err.source.kind()),
        ("create", ErrorKind::NotFound)
    );
    assert_eq!(err.path, tmp_path(&path));
    // A file where the directory should be (unwritable even for root).
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = write_atomic(&file.join("record.json"), b"x", 0o600).unwrap_err();
    assert_eq!(err.action, "create", "{err}");
    assert!(err.to_string().contains("file/record.json.tmp"), "{err}");
    // A read-only directory (root may write there anyway: then nothing to check).
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, Permissions::from_mode(0o500)).unwrap();
    let probe = ro.join("probe");
    let root = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    if !root {
        let err = write_atomic(&ro.join("record.json"), b"x", 0o600).unwrap_err();
        assert_eq!(
            (err.action, err.source.kind()),
            ("create", ErrorKind::PermissionDenied)
        );
    }
    fs::set_permissions(&ro, Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_failed_rename_removes_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: rename(2) refuses to replace it.
    let path = dir.path().join("record.json");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"").unwrap();
    let err = write_atomic(&path, b"x", 0o600).unwrap_err();
    assert_eq!(err.action, "rename", "{err}");
    assert_eq!(err.path, path);
    assert!(!tmp_path(&path).exists());
}

#[test]
fn a_full_disk_is_an_error() {
    // /dev/full: every write fails with ENOSPC (the rename never happens). A device in the
    // way is opened, not removed, and its mode is left alone.
    let full = Path::new("/dev/full");
    assert!(full.exists(), "/dev/full is missing: cannot test ENOSPC");
    let before = mode_of(full);
    let err = write_synced(full, b"x", 0o600).unwrap_err();
    assert_eq!(err.source.raw_os_error(), Some(28), "{err}");
    assert_eq!(err.action, "write");
    assert_eq!(mode_of(full), before);
}

#[test]
fn an_append_only_log_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    append_synced(&path, b"a\n", 0o600).unwrap();
    append_synced(&path, b"b\n", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"a\nb\n");
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn the_two_halves_make_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lkg.json");
    let tmp = tmp_path(&path);
    write_synced(&tmp, b"staged", 0o600).unwrap();
    assert!(!path.exists());
    rename_synced(&tmp, &path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"staged");
    replace_unsynced(&path, b"quick", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"quick");
    assert!(!tmp.exists());
}
