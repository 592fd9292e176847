//! The full-load strategy's own steps: an empty encrypted target of the chosen major
//! version, the roles and schema copied with the source's own `pg_dumpall`/`pg_dump`,
//! every table copied by pgseal's own parallel `COPY` under one snapshot per database
//! ([`copy`]), and the rest of the schema built once the data is in. The steps it shares
//! with the snapshot strategy (preflight, the source's publications, the subscriptions,
//! enabling them, replicating) live in the engine itself; after `start`, its phases are
//! pgseal's own (the [`Strategy`] trait's provided methods).
//!
//! Why nothing is lost or doubled between the copy and the stream (docs/migration.md):
//! each stream's slot is made by the copy, with its snapshot exported, and the copy reads
//! under that snapshot; the subscription (`copy_data = false`, made before on that slot's
//! name) is enabled once the copy is whole. A commit before the slot's consistent point is
//! in the copy, one after it comes through the slot: never both, never neither.
//!
//! DDL would race the copy (a table copied in its old shape, its changes arriving in the
//! new one), so the source holds DDL from `prepare_source` until the post-data is built;
//! then the target replays what the source captures (pgseal_pg::ddl).

mod copy;
mod pre_data;

pub use copy::DEFAULT_SPLIT_BYTES;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use pgseal_exec::{ExternalCommand, MemoryFile};
use pgseal_pg::replication::{self, quote_ident, quote_literal};
use pgseal_platform::{InstanceStatus, NewInstance, Platform};
use serde_json::json;
use tokio_postgres::{Client, Statement};

use super::{Strategy, not_its_step};
use crate::engine::{Engine, Event, StepResult};
use crate::error::{EngineError, platform_error, sql};
use crate::journal::INSTANCE;
use crate::steps::{Step, StrategyKind, test_hook};

/// A source whose tables of 2 MB and more ([`copy::SMALL_TABLE_BYTES`], the ones the copy
/// writes without WAL at `minimal`) add up to this much is loaded onto a target at
/// `wal_level = minimal`; any other onto `logical` from the start (no restart).
const MINIMAL_WAL_FROM_BYTES: i64 = 256 << 20;

/// Lag (bytes) under which a full-load target counts as replicating.
const REPLICATING_LAG_BYTES: i64 = 64 << 20;

/// A table's key (primary key, unique or exclusion constraint), built on the target as
/// soon as the table's copy is done: the apply needs it to find the row an UPDATE or
/// DELETE names. Built before the copy instead, keys made the copy of a pgbench scale-50
/// table twice as slow (docs/migration.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TableKey {
    /// `schema.table`, as `pg_publication_tables` names it (unquoted).
    table: String,
    /// The schema and table, unquoted.
    schema_name: String,
    table_name: String,
    /// The constraint's name.
    constraint: String,
    /// `ALTER TABLE ONLY ... ADD CONSTRAINT ...`, from the source's catalog.
    sql: String,
}

/// The keys of the tables a publication publishes, read from the source's catalog (no
/// lock on any table). Partitions have their own; a partitioned parent's (not published
/// itself) is built with the rest of the post-data.
async fn table_keys(
    source: &Client,
    publication: &str,
) -> Result<Vec<TableKey>, tokio_postgres::Error> {
    let rows = source
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), n.nspname::text, c.relname::text, \
                    k.conname::text, \
                    format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s', n.nspname, c.relname, \
                           k.conname, pg_get_constraintdef(k.oid)) \
             FROM pg_publication_tables p \
             JOIN pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x') \
             WHERE p.pubname = $1 ORDER BY 1, 4",
            &[&publication],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableKey {
            table: r.get(0),
            schema_name: r.get(1),
            table_name: r.get(2),
            constraint: r.get(3),
            sql: r.get(4),
        })
        .collect())
}

/// The `application_name` of the schema step's `pg_restore` sessions on the target.
const PRE_DATA_APPLICATION: &str = "pgseal_pre_data";

/// The `application_name` of post-data's `pg_restore` sessions on the target.
const POST_DATA_APPLICATION: &str = "pgseal_post_data";

/// The full-load strategy (`--strategy full-load`).
#[derive(Debug, Clone, Copy)]
pub struct FullLoad;

impl Strategy for FullLoad {
    async fn run_step<P: Platform>(&self, engine: &Engine<'_, P>, step: Step) -> StepResult {
        match step {
            Step::Preflight => engine.preflight().await,
            // The copy makes the slots; DDL is held until the tables are copied (see the
            // module's documentation).
            Step::PrepareSource => engine.prepare_source(true).await,
            Step::CreateTarget => engine.create_target().await,
            Step::Schema => engine.schema().await,
            Step::Subscription => {
                engine.full_load_subscription_recorded().await?;
                engine.subscription().await
            }
            Step::Enable => engine.enable().await,
            Step::InitialCopy => engine.initial_copy().await,
            Step::PostData => engine.post_data().await,
            Step::Replicating => {
                let (mut outputs, summary) = engine.replicating().await?;
                let lag = engine.wait_caught_up().await?;
                outputs["lag_bytes"] = json!(lag);
                Ok((outputs, format!("{summary}, {} KiB behind", lag >> 10)))
            }
            other => Err(not_its_step(StrategyKind::FullLoad, other)),
        }
    }
}

