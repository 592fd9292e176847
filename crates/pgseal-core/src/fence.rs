//! The fence: every write path to a migration's source databases closed, proven closed,
//! and lifted again; and a session on a database while it stays fenced.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgseal_platform::Platform;
use tokio_postgres::Client;

use crate::error::{EngineError, sql};
use crate::journal::MigrationSpec;
use crate::sessions::{admin_database, connect_source_db};
use crate::stream::Stream;
use pgseal_pg::sql::quote_ident;

/// What the fence ended.
#[derive(Debug, Default)]
pub(crate) struct Fenced {
    /// Sessions ended.
    pub(crate) sessions: i64,
    /// Background workers ended, by type.
    pub(crate) workers: Vec<String>,
}

/// The sessions a fence ends: everything connected to a fenced database but pgseal's own
/// sessions, walsenders (they only read; pgseal's own streams run through them) and
/// autovacuum.
const FENCED_SESSIONS: &str = "SELECT pid, backend_type, datname::text FROM pg_stat_activity \
     WHERE datname = ANY($1) AND pid <> ALL($2) \
       AND backend_type NOT IN ('walsender', 'autovacuum worker')";

/// Sessions still starting up in a fenced database: from before `CheckMyDatabase` reads
/// `datallowconn` until after the backend shows in `pg_stat_activity`, `InitPostgres` holds
/// a `RowExclusiveLock` on the database (a shared object lock, released when its startup
/// transaction commits). A session that read `datallowconn` before the fence committed is
/// therefore always visible in this query or in [`FENCED_SESSIONS`], read in that order.
const STARTING_SESSIONS: &str = "SELECT count(*) FROM pg_locks l \
     JOIN pg_database d ON d.oid = l.objid \
     WHERE l.locktype = 'object' AND l.database = 0 AND l.classid = 'pg_database'::regclass \
       AND d.datname = ANY($1) AND l.pid <> ALL($2) AND l.granted";

/// How often one kind of background worker may come back after being ended before the
/// fence gives up on it (it bypasses `ALLOW_CONNECTIONS`).
const WORKER_RETURNS: usize = 3;

