//! The journal: every migration's spec, phase, step runs (with their outputs and errors)
//! and the resources it created, in one SQLite database under `PGSEAL_HOME`.
//!
//! Writes are synchronous (`synchronous = FULL` in WAL mode): once a call returns, what it
//! recorded survives a crash or a power cut. A step is recorded as started before its work
//! and as done, with its outputs, after it; a resource is recorded *before* it is created,
//! so `abort` can always find everything there might be to remove.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::steps::Step;

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The SQLite database could not be opened, read or written.
    #[error("journal {path}: {source}")]
    Sqlite {
        /// The journal's file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value could not be decoded (the journal was edited or is from a newer pgseal).
    #[error("journal {path}: migration {migration}: {detail}")]
    Corrupt {
        /// The journal's file.
        path: PathBuf,
        /// The migration concerned.
        migration: String,
        /// What could not be read.
        detail: String,
    },
    /// No migration of that name.
    #[error("no migration named '{0}' (see `pgseal migrate list`)")]
    NotFound(String),
    /// A migration of that name exists already.
    #[error(
        "a migration named '{0}' exists already: `pgseal migrate resume {0}` continues it, `pgseal migrate abort {0}` removes it"
    )]
    Exists(String),
    /// Another pgseal process is working on the migration.
    #[error(
        "migration '{0}' is being run by another pgseal process (its lock {1} is held); wait for it or stop it first"
    )]
    Busy(String, PathBuf),
    /// The lock file could not be opened.
    #[error("cannot lock migration '{migration}' ({path}): {source}")]
    Lock {
        /// The migration.
        migration: String,
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Steps are running (or a process running them was killed: `resume` continues).
    Running,
    /// A step failed; the error says why. `resume` retries it, `abort` removes everything.
    Failed,
    /// The target is applying the source's changes.
    Replicating,
    /// `cutover` is fencing, draining and switching (or was interrupted doing so:
    /// `resume` lifts the fence and returns to replicating).
    CuttingOver,
    /// Applications use the target; the source is fenced.
    CutOver,
    /// Switched back to the source by `rollback`; the target is fenced and abandoned.
    RolledBack,
    /// Cut over, and the replication objects on both sides and the snapshot are gone.
    CleanedUp,
    /// `abort` is removing what was created (or was interrupted doing so: run it again).
    Aborting,
    /// Everything the migration created is gone.
    Aborted,
}

