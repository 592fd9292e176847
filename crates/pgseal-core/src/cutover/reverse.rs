//! Replication from the target back to the source, for a rollback.

use pgseal_pg::replication::{self, quote_ident};
use pgseal_platform::Platform;
use tokio_postgres::Client;

use crate::error::{EngineError, platform_error, sql};
use crate::journal::{Journal, MigrationSpec};
use crate::steps::failpoint_at;
use crate::stream::Stream;
use crate::validate::CHANGE_LOG_SCHEMA;

/// Sets up replication from the target back to the source for every stream, before the
/// pause: publication and slot on the target. [`subscribe_reverse`] then makes the
/// disabled subscription on the source, [`start_reverse`] sets where it starts inside the
/// pause, and `rollback` enables it. Returns
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
        tracing::warn!(
            migration = %name,
            %wal_level,
            target = %spec.target,
            "no reverse replication: rollback will be unavailable; for it, give the target wal_level=logical before the cutover (locally: pgseal instance set-param TARGET wal_level=logical --apply)"
        );
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

/// Before the pause: a disabled reverse subscription on the source for every stream
/// (each reaching its target database by `conninfos`, from [`plan_reverse`]), so that the
/// pause holds no connection from the source to the target. A subscription takes its
/// table list when it is made, and the reverse publication (all tables) still holds
/// pgseal's change log, which the source does not have: the list comes from a short-lived
/// publication of every other table ([`Stream::reverse_list_name`]), and the subscription
/// is then pointed at the reverse publication without a refresh. [`start_reverse`] checks
/// the list again inside the pause. The databases are set up side by side.
pub(super) async fn subscribe_reverse(
    streams: &[Stream],
    conninfos: &[String],
    sources: &[Client],
    targets: &[Client],
) -> Result<Vec<Prepared>, EngineError> {
    let each = streams.iter().enumerate().map(|(i, s)| {
        let (back, list) = (s.reverse_name(), s.reverse_list_name());
        let (source, target, conninfo) = (&sources[i], &targets[i], &conninfos[i]);
        async move {
            // Read before the list: DDL replayed after this read makes the pause compare
            // the lists ([`start_reverse`]); none replayed lets it skip that.
            let replayed = pgseal_pg::ddl::held_id(target)
                .await
                .map_err(sql("target", "reading the DDL replayed"))?;
            // The names quoted by the target itself, by PostgreSQL's rules.
            let tables: Option<String> = target
                .query_one(
                    "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') \
                     FROM pg_publication_tables WHERE pubname = $1 AND schemaname <> $2",
                    &[&back, &CHANGE_LOG_SCHEMA],
                )
                .await
                .map_err(sql("target", "listing the reverse publication's tables"))?
                .get(0);
            let list_sql = quote_ident(&list);
            target
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {list_sql}; CREATE PUBLICATION {list_sql}{}",
                    tables
                        .map(|t| format!(" FOR TABLE {t}"))
                        .unwrap_or_default()
                ))
                .await
                .map_err(sql(
                    "target",
                    "making the reverse subscription's table list",
                ))?;
            let made =
                replication::create_subscription(source, &back, conninfo, &list, &back, false)
                    .await
                    .map_err(sql("source", "creating the reverse subscription"));
            let dropped = replication::drop_publication(target, &list)
                .await
                .map_err(sql(
                    "target",
                    "dropping the reverse subscription's table list",
                ));
            made?;
            dropped?;
            source
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {} SET PUBLICATION {} WITH (refresh = false)",
                    quote_ident(&back),
                    quote_ident(&back)
                ))
                .await
                .map_err(sql(
                    "source",
                    "pointing the reverse subscription at its publication",
                ))?;
            Ok(Prepared {
                swap: prepare_ddl_swap(source, target).await?,
                replayed,
            })
        }
    });
    futures_util::future::try_join_all(each).await
}

/// What [`subscribe_reverse`] readied in a database, for [`start_reverse`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Prepared {
    /// The DDL capture's swap.
    swap: DdlSwap,
    /// The last captured statement the target had replayed when the subscription's
    /// table list was read (`None` where the target has no DDL replay).
    replayed: Option<i64>,
}

/// Whether a database's target starts capturing DDL at the switch (see
/// [`prepare_ddl_swap`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DdlSwap {
    /// The target captures from the switch on.
    capture: bool,
}

/// Before the pause, where the migration captures DDL: the target's capture installed
/// but off, so that inside the pause it starts capturing in one statement string
/// ([`swap_ddl_now`]); until then it replays what the source captures, as before.
///
/// The source's half of the swap (it stops capturing and replays what comes back) waits
/// for a rollback, which makes it first ([`replay_on_source`]): after the switch the source
/// is fenced and nothing reaches it until then (the reverse subscriptions stay disabled),
/// so nothing is gained by doing it inside the pause.
async fn prepare_ddl_swap(source: &Client, target: &Client) -> Result<DdlSwap, EngineError> {
    let installed = pgseal_pg::ddl::installed(source)
        .await
        .map_err(sql("source", "reading whether DDL is captured"))?;
    let capture = installed
        && pgseal_pg::ddl::prepare_capture(target)
            .await
            .map_err(sql("target", "installing the DDL capture"))?;
    Ok(DdlSwap { capture })
}

