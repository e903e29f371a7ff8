//! One synchronous SQL interface over the two engines: SQLite (rusqlite, embedded) and
//! PostgreSQL (tokio-postgres through a deadpool pool). Every query of the store is
//! written once against [`Db`]; the few places where the dialects differ ask
//! [`Db::dialect`].
//!
//! SQL is written in SQLite's placeholder style (`?1`, `?2`, or bare `?`); for PostgreSQL
//! it is rewritten to `$1`, `$2` (outside quoted strings) before it is prepared.
//! Arguments are [`Arg`]s: integers bind to whatever integer, boolean or floating type
//! PostgreSQL inferred for the placeholder, so the store needs no per-engine casts.
//!
//! PostgreSQL calls block the calling thread (`Handle::block_on`): a [`Db`] is only
//! used on the blocking pool or a dedicated thread, never on a runtime worker.

use anyhow::Context as _;
use bytes::BytesMut;
use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Deref;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Which SQL engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One SQL argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

/// Values that bind as an [`Arg`] (see [`args!`](crate::args)).
pub trait ToArg {
    fn to_arg(&self) -> Arg<'_>;
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn to_arg(&self) -> Arg<'_> {
                Arg::Int(i64::from(*self))
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u16, u8, bool);

impl ToArg for u64 {
    /// Saturating: the store's counters are capped far below `i64::MAX`.
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToArg for usize {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToArg for f64 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Real(*self)
    }
}
impl ToArg for str {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}
impl ToArg for String {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}
impl ToArg for std::sync::Arc<str> {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}
impl ToArg for [u8] {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(Cow::Borrowed(self))
    }
}
impl ToArg for Arg<'_> {
    fn to_arg(&self) -> Arg<'_> {
        match self {
            Arg::Null => Arg::Null,
            Arg::Int(v) => Arg::Int(*v),
            Arg::Real(v) => Arg::Real(*v),
            Arg::Text(t) => Arg::Text(Cow::Borrowed(t)),
            Arg::Blob(b) => Arg::Blob(Cow::Borrowed(b)),
        }
    }
}
impl<T: ToArg + ?Sized> ToArg for &T {
    fn to_arg(&self) -> Arg<'_> {
        (**self).to_arg()
    }
}
impl<T: ToArg> ToArg for Option<T> {
    fn to_arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, ToArg::to_arg)
    }
}

/// `args![a, b, c]`: a slice of [`Arg`]s borrowing `a`, `b`, `c` (like rusqlite's `params!`).
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::store::sql::Arg<'_>] };
    ($($x:expr),+ $(,)?) => {
        &[$($crate::store::sql::ToArg::to_arg(&$x)),+] as &[$crate::store::sql::Arg<'_>]
    };
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(*v),
            Arg::Real(v) => ValueRef::Real(*v),
            Arg::Text(t) => ValueRef::Text(t.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Binds to the type PostgreSQL inferred for the placeholder.
impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Arg::Null, _) => Ok(IsNull::Yes),
            (Arg::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Arg::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Arg::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Arg::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            (Arg::Int(v), &Type::FLOAT8) => (*v as f64).to_sql(ty, out),
            (Arg::Real(v), &Type::FLOAT8) => v.to_sql(ty, out),
            #[allow(clippy::cast_possible_truncation)]
            (Arg::Real(v), &Type::FLOAT4) => (*v as f32).to_sql(ty, out),
            (Arg::Text(t), _) => t.as_ref().to_sql(ty, out),
            (Arg::Blob(b), &Type::BYTEA) => b.as_ref().to_sql(ty, out),
            (a, ty) => Err(format!("cannot bind {a:?} to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One result row of either engine.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `i` (0-based) as `T`.
    pub fn get<T: FromCol>(&self, i: usize) -> anyhow::Result<T> {
        match self {
            Row::Sqlite(r) => T::sqlite(r, i).with_context(|| format!("column {i}")),
            Row::Postgres(r) => T::postgres(r, i).with_context(|| format!("column {i}")),
        }
    }
}

/// A column type readable from both engines. Integers read from any integer (or boolean)
/// column; strings from text columns.
pub trait FromCol: Sized {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self>;
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self>;
}

fn pg_type(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Type> {
    Ok(r.columns()
        .get(i)
        .with_context(|| format!("no column {i}"))?
        .type_()
        .clone())
}

fn pg_int(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Option<i64>> {
    Ok(match pg_type(r, i)? {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?,
        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
        Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
        Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(i64::from),
        t => anyhow::bail!("an integer column is of type {t}"),
    })
}

fn pg_real(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Option<f64>> {
    #[allow(clippy::cast_precision_loss)]
    Ok(match pg_type(r, i)? {
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?,
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(f64::from),
        Type::INT8 | Type::INT4 | Type::INT2 => pg_int(r, i)?.map(|v| v as f64),
        t => anyhow::bail!("a floating-point column is of type {t}"),
    })
}

impl FromCol for i64 {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        pg_int(r, i)?.context("NULL in an integer column")
    }
}
impl FromCol for Option<i64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        pg_int(r, i)
    }
}
impl FromCol for bool {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        Ok(pg_int(r, i)?.context("NULL in a boolean column")? != 0)
    }
}
impl FromCol for Option<bool> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        Ok(pg_int(r, i)?.map(|v| v != 0))
    }
}
impl FromCol for f64 {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        pg_real(r, i)?.context("NULL in a floating-point column")
    }
}
impl FromCol for Option<f64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        pg_real(r, i)
    }
}
impl FromCol for String {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Option<String> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Vec<u8> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> anyhow::Result<Self> {
        Ok(r.get(i)?)
    }
    fn postgres(r: &tokio_postgres::Row, i: usize) -> anyhow::Result<Self> {
        Ok(r.try_get(i)?)
    }
}

