//! `abort`: removes everything a migration created, newest first — the target instance,
//! snapshots, and in every database of the source its slot (above all: a forgotten slot
//! fills the source's disk), its publication and any replica identity pgseal changed.
//!
//! It works from the journal's resource list, which records each resource *before* it is
//! created, so an abort after a crash at any point finds everything; removing what is
//! already gone is not an error, so an interrupted abort is simply run again.

use pgseal_pg::replication;
use pgseal_platform::{ErrorKind, Platform};
use tokio_postgres::Client;

use crate::error::{EngineError, sql};
use crate::journal::{Journal, Phase};
use crate::sessions::{connect_source_db, connect_to};

/// What `abort` removed, as `kind name` lines in the order done.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AbortReport {
    /// What was removed.
    pub removed: Vec<String>,
    /// What was recorded but already gone.
    pub already_gone: Vec<String>,
    /// What could not be removed because the source is in recovery (a standby, or a
    /// server restored from a backup): each with the statement that removes it once the
    /// source takes writes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_on_source: Vec<String>,
}

/// How to remove a source-side resource of kind `kind` named `name` by hand.
fn removal(kind: &str, name: &str) -> String {
    let literal = pgseal_pg::sql::quote_literal(name);
    match kind {
        "slot" => format!("SELECT pg_drop_replication_slot({literal})"),
        "publication" => format!(
            "DROP PUBLICATION IF EXISTS {}",
            pgseal_pg::sql::quote_ident(name)
        ),
        "replica_identity" => format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT"),
        crate::journal::DDL_CAPTURE => {
            "DROP SCHEMA pgseal_ddl CASCADE (and its event triggers, `pgseal_ddl_*`)".into()
        }
        _ => format!("remove {kind} {name}"),
    }
}

/// Aborts migration `name`; see the module documentation.
pub async fn abort<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<AbortReport, EngineError> {
    let record = journal.migration(name)?;
    if matches!(
        record.phase,
        Phase::CutOver | Phase::CuttingOver | Phase::CleanedUp | Phase::RolledBack
    ) {
        return Err(EngineError::Precondition(format!(
            "migration {name} is {}: applications may already write to the target, so abort would lose data; `pgseal migrate resume {name}` finishes an interrupted cutover",
            record.phase.as_str()
        )));
    }
    let spec = record.spec;
    journal.set_phase(name, Phase::Aborting, None)?;
    let mut report = AbortReport::default();
    // One session per database of the source, opened when first needed.
    let mut sessions: std::collections::HashMap<String, (Client, bool)> = Default::default();
    for resource in journal.resources(name)? {
        let label = resource.label();
        let removed = match resource.kind.as_str() {
            "instance" => match platform.delete_instance(&resource.name).await {
                Ok(()) => true,
                Err(e) if e.kind == ErrorKind::NotFound => false,
                Err(source) => {
                    return Err(EngineError::Platform {
                        what: format!("deleting the target {}", resource.name),
                        source,
                    });
                }
            },
            // A full load's subscription, dropped on the target before the target goes
            // (detached from its slot, which is dropped on the source as a slot).
            "subscription" => {
                match connect_to(platform, &spec.target, &resource.database, "target").await {
                    Ok(target) => replication::drop_subscription(&target, &resource.name)
                        .await
                        .map_err(|source| EngineError::Sql {
                            role: "target",
                            what: format!("dropping subscription {}", resource.name),
                            source,
                        })?,
                    Err(e) => {
                        tracing::info!(migration = %name, error = %crate::error::error_chain(&e), "the target cannot be reached; its subscription goes with it");
                        false
                    }
                }
            }
            // A blue/green deployment before any switchover: deleted with its green.
            crate::journal::DEPLOYMENT => {
                platform
                    .delete_blue_green(name, true)
                    .await
                    .map_err(|source| EngineError::Platform {
                        what: format!("deleting blue/green deployment {}", resource.name),
                        source,
                    })?
            }
            "snapshot" => match platform.delete_snapshot(&resource.name).await {
                Ok(()) => true,
                Err(e) if e.kind == ErrorKind::NotFound => false,
                Err(source) => {
                    return Err(EngineError::Platform {
                        what: format!("deleting snapshot {}", resource.name),
                        source,
                    });
                }
            },
            kind => {
                let database = if resource.database.is_empty() {
                    spec.database.clone()
                } else {
                    resource.database.clone()
                };
                if !sessions.contains_key(&database) {
                    let client = connect_source_db(platform, &spec, &database).await?;
                    // A source made read-only since (`default_transaction_read_only`) still
                    // lets pgseal remove what it made; one in recovery cannot.
                    client
                        .batch_execute("SET default_transaction_read_only = off")
                        .await
                        .map_err(sql("source", "allowing pgseal's session to write"))?;
                    let in_recovery: bool = client
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .map_err(sql("source", "reading whether the source is in recovery"))?
                        .get(0);
                    sessions.insert(database.clone(), (client, in_recovery));
                }
                let (client, in_recovery) = &sessions[&database];
                if *in_recovery {
                    report.left_on_source.push(format!(
                        "{label} ({database}): the source is in recovery; once it takes writes, {}",
                        removal(kind, &resource.name)
                    ));
                    journal.remove_resource(
                        name,
                        &resource.kind,
                        &resource.database,
                        &resource.name,
                    )?;
                    continue;
                }
                match kind {
                    crate::journal::DDL_CAPTURE => pgseal_pg::ddl::remove(client)
                        .await
                        .map_err(sql("source", "removing the DDL capture"))?,
                    crate::slot_guard::RESOURCE => {
                        crate::slot_guard::restore(client, &resource.name).await?;
                        true
                    }
                    "slot" => replication::drop_slot(client, &resource.name)
                        .await
                        .map_err(sql("source", &format!("dropping slot {}", resource.name)))?,
                    "publication" => replication::drop_publication(client, &resource.name)
                        .await
                        .map_err(sql(
                            "source",
                            &format!("dropping publication {}", resource.name),
                        ))?,
                    "replica_identity" => {
                        replication::restore_replica_identity(client, &resource.name)
                            .await
                            .map_err(sql(
                                "source",
                                &format!("restoring the replica identity of {}", resource.name),
                            ))?
                    }
                    other => {
                        tracing::warn!(migration = %name, kind = other, "unknown resource kind in the journal; left alone");
                        false
                    }
                }
            }
        };
        tracing::info!(migration = %name, resource = %label, removed, "abort");
        if removed {
            report.removed.push(label);
        } else {
            report.already_gone.push(label);
        }
        journal.remove_resource(name, &resource.kind, &resource.database, &resource.name)?;
    }
    journal.set_phase(name, Phase::Aborted, None)?;
    Ok(report)
}
