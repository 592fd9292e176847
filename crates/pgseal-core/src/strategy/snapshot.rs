//! The snapshot strategy: an encrypted physical snapshot of the source restored into a
//! new instance, then logical replication from the exact LSN where the restored copy's WAL
//! ends (the handoff LSN). Its own steps are here; the steps it shares with the full load
//! (preflight, the source's publications and slots, the subscriptions) are the engine's.
//!
//! The two facts it lives by (`FIELD-NOTES.md`): logical replication into the restored
//! copy must start exactly where the copy's WAL ends, and the slot must exist before the
//! snapshot — a slot whose `confirmed_flush_lsn` is past the handoff LSN silently skips
//! the transactions in between. [`Step::Guards`] refuses to enable the subscription unless
//! both hold.

use pgseal_pg::Lsn;
use pgseal_pg::ddl;
use pgseal_pg::replication::{self, SlotState};
use pgseal_platform::{ErrorKind, Handoff, InstanceStatus, NewInstance, Platform};
use serde_json::json;

use super::{Strategy, not_its_step};
use crate::engine::{Engine, StepResult};
use crate::error::{EngineError, platform_error, sql};
use crate::journal::INSTANCE;
use crate::steps::{Step, StrategyKind, test_hook};

/// The snapshot strategy (`--strategy snapshot`, the default). After `start`, its phases
/// are pgseal's own (the trait's provided methods): validation against the target over
/// its streams, the fence-drain-switch cutover, rollback by reverse replication, cleanup.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot;

impl Strategy for Snapshot {
    async fn run_step<P: Platform>(&self, engine: &Engine<'_, P>, step: Step) -> StepResult {
        match step {
            Step::Preflight => engine.preflight().await,
            Step::PrepareSource => engine.prepare_source(false).await,
            Step::Snapshot => engine.snapshot().await,
            Step::Restore => engine.restore().await,
            Step::TargetHousekeeping => engine.target_housekeeping().await,
            Step::Subscription => engine.subscription().await,
            Step::Guards => engine.guards().await,
            Step::OriginAdvance => engine.origin_advance().await,
            Step::Enable => engine.enable().await,
            Step::Replicating => engine.replicating().await,
            other => Err(not_its_step(StrategyKind::Snapshot, other)),
        }
    }
}

impl<P: Platform> Engine<'_, P> {
    async fn snapshot(&self) -> StepResult {
        let snap = self.spec.snapshot_name();
        let existing = match self.platform.describe_snapshot(&snap).await {
            Ok(s) => Some(s),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(platform_error("describing the snapshot")(e)),
        };
        let snapshot = match existing {
            Some(s) => s,
            None if self.spec.source_url().is_some() => {
                self.journal
                    .add_resource(&self.spec.name, "snapshot", INSTANCE, &snap)?;
                self.platform
                    .create_snapshot_of_url(&self.spec.source, &snap, &self.spec.key)
                    .await
                    .map_err(platform_error("taking the encrypted snapshot"))?
            }
            None => {
                let source = self
                    .platform
                    .describe_instance(&self.spec.source)
                    .await
                    .map_err(platform_error("describing the source"))?;
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
                            return Err(platform_error("describing the snapshot")(e));
                        }
                        self.platform
                            .create_snapshot(&self.spec.source, &plain_key_snap, None)
                            .await
                            .map_err(platform_error("snapshotting the source"))?;
                    }
                    let copy = self
                        .platform
                        .copy_snapshot_encrypted(&plain_key_snap, &snap, &self.spec.key)
                        .await
                        .map_err(platform_error("copying the snapshot under the new key"))?;
                    self.platform
                        .delete_snapshot(&plain_key_snap)
                        .await
                        .map_err(platform_error("deleting the intermediate snapshot"))?;
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
                        .map_err(platform_error("taking the encrypted snapshot"))?
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

    async fn restore(&self) -> StepResult {
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
                self.remove_interrupted_target(&i, "restore").await?;
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
            .map_err(platform_error("reading the target's handoff LSN"))?;
        let summary = format!(
            "{target}, encrypted under {}, handoff LSN {}",
            instance.key_id.as_deref().unwrap_or("?"),
            handoff.lsn
        );
        Ok((json!({ "instance": instance, "handoff": handoff }), summary))
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
            .map_err(platform_error("restoring the snapshot into the target"))
    }

    async fn target_housekeeping(&self) -> StepResult {
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
            .map_err(sql("target", "listing slots"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for slot in &slots {
            replication::drop_slot(&target, slot)
                .await
                .map_err(sql("target", format!("dropping copied slot {slot}")))?;
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
            .map_err(sql("target", "listing prepared transactions"))?
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
            .map_err(sql("target", "listing copied subscriptions"))?
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
                    .map_err(sql("target", "dropping the copied publication"))?
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
                    .map_err(sql(
                        "target",
                        format!("rolling back the copied prepared transaction {gid}"),
                    ))?;
            }
            // The copy captures nothing itself; it replays what the source captures.
            if streams.iter().any(|s| s.database == db) {
                ddl::install_replay(&client)
                    .await
                    .map_err(sql("target", "installing the DDL replay"))?;
            }
            for (sub, _) in foreign.iter().filter(|(_, d)| d == db) {
                client
                    .batch_execute(&format!(
                        "ALTER SUBSCRIPTION {} DISABLE",
                        replication::quote_ident(sub)
                    ))
                    .await
                    .map_err(sql(
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

    async fn guards(&self) -> StepResult {
        let handoff: Handoff = self.recorded(Step::Restore, "handoff")?;
        let source = self.source().await?;
        let mut slots = Vec::new();
        for s in &self.streams()? {
            let slot = replication::slot(&source, &s.name)
                .await
                .map_err(sql("source", "reading the slot"))?
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

    async fn origin_advance(&self) -> StepResult {
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
                .map_err(sql("target", "advancing the replication origin"))?;
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