impl Phase {
    /// The phase's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Failed => "failed",
            Phase::Replicating => "replicating",
            Phase::CuttingOver => "cutting_over",
            Phase::CutOver => "cut_over",
            Phase::CleanedUp => "cleaned_up",
            Phase::RolledBack => "rolled_back",
            Phase::Aborting => "aborting",
            Phase::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        [
            Phase::Running,
            Phase::Failed,
            Phase::Replicating,
            Phase::CuttingOver,
            Phase::CutOver,
            Phase::CleanedUp,
            Phase::RolledBack,
            Phase::Aborting,
            Phase::Aborted,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// What a migration moves, from where to where, with the user's choices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    /// The migration's name.
    pub name: String,
    /// The source: an instance on the platform, or a `postgres://` URL without password.
    pub source: String,
    /// The encrypted instance to create.
    pub target: String,
    /// A port for the target, where the platform lets one choose.
    pub target_port: Option<u16>,
    /// The KMS key the target is encrypted under (id, alias or ARN).
    pub key: String,
    /// The database pgseal connects to first on the source (the URL's, or `postgres`):
    /// server-wide facts are read there. It is not the scope: see `databases`.
    pub database: String,
    /// The databases the user narrowed the migration to (`--database`, repeatable);
    /// `None` for the whole instance: every database that accepts connections and is
    /// not a template.
    #[serde(default)]
    pub databases: Option<Vec<String>>,
    /// The tables published (`schema.table`) in the one database of a narrowed scope;
    /// `None` for all tables.
    pub tables: Option<Vec<String>>,
    /// The user allows a restart of the source to set `wal_level`.
    pub allow_restart: bool,
    /// The user opts in to `REPLICA IDENTITY FULL` for tables without a key.
    pub replica_identity_full: bool,
    /// Transactions older than this many seconds are reported by preflight.
    pub long_transaction_seconds: i64,
    /// WAL the slot may hold on the source before `status` aborts the migration.
    pub max_slot_retention: Option<u64>,
    /// How long creating a slot may wait for running transactions before `start` gives
    /// up and removes what it made.
    #[serde(default = "default_slot_wait")]
    pub slot_wait_seconds: u64,
    /// How the target gets its data.
    #[serde(default)]
    pub strategy: crate::steps::StrategyKind,
    /// The target's PostgreSQL major version (full load); `None` for the source's.
    #[serde(default)]
    pub engine_version: Option<u32>,
    /// Workers that copy the tables and build the post-data at once (full load, `--jobs`);
    /// `None` for one per core of the machine pgseal runs on.
    #[serde(default)]
    pub copy_jobs: Option<u32>,
    /// Tables larger than this many bytes are copied in ranges of about this size by
    /// several workers at once (full load, `--split-tables-larger-than`); `None` for the
    /// default, 0 to never split.
    #[serde(default)]
    pub split_tables_larger_than: Option<u64>,
    /// What `--copy-role-passwords` said, kept for journals of earlier versions: roles'
    /// password verifiers are copied whenever pgseal may read them.
    #[serde(default)]
    pub copy_role_passwords: bool,
    /// Platform settings that hold for the migration's whole life, as `key → value`
    /// (for AWS: `region`, `endpoint_url`, `connect_via.NAME`, `peer_via.NAME`); empty
    /// for the local platform. Never a secret.
    #[serde(default)]
    pub platform: std::collections::BTreeMap<String, String>,
}

/// The default `--slot-wait`: three minutes.
pub const DEFAULT_SLOT_WAIT_SECONDS: u64 = 180;

fn default_slot_wait() -> u64 {
    DEFAULT_SLOT_WAIT_SECONDS
}

impl MigrationSpec {
    /// A migration of the whole instance `source` onto `target` under `key`, with every
    /// choice at its default (the `migrate start` flags left out); `database` is where
    /// pgseal connects first.
    pub fn new(name: &str, source: &str, target: &str, key: &str, database: &str) -> Self {
        MigrationSpec {
            name: name.into(),
            source: source.into(),
            target: target.into(),
            target_port: None,
            key: key.into(),
            database: database.into(),
            databases: None,
            tables: None,
            allow_restart: false,
            replica_identity_full: false,
            long_transaction_seconds: 60,
            max_slot_retention: None,
            slot_wait_seconds: DEFAULT_SLOT_WAIT_SECONDS,
            strategy: Default::default(),
            engine_version: None,
            copy_jobs: None,
            split_tables_larger_than: None,
            copy_role_passwords: false,
            platform: Default::default(),
        }
    }

    /// The source's URL when it is a server outside the platform (`postgres://...`, no
    /// password: that comes from `PGPASSWORD` at each run and is never journaled).
    pub fn source_url(&self) -> Option<&str> {
        (self.source.starts_with("postgres://") || self.source.starts_with("postgresql://"))
            .then_some(self.source.as_str())
    }

    /// The encrypted snapshot's name.
    pub fn snapshot_name(&self) -> String {
        format!("pgseal-{}", self.name)
    }
}

/// A migration as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationRecord {
    /// What it does.
    pub spec: MigrationSpec,
    /// Where it stands.
    pub phase: Phase,
    /// The last error, while failed.
    pub error: Option<String>,
    /// When it was created (unix milliseconds).
    pub created_ms: i64,
    /// When it last changed (unix milliseconds).
    pub updated_ms: i64,
}

/// How a step run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running, or the process running it was killed.
    Running,
    /// Done; its outputs are recorded.
    Done,
    /// Failed; its error is recorded.
    Failed,
}

/// One run of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepRun {
    /// The step.
    pub step: Step,
    /// When it started (unix milliseconds).
    pub started_ms: i64,
    /// When it ended, if it did.
    pub finished_ms: Option<i64>,
    /// How it ended.
    pub outcome: Outcome,
    /// What it produced (step-specific JSON), when done.
    pub outputs: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
}

impl StepRun {
    /// How long it ran, when it ended.
    pub fn duration(&self) -> Option<Duration> {
        self.finished_ms
            .map(|f| Duration::from_millis((f - self.started_ms).max(0) as u64))
    }
}

/// Something a migration created (or was about to create) that `abort` must remove, or
/// a fact about the switch (`fence`, `switched`, `renamed`) that recovery reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// `slot`, `publication`, `replica_identity`, `snapshot`, `instance`, `fence`, ...
    pub kind: String,
    /// The database it lives in, for objects of one database (publications, slots,
    /// subscriptions, replica identities, fences); [`INSTANCE`] for the others.
    pub database: String,
    /// Its name (`schema.table` for a replica identity change).
    pub name: String,
}

