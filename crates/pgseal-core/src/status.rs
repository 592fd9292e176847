//! `status`: where a migration stands, read from the journal and from both servers.
//!
//! **Lag** is measured on the source, from the slot: `pg_current_wal_lsn()` minus the
//! slot's `confirmed_flush_lsn`, the position up to which the target's apply worker has
//! reported everything applied and flushed (not `sent_lsn`, which counts WAL that was
//! merely sent). WAL of other databases on the source is decoded and skipped by the
//! walsender; once skipped, the worker confirms it on the next keepalive without waiting
//! for any transaction of ours, so it shows as lag only while the decoder is still reading
//! it. Seconds come from `pg_stat_replication.replay_lag` of the subscription's walsender.
//! **Retention** is what the slot holds back on the source: `pg_current_wal_lsn()` minus
//! its `restart_lsn`.
//!
//! Each is read per stream (per database); the totals are the largest lag (the target is
//! as far behind as its slowest database) and the WAL held by the oldest slot.

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, SlotState, SubscriptionState};
use pgseal_pg::schema::{self, Drift};
use pgseal_platform::{Handoff, Platform};
use serde::Serialize;

use crate::error::{EngineError, sql};
use crate::journal::{Journal, MigrationRecord, Phase, StepRun};
use crate::sessions::{connect_source, connect_source_db, connect_to};
use crate::steps::Step;

/// One stream (one database) as both sides see it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// The database.
    pub database: String,
    /// The stream's publication, slot and subscription name.
    pub name: String,
    /// The slot on the source, if it exists.
    pub slot: Option<SlotState>,
    /// The subscription on the target, if it exists.
    pub subscription: Option<SubscriptionState>,
    /// Bytes of source WAL not yet confirmed applied by the target for this database.
    pub lag_bytes: Option<u64>,
    /// The walsender's `replay_lag`, in seconds (absent when idle).
    pub lag_seconds: Option<f64>,
    /// The schemas of its published tables on both sides (while the source is open).
    pub schema: Option<SchemaStatus>,
    /// Whether the source database takes connections (`datallowconn`): false while the
    /// cutover's fence holds it (a cutover that is running, interrupted or cut over).
    pub source_allows_connections: Option<bool>,
    /// A full load's initial copy, table by table, while any table is not ready yet
    /// (empty once every table is ready, and under the snapshot strategy).
    pub copy: Vec<crate::initial_copy::TableCopy>,
    /// DDL captured on the source and what became of it (while the source is open and
    /// the capture is installed).
    pub ddl: Vec<crate::ddl::DdlEntry>,
    /// Tables made on the source that the subscription was refreshed for by this look:
    /// their rows are being copied.
    pub refreshed: Vec<String>,
}

/// Replication as both sides see it: every stream, and the totals.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    /// The source's current WAL position.
    pub source_lsn: Lsn,
    /// The largest lag of any stream (the target is as far behind as its slowest
    /// database); absent when a slot is missing.
    pub lag_bytes: Option<u64>,
    /// WAL the slots hold on the source in all (the oldest `restart_lsn` decides).
    pub retained_bytes: Option<i64>,
    /// Per database.
    pub streams: Vec<StreamStatus>,
}

/// The schemas of the published tables on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaStatus {
    /// The source's fingerprint.
    pub source_fingerprint: String,
    /// The target's fingerprint.
    pub target_fingerprint: String,
    /// What differs, with the statements to run on the target.
    pub drift: Vec<Drift>,
}

