//! The step runner: takes a migration from its spec to a replicating encrypted target,
//! one journaled, idempotent [`Step`] at a time, through the [`Platform`] trait and SQL.
//!
//! The two facts it lives by (`FIELD-NOTES.md`): logical replication into the restored
//! copy must start exactly where the copy's WAL ends (the handoff LSN), and the slot must
//! exist before the snapshot — a slot whose `confirmed_flush_lsn` is past the handoff LSN
//! silently skips the transactions in between. [`Step::Guards`] refuses to enable the
//! subscription unless both hold.

use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::ddl;
use pgseal_pg::replication::{self, SlotState};
use pgseal_platform::{ErrorKind, Handoff, InstanceStatus, NewInstance, Platform, PlatformError};
use serde_json::json;
use tokio_postgres::Client;

use crate::journal::{INSTANCE, Journal, MigrationSpec, Phase};
use crate::preflight::{PreflightInput, TargetVersion, preflight};
use crate::steps::{Step, Strategy, failpoint, test_hook};
use crate::stream::{self, Stream};

pub mod blue_green;
mod full_load;

pub use crate::error::{EngineError, error_chain};
pub use crate::journal::{DDL_CAPTURE, DEPLOYMENT};
pub use crate::sessions::{
    admin_database, connect_source, connect_source_db, connect_to, instance_config,
    source_db_config, streams_of,
};
pub use blue_green::green_instance;

/// What a step returns: its outputs, to journal, and one line on what it did.
type StepResult = Result<(serde_json::Value, String), EngineError>;

/// Facts about the surroundings that preflight cannot read over SQL; the caller finds them.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// Bytes free where the snapshot and the restored copy will live, if known.
    pub free_bytes: Option<u64>,
    /// A problem with the target key (disabled, pending deletion, unknown), if any.
    pub key_problem: Option<String>,
    /// The major versions the platform runs servers with here, each with the extensions
    /// it can create (the local platform); `None` where the platform decides.
    pub installed: Option<std::collections::BTreeMap<u32, std::collections::BTreeSet<String>>>,
    /// Why the platform cannot run the full-load strategy, if it cannot.
    pub full_load_unsupported: Option<String>,
    /// Why the platform has no blue/green deployments, if it has none.
    pub blue_green_unsupported: Option<String>,
    /// The client programs (`pg_dump`, `pg_dumpall`, `psql`) the full load runs.
    pub client_tools: pgseal_pg::PgInstalls,
}

/// What the engine reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step starts.
    Started(Step),
    /// A step finished; `summary` says what it did.
    Done {
        /// The step.
        step: Step,
        /// How long it ran.
        elapsed: Duration,
        /// One line on what it did.
        summary: String,
    },
    /// A step was done by an earlier run.
    AlreadyDone(Step),
    /// The full load's initial copy, table by table (about once a second while it runs).
    Copy(Vec<crate::initial_copy::TableCopy>),
    /// A step waits for something outside pgseal (said every few seconds).
    Waiting {
        /// The step.
        step: Step,
        /// What it waits for.
        what: String,
    },
}

/// Runs one migration's steps.
pub struct Engine<'a, P: Platform> {
    platform: &'a P,
    journal: &'a Journal,
    spec: MigrationSpec,
    surroundings: Surroundings,
    observer: Box<dyn Fn(&Event) + 'a>,
}

/// How long the engine waits for the apply worker to start.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a slot creation that waits says what it waits for.
const SLOT_WAIT_REPORT: Duration = Duration::from_secs(2);

impl<'a, P: Platform> Engine<'a, P> {
    /// An engine for the recorded migration `name`.
    pub fn new(
        platform: &'a P,
        journal: &'a Journal,
        name: &str,
        surroundings: Surroundings,
        observer: impl Fn(&Event) + 'a,
    ) -> Result<Self, EngineError> {
        let spec = journal.migration(name)?.spec;
        Ok(Engine {
            platform,
            journal,
            spec,
            surroundings,
            observer: Box::new(observer),
        })
    }

    /// Runs every step not yet done, in order, and returns once the target replicates.
    /// A failure is journaled (phase `failed`, the step's error) and returned; running
    /// again retries from the failed step.
    pub async fn run(&self) -> Result<(), EngineError> {
        let name = &self.spec.name;
        let record = self.journal.migration(name)?;
        match record.phase {
            Phase::Aborting | Phase::Aborted => {
                return Err(EngineError::Precondition(format!(
                    "migration {name} was aborted; start a new one (with another --name, or after `pgseal migrate abort {name}` has finished)"
                )));
            }
            Phase::Replicating | Phase::CutOver | Phase::CleanedUp | Phase::RolledBack => {
                return Ok(());
            }
            Phase::CuttingOver => {
                return Err(EngineError::Precondition(format!(
                    "migration {name} was interrupted during cutover; `pgseal migrate resume {name}` lifts the fence first"
                )));
            }
            Phase::Running | Phase::Failed => {}
        }
        self.journal.set_phase(name, Phase::Running, None)?;
        for &step in self.spec.strategy.steps() {
            if self.journal.outputs(name, step)?.is_some() {
                (self.observer)(&Event::AlreadyDone(step));
                continue;
            }
            let run = self.journal.step_started(name, step)?;
            (self.observer)(&Event::Started(step));
            failpoint("before", step);
            let started = Instant::now();
            tracing::info!(migration = %name, %step, "step started");
            match self.run_step(step).await {
                Ok((outputs, summary)) => {
                    failpoint("after", step);
                    self.journal.step_done(run, &outputs)?;
                    let elapsed = started.elapsed();
                    tracing::info!(migration = %name, %step, seconds = elapsed.as_secs_f64(), "step done");
                    (self.observer)(&Event::Done {
                        step,
                        elapsed,
                        summary,
                    });
                }
                Err(error) => {
                    let text = error_chain(&error);
                    tracing::info!(migration = %name, %step, error = %text, "step failed");
                    self.journal.step_failed(run, &text)?;
                    self.journal.set_phase(
                        name,
                        Phase::Failed,
                        Some(&format!("step {step}: {text}")),
                    )?;
                    if matches!(error, EngineError::SlotWait(_)) {
                        // Nothing may be left behind: what this start made goes, and so
                        // does the journal's record (start again once the wait is over).
                        crate::abort::abort(self.platform, self.journal, name).await?;
                        self.journal.forget(name)?;
                    }
                    return Err(error);
                }
            }
        }
        self.journal.set_phase(name, Phase::Replicating, None)?;
        Ok(())
    }

