//! Cutover: moves applications from the source to the replicating encrypted target with a
//! pause, not an outage, and nothing lost — for every database of the migration's scope
//! (one [`Stream`] each).
//!
//! 1. Preconditions (all listed at once): replicating, every stream's lag under the limit,
//!    no apply errors, every apply worker running, schema fingerprints equal, and nothing
//!    the switch moves left stale: a database outside the scope (when the switch moves
//!    the whole instance), a table outside a publication, an unlogged table, a published
//!    table the target's subscription does not know — each refused unless the user
//!    accepted it by name (`--leave-stale`, journaled with the cutover).
//! 2. [`Switch::pause`]: the endpoint holds new transactions, waiting for running ones.
//! 3. Fence **every** write path to **every** database of the scope: `ALLOW_CONNECTIONS
//!    false` (no new session of any role, superusers included), then every other session
//!    of those databases is ended — client backends and background workers (job
//!    schedulers, extension workers, the apply worker of a subscription the source itself
//!    has); only walsenders (they read) and autovacuum stay. A background worker that
//!    comes back although connections are refused is named with the fix, and cutover
//!    refuses. Proof: for a window, no such session is connected and no prepared
//!    transaction of those databases waits.
//! 4. Drain: a barrier is committed with `synchronous_commit = on` (so every earlier
//!    commit, asynchronous ones included, is flushed before it), and pgseal waits until
//!    every stream's slot has `confirmed_flush_lsn` — what the target reports applied
//!    *and flushed* — at or past the flushed position after it.
//! 5. Every sequence of every database is set on the target from the source's
//!    `last_value`/`is_called` (not `MAX(column)`, not only owned sequences), and read back.
//! 6. The subscriptions are disabled, reverse replication (publication and slot made per
//!    database before the pause) gets its subscription, set to start at the target's WAL
//!    position now, [`Switch::point_to_target`] (an endpoint keeps routing the databases
//!    outside the scope to the source), [`Switch::resume`], and a first write through the
//!    switch measures the write pause.
//!
//! If anything fails (or `timeout` passes) before the switch, the fences are lifted, the
//! subscriptions re-enabled, the endpoint resumed on the source, and the migration is back
//! to replicating; the error says why.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, quote_ident};
use pgseal_platform::Platform;
use serde::Serialize;
use tokio_postgres::Client;

pub mod report;

pub(crate) use report::refuse_failed;
pub use report::{
    CleanupReport, CutoverOptions, CutoverReport, PauseTiming, Recovered, SequenceSync,
};

use crate::catch_up::commit_barrier;
use crate::error::EngineError;
use crate::fence::{admin_session, allow_connections, backend_pid, fence, lift_fences, slip_in};
use crate::journal::{INSTANCE, Journal, MigrationSpec, Phase};
use crate::sessions::{admin_database, connect_source_db, connect_to, streams_of};
use crate::status::status;
use crate::steps::{Step, failpoint_at, test_hook};
use crate::stream::{self, Stream};

/// An error of a [`Switch`].
pub type SwitchError = Box<dyn std::error::Error + Send + Sync>;

