//! The journal: every migration's spec, phase, step runs (with their outputs, errors and
//! runners) and the resources it created.
//!
//! It lives in one of two stores (see [`store`]): an SQLite file under `PGSEAL_HOME`, the
//! default, or a PostgreSQL database a team shares (`--journal postgres://…`). The engine
//! sees one [`Journal`] either way. A call that records returns once what it recorded is
//! durable; a step is recorded as started before its work and as done, with its outputs,
//! after it; a resource is recorded *before* it is created, so `abort` can always find
//! everything there might be to remove.
//!
//! One process at a time drives a migration: [`Journal::hold`] takes a `flock` in the home
//! with SQLite, a lease (see [`lease`]) with PostgreSQL, where runners on several hosts
//! share the journal.

pub mod copy;
mod error;
pub mod lease;
mod lock;
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::steps::Step;
pub use error::JournalError;
pub use lease::{Lease, LeaseTerms, Runner};
pub use lock::MigrationLock;
pub(crate) use lock::{try_lock, wait_lock};
use store::{Row, Store, StoreError, params, values};

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
    /// The runner that ran it (`host:pid`, or a `fleet run` runner's name); `None` in
    /// journals older than leases.
    pub runner: Option<String>,
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

/// Where a journal is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file (by default `PGSEAL_HOME/journal.sqlite`).
    File(PathBuf),
    /// A PostgreSQL database, by URL (which may hold a password: never shown).
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Location {
    /// The file, or the server as `postgres://user@host:port/db` without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => match pgseal_pg::connect::config_from_url(url) {
                Ok((config, _)) => write!(
                    f,
                    "postgres://{}",
                    pgseal_pg::connect::describe_target(&config)
                ),
                Err(_) => f.write_str("postgres://(unreadable URL)"),
            },
        }
    }
}

impl Location {
    /// The journal `--journal` (or `PGSEAL_JOURNAL`) names, or the home's SQLite file
    /// without one.
    pub fn parse(given: Option<&str>, home: &Path) -> Result<Location, JournalError> {
        match given.map(str::trim) {
            None | Some("") => Ok(Location::in_home(home)),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                pgseal_pg::connect::config_from_url(url).map_err(|e| {
                    JournalError::BadLocation(format!("--journal: not a PostgreSQL URL: {e}"))
                })?;
                Ok(Location::Postgres(url.to_string()))
            }
            Some(other) if other.contains("://") => Err(JournalError::BadLocation(format!(
                "--journal {}://…: a journal is a postgres:// (or postgresql://) URL, or a path \
                 to an SQLite file",
                other.split("://").next().unwrap_or_default()
            ))),
            Some(path) => Ok(Location::File(PathBuf::from(path))),
        }
    }

    /// The home's own SQLite journal, `PGSEAL_HOME/journal.sqlite`: the default.
    pub fn in_home(home: &Path) -> Location {
        Location::File(home.join("journal.sqlite"))
    }

    /// True for a journal several hosts can share.
    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// How a command opens the journal: where it is, which home its migrations use, and who
/// this process is as a runner. Cheap to clone, for code that opens the journal again (a
/// metrics scrape, a switch).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// `PGSEAL_HOME`.
    pub home: PathBuf,
    /// Where the journal is.
    pub location: Location,
    /// This process as a runner.
    pub runner: Runner,
    /// The terms of the leases it takes.
    pub terms: LeaseTerms,
}

impl JournalConfig {
    /// Opens the journal.
    pub fn open(&self) -> Result<Journal, JournalError> {
        Ok(Journal::open_at(&self.home, &self.location)?
            .with_runner(self.runner.clone(), self.terms.clone()))
    }
}

/// The journal.
pub struct Journal {
    store: Box<dyn Store>,
    home: PathBuf,
    location: String,
    runner: Runner,
    terms: LeaseTerms,
    /// The leases this process holds through [`Journal::hold`], checked before each write.
    held: Mutex<Vec<Weak<lease::Validity>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("location", &self.location)
            .field("runner", &self.runner.id)
            .finish()
    }
}

