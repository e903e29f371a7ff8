//! Store tests run on both engines: SQLite in memory and PostgreSQL in a fresh schema of
//! the test cluster (`portcullis_testkit::postgres`; fails without one unless
//! `PORTCULLIS_SKIP_POSTGRES=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::Store;
use std::sync::OnceLock;

/// The runtime PostgreSQL stores of tests run their connections on (outlives every test).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A migrated PostgreSQL store in a schema of its own, or `None` when skipped.
pub fn postgres_store() -> Option<Store> {
    let cluster = portcullis_testkit::require_postgres()?;
    let url = cluster.fresh_schema().expect("a schema for the test");
    // On a thread of its own: the caller may be a runtime worker (async tests).
    let store = std::thread::spawn(move || runtime().block_on(Store::open_postgres(&url, None)))
        .join()
        .expect("opening the PostgreSQL store panicked")
        .expect("PostgreSQL store");
    Some(store)
}

/// The stores of every engine.
pub fn stores() -> Vec<Store> {
    let mut v = vec![Store::in_memory().expect("SQLite store")];
    v.extend(postgres_store());
    v
}

/// Run `f` on a fresh store of each engine (synchronously, off any runtime worker).
pub fn each_engine(f: impl Fn(&Store) -> anyhow::Result<()>) {
    for store in stores() {
        f(&store).unwrap_or_else(|e| panic!("{store:?}: {e:#}"));
    }
}