impl Resource {
    /// `kind name`, with `(database)` for an object of one database.
    pub fn label(&self) -> String {
        if self.database.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {} ({})", self.kind, self.name, self.database)
        }
    }
}

/// The `database` of a resource that belongs to no single database (a snapshot, an
/// instance, a switch).
pub const INSTANCE: &str = "";

/// The resource kind of a database's DDL capture (event trigger and schema).
pub const DDL_CAPTURE: &str = "ddl_capture";

/// The resource kind of a blue/green deployment.
pub const DEPLOYMENT: &str = "blue_green";

/// The journal database.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn format_ms(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

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
    error       TEXT
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
";

/// The journal's layout version (`PRAGMA user_version`): 0 had one database a migration
/// and resources without a database; 1 has streams.
const VERSION: i64 = 1;

impl Journal {
    /// Opens (creating if needed) the journal at `PGSEAL_HOME/journal.sqlite`.
    pub fn open(home: &Path) -> Result<Journal, JournalError> {
        let path = home.join("journal.sqlite");
        let wrap = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(home).map_err(|e| {
            wrap(rusqlite::Error::InvalidPath(
                format!("{}: {e}", home.display()).into(),
            ))
        })?;
        // Owner-only: SQLite gives its -wal and -shm files the database file's mode.
        let private = |p: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
        };
        private(&path)
            .and_then(|()| {
                for suffix in ["-wal", "-shm"] {
                    let side = home.join(format!("journal.sqlite{suffix}"));
                    if side.exists() {
                        private(&side)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| {
                wrap(rusqlite::Error::InvalidPath(
                    format!("{}: {e}", path.display()).into(),
                ))
            })?;
        let conn = Connection::open(&path).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(wrap)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(wrap)?;
        let journal = Journal { conn, path };
        journal.upgrade()?;
        journal.conn.execute_batch(SCHEMA).map_err(journal.wrap())?;
        journal
            .conn
            .pragma_update(None, "user_version", VERSION)
            .map_err(journal.wrap())?;
        Ok(journal)
    }

    /// Brings a journal written by an earlier pgseal (version 0: one database a
    /// migration) to the stream layout, in one transaction: each migration's database
    /// becomes its one stream (under the name it had), its scope is narrowed to it, and
    /// its resources are placed in that database.
    fn upgrade(&self) -> Result<(), JournalError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.wrap())?;
        let columns = |table: &str| -> Result<Vec<String>, rusqlite::Error> {
            self.conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
                .query_map([], |r| r.get(0))?
                .collect()
        };
        let resource_columns = columns("resource").map_err(self.wrap())?;
        let old_resources =
            !resource_columns.is_empty() && !resource_columns.iter().any(|c| c == "database");
        if version >= VERSION || !old_resources {
            return Ok(());
        }
        let per_database = "('slot', 'publication', 'replica_identity', 'fence', 'target_fence', \
             'reverse_subscription', 'reverse_slot', 'reverse_publication')";
        let specs: Vec<(String, String)> =
            self.query_all("SELECT name, spec FROM migration", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        self.in_transaction(|| {
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
        })
    }

    /// The home directory the journal lives in.
    pub fn home(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs one statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, JournalError> {
        self.conn.execute(sql, params).map_err(self.wrap())
    }

    /// Every row `sql` returns for `params`, each read by `row`.
    fn query_all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, JournalError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.wrap())?;
        stmt.query_map(params, row)
            .map_err(self.wrap())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())
    }

    /// Runs `work` in one immediate transaction, committed when it succeeds and rolled
    /// back when it fails.
    fn in_transaction<T>(
        &self,
        work: impl FnOnce() -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.wrap())?;
        match work() {
            Ok(value) => {
                self.conn.execute_batch("COMMIT").map_err(self.wrap())?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(self.wrap()(e))
            }
        }
    }

    /// True when a sample taken at `at_ms` would be kept: the migration's last kept sample
    /// is older than [`crate::samples::spacing`] of its age (or there is none).
    pub fn sample_due(&self, name: &str, at_ms: i64) -> Result<bool, JournalError> {
        let (created_ms, last_ms): (i64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT created_ms, (SELECT max(at_ms) FROM sample WHERE migration = ?1) \
                 FROM migration WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.wrap())?
            .ok_or_else(|| JournalError::NotFound(name.to_string()))?;
        let age = Duration::from_millis((at_ms - created_ms).max(0) as u64);
        let spacing = crate::samples::spacing(age).as_millis() as i64;
        Ok(last_ms.is_none_or(|last| at_ms - last >= spacing))
    }

    /// Offers samples taken at one moment; they are kept only when
    /// [`Journal::sample_due`]. Returns whether they were kept.
    pub fn offer_samples(
        &self,
        name: &str,
        samples: &[crate::samples::Sample],
    ) -> Result<bool, JournalError> {
        let Some(at_ms) = samples.first().map(|s| s.at_ms) else {
            return Ok(false);
        };
        if !self.sample_due(name, at_ms)? {
            return Ok(false);
        }
        self.insert_samples(name, samples)?;
        Ok(true)
    }

    /// Takes and records a sample of every stream of migration `name` when the journal
    /// would keep one (the spacing is checked before the source is read). Sampling never
    /// stops the work it watches: a failure is logged and forgotten.
    pub async fn record_samples(
        &self,
        name: &str,
        source: &tokio_postgres::Client,
        streams: &[crate::stream::Stream],
    ) {
        let now = now_ms();
        if matches!(self.sample_due(name, now), Ok(false)) {
            return;
        }
        match crate::samples::read(source, streams, now).await {
            Ok(samples) => self.keep_samples(name, now, &samples),
            Err(error) => {
                tracing::warn!(migration = %name, %error, "a replication sample was not recorded")
            }
        }
    }

    /// Keeps `samples`, read at `at_ms`, when one is due (see [`Journal::sample_due`]). A
    /// failure is logged, not returned: a lost sample costs one point of a plot.
    pub fn keep_samples(&self, name: &str, at_ms: i64, samples: &[crate::samples::Sample]) {
        let result = self.sample_due(name, at_ms).and_then(|due| {
            if due {
                self.insert_samples(name, samples)
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            tracing::warn!(migration = %name, %error, "a replication sample was not recorded");
        }
    }

    /// Records samples in one transaction, whatever the spacing (the caller checked
    /// [`Journal::sample_due`], or imports samples on purpose, as `bench/report` does).
    pub fn insert_samples(
        &self,
        name: &str,
        samples: &[crate::samples::Sample],
    ) -> Result<(), JournalError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO sample (migration, at_ms, database, source_lsn, confirmed_lsn, \
                     lag_bytes, lag_seconds, retained_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(self.wrap())?;
            for s in samples {
                insert
                    .execute(params![
                        name,
                        s.at_ms,
                        s.database,
                        s.source_lsn as i64,
                        s.confirmed_lsn.map(|v| v as i64),
                        s.lag_bytes.map(|v| v as i64),
                        s.lag_seconds,
                        s.retained_bytes
                    ])
                    .map_err(self.wrap())?;
            }
        }
        tx.commit().map_err(self.wrap())
    }

    /// Every kept sample of a migration, oldest first.
    pub fn samples(&self, name: &str) -> Result<Vec<crate::samples::Sample>, JournalError> {
        self.samples_where(name, "")
    }

    /// The latest sample of each of a migration's databases (those taken at its last
    /// sampling), without reading the rest of its history.
    pub fn latest_samples(&self, name: &str) -> Result<Vec<crate::samples::Sample>, JournalError> {
        self.samples_where(
            name,
            "AND at_ms = (SELECT max(at_ms) FROM sample WHERE migration = ?1)",
        )
    }

    /// A migration's samples that also meet `and` (an SQL condition on the sample table,
    /// written by this file, never from input), oldest first.
    fn samples_where(
        &self,
        name: &str,
        and: &str,
    ) -> Result<Vec<crate::samples::Sample>, JournalError> {
        self.query_all(
            &format!(
                "SELECT at_ms, database, source_lsn, confirmed_lsn, lag_bytes, lag_seconds, \
                 retained_bytes FROM sample WHERE migration = ?1 {and} ORDER BY at_ms, database"
            ),
            params![name],
            |r| {
                Ok(crate::samples::Sample {
                    at_ms: r.get(0)?,
                    database: r.get(1)?,
                    source_lsn: r.get::<_, i64>(2)? as u64,
                    confirmed_lsn: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    lag_bytes: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    lag_seconds: r.get(5)?,
                    retained_bytes: r.get(6)?,
                })
            },
        )
    }

    /// Records a fact about a migration that is not a step's output (for example what a
    /// scan of the target's storage found), for the report.
    pub fn add_fact(
        &self,
        name: &str,
        kind: &str,
        body: &serde_json::Value,
    ) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO fact (migration, kind, recorded_ms, body) VALUES (?1, ?2, ?3, ?4)",
            params![name, kind, now_ms(), body.to_string()],
        )?;
        Ok(())
    }

    /// Every fact recorded about a migration, oldest first, as `(kind, recorded_ms, body)`.
    pub fn facts(&self, name: &str) -> Result<Vec<(String, i64, serde_json::Value)>, JournalError> {
        let rows = self.query_all(
            "SELECT kind, recorded_ms, body FROM fact WHERE migration = ?1 ORDER BY rowid",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(kind, at, body)| {
                let body = serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
                    path: self.path.clone(),
                    migration: name.to_string(),
                    detail: format!("fact {kind}: {e}"),
                })?;
                Ok((kind, at, body))
            })
            .collect()
    }

    /// Records a new migration, phase `running`.
    pub fn create(&self, spec: &MigrationSpec) -> Result<(), JournalError> {
        let text = serde_json::to_string(spec).expect("a spec serialises");
        let now = now_ms();
        match self.conn.execute(
            "INSERT INTO migration (name, spec, phase, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![spec.name, text, Phase::Running.as_str(), now],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(JournalError::Exists(spec.name.clone()))
            }
            Err(e) => Err(self.wrap()(e)),
        }
    }

    /// Forgets a migration that created nothing (a `start` that preflight stopped), so the
    /// same name can be started again with other options. Refused while resources remain.
    pub fn forget(&self, name: &str) -> Result<(), JournalError> {
        if !self.resources(name)?.is_empty() {
            return Err(JournalError::Corrupt {
                path: self.path.clone(),
                migration: name.to_string(),
                detail: "cannot forget a migration that created resources; abort it".into(),
            });
        }
        self.in_transaction(|| {
            self.conn
                .execute("DELETE FROM step_run WHERE migration = ?1", params![name])
                .and_then(|_| {
                    self.conn
                        .execute("DELETE FROM sample WHERE migration = ?1", params![name])?;
                    self.conn
                        .execute("DELETE FROM fact WHERE migration = ?1", params![name])
                })
                .and_then(|_| {
                    self.conn
                        .execute("DELETE FROM stream WHERE migration = ?1", params![name])
                })
                .and_then(|_| {
                    self.conn
                        .execute("DELETE FROM migration WHERE name = ?1", params![name])
                })
        })?;
        Ok(())
    }

    /// Reads one migration.
    pub fn migration(&self, name: &str) -> Result<MigrationRecord, JournalError> {
        let row = self
            .conn
            .query_row(
                "SELECT spec, phase, error, created_ms, updated_ms FROM migration WHERE name = ?1",
                params![name],
                |r| migration_row(r, 0),
            )
            .optional()
            .map_err(self.wrap())?
            .ok_or_else(|| JournalError::NotFound(name.to_string()))?;
        self.decode(name, row)
    }

    fn decode(
        &self,
        name: &str,
        (spec, phase, error, created_ms, updated_ms): MigrationRow,
    ) -> Result<MigrationRecord, JournalError> {
        let corrupt = |detail: String| JournalError::Corrupt {
            path: self.path.clone(),
            migration: name.to_string(),
            detail,
        };
        Ok(MigrationRecord {
            spec: serde_json::from_str(&spec).map_err(|e| corrupt(format!("spec: {e}")))?,
            phase: Phase::parse(&phase).ok_or_else(|| corrupt(format!("phase '{phase}'")))?,
            error,
            created_ms,
            updated_ms,
        })
    }

    /// Every migration, oldest first.
    pub fn list(&self) -> Result<Vec<MigrationRecord>, JournalError> {
        let rows = self.query_all(
            "SELECT name, spec, phase, error, created_ms, updated_ms FROM migration ORDER BY created_ms, name",
            [],
            |r| Ok((r.get::<_, String>(0)?, migration_row(r, 1)?)),
        )?;
        rows.into_iter()
            .map(|(name, row)| self.decode(&name, row))
            .collect()
    }

    /// Sets a migration's phase and error.
    pub fn set_phase(
        &self,
        name: &str,
        phase: Phase,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.execute(
            "UPDATE migration SET phase = ?2, error = ?3, updated_ms = ?4 WHERE name = ?1",
            params![name, phase.as_str(), error, now_ms()],
        )?;
        Ok(())
    }

    /// Records that a step starts; returns the run's id.
    pub fn step_started(&self, name: &str, step: Step) -> Result<i64, JournalError> {
        self.execute(
            "INSERT INTO step_run (migration, step, started_ms, outcome) VALUES (?1, ?2, ?3, 'running')",
            params![name, step.as_str(), now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records that a step run finished, with its outputs.
    pub fn step_done(&self, run: i64, outputs: &serde_json::Value) -> Result<(), JournalError> {
        self.execute(
            "UPDATE step_run SET outcome = 'done', finished_ms = ?2, outputs = ?3 WHERE id = ?1",
            params![run, now_ms(), outputs.to_string()],
        )?;
        Ok(())
    }

    /// Records that a step run failed.
    pub fn step_failed(&self, run: i64, error: &str) -> Result<(), JournalError> {
        self.execute(
            "UPDATE step_run SET outcome = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1",
            params![run, now_ms(), error],
        )?;
        Ok(())
    }

    /// Every step run of a migration, in order.
    pub fn step_runs(&self, name: &str) -> Result<Vec<StepRun>, JournalError> {
        let rows = self.query_all(
            "SELECT step, started_ms, finished_ms, outcome, outputs, error FROM step_run WHERE migration = ?1 ORDER BY id",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            },
        )?;
        let corrupt = |detail: String| JournalError::Corrupt {
            path: self.path.clone(),
            migration: name.to_string(),
            detail,
        };
        rows.into_iter()
            .map(|(step, started_ms, finished_ms, outcome, outputs, error)| {
                Ok(StepRun {
                    step: Step::parse(&step).ok_or_else(|| corrupt(format!("step '{step}'")))?,
                    started_ms,
                    finished_ms,
                    outcome: match outcome.as_str() {
                        "done" => Outcome::Done,
                        "failed" => Outcome::Failed,
                        _ => Outcome::Running,
                    },
                    outputs: outputs
                        .map(|o| serde_json::from_str(&o))
                        .transpose()
                        .map_err(|e| corrupt(format!("outputs of {step}: {e}")))?,
                    error,
                })
            })
            .collect()
    }

    /// The outputs of a step's successful run, if it has one.
    pub fn outputs(
        &self,
        name: &str,
        step: Step,
    ) -> Result<Option<serde_json::Value>, JournalError> {
        Ok(self
            .step_runs(name)?
            .into_iter()
            .rev()
            .find(|r| r.step == step && r.outcome == Outcome::Done)
            .and_then(|r| r.outputs))
    }

    /// Records a resource of database `database` ([`INSTANCE`] for none) before it is
    /// created.
    pub fn add_resource(
        &self,
        name: &str,
        kind: &str,
        database: &str,
        resource: &str,
    ) -> Result<(), JournalError> {
        self.execute(
            "INSERT OR IGNORE INTO resource (migration, kind, database, name, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind, database, resource, now_ms()],
        )?;
        Ok(())
    }

    /// Forgets a resource once it is removed.
    pub fn remove_resource(
        &self,
        name: &str,
        kind: &str,
        database: &str,
        resource: &str,
    ) -> Result<(), JournalError> {
        self.execute(
            "DELETE FROM resource WHERE migration = ?1 AND kind = ?2 AND database = ?3 AND name = ?4",
            params![name, kind, database, resource],
        )?;
        Ok(())
    }

    /// True when a resource of `kind` is on record (in any database).
    pub fn has_resource(&self, name: &str, kind: &str) -> Result<bool, JournalError> {
        Ok(self.resources(name)?.iter().any(|r| r.kind == kind))
    }

    /// Records a migration's streams, once: a later call keeps what is recorded (the
    /// scope is fixed when the source is first prepared). Returns the recorded streams.
    pub fn record_streams(
        &self,
        name: &str,
        streams: &[crate::stream::Stream],
    ) -> Result<Vec<crate::stream::Stream>, JournalError> {
        let existing = self.streams(name)?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        self.in_transaction(|| {
            streams.iter().enumerate().try_for_each(|(i, s)| {
                self.conn
                    .execute(
                        "INSERT INTO stream (migration, position, database, name) VALUES (?1, ?2, ?3, ?4)",
                        params![name, i as i64, s.database, s.name],
                    )
                    .map(|_| ())
            })
        })?;
        self.streams(name)
    }

    /// A migration's streams, in the order they were recorded (empty before the source
    /// was prepared).
    pub fn streams(&self, name: &str) -> Result<Vec<crate::stream::Stream>, JournalError> {
        self.query_all(
            "SELECT database, name FROM stream WHERE migration = ?1 ORDER BY position",
            params![name],
            |r| {
                Ok(crate::stream::Stream {
                    database: r.get(0)?,
                    name: r.get(1)?,
                })
            },
        )
    }

    /// The resources a migration recorded, newest first.
    pub fn resources(&self, name: &str) -> Result<Vec<Resource>, JournalError> {
        self.query_all(
            "SELECT kind, database, name FROM resource WHERE migration = ?1 ORDER BY added_ms DESC, rowid DESC",
            params![name],
            |r| {
                Ok(Resource {
                    kind: r.get(0)?,
                    database: r.get(1)?,
                    name: r.get(2)?,
                })
            },
        )
    }
}

/// A migration's row as stored: spec, phase, error, created_ms and updated_ms.
type MigrationRow = (String, String, Option<String>, i64, i64);

/// Reads a [`MigrationRow`] from the columns of `r` that start at `first`.
fn migration_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<MigrationRow> {
    Ok((
        r.get(first)?,
        r.get(first + 1)?,
        r.get(first + 2)?,
        r.get(first + 3)?,
        r.get(first + 4)?,
    ))
}

/// An exclusive lock on one migration, held while a process works on it (released when
/// dropped, or by the kernel when the process dies). It holds the migration's follower
/// (`crate::follow`) off for as long: taking it waits for a pass the follower is in the
/// middle of, which ends within seconds.
#[derive(Debug)]
pub struct MigrationLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    _gate: nix::fcntl::Flock<std::fs::File>,
}

