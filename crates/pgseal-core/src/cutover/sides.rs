//! Sessions on both sides of every stream, admin sessions, and the subscriptions turned on or off.

use std::time::{Duration, Instant};

use pgseal_pg::replication::quote_ident;
use pgseal_platform::Platform;
use tokio_postgres::Client;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::fence::backend_pid;
use crate::journal::MigrationSpec;
use crate::sessions::{admin_database, connect_source_db, connect_to};
use crate::stream::Stream;

/// How roles' passwords are carried at a switch: every one pgseal can read, but those the
/// user named.
pub(super) fn carry_options(options: &CutoverOptions) -> pgseal_pg::globals::DiffOptions {
    pgseal_pg::globals::DiffOptions {
        keep_master_password: false,
        skip_passwords: options.without_password.clone(),
    }
}

/// The same on the target.
pub(super) async fn target_admin<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
) -> Result<Client, EngineError> {
    let dbs: Vec<&str> = streams.iter().map(|s| s.database.as_str()).collect();
    connect_to(platform, &spec.target, admin_database(&dbs), "target").await
}

/// Sessions on every stream's database on one side, with pgseal's backend pids.
pub(super) struct Sessions {
    pub(super) clients: Vec<Client>,
    pub(super) pids: Vec<i32>,
}

/// Sessions on every stream's database of the source (`role` "source") or the target.
pub(super) async fn sessions<P: Platform>(
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

/// How long an undo waits for a side whose sessions stopped answering (its server
/// restarting after a crash, or the network between stalled) to accept new ones.
pub(super) const REOPEN_WAIT: Duration = Duration::from_secs(90);

/// How long a session may take to answer `SELECT 1` before it counts as silent.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// What `open` opens when any of `current` no longer answers (one round trip each, all at
/// once, each given [`ANSWER_WAIT`]: its server was restarted after a crash, or the
/// network stalls), tried every 200 ms while the side refuses connections or stays
/// silent (each attempt bounded by the connection timeout), up to [`REOPEN_WAIT`]; `None`
/// while all answer.
pub(super) async fn reopened_if_silent<T>(
    current: &[&Client],
    open: impl AsyncFn() -> Result<T, EngineError>,
) -> Result<Option<T>, EngineError> {
    let answers = futures_util::future::join_all(current.iter().map(|c| async move {
        matches!(
            tokio::time::timeout(ANSWER_WAIT, c.simple_query("SELECT 1")).await,
            Ok(Ok(_))
        )
    }));
    if answers.await.into_iter().all(|answered| answered) {
        return Ok(None);
    }
    let deadline = Instant::now() + REOPEN_WAIT;
    loop {
        match open().await {
            Ok(opened) => return Ok(Some(opened)),
            Err(e) if Instant::now() >= deadline => {
                return Err(EngineError::Precondition(format!(
                    "no new session answered within {} s: {}",
                    REOPEN_WAIT.as_secs(),
                    crate::error::error_chain(&e)
                )));
            }
            Err(e) => {
                tracing::debug!(error = %crate::error::error_chain(&e), "reconnecting after a side stopped answering");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// [`reopened_if_silent`] for every stream's sessions on side `role`.
pub(super) async fn reopened<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
    role: &'static str,
    current: &Sessions,
) -> Result<Option<Sessions>, EngineError> {
    let all: Vec<&Client> = current.clients.iter().collect();
    reopened_if_silent(&all, async || sessions(platform, spec, streams, role).await).await
}

/// Makes each subscription of `names` (one per session of `clients`, on side `role`)
/// commit what it applies flushed (`flushed`) or asynchronously again. Flushed, a drain
/// waits for the apply and one flush, not for the WAL writer's next round
/// (`wal_writer_delay`, 200 ms by default) before the slot confirms it. The apply worker
/// takes it at its next transaction, without restarting.
pub(super) async fn set_flushed_apply(
    clients: &[Client],
    names: &[String],
    flushed: bool,
    role: &'static str,
) -> Result<(), EngineError> {
    let clause = if flushed {
        "SET (synchronous_commit = 'on')"
    } else {
        "SET (synchronous_commit = 'off')"
    };
    let what = "setting how a subscription commits";
    alter_subscriptions(clients, names, clause, role, what).await
}

/// Enables or disables each subscription of `names` (one per session of `clients`, on
/// side `role`).
pub(super) async fn set_subscriptions(
    clients: &[Client],
    names: &[String],
    enabled: bool,
    role: &'static str,
) -> Result<(), EngineError> {
    let (clause, what) = if enabled {
        ("ENABLE", "enabling a subscription")
    } else {
        ("DISABLE", "disabling a subscription")
    };
    alter_subscriptions(clients, names, clause, role, what).await
}

/// The forward subscriptions `names` on the target (sessions `targets`) replicating again
/// as before a cutover began: enabled, committing asynchronously (PostgreSQL's default;
/// the cutover made them flush each commit just before its pause). What an undone or
/// interrupted cutover leaves.
pub(super) async fn resume_forward(
    targets: &[Client],
    names: &[String],
) -> Result<(), EngineError> {
    set_subscriptions(targets, names, true, "target").await?;
    set_flushed_apply(targets, names, false, "target").await
}

/// `ALTER SUBSCRIPTION name clause` for each subscription of `names`, one per session of
/// `clients` (each in its own database), all at once; an error names the side and what
/// was being done.
async fn alter_subscriptions(
    clients: &[Client],
    names: &[String],
    clause: &str,
    role: &'static str,
    what: &'static str,
) -> Result<(), EngineError> {
    let each = clients.iter().zip(names).map(|(client, name)| async move {
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} {clause}",
                quote_ident(name)
            ))
            .await
            .map_err(sql(role, what))
    });
    futures_util::future::try_join_all(each).await?;
    Ok(())
}