/// A lease as recorded (see [`Journal::leases`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The migration leased.
    pub migration: String,
    /// The runner holding it.
    pub runner: String,
    /// Its host.
    pub host: String,
    /// Its process.
    pub pid: i64,
    /// When it was taken (unix milliseconds, the journal database's clock).
    pub taken_ms: i64,
    /// When it expires unless renewed.
    pub expires_ms: i64,
    /// Milliseconds left; negative once expired (another runner may take it).
    pub left_ms: i64,
}

/// What [`Journal::hold`] holds: a lock in the home, or a lease in the shared journal.
#[derive(Debug)]
pub enum Hold {
    /// The `flock` of an SQLite journal's home.
    Lock(MigrationLock),
    /// A lease in a PostgreSQL journal.
    Lease(Lease),
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

impl Journal {
    /// Opens (creating if needed) the SQLite journal at `PGSEAL_HOME/journal.sqlite`.
    pub fn open(home: &Path) -> Result<Journal, JournalError> {
        Journal::open_at(home, &Location::in_home(home))
    }

    /// Opens (creating or upgrading if needed) the journal at `location`; `home` is the
    /// `PGSEAL_HOME` whose platform and locks the journal's migrations use. This process is
    /// the runner `host:pid` with default lease terms until [`Journal::with_runner`].
    pub fn open_at(home: &Path, location: &Location) -> Result<Journal, JournalError> {
        let label = location.to_string();
        let store: Box<dyn Store> = match location {
            Location::File(path) => Box::new(
                sqlite::SqliteStore::open(path).map_err(|e| JournalError::store(&label, e))?,
            ),
            Location::Postgres(url) => {
                let (config, _) = pgseal_pg::connect::config_from_url(url)
                    .map_err(|e| JournalError::store(&label, e.into()))?;
                Box::new(
                    postgres::PostgresStore::open(&config)
                        .map_err(|e| JournalError::store(&label, e))?,
                )
            }
        };
        Ok(Journal {
            store,
            home: home.to_path_buf(),
            location: label,
            runner: Runner::here(None),
            terms: LeaseTerms::default(),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Names the runner this process is (recorded with its leases and step runs) and the
    /// terms of the leases it takes.
    pub fn with_runner(mut self, runner: Runner, terms: LeaseTerms) -> Journal {
        self.runner = runner;
        self.terms = terms;
        self
    }

    /// Takes migration `name` for this process until the returned hold is dropped:
    /// the home's lock with an SQLite journal (failing with [`JournalError::Busy`]), a
    /// lease with a shared one (failing with [`JournalError::Leased`]). While a lease is
    /// held, every write to the journal first checks it is still this process's.
    pub fn hold(&self, name: &str) -> Result<Hold, JournalError> {
        if self.store.dialect() == store::Dialect::Sqlite {
            return MigrationLock::acquire(&self.home, name).map(Hold::Lock);
        }
        // A follower holds the lease for one pass, seconds long: a command waits for it
        // to end, as it waits for the pass gate with SQLite. A follower never waits.
        let follower = self.runner.is_follower();
        let waited = std::time::Instant::now();
        let lease = loop {
            match Lease::take(
                &*self.store,
                &self.location,
                name,
                &self.runner,
                &self.terms,
            ) {
                Err(JournalError::Leased { runner, .. })
                    if !follower
                        && runner.starts_with(lease::FOLLOWER)
                        && waited.elapsed() < lock::PASS_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                taken => break taken?,
            }
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|v| v.strong_count() > 0);
        held.push(std::sync::Arc::downgrade(&lease.validity));
        Ok(Hold::Lease(lease))
    }

    /// With a shared journal, [`Journal::hold`]; with SQLite, nothing. For what runs beside
    /// the other commands on one machine but must not run twice at once across runners:
    /// `validate` and `verify`, and a follower's pass (which holds the home's pass gate
    /// too).
    pub fn hold_if_shared(&self, name: &str) -> Result<Option<Hold>, JournalError> {
        match self.store.dialect() {
            store::Dialect::Sqlite => Ok(None),
            store::Dialect::Postgres => self.hold(name).map(Some),
        }
    }

    /// Every lease on record (a shared journal's; none with SQLite), by migration, with
    /// the seconds each has left by the journal database's clock (negative: expired).
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, JournalError> {
        let now = self.store.dialect().now_ms();
        self.query_all(
            &format!(
                "SELECT migration, runner, host, pid, taken_ms, expires_ms, expires_ms - {now} \
                 FROM lease ORDER BY migration"
            ),
            &[],
            |r| {
                Ok(LeaseRecord {
                    migration: r.get(0)?,
                    runner: r.get(1)?,
                    host: r.get(2)?,
                    pid: r.get(3)?,
                    taken_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    left_ms: r.get(6)?,
                })
            },
        )
    }

    /// Fails when a lease this process holds may have ended (see [`lease`]).
    fn check_leases(&self) -> Result<(), JournalError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for validity in held.iter().filter_map(Weak::upgrade) {
            validity.check(&self.terms)?;
        }
        Ok(())
    }

    /// The home directory whose platform and locks the journal's migrations use.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where the journal is kept: its file, or its server (never with a password).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn wrap(&self) -> impl Fn(StoreError) -> JournalError + '_ {
        |source| JournalError::store(&self.location, source)
    }

    /// Runs one statement that writes; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[store::Value]) -> Result<u64, JournalError> {
        self.check_leases()?;
        self.store.execute(sql, params).map_err(self.wrap())
    }