/// How applications are moved from the source to the target: an endpoint (PgBouncer), a
/// hook command, an AWS rename, or nothing but the new URL printed.
pub trait Switch: Sync {
    /// What it is, for messages.
    fn describe(&self) -> String;
    /// True when the switch can keep sending databases outside the migration to the
    /// source (an endpoint with one entry per database); false when it moves the whole
    /// instance (a hook, a rename).
    fn keeps_other_databases(&self) -> bool;
    /// Why it cannot keep database `db` on the source apart from the others although it
    /// keeps others (a name the endpoint's configuration cannot hold), if it cannot.
    fn cannot_keep(&self, db: &str) -> Option<String> {
        let _ = db;
        None
    }
    /// Holds new transactions (waiting for running ones to end).
    fn pause(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Sends applications to the other side from now on, except for the databases in
    /// `stay` (outside the migration), which keep going to the side they were on.
    fn point_to_target(
        &self,
        stay: &[String],
    ) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Lets transactions flow again, wherever they now go.
    fn resume(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Makes one write the way applications do, once switched (measures the pause).
    fn probe_write(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// How long the longest-waiting client has waited behind the pause so far, where the
    /// switch can know it (a PgBouncer endpoint: `SHOW POOLS` `maxwait`); `None` where it
    /// cannot (a hook, a rename).
    fn longest_client_wait(&self) -> impl Future<Output = Option<Duration>> + Send {
        async { None }
    }
}

/// Times the parts of a pause, one after another.
struct Laps {
    last: Instant,
    laps: Vec<PauseTiming>,
}

impl Laps {
    fn start() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends the part called `phase` now.
    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        self.laps.push(PauseTiming {
            phase: phase.to_string(),
            ms: (now - self.last).as_secs_f64() * 1000.0,
        });
        self.last = now;
    }
}

/// How roles' passwords are carried at a switch: every one pgseal can read, but those the
/// user named.
fn carry_options(options: &CutoverOptions) -> pgseal_pg::globals::DiffOptions {
    pgseal_pg::globals::DiffOptions {
        keep_master_password: false,
        skip_passwords: options.without_password.clone(),
    }
}

fn sql(role: &'static str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.to_string();
    move |source| EngineError::Sql { role, what, source }
}

/// What the switch would leave stale on the target; each entry is `(name, why)`, `name`
/// as `--leave-stale` takes it.
async fn stale<P: Platform, S: Switch>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
    switch: &S,
    kept_on_source: &mut Vec<String>,
) -> Result<Vec<(String, String)>, EngineError> {
    let mut stale = Vec::new();
    let home = connect_source_db(platform, spec, &spec.database).await?;
    let all = stream::databases(&home)
        .await
        .map_err(sql("source", "listing databases"))?;
    for db in stream::outside(&all, streams) {
        if switch.keeps_other_databases() {
            match switch.cannot_keep(&db.name) {
                None => kept_on_source.push(db.name.clone()),
                Some(why) => stale.push((
                    db.name.clone(),
                    format!(
                        "database {} is not in this migration and {why}: the target has the snapshot's stale copy of it",
                        db.name
                    ),
                )),
            }
        } else {
            stale.push((
                db.name.clone(),
                format!(
                    "database {} is not in this migration, and {} moves the whole instance: the target has the snapshot's stale copy of it",
                    db.name,
                    switch.describe()
                ),
            ));
        }
    }
    for s in streams {
        let source = connect_source_db(platform, spec, &s.database).await?;
        let target = connect_to(platform, &spec.target, &s.database, "target").await?;
        let tables: Vec<(String, bool, bool)> = source
            .query(
                "SELECT n.nspname || '.' || c.relname, c.relpersistence = 'u', \
                        EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $1 \
                                AND p.schemaname = n.nspname AND p.tablename = c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
                 ORDER BY 1",
                &[&s.name],
            )
            .await
            .map_err(sql("source", "listing tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let subscribed: Vec<String> = target
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_subscription_rel r \
                 JOIN pg_subscription s ON s.oid = r.srsubid \
                 JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE s.subname = $1 AND r.srsubstate = 'r'",
                &[&s.name],
            )
            .await
            .map_err(sql("target", "listing subscribed tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (table, unlogged, published) in tables {
            let why = if unlogged {
                "is unlogged: it cannot be replicated and is empty on the target"
            } else if !published {
                "is outside the migration's publication: the target has the snapshot's stale copy"
            } else if !subscribed.contains(&table) {
                "was created after the migration started: the target's subscription does not apply it (ALTER SUBSCRIPTION ... REFRESH PUBLICATION on the target copies it)"
            } else {
                continue;
            };
            stale.push((
                format!("{}/{table}", s.database),
                format!("table {table} of {} {why}", s.database),
            ));
        }
    }
    Ok(stale)
}

/// The source's databases outside migration `name` (where an endpoint keeps sending
/// them once cut over).
pub async fn databases_outside<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Vec<String>, EngineError> {
    let spec = journal.migration(name)?.spec;
    let streams = streams_of(journal, name)?;
    let admin = admin_session(platform, &spec, &streams).await?;
    let all = stream::databases(&admin)
        .await
        .map_err(sql("source", "listing databases"))?;
    Ok(stream::outside(&all, &streams)
        .into_iter()
        .map(|d| d.name.clone())
        .collect())
}

/// How long an apply worker that failed before must have run since, without failing
/// again, for cutover to go ahead.
pub const HEALED_AFTER: Duration = Duration::from_secs(5);

/// How long cutover waits, beyond [`HEALED_AFTER`], for an apply worker that failed to
/// be started again (PostgreSQL's default `wal_retrieve_retry_interval` is 5 s).
const RESTART_GRACE: Duration = Duration::from_secs(8);

/// True when a subscription's worker has no error, or has run [`HEALED_AFTER`] since its
/// last one with no new one since the count `before`.
fn healed(sub: &replication::SubscriptionState, before: Option<&i64>) -> bool {
    sub.apply_errors == 0
        || (sub
            .worker_up_ms
            .is_some_and(|up| up >= HEALED_AFTER.as_millis() as i64)
            && before == Some(&sub.apply_errors))
}

/// The database of a stream whose apply worker failed before and is restarting or young
/// (neither healed nor failed again since `before`), if any.
fn unsettled_worker(
    st: &crate::status::MigrationStatus,
    before: &HashMap<String, i64>,
) -> Option<String> {
    st.replication
        .iter()
        .flat_map(|r| &r.streams)
        .find(|s| {
            s.subscription.as_ref().is_some_and(|sub| {
                sub.enabled
                    && !healed(sub, before.get(&s.database))
                    && before.get(&s.database) == Some(&sub.apply_errors)
            })
        })
        .map(|s| s.database.clone())
}

/// Each stream's apply error count, by database.
fn streams_errors(st: &crate::status::MigrationStatus) -> HashMap<String, i64> {
    st.replication
        .iter()
        .flat_map(|r| &r.streams)
        .filter_map(|s| Some((s.database.clone(), s.subscription.as_ref()?.apply_errors)))
        .collect()
}

/// Checks the preconditions; returns what fails, and fills the report's scope fields.
async fn check<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    options: &CutoverOptions,
    report: &mut CutoverReport,
) -> Result<Vec<String>, EngineError> {
    let mut st = status(platform, journal, name, None).await?;
    // An apply worker that failed earlier (the count only grows; a source restart or a
    // lost connection counts) is trusted again once it has run `HEALED_AFTER` without
    // failing again: one that cannot apply a change fails moments after it starts. While
    // one is restarting (every `wal_retrieve_retry_interval`) or young, wait to see which.
    let errors_before: HashMap<String, i64> = streams_errors(&st);
    let deadline = Instant::now() + HEALED_AFTER + RESTART_GRACE;
    while let Some(waiting) = unsettled_worker(&st, &errors_before)
        && Instant::now() < deadline
    {
        tracing::info!(migration = %name, database = %waiting, "waiting to see a restarted apply worker keep running");
        tokio::time::sleep(Duration::from_millis(250)).await;
        st = status(platform, journal, name, None).await?;
    }
    let mut failed = Vec::new();
    if st.migration.phase != Phase::Replicating {
        failed.push(format!(
            "the migration is {}, not replicating",
            st.migration.phase.as_str()
        ));
    }
    match &st.replication {
        None => failed.push("replication state unknown (servers not reached)".into()),
        Some(rep) => {
            for s in &rep.streams {
                let db = &s.database;
                match s.lag_bytes {
                    Some(lag) if lag > options.max_lag => failed.push(format!(
                        "{db}: lag is {lag} bytes, above --max-lag {}",
                        options.max_lag
                    )),
                    None => failed.push(format!("{db}: lag unknown: the slot is missing")),
                    _ => {}
                }
                match &s.subscription {
                    None => failed.push(format!("{db}: the subscription is missing on the target")),
                    Some(sub) => {
                        if sub.apply_errors > 0 && !healed(sub, errors_before.get(db)) {
                            failed.push(format!(
                                "{db}: the apply worker reported {} error(s) and has not run {} s since without failing",
                                sub.apply_errors,
                                HEALED_AFTER.as_secs()
                            ));
                        }
                        if sub.worker_pid.is_none() {
                            failed.push(format!("{db}: the apply worker is not running"));
                        }
                    }
                }
                if let Some(schema) = &s.schema
                    && !schema.drift.is_empty()
                {
                    failed.push(format!(
                        "{db}: schema drift ({} difference(s)); `pgseal migrate status {name}` shows the DDL to run on the target",
                        schema.drift.len()
                    ));
                }
            }
        }
    }
    // The target must be encrypted under the snapshot's key, as the platform says now.
    // (A full load's target: under the key it was created with.)
    let expected_key = match journal.outputs(name, Step::Snapshot)? {
        Some(snapshot) => Some(
            snapshot["snapshot"]["restore_key"]
                .as_str()
                .or(snapshot["snapshot"]["key_id"].as_str())
                .map(str::to_string),
        ),
        None => journal
            .outputs(name, Step::CreateTarget)?
            .map(|created| created["instance"]["key_id"].as_str().map(str::to_string)),
    };
    if let Some(expected) = expected_key {
        match platform.describe_instance(&st.migration.spec.target).await {
            Ok(target) if !target.encrypted => failed.push(format!(
                "the target {} is NOT encrypted (the platform reports StorageEncrypted=false): cutting over would move the data onto unencrypted storage",
                target.name
            )),
            Ok(target) if target.key_id != expected => failed.push(format!(
                "the target {} is encrypted under {}, not the expected {}",
                target.name,
                target.key_id.as_deref().unwrap_or("no key"),
                expected.as_deref().unwrap_or("?")
            )),
            Ok(_) => {}
            Err(e) => failed.push(format!("the target cannot be described: {e}")),
        }
    }
    match journal.outputs(name, Step::Validate)? {
        Some(last) if !crate::validate::lets_cutover(&last) => failed.push(
            match serde_json::from_value::<crate::verify::VerifyReport>(last["verify"].clone()) {
                Ok(v) if !v.clean => format!(
                    "the last validation's verification found {} difference(s) between the catalogs: {}; `pgseal migrate verify {name}` shows both sides, validate again once fixed",
                    v.differences,
                    v.lines().join("; ")
                ),
                _ => format!(
                    "the last validation found {} mismatched row(s) or a table it could not compare; `pgseal migrate validate {name}` again once fixed",
                    last["mismatched_rows"],
                ),
            },
        ),
        // The final check compares only rows the target's change log names: without the
        // log (an earlier cutover that failed after dropping it), it would compare nothing.
        Some(last) if st.migration.phase == Phase::Replicating => {
            // DDL rewrites rows without the change log seeing them: the tables it changed
            // are compared again first (`pgseal migrate cutover` does it before calling
            // this; a dry run lists them).
            let since = crate::ddl::since_validation(platform, journal, name, &last).await?;
            if options.dry_run {
                report.revalidate = since
                    .iter()
                    .flat_map(crate::ddl::DdlSinceValidation::qualified_tables)
                    .collect();
            } else {
                for d in &since {
                    failed.push(format!(
                        "{}: DDL ran on the source since the last validation (captured statements {}..={}, `pgseal migrate ddl {name}`){}; `pgseal migrate cutover {name}` again compares {} first",
                        d.database,
                        d.first,
                        d.last,
                        if d.tables.is_empty() {
                            String::new()
                        } else {
                            format!(", changing {}", d.tables.join(", "))
                        },
                        if d.tables.is_empty() {
                            "nothing (no table changed) but records it".to_string()
                        } else {
                            format!("them (`pgseal migrate validate {name} --tables {}`)", d.qualified_tables().join(","))
                        }
                    ));
                }
            }
            for s in streams_of(journal, name)? {
                let target = connect_to(platform, &st.migration.spec.target, &s.database, "target").await?;
                if !crate::validate::change_log_present(&target).await? {
                    failed.push(format!(
                        "{}: the change log the final check reads is gone from the target (an earlier cutover attempt removed it); `pgseal migrate validate {name}` again",
                        s.database
                    ));
                }
            }
        }
        _ => {}
    }
    if st.migration.phase == Phase::Replicating {
        let streams = streams_of(journal, name)?;
        let spec = &st.migration.spec;
        let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
        let source = connect_source_db(platform, spec, admin_database(&[])).await?;
        let target = connect_to(platform, &spec.target, admin_database(&[]), "target").await?;
        let read = async |client: &Client, role| {
            pgseal_pg::globals::read(client, &dbs)
                .await
                .map_err(sql(role, "reading roles and database properties"))
        };
        let (want, have) = (
            read(&source, "source").await?,
            read(&target, "target").await?,
        );
        let gaps = crate::carry::password_gaps(&want, &have, &options.without_password);
        if !gaps.is_empty() {
            failed.push(format!(
                "login role(s) {} have no password on the target, and their passwords on the source cannot be read here to carry (pg_authid): set them on the target (ALTER ROLE ... PASSWORD), or accept each with --without-password ROLE",
                gaps.join(", ")
            ));
        }
        if options.dry_run {
            let differences = pgseal_pg::globals::diff(&want, &have, &carry_options(options));
            report.carried_before = Some(crate::carry::Carried {
                globals: differences
                    .iter()
                    .map(pgseal_pg::globals::Difference::summary)
                    .collect(),
                ..Default::default()
            });
        }
        match stale(platform, spec, &streams, switch, &mut report.kept_on_source).await {
            Ok(items) => {
                for (item, why) in items {
                    if options.leave_stale.contains(&item) {
                        report.left_stale.push(item);
                    } else {
                        failed.push(format!(
                            "{why}; migrate it too, or accept it with --leave-stale {item}"
                        ));
                    }
                }
            }
            Err(e) => failed.push(format!(
                "what the switch would leave stale cannot be checked: {}",
                crate::error::error_chain(&e)
            )),
        }
    }
    Ok(failed)
}

/// The same on the target.
async fn target_admin<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
) -> Result<Client, EngineError> {
    let dbs: Vec<&str> = streams.iter().map(|s| s.database.as_str()).collect();
    connect_to(platform, &spec.target, admin_database(&dbs), "target").await
}

/// [`commit_barrier`], then the flushed WAL position after it: what the other side must
/// confirm for nothing to be left behind.
async fn flushed_barrier(session: &Client, role: &'static str) -> Result<Lsn, EngineError> {
    commit_barrier(session, role).await?;
    let lsn: tokio_postgres::types::PgLsn = session
        .query_one("SELECT pg_current_wal_flush_lsn()", &[])
        .await
        .map_err(sql(role, "reading the flushed WAL position"))?
        .get(0);
    Ok(Lsn::from(lsn))
}

/// The two sides of a drain: the publisher, where the slots are, and the subscriber, whose
/// apply workers must confirm.
struct DrainSides<'a> {
    /// A session on the publisher that can read the slots and commit barriers.
    publisher: &'a Client,
    /// `source` or `target`, for errors.
    publisher_role: &'static str,
    /// A session on the subscriber.
    subscriber: &'a Client,
    /// See `publisher_role`.
    subscriber_role: &'static str,
}

