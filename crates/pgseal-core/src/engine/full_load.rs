//! The full-load strategy's own steps: an empty encrypted target of the chosen major
//! version, the roles and schema copied with the source's own `pg_dumpall`/`pg_dump`, the
//! data loaded by native tablesync (`copy_data = true`) and the rest of the schema built
//! once the data is in. The steps it shares with the snapshot strategy (preflight, the
//! source's publications and slots, the subscriptions, enabling them, replicating) live in
//! the engine itself.
//!
//! Why nothing is lost or doubled between the copy and the stream (docs/migration.md):
//! each stream's slot is made in `prepare_source`, before its subscription exists, so it
//! holds every change from before any table's copy. Each tablesync worker copies its table
//! from a snapshot it takes when it makes its own temporary slot, and catches up from that
//! slot to where the main apply worker stands; the main apply worker applies a table's
//! changes only past the point that table's sync ended (`should_apply_changes_for_rel`).
//! So every change is either in a table's copy or applied after it, never both.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgseal_exec::ExternalCommand;
use pgseal_pg::replication::{quote_ident, quote_literal};
use pgseal_platform::{ErrorKind, InstanceStatus, NewInstance, Platform};
use serde_json::json;
use tokio_postgres::Client;

use super::{Engine, EngineError, Event, StepResult};
use crate::initial_copy::{self, TableCopy};
use crate::journal::INSTANCE;
use crate::steps::{Step, failpoint_at};

/// How often the initial copy is polled and reported.
const COPY_POLL: Duration = Duration::from_secs(1);

/// Lag (bytes) under which a full-load target counts as replicating.
pub(super) const REPLICATING_LAG_BYTES: i64 = 64 << 20;

/// Tablesync workers per subscription at most (PostgreSQL's default).
const MAX_SYNC_WORKERS: i64 = 2;