    /// Runs statements that write in one transaction.
    fn transaction(&self, statements: &[store::Statement<'_>]) -> Result<(), JournalError> {
        self.check_leases()?;
        self.store.transaction(statements).map_err(self.wrap())
    }

    /// Every row `sql` returns for `params`, each read by `row`.
    fn query_all<T>(
        &self,
        sql: &str,
        params: &[store::Value],
        row: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, JournalError> {
        self.store
            .query(sql, params)
            .and_then(|rows| rows.iter().map(row).collect())
            .map_err(self.wrap())
    }

    /// The first row `sql` returns, read by `row`.
    fn query_one<T>(
        &self,
        sql: &str,
        params: &[store::Value],
        row: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, JournalError> {
        Ok(self.query_all(sql, params, row)?.into_iter().next())
    }

    fn corrupt(&self, name: &str, detail: String) -> JournalError {
        JournalError::Corrupt {
            location: self.location.clone(),
            migration: name.to_string(),
            detail,
        }
    }

    /// True when a sample taken at `at_ms` would be kept: the migration's last kept sample
    /// is older than [`crate::samples::spacing`] of its age (or there is none).
    pub fn sample_due(&self, name: &str, at_ms: i64) -> Result<bool, JournalError> {
        let (created_ms, last_ms): (i64, Option<i64>) = self
            .query_one(
                "SELECT created_ms, (SELECT max(at_ms) FROM sample WHERE migration = ?1) \
                 FROM migration WHERE name = ?1",
                &params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
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
        let insert = "INSERT INTO sample (migration, at_ms, database, source_lsn, confirmed_lsn, \
             lag_bytes, lag_seconds, retained_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        let statements: Vec<_> = samples
            .iter()
            .map(|s| {
                (
                    insert,
                    values![
                        name,
                        s.at_ms,
                        &s.database,
                        s.source_lsn as i64,
                        s.confirmed_lsn.map(|v| v as i64),
                        s.lag_bytes.map(|v| v as i64),
                        s.lag_seconds,
                        s.retained_bytes
                    ],
                )
            })
            .collect();
        self.transaction(&statements)
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
            &params![name],
            |r| {
                Ok(crate::samples::Sample {
                    at_ms: r.get(0)?,
                    database: r.get(1)?,
                    source_lsn: r.get::<i64>(2)? as u64,
                    confirmed_lsn: r.get::<Option<i64>>(3)?.map(|v| v as u64),
                    lag_bytes: r.get::<Option<i64>>(4)?.map(|v| v as u64),
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
            &params![name, kind, now_ms(), body.to_string()],
        )?;
        Ok(())
    }

    /// Every fact recorded about a migration, oldest first, as `(kind, recorded_ms, body)`.
    pub fn facts(&self, name: &str) -> Result<Vec<(String, i64, serde_json::Value)>, JournalError> {
        let rows = self.query_all(
            "SELECT kind, recorded_ms, body FROM fact WHERE migration = ?1 ORDER BY rowid",
            &params![name],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<String>(2)?)),
        )?;
        rows.into_iter()
            .map(|(kind, at, body)| {
                let body = serde_json::from_str(&body)
                    .map_err(|e| self.corrupt(name, format!("fact {kind}: {e}")))?;
                Ok((kind, at, body))
            })
            .collect()
    }

    /// Records a new migration, phase `running`.
    pub fn create(&self, spec: &MigrationSpec) -> Result<(), JournalError> {
        let text = serde_json::to_string(spec).expect("a spec serialises");
        let now = now_ms();
        match self.execute(
            "INSERT INTO migration (name, spec, phase, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
            &params![&spec.name, text, Phase::Running.as_str(), now],
        ) {
            Ok(_) => Ok(()),
            Err(JournalError::Store { source, .. }) if source.is_unique_violation() => {
                Err(JournalError::Exists(spec.name.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets a migration that created nothing (a `start` that preflight stopped), so the
    /// same name can be started again with other options. Refused while resources remain.
    pub fn forget(&self, name: &str) -> Result<(), JournalError> {
        if !self.resources(name)?.is_empty() {
            return Err(self.corrupt(
                name,
                "cannot forget a migration that created resources; abort it".into(),
            ));
        }
        self.transaction(&[
            ("DELETE FROM step_run WHERE migration = ?1", values![name]),
            ("DELETE FROM sample WHERE migration = ?1", values![name]),
            ("DELETE FROM fact WHERE migration = ?1", values![name]),
            ("DELETE FROM stream WHERE migration = ?1", values![name]),
            ("DELETE FROM migration WHERE name = ?1", values![name]),
        ])
    }

    /// Reads one migration.
    pub fn migration(&self, name: &str) -> Result<MigrationRecord, JournalError> {
        let row = self
            .query_one(
                "SELECT spec, phase, error, created_ms, updated_ms FROM migration WHERE name = ?1",
                &params![name],
                |r| migration_row(r, 0),
            )?
            .ok_or_else(|| JournalError::NotFound(name.to_string()))?;
        self.decode(name, row)
    }

    fn decode(
        &self,
        name: &str,
        (spec, phase, error, created_ms, updated_ms): MigrationRow,
    ) -> Result<MigrationRecord, JournalError> {
        let corrupt = |detail: String| self.corrupt(name, detail);
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
            &[],
            |r| Ok((r.get::<String>(0)?, migration_row(r, 1)?)),
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
            &params![name, phase.as_str(), error, now_ms()],
        )?;
        Ok(())
    }

    /// Records that a step starts; returns the run's id.
    pub fn step_started(&self, name: &str, step: Step) -> Result<i64, JournalError> {
        self.check_leases()?;
        self.query_one(
            "INSERT INTO step_run (migration, step, started_ms, outcome, runner) \
             VALUES (?1, ?2, ?3, 'running', ?4) RETURNING id",
            &params![name, step.as_str(), now_ms(), &self.runner.id],
            |r| r.get(0),
        )?
        .ok_or_else(|| self.corrupt(name, "a step run was not recorded".into()))
    }

    /// Records that a step run finished, with its outputs.
    pub fn step_done(&self, run: i64, outputs: &serde_json::Value) -> Result<(), JournalError> {
        self.execute(
            "UPDATE step_run SET outcome = 'done', finished_ms = ?2, outputs = ?3 WHERE id = ?1",
            &params![run, now_ms(), outputs.to_string()],
        )?;
        Ok(())
    }

    /// Records that a step run failed.
    pub fn step_failed(&self, run: i64, error: &str) -> Result<(), JournalError> {
        self.execute(
            "UPDATE step_run SET outcome = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1",
            &params![run, now_ms(), error],
        )?;
        Ok(())
    }

    /// Every step run of a migration, in order.
    pub fn step_runs(&self, name: &str) -> Result<Vec<StepRun>, JournalError> {
        let rows = self.query_all(
            "SELECT step, started_ms, finished_ms, outcome, outputs, error, runner \
             FROM step_run WHERE migration = ?1 ORDER BY id",
            &params![name],
            |r| {
                Ok((
                    (
                        r.get::<String>(0)?,
                        r.get::<i64>(1)?,
                        r.get::<Option<i64>>(2)?,
                    ),
                    r.get::<String>(3)?,
                    r.get::<Option<String>>(4)?,
                    r.get::<Option<String>>(5)?,
                    r.get::<Option<String>>(6)?,
                ))
            },
        )?;
        let corrupt = |detail: String| self.corrupt(name, detail);
        rows.into_iter()
            .map(
                |((step, started_ms, finished_ms), outcome, outputs, error, runner)| {
                    Ok(StepRun {
                        step: Step::parse(&step)
                            .ok_or_else(|| corrupt(format!("step '{step}'")))?,
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
                        runner,
                    })
                },
            )
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
            "INSERT INTO resource (migration, kind, database, name, added_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
            &params![name, kind, database, resource, now_ms()],
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
            &params![name, kind, database, resource],
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
        let statements: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    "INSERT INTO stream (migration, position, database, name) VALUES (?1, ?2, ?3, ?4)",
                    values![name, i as i64, &s.database, &s.name],
                )
            })
            .collect();
        self.transaction(&statements)?;
        self.streams(name)
    }

    /// A migration's streams, in the order they were recorded (empty before the source
    /// was prepared).
    pub fn streams(&self, name: &str) -> Result<Vec<crate::stream::Stream>, JournalError> {
        self.query_all(
            "SELECT database, name FROM stream WHERE migration = ?1 ORDER BY position",
            &params![name],
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
            &params![name],
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
fn migration_row(r: &Row, first: usize) -> Result<MigrationRow, StoreError> {
    Ok((
        r.get(first)?,
        r.get(first + 1)?,
        r.get(first + 2)?,
        r.get(first + 3)?,
        r.get(first + 4)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn spec(name: &str) -> MigrationSpec {
        MigrationSpec::new(name, "src", "src-enc", "pgseal/default", "postgres")
    }

    /// A fresh journal of each kind: an SQLite file in a temp home, or a PostgreSQL
    /// database of a server started for the test, owned by a role that is not a superuser.
    struct Place {
        home: tempfile::TempDir,
        location: Location,
        _server: Option<pgseal_testkit::TestCluster>,
    }

    impl Place {
        fn sqlite() -> Place {
            let home = tempfile::tempdir().unwrap();
            let location = Location::in_home(home.path());
            Place {
                home,
                location,
                _server: None,
            }
        }

        fn postgres() -> Place {
            let server = pgseal_testkit::TestCluster::start().unwrap();
            let url = server
                .owned_database("journal keeper", "pgseal journal")
                .unwrap();
            Place {
                home: tempfile::tempdir().unwrap(),
                location: Location::Postgres(url),
                _server: Some(server),
            }
        }

        fn open(&self) -> Journal {
            Journal::open_at(self.home.path(), &self.location).unwrap()
        }
    }

    /// Declares module `NAME` with tests `on_sqlite` and `on_postgres`, each running the
    /// same test body (`fn NAME(&Place)`) on its store.
    macro_rules! on_both {
        ($name:ident) => {
            mod $name {
                #[test]
                fn on_sqlite() {
                    super::$name(&super::Place::sqlite());
                }
                #[test]
                fn on_postgres() {
                    super::$name(&super::Place::postgres());
                }
            }
        };
    }

    on_both!(streams_are_recorded_once_in_order);
    fn streams_are_recorded_once_in_order(place: &Place) {
        use crate::stream::Stream;
        let j = place.open();
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

    on_both!(steps_outputs_and_resources_survive_reopening);
    fn steps_outputs_and_resources_survive_reopening(place: &Place) {
        {
            let j = place.open();
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
        let j = place.open();
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
        let runner = Runner::here(None).id;
        assert!(
            runs.iter()
                .all(|r| r.runner.as_deref() == Some(runner.as_str()))
        );
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

    on_both!(samples_and_facts_read_back_as_written);
    fn samples_and_facts_read_back_as_written(place: &Place) {
        use crate::samples::Sample;
        let j = place.open();
        j.create(&spec("m1")).unwrap();
        let created = j.migration("m1").unwrap().created_ms;
        let sample = |at_ms: i64, database: &str, lag: Option<u64>| Sample {
            at_ms,
            database: database.into(),
            source_lsn: 0x1_0000_0000,
            confirmed_lsn: lag.map(|l| 0x1_0000_0000 - l),
            lag_bytes: lag,
            lag_seconds: lag.map(|l| l as f64 / 1000.0),
            retained_bytes: Some(1 << 40),
        };
        let first = [
            sample(created, "app", Some(1500)),
            sample(created, "b.c", None),
        ];
        assert!(j.offer_samples("m1", &first).unwrap());
        // Too soon after the first: not kept.
        assert!(
            !j.offer_samples("m1", &[sample(created + 1, "app", Some(1))])
                .unwrap()
        );
        let later = [sample(created + 3_600_000, "app", Some(7))];
        assert!(j.offer_samples("m1", &later).unwrap());
        assert_eq!(j.samples("m1").unwrap(), [&first[..], &later[..]].concat());
        assert_eq!(j.latest_samples("m1").unwrap(), later);
        j.add_fact(
            "m1",
            "scan",
            &serde_json::json!({"plaintext": 0, "ünï": "'q'"}),
        )
        .unwrap();
        j.add_fact("m1", "scan", &serde_json::json!({"plaintext": 1}))
            .unwrap();
        let facts = j.facts("m1").unwrap();
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].2["ünï"], "'q'");
        assert_eq!(facts[1].2["plaintext"], 1);
        // `forget` removes all of it (there are no resources).
        j.forget("m1").unwrap();
        assert!(matches!(
            j.migration("m1").unwrap_err(),
            JournalError::NotFound(_)
        ));
        j.create(&spec("m1")).unwrap();
        assert!(j.samples("m1").unwrap().is_empty());
    }

    on_both!(a_journal_of_a_newer_pgseal_is_refused);
    fn a_journal_of_a_newer_pgseal_is_refused(place: &Place) {
        let j = place.open();
        j.create(&spec("m1")).unwrap();
        drop(j);
        match &place.location {
            Location::File(path) => Connection::open(path)
                .unwrap()
                .pragma_update(None, "user_version", 99)
                .unwrap(),
            Location::Postgres(url) => {
                let (config, _) = pgseal_pg::connect::config_from_url(url).unwrap();
                let store = postgres::PostgresStore::open(&config).unwrap();
                store
                    .execute("UPDATE pgseal_journal.version SET version = 99", &[])
                    .unwrap();
            }
        }
        let refused = Journal::open_at(place.home.path(), &place.location)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("version 99, newer than this pgseal's 2"),
            "{refused}"
        );
        if let Location::Postgres(url) = &place.location {
            assert!(!refused.contains(url.as_str()));
        }
    }

    /// Lease terms that make a test's runner lose its lease within a second or two, and
    /// count the times it is told.
    /// (Three seconds: the holder's own view ends a second after each renewal, which a
    /// loaded machine's stalls stay well inside.)
    fn short_terms(lost: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> LeaseTerms {
        let lost = lost.clone();
        LeaseTerms {
            ttl: Duration::from_secs(3),
            on_lost: std::sync::Arc::new(move |_| {
                lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        }
    }

    /// A PostgreSQL journal holding migration `m1`, its runners `a` and `b` on short
    /// leases, and how many times a lease was lost.
    fn two_runners() -> (
        Place,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        Journal,
        Journal,
    ) {
        let place = Place::postgres();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = place.open().with_runner(runner("a"), short_terms(&lost));
        let b = place.open().with_runner(runner("b"), short_terms(&lost));
        a.create(&spec("m1")).unwrap();
        (place, lost, a, b)
    }

    fn runner(id: &str) -> Runner {
        Runner {
            id: id.into(),
            ..Runner::here(None)
        }
    }

    #[test]
    fn a_lease_is_renewed_while_held_refused_to_others_and_given_back() {
        let (_place, lost, a, b) = two_runners();
        let held = a.hold("m1").unwrap();
        // Well past the lease's length, the heartbeat has kept it.
        std::thread::sleep(Duration::from_millis(7000));
        assert!(matches!(held, Hold::Lease(ref l) if l.held()));
        let refused = b.hold("m1").unwrap_err();
        assert!(
            matches!(&refused, JournalError::Leased { runner, .. } if runner == "a"),
            "{refused}"
        );
        assert!(refused.is_busy());
        a.set_phase("m1", Phase::Replicating, None).unwrap();
        // Given back on drop: the other runner takes it at once.
        drop(held);
        let _b_holds = b.hold("m1").unwrap();
        assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_runner_whose_lease_expired_is_stopped_at_its_next_write_and_another_takes_over() {
        let (place, lost, a, b) = two_runners();
        let held = a.hold("m1").unwrap();
        // What a long pause does: the heartbeat cannot renew (here, its lease row is made
        // to expire by the database's clock as if it had not), then the holder writes.
        let store = a.store.reopen().unwrap();
        store
            .execute(
                "UPDATE lease SET expires_ms = 0 WHERE migration = 'm1'",
                &[],
            )
            .unwrap();
        let taken = b.hold("m1").unwrap();
        // `a`'s heartbeat finds the lease gone at its next beat (every half second); its
        // next write fails before it is made, and `on_lost` was called once.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while lost.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the heartbeat never noticed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let refused = a.step_started("m1", Step::Preflight).unwrap_err();
        assert!(matches!(refused, JournalError::LeaseLost(_)), "{refused}");
        assert!(a.set_phase("m1", Phase::Failed, Some("x")).is_err());
        assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(a.step_runs("m1").unwrap().is_empty());
        // `b` writes as the runner it is.
        b.step_started("m1", Step::Preflight).unwrap();
        assert_eq!(b.step_runs("m1").unwrap()[0].runner.as_deref(), Some("b"));
        // Dropping the lost lease does not give back `b`'s.
        drop(held);
        let c = place.open().with_runner(runner("c"), short_terms(&lost));
        assert!(c.hold("m1").unwrap_err().is_busy());
        drop(taken);
    }

    #[test]
    fn a_copied_journal_reads_the_same_and_a_second_copy_is_refused() {
        let (file, shared) = (Place::sqlite(), Place::postgres());
        let from = file.open();
        for name in ["m1", "m \"2\" ünï"] {
            from.create(&spec(name)).unwrap();
            let run = from.step_started(name, Step::Preflight).unwrap();
            from.step_done(run, &serde_json::json!({"ready": true}))
                .unwrap();
            let run = from.step_started(name, Step::PrepareSource).unwrap();
            from.step_failed(run, "boom").unwrap();
            from.add_resource(name, "slot", "app", "pgseal_m1").unwrap();
            from.add_resource(name, "snapshot", INSTANCE, "s").unwrap();
            from.record_streams(
                name,
                &[crate::stream::Stream {
                    database: "app".into(),
                    name: "pgseal_m1".into(),
                }],
            )
            .unwrap();
            from.insert_samples(
                name,
                &[crate::samples::Sample::lag_only(5, "app", 0x1_0000_0000, 9)],
            )
            .unwrap();
            from.add_fact(name, "scan", &serde_json::json!({"n": 1}))
                .unwrap();
            from.set_phase(name, Phase::Replicating, None).unwrap();
        }
        let to = shared.open();
        let copied = copy::copy(&from, &to).unwrap();
        assert_eq!(copied.migrations.len(), 2);
        let readout = |j: &Journal| {
            j.list()
                .unwrap()
                .into_iter()
                .map(|m| {
                    let name = m.spec.name.clone();
                    format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?}",
                        serde_json::to_string(&m).unwrap(),
                        serde_json::to_string(&j.step_runs(&name).unwrap()).unwrap(),
                        j.resources(&name).unwrap(),
                        j.streams(&name).unwrap(),
                        j.samples(&name).unwrap(),
                        j.facts(&name).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(readout(&from), readout(&to));
        // Again: the receiver has them; nothing more is written.
        assert!(matches!(
            copy::copy(&from, &to).unwrap_err(),
            JournalError::Exists(_)
        ));
        assert_eq!(to.step_runs("m1").unwrap().len(), 2);
    }

    #[test]
    fn a_lease_left_by_a_process_gone_from_this_host_is_taken_at_once_a_live_ones_is_not() {
        let place = Place::postgres();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let j = place.open().with_runner(runner("new"), short_terms(&lost));
        j.create(&spec("m1")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let plant = |pid: u32| {
            j.store
                .execute(
                    "INSERT INTO lease (migration, runner, host, space, pid, taken_ms, expires_ms) \
                     VALUES ('m1', 'old', ?1, ?2, ?3, 0, 9000000000000) \
                     ON CONFLICT (migration) DO UPDATE SET pid = excluded.pid, runner = 'old'",
                    &params![&j.runner.host, &j.runner.space, i64::from(pid)],
                )
                .unwrap()
        };
        // Alive (as a paused process would be): its lease holds until it expires.
        plant(child.id());
        assert!(j.hold("m1").unwrap_err().is_busy());
        // Gone: taken at once.
        child.kill().unwrap();
        child.wait().unwrap();
        let _held = j.hold("m1").unwrap();
        assert_eq!(j.leases().unwrap()[0].runner, "new");
    }

    #[test]
    fn a_version_1_journal_gains_runners_and_leases_in_place() {
        let home = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(home.path()).unwrap();
            j.create(&spec("m1")).unwrap();
            let run = j.step_started("m1", Step::Preflight).unwrap();
            j.step_done(run, &serde_json::json!({})).unwrap();
        }
        {
            // As version 1 left it: step runs without a runner, no lease table.
            let conn = Connection::open(home.path().join("journal.sqlite")).unwrap();
            conn.execute_batch(
                "DROP TABLE lease; ALTER TABLE step_run RENAME TO step_run_v2; \
                 CREATE TABLE step_run (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                   migration TEXT NOT NULL REFERENCES migration(name), step TEXT NOT NULL, \
                   started_ms INTEGER NOT NULL, finished_ms INTEGER, outcome TEXT NOT NULL, \
                   outputs TEXT, error TEXT); \
                 INSERT INTO step_run SELECT id, migration, step, started_ms, finished_ms, \
                   outcome, outputs, error FROM step_run_v2; \
                 DROP TABLE step_run_v2; PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let j = Journal::open(home.path()).unwrap();
        let runs = j.step_runs("m1").unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].runner, None);
        assert!(j.leases().unwrap().is_empty());
        j.step_started("m1", Step::PrepareSource).unwrap();
        assert!(j.step_runs("m1").unwrap()[1].runner.is_some());
    }
}
