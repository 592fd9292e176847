//! Waiting for the target to have applied what the source committed, which is what every
//! comparison of the two sides waits on (validation, verification), and knowing at once
//! when it never will: the apply stopped on a captured statement, or failing.

use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::ddl::Captured;
use pgseal_pg::replication;
use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::error::{EngineError, sql};

/// How the target follows the source.
#[derive(Debug, Clone)]
pub(crate) enum Follower {
    /// pgseal's own stream: its slot on the source, its subscription on the target.
    Stream {
        /// The stream's slot (and subscription slot) name.
        slot: String,
    },
    /// The platform's own logical replication (blue/green on Aurora, or with an upgrade):
    /// every subscription of the database on the target (see [`platform_slots`] for its
    /// slots on the source).
    Platform,
    /// The platform's physical replication (blue/green on RDS at the same major version):
    /// green is a hot standby, and its replay position is what it has applied.
    Standby,
}

impl Follower {
    /// How the target follows `stream`'s database: pgseal's stream (`platform` is
    /// `None`), or the platform's replication by its method: logical (which must have its
    /// slots on the source, `source`) or physical.
    pub(crate) async fn of(
        source: &Client,
        stream: &crate::stream::Stream,
        platform: Option<pgseal_platform::ReplicationMethod>,
    ) -> Result<Follower, EngineError> {
        use pgseal_platform::ReplicationMethod;
        match platform {
            None => Ok(Follower::Stream {
                slot: stream.name.clone(),
            }),
            Some(ReplicationMethod::Logical) => {
                platform_slots(source).await?;
                Ok(Follower::Platform)
            }
            Some(ReplicationMethod::Physical) => Ok(Follower::Standby),
        }
    }
}

/// Commits a barrier on `session` with `synchronous_commit = local`: its commit is
/// flushed, and with it every earlier commit, asynchronous ones included, and the
/// walsenders wake. `local`, not `on`: a server with synchronous standbys would make the
/// barrier wait for their acknowledgement (forever, with one down), and logical walsenders
/// send what is flushed locally without it.
pub(crate) async fn commit_barrier(
    session: &Client,
    role: &'static str,
) -> Result<(), EngineError> {
    session
        .batch_execute(
            "SET synchronous_commit = local; \
             SELECT pg_logical_emit_message(true, 'pgseal', 'barrier')",
        )
        .await
        .map_err(sql(role, "committing a barrier"))
}

/// What [`CatchUp::stopped`] says when a captured statement stops the apply: the
/// statement and the user's choices.
pub(crate) fn stopped_message(migration: &str, database: &str, captured: &Captured) -> String {
    format!(
        "DDL statement {id} captured in {database} ({tag}) is not replayed: {verdict}; the target's apply stops on it. \
         Apply it on the target by hand, then `pgseal migrate ddl {migration} --database {database} --apply {id}`; \
         or `--skip {id}` to leave it out",
        id = captured.id,
        tag = captured.command_tag,
        verdict = captured
            .verdict
            .as_deref()
            .unwrap_or("not replayed by itself"),
    )
}

/// One database's two sides and how the target follows the source.
pub(crate) struct CatchUp<'a> {
    /// The migration (for the user's choices in messages).
    pub migration: &'a str,
    /// The database.
    pub database: &'a str,
    /// A session on the source that holds nothing: it reads the slots and commits the
    /// barriers that wake the walsenders.
    pub source: &'a Client,
    /// A session on the target.
    pub target: &'a Client,
    /// How the target follows.
    pub follower: Follower,
    /// The apply worker's errors counted when this began (`pg_stat_subscription_stats`).
    pub errors_at_start: i64,
}

