//! Denial logs on the controller: store `DenialBatch`es (acknowledged once committed), serve
//! `Logs` (with `--follow`) and `LogsTop`, and enforce retention by age and row count.
//!
//! Ingest: validate ([`validate`]), hand to the single [`writer`] thread (group commit over
//! all agents), then send `DenialAck{seq}`. A batch at or below the host's last stored seq is
//! acknowledged without being stored again; a batch of a new epoch (the agent's spool was
//! recreated) restarts the numbering. A batch that fails validation (or cannot be
//! stored) is not acknowledged and ends the agent's session: `InvalidArgument` (or
//! `Unavailable`) naming the seq; later batches already in flight on that session are
//! ignored, so a batch is never stored past an unstored one. The agent must drop a batch
//! rejected with `InvalidArgument` (it would be rejected again) and resend on `Unavailable`.
//!
//! Reads use their own short-lived connections (WAL readers), never the writer's.

pub mod validate;
pub mod writer;

use super::Shared;
use super::registry::Outbound;
use crate::store::{self, BatchOutcome, DenialFilter, DenialRecord, HostTotals, NewDenial};
use portcullis_proto::v1;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use writer::{LiveRows, Sweep, Writer};

pub type LogsStream = Pin<Box<dyn Stream<Item = Result<v1::LogsEvent, Status>> + Send>>;

/// Rows returned when the request does not say (`--limit` default).
pub const DEFAULT_LIMIT: usize = 100;
/// Rows one request may ask for.
pub const MAX_LIMIT: usize = 100_000;
/// Rows per streamed `LogsEvent`.
const ROWS_PER_EVENT: usize = 5_000;
/// Rows deleted per retention step (one short write transaction).
const SWEEP_CHUNK: usize = 5_000;
/// Live batches kept for `--follow` subscribers (one ring shared by all; a batch is freed
/// once every subscriber has it). A subscriber this far behind is dropped.
pub const LIVE_DEPTH: usize = 256;
/// Events queued per `--follow` subscriber (then it is behind: see [`LIVE_DEPTH`]).
pub const FOLLOW_QUEUE: usize = 16;

/// Retention of the denial log (`serve --log-retention`, `--log-max-rows`).
#[derive(Debug, Clone)]
pub struct LogsConfig {
    /// Delete rows last seen longer ago than this; `None` keeps them.
    pub retention: Option<Duration>,
    /// Keep at most this many rows (the newest); `None` is unlimited.
    pub max_rows: Option<u64>,
    /// How often retention runs.
    pub sweep_interval: Duration,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            retention: Some(Duration::from_secs(14 * 24 * 3600)),
            max_rows: Some(20_000_000),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// The denial writer, live `--follow` subscribers, and sessions whose batches are refused.
#[derive(Debug)]
pub struct LogsState {
    db: store::Store,
    writer: Writer,
    live: writer::Live,
    rejected: Mutex<Vec<Outbound>>,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("denial batch seq {seq} rejected: {source}")]
    Invalid {
        seq: u64,
        source: validate::BatchError,
    },
    #[error("denial batch seq {seq} not stored: {source:#}")]
    Store { seq: u64, source: anyhow::Error },
}

impl LogsState {
    /// Start the writer thread on `db` (already migrated) and the retention task.
    pub fn start(db: &store::Store, config: &LogsConfig) -> anyhow::Result<Self> {
        let (live, _) = broadcast::channel(LIVE_DEPTH);
        let conn = db.writer_connection()?;
        if let Some(c) = conn.sqlite() {
            writer::tune_for_ingest(c)?;
        }
        let writer = Writer::spawn(conn, live.clone())?;
        tokio::spawn(retention(writer.downgrade(), db.clone(), config.clone()));
        Ok(Self {
            db: db.clone(),
            writer,
            live,
            rejected: Mutex::new(Vec::new()),
        })
    }

    /// Validate and store one batch (the ingest path without the session around it).
    pub async fn ingest(
        &self,
        host: &str,
        batch: v1::DenialBatch,
    ) -> Result<BatchOutcome, IngestError> {
        let seq = batch.seq;
        let hb = validate::host_batch(host, batch, store::now_ms())
            .map_err(|source| IngestError::Invalid { seq, source })?;
        self.writer
            .submit(hb)
            .await
            .map_err(|source| IngestError::Store { seq, source })
    }