/// Flushes the WAL of `session`'s server: a transaction with an xid, committed with
/// `synchronous_commit = on`, flushes every earlier commit with it.
async fn flush_wal(session: &Client, role: &'static str) -> Result<(), EngineError> {
    session
        .batch_execute("SET synchronous_commit = on; SELECT pg_current_xact_id()")
        .await
        .map_err(sql(role, "flushing the WAL"))
}

/// Waits until every slot named in `slots` has confirmed `lsn`; returns the lowest
/// confirmed position.
///
/// An apply worker commits asynchronously and confirms only what its server has flushed;
/// left alone it looks again every `wal_writer_delay` (200 ms). So while a slot lags, each
/// pass flushes the subscriber's WAL and commits an empty barrier on the publisher: the
/// walsenders wake, find nothing to send, ping their apply workers, and the workers'
/// replies report the flushed position.
async fn drain(sides: &DrainSides<'_>, slots: &[String], lsn: Lsn) -> Result<Lsn, EngineError> {
    loop {
        let mut lowest: Option<Lsn> = None;
        let mut behind = false;
        for slot in slots {
            let state = replication::slot(sides.publisher, slot)
                .await
                .map_err(sql(sides.publisher_role, "reading the slot"))?
                .ok_or_else(|| EngineError::Precondition(format!("slot {slot} is gone")))?;
            match state.confirmed_flush_lsn {
                Some(confirmed) if confirmed >= lsn => {
                    lowest = Some(lowest.map_or(confirmed, |l| l.min(confirmed)));
                }
                _ => behind = true,
            }
        }
        if !behind {
            return lowest.ok_or_else(|| EngineError::Precondition("no slot to drain".into()));
        }
        flush_wal(sides.subscriber, sides.subscriber_role).await?;
        commit_barrier(sides.publisher, sides.publisher_role).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sets every sequence of `from`'s database on `to`, and reads them back.
async fn sync_sequences(
    database: &str,
    from: &Client,
    to: &Client,
) -> Result<Vec<SequenceSync>, EngineError> {
    let names: Vec<String> = from
        .query(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1",
            &[],
        )
        .await
        .map_err(sql("source", "listing sequences"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut synced = Vec::new();
    for seq in names {
        let row = from
            .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
            .await
            .map_err(sql("source", "reading a sequence"))?;
        let (last_value, is_called): (i64, bool) = (row.get(0), row.get(1));
        let back: i64 = to
            .query_one(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&seq, &last_value, &is_called],
            )
            .await
            .map_err(sql("target", "setting a sequence"))?
            .get(0);
        if back != last_value {
            return Err(EngineError::Precondition(format!(
                "sequence {seq} of {database} reads {back} after setting {last_value}"
            )));
        }
        synced.push(SequenceSync {
            database: database.to_string(),
            sequence: seq,
            last_value,
            is_called,
        });
    }
    Ok(synced)
}

/// Sessions on every stream's database on one side, with pgseal's backend pids.
struct Sessions {
    clients: Vec<Client>,
    pids: Vec<i32>,
}

/// Sessions on every stream's database of the source (`role` "source") or the target.
async fn sessions<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
    role: &'static str,
) -> Result<Sessions, EngineError> {
    let mut sessions = Sessions {
        clients: Vec::new(),
        pids: Vec::new(),
    };
    for s in streams {
        let client = if role == "source" {
            connect_source_db(platform, spec, &s.database).await?
        } else {
            connect_to(platform, &spec.target, &s.database, role).await?
        };
        sessions.pids.push(backend_pid(&client, role).await?);
        sessions.clients.push(client);
    }
    Ok(sessions)
}

async fn set_subscriptions(
    clients: &[Client],
    names: impl Iterator<Item = String>,
    enabled: bool,
    role: &'static str,
) -> Result<(), EngineError> {
    for (client, name) in clients.iter().zip(names) {
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} {}",
                quote_ident(&name),
                if enabled { "ENABLE" } else { "DISABLE" }
            ))
            .await
            .map_err(sql(
                role,
                if enabled {
                    "enabling a subscription"
                } else {
                    "disabling a subscription"
                },
            ))?;
    }
    Ok(())
}

