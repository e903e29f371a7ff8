//! The denial spool: batches that the controller has not acknowledged yet, on disk in the
//! state dir (`spool/`), so a controller outage or an agent restart loses nothing that was
//! spooled. Bounded by bytes: when full, the oldest batches are dropped and *counted*
//! (the count rides on the next batch as `spool_dropped`).
//!
//! Layout: `spool/<seq:020>.pb` (one wire batch each, written with [`crate::durable`]:
//! temp + fsync + rename + directory fsync),
//! `spool/meta.json` (`epoch`, `next_seq`, `dropped` not yet reported). Sequence numbers
//! never go back within an epoch; a new spool gets a new random epoch. Single writer: the
//! agent's denial pipeline. No network I/O here.

use crate::durable;
use portcullis_proto::v1;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a spooled file failed (the path and the step are in it).
    #[error("spool {0}")]
    Write(#[from] crate::durable::DurableError),
    #[error("spool meta {path}: {message}")]
    Meta { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    epoch: u64,
    next_seq: u64,
    dropped: u64,
}

/// Unacknowledged batches, oldest first, bounded by `max_bytes`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    meta: Meta,
    /// seq -> (encoded size on disk, drops that batch reports)
    files: BTreeMap<u64, (u64, u64)>,
    /// Batches dropped because the spool was full (cumulative, this process).
    pub dropped_total: u64,
    /// Batches lost because they could not be written (ENOSPC, EIO...; cumulative, this
    /// process). Each is also counted in the next stored batch's `spool_dropped`.
    pub lost_total: u64,
}

/// Spooled files are the agent's alone.
const SPOOL_MODE: u32 = 0o600;

