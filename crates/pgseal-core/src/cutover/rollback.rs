//! Rollback: back to the source by reverse replication, losing nothing.

use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, quote_ident};
use pgseal_platform::Platform;
use serde::Serialize;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::fence::{admin_session, allow_connections, fence, lift_fences, slip_in};
use crate::handle::Handle;
use crate::journal::{INSTANCE, Phase};
use crate::sessions::streams_of;
use crate::steps::{Step, failpoint_at};
use crate::stream::Stream;

use super::drain::*;
use super::reverse::*;
use super::sequences::*;
use super::sides::*;
use super::switch::*;

/// How long each reverse subscription may take to start streaming before the pause, on
/// top of the pause's own timeout: PostgreSQL's launcher starts one apply worker per
/// `wal_retrieve_retry_interval` (5 s by default).
const REVERSE_START_PER_DATABASE: Duration = Duration::from_secs(6);

/// Waits until reverse slot `back` (on the target, read through `target`) is in use: its
/// apply worker on the source streams.
async fn wait_streaming(target: &tokio_postgres::Client, back: &str) -> Result<(), EngineError> {
    loop {
        let slot = replication::slot(target, back)
            .await
            .map_err(sql("target", "reading the reverse slot"))?;
        if slot.is_some_and(|s| s.active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The databases moved back.
    pub databases: Vec<String>,
    /// The target's flushed WAL position after its fence's barrier.
    pub fence_lsn: Lsn,
    /// The lowest confirmed position of the reverse slots when drained (≥ `fence_lsn`).
    pub drained_lsn: Lsn,
    /// Sequences set on the source from the target.
    pub sequences: Vec<SequenceSync>,
    /// Milliseconds from pause to the first write accepted on the source.
    pub write_pause_ms: u64,
    /// When the pause began, in milliseconds since the Unix epoch.
    pub paused_at_unix_ms: i64,
    /// The pause part by part (pause, fence, drain, sequences, reverse, carried, switch,
    /// resume, first write), in milliseconds; they add up to `write_pause_ms`.
    pub phases: Vec<PauseTiming>,
    /// The longest a client waited behind the pause, as the switch saw it (see
    /// [`CutoverReport::client_wait_ms`]).
    pub client_wait_ms: Option<u64>,
    /// What the applications were switched with.
    pub switch: String,
    /// What replication does not carry, carried from the target before the pause.
    pub carried_before: crate::carry::Carried,
    /// The same, inside the pause.
    pub carried: crate::carry::Carried,
}

/// Switches applications back from the target to the source after a cutover, with the
/// same procedure in reverse for every database: pause, fence the target, let the source
/// apply everything written on the target since the switch (reverse replication), set
/// the sequences from the target, point the switch at the source, resume. Nothing written
/// on the target after cutover is lost. On failure before the switch the target serves
/// again.
pub async fn rollback<P: Platform, S: Switch>(
    m: &Handle<'_, P>,
    switch: &S,
    timeout: Duration,
) -> Result<RollbackReport, EngineError> {
    let (platform, journal, name) = (m.platform, m.journal, m.name);
    let spec = journal.migration(name)?.spec;
    if !journal.has_resource(name, "reverse_subscription")? {
        return Err(EngineError::Precondition(format!(
            "migration {name} has no reverse replication (the target's wal_level is not logical, or cleanup ran): rollback is unavailable"
        )));
    }
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    let backs: Vec<String> = streams.iter().map(Stream::reverse_name).collect();
    let targets = sessions(platform, &spec, &streams, "target").await?;
    let target_admin = target_admin(platform, &spec, &streams).await?;
    let source_admin = admin_session(platform, &spec, &streams).await?;
    // Large objects and roles written on the target since the cutover, carried back
    // whole before the pause (the source's databases stay fenced meanwhile: pgseal slips
    // in); inside it, only what changed since.
    let mut fenced_sessions = Vec::new();
    for db in &dbs {
        fenced_sessions.push(slip_in(platform, &spec, &source_admin, db).await?);
    }
    // The source replays the DDL the target captured since the cutover (and captures none
    // of what pgseal does on it from here on).
    replay_on_source(&fenced_sessions).await?;
    let carrying = pgseal_pg::globals::DiffOptions::default();
    let (carried_before, baseline) = crate::carry::before_pause(&crate::carry::Sides {
        from: &targets.clients,
        from_role: "target",
        to: &fenced_sessions,
        to_role: "source",
        databases: &dbs,
        options: &carrying,
    })
    .await?;
    drop(fenced_sessions);
    let mut carried = None;
    let run = journal.step_started(name, Step::Rollback)?;
    let mut paused = None;
    let mut laps = Laps::start();
    let mut sources: Option<Sessions> = None;
    let mut fence_lsn = None;
    let mut drained = None;
    let mut sequences = Vec::new();
    // On record before anything changes: a crash from here on leaves the source open (and
    // the endpoint perhaps paused), and `resume` recovers an interrupted rollback only
    // when it finds these (lifting a fence that was never up is harmless).
    for db in &dbs {
        journal.add_resource(name, "target_fence", db, db)?;
    }
    // The source databases let their apply workers in; everyone else is ended until the
    // switch. The reverse subscriptions start before the pause, so the launcher's wait
    // between two apply workers (`wal_retrieve_retry_interval`, 5 s by default) is spent
    // while the target still serves, and they apply what the target writes meanwhile:
    // inside the pause only the last moments are left to drain.
    let started = async {
        lift_fences(&source_admin, &dbs, "source").await?;
        let opened = sessions(platform, &spec, &streams, "source").await?;
        for (i, s) in streams.iter().enumerate() {
            // The target's address may have changed since the reverse subscription was
            // made (renamed at cutover): point it at the target as it is now.
            let conninfo = target_conninfo(platform, &spec, &s.database).await?;
            opened.clients[i]
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {} CONNECTION {}",
                    quote_ident(&backs[i]),
                    replication::quote_literal(&conninfo)
                ))
                .await
                .map_err(sql(
                    "source",
                    "pointing the reverse subscription at the target",
                ))?;
        }
        // Flushed commits: the drain inside the pause waits for no WAL writer round.
        set_flushed_apply(&opened.clients, &backs, true, "source").await?;
        set_subscriptions(&opened.clients, &backs, true, "source").await?;
        // The carry inside the pause writes on sessions of its own: it runs beside other
        // work on the source, and its large objects go in transactions of several
        // statements.
        let carry_to = sessions(platform, &spec, &streams, "source").await?;
        Ok::<_, EngineError>((opened, carry_to))
    };
    let outcome = match started.await {
        Err(error) => Err(error),
        Ok((opened, carry_to)) => {
            let own: Vec<i32> = opened.pids.iter().chain(&carry_to.pids).copied().collect();
            sources = Some(opened);
            let opened = sources.as_ref().expect("set above");
            // Keep everyone else out of the source until the switch.
            let keep_out = async {
                loop {
                    if let Err(e) = source_admin
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = ANY($1) AND pid <> ALL($2) AND backend_type = 'client backend'",
                            &[&dbs, &own],
                        )
                        .await
                    {
                        return Err::<(), EngineError>(sql("source", "keeping other sessions out")(e));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let back_sides = DrainSides {
                publisher: &targets.clients[0],
                publisher_role: "target",
                subscriber: &opened.clients[0],
                subscriber_role: "source",
            };
            let streaming = async {
                for back in &backs {
                    wait_streaming(&targets.clients[0], back).await?;
                }
                // Caught up before the pause: a worker the launcher started last has the
                // target's writes since the cutover to apply, and the drain inside the
                // pause is left only what arrives after this point.
                let lsn = flushed_barrier(&targets.clients[0], "target").await?;
                drain(&back_sides, &backs, lsn).await?;
                switch
                    .ready(&[])
                    .await
                    .map_err(switch_failed(switch, "preparing"))?;
                Ok::<(), EngineError>(())
            };
            let start_limit = REVERSE_START_PER_DATABASE * dbs.len() as u32 + timeout;
            let before_switch = async {
                match tokio::time::timeout(start_limit, streaming).await {
                    Ok(streaming) => streaming?,
                    Err(_) => {
                        return Err(EngineError::Timeout {
                            what:
                                "the reverse apply workers to stream from the target and catch up"
                                    .into(),
                            seconds: start_limit.as_secs(),
                        });
                    }
                }
                laps = Laps::start();
                paused = Some((Instant::now(), crate::journal::now_ms()));
                let in_pause = async {
                    switch
                        .pause()
                        .await
                        .map_err(switch_failed(switch, "pausing"))?;
                    laps.lap("pause");
                    failpoint_at("rollback:paused");
                    fence(&target_admin, &dbs, &targets.pids, "target").await?;
                    failpoint_at("rollback:fenced");
                    crate::steps::wait_point("rollback:fenced").await;
                    let lsn = flushed_barrier(&targets.clients[0], "target").await?;
                    fence_lsn = Some(lsn);
                    laps.lap("fence");
                    drained = Some(drain(&back_sides, &backs, lsn).await?);
                    laps.lap("drain");
                    // The rest side by side, each lap what the pause waited for it
                    // beyond the parts before it (so the laps still add up).
                    let carry_sides = crate::carry::Sides {
                        from: &targets.clients,
                        from_role: "target",
                        to: &carry_to.clients,
                        to_role: "source",
                        databases: &dbs,
                        options: &carrying,
                    };
                    let (synced, stopped_at, (carried_now, carried_at)) =
                        futures_util::future::try_join3(
                            async {
                                let synced =
                                    sync_all_sequences(&streams, &targets.clients, &opened.clients)
                                        .await?;
                                Ok::<_, EngineError>((synced, Instant::now()))
                            },
                            async {
                                set_subscriptions(&opened.clients, &backs, false, "source").await?;
                                Ok::<_, EngineError>(Instant::now())
                            },
                            async {
                                let carried =
                                    crate::carry::inside_pause(&carry_sides, &baseline).await?;
                                Ok::<_, EngineError>((carried, Instant::now()))
                            },
                        )
                        .await?;
                    let (synced, synced_at) = synced;
                    sequences.extend(synced);
                    carried = Some(carried_now);
                    laps.lap_at("sequences", synced_at);
                    laps.lap_at("reverse", stopped_at);
                    laps.lap_at("carried", carried_at);
                    Ok::<(), EngineError>(())
                };
                match tokio::time::timeout(super::in_pause_share(timeout), in_pause).await {
                    Ok(result) => result,
                    Err(_) => Err(EngineError::Timeout {
                        what: "fence, reverse drain and sequences".into(),
                        seconds: timeout.as_secs(),
                    }),
                }
            };
            let done = tokio::select! {
                done = before_switch => done,
                failed = keep_out => failed,
            };
            // The loop may have left a round of ending sessions in flight; one more
            // statement on its session runs after it, so none lands on the sessions the
            // switch opens next.
            match done {
                Ok(()) => source_admin
                    .batch_execute("")
                    .await
                    .map_err(sql("source", "ending the keep-out loop")),
                failed => failed,
            }
        }
    };
    if let Err(error) = outcome {
        // The target keeps serving: fence the source again, lift the target's fence.
        let undo = async {
            if let Some(opened) = &sources {
                // Left enabled where the source does not answer, they only apply the
                // target's writes to the fenced source, as replication would.
                let disabled = set_subscriptions(&opened.clients, &backs, false, "source");
                let _ = tokio::time::timeout(ANSWER_WAIT, disabled).await;
            }
            let source_admin_again = reopened_if_silent(&[&source_admin], async || {
                admin_session(platform, &spec, &streams).await
            })
            .await?;
            allow_connections(
                source_admin_again.as_ref().unwrap_or(&source_admin),
                &dbs,
                false,
                "fencing the source again",
                "source",
            )
            .await?;
            // The target's fence is in its catalog and outlives a crash: a target that
            // restarted inside the pause is reached again to lift it.
            let target_admin_again = reopened_if_silent(&[&target_admin], async || {
                super::sides::target_admin(platform, &spec, &streams).await
            })
            .await?;
            lift_fences(
                target_admin_again.as_ref().unwrap_or(&target_admin),
                &dbs,
                "target",
            )
            .await?;
            for db in &dbs {
                journal.remove_resource(name, "target_fence", db, db)?;
            }
            Ok::<(), EngineError>(())
        }
        .await;
        // Only a pause that began is lifted (resuming an endpoint that was never paused
        // is harmless too).
        let resumed = match paused {
            Some(_) => switch.resume().await,
            None => Ok(()),
        };
        journal.step_failed(run, &crate::error::error_chain(&error))?;
        undo?;
        resumed.map_err(switch_failed(switch, "resuming"))?;
        return Err(error);
    }
    journal.add_resource(name, "switched_back", INSTANCE, &spec.source)?;
    let client_wait_ms = switch_over(switch, &[], "source", "rollback:switched", &mut laps).await?;
    let (paused_at, paused_at_unix_ms) = paused.expect("set before the switch");
    let report = RollbackReport {
        databases: dbs.clone(),
        fence_lsn: fence_lsn.expect("set before the switch"),
        drained_lsn: drained.expect("set before the switch"),
        sequences,
        write_pause_ms: paused_at.elapsed().as_millis() as u64,
        paused_at_unix_ms,
        phases: laps.laps,
        client_wait_ms,
        switch: switch.describe(),
        carried_before,
        carried: carried.expect("set before the switch"),
    };
    for db in &dbs {
        journal.remove_resource(name, "fence", db, db)?;
    }
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::RolledBack, None)?;
    tracing::info!(migration = %name, write_pause_ms = report.write_pause_ms, "rolled back");
    Ok(report)
}