/// The refusal of a cutover whose verification found differences, each named.
fn refusal(when: &str, verified: &crate::verify::VerifyReport) -> EngineError {
    EngineError::Precondition(format!(
        "verification {when} found {} difference(s) between the source and the target, so nothing was switched: {}. \
         Make the target match (or the source), then cut over again; `pgseal migrate verify` shows both sides' definitions",
        verified.differences,
        verified.lines().join("; ")
    ))
}

/// Verifies every database (the target following the source) before the pause; returns
/// the verification and each database's last captured DDL statement when it began.
async fn verify_before_pause(
    name: &str,
    streams: &[Stream],
    sources: &[Client],
    targets: &[Client],
    options: &pgseal_pg::globals::DiffOptions,
) -> Result<
    (
        crate::verify::VerifyReport,
        std::collections::BTreeMap<String, i64>,
    ),
    EngineError,
> {
    let started = Instant::now();
    let mut report = crate::verify::VerifyReport::default();
    let mut checked = std::collections::BTreeMap::new();
    let mut normalised = std::collections::BTreeSet::new();
    for (i, s) in streams.iter().enumerate() {
        checked.insert(
            s.database.clone(),
            pgseal_pg::ddl::last_id(&sources[i])
                .await
                .map_err(sql("source", "reading the captured DDL"))?,
        );
        let catch_up = crate::catch_up::CatchUp::new(
            name,
            &s.database,
            &sources[i],
            &targets[i],
            crate::catch_up::Follower::Stream {
                slot: s.name.clone(),
            },
        )
        .await?;
        let (verified, used) = crate::verify::database(
            &sources[i],
            &targets[i],
            Some(&catch_up),
            crate::verify::Sequences::Trailing,
            true,
        )
        .await?;
        normalised.extend(used);
        report.databases.insert(s.database.clone(), verified);
    }
    let databases: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    (report.globals_carried, report.globals) =
        crate::verify::globals(&sources[0], &targets[0], &databases, false, options).await?;
    report.finish(started, normalised);
    if !report.clean {
        return Err(refusal("before the pause", &report));
    }
    Ok((report, checked))
}

