//! Cutover: moves applications from the source to the replicating encrypted target with a
//! pause, not an outage, and nothing lost.
//!
//! 1. Preconditions (all listed at once): replicating, lag under the limit, no apply
//!    errors, the apply worker running, schema fingerprints equal.
//! 2. [`Switch::pause`]: the endpoint holds new transactions, waiting for running ones.
//! 3. Fence **every** write path to the source database: `ALLOW_CONNECTIONS false` (no new
//!    session of any role, superusers included), then every other client session of that
//!    database is ended. Proof: for a window, no session but pgseal's is connected to the
//!    database and no prepared transaction of it waits; new connections are refused.
//! 4. Drain: the source's WAL position after the fence is read, and pgseal waits until the
//!    slot's `confirmed_flush_lsn` — what the target reports applied *and flushed* — has
//!    reached it.
//! 5. Every sequence of the database is set on the target from the source's
//!    `last_value`/`is_called` (not `MAX(column)`, not only owned sequences), and read back.
//! 6. The subscription is disabled, [`Switch::point_to_target`], [`Switch::resume`], and a
//!    first write through the switch measures the write pause.
//!
//! If anything fails (or `timeout` passes) before the switch, the fence is lifted, the
//! subscription re-enabled, the endpoint resumed on the source, and the migration is back
//! to replicating; the error says why.

use std::future::Future;
use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, quote_ident};
use pgseal_platform::Platform;
use serde::Serialize;
use tokio_postgres::Client;

use crate::engine::{EngineError, connect_source, connect_source_db, connect_to};
use crate::journal::{Journal, Phase};
use crate::status::status;
use crate::steps::{Step, failpoint_at};

/// An error of a [`Switch`].
pub type SwitchError = Box<dyn std::error::Error + Send + Sync>;

/// How applications are moved from the source to the target: an endpoint (PgBouncer), a
/// hook command, or nothing but the new URL printed.
pub trait Switch: Sync {
    /// What it is, for messages.
    fn describe(&self) -> String;
    /// Holds new transactions (waiting for running ones to end).
    fn pause(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Sends applications to the target from now on.
    fn point_to_target(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Lets transactions flow again, wherever they now go.
    fn resume(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Makes one write the way applications do, once switched (measures the pause).
    fn probe_write(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
}

/// What cutover is asked to do.
#[derive(Debug, Clone)]
pub struct CutoverOptions {
    /// The largest lag (bytes) at which cutover may start.
    pub max_lag: u64,
    /// How long fence, drain and sequences may take before pgseal gives up and lifts the fence.
    pub timeout: Duration,
    /// Only check the preconditions.
    pub dry_run: bool,
}

/// One sequence set on the target.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceSync {
    /// `schema.sequence`.
    pub sequence: String,
    /// The source's `last_value`.
    pub last_value: i64,
    /// The source's `is_called`.
    pub is_called: bool,
}

/// What cutover did.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    /// Preconditions that failed (empty when all hold).
    pub failed_checks: Vec<String>,
    /// True when only the checks ran.
    pub dry_run: bool,
    /// Client sessions of the source database ended by the fence.
    pub sessions_ended: i64,
    /// The source's WAL position once fenced.
    pub fence_lsn: Option<Lsn>,
    /// The target's confirmed position when drained (≥ `fence_lsn`).
    pub drained_lsn: Option<Lsn>,
    /// Milliseconds from pause to drained.
    pub drain_ms: Option<u64>,
    /// Sequences set on the target.
    pub sequences: Vec<SequenceSync>,
    /// Milliseconds from pause to the first write accepted through the switch.
    pub write_pause_ms: Option<u64>,
    /// What the applications were switched with.
    pub switch: String,
    /// True when reverse replication (target → source) was set up for `rollback`.
    pub rollback_ready: bool,
    /// The re-verification of rows changed since the last clean validation, if one ran.
    pub final_check: Option<crate::validate::FinalCheck>,
}

/// Checks the preconditions; returns what fails.
async fn check<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    max_lag: u64,
) -> Result<Vec<String>, EngineError> {
    let st = status(platform, journal, name, None).await?;
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
            match rep.lag_bytes {
                Some(lag) if lag > max_lag => {
                    failed.push(format!("lag is {lag} bytes, above --max-lag {max_lag}"))
                }
                None => failed.push("lag unknown: the slot is missing".into()),
                _ => {}
            }
            match &rep.subscription {
                None => failed.push("the subscription is missing on the target".into()),
                Some(sub) => {
                    if sub.apply_errors > 0 {
                        failed.push(format!(
                            "the apply worker reported {} error(s)",
                            sub.apply_errors
                        ));
                    }
                    if sub.worker_pid.is_none() {
                        failed.push("the apply worker is not running".into());
                    }
                }
            }
        }
    }
    // The target must be encrypted under the snapshot's key, as the platform says now.
    if let Some(snapshot) = journal.outputs(name, Step::Snapshot)? {
        let expected = snapshot["snapshot"]["restore_key"]
            .as_str()
            .or(snapshot["snapshot"]["key_id"].as_str())
            .map(str::to_string);
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
    if let Some(last) = journal.outputs(name, Step::Validate)?
        && last["clean"] == false
    {
        failed.push(format!(
            "the last validation found {} mismatched row(s); `pgseal migrate validate {name}` again once fixed",
            last["mismatched_rows"]
        ));
    }
    if let Some(schema) = &st.schema
        && !schema.drift.is_empty()
    {
        failed.push(format!(
            "schema drift ({} difference(s)); `pgseal migrate status {name}` shows the DDL to run on the target",
            schema.drift.len()
        ));
    }
    Ok(failed)
}