    async fn run_step(&self, step: Step) -> Result<(serde_json::Value, String), EngineError> {
        match step {
            Step::Preflight => self.preflight().await,
            Step::PrepareSource => self.prepare_source().await,
            Step::Snapshot => self.snapshot().await,
            Step::Restore => self.restore().await,
            Step::TargetHousekeeping => self.target_housekeeping().await,
            Step::Subscription => self.subscription().await,
            Step::Guards => self.guards().await,
            Step::OriginAdvance => self.origin_advance().await,
            Step::Enable => self.enable().await,
            Step::Replicating => self.replicating().await,
            Step::CreateTarget => self.create_target().await,
            Step::Schema => self.schema().await,
            Step::InitialCopy => self.initial_copy().await,
            Step::PostData => self.post_data().await,
            Step::CreateDeployment => self.create_deployment().await,
            Step::GreenReady => self.green_ready().await,
            Step::Cutover | Step::Rollback | Step::Validate => Err(EngineError::Precondition(
                "cutover is not a step of `start`: run `pgseal migrate cutover`".into(),
            )),
        }
    }

    fn platform_error(what: impl Into<String>) -> impl FnOnce(PlatformError) -> EngineError {
        let what = what.into();
        move |source| EngineError::Platform { what, source }
    }

    fn sql(
        role: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Sql { role, what, source }
    }

    async fn source(&self) -> Result<Client, EngineError> {
        connect_source(self.platform, &self.spec).await
    }

    async fn target(&self) -> Result<Client, EngineError> {
        self.target_db(&self.spec.database).await
    }

    async fn source_db(&self, database: &str) -> Result<Client, EngineError> {
        connect_source_db(self.platform, &self.spec, database).await
    }

    async fn target_db(&self, database: &str) -> Result<Client, EngineError> {
        connect_to(self.platform, &self.spec.target, database, "target").await
    }

    /// The migration's streams, as recorded when the source was prepared.
    fn streams(&self) -> Result<Vec<Stream>, EngineError> {
        streams_of(self.journal, &self.spec.name)
    }

    fn recorded<T: serde::de::DeserializeOwned>(
        &self,
        step: Step,
        field: &str,
    ) -> Result<T, EngineError> {
        let outputs = self
            .journal
            .outputs(&self.spec.name, step)?
            .ok_or_else(|| {
                EngineError::Precondition(format!("step {step} has no recorded outputs"))
            })?;
        serde_json::from_value(outputs[field].clone()).map_err(|e| {
            EngineError::Precondition(format!(
                "the journal's {step}.{field} cannot be read ({e}): the journal was edited?"
            ))
        })
    }

    // 1.
    async fn preflight(&self) -> Result<(serde_json::Value, String), EngineError> {
        let source = self.source().await?;
        let target_problem = match self.platform.describe_instance(&self.spec.target).await {
            Ok(_) => Some(format!("instance {} already exists", self.spec.target)),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(Self::platform_error("describing the target")(e)),
        };
        let input = PreflightInput {
            migration: self.spec.name.clone(),
            managed_source: self
                .spec
                .source_url()
                .is_none()
                .then(|| self.spec.source.clone()),
            allow_restart: self.spec.allow_restart,
            replica_identity_full: self.spec.replica_identity_full,
            long_transaction_seconds: self.spec.long_transaction_seconds,
            free_bytes: self.surroundings.free_bytes,
            key_problem: self.surroundings.key_problem.clone(),
            target_problem,
            databases: self.spec.databases.clone(),
            tables: self.spec.tables.clone(),
            target_version: TargetVersion {
                strategy: self.spec.strategy,
                engine_version: self.spec.engine_version,
                installed: self.surroundings.installed.clone(),
                full_load_unsupported: self.surroundings.full_load_unsupported.clone(),
                blue_green_unsupported: self.surroundings.blue_green_unsupported.clone(),
            },
        };
        let connect = async |db: &str| self.source_db(db).await.map_err(|e| error_chain(&e));
        let report = preflight(&source, connect, &input)
            .await
            .map_err(Self::sql("source", "preflight"))?;
        if !report.ready() {
            return Err(EngineError::Blocked(Box::new(report)));
        }
        let carried = report.carried();
        let summary = format!(
            "{} database(s) ({}), {} tables, {} MiB, {} warning(s)",
            carried.len(),
            carried.join(", "),
            report.tables,
            report.source_bytes >> 20,
            report.findings.len()
        );
        Ok((json!({ "report": report }), summary))
    }