/// The post-data entry types that go in before the copy: primary keys, unique and
/// exclusion constraints (the apply needs them to find the rows an UPDATE or DELETE names).
const BEFORE_COPY: &str = "CONSTRAINT";

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
        let mut config = match self.spec.source_url() {
            Some(url) => super::source_config(url)?,
            None => self
                .platform
                .connection(&self.spec.source)
                .await
                .map_err(Self::platform_error("finding how to reach the source"))?,
        };
        config.dbname(database);
        Ok(config)
    }

    async fn target_config(&self, database: &str) -> Result<tokio_postgres::Config, EngineError> {
        let mut config = self
            .platform
            .connection(&self.spec.target)
            .await
            .map_err(Self::platform_error("finding how to reach the target"))?;
        config.dbname(database);
        Ok(config)
    }

    /// Runs `program` against `config`'s server (its connection in the environment, never
    /// the arguments), feeding `stdin`; returns its stdout.
    async fn run_tool(
        &self,
        program: &str,
        args: &[&str],
        config: &tokio_postgres::Config,
        stdin: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, EngineError> {
        let mut cmd = ExternalCommand::new(self.tool(program)?).args(args);
        for (key, value) in pgseal_pg::libpq_env(config) {
            cmd = cmd.env(key, value);
        }
        if let Some(bytes) = stdin {
            cmd = cmd.stdin_bytes(bytes);
        }
        let what = format!("{program} {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || cmd.run())
            .await
            .map_err(|e| EngineError::Precondition(format!("{what} did not finish: {e}")))?
            .map_err(|e| EngineError::Tool {
                what: format!("{what} ({})", pgseal_pg::describe_target(config)),
                source: e,
            })?;
        Ok(out.stdout)
    }

    /// Runs SQL text on the target's database `database` through `psql`, stopping at the
    /// first error, in one transaction when `atomic`.
    async fn psql(&self, database: &str, sql: Vec<u8>, atomic: bool) -> Result<(), EngineError> {
        let config = self.target_config(database).await?;
        let mut args = vec!["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"];
        if atomic {
            args.push("--single-transaction");
        }
        self.run_tool("psql", &args, &config, Some(sql)).await?;
        Ok(())
    }

    // Full load 3.
    pub(super) async fn create_target(&self) -> StepResult {
        let target = &self.spec.target;
        let (_, target_major) = self.majors()?;
        let ours = self
            .journal
            .resources(&self.spec.name)?
            .iter()
            .any(|r| r.kind == "instance" && &r.name == target);
        let existing = match self.platform.describe_instance(target).await {
            Ok(i) => Some(i),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(Self::platform_error("describing the target")(e)),
        };
        let instance = match existing {
            Some(i) if !ours => {
                return Err(EngineError::Precondition(format!(
                    "instance {} exists and was not made by migration {}; choose another --target",
                    i.name, self.spec.name
                )));
            }
            Some(i) if i.status == InstanceStatus::Available => i,
            Some(i) => {
                // A creation that was interrupted: start again.
                tracing::warn!(target = %i.name, status = ?i.status, "removing an interrupted creation");
                self.platform
                    .delete_instance(target)
                    .await
                    .map_err(Self::platform_error("removing the interrupted target"))?;
                self.create_new_target(target_major).await?
            }
            None => {
                self.journal
                    .add_resource(&self.spec.name, "instance", INSTANCE, target)?;
                self.create_new_target(target_major).await?
            }
        };
        if !instance.encrypted || instance.key_id.is_none() {
            return Err(EngineError::Precondition(format!(
                "target {} is NOT encrypted; refusing to go on",
                instance.name
            )));
        }
        let version_major: Option<u32> = instance
            .engine_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok());
        if version_major != Some(target_major) {
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

    /// Creates the empty target with the settings replication needs: `wal_level=logical`
    /// (rollback replicates back from it), the source's slot and sender limits, and apply
    /// and tablesync workers for every stream within the source's free slots.
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
                        (SELECT count(*) FROM pg_replication_slots), \
                        (SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database)",
                &[],
            )
            .await
            .map_err(Self::sql("source", "reading replication limits"))?;
        let (max_slots, max_senders, used, source_bytes): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // Each tablesync worker holds a slot and a sender on the source while it copies.
        let free = (max_slots - used).min(max_senders - used);
        let sync = (free / streams.max(1)).clamp(1, MAX_SYNC_WORKERS);
        let workers = streams * (1 + sync) + 2;
        let params: BTreeMap<String, String> = [
            ("wal_level", "logical".to_string()),
            ("max_replication_slots", max_slots.max(10).to_string()),
            ("max_wal_senders", max_senders.max(10).to_string()),
            ("max_sync_workers_per_subscription", sync.to_string()),
            ("max_logical_replication_workers", workers.to_string()),
            ("max_worker_processes", (workers + 8).to_string()),
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
            .map_err(Self::platform_error("creating the empty encrypted target"))
    }

    // Full load 4.
    pub(super) async fn schema(&self) -> StepResult {
        let streams = self.streams()?;
        let roles = self.copy_roles().await?;
        let admin = self.target_db("template1").await?;
        let mut loaded = Vec::new();
        for s in &streams {
            self.create_database(&admin, &s.database).await?;
            let source = self.source_config(&s.database).await?;
            let pre_data = self
                .run_tool(
                    "pg_dump",
                    &["--schema-only", "--section=pre-data", "--no-subscriptions"],
                    &source,
                    None,
                )
                .await?;
            self.psql(&s.database, pre_data, true).await?;
            let (before, _) = self.post_data_lists(&s.database, &source).await?;
            let statements = before.len();
            if !before.is_empty() {
                let sql = self.restore_entries(&source, &before).await?;
                self.psql(&s.database, sql, true).await?;
            }
            loaded.push(json!({ "database": s.database, "keys_before_copy": statements }));
        }
        let summary = format!(
            "{} role(s) copied ({}), {} database(s): schema and keys loaded",
            roles.0,
            if self.spec.copy_role_passwords {
                "with their password hashes"
            } else {
                "without passwords: set them on the target"
            },
            loaded.len()
        );
        Ok((
            json!({ "roles": roles.0, "passwords_copied": self.spec.copy_role_passwords, "databases": loaded, "skipped_roles": roles.1 }),
            summary,
        ))
    }

    /// Copies the source's roles (`pg_dumpall --roles-only`), leaving out the roles the
    /// target has already (its master user keeps its own attributes and password).
    /// Returns how many were copied and which were left as they are.
    async fn copy_roles(&self) -> Result<(usize, Vec<String>), EngineError> {
        let source = self.source_config(&self.spec.database).await?;
        let mut args = vec!["--roles-only", "-l", self.spec.database.as_str()];
        if !self.spec.copy_role_passwords {
            args.push("--no-role-passwords");
        }
        let dump = self.run_tool("pg_dumpall", &args, &source, None).await?;
        let target = self.target_db("template1").await?;
        let existing: Vec<String> = target
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(Self::sql("target", "listing roles"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let master: String = target
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(Self::sql("target", "reading the master user"))?
            .get(0);
        let names_of = |role: &str| [role.to_string(), quote_ident(role)];
        let text = String::from_utf8_lossy(&dump);
        let mut kept = String::new();
        let mut copied = 0;
        for line in text.lines() {
            let made_already = existing.iter().any(|r| {
                names_of(r)
                    .iter()
                    .any(|n| line == format!("CREATE ROLE {n};"))
            });
            let alters_master = names_of(&master)
                .iter()
                .any(|n| line.starts_with(&format!("ALTER ROLE {n} WITH ")));
            if made_already || alters_master {
                continue;
            }
            if line.starts_with("CREATE ROLE ") {
                copied += 1;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        self.psql("template1", kept.into_bytes(), true).await?;
        let mut skipped: Vec<String> = existing
            .into_iter()
            .filter(|r| !r.starts_with("pg_"))
            .collect();
        skipped.sort();
        Ok((copied, skipped))
    }

    /// (Re)creates `database` on the target as the source has it (encoding, collation,
    /// owner): the target is new and holds no data yet, so a half-loaded database from an
    /// interrupted run is simply made again.
    async fn create_database(&self, admin: &Client, database: &str) -> Result<(), EngineError> {
        let source = self.source().await?;
        let row = source
            .query_one(
                "SELECT pg_encoding_to_char(encoding), datcollate::text, datctype::text, \
                        pg_get_userbyid(datdba)::text \
                 FROM pg_database WHERE datname = $1",
                &[&database],
            )
            .await
            .map_err(Self::sql("source", format!("reading database {database}")))?;
        let (encoding, collate, ctype, owner): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let ident = quote_ident(database);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"))
            .await
            .map_err(Self::sql("target", format!("dropping database {database}")))?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {ident} WITH TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {} OWNER {}",
                quote_literal(&encoding),
                quote_literal(&collate),
                quote_literal(&ctype),
                quote_ident(&owner)
            ))
            .await
            .map_err(Self::sql("target", format!("creating database {database}")))
    }

    /// The post-data part of `database`'s schema as archive entries (`pg_restore -l`
    /// lines), split into what goes in before the copy ([`BEFORE_COPY`]) and after it.
    /// pgseal's own publications stay behind.
    async fn post_data_lists(
        &self,
        database: &str,
        source: &tokio_postgres::Config,
    ) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let archive = self.post_data_archive(source).await?;
        let list = self
            .run_tool("pg_restore", &["-l"], source, Some(archive))
            .await?;
        let mut before = Vec::new();
        let mut after = Vec::new();
        for line in String::from_utf8_lossy(&list).lines() {
            let Some(entry) = TocEntry::parse(line) else {
                continue;
            };
            if entry.desc.starts_with("PUBLICATION") && entry.tag.starts_with("pgseal_") {
                continue;
            }
            if entry.desc == BEFORE_COPY {
                before.push(line.to_string());
            } else {
                after.push(line.to_string());
            }
        }
        tracing::debug!(
            database,
            before = before.len(),
            after = after.len(),
            "post-data entries"
        );
        Ok((before, after))
    }

    async fn post_data_archive(
        &self,
        source: &tokio_postgres::Config,
    ) -> Result<Vec<u8>, EngineError> {
        self.run_tool(
            "pg_dump",
            &[
                "--schema-only",
                "--section=post-data",
                "--no-subscriptions",
                "-Fc",
            ],
            source,
            None,
        )
        .await
    }

    /// The SQL of the archive entries `entries` of the source database's post-data part.
    /// The list file names objects only (no row values) and lives for the call.
    async fn restore_entries(
        &self,
        source: &tokio_postgres::Config,
        entries: &[String],
    ) -> Result<Vec<u8>, EngineError> {
        let archive = self.post_data_archive(source).await?;
        let dir = tempfile::tempdir().map_err(|e| {
            EngineError::Precondition(format!("cannot make a temporary directory: {e}"))
        })?;
        let list = dir.path().join("entries.list");
        std::fs::write(&list, entries.join("\n") + "\n").map_err(|e| {
            EngineError::Precondition(format!("cannot write {}: {e}", list.display()))
        })?;
        let list_arg = format!("--use-list={}", list.display());
        self.run_tool("pg_restore", &["-f", "-", &list_arg], source, Some(archive))
            .await
    }

    /// Full load 5: the subscription's slot is the stream's own, made before the copy.
    pub(super) async fn full_load_subscription_recorded(&self) -> Result<(), EngineError> {
        for s in &self.streams()? {
            // Recorded so that abort drops it from the target first: dropping a
            // subscription drops the tablesync slots its copy made on the source.
            self.journal
                .add_resource(&self.spec.name, "subscription", &s.database, &s.name)?;
        }
        Ok(())
    }

    // Full load 7.
    pub(super) async fn initial_copy(&self) -> StepResult {
        let streams = self.streams()?;
        let started = Instant::now();
        let mut sessions = Vec::new();
        for s in &streams {
            let source = self.source_db(&s.database).await?;
            let sizes = initial_copy::source_sizes(&source, &s.name)
                .await
                .map_err(Self::sql("source", "reading table sizes"))?;
            sessions.push((s, self.target_db(&s.database).await?, sizes));
        }
        // When each table was first seen copying, and when ready.
        let mut first_seen: HashMap<(String, String), Instant> = HashMap::new();
        let mut finished: HashMap<(String, String), Duration> = HashMap::new();
        // The most rows each table's COPY was seen to have received.
        let mut copied_rows: HashMap<(String, String), i64> = HashMap::new();
        let mut reported_errors = 0;
        let mut crashed_once = false;
        let tables = loop {
            let mut tables: Vec<TableCopy> = Vec::new();
            let mut errors = 0;
            for (s, target, sizes) in &sessions {
                tables.extend(
                    initial_copy::progress(target, &s.database, &s.name, sizes)
                        .await
                        .map_err(Self::sql("target", "reading the initial copy"))?,
                );
                errors += initial_copy::sync_errors(target, &s.name)
                    .await
                    .map_err(Self::sql("target", "reading tablesync errors"))?;
            }
            for t in &tables {
                let key = (t.database.clone(), t.table.clone());
                let seen = *first_seen.entry(key.clone()).or_insert_with(Instant::now);
                if t.state == "data"
                    && let Some(rows) = t.rows
                {
                    let most = copied_rows.entry(key.clone()).or_default();
                    *most = (*most).max(rows);
                }
                if t.ready() && !finished.contains_key(&key) {
                    finished.insert(key, seen.elapsed());
                }
            }
            (self.observer)(&Event::Copy(tables.clone()));
            if errors > reported_errors {
                reported_errors = errors;
                (self.observer)(&Event::Waiting {
                    step: Step::InitialCopy,
                    what: format!(
                        "{errors} tablesync error(s) so far; PostgreSQL retries each (the target's server log says why)"
                    ),
                });
            }
            if tables.iter().all(TableCopy::ready) {
                break tables;
            }
            if !crashed_once {
                crashed_once = true;
                failpoint_at("initial_copy:copying");
            }
            tokio::time::sleep(COPY_POLL).await;
        };
        // Rows as the COPY counted them where it was seen copying, else the estimate.
        let rows_of = |t: &TableCopy| {
            copied_rows
                .get(&(t.database.clone(), t.table.clone()))
                .copied()
                .or(t.rows)
        };
        let rows: i64 = tables.iter().filter_map(rows_of).sum();
        let bytes: i64 = tables.iter().filter_map(|t| t.source_bytes).sum();
        let per_table: Vec<serde_json::Value> = tables
            .iter()
            .map(|t| {
                let took = finished
                    .get(&(t.database.clone(), t.table.clone()))
                    .copied()
                    .unwrap_or_default();
                json!({
                    "database": t.database, "table": t.table, "rows": rows_of(t),
                    "source_bytes": t.source_bytes, "seconds": took.as_secs_f64(),
                })
            })
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        let summary = format!(
            "{} table(s) copied and ready: about {rows} rows, {} MiB in {seconds:.1} s",
            tables.len(),
            bytes >> 20
        );
        Ok((
            json!({ "tables": per_table, "rows": rows, "source_bytes": bytes, "seconds": seconds, "sync_errors": reported_errors }),
            summary,
        ))
    }

    // Full load 8.
    pub(super) async fn post_data(&self) -> StepResult {
        let mut done = Vec::new();
        for s in &self.streams()? {
            let source = self.source_config(&s.database).await?;
            let (_, after) = self.post_data_lists(&s.database, &source).await?;
            let target = self.target_db(&s.database).await?;
            // All of a database's post-data goes in one transaction, so after a crash it
            // is there entirely or not at all; what is there is not made again.
            let mut missing = Vec::new();
            for line in &after {
                let entry = TocEntry::parse(line).expect("listed entries parse");
                if !entry
                    .exists_on(&target)
                    .await
                    .map_err(Self::sql("target", "checking built objects"))?
                {
                    missing.push(line.clone());
                }
            }
            let started = Instant::now();
            if !missing.is_empty() {
                let sql = self.restore_entries(&source, &missing).await?;
                self.psql(&s.database, sql, true).await?;
            }
            done.push(json!({
                "database": s.database, "entries": missing.len(),
                "already_there": after.len() - missing.len(),
                "seconds": started.elapsed().as_secs_f64(),
            }));
        }
        let entries: u64 = done.iter().filter_map(|d| d["entries"].as_u64()).sum();
        Ok((
            json!({ "databases": done }),
            format!(
                "{entries} index(es), constraint(s), trigger(s) and other post-data entries built"
            ),
        ))
    }

    /// Full load 9's extra condition: every stream's lag under
    /// [`REPLICATING_LAG_BYTES`] (the backlog of the copy applied).
    pub(super) async fn wait_caught_up(&self) -> Result<i64, EngineError> {
        let source = self.source().await?;
        let mut last_report = Instant::now();
        loop {
            let mut worst = 0i64;
            for s in &self.streams()? {
                let lag: Option<i64> = source
                    .query_one(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&s.name],
                    )
                    .await
                    .map_err(Self::sql("source", "reading the lag"))?
                    .get(0);
                worst = worst.max(lag.unwrap_or(i64::MAX));
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

/// One line of `pg_restore -l`: `ID; TABLEOID OID DESC NAMESPACE TAG OWNER`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TocEntry {
    desc: String,
    namespace: String,
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

impl TocEntry {
    fn parse(line: &str) -> Option<TocEntry> {
        if line.starts_with(';') || line.trim().is_empty() {
            return None;
        }
        let (_, rest) = line.split_once("; ")?;
        let mut words = rest.splitn(3, ' ');
        let (_tableoid, _oid, rest) = (words.next()?, words.next()?, words.next()?);
        let desc = TWO_WORD_DESCS
            .iter()
            .find(|d| rest.starts_with(&format!("{d} ")))
            .map(|d| d.to_string())
            .or_else(|| rest.split(' ').next().map(str::to_string))?;
        let rest = rest.strip_prefix(&desc)?.trim_start();
        let (namespace, rest) = rest.split_once(' ')?;
        // The tag runs up to the owner, the last word.
        let tag = rest.rsplit_once(' ').map_or(rest, |(tag, _owner)| tag);
        Some(TocEntry {
            desc,
            namespace: namespace.to_string(),
            tag: tag.to_string(),
        })
    }

    /// True when the object this entry makes is on the target already (indexes,
    /// constraints, triggers, rules and policies by name; other entries are assumed not).
    async fn exists_on(&self, target: &Client) -> Result<bool, tokio_postgres::Error> {
        let (table, name) = self.tag.split_once(' ').unwrap_or(("", &self.tag));
        let sql = match self.desc.as_str() {
            "INDEX" => {
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $3 AND $2::text IS NOT NULL)"
            }
            "FK CONSTRAINT" | "CHECK CONSTRAINT" | "CONSTRAINT" => {
                "SELECT EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND k.conname = $3)"
            }
            "TRIGGER" => {
                "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND t.tgname = $3)"
            }
            "RULE" => {
                "SELECT EXISTS (SELECT 1 FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND r.rulename = $3)"
            }
            "POLICY" => {
                "SELECT EXISTS (SELECT 1 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND p.polname = $3)"
            }
            _ => return Ok(false),
        };
        let (table, name) = if self.desc == "INDEX" {
            ("", self.tag.as_str())
        } else {
            (table, name)
        };
        let row = target
            .query_one(sql, &[&self.namespace, &table, &name])
            .await?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_list_lines_parse() {
        let e =
            TocEntry::parse("3203; 1259 16401 INDEX public accounts_owner_idx postgres").unwrap();
        assert_eq!(
            (e.desc.as_str(), e.namespace.as_str(), e.tag.as_str()),
            ("INDEX", "public", "accounts_owner_idx")
        );
        let e = TocEntry::parse(
            "3210; 2606 16420 FK CONSTRAINT public transfers transfers_from_fkey postgres",
        )
        .unwrap();
        assert_eq!(e.desc, "FK CONSTRAINT");
        assert_eq!(e.tag, "transfers transfers_from_fkey");
        let e =
            TocEntry::parse("3199; 2606 16395 CONSTRAINT public accounts accounts_pkey postgres")
                .unwrap();
        assert_eq!(e.desc, BEFORE_COPY);
        let e = TocEntry::parse("3300; 6104 16500 PUBLICATION - pgseal_m1_5 postgres").unwrap();
        assert_eq!(
            (e.desc.as_str(), e.tag.as_str()),
            ("PUBLICATION", "pgseal_m1_5")
        );
        assert_eq!(TocEntry::parse(";"), None);
        assert_eq!(TocEntry::parse("; Archive created at 2026-12-02"), None);
    }
}