fn sql(role: &'static str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.to_string();
    move |source| EngineError::Sql { role, what, source }
}

/// Closes every write path to database `db`: no new session, every other session ended;
/// returns how many sessions were ended once the fence is proven. `admin` is a session on
/// another database of the source server (PostgreSQL refuses `ALLOW_CONNECTIONS false`
/// for the current database); `keep` is pgseal's own session on `db`, which stays.
async fn fence(admin: &Client, db: &str, keep: i32) -> Result<i64, EngineError> {
    allow_connections(admin, db, false, "refusing new connections to the database").await?;
    let mut ended = 0;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let row = admin
            .query_one(
                "WITH others AS (SELECT pid FROM pg_stat_activity \
                    WHERE datname = $1 AND pid <> $2 \
                      AND backend_type = 'client backend') \
                 SELECT (SELECT count(*) FROM others), \
                        (SELECT count(*) FROM others WHERE pg_terminate_backend(pid)), \
                        (SELECT count(*) FROM pg_prepared_xacts WHERE database = $1)",
                &[&db, &keep],
            )
            .await
            .map_err(sql("source", "ending the database's sessions"))?;
        let (others, terminated, prepared): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        ended += terminated;
        if prepared > 0 {
            return Err(EngineError::Precondition(format!(
                "{prepared} prepared transaction(s) of the database wait for COMMIT PREPARED or ROLLBACK PREPARED; resolve them first"
            )));
        }
        if others == 0 {
            // Proven once nothing has been connected for a whole window.
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(200) {
                return Ok(ended);
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lift_fence(admin: &Client, db: &str) -> Result<(), EngineError> {
    allow_connections(admin, db, true, "lifting the fence").await
}

/// `ALTER DATABASE db ALLOW_CONNECTIONS allow`, from `admin` (a session on another
/// database); `what` names the step in an error.
async fn allow_connections(
    admin: &Client,
    db: &str,
    allow: bool,
    what: &str,
) -> Result<(), EngineError> {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
            quote_ident(db)
        ))
        .await
        .map_err(sql("source", what))
}

/// A session on the source database however it is fenced: the fence is lifted for a
/// moment, pgseal connects, the fence is closed again at once and anyone else who slipped
/// in is ended. Returns pgseal's session, with the fence in place.
async fn slip_in<P: Platform>(
    platform: &P,
    spec: &crate::journal::MigrationSpec,
) -> Result<Client, EngineError> {
    let admin = admin_session(platform, spec).await?;
    lift_fence(&admin, &spec.database).await?;
    let source = connect_source(platform, spec).await;
    allow_connections(&admin, &spec.database, false, "fencing the database again").await?;
    let source = source?;
    let own: i32 = source
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(sql("source", "reading pgseal's session id"))?
        .get(0);
    fence(&admin, &spec.database, own).await?;
    Ok(source)
}

/// A session on another database of the source server, for the fence.
async fn admin_session<P: Platform>(
    platform: &P,
    spec: &crate::journal::MigrationSpec,
) -> Result<Client, EngineError> {
    let other = crate::engine::other_database(&spec.database);
    connect_source_db(platform, spec, other).await
}

/// Waits until the target has confirmed everything up to `lsn` applied and flushed.
async fn drain(source: &Client, slot: &str, lsn: Lsn) -> Result<Lsn, EngineError> {
    replication::wait_confirmed(source, slot, lsn)
        .await
        .map_err(sql("source", "reading the slot"))?
        .ok_or_else(|| EngineError::Precondition(format!("slot {slot} is gone")))
}

/// Sets every sequence of the source database on the target, and reads them back.
async fn sync_sequences(
    source: &Client,
    target: &Client,
) -> Result<Vec<SequenceSync>, EngineError> {
    let names: Vec<String> = source
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
        let row = source
            .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
            .await
            .map_err(sql("source", "reading a sequence"))?;
        let (last_value, is_called): (i64, bool) = (row.get(0), row.get(1));
        let back: i64 = target
            .query_one(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&seq, &last_value, &is_called],
            )
            .await
            .map_err(sql("target", "setting a sequence"))?
            .get(0);
        if back != last_value {
            return Err(EngineError::Precondition(format!(
                "sequence {seq} reads {back} on the target after setting {last_value}"
            )));
        }
        synced.push(SequenceSync {
            sequence: seq,
            last_value,
            is_called,
        });
    }
    Ok(synced)
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
    let failed_checks = check(platform, journal, name, options.max_lag).await?;
    let mut report = CutoverReport {
        failed_checks,
        dry_run: options.dry_run,
        sessions_ended: 0,
        fence_lsn: None,
        drained_lsn: None,
        drain_ms: None,
        sequences: Vec::new(),
        write_pause_ms: None,
        switch: switch.describe(),
        rollback_ready: false,
        final_check: None,
    };
    if options.dry_run {
        return Ok(report);
    }
    if !report.failed_checks.is_empty() {
        return Err(EngineError::Precondition(format!(
            "cutover refused, nothing was changed: {}",
            report.failed_checks.join("; ")
        )));
    }
    let rep_name = spec.replication_name();
    let source = connect_source(platform, &spec).await?;
    let admin = admin_session(platform, &spec).await?;
    let own_pid: i32 = source
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(sql("source", "reading pgseal's session id"))?
        .get(0);
    let target = connect_to(platform, &spec.target, &spec.database, "target").await?;
    let run = journal.step_started(name, Step::Cutover)?;
    journal.set_phase(name, Phase::CuttingOver, None)?;

    // Every wait below is bounded by `options.timeout` as a whole.
    let paused = Instant::now();
    let before_switch = async {
        switch.pause().await.map_err(|e| {
            EngineError::Precondition(format!("pausing {}: {e}", switch.describe()))
        })?;
        journal.add_resource(name, "fence", &spec.database)?;
        report.sessions_ended = fence(&admin, &spec.database, own_pid).await?;
        failpoint_at("cutover:fenced");
        let fence_lsn = replication::current_wal_lsn(&source)
            .await
            .map_err(sql("source", "reading the WAL position"))?;
        report.fence_lsn = Some(fence_lsn);
        report.drained_lsn = Some(drain(&source, &rep_name, fence_lsn).await?);
        report.drain_ms = Some(paused.elapsed().as_millis() as u64);
        failpoint_at("cutover:drained");
        // Only what changed since the last clean validation pass is verified again.
        if let Some(last) = journal.outputs(name, Step::Validate)?
            && last["clean"] == true
            && let Some(horizon) = last["horizon"].as_i64()
        {
            let check = crate::validate::final_check(&source, &target, horizon).await?;
            let (mismatched, keys) = (check.mismatched_rows, check.keys.clone());
            report.final_check = Some(check);
            if mismatched > 0 {
                return Err(EngineError::Precondition(format!(
                    "the final check found {mismatched} row(s) differing since the last validation: {}",
                    keys.join(", ")
                )));
            }
        }
        crate::validate::drop_change_log(&target).await?;
        report.sequences = sync_sequences(&source, &target).await?;
        target
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} DISABLE",
                quote_ident(&rep_name)
            ))
            .await
            .map_err(sql("target", "disabling the subscription"))?;
        report.rollback_ready = prepare_reverse(platform, journal, &spec, &source, &target).await?;
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
            drop_reverse(journal, &spec, &source, &target).await?;
            lift_fence(&admin, &spec.database).await?;
            journal.remove_resource(name, "fence", &spec.database)?;
            replication::enable_subscription(&target, &rep_name)
                .await
                .map_err(sql("target", "re-enabling the subscription"))?;
            Ok::<(), EngineError>(())
        }
        .await;
        let resumed = switch.resume().await;
        let text = crate::engine::error_chain(&error);
        journal.step_failed(run, &text)?;
        journal.set_phase(name, Phase::Replicating, None)?;
        undo?;
        resumed.map_err(|e| {
            EngineError::Precondition(format!("resuming {}: {e}", switch.describe()))
        })?;
        return Err(error);
    }

    // From here on applications may write to the target: a crash is finished forward.
    journal.add_resource(name, "switched", &spec.target)?;
    switch_over(switch, "target", "cutover:switched").await?;
    report.write_pause_ms = Some(paused.elapsed().as_millis() as u64);
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::CutOver, None)?;
    tracing::info!(migration = %name, write_pause_ms = report.write_pause_ms, sequences = report.sequences.len(), "cut over");
    Ok(report)
}