/// Runs the cutover of migration `name`; see the module documentation.
pub async fn cutover<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    options: &CutoverOptions,
) -> Result<CutoverReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    if spec.strategy == crate::steps::Strategy::BlueGreen {
        return crate::engine::blue_green::switchover(platform, journal, name, options).await;
    }
    let mut report = CutoverReport {
        dry_run: options.dry_run,
        switch: switch.describe(),
        ..Default::default()
    };
    let failed = check(platform, journal, name, switch, options, &mut report).await?;
    report.failed_checks = failed;
    if options.dry_run {
        return Ok(report);
    }
    refuse_failed(&report)?;
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    report.databases = dbs.clone();
    let admin = admin_session(platform, &spec, &streams).await?;
    let sources = sessions(platform, &spec, &streams, "source").await?;
    let targets = sessions(platform, &spec, &streams, "target").await?;
    let run = journal.step_started(name, Step::Cutover)?;
    journal.set_phase(name, Phase::CuttingOver, None)?;

    // The reverse publications and slots are made before the pause (a slot waits for the
    // target's running transactions); inside it, only the subscriptions and their start.
    // What replication does not carry is carried whole before the pause too; inside it,
    // only what changed since.
    let carrying = carry_options(options);
    let carry_sides = crate::carry::Sides {
        from: &sources.clients,
        from_role: "source",
        to: &targets.clients,
        to_role: "target",
        databases: &dbs,
        options: &carrying,
    };
    let before_pause = async {
        let ready = prepare_reverse(journal, &spec, &streams, &targets.clients).await?;
        failpoint_at("cutover:reverse_prepared");
        let (carried, baseline) = crate::carry::before_pause(&carry_sides).await?;
        // The catalog and what no row comparison sees, verified before anything pauses;
        // inside the pause, again where DDL ran since.
        let (verified, checked) = verify_before_pause(
            name,
            &streams,
            &sources.clients,
            &targets.clients,
            &carrying,
        )
        .await?;
        Ok::<_, EngineError>((ready, carried, baseline, verified, checked))
    };
    let (baseline, checked) = match before_pause.await {
        Ok((ready, carried, baseline, verified, checked)) => {
            report.rollback_ready = ready;
            report.carried_before = Some(carried);
            report.verified_before = Some(verified);
            (baseline, checked)
        }
        Err(error) => {
            let undo =
                drop_reverse(journal, &spec, &streams, &sources.clients, &targets.clients).await;
            journal.step_failed(run, &crate::error::error_chain(&error))?;
            journal.set_phase(name, Phase::Replicating, None)?;
            undo?;
            return Err(error);
        }
    };

    // Every wait below is bounded by `options.timeout` as a whole.
    let paused = Instant::now();
    let mut laps = Laps::start();
    let before_switch = async {
        switch.pause().await.map_err(|e| {
            EngineError::Precondition(format!("pausing {}: {e}", switch.describe()))
        })?;
        laps.lap("pause");
        for db in &dbs {
            journal.add_resource(name, "fence", db, db)?;
        }
        let fenced = fence(&admin, &dbs, &sources.pids).await?;
        report.sessions_ended = fenced.sessions;
        report.workers_ended = fenced.workers;
        failpoint_at("cutover:fenced");
        let fence_lsn = flushed_barrier(&sources.clients[0], "source").await?;
        report.fence_lsn = Some(fence_lsn);
        laps.lap("fence");
        if test_hook("fail-after-fence") {
            return Err(EngineError::Precondition(
                "test hook fail-after-fence: the cutover fails with the fence up".into(),
            ));
        }
        let slots: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
        let sides = DrainSides {
            publisher: &sources.clients[0],
            publisher_role: "source",
            subscriber: &targets.clients[0],
            subscriber_role: "target",
        };
        report.drained_lsn = Some(drain(&sides, &slots, fence_lsn).await?);
        report.drain_ms = Some(paused.elapsed().as_millis() as u64);
        laps.lap("drain");
        failpoint_at("cutover:drained");
        // Only what changed since the last validation pass began is verified again.
        if let Some(last) = journal.outputs(name, Step::Validate)?
            && crate::validate::lets_cutover(&last)
        {
            let mut total = crate::validate::FinalCheck::default();
            for (i, s) in streams.iter().enumerate() {
                if let Some(horizon) = last["horizons"][&s.database].as_i64() {
                    let check = crate::validate::final_check(
                        &sources.clients[i],
                        &targets.clients[i],
                        horizon,
                    )
                    .await?;
                    total.add(&s.database, check);
                }
            }
            let (mismatched, keys, withheld) = (
                total.mismatched_rows,
                total.keys.clone(),
                total.keys_withheld,
            );
            report.final_check = Some(total);
            if mismatched > 0 {
                let unlisted = if withheld > 0 {
                    format!(
                        " ({withheld} more whose keys are not identifiers; `pgseal migrate validate {name}` shows them)"
                    )
                } else {
                    String::new()
                };
                return Err(EngineError::Precondition(format!(
                    "the final check found {mismatched} row(s) differing since the last validation: {}{unlisted}",
                    keys.join(", ")
                )));
            }
        }
        laps.lap("final_check");
        for (i, s) in streams.iter().enumerate() {
            crate::validate::drop_change_log(&targets.clients[i]).await?;
            report.sequences.extend(
                sync_sequences(&s.database, &sources.clients[i], &targets.clients[i]).await?,
            );
        }
        laps.lap("sequences");
        let verified =
            crate::verify::fenced(&sources.clients, &targets.clients, &dbs, &checked).await?;
        let refusal = (!verified.clean).then(|| refusal("with the source fenced", &verified));
        report.verified = Some(verified);
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        laps.lap("verified");
        report.carried = Some(crate::carry::inside_pause(&carry_sides, &baseline).await?);
        laps.lap("carried");
        set_subscriptions(
            &targets.clients,
            streams.iter().map(|s| s.name.clone()),
            false,
            "target",
        )
        .await?;
        if report.rollback_ready {
            subscribe_reverse(
                platform,
                journal,
                &spec,
                &streams,
                &sources.clients,
                &targets.clients,
            )
            .await?;
        }
        laps.lap("reverse_setup");
        Ok::<(), EngineError>(())
    };
    let outcome = match tokio::time::timeout(options.timeout, before_switch).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Timeout {
            what: "fence, drain and sequences".into(),
            seconds: options.timeout.as_secs(),
        }),
    };
    if let Err(error) = outcome {
        // Back to where we were: the source serves, the target replicates.
        let undo = async {
            drop_reverse(journal, &spec, &streams, &sources.clients, &targets.clients).await?;
            if test_hook("undo-fails") {
                return Err(EngineError::Precondition(
                    "test hook undo-fails: the fence is not lifted".into(),
                ));
            }
            lift_fences(&admin, &dbs).await?;
            for db in &dbs {
                journal.remove_resource(name, "fence", db, db)?;
            }
            set_subscriptions(
                &targets.clients,
                streams.iter().map(|s| s.name.clone()),
                true,
                "target",
            )
            .await
        }
        .await;
        let resumed = switch.resume().await;
        let text = crate::error::error_chain(&error);
        journal.step_failed(run, &text)?;
        if let Err(undo_error) = undo {
            // The fence may still be up: the phase stays `cutting_over`, so `status` says
            // so and `resume` lifts it (or finishes forward, once switched).
            return Err(EngineError::Precondition(format!(
                "the cutover failed ({text}) and undoing it failed too ({}): the source's databases may still refuse connections; `pgseal migrate resume {name}` lifts the fence",
                crate::error::error_chain(&undo_error)
            )));
        }
        journal.set_phase(name, Phase::Replicating, None)?;
        resumed.map_err(|e| {
            EngineError::Precondition(format!("resuming {}: {e}", switch.describe()))
        })?;
        return Err(error);
    }

    // From here on applications may write to the target: a crash is finished forward.
    journal.add_resource(name, "switched", INSTANCE, &spec.target)?;
    report.client_wait_ms = switch_over(
        switch,
        &report.kept_on_source,
        "target",
        "cutover:switched",
        &mut laps,
    )
    .await?;
    report.write_pause_ms = Some(paused.elapsed().as_millis() as u64);
    report.phases = laps.laps;
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::CutOver, None)?;
    tracing::info!(migration = %name, databases = dbs.len(), write_pause_ms = report.write_pause_ms, sequences = report.sequences.len(), "cut over");
    Ok(report)
}

/// Points the switch at the other side (`to`, for messages) but for the databases in
/// `stay`, resumes it, and makes the first write through it; `point` is the failpoint
/// between pointing and resuming. Returns the longest client wait in milliseconds, when
/// the switch can tell.
async fn switch_over<S: Switch>(
    switch: &S,
    stay: &[String],
    to: &str,
    point: &str,
    laps: &mut Laps,
) -> Result<Option<u64>, EngineError> {
    let failed = |what: &str, e: SwitchError| {
        EngineError::Precondition(format!("{what} {}: {e}", switch.describe()))
    };
    let waited = switch.longest_client_wait().await;
    let read_at = Instant::now();
    switch
        .point_to_target(stay)
        .await
        .map_err(|e| failed(&format!("pointing at the {to}:"), e))?;
    laps.lap("switch");
    failpoint_at(point);
    switch.resume().await.map_err(|e| failed("resuming", e))?;
    laps.lap("resume");
    let client_wait = waited.map(|w| (w + read_at.elapsed()).as_millis() as u64);
    switch
        .probe_write()
        .await
        .map_err(|e| failed("the first write failed through", e))?;
    laps.lap("first_write");
    Ok(client_wait)
}

