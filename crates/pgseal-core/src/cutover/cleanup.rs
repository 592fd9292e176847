//! After a cutover (or a rollback): what the migration made, removed.

use std::collections::HashMap;

use pgseal_pg::replication::{self};
use pgseal_platform::Platform;
use tokio_postgres::Client;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::fence::{admin_session, slip_in};
use crate::handle::Handle;
use crate::journal::{Journal, MigrationSpec, Phase};
use crate::sessions::{connect_source_db, streams_of};

use super::sides::*;

/// Removes what the journal lists for migration `name`, on the source (`sources` holds a
/// session on each database that has resources) and on the platform (snapshots;
/// instances when `delete_instances`), and forgets each; the fence stays on record.
/// Returns what was removed, as `kind name (database)`.
pub(super) async fn remove_resources<P: Platform>(
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
pub(super) async fn cleanup_after_rollback<P: Platform>(
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

/// After cutover: drops the subscriptions on the target, the slots, publications and
/// replica identity changes on the source, and the snapshot, in every database. The
/// source stays fenced (its databases refuse connections); the target instance stays, it
/// is the database now.
pub async fn cleanup<P: Platform>(m: &Handle<'_, P>) -> Result<CleanupReport, EngineError> {
    let (platform, journal, name) = (m.platform, m.journal, m.name);
    let record = journal.migration(name)?;
    if record.phase == Phase::RolledBack {
        return cleanup_after_rollback(platform, journal, name, record.spec).await;
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
