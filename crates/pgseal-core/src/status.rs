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

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, SlotState, SubscriptionState};
use pgseal_pg::schema::{self, Drift};
use pgseal_platform::{Handoff, Platform};
use serde::Serialize;

use crate::engine::{EngineError, connect_source, connect_source_db, connect_to};
use crate::journal::{Journal, MigrationRecord, Phase, StepRun};
use crate::steps::Step;

/// Replication as both sides see it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    /// The source's current WAL position.
    pub source_lsn: Lsn,
    /// The slot on the source, if it exists.
    pub slot: Option<SlotState>,
    /// The subscription on the target, if it exists.
    pub subscription: Option<SubscriptionState>,
    /// Bytes of source WAL not yet confirmed applied by the target.
    pub lag_bytes: Option<u64>,
    /// The walsender's `replay_lag`, in seconds (absent when idle).
    pub lag_seconds: Option<f64>,
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
    /// Replication, once the slot exists (absent when the servers were not reached).
    pub replication: Option<ReplicationStatus>,
    /// Schema comparison, once the target exists.
    pub schema: Option<SchemaStatus>,
    /// The retention verdict.
    pub retention: Retention,
    /// The last validation's summary (`clean`, `rows`, `mismatched_rows`, `seconds`), if any.
    pub last_validation: Option<serde_json::Value>,
    /// Problems worth a person's attention.
    pub warnings: Vec<String>,
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
    let migration = journal.migration(name)?;
    let steps = journal.step_runs(name)?;
    let spec = migration.spec.clone();
    let handoff: Option<Handoff> = journal
        .outputs(name, Step::Restore)?
        .and_then(|o| serde_json::from_value(o["handoff"].clone()).ok());
    let mut warnings = Vec::new();
    let live = !matches!(migration.phase, Phase::Aborted | Phase::CleanedUp);
    let source_prepared = journal.outputs(name, Step::PrepareSource)?.is_some();
    let target_made = handoff.is_some();
    let rep_name = spec.replication_name();

    let mut replication_status = None;
    let mut schema_status = None;
    if live && source_prepared {
        // Once fenced, the source database refuses connections: read the server-wide
        // facts (WAL position, slot) from another database, and skip the schema.
        let fenced = matches!(migration.phase, Phase::CutOver | Phase::CuttingOver);
        let rolled_back = migration.phase == Phase::RolledBack;
        let source = if fenced {
            let other = crate::engine::other_database(&spec.database);
            connect_source_db(platform, &spec, other).await?
        } else {
            connect_source(platform, &spec).await?
        };
        let sql = |what: &str| {
            let what = what.to_string();
            move |source| EngineError::Sql {
                role: "source",
                what,
                source,
            }
        };
        let source_lsn = replication::current_wal_lsn(&source)
            .await
            .map_err(sql("reading the WAL position"))?;
        let slot = replication::slot(&source, &rep_name)
            .await
            .map_err(sql("reading the slot"))?;
        let lag_seconds: Option<f64> = source
            .query_opt(
                "SELECT EXTRACT(epoch FROM replay_lag)::float8 FROM pg_stat_replication WHERE application_name = $1",
                &[&rep_name],
            )
            .await
            .map_err(sql("reading pg_stat_replication"))?
            .and_then(|r| r.get(0));
        let mut subscription = None;
        if target_made && !rolled_back {
            match connect_to(platform, &spec.target, &spec.database, "target").await {
                Ok(target) => {
                    subscription = replication::subscription(&target, &rep_name)
                        .await
                        .map_err(|source| EngineError::Sql {
                            role: "target",
                            what: "reading the subscription".into(),
                            source,
                        })?;
                    if !fenced {
                        let tables = replication::published_tables(&source, &rep_name)
                            .await
                            .map_err(sql("listing published tables"))?;
                        let src_cols = schema::columns(&source, &tables)
                            .await
                            .map_err(sql("reading the schema"))?;
                        let dst_cols =
                            schema::columns(&target, &tables).await.map_err(|source| {
                                EngineError::Sql {
                                    role: "target",
                                    what: "reading the schema".into(),
                                    source,
                                }
                            })?;
                        schema_status = Some(SchemaStatus {
                            source_fingerprint: schema::fingerprint(&src_cols),
                            target_fingerprint: schema::fingerprint(&dst_cols),
                            drift: schema::drift(&src_cols, &dst_cols),
                        });
                    }
                }
                Err(e) => warnings.push(format!("target not reachable: {e}")),
            }
        }
        let lag_bytes = slot
            .as_ref()
            .and_then(|s| s.confirmed_flush_lsn)
            .map(|c| source_lsn.0.saturating_sub(c.0));
        replication_status = Some(ReplicationStatus {
            source_lsn,
            slot,
            subscription,
            lag_bytes,
            lag_seconds,
        });
    }

    let limit = max_slot_retention.or(spec.max_slot_retention);
    let retained = replication_status
        .as_ref()
        .and_then(|r| r.slot.as_ref())
        .and_then(|s| s.retained_bytes);
    let verdict = retention(retained, limit);
    if let (Some(r), Some(l)) = (retained, limit)
        && verdict != Retention::Ok
    {
        warnings.push(format!(
            "slot {rep_name} holds {} MiB of WAL on the source (limit {} MiB)",
            r >> 20,
            l >> 20
        ));
    }
    if let Some(rep) = &replication_status {
        match &rep.slot {
            None if source_prepared => warnings.push(format!(
                "slot {rep_name} is missing on the source: replication cannot continue; abort this migration"
            )),
            Some(s) if s.wal_status.as_deref() == Some("lost") => warnings.push(format!(
                "slot {rep_name} lost WAL it needed (max_slot_wal_keep_size?): abort this migration"
            )),
            _ => {}
        }
        if let Some(sub) = &rep.subscription {
            if sub.apply_errors > 0 {
                warnings.push(format!(
                    "the apply worker failed {} time(s) (pg_stat_subscription_stats); the target's server log has the error",
                    sub.apply_errors
                ));
            }
            if sub.enabled && sub.worker_pid.is_none() {
                warnings.push("the subscription is enabled but no apply worker runs (it restarts after an error every wal_retrieve_retry_interval)".into());
            }
        }
    }
    if let Some(schema) = &schema_status
        && !schema.drift.is_empty()
    {
        warnings.push(format!(
            "schema drift: {} difference(s) between source and target; DDL is not replicated, run the statements shown on the target",
            schema.drift.len()
        ));
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
        last_validation,
        migration,
        steps,
        handoff,
        replication: replication_status,
        schema: schema_status,
        retention: verdict,
        warnings,
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
}