impl Spool {
    /// Open (or create) the spool in `dir`.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let meta_path = dir.join("meta.json");
        let meta = match fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| SpoolError::Meta {
                path: meta_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta {
                epoch: rand::random::<u64>() | 1,
                next_seq: 1,
                dropped: 0,
            },
            Err(e) => return Err(io(&meta_path)(e)),
        };
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".pb").and_then(|s| s.parse::<u64>().ok()) {
                let bytes = fs::read(entry.path()).map_err(io(&entry.path()))?;
                match v1::DenialBatch::decode(bytes.as_slice()) {
                    Ok(b) => {
                        files.insert(seq, (bytes.len() as u64, b.spool_dropped));
                    }
                    Err(e) => {
                        tracing::warn!(file = %name, error = %e, "corrupt spooled batch removed");
                        let _ = fs::remove_file(entry.path());
                    }
                }
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut spool = Self {
            dir,
            max_bytes,
            meta,
            files,
            dropped_total: 0,
            lost_total: 0,
        };
        if let Some((&last, _)) = spool.files.last_key_value() {
            spool.meta.next_seq = spool.meta.next_seq.max(last + 1);
        }
        spool.save_meta()?;
        Ok(spool)
    }

    fn save_meta(&self) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(&self.meta).map_err(|e| SpoolError::Meta {
            path: self.dir.join("meta.json"),
            message: e.to_string(),
        })?;
        Ok(durable::write_atomic(
            &self.dir.join("meta.json"),
            &bytes,
            SPOOL_MODE,
        )?)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.pb"))
    }

    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// Unacknowledged batches on disk.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.files.values().map(|(len, _)| len).sum()
    }

    /// Number, stamp (epoch, seq, unreported drops) and store `batch` durably.
    /// Returns its seq. When it cannot be written (disk full, I/O error) it is lost and
    /// counted: the next batch stored reports it in `spool_dropped`.
    pub fn append(&mut self, mut batch: v1::DenialBatch) -> Result<u64, SpoolError> {
        let seq = self.meta.next_seq;
        batch.seq = seq;
        batch.epoch = self.meta.epoch;
        batch.spool_dropped = self.meta.dropped;
        let len = batch.encoded_len() as u64 + 16;
        // Make room: drop the oldest, counting them (and the drops they carried).
        while !self.files.is_empty() && self.bytes() + len > self.max_bytes {
            if let Some((old, (_, carried))) = self.files.pop_first() {
                let _ = fs::remove_file(self.path(old));
                self.meta.dropped += 1 + carried;
                self.dropped_total += 1;
                batch.spool_dropped = self.meta.dropped;
            }
        }
        let bytes = batch.encode_to_vec();
        let carried = batch.spool_dropped;
        // The batch first: until it is on disk, the drops it carries stay in the meta.
        if let Err(e) = durable::write_atomic(&self.path(seq), &bytes, SPOOL_MODE) {
            self.meta.dropped += 1;
            self.lost_total += 1;
            // Best effort: the count is kept in memory if this fails too.
            let _ = self.save_meta();
            return Err(e.into());
        }
        self.files.insert(seq, (bytes.len() as u64, carried));
        self.meta.next_seq = seq + 1;
        // Reported with this batch from now on.
        self.meta.dropped = 0;
        // The batch is stored: a meta that cannot follow (disk full) is not a loss. A
        // reopen takes next_seq from the files; the drops the stale meta still holds may
        // then be reported twice (over-counting, never hiding a loss).
        if let Err(e) = self.save_meta() {
            tracing::warn!(error = %e, seq, "denial spool meta not updated");
        }
        Ok(seq)
    }

    /// The oldest unacknowledged batch's seq.
    pub fn oldest(&self) -> Option<u64> {
        self.files.first_key_value().map(|(s, _)| *s)
    }

    /// Give up on the oldest batch (the controller keeps refusing it): remove it and count
    /// it (and the drops it carried) in the next batch's `spool_dropped`.
    pub fn drop_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        let Some((seq, (_, carried))) = self.files.pop_first() else {
            return Ok(None);
        };
        let _ = fs::remove_file(self.path(seq));
        self.meta.dropped += 1 + carried;
        self.dropped_total += 1;
        self.save_meta()?;
        Ok(Some(seq))
    }

    /// Remove every batch with seq <= `seq` (the controller stored them).
    pub fn ack(&mut self, seq: u64) {
        let keep = self.files.split_off(&(seq + 1));
        for old in std::mem::replace(&mut self.files, keep).into_keys() {
            let _ = fs::remove_file(self.path(old));
        }
    }

    /// Batches with seq > `after`, oldest first (for sending).
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<v1::DenialBatch>, SpoolError> {
        let mut out = Vec::new();
        for (&seq, _) in self.files.range(after + 1..).take(max) {
            let p = self.path(seq);
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&p)(e)),
            };
            match v1::DenialBatch::decode(bytes.as_slice()) {
                Ok(b) => out.push(b),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "corrupt spooled batch removed");
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(out)
    }

    /// Sync the directory so renames and removals survive a crash.
    pub fn sync_dir(&self) -> Result<(), SpoolError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(n: u64) -> v1::DenialBatch {
        v1::DenialBatch {
            seen: n,
            sent: n,
            entries: vec![v1::DenialEntry {
                src: "10.77.0.100".into(),
                count: n,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn appends_acks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let epoch = s.epoch();
        assert_eq!(s.append(batch(1)).unwrap(), 1);
        assert_eq!(s.append(batch(2)).unwrap(), 2);
        assert_eq!(s.append(batch(3)).unwrap(), 3);
        s.ack(1);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.epoch(), epoch);
        let pending = s.read_after(0, 10).unwrap();
        assert_eq!(
            pending.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(pending.iter().all(|b| b.epoch == epoch));
        s.ack(3);
        assert!(s.is_empty());
        // Numbering continues after everything was acknowledged and the spool reopened.
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.append(batch(4)).unwrap(), 4);
    }

    #[test]
    fn full_spool_drops_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(1).encoded_len() as u64 + 16;
        let mut s = Spool::open(dir.path(), one * 3).unwrap();
        for i in 1..=10 {
            s.append(batch(i)).unwrap();
        }
        assert!(s.len() <= 3);
        let pending = s.read_after(0, 100).unwrap();
        let dropped: u64 = pending.iter().map(|b| b.spool_dropped).sum();
        assert_eq!(dropped + pending.len() as u64, 10, "{pending:?}");
        assert_eq!(s.dropped_total, 10 - pending.len() as u64);
    }

    #[test]
    fn a_batch_that_cannot_be_written_is_counted_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.append(batch(1)).unwrap(), 1);
        // seq 2 cannot be written: a directory stands where its temporary file goes.
        let blocker = crate::durable::tmp_path(&s.path(2));
        fs::create_dir(&blocker).unwrap();
        s.append(batch(2)).unwrap_err();
        s.append(batch(3)).unwrap_err();
        assert_eq!(s.lost_total, 2);
        fs::remove_dir(&blocker).unwrap();
        let seq = s.append(batch(4)).unwrap();
        let stored = s.read_after(1, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!((stored[0].seq, stored[0].spool_dropped), (seq, 2));
        // The count survives a restart before it was reported.
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read_after(0, 10).unwrap().len(), 2);
        let next = s.append(batch(5)).unwrap();
        assert_eq!(s.read_after(next - 1, 1).unwrap()[0].spool_dropped, 0);
    }
}