/// How long [`CatchUp::applied`] waits in all.
const APPLIED_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the apply may keep failing (its worker restarts every
/// `wal_retrieve_retry_interval`) before a wait gives up naming it.
const FAILING_FOR: Duration = Duration::from_secs(8);

impl<'a> CatchUp<'a> {
    /// Sides of `database`, with the apply worker's error count read now.
    pub async fn new(
        migration: &'a str,
        database: &'a str,
        source: &'a Client,
        target: &'a Client,
        follower: Follower,
    ) -> Result<CatchUp<'a>, EngineError> {
        let mut sides = CatchUp {
            migration,
            database,
            source,
            target,
            follower,
            errors_at_start: 0,
        };
        sides.errors_at_start = sides.apply_errors().await?;
        Ok(sides)
    }

    /// The source's position now: everything it has committed is below it, asynchronous
    /// commits still in WAL buffers included (the insert position, not the write one).
    pub async fn source_lsn(&self, session: &Client) -> Result<Lsn, EngineError> {
        replication::current_wal_insert_lsn(session)
            .await
            .map_err(sql("source", "reading the WAL position"))
    }

    /// Errors the target's apply workers of this database have counted.
    async fn apply_errors(&self) -> Result<i64, EngineError> {
        let row = self
            .target
            .query_one(
                "SELECT coalesce(sum(st.apply_error_count), 0)::int8 FROM pg_stat_subscription_stats st \
                 JOIN pg_subscription s ON s.oid = st.subid \
                 WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .map_err(sql("target", "reading the apply worker's errors"))?;
        Ok(row.get(0))
    }

    /// Why the target will not catch up, if it will not: a captured statement the apply
    /// stops on (named, with the choices), or an apply worker failing since this began.
    pub async fn stopped(
        &self,
        failing_since: Option<Instant>,
    ) -> Result<Option<String>, EngineError> {
        if let Follower::Stream { slot } = &self.follower
            && self
                .target
                .query_opt(
                    "SELECT 1 FROM pg_subscription WHERE subslotname = $1 AND NOT subenabled",
                    &[slot],
                )
                .await
                .map_err(sql("target", "reading the subscription"))?
                .is_some()
        {
            return Ok(Some(format!(
                "the subscription of {} is disabled, so the target does not follow the source; \
                 `pgseal migrate status {}` says why, `pgseal migrate resume {}` enables it again",
                self.database, self.migration, self.migration
            )));
        }
        if matches!(self.follower, Follower::Stream { .. })
            && let Some(c) = pgseal_pg::ddl::stopped(self.source, self.target)
                .await
                .map_err(sql("source", "reading the captured DDL"))?
        {
            return Ok(Some(stopped_message(self.migration, self.database, &c)));
        }
        if matches!(self.follower, Follower::Standby) {
            let row = self
                .target
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                            CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END",
                    &[],
                )
                .await
                .map_err(sql("target", "asking whether green replays blue's WAL"))?;
            let (standby, paused): (bool, bool) = (row.get(0), row.get(1));
            return Ok(if !standby {
                Some(format!(
                    "green's {} is not a standby (not in recovery): physical blue/green replication keeps green in recovery until the switchover, so it no longer follows blue",
                    self.database
                ))
            } else if paused {
                Some(format!(
                    "green's replay of blue's WAL is paused (pg_wal_replay_pause), so green's {} does not follow blue: resume it (SELECT pg_wal_replay_resume() on green) and validate again",
                    self.database
                ))
            } else {
                None
            });
        }
        if failing_since.is_some_and(|t| t.elapsed() >= FAILING_FOR) {
            return Ok(Some(format!(
                "the apply worker of {} keeps failing ({} error(s) since this began, pg_stat_subscription_stats); \
                 the target's server log has the error, and `pgseal migrate status {}` what pgseal knows of it",
                self.database,
                self.apply_errors().await? - self.errors_at_start,
                self.migration
            )));
        }
        Ok(None)
    }

    /// Waits (up to 30 s, holding nothing) until the target has applied everything up to
    /// `lsn`; fails at once, naming why, when the apply is stopped on a statement or
    /// keeps failing.
    pub async fn applied(&self, lsn: Lsn) -> Result<(), EngineError> {
        let deadline = Instant::now() + APPLIED_TIMEOUT;
        // Bounded as a whole too (with room for the loop's own, better-worded answer): a
        // side that stops answering (the network to it stalled) holds a statement, not
        // only the loop, past the deadline.
        let bound = deadline + Duration::from_secs(5);
        tokio::time::timeout_at(bound.into(), self.applied_by(lsn, deadline))
            .await
            .map_err(|_| EngineError::Timeout {
                what: format!("the target to apply up to {lsn}"),
                seconds: APPLIED_TIMEOUT.as_secs(),
            })?
    }

    /// [`CatchUp::applied`]'s loop, until `deadline`.
    async fn applied_by(&self, lsn: Lsn, deadline: Instant) -> Result<(), EngineError> {
        let mut failing_since = None;
        let mut next_look = Instant::now();
        loop {
            if self
                .received(
                    lsn,
                    (Instant::now() + Duration::from_millis(500)).min(deadline),
                )
                .await?
            {
                return Ok(());
            }
            if Instant::now() >= next_look {
                if failing_since.is_none() && self.apply_errors().await? > self.errors_at_start {
                    failing_since = Some(Instant::now());
                }
                if let Some(why) = self.stopped(failing_since).await? {
                    return Err(EngineError::Precondition(why));
                }
                next_look = Instant::now() + Duration::from_secs(1);
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Timeout {
                    what: format!("the target to apply up to {lsn}"),
                    seconds: APPLIED_TIMEOUT.as_secs(),
                });
            }
        }
    }

    /// Waits until `deadline` for the target's apply workers to have received, and so
    /// applied (each applies its messages in order as it reads them), everything up to
    /// `lsn`: committed, visible, not necessarily flushed, which is all a read needs;
    /// nudges the source's walsenders with a flushed barrier on each look. False when not
    /// in time, or when no apply worker runs.
    pub async fn received(&self, lsn: Lsn, deadline: Instant) -> Result<bool, EngineError> {
        if matches!(self.follower, Follower::Standby) {
            return self.replayed(lsn, deadline).await;
        }
        loop {
            // pgseal's stream: its subscription; the platform's: every one of the database.
            let slot = match &self.follower {
                Follower::Stream { slot } => Some(slot.as_str()),
                Follower::Platform | Follower::Standby => None,
            };
            let rows = self
                .target
                .query(
                    "SELECT w.received_lsn FROM pg_subscription s \
                     LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL \
                     WHERE CASE WHEN $1::text IS NULL \
                                THEN s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                                ELSE s.subslotname = $1 END",
                    &[&slot],
                )
                .await
            .map_err(sql("target", "reading the apply worker's position"))?;
            if rows.is_empty() {
                // No subscription: pgseal's stream not replicating, nothing to wait for;
                // the platform's replication not seen, nothing proves the target caught up.
                return Ok(matches!(self.follower, Follower::Stream { .. }));
            }
            // Strictly past: the worker shows a data message's position before applying
            // it, so only a later message (or a keepalive) proves `lsn` applied.
            if rows.iter().all(|row| {
                row.get::<_, Option<PgLsn>>(0)
                    .is_some_and(|r| Lsn::from(r) > lsn)
            }) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            commit_barrier(self.source, "source").await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl CatchUp<'_> {
    /// [`CatchUp::received`] for a physical standby: waits until `deadline` for its replay
    /// position (`pg_last_wal_replay_lsn()`, the end of the last record replayed, so
    /// every commit before it is visible to its queries) to reach `lsn`, nudging the
    /// source with a flushed barrier on each look (the walsender sends only flushed WAL).
    /// False when not in time, or when the target is not a standby (no replay position:
    /// nothing proves it has what the source committed).
    async fn replayed(&self, lsn: Lsn, deadline: Instant) -> Result<bool, EngineError> {
        loop {
            let replayed: Option<PgLsn> = self
                .target
                .query_one("SELECT pg_last_wal_replay_lsn()", &[])
                .await
                .map_err(sql("target", "reading the standby's replay position"))?
                .get(0);
            let Some(replayed) = replayed else {
                return Ok(false);
            };
            if Lsn::from(replayed) >= lsn {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            commit_barrier(self.source, "source").await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The source's logical slots of the connected database that are not pgseal's: the
/// platform's replication into green.
pub(crate) async fn platform_slots(source: &Client) -> Result<Vec<String>, EngineError> {
    let rows = source
        .query(
            "SELECT slot_name::text FROM pg_replication_slots \
             WHERE slot_type = 'logical' AND database = current_database() \
               AND slot_name NOT LIKE 'pgseal%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(sql("source", "listing the replication slots"))?;
    if rows.is_empty() {
        return Err(EngineError::Precondition(
            "no logical replication slot of the platform's on the source: green is not replicating this database".into(),
        ));
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