/// Sets up replication from the target back to the source for every stream, before the
/// pause: publication and slot on the target. [`subscribe_reverse`] then makes the
/// disabled subscription on the source inside the pause; `rollback` enables it. Returns
/// false (and sets nothing up) when the target's `wal_level` is not logical.
async fn prepare_reverse(
    journal: &Journal,
    spec: &MigrationSpec,
    streams: &[Stream],
    targets: &[Client],
) -> Result<bool, EngineError> {
    let name = &spec.name;
    let wal_level: String = targets[0]
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(sql("target", "reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        tracing::warn!(migration = %name, %wal_level, "no reverse replication: rollback will be unavailable");
        return Ok(false);
    }
    for (i, s) in streams.iter().enumerate() {
        let (back, db) = (s.reverse_name(), &s.database);
        // Never reuse what an earlier attempt left (a crash in this window, or a slot an
        // orphaned backend finished creating after recovery ran): an older slot would hold
        // the target's WAL and catalog rows from its older start.
        if replication::drop_slot(&targets[i], &back)
            .await
            .map_err(sql("target", "dropping a stale reverse slot"))?
        {
            tracing::warn!(migration = %name, database = %db, slot = %back, "a reverse slot left by an earlier attempt was dropped");
        }
        replication::drop_publication(&targets[i], &back)
            .await
            .map_err(sql("target", "dropping a stale reverse publication"))?;
        journal.add_resource(name, "reverse_publication", db, &back)?;
        replication::create_publication(&targets[i], &back, spec.tables.as_deref())
            .await
            .map_err(sql("target", "creating the reverse publication"))?;
        failpoint_at("cutover:reverse_publication");
        journal.add_resource(name, "reverse_slot", db, &back)?;
        replication::create_logical_slot(&targets[i], &back)
            .await
            .map_err(sql("target", "creating the reverse slot"))?;
    }
    Ok(true)
}

/// Inside the pause, once the forward subscriptions are drained and disabled and the
/// change logs dropped (a subscription takes the publication's table list as it is then):
/// a disabled reverse subscription on the source for every stream, started exactly at the
/// switch point. Its replication origin is advanced to the target's current WAL position,
/// so what the forward subscriptions applied on the target (since the reverse slot was
/// made) is never sent back; what applications write after the switch is. (The slot's own
/// start is earlier: a walsender starts at the later of the two.)
async fn subscribe_reverse<P: Platform>(
    platform: &P,
    journal: &Journal,
    spec: &MigrationSpec,
    streams: &[Stream],
    sources: &[Client],
    targets: &[Client],
) -> Result<(), EngineError> {
    let switch_point: tokio_postgres::types::PgLsn = targets[0]
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .map_err(sql("target", "reading the switch point"))?
        .get(0);
    for (i, s) in streams.iter().enumerate() {
        let (back, db) = (s.reverse_name(), &s.database);
        let conninfo = target_conninfo(platform, spec, db).await?;
        journal.add_resource(&spec.name, "reverse_subscription", db, &back)?;
        replication::create_subscription(&sources[i], &back, &conninfo, &back, &back, false)
            .await
            .map_err(sql("source", "creating the reverse subscription"))?;
        let advanced = sources[i]
            .query_opt(
                "SELECT pg_replication_origin_advance('pg_' || oid, $1) \
                 FROM pg_subscription WHERE subname = $2 AND subdbid = \
                   (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&switch_point, &back],
            )
            .await
            .map_err(sql("source", "setting where reverse replication starts"))?;
        if advanced.is_none() {
            return Err(EngineError::Precondition(format!(
                "the reverse subscription {back} is missing on the source's {db}"
            )));
        }
        // DDL on the target from the switch on travels back too (pgseal_pg::ddl).
        swap_ddl_roles((&targets[i], "target"), (&sources[i], "source")).await?;
    }
    Ok(())
}

/// Makes `capturing`'s database capture DDL and `replaying`'s replay it, where the
/// migration captures DDL at all: target → source while reverse replication runs, and
/// back when it is removed. Each side is a session and its role's name (`source`,
/// `target`).
async fn swap_ddl_roles(
    (capturing, capturing_role): (&Client, &'static str),
    (replaying, replaying_role): (&Client, &'static str),
) -> Result<(), EngineError> {
    // False where the migration installed no capture: nothing to swap then.
    if pgseal_pg::ddl::install_replay(replaying)
        .await
        .map_err(sql(replaying_role, "installing the DDL replay"))?
    {
        pgseal_pg::ddl::capture_here(capturing)
            .await
            .map_err(sql(capturing_role, "installing the DDL capture"))?;
    }
    Ok(())
}

/// How the source's server reaches the target's database `db` (the reverse
/// subscription's connection; it may hold a password: never log it).
async fn target_conninfo<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    db: &str,
) -> Result<String, EngineError> {
    platform
        .subscriber_conninfo(&spec.target, db)
        .await
        .map_err(|source| EngineError::Platform {
            what: "finding how the source reaches the target".into(),
            source,
        })
}

/// Removes every stream's reverse replication objects (after a failed or interrupted
/// cutover: a stale reverse slot would stream the forward-applied changes back).
async fn drop_reverse(
    journal: &Journal,
    spec: &MigrationSpec,
    streams: &[Stream],
    sources: &[Client],
    targets: &[Client],
) -> Result<(), EngineError> {
    for (i, s) in streams.iter().enumerate() {
        let back = s.reverse_name();
        replication::drop_subscription(&sources[i], &back)
            .await
            .map_err(sql("source", "dropping the reverse subscription"))?;
        replication::drop_slot(&targets[i], &back)
            .await
            .map_err(sql("target", "dropping the reverse slot"))?;
        replication::drop_publication(&targets[i], &back)
            .await
            .map_err(sql("target", "dropping the reverse publication"))?;
        // The source captures again, the target replays.
        swap_ddl_roles((&sources[i], "source"), (&targets[i], "target")).await?;
        for kind in [
            "reverse_subscription",
            "reverse_slot",
            "reverse_publication",
        ] {
            journal.remove_resource(&spec.name, kind, &s.database, &back)?;
        }
    }
    Ok(())
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The databases moved back.
    pub databases: Vec<String>,
    /// The target's flushed WAL position after its fence's barrier.
    pub fence_lsn: Lsn,
    /// The lowest confirmed position of the reverse slots when drained (≥ `fence_lsn`).
    pub drained_lsn: Lsn,
    /// Sequences set on the source from the target.
    pub sequences: Vec<SequenceSync>,
    /// Milliseconds from pause to the first write accepted on the source.
    pub write_pause_ms: u64,
    /// The longest a client waited behind the pause, as the switch saw it (see
    /// [`CutoverReport::client_wait_ms`]).
    pub client_wait_ms: Option<u64>,
    /// What the applications were switched with.
    pub switch: String,
    /// What replication does not carry, carried from the target before the pause.
    pub carried_before: crate::carry::Carried,
    /// The same, inside the pause.
    pub carried: crate::carry::Carried,
}

/// Switches applications back from the target to the source after a cutover, with the
/// same procedure in reverse for every database: pause, fence the target, let the source
/// apply everything written on the target since the switch (reverse replication), set
/// the sequences from the target, point the switch at the source, resume. Nothing written
/// on the target after cutover is lost. On failure before the switch the target serves
/// again.
pub async fn rollback<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    timeout: Duration,
) -> Result<RollbackReport, EngineError> {
    let record = journal.migration(name)?;
    if record.phase != Phase::CutOver {
        return Err(EngineError::Precondition(format!(
            "migration {name} is {}; rollback follows a cutover",
            record.phase.as_str()
        )));
    }
    let spec = record.spec;
    if spec.strategy == crate::steps::Strategy::BlueGreen {
        return Err(EngineError::Precondition(format!(
            "migration {name} was switched over by the platform's blue/green deployment, which has no way back: the old blue is kept as it was at the switchover (see `pgseal migrate status {name}`)"
        )));
    }
    if !journal.has_resource(name, "reverse_subscription")? {
        return Err(EngineError::Precondition(format!(
            "migration {name} has no reverse replication (the target's wal_level is not logical, or cleanup ran): rollback is unavailable"
        )));
    }
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    let backs: Vec<String> = streams.iter().map(Stream::reverse_name).collect();
    let targets = sessions(platform, &spec, &streams, "target").await?;
    let target_admin = target_admin(platform, &spec, &streams).await?;
    let source_admin = admin_session(platform, &spec, &streams).await?;
    // Large objects and roles written on the target since the cutover, carried back
    // whole before the pause (the source's databases stay fenced meanwhile: pgseal slips
    // in); inside it, only what changed since.
    let mut fenced_sessions = Vec::new();
    for db in &dbs {
        fenced_sessions.push(slip_in(platform, &spec, &source_admin, db).await?);
    }
    let carrying = pgseal_pg::globals::DiffOptions::default();
    let (carried_before, baseline) = crate::carry::before_pause(&crate::carry::Sides {
        from: &targets.clients,
        from_role: "target",
        to: &fenced_sessions,
        to_role: "source",
        databases: &dbs,
        options: &carrying,
    })
    .await?;
    drop(fenced_sessions);
    let mut carried = None;
    let run = journal.step_started(name, Step::Rollback)?;
    let paused = Instant::now();
    let mut sources: Option<Sessions> = None;
    let mut fence_lsn = None;
    let mut drained = None;
    let mut sequences = Vec::new();
    let before_switch = async {
        // On record before anything changes: a crash from here on leaves the endpoint
        // paused and the source open, and `resume` recovers an interrupted rollback only
        // when it finds these (lifting a fence that was never up is harmless).
        for db in &dbs {
            journal.add_resource(name, "target_fence", db, db)?;
        }
        switch.pause().await.map_err(|e| {
            EngineError::Precondition(format!("pausing {}: {e}", switch.describe()))
        })?;
        failpoint_at("rollback:paused");
        // The source databases let their apply workers in (anyone else is ended until the
        // switch); the workers must reach the target before the target is fenced, since a
        // fenced database refuses new walsender connections too.
        lift_fences(&source_admin, &dbs).await?;
        let opened = sessions(platform, &spec, &streams, "source").await?;
        for (i, s) in streams.iter().enumerate() {
            // The target's address may have changed since the reverse subscription was
            // made (renamed at cutover): point it at the target as it is now.
            let conninfo = target_conninfo(platform, &spec, &s.database).await?;
            opened.clients[i]
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {} CONNECTION {}",
                    quote_ident(&backs[i]),
                    replication::quote_literal(&conninfo)
                ))
                .await
                .map_err(sql(
                    "source",
                    "pointing the reverse subscription at the target",
                ))?;
        }
        set_subscriptions(&opened.clients, backs.iter().cloned(), true, "source").await?;
        for back in &backs {
            loop {
                let slot = replication::slot(&targets.clients[0], back)
                    .await
                    .map_err(sql("target", "reading the reverse slot"))?;
                if slot.is_some_and(|s| s.active) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        fence(&target_admin, &dbs, &targets.pids).await?;
        failpoint_at("rollback:fenced");
        let lsn = flushed_barrier(&targets.clients[0], "target").await?;
        fence_lsn = Some(lsn);
        let own = opened.pids.clone();
        sources = Some(opened);
        let back_sides = DrainSides {
            publisher: &targets.clients[0],
            publisher_role: "target",
            subscriber: &sources.as_ref().expect("set above").clients[0],
            subscriber_role: "source",
        };
        // Keep everyone else out of the source while its apply workers catch up.
        let keep_out = async {
            loop {
                if let Err(e) = source_admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = ANY($1) AND pid <> ALL($2) AND backend_type = 'client backend'",
                        &[&dbs, &own],
                    )
                    .await
                {
                    return Err::<(), EngineError>(sql("source", "keeping other sessions out")(e));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            done = drain(&back_sides, &backs, lsn) => drained = Some(done?),
            failed = keep_out => return failed,
        }
        let opened = sources.as_ref().expect("connected above");
        for (i, s) in streams.iter().enumerate() {
            sequences.extend(
                sync_sequences(&s.database, &targets.clients[i], &opened.clients[i]).await?,
            );
        }
        set_subscriptions(&opened.clients, backs.iter().cloned(), false, "source").await?;
        let carry_sides = crate::carry::Sides {
            from: &targets.clients,
            from_role: "target",
            to: &opened.clients,
            to_role: "source",
            databases: &dbs,
            options: &carrying,
        };
        carried = Some(crate::carry::inside_pause(&carry_sides, &baseline).await?);
        Ok::<(), EngineError>(())
    };
    let outcome = match tokio::time::timeout(timeout, before_switch).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Timeout {
            what: "fence, reverse drain and sequences".into(),
            seconds: timeout.as_secs(),
        }),
    };
    if let Err(error) = outcome {
        // The target keeps serving: fence the source again, lift the target's fence.
        let undo = async {
            if let Some(opened) = &sources {
                let _ = set_subscriptions(&opened.clients, backs.iter().cloned(), false, "source")
                    .await;
            }
            for db in &dbs {
                allow_connections(&source_admin, db, false, "fencing the source again").await?;
            }
            lift_fences(&target_admin, &dbs).await?;
            for db in &dbs {
                journal.remove_resource(name, "target_fence", db, db)?;
            }
            Ok::<(), EngineError>(())
        }
        .await;
        let resumed = switch.resume().await;
        journal.step_failed(run, &crate::error::error_chain(&error))?;
        undo?;
        resumed.map_err(|e| {
            EngineError::Precondition(format!("resuming {}: {e}", switch.describe()))
        })?;
        return Err(error);
    }
    journal.add_resource(name, "switched_back", INSTANCE, &spec.source)?;
    let mut laps = Laps::start();
    let client_wait_ms = switch_over(switch, &[], "source", "rollback:switched", &mut laps).await?;
    let report = RollbackReport {
        databases: dbs.clone(),
        fence_lsn: fence_lsn.expect("set before the switch"),
        drained_lsn: drained.expect("set before the switch"),
        sequences,
        write_pause_ms: paused.elapsed().as_millis() as u64,
        client_wait_ms,
        switch: switch.describe(),
        carried_before,
        carried: carried.expect("set before the switch"),
    };
    for db in &dbs {
        journal.remove_resource(name, "fence", db, db)?;
    }
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::RolledBack, None)?;
    tracing::info!(migration = %name, write_pause_ms = report.write_pause_ms, "rolled back");
    Ok(report)
}