    fn rejected(&self) -> std::sync::MutexGuard<'_, Vec<Outbound>> {
        self.rejected.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every `retention.sweep_interval`: delete expired rows, then the rows of hosts over their
/// fair share of `max_rows` ([`store::fair_excess`], counted on a reader connection), a
/// chunk per writer job so agents' batches interleave. Ends with the writer.
async fn retention(writer: writer::WeakWriter, db: store::Store, config: LogsConfig) {
    let mut tick = tokio::time::interval(config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(w) = writer.upgrade() else { return };
        if let Some(age) = config.retention {
            let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let cutoff = store::now_ms().saturating_sub(age);
            sweep(&w, Sweep::OlderThan(cutoff), usize::MAX).await;
        }
        // Shared store: the days that are over get their query indexes.
        let today = store::now_ms().div_euclid(store::DAY_MS);
        match db.read(move |c| store::seal_partitions(c, today)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(indexes = n, "denial log: past days indexed"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "denial log: indexing past days failed")
            }
        }
        let Some(max_rows) = config.max_rows else {
            continue;
        };
        let excess = read(&db, move |c| {
            if store::denial_rows_bound(c)? <= max_rows {
                return Ok(Vec::new());
            }
            Ok(store::fair_excess(
                &store::denial_rows_per_host(c)?,
                max_rows,
            ))
        })
        .await;
        match excess {
            Ok(excess) => {
                for (host, n) in excess {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    sweep(&w, Sweep::HostOldest(host), n).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e.message(), "denial retention: counting rows failed")
            }
        }
    }
}

/// Run one retention step to completion (at most `total` rows), a chunk at a time.
async fn sweep(w: &Writer, sweep: Sweep, total: usize) {
    let mut deleted = 0usize;
    while deleted < total {
        match w
            .sweep(sweep.clone(), SWEEP_CHUNK.min(total - deleted))
            .await
        {
            Ok(0) => break,
            Ok(n) => deleted += n,
            Err(e) => {
                tracing::error!(error = %e, "denial retention failed");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(?sweep, deleted, "denial retention");
    }
}

/// Called by the session for each batch: validate, store, then acknowledge on `tx`.
pub async fn on_batch(
    shared: &Shared,
    host: &str,
    batch: v1::DenialBatch,
    tx: &Outbound,
) -> anyhow::Result<()> {
    let state = &shared.logs;
    if state.rejected().iter().any(|r| r.same_channel(tx)) {
        tracing::debug!(%host, seq = batch.seq, "denial batch ignored: session already refused");
        return Ok(());
    }
    let (seq, entries) = (batch.seq, batch.entries.len());
    let status = match state.ingest(host, batch).await {
        Ok(outcome) => {
            tracing::debug!(%host, seq, entries, ?outcome, "denial batch stored");
            shared.metrics.denial_batch(match outcome {
                BatchOutcome::Stored { .. } => "stored",
                BatchOutcome::Duplicate { .. } => "duplicate",
            });
            let ack = v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::DenialAck(v1::DenialAck {
                    seq,
                })),
            };
            let _ = tx.send(Ok(ack)).await;
            return Ok(());
        }
        Err(e @ IngestError::Invalid { .. }) => {
            tracing::warn!(%host, seq, entries, error = %e, "denial batch rejected; ending the session");
            shared.metrics.denial_batch("invalid");
            Status::invalid_argument(e.to_string())
        }
        Err(e @ IngestError::Store { .. }) => {
            tracing::error!(%host, seq, error = %e, "denial batch not stored; ending the session");
            shared.metrics.denial_batch("store_failed");
            Status::unavailable(e.to_string())
        }
    };
    {
        let mut rejected = state.rejected();
        rejected.retain(|r| !r.is_closed());
        rejected.push(tx.clone());
    }
    let _ = tx.send(Err(status)).await;
    Ok(())
}

fn row(r: DenialRecord) -> v1::DenialRow {
    live_row(&r.host, r.denial)
}

fn live_row(host: &str, d: NewDenial) -> v1::DenialRow {
    v1::DenialRow {
        host: host.to_string(),
        src: d.src,
        dst: d.dst,
        proto: d.proto.into(),
        dport: d.dport.into(),
        ifname: d.ifname,
        count: d.count,
        first_unix_ms: d.first_ms,
        last_unix_ms: d.last_ms,
        revision: d.revision,
        audit: d.audit,
    }
}

fn totals(t: HostTotals) -> v1::HostLogTotals {
    v1::HostLogTotals {
        host: t.host,
        seen: t.seen,
        stored: t.stored,
        dropped_by_agent: t.dropped_by_agent,
        socket_overruns: t.socket_overruns,
        kernel_suppressed: t.kernel_suppressed,
        spool_dropped: t.spool_dropped,
        socket_lost: t.socket_lost,
    }
}

/// Run `f` on a read connection of its own (see [`store::Store::read`]).
async fn read<T: Send + 'static>(
    db: &store::Store,
    f: impl FnOnce(&store::Db<'_>) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Status> {
    db.read(f).await.map_err(super::wire::internal)
}

