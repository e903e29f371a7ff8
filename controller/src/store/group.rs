//! Group commit for small, frequent writes (agent reports): callers queue a closure and
//! wait; one writer task runs every queued closure in a single transaction. Many agents
//! reporting at once cost one commit, not one each. A write may run twice (its group is
//! retried write by write when one fails), so it must be a plain statement sequence.

use super::Store;
use super::sql::Db;
use tokio::sync::{mpsc, oneshot};

type Write = Box<dyn Fn(&Db<'_>) -> anyhow::Result<()> + Send>;

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
                            if writes.iter().all(|w| w(&tx).is_ok()) {
                                tx.commit()?;
                                return Ok(writes.iter().map(|_| Ok(())).collect());
                            }
                        }
                        let tx = c.transaction()?;
                        let mut results = Vec::with_capacity(writes.len());
                        for w in &writes {
                            let sp = tx.transaction()?;
                            let r = w(&sp);
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
        let (done, wait) = oneshot::channel();
        self.tx
            .send((Box::new(f), done))
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