/// How long a command waits for the follower to finish its pass.
const PASS_WAIT: Duration = Duration::from_secs(120);

/// `PGSEAL_HOME/migrations/NAME.KIND`, a migration's lock file of that kind.
fn lock_path(home: &Path, name: &str, kind: &str) -> PathBuf {
    home.join("migrations").join(format!("{name}.{kind}"))
}

/// Opens (creating) [`lock_path`] for locking.
fn lock_file(home: &Path, name: &str, kind: &str) -> Result<std::fs::File, JournalError> {
    let path = lock_path(home, name, kind);
    let lock_error = |source| JournalError::Lock {
        migration: name.to_string(),
        path: path.clone(),
        source,
    };
    pgseal_crashsafe::create_dir_all_durable(&home.join("migrations"), 0o700)
        .map_err(lock_error)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_error)
}

/// Takes an exclusive lock on [`lock_path`] without waiting; `None` when another process
/// holds it.
pub(crate) fn try_lock(
    home: &Path,
    name: &str,
    kind: &str,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, JournalError> {
    let file = lock_file(home, name, kind)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(JournalError::Lock {
            migration: name.to_string(),
            path: lock_path(home, name, kind),
            source: std::io::Error::from(errno),
        }),
    }
}

/// [`try_lock`], trying again for up to `limit`; `None` when another process held it all
/// that time.
pub(crate) fn wait_lock(
    home: &Path,
    name: &str,
    kind: &str,
    limit: Duration,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, JournalError> {
    let waited = std::time::Instant::now();
    loop {
        if let Some(lock) = try_lock(home, name, kind)? {
            return Ok(Some(lock));
        }
        if waited.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl MigrationLock {
    /// Takes the lock on `PGSEAL_HOME/migrations/NAME.lock`, failing at once when another
    /// process holds it, then holds the follower off (`NAME.pass`), waiting for its pass
    /// to end.
    pub fn acquire(home: &Path, name: &str) -> Result<MigrationLock, JournalError> {
        let lock = try_lock(home, name, "lock")?
            .ok_or_else(|| JournalError::Busy(name.to_string(), lock_path(home, name, "lock")))?;
        let gate = wait_lock(home, name, "pass", PASS_WAIT)?
            .ok_or_else(|| JournalError::Busy(name.to_string(), lock_path(home, name, "pass")))?;
        Ok(MigrationLock {
            _lock: lock,
            _gate: gate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> MigrationSpec {
        MigrationSpec::new(name, "src", "src-enc", "pgseal/default", "postgres")
    }

    #[test]
    fn streams_are_recorded_once_in_order() {
        use crate::stream::Stream;
        let home = tempfile::tempdir().unwrap();
        let j = Journal::open(home.path()).unwrap();
        j.create(&spec("m1")).unwrap();
        assert!(j.streams("m1").unwrap().is_empty());
        let made = |db: &str| Stream {
            database: db.into(),
            name: format!("pgseal_m1_{db}"),
        };
        let first = j
            .record_streams("m1", &[made("postgres"), made("billing")])
            .unwrap();
        assert_eq!(first, [made("postgres"), made("billing")]);
        // A second call (a resumed prepare_source) keeps the scope it first recorded.
        let again = j.record_streams("m1", &[made("other")]).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn a_version_0_journal_is_upgraded_to_one_stream_with_its_resources_in_place() {
        let home = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(home.path().join("journal.sqlite")).unwrap();
            let mut old = serde_json::to_value(spec("m1")).unwrap();
            let fields = old.as_object_mut().unwrap();
            fields.remove("databases");
            fields.remove("slot_wait_seconds");
            fields.insert("database".into(), "app".into());
            conn.execute_batch(
                "CREATE TABLE migration (name TEXT PRIMARY KEY, spec TEXT NOT NULL, phase TEXT NOT NULL, \
                   error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL); \
                 CREATE TABLE resource (migration TEXT NOT NULL REFERENCES migration(name), kind TEXT NOT NULL, \
                   name TEXT NOT NULL, added_ms INTEGER NOT NULL, PRIMARY KEY (migration, kind, name));",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO migration VALUES ('m1', ?1, 'replicating', NULL, 1, 1)",
                [old.to_string()],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO resource VALUES ('m1', 'slot', 'pgseal_m1', 2); \
                 INSERT INTO resource VALUES ('m1', 'snapshot', 'pgseal-m1', 3);",
            )
            .unwrap();
        }
        let j = Journal::open(home.path()).unwrap();
        let m = j.migration("m1").unwrap();
        assert_eq!(m.spec.databases, Some(vec!["app".to_string()]));
        assert_eq!(m.spec.slot_wait_seconds, DEFAULT_SLOT_WAIT_SECONDS);
        assert_eq!(
            j.streams("m1").unwrap(),
            [crate::stream::Stream {
                database: "app".into(),
                name: "pgseal_m1".into()
            }]
        );
        let resources = j.resources("m1").unwrap();
        assert!(resources.contains(&Resource {
            kind: "slot".into(),
            database: "app".into(),
            name: "pgseal_m1".into()
        }));
        assert!(resources.contains(&Resource {
            kind: "snapshot".into(),
            database: INSTANCE.into(),
            name: "pgseal-m1".into()
        }));
        // Opening it again changes nothing.
        drop(j);
        let j = Journal::open(home.path()).unwrap();
        assert_eq!(j.resources("m1").unwrap().len(), 2);
    }

    #[test]
    fn steps_outputs_and_resources_survive_reopening() {
        let home = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(home.path()).unwrap();
            j.create(&spec("m1")).unwrap();
            assert!(matches!(
                j.create(&spec("m1")).unwrap_err(),
                JournalError::Exists(_)
            ));
            let run = j.step_started("m1", Step::Preflight).unwrap();
            j.step_done(run, &serde_json::json!({"ready": true}))
                .unwrap();
            let run = j.step_started("m1", Step::PrepareSource).unwrap();
            j.step_failed(run, "boom").unwrap();
            j.step_started("m1", Step::PrepareSource).unwrap();
            j.add_resource("m1", "slot", "app", "pgseal_m1").unwrap();
            j.add_resource("m1", "publication", "app", "pgseal_m1")
                .unwrap();
            j.add_resource("m1", "slot", "app", "pgseal_m1").unwrap();
            j.set_phase("m1", Phase::Failed, Some("boom")).unwrap();
        }
        let j = Journal::open(home.path()).unwrap();
        let m = j.migration("m1").unwrap();
        assert_eq!((m.phase, m.error.as_deref()), (Phase::Failed, Some("boom")));
        assert_eq!(m.spec, spec("m1"));
        let runs = j.step_runs("m1").unwrap();
        let outcomes: Vec<_> = runs.iter().map(|r| (r.step, r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                (Step::Preflight, Outcome::Done),
                (Step::PrepareSource, Outcome::Failed),
                (Step::PrepareSource, Outcome::Running)
            ]
        );
        assert_eq!(
            j.outputs("m1", Step::Preflight).unwrap().unwrap()["ready"],
            true
        );
        assert_eq!(j.outputs("m1", Step::PrepareSource).unwrap(), None);
        let kinds: Vec<_> = j
            .resources("m1")
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds.len(), 2);
        j.remove_resource("m1", "slot", "app", "pgseal_m1").unwrap();
        assert_eq!(j.resources("m1").unwrap().len(), 1);
        assert!(matches!(
            j.migration("nope").unwrap_err(),
            JournalError::NotFound(_)
        ));
    }

    #[test]
    fn a_second_process_cannot_take_a_held_lock() {
        let home = tempfile::tempdir().unwrap();
        let held = MigrationLock::acquire(home.path(), "m1").unwrap();
        // flock locks belong to the open file description: a second open is a second owner.
        assert!(matches!(
            MigrationLock::acquire(home.path(), "m1").unwrap_err(),
            JournalError::Busy(..)
        ));
        drop(held);
        MigrationLock::acquire(home.path(), "m1").unwrap();
    }
}