    /// `wal_level = logical` on the source, set through the platform (restarting the
    /// source) when the user allowed a restart; a session on the source and whether it
    /// was restarted.
    async fn ensure_logical_wal(&self) -> Result<(Client, bool), EngineError> {
        let source = self.source().await?;
        let wal_level: String = source
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(Self::sql("source", "reading wal_level"))?
            .get(0);
        if wal_level == "logical" {
            return Ok((source, false));
        }
        if self.spec.source_url().is_some() {
            return Err(EngineError::Precondition(format!(
                "wal_level is {wal_level} on the source; run ALTER SYSTEM SET wal_level = logical there and restart it (on RDS: rds.logical_replication = 1)"
            )));
        }
        if !self.spec.allow_restart {
            return Err(EngineError::Precondition(format!(
                "wal_level is {wal_level} on {}; pass --allow-restart to let pgseal set it to logical and restart the source",
                self.spec.source
            )));
        }
        let params = [("wal_level".to_string(), "logical".to_string())].into();
        self.platform
            .set_params(&self.spec.source, &params, true)
            .await
            .map_err(Self::platform_error(
                "setting wal_level=logical on the source",
            ))?;
        Ok((self.source().await?, true))
    }

    // 2.
    async fn prepare_source(&self) -> Result<(serde_json::Value, String), EngineError> {
        let (source, restarted) = self.ensure_logical_wal().await?;

        // The scope is fixed here, once, before anything is created.
        let streams = match self.journal.streams(&self.spec.name)? {
            recorded if !recorded.is_empty() => recorded,
            _ => {
                let all = stream::databases(&source)
                    .await
                    .map_err(Self::sql("source", "listing databases"))?;
                let planned = stream::plan(&self.spec.name, &all, self.spec.databases.as_deref())
                    .map_err(EngineError::Precondition)?;
                self.journal.record_streams(&self.spec.name, &planned)?
            }
        };

        // PostgreSQL's own guard on the slots' WAL, on a source pgseal manages.
        if let (None, Some(limit), Some(first)) = (
            self.spec.source_url(),
            self.spec.max_slot_retention,
            streams.first(),
        ) {
            crate::slot_guard::install(
                &source,
                self.journal,
                &self.spec.name,
                &first.database,
                limit,
            )
            .await?;
        }

        let mut prepared = Vec::new();
        let mut ddl_capture = Vec::new();
        for s in &streams {
            let client = self.source_db(&s.database).await?;
            let identity_changed = self.replica_identity(&client, s).await?;
            // DDL is captured from before the slot on (see pgseal_pg::ddl): what comes
            // before the slot is in the snapshot (or the full load's schema), what comes
            // after streams to the target. Only a publication of every table carries the
            // capture table (and a scope narrowed to tables would replay DDL of tables it
            // does not carry). A full load holds DDL until its tables are copied.
            if self.spec.strategy != Strategy::BlueGreen && self.spec.tables.is_none() {
                self.journal.add_resource(
                    &self.spec.name,
                    DDL_CAPTURE,
                    &s.database,
                    ddl::SCHEMA,
                )?;
                if ddl::install_capture(&client).await.map_err(Self::sql(
                    "source",
                    format!("installing the DDL capture in {}", s.database),
                ))? {
                    ddl_capture.push(s.database.clone());
                }
                if self.spec.strategy == Strategy::FullLoad {
                    ddl::install_hold(&client, &self.spec.name)
                        .await
                        .map_err(Self::sql(
                            "source",
                            format!("holding DDL in {} during the copy", s.database),
                        ))?;
                }
            }
            self.journal
                .add_resource(&self.spec.name, "publication", &s.database, &s.name)?;
            replication::create_publication(&client, &s.name, self.spec.tables.as_deref())
                .await
                .map_err(Self::sql(
                    "source",
                    format!("creating publication {} in {}", s.name, s.database),
                ))?;
            let tables = replication::published_tables(&client, &s.name)
                .await
                .map_err(Self::sql("source", "listing published tables"))?;
            prepared.push((s, client, tables, identity_changed));
        }

        // Every slot after every publication and before the snapshot: the snapshot's end
        // is then past every slot's consistent point.
        let mut outputs = Vec::new();
        for (s, client, tables, identity_changed) in &prepared {
            let slot = if test_hook("late-slot") {
                tracing::warn!("test hook late-slot: the slot is created after the snapshot");
                None
            } else {
                Some(self.create_slot(client, s).await?)
            };
            outputs.push(json!({
                "database": s.database,
                "publication": s.name,
                "tables": tables,
                "slot": slot,
                "replica_identity_full": identity_changed,
            }));
        }
        let tables: usize = prepared.iter().map(|p| p.2.len()).sum();
        let summary = format!(
            "{} stream(s) ({}): publications with {tables} tables, slots made{}",
            streams.len(),
            streams
                .iter()
                .map(|s| s.database.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if restarted {
                ", wal_level set to logical (restarted)"
            } else {
                ""
            }
        );
        // Keep the sessions until here: a failure above must not leave a half-made slot.
        drop(prepared);
        Ok((
            json!({
                "streams": outputs,
                "restarted_for_wal_level": restarted,
                "ddl_capture": ddl_capture,
            }),
            summary,
        ))
    }

    /// `REPLICA IDENTITY FULL` on the tables of `stream`'s database that have none, when
    /// the user opted in; returns the tables changed.
    async fn replica_identity(
        &self,
        client: &Client,
        stream: &Stream,
    ) -> Result<Vec<String>, EngineError> {
        let mut changed = Vec::new();
        if !self.spec.replica_identity_full {
            return Ok(changed);
        }
        let rows = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), n.nspname::text || '.' || c.relname::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                        (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(Self::sql("source", "listing tables without replica identity"))?;
        for row in rows {
            let (table, plain): (String, String) = (row.get(0), row.get(1));
            if let Some(wanted) = &self.spec.tables
                && !wanted
                    .iter()
                    .any(|w| replication::qualified(w) == replication::qualified(&plain))
            {
                continue;
            }
            self.journal.add_resource(
                &self.spec.name,
                "replica_identity",
                &stream.database,
                &table,
            )?;
            client
                .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
                .await
                .map_err(Self::sql(
                    "source",
                    format!("setting REPLICA IDENTITY FULL on {table}"),
                ))?;
            changed.push(table);
        }
        Ok(changed)
    }

    /// Creates `stream`'s slot on `client` (a session on its database). Creating a
    /// logical slot waits for every transaction that has an id (prepared ones included);
    /// the wait is reported every few seconds with what it waits for, and given up after
    /// the spec's `slot_wait_seconds` ([`EngineError::SlotWait`]).
    async fn create_slot(
        &self,
        client: &Client,
        stream: &Stream,
    ) -> Result<SlotState, EngineError> {
        self.journal
            .add_resource(&self.spec.name, "slot", &stream.database, &stream.name)?;
        let slot = match replication::slot(client, &stream.name)
            .await
            .map_err(Self::sql("source", "reading the slot"))?
        {
            Some(existing) => existing,
            None => self.create_slot_waiting(client, stream).await?,
        };
        if slot.database.as_deref() != Some(stream.database.as_str()) {
            return Err(EngineError::Precondition(format!(
                "slot {} exists for database {:?}, not {}; abort this migration and drop that slot",
                stream.name, slot.database, stream.database
            )));
        }
        Ok(slot)
    }

    async fn create_slot_waiting(
        &self,
        client: &Client,
        stream: &Stream,
    ) -> Result<SlotState, EngineError> {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(Self::sql("source", "reading pgseal's session id"))?
            .get(0);
        let watcher = self.source().await?;
        let limit = Duration::from_secs(self.spec.slot_wait_seconds);
        let started = Instant::now();
        let creating = replication::create_logical_slot(client, &stream.name);
        tokio::pin!(creating);
        loop {
            tokio::select! {
                made = &mut creating => {
                    let (slot, _) = made.map_err(Self::sql(
                        "source",
                        format!("creating logical slot {} in {}", stream.name, stream.database),
                    ))?;
                    return Ok(slot);
                }
                _ = tokio::time::sleep(SLOT_WAIT_REPORT) => {
                    let blockers = slot_blockers(&watcher, pid)
                        .await
                        .map_err(Self::sql("source", "reading what the slot waits for"))?;
                    let waited = started.elapsed();
                    tracing::warn!(slot = %stream.name, seconds = waited.as_secs(), %blockers, "slot creation waits");
                    if waited >= limit {
                        let _ = watcher
                            .execute("SELECT pg_cancel_backend($1)", &[&pid])
                            .await;
                        // The cancelled creation leaves no slot behind.
                        let _ = (&mut creating).await;
                        return Err(EngineError::SlotWait(format!(
                            "creating slot {} waited {} s for running transactions, the limit (--slot-wait): {blockers}. Let them finish (prepared ones: COMMIT PREPARED or ROLLBACK PREPARED in their database) or end them, then start again; nothing was left on the source",
                            stream.name,
                            waited.as_secs()
                        )));
                    }
                    (self.observer)(&Event::Waiting {
                        step: Step::PrepareSource,
                        what: format!(
                            "creating slot {} ({} s): waits for {blockers}",
                            stream.name,
                            waited.as_secs()
                        ),
                    });
                }
            }
        }
    }

    // 3.
    async fn snapshot(&self) -> Result<(serde_json::Value, String), EngineError> {
        let snap = self.spec.snapshot_name();
        let existing = match self.platform.describe_snapshot(&snap).await {
            Ok(s) => Some(s),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(Self::platform_error("describing the snapshot")(e)),
        };
        let snapshot = match existing {
            Some(s) => s,
            None if self.spec.source_url().is_some() => {
                self.journal
                    .add_resource(&self.spec.name, "snapshot", INSTANCE, &snap)?;
                self.platform
                    .create_snapshot_of_url(&self.spec.source, &snap, &self.spec.key)
                    .await
                    .map_err(Self::platform_error("taking the encrypted snapshot"))?
            }
            None => {
                let source = self
                    .platform
                    .describe_instance(&self.spec.source)
                    .await
                    .map_err(Self::platform_error("describing the source"))?;
                self.journal
                    .add_resource(&self.spec.name, "snapshot", INSTANCE, &snap)?;
                if source.encrypted {
                    // Under another key already: snapshot under its key, copy under the new one.
                    let plain_key_snap = format!("{snap}-src");
                    self.journal.add_resource(
                        &self.spec.name,
                        "snapshot",
                        INSTANCE,
                        &plain_key_snap,
                    )?;
                    if let Err(e) = self.platform.describe_snapshot(&plain_key_snap).await {
                        if e.kind != ErrorKind::NotFound {
                            return Err(Self::platform_error("describing the snapshot")(e));
                        }
                        self.platform
                            .create_snapshot(&self.spec.source, &plain_key_snap, None)
                            .await
                            .map_err(Self::platform_error("snapshotting the source"))?;
                    }
                    let copy = self
                        .platform
                        .copy_snapshot_encrypted(&plain_key_snap, &snap, &self.spec.key)
                        .await
                        .map_err(Self::platform_error(
                            "copying the snapshot under the new key",
                        ))?;
                    self.platform
                        .delete_snapshot(&plain_key_snap)
                        .await
                        .map_err(Self::platform_error("deleting the intermediate snapshot"))?;
                    self.journal.remove_resource(
                        &self.spec.name,
                        "snapshot",
                        INSTANCE,
                        &plain_key_snap,
                    )?;
                    copy
                } else {
                    self.platform
                        .create_snapshot(&self.spec.source, &snap, Some(&self.spec.key))
                        .await
                        .map_err(Self::platform_error("taking the encrypted snapshot"))?
                }
            }
        };
        if !snapshot.encrypted && snapshot.restore_key.is_none() {
            return Err(EngineError::Precondition(format!(
                "snapshot {snap} is not encrypted; abort the migration"
            )));
        }
        let mut late_slots = Vec::new();
        if test_hook("late-slot") {
            for s in &self.streams()? {
                let source = self.source_db(&s.database).await?;
                late_slots.push(self.create_slot(&source, s).await?);
            }
        }
        let summary = format!(
            "{snap}, encrypted under {}, backup ends at {}",
            snapshot.key_id.as_deref().unwrap_or("?"),
            lsn_text(snapshot.end_lsn)
        );
        Ok((
            json!({ "snapshot": snapshot, "late_slots": late_slots }),
            summary,
        ))
    }

    // 4.
    async fn restore(&self) -> Result<(serde_json::Value, String), EngineError> {
        let snap = self.spec.snapshot_name();
        let target = &self.spec.target;
        let instance = match self.existing_target().await? {
            Some(i)
                if i.status == InstanceStatus::Available
                    && i.source_snapshot.as_deref() == Some(snap.as_str()) =>
            {
                i
            }
            Some(i)
                if i.status == InstanceStatus::Busy
                    && i.source_snapshot.as_deref() == Some(snap.as_str())
                    && let Ok(waited) = self.platform.wait_available(target).await
                    && waited.status == InstanceStatus::Available =>
            {
                // A restore the platform carried on with while pgseal was gone.
                waited
            }
            Some(i) => {
                // A restore that was interrupted: start again from the snapshot.
                tracing::warn!(target = %i.name, status = ?i.status, "removing an interrupted restore");
                self.platform
                    .delete_instance(target)
                    .await
                    .map_err(Self::platform_error("removing the interrupted restore"))?;
                self.restore_new(&snap).await?
            }
            None => {
                self.journal
                    .add_resource(&self.spec.name, "instance", INSTANCE, target)?;
                self.restore_new(&snap).await?
            }
        };
        let snapshot: pgseal_platform::Snapshot = self.recorded(Step::Snapshot, "snapshot")?;
        let expected_key = snapshot.restore_key.clone().or(snapshot.key_id.clone());
        if !instance.encrypted || instance.key_id != expected_key {
            return Err(EngineError::Precondition(format!(
                "target {} is {} (key {}), expected encrypted under {}; refusing to go on",
                instance.name,
                if instance.encrypted {
                    "encrypted"
                } else {
                    "NOT encrypted"
                },
                instance.key_id.as_deref().unwrap_or("none"),
                expected_key.as_deref().unwrap_or("?")
            )));
        }
        let handoff = self
            .platform
            .handoff(target)
            .await
            .map_err(Self::platform_error("reading the target's handoff LSN"))?;
        let summary = format!(
            "{target}, encrypted under {}, handoff LSN {}",
            instance.key_id.as_deref().unwrap_or("?"),
            handoff.lsn
        );
        Ok((json!({ "instance": instance, "handoff": handoff }), summary))
    }

    /// The target instance if it exists and this migration made it (an earlier run of the
    /// step that makes it); one that exists but was not made by it is refused.
    async fn existing_target(&self) -> Result<Option<pgseal_platform::Instance>, EngineError> {
        let target = &self.spec.target;
        let ours = self
            .journal
            .resources(&self.spec.name)?
            .iter()
            .any(|r| r.kind == "instance" && &r.name == target);
        match self.platform.describe_instance(target).await {
            Ok(i) if !ours => Err(EngineError::Precondition(format!(
                "instance {} exists and was not made by migration {} (status {:?}); choose another --target",
                i.name, self.spec.name, i.status
            ))),
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::platform_error("describing the target")(e)),
        }
    }

