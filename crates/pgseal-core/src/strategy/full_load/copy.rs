//! The full load's copy of one database: every published table copied straight from the
//! source to the target by `COPY`, under the snapshot the stream's slot exported when it
//! was made, by several workers at once, largest table first (a large table split into
//! ranges of pages when `--split-tables-larger-than` asks for it), each table's keys built
//! as soon as its last range is in. A table of 2 MB or more copied whole is emptied in its
//! copy's own transaction, so it is written frozen, and without WAL on a target loading at
//! `wal_level = minimal` (made so when such tables add up to enough to matter). A worker's
//! source transaction ends every [`TABLES_PER_TRANSACTION`] tables and the next begins in
//! the same snapshot, so that it never holds locks on thousands of tables at once.
//!
//! Why nothing is lost or doubled (docs/migration.md): the slot is made here, on the
//! replication protocol, with its snapshot exported. A commit before the slot's consistent
//! point is in that snapshot; one after it comes through the slot. Every worker reads in a
//! `REPEATABLE READ` transaction set to that snapshot, so the copy holds exactly the
//! commits before the consistent point; the subscription (`copy_data = false`, the slot
//! made here) is enabled only once the copy is whole, and streams from the consistent
//! point on.
//!
//! A snapshot dies with the session that exported it: a copy that is interrupted cannot
//! go on under it. Run again, the copy of that database starts over: the old slot is
//! dropped, every published table emptied on the target, a new slot made. A database
//! whose copy finished (a `copy_done` fact after its latest `copy_plan`, and its slot
//! still there) is kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use pgseal_pg::Lsn;
use pgseal_pg::copy::{CopyFormat, CopySpec, Pages};
use pgseal_pg::exported_slot::ExportedSlot;
use pgseal_pg::replication::{self, quote_ident, quote_literal};
use pgseal_platform::Platform;
use serde_json::json;
use tokio_postgres::Client;

use super::TableKey;
use crate::engine::{Engine, Event};
use crate::error::{EngineError, sql};
use crate::initial_copy::{self, TableCopy};
use crate::steps::{Step, failpoint_at, test_hook};
use crate::stream::Stream;

/// How often the copy is reported.
const COPY_REPORT: Duration = Duration::from_secs(1);

/// Tables a source session reads (or a statement empties) in one transaction: each holds
/// a lock on every table it touched until it ends, and the lock table, shared with the
/// source's own sessions, holds `max_locks_per_transaction` per connection. A worker ends
/// its transaction after this many and begins another in the same exported snapshot.
const TABLES_PER_TRANSACTION: usize = 16;

/// Tables smaller than this on the source are copied without emptying them first in the
/// copy's transaction: PostgreSQL writes a relation this small to WAL at commit anyway
/// (its `wal_skip_threshold`, 2 MB), so emptying it would only make new files, which with
/// thousands of small tables was most of the copy.
pub(super) const SMALL_TABLE_BYTES: i64 = 2 << 20;

/// The default of `--split-tables-larger-than`: 0, no table is split. A table copied
/// whole is emptied in its copy's transaction and so written without WAL on the loading
/// target (bench/README.md measures both).
pub const DEFAULT_SPLIT_BYTES: u64 = 0;

/// Ranges per worker at most: a table is not cut finer than keeps every worker busy.
const RANGES_PER_JOB: u64 = 4;

/// Tables at least this large on the source, copied whole onto a target at
/// `wal_level = minimal`, have their files written out from every core before their
/// commit syncs them (`Engine::keys_beside_write_out`); smaller ones are synced at once.
const WRITE_OUT_FROM_BYTES: i64 = 64 << 20;

/// The journal's fact kinds for the copy (see [`initial_copy::progress`]).
pub(crate) const FACT_PLAN: &str = initial_copy::FACT_PLAN;
const FACT_TABLE: &str = initial_copy::FACT_TABLE;
const FACT_DONE: &str = initial_copy::FACT_DONE;
const FACT_PROGRESS: &str = initial_copy::FACT_PROGRESS;