/// `?1`/`?` placeholders to `$1` (outside single-quoted strings and double-quoted names).
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let (mut quote, mut next) = (None, 1u32);
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push('$');
                if n.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&n);
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// A PostgreSQL error with the server's message (tokio-postgres shows only "db error").
pub fn pg_error(e: tokio_postgres::Error) -> anyhow::Error {
    let msg = match e.as_db_error() {
        Some(db) => {
            let mut msg = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                msg.push_str(": ");
                msg.push_str(d);
            }
            format!("PostgreSQL: {msg}")
        }
        None => format!("PostgreSQL: {e}"),
    };
    // The original stays in the chain ([`crate::store::is_unavailable`], [`pg_code`]).
    anyhow::Error::new(e).context(msg)
}

/// The SQLSTATE of a PostgreSQL error in `e`'s chain, if any.
pub fn pg_code(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code().map(|c| c.code().to_string()))
}

enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres {
        client: &'c deadpool_postgres::ClientWrapper,
        rt: tokio::runtime::Handle,
    },
}

/// A connection of either engine, borrowed for one store call.
pub struct Db<'c> {
    conn: Conn<'c>,
    /// Open transactions (the outermost is BEGIN, inner ones are savepoints).
    depth: Cell<u32>,
}

impl<'c> Db<'c> {
    pub fn sqlite(conn: &'c rusqlite::Connection) -> Self {
        Self {
            conn: Conn::Sqlite(conn),
            depth: Cell::new(u32::from(!conn.is_autocommit())),
        }
    }

    pub fn postgres(
        client: &'c deadpool_postgres::ClientWrapper,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Self {
            conn: Conn::Postgres { client, rt },
            depth: Cell::new(0),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// The SQLite connection (engine-specific paths: pragmas, tests).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match self.conn {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL client and runtime (engine-specific paths: COPY, advisory locks).
    pub fn as_postgres(
        &self,
    ) -> Option<(&deadpool_postgres::ClientWrapper, &tokio::runtime::Handle)> {
        match &self.conn {
            Conn::Sqlite(_) => None,
            Conn::Postgres { client, rt } => Some((client, rt)),
        }
    }

    fn pg_params<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
        args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
    }