fn request_filter(req: &v1::LogsRequest) -> Result<DenialFilter, Status> {
    validate::filter(req).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// `Logs`: the newest matching rows (newest first, in events of at most 5,000 rows; totals
/// of the matching hosts in the first event), then, with `follow`, each newly stored
/// matching row (in storage order) until the client goes away.
pub async fn logs(shared: &Shared, req: v1::LogsRequest) -> Result<LogsStream, Status> {
    let filter = request_filter(&req)?;
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    // Subscribe before reading the high-water mark so no row falls between the two. On a
    // shared store rows come from every controller: followed in the database instead.
    let shared_db = shared.logs.db.dialect() == store::Dialect::Postgres;
    let live = (req.follow && !shared_db).then(|| shared.logs.live.subscribe());
    let shared_store = (req.follow && shared_db).then(|| shared.logs.db.clone());
    let f = filter.clone();
    let (high, rows, host_totals) = read(&shared.logs.db, move |c| {
        let high = store::max_denial_id(c)?;
        let rows = store::query_denials(c, &f, limit, Some(high))?;
        let t = store::denial_totals(c, None)?;
        let t: Vec<HostTotals> = t.into_iter().filter(|t| f.hosts.matches(&t.host)).collect();
        Ok((high, rows, t))
    })
    .await?;
    let mut events = Vec::new();
    let mut rows = rows.into_iter().map(row).peekable();
    let mut first = Some(host_totals.into_iter().map(totals).collect());
    while first.is_some() || rows.peek().is_some() {
        events.push(v1::LogsEvent {
            rows: rows.by_ref().take(ROWS_PER_EVENT).collect(),
            totals: first.take().unwrap_or_default(),
            missed_batches: 0,
        });
    }
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    tokio::spawn(async move {
        for e in events {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if let Some(live) = live {
            follow(live, filter, high, tx).await;
        } else if let Some(db) = shared_store {
            follow_store(db, filter, high, tx).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn follow(
    mut live: broadcast::Receiver<Arc<LiveRows>>,
    filter: DenialFilter,
    high: i64,
    tx: mpsc::Sender<Result<v1::LogsEvent, Status>>,
) {
    let mut missed = 0u64;
    loop {
        let batch = tokio::select! {
            r = live.recv() => r,
            () = tx.closed() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Holding rows for a reader that does not read would cost memory without
                // bound: drop it with a status that says why.
                tracing::warn!(
                    skipped_batches = n,
                    "logs --follow subscriber fell behind; dropped"
                );
                let why = format!(
                    "logs --follow fell behind by more than {LIVE_DEPTH} batches ({n} skipped) \
                     and was stopped; read the output faster (not through a paused pager) or \
                     narrow the filter, then query the gap with --since"
                );
                let _ = tx.send(Err(Status::resource_exhausted(why))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let rows: Vec<v1::DenialRow> = (batch.first_id..)
            .zip(&batch.rows)
            .filter(|(id, d)| *id > high && filter.matches(&batch.host, d))
            .map(|(_, d)| live_row(&batch.host, d.clone()))
            .collect();
        if rows.is_empty() && missed == 0 {
            continue;
        }
        // Skipped batches are counted, not replayed.
        let event = v1::LogsEvent {
            rows,
            totals: Vec::new(),
            missed_batches: std::mem::take(&mut missed),
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// How often a `--follow` on a shared store looks for new rows.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// `--follow` on a shared store: every row stored after `high` through any controller, in
/// id order (ids follow commit order across controllers: see `store::denials`), read a page
/// at a time; a slow reader holds the pages back (bounded queue), it is never sent twice.
async fn follow_store(
    db: store::Store,
    filter: DenialFilter,
    mut high: i64,
    tx: mpsc::Sender<Result<v1::LogsEvent, Status>>,
) {
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        loop {
            let f = filter.clone();
            let page = db
                .read(move |c| store::query_denials_after(c, &f, high, ROWS_PER_EVENT))
                .await;
            let (rows, last, full) = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "logs --follow: reading new rows failed; retrying");
                    break;
                }
            };
            high = last;
            if !rows.is_empty() {
                let event = v1::LogsEvent {
                    rows: rows.into_iter().map(row).collect(),
                    totals: Vec::new(),
                    missed_batches: 0,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
    }
}

/// `LogsTop`: per host over the window, the most denied ports and sources (`top` each).
pub async fn top(shared: &Shared, req: v1::LogsRequest) -> Result<v1::LogsTopResponse, Status> {
    let filter = request_filter(&req)?;
    let n = match req.top {
        0 => 10,
        n => usize::try_from(n).unwrap_or(1000).min(1000),
    };
    let hosts = read(&shared.logs.db, move |c| store::top_denials(c, &filter, n)).await?;
    let proto = |p: u8| {
        portcullis_policy::Proto::from_number(p)
            .map_or_else(|| format!("proto{p}"), |p| p.to_string())
    };
    Ok(v1::LogsTopResponse {
        hosts: hosts
            .into_iter()
            .map(|h| v1::HostTop {
                host: h.host,
                total: h.total,
                ports: h
                    .ports
                    .into_iter()
                    .map(|((p, port), count)| v1::TopItem {
                        key: format!("{}/{port}", proto(p)),
                        count,
                    })
                    .collect(),
                sources: h
                    .sources
                    .into_iter()
                    .map(|(key, count)| v1::TopItem { key, count })
                    .collect(),
            })
            .collect(),
    })
}