/// One published table as the copy plans it.
#[derive(Debug, Clone)]
struct TablePlan {
    /// `schema.table`, as `pg_publication_tables` names it.
    table: String,
    schema_name: String,
    table_name: String,
    /// Its columns in order, generated ones left out (PostgreSQL computes them).
    columns: Vec<String>,
    /// Binary when every column's type is one of PostgreSQL's own (whose binary form is
    /// the same in every version); text otherwise (an array or composite of a type made
    /// by the user carries its type's OID, which differs between servers).
    format: CopyFormat,
    /// Its pages on the source, as its statistics say (no lock taken to read them).
    pages: u32,
    /// Its size on the source as its statistics say (heap and TOAST).
    source_bytes: i64,
    /// The rows its statistics estimate.
    estimated_rows: i64,
    /// Whether it was ever vacuumed or analyzed (else its statistics say 0 pages,
    /// whatever its size).
    measured: bool,
    /// Its keys, built on the target once its copy is whole.
    keys: Vec<TableKey>,
    /// The ranges it is copied in (1: whole).
    ranges: Vec<Option<Pages>>,
}

/// Where one table's copy stands.
#[derive(Debug, Default)]
struct TableState {
    ranges_done: usize,
    rows: u64,
    bytes: u64,
    started: Option<Instant>,
    copy_seconds: Option<f64>,
    keys_seconds: Option<f64>,
    building_keys: bool,
    written_out: WrittenOut,
}

/// One database's copy in progress, shared by its workers.
struct CopyRun<'a> {
    database: &'a str,
    snapshot: &'a str,
    consistent_point: Lsn,
    tables: Vec<TablePlan>,
    /// (table index, pages) still to copy, in order.
    queue: Mutex<VecDeque<(usize, Option<Pages>)>>,
    states: Mutex<Vec<TableState>>,
    /// Bytes seen so far per table, while its ranges copy.
    seen: Vec<AtomicU64>,
    /// Tables finished and not journaled yet.
    finished: Mutex<Vec<serde_json::Value>>,
    maintenance_work_mem_mib: u64,
}

impl CopyRun<'_> {
    fn next(&self) -> Option<(usize, Option<Pages>)> {
        self.queue.lock().expect("not poisoned").pop_front()
    }

    /// The tables as the user watches them.
    fn progress(&self) -> Vec<TableCopy> {
        let states = self.states.lock().expect("not poisoned");
        self.tables
            .iter()
            .zip(states.iter())
            .enumerate()
            .map(|(i, (t, s))| {
                let state = if s.keys_seconds.is_some() {
                    "ready"
                } else if s.building_keys {
                    "keys"
                } else if s.started.is_some() {
                    "copying"
                } else {
                    "waiting"
                };
                TableCopy {
                    database: self.database.to_string(),
                    table: t.table.clone(),
                    state: state.to_string(),
                    rows: Some(s.rows as i64).filter(|_| s.started.is_some()),
                    bytes: Some(self.seen[i].load(Ordering::Relaxed) as i64)
                        .filter(|_| s.started.is_some()),
                    source_bytes: Some(t.source_bytes),
                    ranges: t.ranges.len() as u32,
                    ranges_done: s.ranges_done as u32,
                }
            })
            .collect()
    }
}