/// Points the switch at the other side (`to`, for messages), resumes it, and makes the
/// first write through it; `point` is the failpoint between pointing and resuming.
async fn switch_over<S: Switch>(switch: &S, to: &str, point: &str) -> Result<(), EngineError> {
    let failed = |what: &str, e: SwitchError| {
        EngineError::Precondition(format!("{what} {}: {e}", switch.describe()))
    };
    switch
        .point_to_target()
        .await
        .map_err(|e| failed(&format!("pointing at the {to}:"), e))?;
    failpoint_at(point);
    switch.resume().await.map_err(|e| failed("resuming", e))?;
    switch
        .probe_write()
        .await
        .map_err(|e| failed("the first write failed through", e))
}

/// The name of the reverse publication, slot and subscription (target → source).
pub fn reverse_name(spec: &crate::journal::MigrationSpec) -> String {
    format!("{}_back", spec.replication_name())
}

/// Sets up replication from the target back to the source, starting exactly at the switch
/// point (no application has written to the target yet): publication and slot on the
/// target, a disabled subscription on the source. `rollback` enables it. Returns false
/// (and sets nothing up) when the target's `wal_level` is not logical.
async fn prepare_reverse<P: Platform>(
    platform: &P,
    journal: &Journal,
    spec: &crate::journal::MigrationSpec,
    source: &Client,
    target: &Client,
) -> Result<bool, EngineError> {
    let name = &spec.name;
    let back = reverse_name(spec);
    let wal_level: String = target
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(sql("target", "reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        tracing::warn!(migration = %name, %wal_level, "no reverse replication: rollback will be unavailable");
        return Ok(false);
    }
    journal.add_resource(name, "reverse_publication", &back)?;
    replication::create_publication(target, &back, spec.tables.as_deref())
        .await
        .map_err(sql("target", "creating the reverse publication"))?;
    journal.add_resource(name, "reverse_slot", &back)?;
    replication::create_logical_slot(target, &back)
        .await
        .map_err(sql("target", "creating the reverse slot"))?;
    let conninfo = target_conninfo(platform, spec).await?;
    journal.add_resource(name, "reverse_subscription", &back)?;
    replication::create_subscription(source, &back, &conninfo, &back, &back)
        .await
        .map_err(sql("source", "creating the reverse subscription"))?;
    Ok(true)
}

/// How the source's server reaches the target's database (the reverse subscription's
/// connection; it may hold a password: never log it).
async fn target_conninfo<P: Platform>(
    platform: &P,
    spec: &crate::journal::MigrationSpec,
) -> Result<String, EngineError> {
    platform
        .subscriber_conninfo(&spec.target, &spec.database)
        .await
        .map_err(|source| EngineError::Platform {
            what: "finding how the source reaches the target".into(),
            source,
        })
}

/// Removes the reverse replication objects (after a failed cutover).
async fn drop_reverse(
    journal: &Journal,
    spec: &crate::journal::MigrationSpec,
    source: &Client,
    target: &Client,
) -> Result<(), EngineError> {
    let back = reverse_name(spec);
    replication::drop_subscription(source, &back)
        .await
        .map_err(sql("source", "dropping the reverse subscription"))?;
    replication::drop_slot(target, &back)
        .await
        .map_err(sql("target", "dropping the reverse slot"))?;
    replication::drop_publication(target, &back)
        .await
        .map_err(sql("target", "dropping the reverse publication"))?;
    for kind in [
        "reverse_subscription",
        "reverse_slot",
        "reverse_publication",
    ] {
        journal.remove_resource(&spec.name, kind, &back)?;
    }
    Ok(())
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The target's WAL position once fenced.
    pub fence_lsn: Lsn,
    /// The source's confirmed position of the reverse slot when drained (≥ `fence_lsn`).
    pub drained_lsn: Lsn,
    /// Sequences set on the source from the target.
    pub sequences: Vec<SequenceSync>,
    /// Milliseconds from pause to the first write accepted on the source.
    pub write_pause_ms: u64,
    /// What the applications were switched with.
    pub switch: String,
}

/// Switches applications back from the target to the source after a cutover, with the
/// same procedure in reverse: pause, fence the target, let the source apply everything
/// written on the target since the switch (reverse replication), set the sequences from
/// the target, point the switch at the source, resume. Nothing written on the target after
/// cutover is lost. On failure before the switch the target serves again.
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
    if !journal
        .resources(name)?
        .iter()
        .any(|r| r.kind == "reverse_subscription")
    {
        return Err(EngineError::Precondition(format!(
            "migration {name} has no reverse replication (the target's wal_level is not logical, or cleanup ran): rollback is unavailable"
        )));
    }
    let back = reverse_name(&spec);
    let target = connect_to(platform, &spec.target, &spec.database, "target").await?;
    let target_own: i32 = target
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(sql("target", "reading pgseal's session id"))?
        .get(0);
    let other = crate::engine::other_database(&spec.database);
    let target_admin = connect_to(platform, &spec.target, other, "target").await?;
    let source_admin = admin_session(platform, &spec).await?;
    let run = journal.step_started(name, Step::Rollback)?;
    let paused = Instant::now();
    let mut source: Option<Client> = None;
    let mut fence_lsn = None;
    let mut drained = None;
    let mut sequences = Vec::new();
    let before_switch = async {
        switch.pause().await.map_err(|e| {
            EngineError::Precondition(format!("pausing {}: {e}", switch.describe()))
        })?;
        // The source database lets its apply worker in (anyone else is ended until the
        // switch); the worker must reach the target before the target is fenced, since a
        // fenced database refuses new walsender connections too.
        lift_fence(&source_admin, &spec.database).await?;
        let client = connect_source(platform, &spec).await?;
        // The target's address may have changed since the reverse subscription was made
        // (renamed at cutover): point it at the target as it is now.
        let target_conninfo = target_conninfo(platform, &spec).await?;
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} CONNECTION {}",
                quote_ident(&back),
                replication::quote_literal(&target_conninfo)
            ))
            .await
            .map_err(sql(
                "source",
                "pointing the reverse subscription at the target",
            ))?;
        replication::enable_subscription(&client, &back)
            .await
            .map_err(sql("source", "enabling the reverse subscription"))?;
        let own: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(sql("source", "reading pgseal's session id"))?
            .get(0);
        loop {
            let slot = replication::slot(&target, &back)
                .await
                .map_err(sql("target", "reading the reverse slot"))?;
            if slot.is_some_and(|s| s.active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        journal.add_resource(name, "target_fence", &spec.database)?;
        fence(&target_admin, &spec.database, target_own).await?;
        failpoint_at("rollback:fenced");
        let lsn = replication::current_wal_lsn(&target)
            .await
            .map_err(sql("target", "reading the WAL position"))?;
        fence_lsn = Some(lsn);
        source = Some(client);
        loop {
            source_admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity                      WHERE datname = $1 AND pid <> $2 AND backend_type = 'client backend'",
                    &[&spec.database, &own],
                )
                .await
                .map_err(sql("source", "keeping other sessions out"))?;
            let slot = replication::slot(&target, &back)
                .await
                .map_err(sql("target", "reading the reverse slot"))?
                .ok_or_else(|| EngineError::Precondition(format!("reverse slot {back} is gone")))?;
            if let Some(confirmed) = slot.confirmed_flush_lsn
                && confirmed >= lsn
            {
                drained = Some(confirmed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = source.as_ref().expect("connected above");
        sequences = sync_sequences(&target, client).await?;
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} DISABLE",
                quote_ident(&back)
            ))
            .await
            .map_err(sql("source", "disabling the reverse subscription"))?;
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
            if let Some(client) = &source {
                let _ = client
                    .batch_execute(&format!(
                        "ALTER SUBSCRIPTION {} DISABLE",
                        quote_ident(&back)
                    ))
                    .await;
            }
            allow_connections(
                &source_admin,
                &spec.database,
                false,
                "fencing the source again",
            )
            .await?;
            lift_fence(&target_admin, &spec.database).await?;
            journal.remove_resource(name, "target_fence", &spec.database)?;
            Ok::<(), EngineError>(())
        }
        .await;
        let resumed = switch.resume().await;
        journal.step_failed(run, &crate::engine::error_chain(&error))?;
        undo?;
        resumed.map_err(|e| {
            EngineError::Precondition(format!("resuming {}: {e}", switch.describe()))
        })?;
        return Err(error);
    }
    journal.add_resource(name, "switched_back", &spec.source)?;
    switch_over(switch, "source", "rollback:switched").await?;
    let report = RollbackReport {
        fence_lsn: fence_lsn.expect("set before the switch"),
        drained_lsn: drained.expect("set before the switch"),
        sequences,
        write_pause_ms: paused.elapsed().as_millis() as u64,
        switch: switch.describe(),
    };
    journal.remove_resource(name, "fence", &spec.database)?;
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::RolledBack, None)?;
    tracing::info!(migration = %name, write_pause_ms = report.write_pause_ms, "rolled back");
    Ok(report)
}

