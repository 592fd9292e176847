//! The journal in one SQLite file, `PGSEAL_HOME/journal.sqlite`: the default, for one
//! machine. Writes are synchronous (`synchronous = FULL` in WAL mode): once a call
//! returns, what it recorded survives a crash or a power cut.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};

use super::store::{Dialect, Row, Statement, Store, StoreError, Value};

/// The journal's layout version (`PRAGMA user_version`): 0 had one database a migration
/// and resources without a database; 1 has streams; 2 has leases and the runner of each
/// step run.
pub const VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS migration (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    phase      TEXT NOT NULL,
    error      TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS step_run (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    migration   TEXT NOT NULL REFERENCES migration(name),
    step        TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome     TEXT NOT NULL,
    outputs     TEXT,
    error       TEXT,
    runner      TEXT
);
CREATE INDEX IF NOT EXISTS step_run_by_migration ON step_run (migration, step);
CREATE TABLE IF NOT EXISTS resource (
    migration TEXT NOT NULL REFERENCES migration(name),
    kind      TEXT NOT NULL,
    database  TEXT NOT NULL DEFAULT '',
    name      TEXT NOT NULL,
    added_ms  INTEGER NOT NULL,
    PRIMARY KEY (migration, kind, database, name)
);
CREATE TABLE IF NOT EXISTS stream (
    migration TEXT NOT NULL REFERENCES migration(name),
    position  INTEGER NOT NULL,
    database  TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (migration, database)
);
CREATE TABLE IF NOT EXISTS sample (
    migration      TEXT NOT NULL REFERENCES migration(name),
    at_ms          INTEGER NOT NULL,
    database       TEXT NOT NULL,
    source_lsn     INTEGER NOT NULL,
    confirmed_lsn  INTEGER,
    lag_bytes      INTEGER,
    lag_seconds    REAL,
    retained_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS sample_by_migration ON sample (migration, at_ms);
CREATE TABLE IF NOT EXISTS fact (
    migration   TEXT NOT NULL REFERENCES migration(name),
    kind        TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
    migration  TEXT PRIMARY KEY,
    runner     TEXT NOT NULL,
    host       TEXT NOT NULL,
    space      TEXT NOT NULL DEFAULT '',
    pid        INTEGER NOT NULL,
    taken_ms   INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
";

/// A journal in an SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

/// Reads every column of an SQLite row.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let columns = r.as_ref().column_count();
    (0..columns)
        .map(|i| {
            Ok(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(v) | ValueRef::Blob(v) => {
                    Value::Text(String::from_utf8_lossy(v).into_owned())
                }
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()
        .map(Row)
}

/// Gives a file the owner's permissions only (SQLite gives its `-wal` and `-shm` files the
/// database file's mode), creating it when missing.
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

impl SqliteStore {
    /// Opens (creating, and upgrading an earlier layout) the journal at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        private(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            if side.exists() {
                private(&side)?;
            }
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        let store = SqliteStore {
            conn,
            path: path.to_path_buf(),
        };
        store.upgrade()?;
        store.conn.execute_batch(SCHEMA)?;
        store.conn.pragma_update(None, "user_version", VERSION)?;
        Ok(store)
    }

    /// Brings a journal written by an earlier pgseal to this layout, in one transaction.
    /// From version 0 (one database a migration): each migration's database becomes its
    /// one stream (under the name it had), its scope is narrowed to it, and its resources
    /// are placed in that database. From version 1: step runs gain their runner (the
    /// lease table is made by the schema itself).
    fn upgrade(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > VERSION {
            return Err(StoreError::TooNew {
                found: version,
                known: VERSION,
            });
        }
        let columns = |table: &str| -> Result<Vec<String>, rusqlite::Error> {
            self.conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
                .query_map([], |r| r.get(0))?
                .collect()
        };
        let resource_columns = columns("resource")?;
        let old_resources =
            !resource_columns.is_empty() && !resource_columns.iter().any(|c| c == "database");
        let step_columns = columns("step_run")?;
        let runnerless = !step_columns.is_empty() && !step_columns.iter().any(|c| c == "runner");
        if version >= VERSION || !(old_resources || runnerless) {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        if runnerless {
            tx.execute_batch("ALTER TABLE step_run ADD COLUMN runner TEXT")?;
        }
        if old_resources {
            self.streams_from_version_0()?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The version 0 → 1 part of [`SqliteStore::upgrade`], inside its transaction.
    fn streams_from_version_0(&self) -> Result<(), StoreError> {
        let per_database = "('slot', 'publication', 'replica_identity', 'fence', 'target_fence', \
             'reverse_subscription', 'reverse_slot', 'reverse_publication')";
        let specs: Vec<(String, String)> = self
            .conn
            .prepare("SELECT name, spec FROM migration")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        self.conn.execute_batch(&format!(
            "ALTER TABLE resource RENAME TO resource_v0; {SCHEMA} \
             INSERT INTO resource (migration, kind, database, name, added_ms) \
               SELECT r.migration, r.kind, \
                      CASE WHEN r.kind IN {per_database} \
                           THEN coalesce(json_extract(m.spec, '$.database'), '') ELSE '' END, \
                      r.name, r.added_ms \
               FROM resource_v0 r JOIN migration m ON m.name = r.migration; \
             DROP TABLE resource_v0;"
        ))?;
        for (name, spec) in &specs {
            let mut value: serde_json::Value =
                serde_json::from_str(spec).unwrap_or(serde_json::Value::Null);
            let Some(database) = value["database"].as_str().map(str::to_string) else {
                continue;
            };
            value["databases"] = serde_json::json!([database]);
            self.conn.execute(
                "UPDATE migration SET spec = ?2 WHERE name = ?1",
                params![name, value.to_string()],
            )?;
            self.conn.execute(
                "INSERT OR IGNORE INTO stream (migration, position, database, name) VALUES (?1, 0, ?2, ?3)",
                params![name, database, crate::stream::legacy_name(name)],
            )?;
        }
        Ok(())
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn transaction(&self, statements: &[Statement<'_>]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        for (sql, params) in statements {
            tx.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn reopen(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }
}