/// Closes every write path to the databases `dbs`: no new session, every other session
/// ended (see [`FENCED_SESSIONS`]); returns what was ended once the fence is proven.
/// `admin` is a session on a database outside `dbs` (PostgreSQL refuses `ALLOW_CONNECTIONS
/// false` for the current database); `keep` are pgseal's own sessions, which stay.
///
/// Proof: one pass in which no session is starting up in those databases
/// ([`STARTING_SESSIONS`]), then none other is connected to them, then no prepared
/// transaction of theirs waits. Any session that could still write must have passed
/// `CheckMyDatabase` before `ALLOW_CONNECTIONS false` committed, so it is in one of the
/// first two; a session ended shows until its process has exited, after its last commit.
pub(crate) async fn fence(
    admin: &Client,
    dbs: &[String],
    keep: &[i32],
    role: &'static str,
) -> Result<Fenced, EngineError> {
    // Every database in one transaction: one commit, whatever their number.
    allow_connections(
        admin,
        dbs,
        false,
        "refusing new connections to the databases",
        role,
    )
    .await?;
    let mut fenced = Fenced::default();
    let mut returns: HashMap<String, usize> = HashMap::new();
    let mut ended_pids = HashSet::new();
    loop {
        // The three reads are sent together and run in the order sent, each in its own
        // transaction (the proof needs the starting sessions read before the others):
        // one round trip.
        let (starting, others, prepared) = tokio::try_join!(
            async {
                admin
                    .query_one(STARTING_SESSIONS, &[&dbs, &keep])
                    .await
                    .map_err(sql(role, "listing sessions starting up"))
            },
            async {
                admin
                    .query(FENCED_SESSIONS, &[&dbs, &keep])
                    .await
                    .map_err(sql(role, "listing the databases' sessions"))
            },
            async {
                admin
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_xacts WHERE database = ANY($1)",
                        &[&dbs],
                    )
                    .await
                    .map_err(sql(role, "counting prepared transactions"))
            },
        )?;
        let (starting, prepared): (i64, i64) = (starting.get(0), prepared.get(0));
        // Ended already, still exiting: signalled once, counted once.
        let new: Vec<(i32, String, String)> = others
            .iter()
            .map(|row| {
                let (pid, kind, db): (i32, Option<String>, Option<String>) =
                    (row.get(0), row.get(1), row.get(2));
                (
                    pid,
                    kind.unwrap_or_else(|| "backend".into()),
                    db.unwrap_or_default(),
                )
            })
            .filter(|(pid, _, _)| ended_pids.insert(*pid))
            .collect();
        // Every session signalled at once: one round trip however many there are.
        let signalled =
            futures_util::future::try_join_all(new.iter().map(|(pid, _, _)| async move {
                admin
                    .query_one("SELECT pg_terminate_backend($1)", &[pid])
                    .await
                    .map_err(sql(role, "ending a session"))
                    .map(|row| row.get::<_, bool>(0))
            }))
            .await?;
        for ((pid, kind, db), ended) in new.into_iter().zip(signalled) {
            if !ended {
                continue;
            }
            if kind == "client backend" {
                fenced.sessions += 1;
                continue;
            }
            tracing::warn!(pid, backend_type = %kind, database = %db, "fence ended a background worker");
            fenced.workers.push(format!("{kind} {pid} ({db})"));
            let seen = returns.entry(format!("{kind} ({db})")).or_default();
            *seen += 1;
            if *seen > WORKER_RETURNS {
                return Err(EngineError::Precondition(format!(
                    "background worker \"{kind}\" keeps reconnecting to {db} although it refuses connections (ended {} times): it writes past the fence. Stop it for the cutover (pg_cron: UPDATE cron.job SET active = false, or set cron.database_name elsewhere; a subscription: ALTER SUBSCRIPTION ... DISABLE) and run cutover again",
                    *seen
                )));
            }
        }
        if prepared > 0 {
            return Err(EngineError::Precondition(format!(
                "{prepared} prepared transaction(s) of the migrated databases wait for COMMIT PREPARED or ROLLBACK PREPARED; resolve them first"
            )));
        }
        if starting == 0 && others.is_empty() {
            return Ok(fenced);
        }
        // A session signalled exits within a millisecond or so: look again soon.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets every database of `dbs` take connections again, from `admin` (a session on
/// another database of side `role`).
pub(crate) async fn lift_fences(
    admin: &Client,
    dbs: &[String],
    role: &'static str,
) -> Result<(), EngineError> {
    allow_connections(admin, dbs, true, "lifting the fence", role).await
}

/// `ALTER DATABASE db ALLOW_CONNECTIONS allow` for every database of `dbs` in one
/// transaction, from `admin` (a session on another database of side `role`); `what`
/// names the step in an error.
pub(crate) async fn allow_connections(
    admin: &Client,
    dbs: &[String],
    allow: bool,
    what: &'static str,
    role: &'static str,
) -> Result<(), EngineError> {
    if dbs.is_empty() {
        return Ok(());
    }
    let statements: String = dbs
        .iter()
        .map(|db| {
            format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow};",
                quote_ident(db)
            )
        })
        .collect();
    admin
        // One query string: PostgreSQL runs it as one implicit transaction, rolled back
        // whole on an error (no transaction block left open on the session).
        .batch_execute(&statements)
        .await
        .map_err(sql(role, what))
}

/// A session on the source's database `db` however it is fenced: the fence is lifted for
/// a moment, pgseal connects, the fence is closed again at once and anyone else who
/// slipped in is ended. Returns pgseal's session, with the fence in place.
pub(crate) async fn slip_in<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    admin: &Client,
    db: &str,
) -> Result<Client, EngineError> {
    let one = [db.to_string()];
    lift_fences(admin, &one, "source").await?;
    let source = connect_source_db(platform, spec, db).await;
    allow_connections(admin, &one, false, "fencing the database again", "source").await?;
    let source = source?;
    let own = backend_pid(&source, "source").await?;
    fence(admin, &one, &[own], "source").await?;
    Ok(source)
}

/// A session on the source's database `db` while a cut-over migration keeps it fenced
/// (see [`slip_in`]).
pub(crate) async fn fenced_source<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
    db: &str,
) -> Result<Client, EngineError> {
    let admin = admin_session(platform, spec, streams).await?;
    slip_in(platform, spec, &admin, db).await
}

pub(crate) async fn backend_pid(client: &Client, role: &'static str) -> Result<i32, EngineError> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(sql(role, "reading pgseal's session id"))?
        .get(0))
}

/// A session on the source outside the migration's databases (for fences and
/// server-wide reads while they are fenced).
pub(crate) async fn admin_session<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
) -> Result<Client, EngineError> {
    let dbs: Vec<&str> = streams.iter().map(|s| s.database.as_str()).collect();
    connect_source_db(platform, spec, admin_database(&dbs)).await
}