    async fn restore_new(&self, snap: &str) -> Result<pgseal_platform::Instance, EngineError> {
        let snapshot: pgseal_platform::Snapshot = self.recorded(Step::Snapshot, "snapshot")?;
        let spec = NewInstance {
            name: self.spec.target.clone(),
            port: self.spec.target_port,
            storage_bytes: None,
            // Encrypted exactly as the snapshot is, or under the key a restore must
            // encrypt it with (checked after the restore).
            encryption_key: snapshot.restore_key,
            params: Default::default(),
            engine_version: None,
        };
        self.platform
            .restore_snapshot(snap, &spec)
            .await
            .map_err(Self::platform_error(
                "restoring the snapshot into the target",
            ))
    }

    // 5.
    async fn target_housekeeping(&self) -> Result<(serde_json::Value, String), EngineError> {
        let streams = self.streams()?;
        let target = self.target().await?;
        // The copy's slots (all of them: a new instance's slots can only be copies of the
        // source's) would hold the target's WAL forever.
        let slots: Vec<String> = target
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE NOT temporary",
                &[],
            )
            .await
            .map_err(Self::sql("target", "listing slots"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for slot in &slots {
            replication::drop_slot(&target, slot)
                .await
                .map_err(Self::sql("target", format!("dropping copied slot {slot}")))?;
        }
        // Transactions prepared on the source after its slots were made came along as
        // orphans holding locks; their COMMIT PREPARED arrives through replication, so
        // here they are rolled back, each in its database, to be applied exactly once.
        let prepared: Vec<(String, String)> = target
            .query(
                "SELECT gid, database::text FROM pg_prepared_xacts ORDER BY prepared",
                &[],
            )
            .await
            .map_err(Self::sql("target", "listing prepared transactions"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // Subscriptions the source had came along too (pg_subscription is server-wide;
        // each is altered from its own database); they must not pull from the source's
        // own publishers.
        let foreign: Vec<(String, String)> = target
            .query(
                "SELECT s.subname::text, d.datname::text FROM pg_subscription s \
                 JOIN pg_database d ON d.oid = s.subdbid WHERE s.subenabled ORDER BY 2, 1",
                &[],
            )
            .await
            .map_err(Self::sql("target", "listing copied subscriptions"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .filter(|(sub, _): &(String, String)| !streams.iter().any(|s| &s.name == sub))
            .collect();
        let mut dropped_publications = Vec::new();
        let mut databases: Vec<&str> = streams.iter().map(|s| s.database.as_str()).collect();
        databases.extend(prepared.iter().map(|(_, db)| db.as_str()));
        databases.extend(foreign.iter().map(|(_, db)| db.as_str()));
        databases.sort();
        databases.dedup();
        for db in databases {
            let client = self.target_db(db).await?;
            if let Some(s) = streams.iter().find(|s| s.database == db)
                && replication::drop_publication(&client, &s.name)
                    .await
                    .map_err(Self::sql("target", "dropping the copied publication"))?
            {
                dropped_publications.push(s.name.clone());
            }
            for (gid, _) in prepared.iter().filter(|(_, d)| d == db) {
                client
                    .batch_execute(&format!(
                        "ROLLBACK PREPARED {}",
                        replication::quote_literal(gid)
                    ))
                    .await
                    .map_err(Self::sql(
                        "target",
                        format!("rolling back the copied prepared transaction {gid}"),
                    ))?;
            }
            // The copy captures nothing itself; it replays what the source captures.
            if streams.iter().any(|s| s.database == db) {
                ddl::install_replay(&client)
                    .await
                    .map_err(Self::sql("target", "installing the DDL replay"))?;
            }
            for (sub, _) in foreign.iter().filter(|(_, d)| d == db) {
                client
                    .batch_execute(&format!(
                        "ALTER SUBSCRIPTION {} DISABLE",
                        replication::quote_ident(sub)
                    ))
                    .await
                    .map_err(Self::sql(
                        "target",
                        format!("disabling copied subscription {sub}"),
                    ))?;
            }
        }
        let summary = format!(
            "publications dropped: {}, slots dropped: {}, prepared transactions rolled back: {}, subscriptions disabled: {}",
            dropped_publications.len(),
            slots.len(),
            prepared.len(),
            foreign.len()
        );
        Ok((
            json!({
                "dropped_publications": dropped_publications,
                "dropped_slots": slots,
                "rolled_back_prepared": prepared.iter().map(|(gid, db)| json!({"gid": gid, "database": db})).collect::<Vec<_>>(),
                "disabled_subscriptions": foreign.iter().map(|(sub, db)| json!({"subscription": sub, "database": db})).collect::<Vec<_>>(),
            }),
            summary,
        ))
    }

    // 6.
    async fn subscription(&self) -> Result<(serde_json::Value, String), EngineError> {
        if self.spec.strategy == Strategy::FullLoad {
            self.full_load_subscription_recorded().await?;
        }
        let mut made = Vec::new();
        for s in &self.streams()? {
            let conninfo = match self.spec.source_url() {
                // The subscription keeps the password in the target's catalog (on its
                // encrypted storage), as PostgreSQL does for any subscription.
                Some(url) => {
                    let mut config = crate::sessions::source_config(url)?;
                    config.dbname(&s.database);
                    pgseal_pg::conninfo(&config)
                }
                None => self
                    .platform
                    .subscriber_conninfo(&self.spec.source, &s.database)
                    .await
                    .map_err(Self::platform_error(
                        "finding how the target reaches the source",
                    ))?,
            };
            let target = self.target_db(&s.database).await?;
            let (sub, _) = replication::create_subscription(
                &target,
                &s.name,
                &conninfo,
                &s.name,
                &s.name,
                self.spec.strategy == Strategy::FullLoad,
            )
            .await
            .map_err(Self::sql(
                "target",
                format!("creating subscription {} in {}", s.name, s.database),
            ))?;
            made.push(json!({ "database": s.database, "subscription": sub.name, "oid": sub.oid }));
        }
        let summary = format!(
            "{} subscription(s), disabled, copy_data={}",
            made.len(),
            self.spec.strategy == Strategy::FullLoad
        );
        Ok((json!({ "subscriptions": made }), summary))
    }

    // 7.
    async fn guards(&self) -> Result<(serde_json::Value, String), EngineError> {
        let handoff: Handoff = self.recorded(Step::Restore, "handoff")?;
        let source = self.source().await?;
        let mut slots = Vec::new();
        for s in &self.streams()? {
            let slot = replication::slot(&source, &s.name)
                .await
                .map_err(Self::sql("source", "reading the slot"))?
                .ok_or_else(|| {
                    EngineError::Guard(format!(
                        "slot {} ({}) is gone from the source: the changes since the snapshot cannot be replayed; abort this migration and start again",
                        s.name, s.database
                    ))
                })?;
            check_guards(&handoff, &slot).map_err(EngineError::Guard)?;
            slots.push(slot);
        }
        let highest = slots.iter().filter_map(|s| s.confirmed_flush_lsn).max();
        let summary = format!(
            "handoff {} > redo done at {}; {} slot(s), the latest confirmed_flush {} <= handoff",
            handoff.lsn,
            lsn_text(handoff.redo_done_at),
            slots.len(),
            lsn_text(highest)
        );
        Ok((json!({ "handoff": handoff, "slots": slots }), summary))
    }

    // 8.
    async fn origin_advance(&self) -> Result<(serde_json::Value, String), EngineError> {
        let handoff: Handoff = self.recorded(Step::Restore, "handoff")?;
        let mut origins = Vec::new();
        for s in &self.streams()? {
            let target = self.target_db(&s.database).await?;
            let sub = self.subscription_state(&target, &s.name).await?;
            if sub.enabled {
                return Err(EngineError::Precondition(format!(
                    "subscription {} ({}) is enabled but its origin was not advanced by pgseal: the target may have applied from the wrong position; abort this migration",
                    s.name, s.database
                )));
            }
            replication::advance_origin(&target, &sub, handoff.lsn)
                .await
                .map_err(Self::sql("target", "advancing the replication origin"))?;
            let after = self.subscription_state(&target, &s.name).await?;
            if after.applied_lsn != Some(handoff.lsn) {
                return Err(EngineError::Precondition(format!(
                    "origin {} reads {} after advancing to {}",
                    sub.origin(),
                    lsn_text(after.applied_lsn),
                    handoff.lsn
                )));
            }
            origins.push(json!({ "database": s.database, "origin": sub.origin() }));
        }
        let summary = format!("{} origin(s) -> {}", origins.len(), handoff.lsn);
        Ok((json!({ "origins": origins, "lsn": handoff.lsn }), summary))
    }

    async fn subscription_state(
        &self,
        target: &Client,
        name: &str,
    ) -> Result<replication::SubscriptionState, EngineError> {
        replication::subscription(target, name)
            .await
            .map_err(Self::sql("target", "reading the subscription"))?
            .ok_or_else(|| {
                EngineError::Precondition(format!(
                    "subscription {name} is missing on the target; abort this migration"
                ))
            })
    }

    // 9.
    async fn enable(&self) -> Result<(serde_json::Value, String), EngineError> {
        let streams = self.streams()?;
        for s in &streams {
            let target = self.target_db(&s.database).await?;
            replication::enable_subscription(&target, &s.name)
                .await
                .map_err(Self::sql("target", "enabling the subscription"))?;
        }
        Ok((
            json!({ "enabled": streams.iter().map(|s| &s.name).collect::<Vec<_>>() }),
            format!("{} subscription(s) enabled", streams.len()),
        ))
    }

    // 10.
    async fn replicating(&self) -> Result<(serde_json::Value, String), EngineError> {
        let source = self.source().await?;
        let started = Instant::now();
        let mut workers = Vec::new();
        let streams = self.streams()?;
        for s in &streams {
            let target = self.target_db(&s.database).await?;
            // The error count only grows, and counts lost connections too: only errors
            // during this wait say the worker cannot start (a resumed migration's worker
            // may have failed before, when the source restarted).
            let mut errors_before = None;
            loop {
                self.journal
                    .record_samples(&self.spec.name, &source, &streams)
                    .await;
                let sub = self.subscription_state(&target, &s.name).await?;
                let errors_before = *errors_before.get_or_insert(sub.apply_errors);
                let slot = replication::slot(&source, &s.name)
                    .await
                    .map_err(Self::sql("source", "reading the slot"))?;
                if let (Some(pid), Some(slot)) = (sub.worker_pid, &slot)
                    && slot.active
                {
                    workers.push(json!({
                        "database": s.database, "worker_pid": pid, "applied_lsn": sub.applied_lsn,
                    }));
                    break;
                }
                if sub.apply_errors > errors_before {
                    return Err(EngineError::Precondition(format!(
                        "the apply worker of {} ({}) failed {} time(s); see the target's server log",
                        s.name,
                        s.database,
                        sub.apply_errors - errors_before
                    )));
                }
                if started.elapsed() > WORKER_START_TIMEOUT {
                    return Err(EngineError::Timeout {
                        what: format!(
                            "the apply worker of {} ({}) to stream from the slot",
                            s.name, s.database
                        ),
                        seconds: WORKER_START_TIMEOUT.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let mut summary = format!("{} apply worker(s) streaming", workers.len());
        let mut outputs = json!({ "workers": workers });
        if self.spec.strategy == Strategy::FullLoad {
            let lag = self.wait_caught_up().await?;
            summary.push_str(&format!(", {} KiB behind", lag >> 10));
            outputs["lag_bytes"] = json!(lag);
        }
        Ok((outputs, summary))
    }
}

/// What a session creating a slot (`pid`) waits for: the other transactions that hold a
/// transaction id, and every prepared transaction.
async fn slot_blockers(watcher: &Client, pid: i32) -> Result<String, tokio_postgres::Error> {
    let row = watcher
        .query_one(
            "SELECT (SELECT string_agg(format('pid %s (%s, database %s, open %s s)', a.pid, \
                        coalesce(a.usename::text, '?'), coalesce(a.datname::text, '?'), \
                        coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0)), ', ' ORDER BY a.pid) \
                     FROM pg_stat_activity a WHERE a.pid <> $1 AND a.pid <> pg_backend_pid() \
                       AND a.backend_xid IS NOT NULL), \
                    (SELECT string_agg(format('prepared transaction %L (database %s, %s s ago)', gid, \
                        database, extract(epoch FROM now() - prepared)::bigint), ', ' ORDER BY prepared) \
                     FROM pg_prepared_xacts)",
            &[&pid],
        )
        .await?;
    let parts: Vec<String> = [row.get::<_, Option<String>>(0), row.get(1)]
        .into_iter()
        .flatten()
        .collect();
    Ok(if parts.is_empty() {
        "transactions that have just ended".to_string()
    } else {
        parts.join("; ")
    })
}

fn lsn_text(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "unknown".to_string(), |l| l.to_string())
}

/// The two rules of `FIELD-NOTES.md`, checked before the subscription may be enabled:
/// the handoff LSN is past the last replayed record's start (and not before the backup's
/// end), and the slot has not confirmed anything past it. `Err` says which fails and why.
pub fn check_guards(handoff: &Handoff, slot: &SlotState) -> Result<(), String> {
    if let Some(redo) = handoff.redo_done_at
        && handoff.lsn <= redo
    {
        return Err(format!(
            "handoff LSN {} is not past `redo done at` {redo}: starting there would apply the last transaction twice",
            handoff.lsn
        ));
    }
    if let Some(end) = handoff.backup_end_lsn
        && handoff.lsn < end
    {
        return Err(format!(
            "handoff LSN {} is before the backup's end {end}: the copy is not consistent there",
            handoff.lsn
        ));
    }
    match slot.confirmed_flush_lsn {
        None => Err(format!(
            "slot {} has no confirmed_flush_lsn (not a logical slot?)",
            slot.name
        )),
        Some(confirmed) if confirmed > handoff.lsn => Err(format!(
            "slot {} has confirmed_flush_lsn {confirmed}, past the handoff LSN {}: the transactions committed between them are in neither the copy nor the slot and would be lost without any error (the slot was created after the snapshot). Abort this migration (`pgseal migrate abort`) and start again",
            slot.name, handoff.lsn
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(confirmed: u64) -> SlotState {
        SlotState {
            name: "pgseal_m1".into(),
            slot_type: "logical".into(),
            database: Some("postgres".into()),
            active: false,
            active_pid: None,
            restart_lsn: Some(Lsn(confirmed)),
            confirmed_flush_lsn: Some(Lsn(confirmed)),
            wal_status: Some("reserved".into()),
            retained_bytes: Some(0),
        }
    }

    fn handoff(lsn: u64, redo: u64) -> Handoff {
        Handoff {
            lsn: Lsn(lsn),
            redo_done_at: Some(Lsn(redo)),
            backup_end_lsn: Some(Lsn(redo)),
        }
    }

    #[test]
    fn guards_pass_only_when_the_slot_is_not_past_the_handoff_and_redo_is_below_it() {
        assert!(check_guards(&handoff(1000, 900), &slot(800)).is_ok());
        assert!(check_guards(&handoff(1000, 900), &slot(1000)).is_ok());
        let late = check_guards(&handoff(1000, 900), &slot(1001)).unwrap_err();
        assert!(late.contains("would be lost"), "{late}");
        let twice = check_guards(&handoff(900, 900), &slot(800)).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
    }
}
