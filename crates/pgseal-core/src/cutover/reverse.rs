//! Replication from the target back to the source, for a rollback.

use pgseal_pg::replication::{self};
use pgseal_platform::Platform;
use tokio_postgres::Client;

use crate::error::{EngineError, platform_error, sql};
use crate::journal::{Journal, MigrationSpec};
use crate::steps::failpoint_at;
use crate::stream::Stream;

/// Sets up replication from the target back to the source for every stream, before the
/// pause: publication and slot on the target. [`subscribe_reverse`] then makes the
/// disabled subscription on the source inside the pause; `rollback` enables it. Returns
/// false (and sets nothing up) when the target's `wal_level` is not logical.
pub(super) async fn prepare_reverse(
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

/// Before the pause, for [`subscribe_reverse`]: how the source's server reaches each
/// stream's target database (it may hold a password: never log it), and the reverse
/// subscriptions put on record (before they exist, as every resource is: cleanup and
/// `drop_reverse` drop what exists of them).
pub(super) async fn plan_reverse<P: Platform>(
    platform: &P,
    journal: &Journal,
    spec: &MigrationSpec,
    streams: &[Stream],
) -> Result<Vec<String>, EngineError> {
    let mut conninfos = Vec::new();
    for s in streams {
        conninfos.push(target_conninfo(platform, spec, &s.database).await?);
        journal.add_resource(
            &spec.name,
            "reverse_subscription",
            &s.database,
            &s.reverse_name(),
        )?;
    }
    Ok(conninfos)
}

/// Inside the pause, once the forward subscriptions are drained and disabled and the
/// change logs dropped (a subscription takes the publication's table list as it is then):
/// a disabled reverse subscription on the source for every stream (each reaching its
/// target database by `conninfos`, from [`plan_reverse`]), started exactly at the switch
/// point. Its replication origin is advanced to the target's current WAL position, so what
/// the forward subscriptions applied on the target (since the reverse slot was made) is
/// never sent back; what applications write after the switch is. (The slot's own start is
/// earlier: a walsender starts at the later of the two.) The databases are set up side by
/// side, each on its own sessions.
pub(super) async fn subscribe_reverse(
    streams: &[Stream],
    conninfos: &[String],
    sources: &[Client],
    targets: &[Client],
) -> Result<(), EngineError> {
    let switch_point: tokio_postgres::types::PgLsn = targets[0]
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .map_err(sql("target", "reading the switch point"))?
        .get(0);
    let each = streams.iter().enumerate().map(|(i, s)| {
        let (back, db) = (s.reverse_name(), &s.database);
        let (source, target, conninfo) = (&sources[i], &targets[i], &conninfos[i]);
        async move {
            replication::create_subscription(source, &back, conninfo, &back, &back, false)
                .await
                .map_err(sql("source", "creating the reverse subscription"))?;
            let advanced = source
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
            swap_ddl_roles((target, "target"), (source, "source")).await
        }
    });
    futures_util::future::try_join_all(each).await?;
    Ok(())
}

/// Makes `capturing`'s database capture DDL and `replaying`'s replay it, where the
/// migration captures DDL at all: target → source while reverse replication runs, and
/// back when it is removed. Each side is a session and its role's name (`source`,
/// `target`).
pub(super) async fn swap_ddl_roles(
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
pub(super) async fn target_conninfo<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    db: &str,
) -> Result<String, EngineError> {
    platform
        .subscriber_conninfo(&spec.target, db)
        .await
        .map_err(platform_error("finding how the source reaches the target"))
}

/// Removes every stream's reverse replication objects (after a failed or interrupted
/// cutover: a stale reverse slot would stream the forward-applied changes back).
pub(super) async fn drop_reverse(
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