/// Removes what the journal lists for migration `name`, on the source (`source` is a
/// session on its database) and on the platform (snapshots; instances when
/// `delete_instances`), and forgets each; the fence stays on record. Returns what was
/// removed, as `kind name`.
async fn remove_resources<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    source: &Client,
    delete_instances: bool,
) -> Result<Vec<String>, EngineError> {
    let mut removed_all = Vec::new();
    for resource in journal.resources(name)? {
        let label = format!("{} {}", resource.kind, resource.name);
        let removed = match resource.kind.as_str() {
            "reverse_subscription" => replication::drop_subscription(source, &resource.name)
                .await
                .map_err(sql("source", "dropping the reverse subscription"))?,
            "slot" => replication::drop_slot(source, &resource.name)
                .await
                .map_err(sql("source", "dropping the slot"))?,
            "publication" => replication::drop_publication(source, &resource.name)
                .await
                .map_err(sql("source", "dropping the publication"))?,
            "replica_identity" => {
                source
                    .batch_execute(&format!(
                        "ALTER TABLE {} REPLICA IDENTITY DEFAULT",
                        resource.name
                    ))
                    .await
                    .map_err(sql("source", "restoring a replica identity"))?;
                true
            }
            "snapshot" | "instance" if resource.kind == "snapshot" || delete_instances => {
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
            journal.remove_resource(name, &resource.kind, &resource.name)?;
        }
    }
    Ok(removed_all)
}

/// After a rollback: the source is the database again. Drops the reverse subscription,
/// the slot, publication and replica identity changes on the source, the snapshot, and
/// deletes the abandoned target instance (with the reverse slot and publication in it).
async fn cleanup_after_rollback<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    spec: crate::journal::MigrationSpec,
) -> Result<CleanupReport, EngineError> {
    let mut report = CleanupReport::default();
    let source = connect_source(platform, &spec).await?;
    report.removed = remove_resources(platform, journal, name, &source, true).await?;
    journal.set_phase(name, Phase::CleanedUp, None)?;
    Ok(report)
}

