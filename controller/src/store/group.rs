//! Group commit for small, frequent writes (agent reports): callers queue a closure and
//! wait; one writer task runs every queued closure in a single transaction. Many agents
//! reporting at once cost one commit, not one each.

use super::Store;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

type Write = Box<dyn FnOnce(&Connection) -> anyhow::Result<()> + Send>;

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
                        let mut tx = c.transaction()?;
                        // One failing write must not undo the others: run each in a
                        // savepoint and report its own result.
                        let mut results = Vec::with_capacity(writes.len());
                        for w in writes {
                            let sp = tx.savepoint()?;
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
        f: impl FnOnce(&Connection) -> anyhow::Result<()> + Send + 'static,
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

    #[tokio::test]
    async fn concurrent_writes_all_commit_and_errors_stay_local() {
        let store = Store::in_memory().unwrap();
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
            .call_sync(|c| {
                Ok(c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))?)
            })
            .unwrap();
        assert_eq!(n, 199);
    }
}
