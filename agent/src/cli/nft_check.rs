//! The check `run`, `apply` and `restore` make before anything else: is there an nft
//! binary to run? Without it every apply would fail later with a bare "No such file or
//! directory"; this says what to install, and the CLI exits 6.

use std::path::{Path, PathBuf};

/// No usable nft binary.
#[derive(Debug, thiserror::Error)]
pub enum NftMissing {
    #[error(
        "nft not found: {nft} is not an executable file. Install nftables \
         (Debian/Ubuntu: `apt-get install nftables`, Fedora/RHEL: `dnf install nftables`) \
         or pass --nft /path/to/nft (PORTCULLIS_NFT)",
        nft = .0.display()
    )]
    NotExecutable(PathBuf),
    #[error(
        "nft not found in PATH ({path}). Install nftables (Debian/Ubuntu: \
         `apt-get install nftables`, Fedora/RHEL: `dnf install nftables`) or pass \
         --nft /path/to/nft (PORTCULLIS_NFT)"
    )]
    NotInPath { path: String },
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The nft binary `--nft` names: a path (with a `/`) as given, a bare name looked up in
/// `PATH` (plus /usr/sbin and /sbin, where Debian puts it, for users without them in PATH).
pub fn find(nft: &Path) -> Result<PathBuf, NftMissing> {
    if nft.as_os_str().to_string_lossy().contains('/') {
        return if executable(nft) {
            Ok(nft.to_path_buf())
        } else {
            Err(NftMissing::NotExecutable(nft.to_path_buf()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(nft);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(NftMissing::NotInPath {
        path: path.to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_and_a_non_executable_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nft");
        assert!(matches!(find(&file), Err(NftMissing::NotExecutable(_))));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        assert!(matches!(find(&file), Err(NftMissing::NotExecutable(_))));
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(&file).unwrap(), file);
        let err = find(Path::new("nft-that-does-not-exist")).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install nftables"),
            "{err}"
        );
    }
}
