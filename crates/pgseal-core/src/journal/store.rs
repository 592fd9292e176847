//! Where a journal's rows live: one trait, [`Store`], and two implementations —
//! [`super::sqlite::SqliteStore`] (a file under `PGSEAL_HOME`, the default) and
//! [`super::postgres::PostgresStore`] (a PostgreSQL database a team shares).
//!
//! The journal's SQL is written once, in [`super::Journal`], in the subset both databases
//! read the same way: placeholders `?1, ?2, …` (the PostgreSQL store turns them into
//! `$1, $2, …`), `INSERT … ON CONFLICT`, `RETURNING`, no SQLite-only functions. Values
//! cross the trait as [`Value`]s and come back as [`Row`]s, so what a migration means is
//! the same whichever store keeps it; only the schema's DDL, its version and its upgrades
//! are each store's own.

/// One parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// An integer (`INTEGER` in SQLite, `bigint` in PostgreSQL).
    Int(i64),
    /// A floating-point number (`REAL`, `double precision`).
    Real(f64),
    /// Text.
    Text(String),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a `Vec<Value>` of statement parameters (for [`Store::transaction`]).
macro_rules! values {
    ($($v:expr),* $(,)?) => { vec![$($crate::journal::store::Value::from($v)),*] };
}
pub(crate) use values;

/// Builds an array of statement parameters (for one statement).
macro_rules! params {
    ($($v:expr),* $(,)?) => { [$($crate::journal::store::Value::from($v)),*] };
}
pub(crate) use params;

/// A value read back as a Rust type.
pub trait FromValue: Sized {
    /// Converts, or says what was found instead.
    fn from_value(value: &Value) -> Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(v) => Ok(*v),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Real(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(v) => Ok(v.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row a query returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as a `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let value = self.0.get(i).ok_or_else(|| StoreError::Decode {
            column: i,
            detail: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(value).map_err(|detail| StoreError::Decode { column: i, detail })
    }
}

/// A statement and its parameters, for [`Store::transaction`].
pub type Statement<'a> = (&'a str, Vec<Value>);

/// Which database a store keeps the journal in: the few things the journal's SQL must say
/// differently come from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// An SQL expression for the database's clock in unix milliseconds. Leases expire by
    /// this clock, the one every runner's host shares, never by a host's own.
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Dialect::Postgres => "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        }
    }
}

/// A store's operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's (or the driver's) error.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL server could not be reached.
    #[error(transparent)]
    Connect(#[from] pgseal_pg::connect::ConnectError),
    /// A column did not hold what the journal stored there.
    #[error("column {column}: {detail}")]
    Decode {
        /// The column's position.
        column: usize,
        /// What was found.
        detail: String,
    },
    /// The journal was written by a newer pgseal, whose layout this one cannot read.
    #[error(
        "its layout is version {found}, newer than this pgseal's {known}: upgrade pgseal on this host"
    )]
    TooNew {
        /// The journal's version.
        found: i64,
        /// This pgseal's.
        known: i64,
    },
    /// A file or thread could not be set up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The thread that talks to the PostgreSQL server has stopped.
    #[error("the journal's connection has stopped")]
    Gone,
}

impl StoreError {
    /// True when a row with the same key exists already.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            StoreError::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

/// The database a journal's rows are kept in. Every call is one round trip and, once it
/// returns, durable (SQLite with `synchronous = FULL`; PostgreSQL on commit).
pub trait Store: Send {
    /// Which SQL the store reads (see [`Dialect`]).
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;

    /// Every row one statement returns.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;

    /// Runs `statements` in one transaction: all of them or none.
    fn transaction(&self, statements: &[Statement<'_>]) -> Result<(), StoreError>;

    /// A second connection to the same journal, for a thread of its own (a lease's
    /// heartbeat).
    fn reopen(&self) -> Result<Box<dyn Store>, StoreError>;
}

/// Turns the journal's `?N` placeholders into PostgreSQL's `$N` (the journal's SQL holds no
/// `?` in a literal).
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_and_nothing_else_changes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 OR d ? e"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 OR d ? e"
        );
    }

    #[test]
    fn rows_read_back_as_the_types_stored_and_name_a_wrong_one() {
        let row = Row(values![1_i64, "x", None::<i64>, 2.5]);
        assert_eq!(row.get::<i64>(0).unwrap(), 1);
        assert_eq!(row.get::<String>(1).unwrap(), "x");
        assert_eq!(row.get::<Option<i64>>(2).unwrap(), None);
        assert_eq!(row.get::<f64>(3).unwrap(), 2.5);
        let wrong = row.get::<i64>(1).unwrap_err().to_string();
        assert!(
            wrong.contains("column 1") && wrong.contains("integer"),
            "{wrong}"
        );
        assert!(row.get::<i64>(9).is_err());
    }
}