/// How the slot's retention compares with `max_slot_retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Under 80% of the limit (or no limit).
    Ok,
    /// At 80% of the limit or more.
    Warning,
    /// Over the limit: the migration must be aborted to protect the source.
    Exceeded,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    /// The journal's record.
    pub migration: MigrationRecord,
    /// Every step run, in order.
    pub steps: Vec<StepRun>,
    /// The handoff LSN, once the target exists.
    pub handoff: Option<Handoff>,
    /// Replication per database and in total, once the slots exist.
    pub replication: Option<ReplicationStatus>,
    /// The retention verdict.
    pub retention: Retention,
    /// The last validation's summary (`clean`, `rows`, `mismatched_rows`, `seconds`), if any.
    pub last_validation: Option<serde_json::Value>,
    /// Problems worth a person's attention.
    pub warnings: Vec<String>,
    /// The follower (`pgseal migrate follow`), while the migration is one it follows.
    pub follower: Option<crate::follow::FollowerStatus>,
    /// How full each side's storage is, where the platform says.
    pub storage: StorageStatus,
    /// Why the retention verdict is `exceeded`, when it is: the slots past
    /// `--max-slot-retention`, or the source's storage under its reserve while the slots
    /// hold WAL.
    pub retention_why: Option<String>,
}

/// Both sides' storage, as their platform reads it now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageStatus {
    /// The source instance's (not for a source reached by URL).
    pub source: Option<pgseal_platform::StorageUse>,
    /// The target instance's, once it exists.
    pub target: Option<pgseal_platform::StorageUse>,
}

/// What pgseal keeps free on a side's storage: a tenth of it, at least 64 MiB. Under it,
/// on the target, `status` says the apply is about to stop (or has) for want of space; on
/// the source, while the migration's slots hold WAL, the retention guard acts (the CLI's
/// `status` aborts the migration) before PostgreSQL itself stops on a full disk.
pub fn storage_reserve(storage: &pgseal_platform::StorageUse) -> u64 {
    (storage.size_bytes / 10).max(64 << 20)
}

/// The slots hold this much WAL at least before a short source disk is laid at their door.
const RETENTION_WORTH_NAMING: u64 = 16 << 20;

/// Why the source's storage alone makes the retention verdict `exceeded`: under its
/// reserve while the migration's slots hold at least [`RETENTION_WORTH_NAMING`] of WAL.
pub fn source_storage_verdict(
    storage: Option<&pgseal_platform::StorageUse>,
    retained: Option<i64>,
) -> Option<String> {
    let (storage, retained) = (storage?, retained?);
    let reserve = storage_reserve(storage);
    (storage.free_bytes < reserve && retained.max(0) as u64 >= RETENTION_WORTH_NAMING).then(|| {
        format!(
            "the source's storage has {} MiB free of {} MiB (pgseal keeps {} MiB free) and the migration's slots hold {} MiB of WAL there",
            storage.free_bytes >> 20,
            storage.size_bytes >> 20,
            reserve >> 20,
            retained >> 20
        )
    })
}

/// The warning for a target whose storage is under its reserve, with the fix.
fn target_storage_warning(
    target: &str,
    storage: &pgseal_platform::StorageUse,
    stopped: bool,
) -> Option<String> {
    let reserve = storage_reserve(storage);
    if storage.free_bytes >= reserve {
        return None;
    }
    // Twice the size, in whole GiB.
    let grown = (storage.size_bytes * 2).div_ceil(1 << 30);
    Some(format!(
        "the target's storage (instance {target}) has {} MiB free of {} MiB (pgseal keeps {} MiB free): {}; the source's slot keeps what the target has not applied, within --max-slot-retention. Grow it: `pgseal instance resize {target} --storage {grown}GiB` (online where the kernel allows); the apply goes on from where it stopped, nothing is lost",
        storage.free_bytes >> 20,
        storage.size_bytes >> 20,
        reserve >> 20,
        if stopped {
            "its apply worker stops when it cannot write (`No space left on device` in the target's log) and is stopped now"
        } else {
            "its apply worker stops when it cannot write (`No space left on device`)"
        }
    ))
}

/// Stream `stream`'s initial copy (full load) while it is not done: its latest plan in
/// the journal, the tables it finished, and what the target copies now.
async fn copy_of(
    facts: &[(String, i64, serde_json::Value)],
    target: &tokio_postgres::Client,
    stream: &crate::stream::Stream,
) -> Result<Vec<crate::initial_copy::TableCopy>, EngineError> {
    let running =
        crate::initial_copy::latest_copy(facts, &stream.database).is_some_and(|l| l.done.is_none());
    if !running {
        return Ok(Vec::new());
    }
    let now = crate::initial_copy::copying_now(target)
        .await
        .map_err(sql("target", "reading the copy's progress"))?;
    Ok(crate::initial_copy::progress(&stream.database, facts, &now))
}