/// The published tables of `publication` with what the copy needs of each, largest
/// first, read from the source's catalog (no lock on any table: a table locked by an
/// application is waited for by its copy, not by the plan).
async fn plan(source: &Client, publication: &str) -> Result<Vec<TablePlan>, tokio_postgres::Error> {
    let rows = source
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), n.nspname::text, c.relname::text, \
                    coalesce(a.names, '{}'), coalesce(a.built_in, true), \
                    greatest(c.relpages, 0)::bigint, \
                    ((c.relpages::bigint + coalesce(t.relpages, 0)::bigint) \
                        * current_setting('block_size')::bigint), \
                    greatest(c.reltuples, 0)::bigint, c.reltuples >= 0 \
             FROM pg_publication_tables p \
             JOIN pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
             CROSS JOIN LATERAL ( \
                 SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names, \
                        bool_and(a.atttypid < 16384) AS built_in \
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                   AND NOT a.attisdropped AND a.attgenerated = '') a \
             WHERE p.pubname = $1 ORDER BY 7 DESC, 1",
            &[&publication],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TablePlan {
            table: r.get(0),
            schema_name: r.get(1),
            table_name: r.get(2),
            columns: r.get(3),
            format: if r.get::<_, bool>(4) {
                CopyFormat::Binary
            } else {
                CopyFormat::Text
            },
            pages: r.get::<_, i64>(5).clamp(0, u32::MAX as i64) as u32,
            source_bytes: r.get(6),
            estimated_rows: r.get(7),
            measured: r.get(8),
            keys: Vec::new(),
            ranges: vec![None],
        })
        .collect())
}

/// The ranges of pages a table of `pages` pages and `bytes` bytes is copied in: one
/// (the whole table) up to `split_bytes`; above it, ranges of about `split_bytes`, at
/// most [`RANGES_PER_JOB`] per worker. The last range has no end, so that a page the
/// table grew by since its statistics were taken is copied too.
fn ranges(pages: u32, bytes: i64, split_bytes: u64, jobs: usize) -> Vec<Option<Pages>> {
    let bytes = bytes.max(0) as u64;
    if jobs < 2 || split_bytes == 0 || bytes <= split_bytes || pages < 2 {
        return vec![None];
    }
    let count = bytes
        .div_ceil(split_bytes)
        .min(RANGES_PER_JOB * jobs as u64)
        .min(pages as u64) as u32;
    let step = pages.div_ceil(count);
    (0..count)
        .map(|i| {
            let first = i * step;
            let end = (i + 1 < count).then(|| ((i + 1) * step).min(pages));
            Some((first, end))
        })
        .filter(|r| r.is_some_and(|(first, end)| end.is_none_or(|e| e > first)))
        .collect()
}

/// `maintenance_work_mem` for a key built while `jobs` others may build at once: a
/// quarter of the memory the machine has available, shared, between 64 MiB and 1 GiB
/// (a sort that fits is not spilled onto the encrypted, so slower, disk).
pub(super) fn maintenance_work_mem_mib(jobs: usize) -> u64 {
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    (available_kib / 1024 / 4 / jobs.max(1) as u64).clamp(64, 1024)
}

/// Every commit of the copy's workers (made with `synchronous_commit = off`) flushed to
/// the target's disk: a commit that waits for its WAL waits for all the WAL before it.
pub(super) async fn flush_target(target: &Client) -> Result<(), EngineError> {
    target
        .batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id(); COMMIT",
        )
        .await
        .map_err(sql("target", "flushing the copy's commits"))
}

