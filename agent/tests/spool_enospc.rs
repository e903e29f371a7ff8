//! The denial spool on a full disk (a 64 KiB tmpfs): every batch that cannot be written is
//! counted, and the count reaches the controller with the next batch that is.
//!
//! Needs root (mount); fails without it unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

use portcullis_agent::denials::Spool;
use portcullis_proto::v1;
use portcullis_testkit::require_root_netns;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(path, dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn batch(i: u64) -> v1::DenialBatch {
    v1::DenialBatch {
        seen: 1,
        sent: 1,
        entries: vec![v1::DenialEntry {
            src: format!("10.77.{}.{}", i / 250, i % 250 + 1),
            // Incompressible-ish padding so the disk fills in a few dozen batches.
            ifname: format!("{i:0>1000}"),
            count: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn batches_lost_to_enospc_are_counted() {
    if !require_root_netns() {
        return;
    }
    let fs = Tmpfs::new("64k");
    let mut spool = Spool::open(fs.path().join("spool"), 1 << 30).unwrap();
    let (mut stored, mut lost) = (Vec::new(), 0u64);
    for i in 0..400 {
        match spool.append(batch(i)) {
            Ok(seq) => stored.push(seq),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("No space left on device"), "{text}");
                lost += 1;
            }
        }
    }
    assert!(lost > 0, "the disk never filled");
    assert!(!stored.is_empty());
    assert_eq!(spool.lost_total, lost);
    // Room again: the next batch stored carries every loss.
    spool.ack(*stored.last().unwrap());
    spool.sync_dir().unwrap();
    let seq = spool.append(batch(1000)).unwrap();
    let next = spool.read_after(seq - 1, 1).unwrap();
    assert_eq!(next[0].spool_dropped, lost, "{:?}", next[0].seq);
}
