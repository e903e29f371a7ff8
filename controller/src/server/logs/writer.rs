//! The denial writer: one OS thread with its own connection that stores batches from
//! every agent session with group commit (everything queued, up to a row budget, in one
//! transaction), answers each submitter after the commit, publishes the stored rows to live
//! followers, and runs retention deletes one small chunk at a time between groups.
//!
//! It must never run a long statement: ingest from all agents waits behind it.

use crate::store::{self, BatchOutcome, HostBatch, NewDenial, WriterConn};
use rusqlite::Connection;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Rows per group commit, at most (a group always takes at least one batch).
const GROUP_ROWS: usize = 50_000;
/// Batches queued for the writer before submitters wait (backpressure to the sessions).
const QUEUE_DEPTH: usize = 1024;

/// Rows stored from one batch, as published to `--follow` subscribers.
#[derive(Debug)]
pub struct LiveRows {
    pub host: String,
    /// Row id of `rows[0]`; the rest follow consecutively.
    pub first_id: i64,
    pub rows: Vec<NewDenial>,
}

pub type Live = broadcast::Sender<Arc<LiveRows>>;

/// One retention step.
#[derive(Debug, Clone)]
pub enum Sweep {
    /// Delete rows last seen before this time (ms).
    OlderThan(i64),
    /// Delete this host's least recently seen rows (it is over its fair row quota).
    HostOldest(String),
}

enum Job {
    Batch(HostBatch, oneshot::Sender<Result<BatchOutcome, String>>),
    Sweep(Sweep, usize, oneshot::Sender<Result<usize, String>>),
}

/// Submits work to the writer thread; cheap to clone. The thread ends when every handle
/// (but not [`WeakWriter`]s) is gone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

#[derive(Debug, Clone)]
pub struct WeakWriter(mpsc::WeakSender<Job>);

impl WeakWriter {
    pub fn upgrade(&self) -> Option<Writer> {
        self.0.upgrade().map(|tx| Writer { tx })
    }
}

/// Writer tuning: a page cache that holds the hot index pages of a large table (random
/// host/port index inserts thrash the default 2 MiB), and fewer, larger WAL checkpoints.
pub fn tune_for_ingest(conn: &Connection) -> anyhow::Result<()> {
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    Ok(())
}

impl Writer {
    /// Start the writer thread on `conn`. If the thread ever panics the process exits
    /// (status 70): every later batch would otherwise fail until a restart, so the
    /// service manager restarts the controller instead.
    pub fn spawn(conn: WriterConn, live: Live) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("denial-writer".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(conn, rx, &live);
                }));
                if ran.is_err() {
                    tracing::error!("the denial writer panicked; exiting for a restart");
                    std::process::exit(70);
                }
            })?;
        Ok(Self { tx })
    }

    pub fn downgrade(&self) -> WeakWriter {
        WeakWriter(self.tx.downgrade())
    }

    /// Store one batch; resolves after its group is committed.
    pub async fn submit(&self, batch: HostBatch) -> anyhow::Result<BatchOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Batch(batch, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the denial writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the denial writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("storing denials: {e}"))
    }

    /// Delete at most `chunk` rows for `sweep`; returns how many were deleted.
    pub async fn sweep(&self, sweep: Sweep, chunk: usize) -> anyhow::Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Sweep(sweep, chunk, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the denial writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the denial writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("retention: {e}"))
    }
}

type Reply = oneshot::Sender<Result<BatchOutcome, String>>;

fn run(mut conn: WriterConn, mut rx: mpsc::Receiver<Job>, live: &Live) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return,
            },
        };
        let (batch, reply) = match first {
            Job::Sweep(s, chunk, reply) => {
                let r = conn.with(|db| match s {
                    Sweep::OlderThan(t) => store::delete_denials_before(db, t, chunk),
                    Sweep::HostOldest(host) => store::delete_host_oldest(db, &host, chunk),
                });
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
                continue;
            }
            Job::Batch(b, r) => (b, r),
        };
        let mut rows = batch.rows.len();
        let (mut batches, mut replies) = (vec![batch], vec![reply]);
        while rows < GROUP_ROWS {
            match rx.try_recv() {
                Ok(Job::Batch(b, r)) => {
                    rows += b.rows.len();
                    batches.push(b);
                    replies.push(r);
                }
                Ok(sweep) => {
                    pending = Some(sweep);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(&mut conn, batches, replies, live);
    }
}

/// Store a group in one transaction; if that fails, store each batch on its own so one
/// bad batch cannot fail the others.
fn commit_group(conn: &mut WriterConn, batches: Vec<HostBatch>, replies: Vec<Reply>, live: &Live) {
    let started = std::time::Instant::now();
    match conn.with(|db| store::store_batches(db, &batches)) {
        Ok(outcomes) => {
            tracing::trace!(
                batches = batches.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "denial group committed"
            );
            finish(batches, replies, outcomes, live);
        }
        Err(e) if batches.len() > 1 => {
            tracing::warn!(error = %e, batches = batches.len(), "denial group commit failed; storing batches one by one");
            for (b, r) in batches.into_iter().zip(replies) {
                commit_group(conn, vec![b], vec![r], live);
            }
        }
        Err(e) => {
            let host = batches.first().map(|b| b.host.clone()).unwrap_or_default();
            tracing::error!(%host, error = %e, "storing a denial batch failed");
            for r in replies {
                let _ = r.send(Err(format!("{e:#}")));
            }
        }
    }
}

fn finish(batches: Vec<HostBatch>, replies: Vec<Reply>, outcomes: Vec<BatchOutcome>, live: &Live) {
    let publish = live.receiver_count() > 0;
    for ((b, r), outcome) in batches.into_iter().zip(replies).zip(outcomes) {
        let _ = r.send(Ok(outcome));
        if let BatchOutcome::Stored { first_id, .. } = outcome
            && publish
            && !b.rows.is_empty()
        {
            let _ = live.send(Arc::new(LiveRows {
                host: b.host,
                first_id,
                rows: b.rows,
            }));
        }
    }
}