impl<P: Platform> Engine<'_, P> {
    /// The copy of `stream`'s database with `jobs` workers; `keys` are its tables' keys.
    /// Returns what was copied (the journal's step outputs for this database).
    pub(super) async fn copy_database(
        &self,
        stream: &Stream,
        keys: &[TableKey],
        jobs: usize,
        split_bytes: u64,
    ) -> Result<serde_json::Value, EngineError> {
        let database = stream.database.as_str();
        let source = self.source_db(database).await?;
        let existing = replication::slot(&source, &stream.name)
            .await
            .map_err(sql("source", "reading the slot"))?;
        let (tried, done) = self.copy_facts(database)?;
        if existing.is_some()
            && let Some(done) = done
        {
            return Ok(done);
        }
        let target = self.target_db(database).await?;
        let mut tables = plan(&source, &stream.name)
            .await
            .map_err(sql("source", "listing the tables to copy"))?;
        if existing.is_some() || tried {
            // An earlier copy was interrupted (or its slot dropped): its snapshot is gone
            // with its session, so nothing it copied can be shown to belong to a new one.
            // Start over.
            self.restart_copy(stream, &source, &target, &tables).await?;
        }
        self.journal
            .add_resource(&self.spec.name, "slot", database, &stream.name)?;
        let exported = self.create_exported_slot(stream).await?;
        let snapshot = exported.snapshot.clone();
        let jobs = jobs.max(1);
        // Keys an earlier, interrupted copy built stay (emptying a table keeps them).
        let built: std::collections::HashSet<(String, String, String)> = target
            .query(
                "SELECT n.nspname::text, c.relname::text, k.conname::text FROM pg_constraint k \
                 JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE k.contype IN ('p', 'u', 'x')",
                &[],
            )
            .await
            .map_err(sql("target", "listing the keys built"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // By table (with thousands of tables, a scan of every key for each was seconds).
        let mut by_table: HashMap<&str, Vec<TableKey>> = HashMap::new();
        for k in keys {
            if !built.contains(&(
                k.schema_name.clone(),
                k.table_name.clone(),
                k.constraint.clone(),
            )) {
                by_table
                    .entry(k.table.as_str())
                    .or_default()
                    .push(k.clone());
            }
        }
        for t in &mut tables {
            t.keys = by_table.remove(t.table.as_str()).unwrap_or_default();
            t.ranges = ranges(t.pages, t.source_bytes, split_bytes, jobs);
        }
        let planned: Vec<serde_json::Value> = tables
            .iter()
            .map(|t| {
                json!({
                    "table": t.table, "source_bytes": t.source_bytes,
                    "rows": t.estimated_rows, "ranges": t.ranges.len(),
                    "format": t.format.as_str(),
                })
            })
            .collect();
        self.journal.add_fact(
            &self.spec.name,
            FACT_PLAN,
            &json!({
                "database": database,
                "consistent_point": exported.consistent_point.to_string(),
                "tables": planned,
            }),
        )?;
        let run = CopyRun {
            database,
            snapshot: &snapshot,
            consistent_point: exported.consistent_point,
            queue: Mutex::new(
                tables
                    .iter()
                    .enumerate()
                    .flat_map(|(i, t)| t.ranges.iter().map(move |r| (i, *r)))
                    .collect(),
            ),
            states: Mutex::new(tables.iter().map(|_| TableState::default()).collect()),
            seen: tables.iter().map(|_| AtomicU64::new(0)).collect(),
            finished: Mutex::new(Vec::new()),
            tables,
            maintenance_work_mem_mib: maintenance_work_mem_mib(jobs),
        };
        let units = run.queue.lock().expect("not poisoned").len();
        let workers = jobs.min(units).max(1);
        tracing::info!(database, workers, units, snapshot = %run.snapshot, consistent_point = %run.consistent_point, "copy starts");
        let started = Instant::now();
        let copying = try_join_all((0..workers).map(|_| self.copy_worker(&run)));
        tokio::pin!(copying);
        let mut report = tokio::time::interval(COPY_REPORT);
        let mut reported_once = false;
        loop {
            tokio::select! {
                done = &mut copying => {
                    done?;
                    break;
                }
                _ = report.tick() => {
                    (self.observer)(&Event::Copy(run.progress()));
                    self.journal_progress(&run)?;
                    if !reported_once {
                        reported_once = true;
                        failpoint_at("initial_copy:copying");
                    }
                    if self.journal_finished(&run)? {
                        failpoint_at("initial_copy:table_copied");
                    }
                }
            }
        }
        (self.observer)(&Event::Copy(run.progress()));
        self.journal_progress(&run)?;
        if self.journal_finished(&run)? {
            failpoint_at("initial_copy:table_copied");
        }
        flush_target(&target).await?;
        let seconds = started.elapsed().as_secs_f64();
        // The copy is whole: the snapshot is not needed any more.
        exported.release().await.map_err(|e| {
            EngineError::Precondition(format!("ending the snapshot's session: {e}"))
        })?;
        let states = run.states.lock().expect("not poisoned");
        let per_table: Vec<serde_json::Value> = run
            .tables
            .iter()
            .zip(states.iter())
            .map(|(t, s)| {
                json!({
                    "database": database, "table": t.table, "rows": s.rows,
                    "bytes": s.bytes, "source_bytes": t.source_bytes,
                    "ranges": t.ranges.len(),
                    "format": t.format.as_str(),
                    "seconds": s.copy_seconds.unwrap_or_default(),
                    "keys_seconds": s.keys_seconds.unwrap_or_default(),
                    "written_out_bytes": s.written_out.bytes,
                    "written_out_seconds": s.written_out.seconds,
                })
            })
            .collect();
        let rows: u64 = states.iter().map(|s| s.rows).sum();
        let bytes: u64 = states.iter().map(|s| s.bytes).sum();
        let keys_built: usize = run.tables.iter().map(|t| t.keys.len()).sum();
        let done = json!({
            "database": database,
            "consistent_point": run.consistent_point.to_string(),
            "workers": workers,
            "tables": per_table,
            "rows": rows,
            "bytes": bytes,
            "seconds": seconds,
            "keys": keys_built,
        });
        self.journal.add_fact(&self.spec.name, FACT_DONE, &done)?;
        Ok(done)
    }

    /// How far `run` has come (`COPY` bytes so far), journaled for the report's plot of
    /// the copy's rate.
    fn journal_progress(&self, run: &CopyRun<'_>) -> Result<(), EngineError> {
        let bytes: u64 = run.seen.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        self.journal.add_fact(
            &self.spec.name,
            FACT_PROGRESS,
            &json!({
                "database": run.database,
                "consistent_point": run.consistent_point.to_string(),
                "bytes": bytes,
            }),
        )?;
        Ok(())
    }

    /// The tables `run` finished since the last call, journaled in one fact; returns
    /// whether there were any.
    fn journal_finished(&self, run: &CopyRun<'_>) -> Result<bool, EngineError> {
        let finished: Vec<serde_json::Value> =
            std::mem::take(&mut *run.finished.lock().expect("not poisoned"));
        if finished.is_empty() {
            return Ok(false);
        }
        self.journal.add_fact(
            &self.spec.name,
            FACT_TABLE,
            &json!({
                "database": run.database,
                "consistent_point": run.consistent_point.to_string(),
                "tables": finished,
            }),
        )?;
        Ok(true)
    }

    /// Whether a copy of `database` was begun before, and the `copy_done` fact of the
    /// latest one if it finished.
    fn copy_facts(&self, database: &str) -> Result<(bool, Option<serde_json::Value>), EngineError> {
        let facts = self.journal.facts(&self.spec.name)?;
        let latest = initial_copy::latest_copy(&facts, database);
        Ok((latest.is_some(), latest.and_then(|l| l.done.cloned())))
    }

    /// An interrupted copy of `stream`'s database undone: its slot dropped on the source,
    /// every table it copies emptied on the target.
    async fn restart_copy(
        &self,
        stream: &Stream,
        source: &Client,
        target: &Client,
        tables: &[TablePlan],
    ) -> Result<(), EngineError> {
        (self.observer)(&Event::Waiting {
            step: Step::InitialCopy,
            what: format!(
                "the copy of {} was interrupted and its snapshot is gone: starting it over from a new slot",
                stream.database
            ),
        });
        replication::drop_slot(source, &stream.name)
            .await
            .map_err(sql("source", "dropping the interrupted copy's slot"))?;
        // A batch of tables a statement: one statement for thousands would hold a lock
        // on each until it ends, past the lock table's size.
        for batch in tables.chunks(TABLES_PER_TRANSACTION) {
            let list: Vec<String> = batch
                .iter()
                .map(|t| {
                    format!(
                        "{}.{}",
                        quote_ident(&t.schema_name),
                        quote_ident(&t.table_name)
                    )
                })
                .collect();
            target
                .batch_execute(&format!("TRUNCATE ONLY {}", list.join(", ")))
                .await
                .map_err(sql("target", "emptying the interrupted copy's tables"))?;
        }
        self.journal.add_fact(
            &self.spec.name,
            "copy_restarted",
            &json!({ "database": stream.database, "tables": tables.len() }),
        )?;
        Ok(())
    }

    /// `stream`'s slot made with its snapshot exported, waiting (reported, within
    /// `--slot-wait`) for the transactions that hold it up.
    async fn create_exported_slot(&self, stream: &Stream) -> Result<ExportedSlot, EngineError> {
        let psql = self.tool("psql")?;
        let config = self.source_config(&stream.database).await?;
        let creating = async {
            pgseal_pg::exported_slot::create_exported_slot(&psql, &config, &stream.name)
                .await
                .map_err(|e| {
                    EngineError::Precondition(format!(
                        "creating logical slot {} in {}: {e}",
                        stream.name, stream.database
                    ))
                })
        };
        let then = format!(
            "`pgseal migrate resume {}`; the target and its schema are kept",
            self.spec.name
        );
        // Not a SlotWait: that one removes what `start` made, and here the target is made.
        self.waiting_for_slot(stream, Step::InitialCopy, &then, None, creating)
            .await
            .map_err(|e| match e {
                EngineError::SlotWait(text) => EngineError::Precondition(text),
                other => other,
            })
    }

    /// One worker: a session on each side, the source's in the snapshot, taking ranges
    /// off the queue until it is empty; the worker that copies a table's last range builds
    /// its keys.
    async fn copy_worker(&self, run: &CopyRun<'_>) -> Result<(), EngineError> {
        let source = self.source_db(run.database).await?;
        let in_snapshot = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(run.snapshot)
        );
        source
            .batch_execute(&in_snapshot)
            .await
            .map_err(sql("source", "reading under the slot's snapshot"))?;
        let mut read_in_transaction = 0;
        let target = self.target_db(run.database).await?;
        // Commits do not wait for their WAL to reach the disk: the copy flushes it once,
        // before it journals the database copied (`flush_target`).
        target
            .batch_execute(&format!(
                "SET maintenance_work_mem = '{}MB'; SET synchronous_commit = off",
                run.maintenance_work_mem_mib
            ))
            .await
            .map_err(sql("target", "setting the copy's session"))?;
        // At `minimal`, a table emptied in its copy's transaction is synced at commit
        // rather than written to WAL: large ones are written out from every core first.
        let minimal: bool = target
            .query_one("SELECT current_setting('wal_level') = 'minimal'", &[])
            .await
            .map_err(sql("target", "reading wal_level"))?
            .get(0);
        while let Some((i, pages)) = run.next() {
            if read_in_transaction == TABLES_PER_TRANSACTION {
                // The locks of what was read let go; the snapshot is the same (its
                // exporting session holds it until the copy is whole).
                source
                    .batch_execute(&format!("COMMIT; {in_snapshot}"))
                    .await
                    .map_err(sql("source", "reading under the slot's snapshot"))?;
                read_in_transaction = 0;
            }
            read_in_transaction += 1;
            let table = &run.tables[i];
            run.states.lock().expect("not poisoned")[i]
                .started
                .get_or_insert_with(Instant::now);
            // A table copied whole is emptied in the copy's own transaction: its rows are
            // then written frozen, and on a target at wal_level=minimal (as the full load
            // makes it) without WAL, its file synced at commit instead. Ranges of one
            // table copy side by side, so they cannot.
            let whole_table = pages.is_none();
            // (A small one is empty: made by the schema step, or emptied by `restart_copy`.)
            let emptied =
                whole_table && (table.source_bytes >= SMALL_TABLE_BYTES || !table.measured);
            let spec = CopySpec {
                schema: &table.schema_name,
                table: &table.table_name,
                columns: &table.columns,
                pages,
                format: table.format,
                freeze: emptied,
            };
            let what = || format!("copying {}", table.table);
            // Its keys, in the copy's own transaction for a table copied whole (built on
            // a table made in that transaction, they write no WAL either), else in one of
            // their own once the last range is in.
            let keys: String = table.keys.iter().map(|k| format!("{};\n", k.sql)).collect();
            if emptied {
                target
                    .batch_execute(&format!(
                        "BEGIN; TRUNCATE ONLY {}.{}",
                        quote_ident(&table.schema_name),
                        quote_ident(&table.table_name)
                    ))
                    .await
                    .map_err(sql("target", what()))?;
            }
            let copied = pgseal_pg::copy::copy(&source, &target, &spec, Some(&run.seen[i]))
                .await
                .map_err(sql("source or target", what()))?;
            let whole = {
                let mut states = run.states.lock().expect("not poisoned");
                let s = &mut states[i];
                s.ranges_done += 1;
                s.rows += copied.rows;
                s.bytes += copied.bytes;
                let whole = s.ranges_done == table.ranges.len();
                if whole {
                    s.copy_seconds = s.started.map(|t| t.elapsed().as_secs_f64());
                    s.building_keys = true;
                }
                whole
            };
            if !whole {
                continue;
            }
            let keys_started = Instant::now();
            let mut written_out = WrittenOut::default();
            let building = if emptied
                && minimal
                && (table.source_bytes >= WRITE_OUT_FROM_BYTES || test_hook("write-out"))
            {
                written_out = self.keys_beside_write_out(&target, table, &keys).await?;
                failpoint_at("initial_copy:written_out");
                "COMMIT".to_string()
            } else if emptied {
                format!("{keys}COMMIT")
            } else if keys.is_empty() || whole_table {
                // (A small table's keys, each statement its own transaction.)
                keys
            } else {
                format!("BEGIN; {keys}COMMIT")
            };
            if !building.is_empty() {
                target.batch_execute(&building).await.map_err(sql(
                    "target",
                    format!("building the keys of {}", table.table),
                ))?;
            }
            let (rows, bytes, seconds) = {
                let mut states = run.states.lock().expect("not poisoned");
                let s = &mut states[i];
                s.building_keys = false;
                s.keys_seconds = Some(keys_started.elapsed().as_secs_f64());
                s.written_out = written_out;
                (s.rows, s.bytes, s.copy_seconds.unwrap_or_default())
            };
            // Journaled by the reporter, a batch at a time: a journal write waits for the
            // disk, and one per table would hold every worker up with many small tables.
            run.finished.lock().expect("not poisoned").push(json!({
                "table": table.table, "rows": rows, "bytes": bytes,
                "seconds": seconds,
                "keys_seconds": keys_started.elapsed().as_secs_f64(),
                "written_out_bytes": written_out.bytes,
                "written_out_seconds": written_out.seconds,
            }));
        }
        source
            .batch_execute("COMMIT")
            .await
            .map_err(sql("source", "ending the snapshot's transaction"))?;
        Ok(())
    }

    /// The keys of `table`, copied whole into a file its transaction made on a target at
    /// `wal_level = minimal`, built while the table's files are written out from every
    /// core ([`Platform::write_out`]); then the keys' own files written out. The commit
    /// that follows syncs them all, and finds little left to write: synced by the one
    /// committing process, a large table's pages were encrypted on one core
    /// (bench/README.md). A write-out that fails is only logged: the commit syncs
    /// everything anyway.
    async fn keys_beside_write_out(
        &self,
        target: &Client,
        table: &TablePlan,
        keys: &str,
    ) -> Result<WrittenOut, EngineError> {
        let name = format!(
            "{}.{}",
            quote_ident(&table.schema_name),
            quote_ident(&table.table_name)
        );
        // The files this transaction made: the table's, its TOAST table's and index's.
        let files = relation_files(
            target,
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c, pg_class t \
             WHERE t.oid = $1::text::regclass \
               AND (c.oid = t.oid OR c.oid = t.reltoastrelid \
                    OR c.oid IN (SELECT indexrelid FROM pg_index \
                                 WHERE indrelid = t.reltoastrelid))",
            &name,
        )
        .await?;
        let began = Instant::now();
        let (table_out, built) = tokio::join!(
            async {
                let out = self.platform.write_out(&self.spec.target, &files).await;
                (out, began.elapsed())
            },
            async {
                let built = target.batch_execute(keys).await;
                (built, began.elapsed())
            }
        );
        let ((table_out, table_took), (built, keys_took)) = (table_out, built);
        built.map_err(sql(
            "target",
            format!("building the keys of {}", table.table),
        ))?;
        let keys_files = relation_files(
            target,
            "SELECT pg_relation_filepath(indexrelid) FROM pg_index \
             WHERE indrelid = $1::text::regclass",
            &name,
        )
        .await?;
        let keys_out = self
            .platform
            .write_out(&self.spec.target, &keys_files)
            .await;
        tracing::info!(
            table = %table.table,
            table_written_out_s = table_took.as_secs_f64(),
            keys_built_s = keys_took.as_secs_f64(),
            keys_written_out_s = began
                .elapsed()
                .saturating_sub(keys_took.max(table_took))
                .as_secs_f64(),
            "copied files written out beside the keys"
        );
        match (table_out, keys_out) {
            (Ok(a), Ok(b)) => Ok(WrittenOut {
                bytes: a.zip(b).map(|(a, b)| a + b),
                seconds: a.map(|_| table_took.as_secs_f64()),
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(table = %table.table, error = %e, "writing out the copied files failed; the commit syncs them");
                Ok(WrittenOut::default())
            }
        }
    }
}

/// What [`Engine::keys_beside_write_out`] did, for the table's journaled figures.
#[derive(Debug, Default, Clone, Copy)]
struct WrittenOut {
    /// The bytes of the table's and its keys' files written out (`None`: not done, or
    /// the platform cannot).
    bytes: Option<u64>,
    /// How long the table's own files took, beside its keys being built.
    seconds: Option<f64>,
}

/// The paths (relative to the data directory) that `query` returns for the table `name`.
async fn relation_files(
    target: &Client,
    query: &str,
    name: &str,
) -> Result<Vec<String>, EngineError> {
    Ok(target
        .query(query, &[&name])
        .await
        .map_err(sql("target", format!("reading the files of {name}")))?
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_split_only_above_the_size_and_its_last_range_has_no_end() {
        let mib = 1 << 20;
        assert_eq!(ranges(1000, 100 * mib, 128 << 20, 4), vec![None]);
        assert_eq!(ranges(1000, 300 * mib, 128 << 20, 1), vec![None]);
        assert_eq!(ranges(1000, 300 * mib, 0, 4), vec![None]);
        assert_eq!(
            ranges(1000, 300 * mib, 128 << 20, 4),
            vec![
                Some((0, Some(334))),
                Some((334, Some(668))),
                Some((668, None))
            ]
        );
        // At most four ranges per worker.
        let many = ranges(100_000, 10_000 * mib, 128 << 20, 2);
        assert_eq!(many.len(), 8);
        assert_eq!(many[0], Some((0, Some(12_500))));
        assert_eq!(many[7], Some((87_500, None)));
        // Never more ranges than pages.
        assert_eq!(
            ranges(2, 300 * mib, 1, 8),
            vec![Some((0, Some(1))), Some((1, None))]
        );
    }

    #[test]
    fn maintenance_work_mem_is_shared_between_the_workers_within_bounds() {
        let one = maintenance_work_mem_mib(1);
        let many = maintenance_work_mem_mib(64);
        assert!((64..=1024).contains(&one), "{one}");
        assert!(many <= one, "{many} > {one}");
        assert!(many >= 64);
    }
}