/// Removes what the journal lists for migration `name`, on the source (`sources` holds a
/// session on each database that has resources) and on the platform (snapshots;
/// instances when `delete_instances`), and forgets each; the fence stays on record.
/// Returns what was removed, as `kind name (database)`.
async fn remove_resources<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    sources: &HashMap<String, Client>,
    delete_instances: bool,
) -> Result<Vec<String>, EngineError> {
    let mut removed_all = Vec::new();
    for resource in journal.resources(name)? {
        let label = resource.label();
        let source = sources.get(&resource.database);
        let removed = match (resource.kind.as_str(), source) {
            ("reverse_subscription", Some(source)) => {
                replication::drop_subscription(source, &resource.name)
                    .await
                    .map_err(sql("source", "dropping the reverse subscription"))?
            }
            ("slot", Some(source)) => replication::drop_slot(source, &resource.name)
                .await
                .map_err(sql("source", "dropping the slot"))?,
            (crate::slot_guard::RESOURCE, Some(source)) => {
                crate::slot_guard::restore(source, &resource.name).await?;
                true
            }
            ("publication", Some(source)) => replication::drop_publication(source, &resource.name)
                .await
                .map_err(sql("source", "dropping the publication"))?,
            (crate::journal::DDL_CAPTURE, Some(source)) => pgseal_pg::ddl::remove(source)
                .await
                .map_err(sql("source", "removing the DDL capture"))?,
            ("replica_identity", Some(source)) => {
                replication::restore_replica_identity(source, &resource.name)
                    .await
                    .map_err(sql("source", "restoring a replica identity"))?
            }
            ("snapshot" | "instance", _) if resource.kind == "snapshot" || delete_instances => {
                let result = if resource.kind == "snapshot" {
                    platform.delete_snapshot(&resource.name).await
                } else {
                    platform.delete_instance(&resource.name).await
                };
                match result {
                    Ok(()) => true,
                    Err(e) if e.kind == pgseal_platform::ErrorKind::NotFound => false,
                    Err(source) => {
                        return Err(EngineError::Platform {
                            what: format!("deleting {label}"),
                            source,
                        });
                    }
                }
            }
            _ => false,
        };
        if removed {
            removed_all.push(label);
        }
        // The fence and the renames stay on record: they say what the names mean now.
        if resource.kind != "fence" && resource.kind != "renamed" {
            journal.remove_resource(name, &resource.kind, &resource.database, &resource.name)?;
        }
    }
    Ok(removed_all)
}