/// After a crash during rollback (the migration still cut over, the target fenced): before
/// the switch back, the target serves again (source re-fenced, reverse subscription
/// disabled, target's fence lifted); after it, the migration is marked rolled back. The
/// caller resumes the switch (pointed at the source when rolled back).
pub async fn recover_interrupted_rollback<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let spec = journal.migration(name)?.spec;
    let resources = journal.resources(name)?;
    if resources.iter().any(|r| r.kind == "switched_back") {
        journal.remove_resource(name, "fence", &spec.database)?;
        journal.set_phase(name, Phase::RolledBack, None)?;
        return Ok(Recovered::RolledBack);
    }
    let back = reverse_name(&spec);
    // The source database may be open (its fence was lifted for the reverse apply).
    let source = slip_in(platform, &spec).await?;
    source
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} DISABLE",
            quote_ident(&back)
        ))
        .await
        .map_err(sql("source", "disabling the reverse subscription"))?;
    let other = crate::engine::other_database(&spec.database);
    let target_admin = connect_to(platform, &spec.target, other, "target").await?;
    lift_fence(&target_admin, &spec.database).await?;
    journal.remove_resource(name, "target_fence", &spec.database)?;
    Ok(Recovered::StillCutOver)
}

/// Where an interrupted cutover was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// It had not switched: the fence is lifted and the migration replicates again.
    BackToReplicating,
    /// It had switched: the migration is cut over (the caller points and resumes the switch
    /// again, which is idempotent).
    CutOver,
    /// A rollback had not switched back: the target serves again, still cut over.
    StillCutOver,
    /// A rollback had switched back: the migration is rolled back.
    RolledBack,
}