/// The retention verdict for `retained` bytes under `limit`.
pub fn retention(retained: Option<i64>, limit: Option<u64>) -> Retention {
    match (retained, limit) {
        (Some(r), Some(l)) if r > 0 && r as u64 > l => Retention::Exceeded,
        (Some(r), Some(l)) if r > 0 && r as u64 >= l / 5 * 4 => Retention::Warning,
        _ => Retention::Ok,
    }
}

/// Reads a migration's status; `max_slot_retention` overrides the spec's limit.
pub async fn status<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    max_slot_retention: Option<u64>,
) -> Result<MigrationStatus, EngineError> {
    let mut migration = journal.migration(name)?;
    let steps = journal.step_runs(name)?;
    let spec = migration.spec.clone();
    let handoff: Option<Handoff> = journal
        .outputs(name, Step::Restore)?
        .and_then(|o| serde_json::from_value(o["handoff"].clone()).ok());
    let mut warnings = Vec::new();
    let live = !matches!(migration.phase, Phase::Aborted | Phase::CleanedUp);
    let source_prepared = journal.outputs(name, Step::PrepareSource)?.is_some();
    // Restored (snapshot), or subscribed (full load: the subscription is made on it).
    let target_made = handoff.is_some() || journal.outputs(name, Step::Subscription)?.is_some();
    let streams = journal.streams(name)?;
    let follower = crate::follow::follows(migration.phase)
        .then(|| crate::follow::follower_status(journal.home(), name))
        .transpose()?;

    let mut replication_status = None;
    if live && source_prepared {
        // Once fenced, the source's databases refuse connections: read the server-wide
        // facts (WAL position, slots) from another database, and skip the schemas.
        let fenced = matches!(migration.phase, Phase::CutOver | Phase::CuttingOver);
        let rolled_back = migration.phase == Phase::RolledBack;
        let source = if fenced {
            let fenced_dbs: Vec<&str> = streams.iter().map(|s| s.database.as_str()).collect();
            connect_source_db(
                platform,
                &spec,
                crate::sessions::admin_database(&fenced_dbs),
            )
            .await?
        } else {
            connect_source(platform, &spec).await?
        };
        let source_lsn = replication::current_wal_lsn(&source)
            .await
            .map_err(sql("source", "reading the WAL position"))?;
        let sampled_ms = crate::journal::now_ms();
        let mut samples = Vec::with_capacity(streams.len());
        let mut per_stream = Vec::new();
        let facts = journal.facts(name)?;
        for s in &streams {
            let slot = replication::slot(&source, &s.name)
                .await
                .map_err(sql("source", "reading the slot"))?;
            let lag_seconds = crate::samples::replay_lag(&source, &s.name)
                .await
                .map_err(sql("source", "reading pg_stat_replication"))?;
            let sample = crate::samples::Sample::of(
                sampled_ms,
                &s.database,
                source_lsn,
                slot.as_ref(),
                lag_seconds,
            );
            let mut subscription = None;
            let mut schema_status = None;
            let mut copy = Vec::new();
            let mut ddl = Vec::new();
            let mut refreshed = Vec::new();
            if target_made && !rolled_back {
                match connect_to(platform, &spec.target, &s.database, "target").await {
                    Ok(target) => {
                        subscription = replication::subscription(&target, &s.name)
                            .await
                            .map_err(sql("target", "reading the subscription"))?;
                        if !fenced {
                            let db_source = connect_source_db(platform, &spec, &s.database).await?;
                            ddl = crate::ddl::entries(&s.database, &db_source, &target).await?;
                            if pgseal_pg::ddl::held(&db_source)
                                .await
                                .map_err(sql("source", "looking for the DDL hold"))?
                            {
                                warnings.push(format!(
                                    "DDL is refused in the source database {} until its tables are copied and their indexes built (`pgseal migrate resume {name}` goes on with the copy)",
                                    s.database
                                ));
                            }
                            // The follower refreshes the subscriptions; without one,
                            // this look does.
                            if migration.phase == Phase::Replicating
                                && follower.as_ref().is_none_or(|f| !f.running)
                            {
                                refreshed = crate::ddl::refresh_new_tables(
                                    &db_source, &target, &s.name, &s.name,
                                )
                                .await?;
                                if !refreshed.is_empty() {
                                    journal.add_fact(
                                        name,
                                        "ddl_refresh",
                                        &serde_json::json!({"database": s.database, "tables": refreshed}),
                                    )?;
                                }
                            }
                            schema_status = Some(schema_of(&db_source, &target, &s.name).await?);
                            copy = copy_of(&facts, &target, s).await?;
                        }
                    }
                    Err(e) => warnings.push(format!("target ({}) not reachable: {e}", s.database)),
                }
            }
            let source_allows_connections = source
                .query_opt(
                    "SELECT datallowconn FROM pg_database WHERE datname = $1",
                    &[&s.database],
                )
                .await
                .map_err(sql("source", "reading whether a database is fenced"))?
                .map(|r| r.get(0));
            if source_allows_connections == Some(false) && !fenced {
                warnings.push(format!(
                    "the source database {} refuses connections (a fence left up); `pgseal migrate resume {name}` lifts it",
                    s.database
                ));
            }
            let lag_bytes = sample.lag_bytes;
            samples.push(sample);
            per_stream.push(StreamStatus {
                database: s.database.clone(),
                name: s.name.clone(),
                slot,
                subscription,
                lag_bytes,
                lag_seconds,
                schema: schema_status,
                source_allows_connections,
                copy,
                ddl,
                refreshed,
            });
        }
        let lag_bytes = per_stream
            .iter()
            .map(|s| s.lag_bytes)
            .collect::<Option<Vec<u64>>>()
            .and_then(|lags| lags.into_iter().max());
        let retained_bytes = per_stream
            .iter()
            .filter_map(|s| s.slot.as_ref().and_then(|slot| slot.retained_bytes))
            .max();
        if let Err(error) = journal.offer_samples(name, &samples) {
            tracing::warn!(migration = %name, %error, "a replication sample was not recorded");
        }
        replication_status = Some(ReplicationStatus {
            source_lsn,
            lag_bytes,
            retained_bytes,
            streams: per_stream,
        });
    }

    let limit = max_slot_retention.or(spec.max_slot_retention);
    let retained = replication_status.as_ref().and_then(|r| r.retained_bytes);
    let mut verdict = retention(retained, limit);
    let mut retention_why = None;
    if let (Some(r), Some(l)) = (retained, limit)
        && verdict != Retention::Ok
    {
        let why = format!(
            "the migration's slots hold {} MiB of WAL on the source (limit {} MiB)",
            r >> 20,
            l >> 20
        );
        if verdict == Retention::Exceeded {
            retention_why = Some(why.clone());
        }
        warnings.push(why);
    }
    // Each side's storage, where the platform reads it (a side that cannot be described
    // now, or a source reached by URL, has none).
    let mut storage = StorageStatus::default();
    if live {
        if spec.source_url().is_none() {
            storage.source = platform
                .describe_instance(&spec.source)
                .await
                .ok()
                .and_then(|i| i.storage);
        }
        if target_made {
            storage.target = platform
                .describe_instance(&spec.target)
                .await
                .ok()
                .and_then(|i| i.storage);
        }
    }
    if migration.phase == Phase::Replicating
        && let Some(why) = source_storage_verdict(storage.source.as_ref(), retained)
    {
        verdict = Retention::Exceeded;
        warnings.push(why.clone());
        retention_why.get_or_insert(why);
    }
    if let Some(target_storage) = &storage.target {
        let stopped = replication_status
            .iter()
            .flat_map(|r| &r.streams)
            .any(|st| {
                st.subscription
                    .as_ref()
                    .is_some_and(|sub| sub.enabled && sub.worker_pid.is_none())
            });
        warnings.extend(target_storage_warning(
            &spec.target,
            target_storage,
            stopped,
        ));
    }
    for st in replication_status.iter().flat_map(|r| &r.streams) {
        let (db, slot_name) = (&st.database, &st.name);
        // A slot gone or invalidated while the target follows: what the source committed
        // since can never reach the target. The migration is failed by name, and `resume`
        // refuses it (see `Migration::run`): only abort and a new start go on.
        let lost = match &st.slot {
            None => Some(format!(
                "slot {slot_name} ({db}) is gone from the source: a failover to a standby loses logical slots on PostgreSQL 15 (PostgreSQL 17 can keep them on a standby: failover slots with sync_replication_slots), or it was dropped; what the source committed since cannot reach the target. `pgseal migrate abort {name}` removes the migration, then start it again"
            )),
            Some(s) if s.wal_status.as_deref() == Some("lost") => Some(format!(
                "slot {slot_name} ({db}) was invalidated by PostgreSQL (wal_status lost: it held more WAL than max_slot_wal_keep_size allows), so the target can no longer catch up; `pgseal migrate abort {name}` removes the migration, then start it again"
            )),
            _ => None,
        };
        if let Some(why) = lost {
            if migration.phase == Phase::Replicating {
                journal.set_phase(name, Phase::Failed, Some(&why))?;
                migration.phase = Phase::Failed;
                migration.error = Some(why.clone());
            }
            warnings.push(why);
        }
        if let Some(sub) = &st.subscription {
            if sub.apply_errors > 0 {
                warnings.push(format!(
                    "the apply worker of {db} failed {} time(s) (pg_stat_subscription_stats); the target's server log has the error",
                    sub.apply_errors
                ));
            }
            if sub.apply_errors > 0
                && let Some(e) = st
                    .ddl
                    .iter()
                    .find(|e| e.state == crate::ddl::DdlState::Waiting)
            {
                warnings.push(format!(
                    "DDL statement {id} captured in {db} ({tag}) has not arrived while the apply worker fails: if it is what fails (the target's log says `pgseal: captured DDL {id} ({tag}) failed on this side`), make it succeed or do its work on the target by hand, then `pgseal migrate ddl {name} --database {db} --apply {id}`; or `--skip {id}`",
                    id = e.captured.id,
                    tag = e.captured.command_tag,
                ));
            }
            if sub.enabled && sub.worker_pid.is_none() {
                warnings.push(format!("the subscription of {db} is enabled but no apply worker runs (it restarts after an error every wal_retrieve_retry_interval)"));
            }
        }
        for e in st
            .ddl
            .iter()
            .filter(|e| e.state == crate::ddl::DdlState::Stopped)
        {
            warnings.push(format!(
                "DDL statement {} captured in {db} ({}) is not replayed: {}; the target's apply stops on it. Apply it on the target by hand, then `pgseal migrate ddl {name} --database {db} --apply {}`; or `--skip {}` to leave it out",
                e.captured.id,
                e.captured.command_tag,
                e.captured.verdict.as_deref().unwrap_or(""),
                e.captured.id,
                e.captured.id
            ));
        }
        if !st.refreshed.is_empty() {
            warnings.push(format!(
                "new table(s) on the source in {db}: {}; the subscription was refreshed and their rows are being copied",
                st.refreshed.join(", ")
            ));
        }
        let captured = !st.ddl.is_empty();
        if let Some(schema) = &st.schema
            && !schema.drift.is_empty()
        {
            warnings.push(format!(
                "schema drift in {db}: {} difference(s) between source and target; {}",
                schema.drift.len(),
                if captured {
                    "captured DDL may still be on its way (see the statements above); otherwise run the statements shown on the target"
                } else {
                    "DDL is not replicated here, run the statements shown on the target"
                }
            ));
        }
    }
    if migration.phase == Phase::Replicating {
        match &follower {
            Some(f) if !f.running => warnings.push(format!(
                "no follower runs for this migration: tables made on the source get no rows, large objects and roles made there are not carried until a pgseal command runs; `pgseal migrate follow {name}` (or `pgseal migrate resume {name}`, which starts one)"
            )),
            Some(f) => {
                if let Some(error) = f.heartbeat.as_ref().and_then(|h| h.last.error.as_deref()) {
                    warnings.push(format!(
                        "the follower's last pass failed (it tries again): {error}"
                    ));
                }
            }
            None => {}
        }
    }
    let last_validation = journal.outputs(name, Step::Validate)?.map(|v| {
        serde_json::json!({
            "clean": v["clean"], "rows": v["rows"],
            "mismatched_rows": v["mismatched_rows"], "seconds": v["seconds"],
        })
    });
    if last_validation
        .as_ref()
        .is_some_and(|v| v["clean"] == false)
    {
        warnings.push(
            "the last validation was not clean (`pgseal migrate validate` lists the rows)".into(),
        );
    }
    Ok(MigrationStatus {
        storage,
        retention_why,
        follower,
        last_validation,
        migration,
        steps,
        handoff,
        replication: replication_status,
        retention: verdict,
        warnings,
    })
}

