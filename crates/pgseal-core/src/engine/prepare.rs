//! The steps every pgseal-replicated strategy shares on the source: the preflight step
//! (what `migrate plan` checks, run again before anything is made) and the source's
//! preparation — `wal_level`, the scope's streams, replica identity, DDL capture, one
//! publication and one logical slot per database.

use std::time::{Duration, Instant};

use pgseal_pg::ddl;
use pgseal_pg::replication::{self, SlotState};
use pgseal_platform::{ErrorKind, Platform};
use serde_json::json;
use tokio_postgres::Client;

use super::{Engine, Event, StepResult};
use crate::error::{EngineError, error_chain, platform_error, sql};
use crate::journal::DDL_CAPTURE;
use crate::preflight::{PreflightInput, TargetVersion, preflight};
use crate::steps::{Step, test_hook};
use crate::stream::{self, Stream};

/// How often a slot creation that waits says what it waits for.
const SLOT_WAIT_REPORT: Duration = Duration::from_secs(2);

impl<P: Platform> Engine<'_, P> {
    /// [`Step::Preflight`]: what `migrate plan` checks, run again; any blocker stops here.
    pub(crate) async fn preflight(&self) -> StepResult {
        let source = self.source().await?;
        let target_problem = match self.platform.describe_instance(&self.spec.target).await {
            Ok(_) => Some(format!("instance {} already exists", self.spec.target)),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(platform_error("describing the target")(e)),
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
                blue_green_plan: self.surroundings.blue_green_plan.clone(),
            },
        };
        let connect = async |db: &str| self.source_db(db).await.map_err(|e| error_chain(&e));
        let report = preflight(&source, connect, &input)
            .await
            .map_err(sql("source", "preflight"))?;
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
    pub(crate) async fn ensure_logical_wal(&self) -> Result<(Client, bool), EngineError> {
        let source = self.source().await?;
        let wal_level: String = source
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(sql("source", "reading wal_level"))?
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
            .map_err(platform_error("setting wal_level=logical on the source"))?;
        Ok((self.source().await?, true))
    }

    /// [`Step::PrepareSource`]: logical WAL, the scope's streams, replica identity (if
    /// opted in), DDL capture (unless the scope is narrowed to tables), one publication
    /// per database, and one slot per database unless `copy_later`. `copy_later`: the
    /// strategy copies the tables itself in a later step, which makes each slot with its
    /// snapshot exported; DDL is held on the source until then (it would race the copy).
    pub(crate) async fn prepare_source(&self, copy_later: bool) -> StepResult {
        let (source, restarted) = self.ensure_logical_wal().await?;

        // The scope is fixed here, once, before anything is created.
        let streams = match self.journal.streams(&self.spec.name)? {
            recorded if !recorded.is_empty() => recorded,
            _ => {
                let all = stream::databases(&source)
                    .await
                    .map_err(sql("source", "listing databases"))?;
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
            if self.spec.tables.is_none() {
                self.journal.add_resource(
                    &self.spec.name,
                    DDL_CAPTURE,
                    &s.database,
                    ddl::SCHEMA,
                )?;
                if ddl::install_capture(&client).await.map_err(sql(
                    "source",
                    format!("installing the DDL capture in {}", s.database),
                ))? {
                    ddl_capture.push(s.database.clone());
                }
                if copy_later {
                    ddl::install_hold(&client, &self.spec.name)
                        .await
                        .map_err(sql(
                            "source",
                            format!("holding DDL in {} during the copy", s.database),
                        ))?;
                }
            }
            self.journal
                .add_resource(&self.spec.name, "publication", &s.database, &s.name)?;
            replication::create_publication(&client, &s.name, self.spec.tables.as_deref())
                .await
                .map_err(sql(
                    "source",
                    format!("creating publication {} in {}", s.name, s.database),
                ))?;
            let tables = replication::published_tables(&client, &s.name)
                .await
                .map_err(sql("source", "listing published tables"))?;
            prepared.push((s, client, tables, identity_changed));
        }

        // Every slot after every publication and before the snapshot: the snapshot's end
        // is then past every slot's consistent point.
        let mut outputs = Vec::new();
        for (s, client, tables, identity_changed) in &prepared {
            let slot = if copy_later {
                None
            } else if test_hook("late-slot") {
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
            "{} stream(s) ({}): publications with {tables} tables{}{}",
            streams.len(),
            streams
                .iter()
                .map(|s| s.database.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if copy_later {
                ", slots made by the copy"
            } else {
                ", slots made"
            },
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
            .map_err(sql("source", "listing tables without replica identity"))?;
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
                .map_err(sql(
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
    pub(crate) async fn create_slot(
        &self,
        client: &Client,
        stream: &Stream,
    ) -> Result<SlotState, EngineError> {
        self.journal
            .add_resource(&self.spec.name, "slot", &stream.database, &stream.name)?;
        let slot = match replication::slot(client, &stream.name)
            .await
            .map_err(sql("source", "reading the slot"))?
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
            .map_err(sql("source", "reading pgseal's session id"))?
            .get(0);
        let creating = async {
            replication::create_logical_slot(client, &stream.name)
                .await
                .map(|(slot, _)| slot)
                .map_err(sql(
                    "source",
                    format!(
                        "creating logical slot {} in {}",
                        stream.name, stream.database
                    ),
                ))
        };
        self.waiting_for_slot(
            stream,
            Step::PrepareSource,
            "start again; nothing was left on the source",
            Some(pid),
            creating,
        )
        .await
    }

    /// Waits for `creating` (the making of `stream`'s slot, by the session `creator` when
    /// it is a plain one, else by a walsender) and reports every few seconds what it waits
    /// for: creating a logical slot waits for every transaction that has an id. Given up
    /// after the spec's `slot_wait_seconds` ([`EngineError::SlotWait`], its advice ending
    /// with what to do `then`), the creation cancelled so that it leaves no slot.
    pub(crate) async fn waiting_for_slot<T>(
        &self,
        stream: &Stream,
        step: Step,
        then: &str,
        creator: Option<i32>,
        creating: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        let watcher = self.source().await?;
        let limit = Duration::from_secs(self.spec.slot_wait_seconds);
        let started = Instant::now();
        tokio::pin!(creating);
        loop {
            tokio::select! {
                made = &mut creating => return made,
                _ = tokio::time::sleep(SLOT_WAIT_REPORT) => {
                    let blockers = slot_blockers(&watcher, creator.unwrap_or(0))
                        .await
                        .map_err(sql("source", "reading what the slot waits for"))?;
                    let waited = started.elapsed();
                    tracing::warn!(slot = %stream.name, seconds = waited.as_secs(), %blockers, "slot creation waits");
                    if waited >= limit {
                        // A plain session is cancelled; a walsender (whose client may be
                        // gone already) is ended. Either way the slot it was making,
                        // not yet made, goes with it.
                        let _ = match creator {
                            Some(pid) => watcher.execute("SELECT pg_cancel_backend($1)", &[&pid]).await,
                            None => watcher
                                .execute(
                                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                                    &[&stream.name],
                                )
                                .await,
                        };
                        if creator.is_some() {
                            let _ = (&mut creating).await;
                        }
                        return Err(EngineError::SlotWait(format!(
                            "creating slot {} waited {} s for running transactions, the limit (--slot-wait): {blockers}. Let them finish (prepared ones: COMMIT PREPARED or ROLLBACK PREPARED in their database) or end them, then {then}",
                            stream.name,
                            waited.as_secs()
                        )));
                    }
                    (self.observer)(&Event::Waiting {
                        step,
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