/// After a rollback: the source is the database again. Drops the reverse subscriptions,
/// the slots, publications and replica identity changes on the source, the snapshot, and
/// deletes the abandoned target instance (with the reverse slots and publications in it).
async fn cleanup_after_rollback<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    spec: MigrationSpec,
) -> Result<CleanupReport, EngineError> {
    let mut report = CleanupReport::default();
    let mut sources = HashMap::new();
    for s in streams_of(journal, name)? {
        let client = connect_source_db(platform, &spec, &s.database).await?;
        sources.insert(s.database, client);
    }
    report.removed = remove_resources(platform, journal, name, &sources, true).await?;
    journal.set_phase(name, Phase::CleanedUp, None)?;
    Ok(report)
}

/// After a crash during rollback (the migration still cut over, the target fenced): before
/// the switch back, the target serves again (source re-fenced, reverse subscriptions
/// disabled, target's fences lifted); after it, the migration is marked rolled back. The
/// caller resumes the switch (pointed at the source when rolled back).
pub async fn recover_interrupted_rollback<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let spec = journal.migration(name)?.spec;
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    if journal.has_resource(name, "switched_back")? {
        for db in &dbs {
            journal.remove_resource(name, "fence", db, db)?;
        }
        journal.set_phase(name, Phase::RolledBack, None)?;
        return Ok(Recovered::RolledBack);
    }
    // The source databases may be open (their fences were lifted for the reverse apply).
    let admin = admin_session(platform, &spec, &streams).await?;
    for s in &streams {
        let source = slip_in(platform, &spec, &admin, &s.database).await?;
        source
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} DISABLE",
                quote_ident(&s.reverse_name())
            ))
            .await
            .map_err(sql("source", "disabling the reverse subscription"))?;
    }
    let target_admin = target_admin(platform, &spec, &streams).await?;
    lift_fences(&target_admin, &dbs).await?;
    for db in &dbs {
        journal.remove_resource(name, "target_fence", db, db)?;
    }
    Ok(Recovered::StillCutOver)
}

/// After a crash during cutover: before the switch, drops the reverse objects it may have
/// made, lifts the fences, re-enables the subscriptions and returns the migration to
/// replicating; after it, marks it cut over.
pub async fn recover_interrupted<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let spec = journal.migration(name)?.spec;
    if spec.strategy == crate::steps::Strategy::BlueGreen {
        return crate::engine::blue_green::recover(platform, journal, name).await;
    }
    if journal.has_resource(name, "switched")? {
        journal.set_phase(name, Phase::CutOver, None)?;
        return Ok(Recovered::CutOver);
    }
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    let admin = admin_session(platform, &spec, &streams).await?;
    lift_fences(&admin, &dbs).await?;
    for db in &dbs {
        journal.remove_resource(name, "fence", db, db)?;
    }
    let sources = sessions(platform, &spec, &streams, "source").await?;
    let targets = sessions(platform, &spec, &streams, "target").await?;
    drop_reverse(journal, &spec, &streams, &sources.clients, &targets.clients).await?;
    set_subscriptions(
        &targets.clients,
        streams.iter().map(|s| s.name.clone()),
        true,
        "target",
    )
    .await?;
    journal.set_phase(name, Phase::Replicating, None)?;
    Ok(Recovered::BackToReplicating)
}

/// After cutover: drops the subscriptions on the target, the slots, publications and
/// replica identity changes on the source, and the snapshot, in every database. The
/// source stays fenced (its databases refuse connections); the target instance stays, it
/// is the database now.
pub async fn cleanup<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<CleanupReport, EngineError> {
    let record = journal.migration(name)?;
    if record.phase == Phase::CleanedUp {
        return Ok(CleanupReport::default());
    }
    if record.phase == Phase::RolledBack {
        return cleanup_after_rollback(platform, journal, name, record.spec).await;
    }
    if record.phase != Phase::CutOver {
        return Err(EngineError::Precondition(format!(
            "migration {name} is {}; cleanup follows a cutover (before one, `pgseal migrate abort {name}` removes everything)",
            record.phase.as_str()
        )));
    }
    if record.spec.strategy == crate::steps::Strategy::BlueGreen {
        return crate::engine::blue_green::cleanup(platform, journal, name).await;
    }
    let spec = record.spec;
    let streams = streams_of(journal, name)?;
    let mut report = CleanupReport::default();
    let targets = sessions(platform, &spec, &streams, "target").await?;
    for (i, s) in streams.iter().enumerate() {
        let (target, back, db) = (&targets.clients[i], s.reverse_name(), &s.database);
        // Rollback is no longer possible after cleanup: the reverse objects go too.
        if replication::drop_slot(target, &back)
            .await
            .map_err(sql("target", "dropping the reverse slot"))?
        {
            report.removed.push(format!("slot {back} (target, {db})"));
        }
        if replication::drop_publication(target, &back)
            .await
            .map_err(sql("target", "dropping the reverse publication"))?
        {
            report
                .removed
                .push(format!("publication {back} (target, {db})"));
        }
        if replication::drop_subscription(target, &s.name)
            .await
            .map_err(sql("target", "dropping the subscription"))?
        {
            report
                .removed
                .push(format!("subscription {} (target, {db})", s.name));
        }
        if pgseal_pg::ddl::remove(target)
            .await
            .map_err(sql("target", "removing the DDL replay"))?
        {
            report.removed.push(format!(
                "DDL capture {} (target, {db})",
                pgseal_pg::ddl::SCHEMA
            ));
        }
    }
    // The publications live in the fenced databases: drop them from inside.
    let admin = admin_session(platform, &spec, &streams).await?;
    let mut sources = HashMap::new();
    for s in &streams {
        let client = slip_in(platform, &spec, &admin, &s.database).await?;
        sources.insert(s.database.clone(), client);
    }
    // The target is the database now: its instance stays; the fence stays on record.
    report
        .removed
        .extend(remove_resources(platform, journal, name, &sources, false).await?);
    journal.set_phase(name, Phase::CleanedUp, None)?;
    Ok(report)
}