    /// Run one statement; returns the rows changed.
    pub fn execute(&self, sql: &str, args: &[Arg<'_>]) -> anyhow::Result<usize> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)
                .with_context(|| first_line(sql))?
                .execute(rusqlite::params_from_iter(args))?),
            Conn::Postgres { client, rt } => rt.block_on(async {
                let st = client
                    .prepare_cached(&to_postgres(sql))
                    .await
                    .map_err(pg_error)
                    .with_context(|| first_line(sql))?;
                let n = client
                    .execute(&st, &Self::pg_params(args))
                    .await
                    .map_err(pg_error)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }),
        }
    }

    /// Run statements separated by `;` with no arguments (DDL, migrations).
    pub fn batch(&self, sql: &str) -> anyhow::Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres { client, rt } => {
                rt.block_on(client.batch_execute(sql)).map_err(pg_error)
            }
        }
    }

    /// Call `f` for each row until it returns `false` (rows are streamed on both engines).
    pub fn each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut f: impl FnMut(&Row<'_>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql).with_context(|| first_line(sql))?;
                let mut rows = st.query(rusqlite::params_from_iter(args))?;
                while let Some(r) = rows.next()? {
                    if !f(&Row::Sqlite(r))? {
                        break;
                    }
                }
                Ok(())
            }
            Conn::Postgres { client, rt } => rt.block_on(async {
                use futures::StreamExt as _;
                let st = client
                    .prepare_cached(&to_postgres(sql))
                    .await
                    .map_err(pg_error)
                    .with_context(|| first_line(sql))?;
                let rows = client
                    .query_raw(&st, Self::pg_params(args))
                    .await
                    .map_err(pg_error)?;
                futures::pin_mut!(rows);
                while let Some(r) = rows.next().await {
                    if !f(&Row::Postgres(&r.map_err(pg_error)?))? {
                        break;
                    }
                }
                Ok(())
            }),
        }
    }

    /// Every row, mapped.
    pub fn query<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut f: impl FnMut(&Row<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        self.each(sql, args, |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.each(sql, args, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// The first row, mapped; an error if there is none.
    pub fn query_one<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.query_opt(sql, args, f)?
            .with_context(|| format!("no row from {}", first_line(sql)))
    }

    /// Begin a transaction (a savepoint when one is already open). Rolled back when the
    /// returned guard is dropped without [`Tx::commit`].
    pub fn transaction(&self) -> anyhow::Result<Tx<'_, 'c>> {
        let depth = self.depth.get();
        if depth == 0 {
            // SQLite: take the write lock now. A deferred transaction that reads and then
            // writes fails at once with SQLITE_BUSY_SNAPSHOT (busy_timeout cannot help)
            // when another connection (the denial writer's) committed in between.
            self.batch(match self.dialect() {
                Dialect::Sqlite => "BEGIN IMMEDIATE",
                Dialect::Postgres => "BEGIN",
            })?;
        } else {
            self.batch(&format!("SAVEPOINT sp{depth}"))?;
        }
        self.depth.set(depth + 1);
        Ok(Tx {
            db: self,
            depth,
            done: false,
        })
    }

    /// Is a transaction open (a call that ended inside one must be rolled back)?
    pub fn in_transaction(&self) -> bool {
        self.depth.get() > 0
    }
}

fn first_line(sql: &str) -> String {
    let s = sql.trim();
    let line = s.lines().next().unwrap_or(s);
    format!("preparing `{}`", line.chars().take(80).collect::<String>())
}

/// An open transaction or savepoint of a [`Db`]; derefs to it.
pub struct Tx<'t, 'c> {
    db: &'t Db<'c>,
    depth: u32,
    done: bool,
}

impl<'c> Deref for Tx<'_, 'c> {
    type Target = Db<'c>;
    fn deref(&self) -> &Db<'c> {
        self.db
    }
}

impl Tx<'_, '_> {
    pub fn commit(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.db.depth.set(self.depth);
        if self.depth == 0 {
            let r = self.db.batch("COMMIT");
            if r.is_err() {
                // SQLite keeps the transaction open after a failed COMMIT (busy, I/O):
                // end it, as a dropped rusqlite transaction would.
                let _ = self.db.batch("ROLLBACK");
            }
            r
        } else {
            self.db
                .batch(&format!("RELEASE SAVEPOINT sp{}", self.depth))
        }
    }
}

impl Drop for Tx<'_, '_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.db.depth.set(self.depth);
        let sql = if self.depth == 0 {
            "ROLLBACK".to_string()
        } else {
            format!(
                "ROLLBACK TO SAVEPOINT sp{0}; RELEASE SAVEPOINT sp{0}",
                self.depth
            )
        };
        if let Err(e) = self.db.batch(&sql) {
            tracing::error!(error = %format!("{e:#}"), "rolling back a store transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT ?1, ?2 WHERE a = '?' AND \"b?\" = ?10"),
            "SELECT $1, $2 WHERE a = '?' AND \"b?\" = $10"
        );
        assert_eq!(to_postgres("VALUES (?, ?), (?)"), "VALUES ($1, $2), ($3)");
    }
}
