//! Group commit for small, frequent writes (agent reports): callers queue a closure and
//! wait; one writer task runs every queued closure in a single transaction. Many agents
//! reporting at once cost one commit, not one each. A write may run twice (its group is
//! retried write by write when one fails), so it must be a plain statement sequence.

use super::sql::Db;
use super::{HostReport, Store};
use tokio::sync::{mpsc, oneshot};

/// Statements a caller queued (may run twice: see the module docs).
type Statements = Box<dyn Fn(&Db<'_>) -> anyhow::Result<()> + Send>;

/// One queued write: statements to run, or an agent report (merged with the group's
/// other reports into a few multi-row statements).
enum Write {
    Run(Statements),
    Report(HostReport),
}

impl Write {
    /// On its own (the fallback after a group failed).
    fn run(&self, db: &Db<'_>) -> anyhow::Result<()> {
        match self {
            Write::Run(f) => f(db),
            Write::Report(r) => {
                super::host_reported(db, &r.host, r.revision, &r.hash, r.error.as_deref())
            }
        }
    }
}

/// The whole group in `tx`: every `Run`, then the reports together.
fn run_group(tx: &Db<'_>, writes: &[Write]) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for w in writes {
        match w {
            Write::Run(f) => f(tx)?,
            Write::Report(r) => reports.push(r),
        }
    }
    super::hosts_reported(tx, &reports)
}

/// Most writes merged into one transaction.
const MAX_GROUP: usize = 1024;

#[derive(Debug, Clone)]
pub struct GroupWriter {
    tx: mpsc::Sender<(Write, oneshot::Sender<anyhow::Result<()>>)>,
}

impl GroupWriter {
    /// Start the writer task (needs a Tokio runtime).
    pub fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Write, oneshot::Sender<anyhow::Result<()>>)>(8192);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(w) => group.push(w),
                        Err(_) => break,
                    }
                }
                let (writes, waiters): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
                let results = store
                    .call(move |c| {
                        // All in one transaction first (one statement per write, no
                        // savepoint round trips: what a PostgreSQL store pays for); a
                        // failure undoes the group, which is then run with a savepoint
                        // per write so one failing write cannot undo the others.
                        {
                            let tx = c.transaction()?;
                            if run_group(&tx, &writes).is_ok() {
                                tx.commit()?;
                                return Ok(writes.iter().map(|_| Ok(())).collect());
                            }
                        }
                        let tx = c.transaction()?;
                        let mut results = Vec::with_capacity(writes.len());
                        for w in &writes {
                            let sp = tx.transaction()?;
                            let r = w.run(&sp);
                            if r.is_ok() {
                                sp.commit()?;
                            }
                            results.push(r);
                        }
                        tx.commit()?;
                        Ok(results)
                    })
                    .await;
                match results {
                    Ok(results) => {
                        for (w, r) in waiters.into_iter().zip(results) {
                            let _ = w.send(r);
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        for w in waiters {
                            let _ = w.send(Err(anyhow::anyhow!("group commit failed: {msg}")));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Run `f` in the next group transaction and wait until it is committed.
    pub async fn write(
        &self,
        f: impl Fn(&Db<'_>) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.queue(Write::Run(Box::new(f))).await
    }

    /// Record an agent report ([`super::host_reported`]) in the next group transaction.
    pub async fn report(&self, report: HostReport) -> anyhow::Result<()> {
        self.queue(Write::Report(report)).await
    }

    async fn queue(&self, w: Write) -> anyhow::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((w, done))
            .await
            .map_err(|_| anyhow::anyhow!("store writer stopped"))?;
        wait.await
            .map_err(|_| anyhow::anyhow!("store writer stopped"))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_commit_and_errors_stay_local() {
        for store in crate::store::testing::stores() {
            one_engine(store).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_merge_into_a_few_statements_and_say_what_one_would() {
        for store in crate::store::testing::stores() {
            let w = GroupWriter::start(store.clone());
            for h in ["a", "b", "c"] {
                let h = h.to_string();
                w.write(move |c| super::super::host_connected(c, &h, "1", "{}", 0, "", "p", "c1"))
                    .await
                    .unwrap();
            }
            let report = |host: &str, revision, hash: &str, error: Option<&str>| HostReport {
                host: host.into(),
                revision,
                hash: hash.into(),
                error: error.map(str::to_owned),
            };
            let mut tasks = Vec::new();
            for r in [
                report("a", 3, "ha", None),
                report("b", 3, "hb", None),
                report("c", 3, "", Some("nft failed")),
            ] {
                let w = w.clone();
                tasks.push(tokio::spawn(async move { w.report(r).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            // A later error keeps what was applied, as host_reported does.
            w.report(report("b", 4, "", Some("boom"))).await.unwrap();
            let hosts = store.call(super::super::list_hosts).await.unwrap();
            let got: Vec<(String, u64, String, String)> = hosts
                .into_iter()
                .map(|h| (h.name, h.applied_revision, h.reported_hash, h.last_error))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("a".into(), 3, "ha".into(), String::new()),
                    ("b".into(), 3, "hb".into(), "boom".into()),
                    ("c".into(), 0, String::new(), "nft failed".into()),
                ],
                "{store:?}"
            );
        }
    }

    async fn one_engine(store: Store) {
        let w = GroupWriter::start(store.clone());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    if i == 7 {
                        anyhow::bail!("boom");
                    }
                    super::super::audit(c, "t", "x", &i.to_string())
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        let n = store
            .call(|c| {
                c.query_one("SELECT COUNT(*) FROM audit", crate::args![], |r| {
                    r.get::<i64>(0)
                })
            })
            .await
            .unwrap();
        assert_eq!(n, 199);
    }
}