/// Inside the pause, after [`prepare_ddl_swap`]: DDL on the target from the switch on is
/// captured, for the reverse replication to carry back to the source (pgseal_pg::ddl).
async fn swap_ddl_now(swap: DdlSwap, target: &Client) -> Result<(), EngineError> {
    if swap.capture {
        pgseal_pg::ddl::capture_now(target)
            .await
            .map_err(sql("target", "turning the DDL capture on"))?;
    }
    Ok(())
}

/// At the start of a rollback, before pgseal changes anything on the source: each source
/// database stops capturing DDL and replays what the reverse replication brings (the
/// source's half of the swap the cutover began; see [`prepare_ddl_swap`]). Idempotent: a
/// rollback that runs again finds it done. Nothing happens where the migration captures
/// no DDL.
pub(super) async fn replay_on_source(sources: &[Client]) -> Result<(), EngineError> {
    let each = sources.iter().map(|source| async move {
        pgseal_pg::ddl::install_replay(source)
            .await
            .map_err(sql("source", "turning the DDL replay on"))
    });
    futures_util::future::try_join_all(each).await?;
    Ok(())
}

/// Inside the pause, once the forward subscriptions are drained and disabled and the
/// change logs dropped: every reverse subscription (made by [`subscribe_reverse`]) set to
/// start exactly at the switch point. Its replication origin is advanced to the target's
/// current WAL position, so what the forward subscriptions applied on the target (since
/// the reverse slot was made) is never sent back; what applications write after the
/// switch is. (The slot's own start is earlier: a walsender starts at the later of the
/// two.) Where a table came or went since the subscription was made (DDL replayed in
/// between), the subscription is made again with the list as it is now. The databases
/// are set up side by side, each on its own sessions.
pub(super) async fn start_reverse(
    streams: &[Stream],
    conninfos: &[String],
    prepared: &[Prepared],
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
        let Prepared { swap, replayed } = prepared[i];
        async move {
            // Tables come and go by DDL, which the target replays: none replayed since the
            // list was read, the list holds. Otherwise (or with no replay to tell) the
            // lists are compared.
            let unchanged = match replayed {
                Some(then) => {
                    pgseal_pg::ddl::held_id(target)
                        .await
                        .map_err(sql("target", "reading the DDL replayed"))?
                        == Some(then)
                }
                None => false,
            };
            if !unchanged {
                recheck_reverse_tables(&back, db, conninfo, source, target).await?;
            }
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
            // The advance is WAL-logged but commits nothing, so nothing flushes it: a
            // source that crashed before its WAL writer's next round would come back with
            // the origin where it was, and send every forward-applied change back. A
            // transaction with an id, committed with a local flush, makes it durable.
            source
                .batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit = local; \
                     SELECT pg_current_xact_id(); COMMIT",
                )
                .await
                .map_err(sql(
                    "source",
                    "making where reverse replication starts durable",
                ))?;
            swap_ddl_now(swap, target).await
        }
    });
    futures_util::future::try_join_all(each).await?;
    Ok(())
}

/// Compares the reverse publication's tables on the target with the reverse subscription's
/// on the source (after the change log is gone) and, where they differ (DDL replayed
/// between the subscription and the pause made or dropped a table), makes the
/// subscription again with the list as it is now: a disabled subscription cannot be
/// refreshed.
async fn recheck_reverse_tables(
    back: &str,
    db: &str,
    conninfo: &str,
    source: &Client,
    target: &Client,
) -> Result<(), EngineError> {
    let (published, subscribed) = futures_util::future::try_join(
        async {
            target
                .query_one(
                    "SELECT coalesce(array_agg(format('%I.%I', schemaname, tablename)), '{}') \
                     FROM pg_publication_tables WHERE pubname = $1",
                    &[&back],
                )
                .await
                .map_err(sql("target", "listing the reverse publication's tables"))
        },
        async {
            source
                .query_one(
                    "SELECT coalesce(array_agg(format('%I.%I', n.nspname, c.relname)), '{}') \
                     FROM pg_subscription_rel r \
                     JOIN pg_class c ON c.oid = r.srrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE r.srsubid = (SELECT oid FROM pg_subscription WHERE subname = $1 \
                       AND subdbid = (SELECT oid FROM pg_database \
                                      WHERE datname = current_database()))",
                    &[&back],
                )
                .await
                .map_err(sql("source", "listing the reverse subscription's tables"))
        },
    )
    .await?;
    // Compared as sets: the two servers may sort text differently.
    let (mut published, mut subscribed): (Vec<String>, Vec<String>) =
        (published.get(0), subscribed.get(0));
    published.sort();
    subscribed.sort();
    if published != subscribed {
        tracing::info!(database = %db, subscription = %back, "the reverse subscription's tables changed since it was made: made again");
        replication::drop_subscription(source, back)
            .await
            .map_err(sql("source", "dropping the reverse subscription"))?;
        replication::create_subscription(source, back, conninfo, back, back, false)
            .await
            .map_err(sql("source", "creating the reverse subscription"))?;
    }
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
        for publication in [back.clone(), s.reverse_list_name()] {
            replication::drop_publication(&targets[i], &publication)
                .await
                .map_err(sql("target", "dropping the reverse publication"))?;
        }
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