/// After a crash during cutover: before the switch, lifts the fence, re-enables the
/// subscription and returns the migration to replicating; after it, marks it cut over.
pub async fn recover_interrupted<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let spec = journal.migration(name)?.spec;
    if journal
        .resources(name)?
        .iter()
        .any(|r| r.kind == "switched")
    {
        journal.set_phase(name, Phase::CutOver, None)?;
        return Ok(Recovered::CutOver);
    }
    let admin = admin_session(platform, &spec).await?;
    lift_fence(&admin, &spec.database).await?;
    journal.remove_resource(name, "fence", &spec.database)?;
    let target = connect_to(platform, &spec.target, &spec.database, "target").await?;
    replication::enable_subscription(&target, &spec.replication_name())
        .await
        .map_err(sql("target", "re-enabling the subscription"))?;
    journal.set_phase(name, Phase::Replicating, None)?;
    Ok(Recovered::BackToReplicating)
}

/// What `cleanup` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// `kind name` of each object removed.
    pub removed: Vec<String>,
}

/// After cutover: drops the subscription on the target, the slot, publication and replica
/// identity changes on the source, and the snapshot. The source stays fenced (its
/// database refuses connections); the target instance stays, it is the database now.
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
    let spec = record.spec;
    let rep_name = spec.replication_name();
    let mut report = CleanupReport::default();
    let target = connect_to(platform, &spec.target, &spec.database, "target").await?;
    let back = reverse_name(&spec);
    // Rollback is no longer possible after cleanup: the reverse objects go too.
    if replication::drop_slot(&target, &back)
        .await
        .map_err(sql("target", "dropping the reverse slot"))?
    {
        report.removed.push(format!("slot {back} (target)"));
    }
    if replication::drop_publication(&target, &back)
        .await
        .map_err(sql("target", "dropping the reverse publication"))?
    {
        report.removed.push(format!("publication {back} (target)"));
    }
    if replication::drop_subscription(&target, &rep_name)
        .await
        .map_err(sql("target", "dropping the subscription"))?
    {
        report
            .removed
            .push(format!("subscription {rep_name} (target)"));
    }
    // The publication lives in the fenced database: drop it from inside.
    let source = slip_in(platform, &spec).await?;
    // The target is the database now: its instance stays; the fence stays on record.
    report
        .removed
        .extend(remove_resources(platform, journal, name, &source, false).await?);
    journal.set_phase(name, Phase::CleanedUp, None)?;
    Ok(report)
}
