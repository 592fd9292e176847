//! The drain: a flushed barrier, and every stream's slot confirmed past it.

use std::time::Duration;

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self};
use tokio_postgres::Client;

use crate::catch_up::commit_barrier;
use crate::error::{EngineError, sql};

/// [`commit_barrier`], then the flushed WAL position after it: what the other side must
/// confirm for nothing to be left behind.
pub(super) async fn flushed_barrier(
    session: &Client,
    role: &'static str,
) -> Result<Lsn, EngineError> {
    commit_barrier(session, role).await?;
    let lsn: tokio_postgres::types::PgLsn = session
        .query_one("SELECT pg_current_wal_flush_lsn()", &[])
        .await
        .map_err(sql(role, "reading the flushed WAL position"))?
        .get(0);
    Ok(Lsn::from(lsn))
}

/// The two sides of a drain: the publisher, where the slots are, and the subscriber, whose
/// apply workers must confirm.
pub(super) struct DrainSides<'a> {
    /// A session on the publisher that can read the slots and commit barriers.
    pub(super) publisher: &'a Client,
    /// `source` or `target`, for errors.
    pub(super) publisher_role: &'static str,
    /// A session on the subscriber.
    pub(super) subscriber: &'a Client,
    /// See `publisher_role`.
    pub(super) subscriber_role: &'static str,
}

/// Flushes the WAL of `session`'s server: a transaction with an xid, committed with
/// `synchronous_commit = local` (see [`commit_barrier`]), flushes every earlier commit
/// with it.
pub(super) async fn flush_wal(session: &Client, role: &'static str) -> Result<(), EngineError> {
    session
        .batch_execute("SET synchronous_commit = local; SELECT pg_current_xact_id()")
        .await
        .map_err(sql(role, "flushing the WAL"))
}

/// Waits until every slot named in `slots` has confirmed `lsn`; returns the lowest
/// confirmed position.
///
/// An apply worker commits asynchronously and confirms only what its server has flushed;
/// left alone it looks again every `wal_writer_delay` (200 ms). So while a slot lags, each
/// pass flushes the subscriber's WAL and commits an empty barrier on the publisher: the
/// walsenders wake, find nothing to send, ping their apply workers, and the workers'
/// replies report the flushed position.
pub(super) async fn drain(
    sides: &DrainSides<'_>,
    slots: &[String],
    lsn: Lsn,
) -> Result<Lsn, EngineError> {
    loop {
        // Every slot in one statement: one round trip however many databases.
        let states = replication::slots(sides.publisher, slots)
            .await
            .map_err(sql(sides.publisher_role, "reading the slots"))?;
        let mut lowest: Option<Lsn> = None;
        let mut behind = false;
        for slot in slots {
            let state = states
                .iter()
                .find(|s| &s.name == slot)
                .ok_or_else(|| EngineError::Precondition(format!("slot {slot} is gone")))?;
            match state.confirmed_flush_lsn {
                Some(confirmed) if confirmed >= lsn => {
                    lowest = Some(lowest.map_or(confirmed, |l| l.min(confirmed)));
                }
                _ => behind = true,
            }
        }
        if !behind {
            return lowest.ok_or_else(|| EngineError::Precondition("no slot to drain".into()));
        }
        flush_wal(sides.subscriber, sides.subscriber_role).await?;
        commit_barrier(sides.publisher, sides.publisher_role).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