impl<P: Platform> Engine<'_, P> {
    /// The source's and the target's major versions, as preflight recorded them.
    fn majors(&self) -> Result<(u32, u32), EngineError> {
        let outputs = self
            .journal
            .outputs(&self.spec.name, Step::Preflight)?
            .ok_or_else(|| EngineError::Precondition("preflight has no outputs".into()))?;
        let major = |field: &str| outputs["report"][field].as_u64().map(|v| v as u32);
        match (major("source_major"), major("target_major")) {
            (Some(s), Some(t)) => Ok((s, t)),
            _ => Err(EngineError::Precondition(
                "the journal's preflight report has no versions: the journal was edited?".into(),
            )),
        }
    }

    /// A client program (`pg_dump`, `pg_dumpall`, `pg_restore`, `psql`) not older than
    /// the source.
    fn tool(&self, name: &str) -> Result<PathBuf, EngineError> {
        let (source_major, _) = self.majors()?;
        self.surroundings
            .client_tools
            .client_tool(name, source_major)
            .ok_or_else(|| {
                EngineError::Precondition(format!(
                    "no {name} of PostgreSQL {source_major} or newer is installed (installed: {}); install postgresql-client-{source_major}",
                    self.surroundings
                        .client_tools
                        .majors()
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    async fn source_config(&self, database: &str) -> Result<tokio_postgres::Config, EngineError> {
        crate::sessions::source_db_config(self.platform, &self.spec, database).await
    }

    async fn target_config(&self, database: &str) -> Result<tokio_postgres::Config, EngineError> {
        crate::sessions::instance_config(self.platform, &self.spec.target, database, "target").await
    }

    /// Runs `program` against `config`'s server (its connection in the environment, never
    /// the arguments; `None` for a program that connects to none) with `input`; returns
    /// its stdout. The program dies with pgseal (a killed `migrate` leaves no restore
    /// running on behind `resume`).
    async fn run_tool(
        &self,
        program: &str,
        args: &[&str],
        config: Option<&tokio_postgres::Config>,
        input: ToolInput<'_>,
    ) -> Result<Vec<u8>, EngineError> {
        let ToolInput { stdin, env, files } = input;
        let mut cmd = ExternalCommand::new(self.tool(program)?)
            .args(args)
            .die_with_parent();
        for file in &files {
            cmd = cmd.memory_file(file);
        }
        let connection = config.map(pgseal_pg::libpq_env).unwrap_or_default();
        for (key, value) in connection.into_iter().chain(env) {
            cmd = cmd.env(key, value);
        }
        if let Some(bytes) = stdin {
            cmd = cmd.stdin_bytes(bytes);
        }
        let what = match config {
            Some(config) => format!(
                "{program} {} ({})",
                args.join(" "),
                pgseal_pg::describe_target(config)
            ),
            None => format!("{program} {}", args.join(" ")),
        };
        let out = tokio::task::spawn_blocking(move || cmd.run())
            .await
            .map_err(|e| EngineError::Precondition(format!("{what} did not finish: {e}")))?
            .map_err(|e| EngineError::Tool { what, source: e })?;
        Ok(out.stdout)
    }

    /// How many sessions copy and build at once: `--jobs`, by default this machine's cores.
    fn jobs(&self) -> usize {
        self.spec.copy_jobs.map_or_else(
            || std::thread::available_parallelism().map_or(2, usize::from),
            |j| j as usize,
        )
    }

    /// Builds the pre-data entries of `archive` on the target's database `database`: up to
    /// `jobs` `pg_restore` sessions at once where the archive's dependencies allow it
    /// ([`pre_data`]), each entry committed on its own without waiting for the disk; then
    /// one commit that waits, so all of it is durable. Not one transaction: that would
    /// hold a lock on every table it makes until it ends, and with thousands of tables run
    /// out of the lock table (`max_locks_per_transaction`). Its caller makes the database
    /// anew when it runs again. Returns the most sessions that ran at once.
    async fn build_pre_data(
        &self,
        database: &str,
        archive: &[u8],
        jobs: usize,
    ) -> Result<usize, EngineError> {
        // The section's entries; then every entry with its dependencies (`-v` lists
        // them all, whatever the section).
        let section = self
            .read_archive(archive, &["-l", "--section=pre-data"])
            .await?;
        let listing = self.read_archive(archive, &["-l", "-v"]).await?;
        let entries = pre_data::parse(
            &String::from_utf8_lossy(&listing),
            &String::from_utf8_lossy(&section),
        );
        let rounds = pre_data::rounds(&entries, jobs);
        tracing::debug!(
            database,
            entries = entries.len(),
            rounds = rounds.len(),
            sessions = rounds.iter().map(Vec::len).sum::<usize>(),
            "building the pre-data"
        );
        let archive = in_memory("pre-data.archive", archive)?;
        let config = self.target_config(database).await?;
        for round in &rounds {
            let lists = round
                .iter()
                .map(|batch| in_memory("entries.list", (batch.join("\n") + "\n").as_bytes()))
                .collect::<Result<Vec<_>, _>>()?;
            futures_util::future::try_join_all(lists.iter().map(|list| {
                let list_arg = format!("--use-list={}", list.path());
                let archive_path = archive.path();
                let config = &config;
                let archive = &archive;
                async move {
                    self.run_tool(
                        "pg_restore",
                        &[
                            &format!("--dbname=application_name={PRE_DATA_APPLICATION}"),
                            "--exit-on-error",
                            "--no-tablespaces",
                            &list_arg,
                            &archive_path,
                        ],
                        Some(config),
                        ToolInput {
                            env: vec![("PGOPTIONS", "-c synchronous_commit=off".to_string())],
                            files: vec![list, archive],
                            ..ToolInput::default()
                        },
                    )
                    .await
                }
            }))
            .await?;
            if round.len() > 1 && test_hook("fail-parallel-pre-data") {
                return Err(EngineError::Precondition(
                    "test hook fail-parallel-pre-data: the pre-data's sessions side by side fail"
                        .into(),
                ));
            }
        }
        copy::flush_target(&self.target_db(database).await?).await?;
        Ok(rounds.iter().map(Vec::len).max().unwrap_or(0))
    }

    // Full load 3.
    async fn create_target(&self) -> StepResult {
        let target = &self.spec.target;
        let (_, target_major) = self.majors()?;
        // The source's schema is dumped meanwhile (the source holds DDL already): with
        // thousands of tables the dump is most of the next step, and the target's
        // creation is mostly its initdb, on the target's side.
        let (instance, ()) = tokio::join!(
            self.empty_target(target_major),
            self.prefetch_schema_archives()
        );
        let instance = instance?;
        if !instance.encrypted || instance.key_id.is_none() {
            return Err(EngineError::Precondition(format!(
                "target {} is NOT encrypted; refusing to go on",
                instance.name
            )));
        }
        if pgseal_pg::PgVersion::major_of(&instance.engine_version) != Some(target_major) {
            return Err(EngineError::Precondition(format!(
                "target {} runs PostgreSQL {}, not the {target_major} asked for",
                instance.name, instance.engine_version
            )));
        }
        let summary = format!(
            "{target}, empty, PostgreSQL {}, encrypted under {}",
            instance.engine_version,
            instance.key_id.as_deref().unwrap_or("?")
        );
        Ok((json!({ "instance": instance }), summary))
    }

    /// The empty target: the one an earlier run made, or a new one (again, where an
    /// earlier run's creation was interrupted).
    async fn empty_target(
        &self,
        target_major: u32,
    ) -> Result<pgseal_platform::Instance, EngineError> {
        let target = &self.spec.target;
        Ok(match self.existing_target().await? {
            Some(i) if i.status == InstanceStatus::Available => i,
            Some(i) => {
                // A creation that was interrupted: start again.
                self.remove_interrupted_target(&i, "creation").await?;
                self.create_new_target(target_major).await?
            }
            None => {
                self.journal
                    .add_resource(&self.spec.name, "instance", INSTANCE, target)?;
                self.create_new_target(target_major).await?
            }
        })
    }

    /// Takes every database's schema archive ([`Self::schema_archive`]) for the steps
    /// after this one. A failure is left for the schema step, which dumps again and
    /// reports it.
    async fn prefetch_schema_archives(&self) {
        let Ok(streams) = self.streams() else { return };
        for s in &streams {
            if let Err(e) = self.schema_archive(&s.database).await {
                tracing::debug!(
                    database = %s.database,
                    error = %crate::error::error_chain(&e),
                    "schema archive not taken beside the target's creation"
                );
                return;
            }
        }
    }

    /// `database`'s schema archive: its pre- and post-data sections in one `pg_dump -Fc`
    /// (definitions and `REFRESH MATERIALIZED VIEW` statements, no row values; with
    /// `--schema-only` every materialized view would stay unpopulated), the one this run
    /// took already or a new one. One dump serves the schema and the post-data steps: the
    /// source holds DDL from `prepare_source` until the post-data is built, so the
    /// catalog it read stays as it was. In memory only.
    async fn schema_archive(&self, database: &str) -> Result<Arc<Vec<u8>>, EngineError> {
        let taken = self
            .schema_archives
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(database)
            .cloned();
        if let Some(archive) = taken {
            return Ok(archive);
        }
        let source = self.source_config(database).await?;
        let archive = Arc::new(
            self.run_tool(
                "pg_dump",
                &[
                    "--section=pre-data",
                    "--section=post-data",
                    "--no-subscriptions",
                    "-Fc",
                ],
                Some(&source),
                ToolInput::default(),
            )
            .await?,
        );
        self.schema_archives
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(database.to_string(), Arc::clone(&archive));
        Ok(archive)
    }

    /// Runs `pg_restore` with `args` over `archive` (fed on its stdin) and returns what it
    /// writes: a script (`-f -`) or the archive's entries (`-l`). No connection.
    async fn read_archive(&self, archive: &[u8], args: &[&str]) -> Result<Vec<u8>, EngineError> {
        self.run_tool(
            "pg_restore",
            args,
            None,
            ToolInput {
                stdin: Some(archive.to_vec()),
                ..ToolInput::default()
            },
        )
        .await
    }

    /// Creates the empty target with the settings replication needs: `wal_level=logical`
    /// (rollback replicates back from it), the source's slot and sender limits, an apply
    /// worker for every stream, and a `max_wal_size` for loading.
    async fn create_new_target(
        &self,
        major: u32,
    ) -> Result<pgseal_platform::Instance, EngineError> {
        let streams = self.streams()?.len() as i64;
        let source = self.source().await?;
        let row = source
            .query_one(
                "SELECT current_setting('max_replication_slots')::bigint, \
                        current_setting('max_wal_senders')::bigint, \
                        (SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database), \
                        current_setting('max_locks_per_transaction')::bigint",
                &[],
            )
            .await
            .map_err(sql("source", "reading replication limits"))?;
        let (max_slots, max_senders, source_bytes, max_locks): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // What `minimal` keeps out of WAL: the tables the copy empties in its own
        // transaction (2 MB and more, by the statistics), in every database it copies.
        let mut emptied_bytes = 0i64;
        for s in &self.streams()? {
            let row = self
                .source_db(&s.database)
                .await?
                .query_one(
                    "SELECT coalesce(sum(c.relpages::bigint), 0)::bigint \
                            * current_setting('block_size')::bigint FROM pg_class c \
                     WHERE c.relkind = 'r' AND c.relpages::bigint * current_setting('block_size')::bigint >= $1 \
                       AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)",
                    &[&copy::SMALL_TABLE_BYTES],
                )
                .await
                .map_err(sql("source", "reading the tables' sizes"))?;
            emptied_bytes += row.get::<_, i64>(0);
        }
        // One apply worker per stream (pgseal copies the tables itself), and room for the
        // reverse replication's own slots and senders at cutover.
        let workers = streams + 2;
        // While it loads, nothing replicates out of the target: a table copied or an index
        // built in the transaction that made (or emptied) it writes no WAL at `minimal`.
        // Post-data then sets `logical` (rollback replicates back out of it), which takes
        // a restart, whose shutdown checkpoint syncs every file the load made: when
        // little is kept out of WAL that costs more than it saved (2,000 small tables:
        // 2.3 s). (Tests of small sources load at `minimal` through the test hook.)
        let minimal = emptied_bytes >= MINIMAL_WAL_FROM_BYTES || test_hook("minimal-wal");
        let (wal_level, senders) = if minimal {
            ("minimal", 0)
        } else {
            ("logical", max_senders.max(10))
        };
        let params: BTreeMap<String, String> = [
            ("wal_level", wal_level.to_string()),
            ("max_replication_slots", max_slots.max(10).to_string()),
            ("max_wal_senders", senders.to_string()),
            // A source with many tables may have its lock table raised (pg_dump locks
            // every table it dumps): the target, holding the same tables, gets as much.
            ("max_locks_per_transaction", max_locks.max(64).to_string()),
            ("max_logical_replication_workers", workers.to_string()),
            ("max_worker_processes", (workers + 8).to_string()),
            // Fewer checkpoints (and full-page images) while the tables load, as the
            // PostgreSQL documentation advises for bulk loads; the volume has room.
            ("max_wal_size", "4GB".to_string()),
            ("wal_buffers", "32MB".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let spec = NewInstance {
            name: self.spec.target.clone(),
            port: self.spec.target_port,
            // Room for the loaded copy, its indexes and the WAL of loading them.
            storage_bytes: Some(((source_bytes.max(0) as u64) * 2 + (1 << 30)).max(10 << 30)),
            encryption_key: Some(self.spec.key.clone()),
            params,
            engine_version: Some(major),
        };
        self.platform
            .create_instance(&spec)
            .await
            .map_err(platform_error("creating the empty encrypted target"))
    }

    // Full load 4.
    async fn schema(&self) -> StepResult {
        let streams = self.streams()?;
        let home = self.source().await?;
        let admin = self.target_db("template1").await?;
        // Roles and memberships first (the schema names them), with their passwords'
        // verifiers where the source lets pgseal read them; the databases' own
        // properties once their schema is whole (post-data).
        let roles = pgseal_pg::globals::sync(&home, &admin, &[], &self.carrying())
            .await
            .map_err(|e| {
                EngineError::Precondition(format!(
                    "copying the roles: {}",
                    crate::error::error_chain(&e)
                ))
            })?;
        let readable = pgseal_pg::globals::read(&home, &[])
            .await
            .map_err(sql("source", "reading the roles"))?
            .passwords_readable;
        let mut loaded = Vec::new();
        for s in &streams {
            self.create_database(&home, &admin, &s.database).await?;
            let archive = self.schema_archive(&s.database).await?;
            let jobs = self.jobs();
            let sessions = match self.build_pre_data(&s.database, &archive, jobs).await {
                Ok(sessions) => sessions,
                Err(e) if jobs == 1 => return Err(e),
                Err(e) => {
                    // Sessions side by side that the archive's dependencies did not keep
                    // apart (a lock taken in another order): once more, in one session.
                    tracing::warn!(
                        database = %s.database,
                        error = %crate::error::error_chain(&e),
                        "the pre-data built in parallel failed; building it again in one session"
                    );
                    self.create_database(&home, &admin, &s.database).await?;
                    self.build_pre_data(&s.database, &archive, 1).await?
                }
            };
            let session = self.source_db(&s.database).await?;
            let keys = table_keys(&session, &s.name)
                .await
                .map_err(sql("source", "reading the tables' keys"))?;
            loaded.push(json!({
                "database": s.database, "keys": keys, "pre_data_sessions": sessions,
            }));
        }
        let made = roles.iter().filter(|d| d.detail == "missing").count();
        let summary = format!(
            "{made} role(s) copied ({}), {} database(s): schema before the data loaded",
            if readable {
                "with their password verifiers"
            } else {
                "without passwords: the source does not let pgseal read them; set them on the target"
            },
            loaded.len()
        );
        Ok((
            json!({
                "roles": made,
                "passwords_copied": readable,
                "carried": roles.iter().map(pgseal_pg::globals::Difference::summary).collect::<Vec<_>>(),
                "databases": loaded,
            }),
            summary,
        ))
    }

    /// How roles are carried to the target: every password pgseal can read; the
    /// target's master user keeps the password the platform gave it unless the source's
    /// has one.
    fn carrying(&self) -> pgseal_pg::globals::DiffOptions {
        pgseal_pg::globals::DiffOptions::default()
    }

    /// (Re)creates `database` on the target (`admin`: a session on its `template1`) as the
    /// source (`source`) has it (encoding, collation, owner): the target is new and holds
    /// no data yet, so a half-loaded database from an interrupted run is simply made again.
    async fn create_database(
        &self,
        source: &Client,
        admin: &Client,
        database: &str,
    ) -> Result<(), EngineError> {
        let row = source
            .query_one(
                "SELECT pg_encoding_to_char(encoding), datcollate::text, datctype::text, \
                        pg_get_userbyid(datdba)::text \
                 FROM pg_database WHERE datname = $1",
                &[&database],
            )
            .await
            .map_err(sql("source", format!("reading database {database}")))?;
        let (encoding, collate, ctype, owner): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let ident = quote_ident(database);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"))
            .await
            .map_err(sql("target", format!("dropping database {database}")))?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {ident} WITH TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {} OWNER {}",
                quote_literal(&encoding),
                quote_literal(&collate),
                quote_literal(&ctype),
                quote_ident(&owner)
            ))
            .await
            .map_err(sql("target", format!("creating database {database}")))
    }

    /// Ends the target's sessions that an earlier, killed run's `pg_restore` left
    /// building, and waits until they are gone. Its program dies with pgseal, but the
    /// server runs each session's statement on to its end (a foreign key's check over
    /// millions of rows), and one that committed after the check of what is built would
    /// be built twice ("constraint ... already exists", caught by the random kills of
    /// the full-load test). Ended, its transaction rolls back: what exists is what was
    /// committed.
    async fn end_earlier_post_data(&self) -> Result<(), EngineError> {
        let admin = self.target_db("template1").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&POST_DATA_APPLICATION],
                )
                .await
                .map_err(sql("target", "ending an earlier run's post-data sessions"))?
                .len();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EngineError::Precondition(format!(
                    "{left} session(s) of an earlier post-data run on the target did not end within 30 s"
                )));
            }
            tracing::info!(
                sessions = left,
                "ending an earlier run's post-data sessions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The post-data part of `database`'s schema on the source: its schema archive
    /// ([`Self::schema_archive`]) and the archive's post-data entries (`pg_restore -l`
    /// lines), without pgseal's own publications.
    async fn post_data_schema(&self, database: &str) -> Result<PostData, EngineError> {
        let archive = self.schema_archive(database).await?;
        let list = self
            .read_archive(&archive, &["-l", "--section=post-data"])
            .await?;
        let entries: Vec<(String, TocEntry)> = String::from_utf8_lossy(&list)
            .lines()
            .filter_map(|line| TocEntry::parse(line).map(|e| (line.to_string(), e)))
            .filter(|(_, e)| !(e.desc.starts_with("PUBLICATION") && e.tag.starts_with("pgseal_")))
            // The DDL capture's event triggers are the source's (the target replays).
            .filter(|(_, e)| !(e.desc == "EVENT TRIGGER" && e.tag.starts_with("pgseal_ddl_")))
            .collect();
        tracing::debug!(database, entries = entries.len(), "post-data entries");
        Ok(PostData { archive, entries })
    }

    /// Builds the entries of `post` on the target's `database`, `--jobs` at a time,
    /// leaving out what is there already; returns how many were built.
    async fn build_entries(
        &self,
        database: &str,
        target: &Client,
        post: &PostData,
    ) -> Result<usize, EngineError> {
        let source = self.source_db(database).await?;
        // Every entry's questions at once, pipelined on each session, each kind's question
        // prepared once: with thousands of tables, one round trip (then one parse) after
        // another was most of this step.
        let mut used: Vec<&'static IdentityKind> =
            post.entries.iter().filter_map(|(_, e)| e.kind()).collect();
        used.sort_by_key(|k| k.catalog);
        used.dedup_by_key(|k| k.catalog);
        let names = prepare_kinds(&source, &used, IdentityKind::names)
            .await
            .map_err(sql("source", "naming schema objects"))?;
        let exists = prepare_kinds(target, &used, IdentityKind::exists)
            .await
            .map_err(sql("target", "checking built objects"))?;
        let identities =
            futures_util::future::try_join_all(post.entries.iter().map(|(_, entry)| async {
                match entry.kind() {
                    Some(kind) => {
                        entry
                            .identity_on(&source, kind, &names[&kind.catalog])
                            .await
                    }
                    None => Ok(None),
                }
            }))
            .await
            .map_err(sql("source", "naming a schema object"))?;
        let built = futures_util::future::try_join_all(identities.iter().map(|identity| async {
            match identity {
                Some(identity) => {
                    identity
                        .exists_on(target, &exists[&identity.kind.catalog])
                        .await
                }
                None => Ok(false),
            }
        }))
        .await
        .map_err(sql("target", "checking built objects"))?;
        let missing: Vec<String> = post
            .entries
            .iter()
            .zip(built)
            .filter(|(_, built)| !built)
            .map(|((line, _), _)| line.clone())
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        // pg_restore builds in parallel only from an archive file it can seek in: the
        // archive (schema only, no row values) and the list are files in memory, gone
        // with pgseal however it ends.
        let list = in_memory("entries.list", (missing.join("\n") + "\n").as_bytes())?;
        let archive = in_memory("post-data.archive", &post.archive)?;
        let list_arg = format!("--use-list={}", list.path());
        let jobs = self.jobs();
        let config = self.target_config(database).await?;
        // Each entry in a transaction of its own, `jobs` at a time in dependency order,
        // as `pg_restore -j` restores any archive: indexes and constraints of different
        // tables at once, a foreign key after the keys it needs. After a crash, `resume`
        // leaves out what was built (above). The connection string names no database,
        // so libpq takes it from the environment with the rest of the connection.
        let options = format!(
            "-c maintenance_work_mem={}MB",
            copy::maintenance_work_mem_mib(jobs)
        );
        self.run_tool(
            "pg_restore",
            &[
                &format!("--dbname=application_name={POST_DATA_APPLICATION}"),
                "--jobs",
                &jobs.to_string(),
                "--exit-on-error",
                "--no-tablespaces",
                &list_arg,
                &archive.path(),
            ],
            Some(&config),
            ToolInput {
                env: vec![("PGOPTIONS", options)],
                files: vec![&list, &archive],
                ..ToolInput::default()
            },
        )
        .await?;
        Ok(missing.len())
    }

    /// Full load 5: the subscription is recorded before it is made, so that abort drops
    /// it from the target first.
    async fn full_load_subscription_recorded(&self) -> Result<(), EngineError> {
        for s in &self.streams()? {
            self.journal
                .add_resource(&self.spec.name, "subscription", &s.database, &s.name)?;
        }
        Ok(())
    }

    // Full load 6: every database's tables copied under its slot's snapshot, one
    // database after another, each by `--jobs` workers.
    async fn initial_copy(&self) -> StepResult {
        let streams = self.streams()?;
        let schema = self
            .journal
            .outputs(&self.spec.name, Step::Schema)?
            .ok_or_else(|| EngineError::Precondition("step schema has no outputs".into()))?;
        let mut keys: HashMap<String, Vec<TableKey>> = HashMap::new();
        for db in schema["databases"].as_array().into_iter().flatten() {
            let database = db["database"].as_str().unwrap_or_default().to_string();
            let listed: Vec<TableKey> =
                serde_json::from_value(db["keys"].clone()).map_err(|e| {
                    EngineError::Precondition(format!(
                        "the journal's schema.keys cannot be read ({e})"
                    ))
                })?;
            keys.insert(database, listed);
        }
        let jobs = self.jobs();
        let split = self
            .spec
            .split_tables_larger_than
            .unwrap_or(DEFAULT_SPLIT_BYTES);
        let started = Instant::now();
        let mut done = Vec::new();
        for s in &streams {
            let mine = keys.get(&s.database).map(Vec::as_slice).unwrap_or_default();
            done.push(self.copy_database(s, mine, jobs, split).await?);
        }
        let tables: Vec<serde_json::Value> = done
            .iter()
            .flat_map(|d| d["tables"].as_array().cloned().unwrap_or_default())
            .collect();
        let sum = |field: &str| done.iter().filter_map(|d| d[field].as_u64()).sum::<u64>();
        let (rows, bytes, keys_built) = (sum("rows"), sum("bytes"), sum("keys"));
        let seconds = started.elapsed().as_secs_f64();
        let summary = format!(
            "{} table(s) copied under each database's snapshot by {jobs} worker(s): {rows} rows, {} MiB of COPY data in {seconds:.1} s, {keys_built} key(s) built after each table's copy",
            tables.len(),
            bytes >> 20,
        );
        Ok((
            json!({
                "tables": tables, "rows": rows, "bytes": bytes, "seconds": seconds,
                "keys_built": keys_built, "jobs": jobs, "split_bytes": split,
                "databases": done.iter().map(|d| json!({
                    "database": d["database"], "consistent_point": d["consistent_point"],
                    "workers": d["workers"], "seconds": d["seconds"],
                })).collect::<Vec<_>>(),
            }),
            summary,
        ))
    }

    // Full load 8.
    async fn post_data(&self) -> StepResult {
        self.target_up().await?;
        self.end_earlier_post_data().await?;
        let mut done = Vec::new();
        for s in &self.streams()? {
            let post = self.post_data_schema(&s.database).await?;
            let target = self.target_db(&s.database).await?;
            // Each entry is built in a transaction of its own, several at once; what is
            // there (the keys built during the copy, what a crashed run built) is not made
            // again.
            let started = Instant::now();
            let built = self.build_entries(&s.database, &target, &post).await?;
            // The schema is whole: DDL from now on streams to the target and is replayed
            // there. The replay first, then the source's hold lifted (pgseal_pg::ddl);
            // lifted before the post-data was built, a DROP of an index not built yet
            // would stop the apply.
            pgseal_pg::ddl::install_replay(&target)
                .await
                .map_err(sql("target", "installing the DDL replay"))?;
            let source = self.source_db(&s.database).await?;
            let released = pgseal_pg::ddl::lift_hold(&source)
                .await
                .map_err(sql("source", "lifting the DDL hold"))?;
            done.push(json!({
                "database": s.database, "entries": built,
                "already_there": post.entries.len() - built,
                "seconds": started.elapsed().as_secs_f64(),
                "ddl_released": released,
            }));
        }
        // The databases' own properties (owner, privileges, comment, `ALTER DATABASE ...
        // SET`, `ALTER ROLE ... IN DATABASE ... SET`), now that nothing of pgseal's own
        // loading runs there any more (a statement_timeout set on a database would hold
        // for its index builds too).
        let dbs: Vec<String> = self.streams()?.iter().map(|s| s.database.clone()).collect();
        let carried = pgseal_pg::globals::sync(
            &self.source().await?,
            &self.target_db("template1").await?,
            &dbs,
            &self.carrying(),
        )
        .await
        .map_err(|e| {
            EngineError::Precondition(format!(
                "copying the databases' properties: {}",
                crate::error::error_chain(&e)
            ))
        })?;
        let entries: u64 = done.iter().filter_map(|d| d["entries"].as_u64()).sum();
        let restarted = self.target_replicates_out().await?;
        Ok((
            json!({
                "databases": done,
                "carried": carried.iter().map(pgseal_pg::globals::Difference::summary).collect::<Vec<_>>(),
                "target_restarted_for_wal_level": restarted,
            }),
            format!(
                "{entries} index(es), constraint(s), trigger(s) and other post-data entries built; DDL on the source carried from here on{}",
                if restarted {
                    "; the target restarted at wal_level=logical"
                } else {
                    ""
                }
            ),
        ))
    }

    /// Waits (up to 2 min) until the target takes connections. A `migrate` killed while
    /// this step restarted the target leaves it stopped (the stop done, the start never
    /// run) or still stopping: a stopped target is started again, as the restart meant to.
    async fn target_up(&self) -> Result<(), EngineError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let failed = match self.target_db("template1").await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let instance = self
                .platform
                .describe_instance(&self.spec.target)
                .await
                .map_err(platform_error("describing the target"))?;
            if instance.status == InstanceStatus::Stopped {
                tracing::warn!(target = %instance.name, "target stopped (a restart was cut short): starting it");
                self.platform
                    .reboot_instance(&self.spec.target)
                    .await
                    .map_err(platform_error("starting the target again"))?;
            } else if Instant::now() > deadline {
                return Err(failed);
            } else {
                tracing::debug!(error = %failed, "waiting for the target to take connections");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// The target set to `wal_level=logical` with the source's sender limit (at least
    /// 10), restarted if it was loading at `minimal`: a rollback replicates back out of it.
    /// Returns whether it restarted.
    async fn target_replicates_out(&self) -> Result<bool, EngineError> {
        let senders: i64 = self
            .source()
            .await?
            .query_one("SELECT current_setting('max_wal_senders')::bigint", &[])
            .await
            .map_err(sql("source", "reading max_wal_senders"))?
            .get(0);
        let target = self.target_db("template1").await?;
        let row = target
            .query_one(
                "SELECT current_setting('wal_level') = 'logical', \
                        current_setting('max_wal_senders')::bigint >= $1",
                &[&senders.max(10)],
            )
            .await
            .map_err(sql("target", "reading wal_level"))?;
        if row.get::<_, bool>(0) && row.get::<_, bool>(1) {
            // Made at `logical` (a small source): nothing to change.
            return Ok(false);
        }
        let params: BTreeMap<String, String> = [
            ("wal_level".to_string(), "logical".to_string()),
            ("max_wal_senders".to_string(), senders.max(10).to_string()),
        ]
        .into();
        let changed = self
            .platform
            .set_params(&self.spec.target, &params, true)
            .await
            .map_err(platform_error(
                "setting wal_level=logical on the target once it is loaded",
            ))?;
        Ok(changed.restarted)
    }

    /// Full load 9's extra condition: every stream's lag under
    /// [`REPLICATING_LAG_BYTES`] (the backlog of the copy applied).
    async fn wait_caught_up(&self) -> Result<i64, EngineError> {
        let source = self.source().await?;
        let streams = self.streams()?;
        let mut last_report = Instant::now();
        loop {
            self.journal
                .record_samples(&self.spec.name, &source, &streams)
                .await;
            let now = replication::current_wal_lsn(&source)
                .await
                .map_err(sql("source", "reading the WAL position"))?;
            let mut worst = 0i64;
            for s in &streams {
                let confirmed = replication::slot(&source, &s.name)
                    .await
                    .map_err(sql("source", "reading the slot"))?
                    .ok_or_else(|| {
                        EngineError::Precondition(format!(
                            "slot {} ({}) is gone from the source; abort this migration",
                            s.name, s.database
                        ))
                    })?
                    .confirmed_flush_lsn;
                // A slot that has confirmed nothing yet counts as behind.
                let lag = confirmed.map_or(i64::MAX, |c| now.0.saturating_sub(c.0) as i64);
                worst = worst.max(lag);
            }
            if worst < REPLICATING_LAG_BYTES {
                return Ok(worst);
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                (self.observer)(&Event::Waiting {
                    step: Step::Replicating,
                    what: format!("catching up: {} MiB behind", worst >> 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A file in memory (an archive, a list of its entries), gone with pgseal however it ends.
fn in_memory(name: &str, bytes: &[u8]) -> Result<MemoryFile, EngineError> {
    MemoryFile::new(name, bytes)
        .map_err(|e| EngineError::Precondition(format!("cannot make a file in memory: {e}")))
}

/// What a tool gets besides its arguments and its connection.
#[derive(Default)]
struct ToolInput<'a> {
    /// Fed to its stdin (else it reads nothing).
    stdin: Option<Vec<u8>>,
    /// More variables in its environment.
    env: Vec<(&'static str, String)>,
    /// Files in memory it opens by path.
    files: Vec<&'a MemoryFile>,
}

/// A database's post-data schema: the archive and its entries (line, parsed).
struct PostData {
    archive: Arc<Vec<u8>>,
    entries: Vec<(String, TocEntry)>,
}

/// One line of `pg_restore -l`: `ID; TABLEOID OID DESC NAMESPACE TAG OWNER`. The tag is
/// ambiguous where names hold spaces; the source's catalog, by `TABLEOID OID`, is not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TocEntry {
    catalog: u32,
    oid: u32,
    desc: String,
    tag: String,
}

/// Entry types of more than one word.
const TWO_WORD_DESCS: &[&str] = &[
    "FK CONSTRAINT",
    "CHECK CONSTRAINT",
    "INDEX ATTACH",
    "EVENT TRIGGER",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "DEFAULT ACL",
    "MATERIALIZED VIEW DATA",
    "ROW SECURITY",
];

/// A schema object by name, as a post-data entry makes it: what it is (its catalog), its
/// schema, table and own name (empty where the kind has none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectIdentity {
    kind: &'static IdentityKind,
    schema: String,
    table: String,
    name: String,
}

/// How one kind of post-data object is named on the source (by the entry's oid) and found
/// on the target (by those names): schema, table and own name, empty where it has none.
#[derive(Debug, PartialEq, Eq)]
struct IdentityKind {
    /// The catalog the archive names the entry by (`pg_restore -l`'s TABLEOID).
    catalog: u32,
    /// The entry types that make such an object (`ROW SECURITY` and `MATERIALIZED VIEW
    /// DATA` name a pg_class oid too: a table's, which is there already).
    descs: &'static [&'static str],
    naming: Naming,
}

/// The statements that name an object and find it again.
#[derive(Debug, PartialEq, Eq)]
enum Naming {
    /// An object of a table, in `catalog`: `table` is the column naming its table,
    /// `name` its own name's.
    OfTable {
        catalog: &'static str,
        table: &'static str,
        name: &'static str,
    },
    /// An object of a schema, in `catalog`: `namespace` is the column naming its schema,
    /// `name` its own name's.
    InSchema {
        catalog: &'static str,
        namespace: &'static str,
        name: &'static str,
    },
    /// An object of the database, in `catalog`, named by its column `name`.
    Global {
        catalog: &'static str,
        name: &'static str,
    },
    /// Its (schema, table, name) on the source from its oid `$1`; whether the target has
    /// it from `$1` schema, `$2` table, `$3` name.
    Own {
        names: &'static str,
        exists: &'static str,
    },
}

/// A named kind's statement parts: what to read from, its schema, table and name.
type Parts = (String, &'static str, &'static str, String);

impl IdentityKind {
    /// What to read from (the object as `x`), and its schema, table and name as
    /// expressions there (`''` where it has none); for [`Naming::Own`], its statements.
    fn parts(&self) -> Result<Parts, (&'static str, &'static str)> {
        Ok(match self.naming {
            Naming::OfTable {
                catalog,
                table,
                name,
            } => (
                format!(
                    "{catalog} x JOIN pg_class c ON c.oid = x.{table} \
                     JOIN pg_namespace n ON n.oid = c.relnamespace"
                ),
                "n.nspname",
                "c.relname",
                format!("x.{name}"),
            ),
            Naming::InSchema {
                catalog,
                namespace,
                name,
            } => (
                format!("{catalog} x JOIN pg_namespace n ON n.oid = x.{namespace}"),
                "n.nspname",
                "''",
                format!("x.{name}"),
            ),
            Naming::Global { catalog, name } => {
                (format!("{catalog} x"), "''", "''", format!("x.{name}"))
            }
            Naming::Own { names, exists } => return Err((names, exists)),
        })
    }

    /// The statement naming the object of oid `$1` on the source.
    fn names(&self) -> String {
        match self.parts() {
            Ok((from, schema, table, name)) => format!(
                "SELECT {schema}::text, {table}::text, {name}::text FROM {from} WHERE x.oid = $1"
            ),
            Err((names, _)) => names.to_string(),
        }
    }

    /// The statement saying whether the target has it (each name compared in its own
    /// type, so that the catalogs' indexes serve).
    fn exists(&self) -> String {
        match self.parts() {
            Ok((from, schema, table, name)) => format!(
                "SELECT EXISTS (SELECT 1 FROM {from} \
                 WHERE {schema} = $1 AND {table} = $2 AND {name} = $3)"
            ),
            Err((_, exists)) => exists.to_string(),
        }
    }
}

/// Every kind of post-data entry whose object can be found again: on `resume`, what is
/// there already is left out (a second `CREATE` of it would fail). The rest (comments,
/// grants, security labels, index attachments, `REFRESH MATERIALIZED VIEW`) can run twice.
const IDENTITY_KINDS: &[IdentityKind] = &[
    // pg_class: an index.
    IdentityKind {
        catalog: 1259,
        descs: &["INDEX"],
        naming: Naming::InSchema {
            catalog: "pg_class",
            namespace: "relnamespace",
            name: "relname",
        },
    },
    IdentityKind {
        catalog: 2606,
        descs: &["CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT"],
        naming: Naming::OfTable {
            catalog: "pg_constraint",
            table: "conrelid",
            name: "conname",
        },
    },
    IdentityKind {
        catalog: 2620,
        descs: &["TRIGGER"],
        naming: Naming::OfTable {
            catalog: "pg_trigger",
            table: "tgrelid",
            name: "tgname",
        },
    },
    IdentityKind {
        catalog: 2618,
        descs: &["RULE"],
        naming: Naming::OfTable {
            catalog: "pg_rewrite",
            table: "ev_class",
            name: "rulename",
        },
    },
    IdentityKind {
        catalog: 3256,
        descs: &["POLICY"],
        naming: Naming::OfTable {
            catalog: "pg_policy",
            table: "polrelid",
            name: "polname",
        },
    },
    IdentityKind {
        catalog: 3466,
        descs: &["EVENT TRIGGER"],
        naming: Naming::Global {
            catalog: "pg_event_trigger",
            name: "evtname",
        },
    },
    // pg_statistic_ext: CREATE STATISTICS.
    IdentityKind {
        catalog: 3381,
        descs: &["STATISTICS"],
        naming: Naming::InSchema {
            catalog: "pg_statistic_ext",
            namespace: "stxnamespace",
            name: "stxname",
        },
    },
    // pg_publication: the user's own publications (pgseal's are left out of the list).
    IdentityKind {
        catalog: 6104,
        descs: &["PUBLICATION"],
        naming: Naming::Global {
            catalog: "pg_publication",
            name: "pubname",
        },
    },
    // pg_publication_rel: a table in a publication.
    IdentityKind {
        catalog: 6106,
        descs: &["PUBLICATION TABLE"],
        naming: Naming::Own {
            names: "SELECT n.nspname::text, c.relname::text, p.pubname::text FROM pg_publication_rel r \
                    JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = $1",
            exists: "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                     JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND p.pubname = $3)",
        },
    },
    // pg_publication_namespace: a schema in a publication.
    IdentityKind {
        catalog: 6237,
        descs: &["PUBLICATION TABLES IN SCHEMA"],
        naming: Naming::Own {
            names: "SELECT n.nspname::text, ''::text, p.pubname::text FROM pg_publication_namespace r \
                    JOIN pg_publication p ON p.oid = r.pnpubid JOIN pg_namespace n ON n.oid = r.pnnspid WHERE r.oid = $1",
            exists: "SELECT EXISTS (SELECT 1 FROM pg_publication_namespace r JOIN pg_publication p ON p.oid = r.pnpubid \
                     JOIN pg_namespace n ON n.oid = r.pnnspid WHERE n.nspname = $1 AND p.pubname = $3 AND $2::text IS NOT NULL)",
        },
    },
];

/// Each of `kinds`' statements (`sql_of` picks which) prepared on `client`, by catalog.
async fn prepare_kinds(
    client: &Client,
    kinds: &[&'static IdentityKind],
    sql_of: fn(&IdentityKind) -> String,
) -> Result<HashMap<u32, Statement>, tokio_postgres::Error> {
    let statements = futures_util::future::try_join_all(
        kinds
            .iter()
            .map(|k| async move { client.prepare(&sql_of(k)).await }),
    )
    .await?;
    Ok(kinds.iter().map(|k| k.catalog).zip(statements).collect())
}

impl TocEntry {
    fn parse(line: &str) -> Option<TocEntry> {
        if line.starts_with(';') || line.trim().is_empty() {
            return None;
        }
        let (_, rest) = line.split_once("; ")?;
        let mut words = rest.splitn(3, ' ');
        let (catalog, oid, rest) = (words.next()?, words.next()?, words.next()?);
        let desc = TWO_WORD_DESCS
            .iter()
            .find(|d| rest.starts_with(&format!("{d} ")))
            .map(|d| d.to_string())
            .or_else(|| rest.split(' ').next().map(str::to_string))?;
        let rest = rest.strip_prefix(&desc)?.trim_start();
        let (_namespace, rest) = rest.split_once(' ')?;
        // The tag runs up to the owner, the last word.
        let tag = rest.rsplit_once(' ').map_or(rest, |(tag, _owner)| tag);
        Some(TocEntry {
            catalog: catalog.parse().ok()?,
            oid: oid.parse().ok()?,
            desc,
            tag: tag.to_string(),
        })
    }

    /// The kind of object this entry makes, if it is one of [`IDENTITY_KINDS`].
    fn kind(&self) -> Option<&'static IdentityKind> {
        IDENTITY_KINDS
            .iter()
            .find(|k| k.catalog == self.catalog && k.descs.contains(&self.desc.as_str()))
    }

    /// The object of `kind` this entry makes, named from the source's catalog by its oid
    /// with `names` (the kind's [`IdentityKind::names`], prepared); `None` when the source
    /// has no such object.
    async fn identity_on(
        &self,
        source: &Client,
        kind: &'static IdentityKind,
        names: &Statement,
    ) -> Result<Option<ObjectIdentity>, tokio_postgres::Error> {
        let row = source.query_opt(names, &[&self.oid]).await?;
        Ok(row.map(|r| ObjectIdentity {
            kind,
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
        }))
    }
}

impl ObjectIdentity {
    /// True when the target has this object already (`exists`: its kind's
    /// [`IdentityKind::exists`], prepared).
    async fn exists_on(
        &self,
        target: &Client,
        exists: &Statement,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = target
            .query_one(exists, &[&self.schema, &self.table, &self.name])
            .await?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_kinds_statements_prepare_on_a_real_server() {
        let cluster = pgseal_testkit::TestCluster::builder().start().unwrap();
        let client = cluster.connect("postgres").await.unwrap();
        for kind in IDENTITY_KINDS {
            for sql in [kind.names(), kind.exists()] {
                let statement = client
                    .prepare(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                assert_eq!(
                    statement.columns().len(),
                    if sql.contains("EXISTS") { 1 } else { 3 },
                    "{sql}"
                );
            }
        }
        // A trigger is named by its table and found again by those names.
        client
            .batch_execute(
                "CREATE TABLE \"a t\" (id int); \
                 CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; \
                 CREATE TRIGGER \"the trigger\" BEFORE INSERT ON \"a t\" FOR EACH ROW EXECUTE FUNCTION f()",
            )
            .await
            .unwrap();
        let oid: u32 = client
            .query_one(
                "SELECT oid FROM pg_trigger WHERE tgname = 'the trigger'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let entry = TocEntry {
            catalog: 2620,
            oid,
            desc: "TRIGGER".into(),
            tag: String::new(),
        };
        let kind = entry.kind().unwrap();
        let names = client.prepare(&kind.names()).await.unwrap();
        let identity = entry
            .identity_on(&client, kind, &names)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                identity.schema.as_str(),
                identity.table.as_str(),
                identity.name.as_str()
            ),
            ("public", "a t", "the trigger")
        );
        let exists = client.prepare(&kind.exists()).await.unwrap();
        assert!(identity.exists_on(&client, &exists).await.unwrap());
        client
            .batch_execute("DROP TRIGGER \"the trigger\" ON \"a t\"")
            .await
            .unwrap();
        assert!(!identity.exists_on(&client, &exists).await.unwrap());
    }

    #[test]
    fn archive_list_lines_parse() {
        let e =
            TocEntry::parse("3203; 1259 16401 INDEX public accounts_owner_idx postgres").unwrap();
        assert_eq!(
            (e.catalog, e.oid, e.desc.as_str(), e.tag.as_str()),
            (1259, 16401, "INDEX", "accounts_owner_idx")
        );
        let e = TocEntry::parse(
            "3210; 2606 16420 FK CONSTRAINT public transfers transfers_from_fkey postgres",
        )
        .unwrap();
        assert_eq!(e.desc, "FK CONSTRAINT");
        assert_eq!(e.tag, "transfers transfers_from_fkey");
        // A name with a space: the tag is ambiguous, the oid is not.
        let e = TocEntry::parse("3232; 2606 16420 CONSTRAINT public we ird we ird_pkey postgres")
            .unwrap();
        assert_eq!(
            (e.catalog, e.oid, e.desc.as_str()),
            (2606, 16420, "CONSTRAINT")
        );
        let e = TocEntry::parse("3233; 0 0 INDEX ATTACH public events_low_pkey postgres").unwrap();
        assert_eq!((e.catalog, e.desc.as_str()), (0, "INDEX ATTACH"));
        let e = TocEntry::parse("3300; 6104 16500 PUBLICATION - pgseal_m1_5 postgres").unwrap();
        assert_eq!(
            (e.desc.as_str(), e.tag.as_str()),
            ("PUBLICATION", "pgseal_m1_5")
        );
        let e = TocEntry::parse("3400; 3466 16600 EVENT TRIGGER - pgseal_ddl_capture postgres")
            .unwrap();
        assert_eq!(
            (e.catalog, e.desc.as_str(), e.tag.as_str()),
            (3466, "EVENT TRIGGER", "pgseal_ddl_capture")
        );
        assert_eq!(TocEntry::parse(";"), None);
        assert_eq!(TocEntry::parse("; Archive created at 2026-12-02"), None);
    }
}