/// The schemas of publication `publication`'s tables on both sides.
async fn schema_of(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    publication: &str,
) -> Result<SchemaStatus, EngineError> {
    let tables = replication::published_tables(source, publication)
        .await
        .map_err(sql("source", "listing published tables"))?;
    let src = schema::definitions(source, &tables)
        .await
        .map_err(sql("source", "reading the schema"))?;
    let dst = schema::definitions(target, &tables)
        .await
        .map_err(sql("target", "reading the schema"))?;
    Ok(SchemaStatus {
        source_fingerprint: schema::fingerprint(&src),
        target_fingerprint: schema::fingerprint(&dst),
        // pgseal names each stream's subscription after its publication.
        drift: schema::drift(&src, &dst, publication),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_warns_at_80_percent_and_trips_above_the_limit() {
        assert_eq!(retention(Some(100), None), Retention::Ok);
        assert_eq!(retention(Some(79), Some(100)), Retention::Ok);
        assert_eq!(retention(Some(80), Some(100)), Retention::Warning);
        assert_eq!(retention(Some(100), Some(100)), Retention::Warning);
        assert_eq!(retention(Some(101), Some(100)), Retention::Exceeded);
        assert_eq!(retention(None, Some(100)), Retention::Ok);
    }

    const MIB: u64 = 1 << 20;

    fn used(size_mib: u64, free_mib: u64) -> pgseal_platform::StorageUse {
        pgseal_platform::StorageUse {
            size_bytes: size_mib * MIB,
            free_bytes: free_mib * MIB,
        }
    }

    #[test]
    fn the_reserve_is_a_tenth_of_the_storage_and_at_least_64_mib() {
        assert_eq!(storage_reserve(&used(10240, 0)), 1024 * MIB);
        assert_eq!(storage_reserve(&used(256, 0)), 64 * MIB);
    }

    #[test]
    fn a_short_source_disk_trips_the_guard_only_while_the_slots_hold_wal() {
        let short = used(1024, 50);
        let why = source_storage_verdict(Some(&short), Some(20 * MIB as i64)).unwrap();
        assert!(why.contains("50 MiB free of 1024 MiB"), "{why}");
        assert!(why.contains("slots hold 20 MiB"), "{why}");
        // Full of something else: not the migration's doing, nothing to abort.
        assert_eq!(source_storage_verdict(Some(&short), Some(1024)), None);
        assert_eq!(
            source_storage_verdict(Some(&used(1024, 200)), Some(500 * MIB as i64)),
            None
        );
        assert_eq!(source_storage_verdict(None, Some(500 * MIB as i64)), None);
    }

    #[test]
    fn a_short_target_disk_is_named_with_the_resize_that_fixes_it() {
        assert_eq!(target_storage_warning("t", &used(10240, 2048), false), None);
        let warning = target_storage_warning("t", &used(10000, 1), true).unwrap();
        assert!(warning.contains("has 1 MiB free of 10000 MiB"), "{warning}");
        assert!(warning.contains("is stopped now"), "{warning}");
        assert!(
            warning.contains("`pgseal instance resize t --storage 20GiB`"),
            "{warning}"
        );
    }
}
