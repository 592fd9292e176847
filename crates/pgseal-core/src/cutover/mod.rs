//! Cutover: moves applications from the source to the replicating encrypted target with a
//! pause, not an outage, and nothing lost — for every database of the migration's scope
//! (one [`Stream`] each).
//!
//! 1. Preconditions (all listed at once): replicating, every stream's lag under the limit,
//!    no apply errors, every apply worker running, schema fingerprints equal, and nothing
//!    the switch moves left stale: a database outside the scope (when the switch moves
//!    the whole instance), a table outside a publication, an unlogged table, a published
//!    table the target's subscription does not know — each refused unless the user
//!    accepted it by name (`--leave-stale`, journaled with the cutover).
//! 2. [`Switch::pause`]: the endpoint holds new transactions, waiting for running ones.
//! 3. Fence **every** write path to **every** database of the scope: `ALLOW_CONNECTIONS
//!    false` (no new session of any role, superusers included), then every other session
//!    of those databases is ended — client backends and background workers (job
//!    schedulers, extension workers, the apply worker of a subscription the source itself
//!    has); only walsenders (they read) and autovacuum stay. A background worker that
//!    comes back although connections are refused is named with the fix, and cutover
//!    refuses. Proof: for a window, no such session is connected and no prepared
//!    transaction of those databases waits.
//! 4. Drain: a barrier is committed with `synchronous_commit = local` (so every earlier
//!    commit, asynchronous ones included, is flushed before it), and pgseal waits until
//!    every stream's slot has `confirmed_flush_lsn` — what the target reports applied
//!    *and flushed* — at or past the flushed position after it.
//! 5. Side by side from here, each part waiting only for what it reads: the final check
//!    of rows changed since the last validation, then the change log's drop; every
//!    sequence of every database set on the target from the source's
//!    `last_value`/`is_called` (not `MAX(column)`, not only owned sequences) and read
//!    back; the forward subscriptions disabled; large objects and roles carried (on
//!    sessions of their own). Then the fenced verification beside reverse replication's
//!    start (publication, slot and subscription made per database before the pause; its
//!    origin set to the target's WAL position now).
//! 6. [`Switch::point_to_target`] (an endpoint keeps routing the databases outside the
//!    scope to the source; what it writes was written by [`Switch::ready`] before the
//!    pause), [`Switch::resume`], and a first write through the switch measures the
//!    write pause.
//!
//! If anything fails (or `timeout` passes) before the switch, the fences are lifted, the
//! subscriptions re-enabled, the endpoint resumed on the source, and the migration is back
//! to replicating; the error says why.

use std::time::Instant;

use pgseal_platform::Platform;
use tokio_postgres::Client;

mod checks;
mod cleanup;
mod drain;
mod recover;
pub mod report;
mod reverse;
mod rollback;
mod sequences;
mod sides;
mod switch;

pub(crate) use report::refuse_failed;
pub use report::{
    CleanupReport, CutoverOptions, CutoverReport, PauseTiming, Recovered, SequenceSync,
};

use checks::*;
pub use checks::{HEALED_AFTER, databases_outside};
pub use cleanup::cleanup;
use drain::*;
pub use recover::{recover_interrupted, recover_interrupted_rollback};
use reverse::*;
pub use rollback::{RollbackReport, rollback};
use sequences::*;
use sides::*;
use switch::*;
pub use switch::{Switch, SwitchError};

use crate::error::{EngineError, sql};
use crate::fence::{admin_session, fence, lift_fences};
use crate::handle::Handle;
use crate::journal::{INSTANCE, Phase};
use crate::sessions::streams_of;
use crate::steps::{Step, failpoint_at, test_hook};
use crate::stream::Stream;

/// The refusal of a cutover whose verification found differences, each named.
fn refusal(when: &str, verified: &crate::verify::VerifyReport) -> EngineError {
    EngineError::Precondition(format!(
        "verification {when} found {} difference(s) between the source and the target, so nothing was switched: {}. \
         Make the target match (or the source), then cut over again; `pgseal migrate verify` shows both sides' definitions",
        verified.differences,
        verified.lines().join("; ")
    ))
}

/// Verifies every database (the target following the source) before the pause; returns
/// the verification and each database's last captured DDL statement when it began.
async fn verify_before_pause(
    name: &str,
    streams: &[Stream],
    sources: &[Client],
    targets: &[Client],
    options: &pgseal_pg::globals::DiffOptions,
) -> Result<
    (
        crate::verify::VerifyReport,
        std::collections::BTreeMap<String, i64>,
    ),
    EngineError,
> {
    let mut verifying = crate::verify::Verifying::default();
    let mut checked = std::collections::BTreeMap::new();
    for (i, s) in streams.iter().enumerate() {
        checked.insert(
            s.database.clone(),
            pgseal_pg::ddl::last_id(&sources[i])
                .await
                .map_err(sql("source", "reading the captured DDL"))?,
        );
        let catch_up = crate::catch_up::CatchUp::new(
            name,
            &s.database,
            &sources[i],
            &targets[i],
            crate::catch_up::Follower::Stream {
                slot: s.name.clone(),
            },
        )
        .await?;
        verifying
            .database(
                &s.database,
                &sources[i],
                &targets[i],
                Some(&catch_up),
                crate::verify::Sequences::Trailing,
                true,
            )
            .await?;
    }
    let databases: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    verifying
        .globals(&sources[0], &targets[0], &databases, false, options)
        .await?;
    let report = verifying.finish();
    if !report.clean {
        return Err(refusal("before the pause", &report));
    }
    Ok((report, checked))
}

/// The share of a pause's `timeout` the work inside it may take: the rest is kept for
/// lifting the fence again when it gives up, so that the pause ends by its timeout (a
/// fifth of it, at most 2 s).
fn in_pause_share(timeout: std::time::Duration) -> std::time::Duration {
    timeout - (timeout / 5).min(std::time::Duration::from_secs(2))
}

/// Runs pgseal's own cutover of migration `name` (the snapshot and full-load
/// strategies); see the module documentation.
pub async fn cutover<P: Platform, S: Switch>(
    m: &Handle<'_, P>,
    switch: &S,
    options: &CutoverOptions,
) -> Result<CutoverReport, EngineError> {
    let (platform, journal, name) = (m.platform, m.journal, m.name);
    let spec = journal.migration(name)?.spec;
    let mut report = CutoverReport {
        dry_run: options.dry_run,
        switch: switch.describe(),
        ..Default::default()
    };
    crate::steps::wait_point("cutover:checking").await;
    let failed = check(platform, journal, name, switch, options, &mut report).await?;
    report.failed_checks = failed;
    if options.dry_run {
        return Ok(report);
    }
    refuse_failed(&report)?;
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    report.databases = dbs.clone();
    let admin = admin_session(platform, &spec, &streams).await?;
    let sources = sessions(platform, &spec, &streams, "source").await?;
    let targets = sessions(platform, &spec, &streams, "target").await?;
    // The carry writes on sessions of its own: it runs inside the pause beside other
    // work on the target, and its large objects go in transactions of several statements.
    let carry_targets = sessions(platform, &spec, &streams, "target").await?;
    let run = journal.step_started(name, Step::Cutover)?;
    journal.set_phase(name, Phase::CuttingOver, None)?;

    // The reverse publications, slots and subscriptions are made before the pause (a slot
    // waits for the target's running transactions, a subscription connects to the
    // target); inside it, only the subscriptions' start.
    // What replication does not carry is carried whole before the pause too; inside it,
    // only what changed since.
    let carrying = carry_options(options);
    let carry_sides = crate::carry::Sides {
        from: &sources.clients,
        from_role: "source",
        to: &carry_targets.clients,
        to_role: "target",
        databases: &dbs,
        options: &carrying,
    };
    let forward: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
    let before_pause = async {
        let ready = prepare_reverse(journal, &spec, &streams, &targets.clients).await?;
        failpoint_at("cutover:reverse_prepared");
        let (mut carried, baseline) = crate::carry::before_pause(&carry_sides).await?;
        // The catalog and what no row comparison sees, verified before anything pauses;
        // inside the pause, again where DDL ran since.
        let (verified, checked) = verify_before_pause(
            name,
            &streams,
            &sources.clients,
            &targets.clients,
            &carrying,
        )
        .await?;
        // How the source reaches each target database, looked up, and the reverse
        // subscriptions put on record and made (disabled) before the pause; inside it,
        // only their start.
        let reverse_to = if ready {
            let conninfos = plan_reverse(platform, journal, &spec, &streams).await?;
            let swaps =
                subscribe_reverse(&streams, &conninfos, &sources.clients, &targets.clients).await?;
            failpoint_at("cutover:reverse_subscribed");
            if test_hook("wait-before-pause") {
                // Room for a test's DDL between the subscriptions and the pause.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            (conninfos, swaps)
        } else {
            (Vec::new(), Vec::new())
        };
        // What applications wrote outside replication while all the above ran (seconds of
        // large objects), carried once more: the pause carries only what comes after.
        let (again, baseline) = crate::carry::since(&carry_sides, Some(&baseline)).await?;
        carried.add(again);
        // The apply commits flushed from now on, so the drain inside the pause waits for
        // no WAL writer round (a failed cutover sets it back). Set last: flushing each
        // applied commit slows the apply, and the catch-up the verification above waits
        // for with it.
        set_flushed_apply(&targets.clients, &forward, true, "target").await?;
        switch
            .ready(&report.kept_on_source)
            .await
            .map_err(switch_failed(switch, "preparing"))?;
        Ok::<_, EngineError>((ready, carried, baseline, verified, checked, reverse_to))
    };
    let (baseline, checked, reverse_to) = match before_pause.await {
        Ok((ready, carried, baseline, verified, checked, reverse_to)) => {
            report.rollback_ready = ready;
            report.carried_before = Some(carried);
            report.verified_before = Some(verified);
            (baseline, checked, reverse_to)
        }
        Err(error) => {
            let undo =
                drop_reverse(journal, &spec, &streams, &sources.clients, &targets.clients).await;
            let _ = set_flushed_apply(&targets.clients, &forward, false, "target").await;
            journal.step_failed(run, &crate::error::error_chain(&error))?;
            journal.set_phase(name, Phase::Replicating, None)?;
            undo?;
            return Err(error);
        }
    };

    // Every wait below is bounded by `options.timeout` as a whole: the work inside the
    // pause by its share of it, what it is doing at the time named when it runs out.
    let paused = Instant::now();
    report.paused_at_unix_ms = Some(crate::journal::now_ms());
    let deadline = paused + options.timeout;
    let doing = std::cell::Cell::new("pausing the switch");
    let mut laps = Laps::start();
    let before_switch = async {
        switch
            .pause()
            .await
            .map_err(switch_failed(switch, "pausing"))?;
        laps.lap("pause");
        doing.set("fencing the source");
        for db in &dbs {
            journal.add_resource(name, "fence", db, db)?;
        }
        let fenced = fence(&admin, &dbs, &sources.pids, "source").await?;
        report.sessions_ended = fenced.sessions;
        report.workers_ended = fenced.workers;
        failpoint_at("cutover:fenced");
        crate::steps::wait_point("cutover:fenced").await;
        doing.set("the flushed barrier on the source");
        let fence_lsn = flushed_barrier(&sources.clients[0], "source").await?;
        report.fence_lsn = Some(fence_lsn);
        laps.lap("fence");
        if test_hook("fail-after-fence") {
            return Err(EngineError::Precondition(
                "test hook fail-after-fence: the cutover fails with the fence up".into(),
            ));
        }
        let slots: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
        let sides = DrainSides {
            publisher: &sources.clients[0],
            publisher_role: "source",
            subscriber: &targets.clients[0],
            subscriber_role: "target",
        };
        doing.set("every slot on the source to confirm the barrier (the drain)");
        crate::steps::wait_point("cutover:draining").await;
        report.drained_lsn = Some(drain(&sides, &slots, fence_lsn).await?);
        report.drain_ms = Some(paused.elapsed().as_millis() as u64);
        laps.lap("drain");
        failpoint_at("cutover:drained");
        // What needs the drain runs side by side from here, each part waiting only for
        // what it reads: the final check then the change logs' drop, the sequences, the
        // forward subscriptions' stop, and the carry (on its own sessions); then the
        // fenced verification (it counts sequences behind and must not see the change
        // log's triggers) beside reverse replication's start. Each part's lap is what the
        // pause waited for it beyond the parts before it, so the laps still add up.
        doing.set("the final check, the sequences and the carry (side by side)");
        let rollback_ready = report.rollback_ready;
        let checked_rows = async {
            let mut rows_checked = None;
            // Only what changed since the last validation pass began is verified again.
            if let Some(last) = journal.outputs(name, Step::Validate)?
                && crate::validate::lets_cutover(&last)
            {
                // The databases side by side, each on its own sessions.
                let checks = streams.iter().enumerate().filter_map(|(i, s)| {
                    let horizon = last["horizons"][&s.database].as_i64()?;
                    let (source, target) = (&sources.clients[i], &targets.clients[i]);
                    Some(async move {
                        let check = crate::validate::final_check(source, target, horizon).await?;
                        Ok::<_, EngineError>((&s.database, check))
                    })
                });
                let mut total = crate::validate::FinalCheck::default();
                for (database, check) in futures_util::future::try_join_all(checks).await? {
                    total.add(database, check);
                }
                let (mismatched, keys, withheld) = (
                    total.mismatched_rows,
                    total.keys.clone(),
                    total.keys_withheld,
                );
                if mismatched > 0 {
                    let unlisted = if withheld > 0 {
                        format!(
                            " ({withheld} more whose keys are not identifiers; `pgseal migrate validate {name}` shows them)"
                        )
                    } else {
                        String::new()
                    };
                    return Err(EngineError::Precondition(format!(
                        "the final check found {mismatched} row(s) differing since the last validation: {}{unlisted}",
                        keys.join(", ")
                    )));
                }
                rows_checked = Some(total);
            }
            let checked_at = Instant::now();
            futures_util::future::try_join_all(
                targets.clients.iter().map(crate::validate::drop_change_log),
            )
            .await?;
            Ok::<_, EngineError>((rows_checked, checked_at))
        };
        let sequences_set = async {
            let synced = sync_all_sequences(&streams, &sources.clients, &targets.clients).await?;
            Ok::<_, EngineError>((synced, Instant::now()))
        };
        let carried_now = async {
            let carried = crate::carry::inside_pause(&carry_sides, &baseline).await?;
            Ok::<_, EngineError>((carried, Instant::now()))
        };
        let forward_stopped = set_subscriptions(&targets.clients, &forward, false, "target");
        let first = futures_util::future::try_join3(checked_rows, sequences_set, forward_stopped);
        let after = async {
            let ((final_check, checked_at), (synced, sequences_at), ()) = first.await?;
            doing.set("verifying both sides with the source fenced, and starting reverse replication (side by side)");
            let verify = async {
                let verified =
                    crate::verify::fenced(&sources.clients, &targets.clients, &dbs, &checked)
                        .await?;
                Ok::<_, EngineError>((verified, Instant::now()))
            };
            let reverse = async {
                if rollback_ready {
                    let (conninfos, prepared) = &reverse_to;
                    start_reverse(
                        &streams,
                        conninfos,
                        prepared,
                        &sources.clients,
                        &targets.clients,
                    )
                    .await?;
                }
                Ok::<_, EngineError>(())
            };
            let ((verified, verified_at), ()) =
                futures_util::future::try_join(verify, reverse).await?;
            crate::steps::wait_point("cutover:reversed").await;
            Ok::<_, EngineError>((
                final_check,
                checked_at,
                synced,
                sequences_at,
                verified,
                verified_at,
            ))
        };
        let (
            (final_check, checked_at, synced, sequences_at, verified, verified_at),
            (carried, carried_at),
        ) = futures_util::future::try_join(after, carried_now).await?;
        let reverse_at = Instant::now();
        report.final_check = final_check;
        report.sequences.extend(synced);
        laps.lap_at("final_check", checked_at);
        laps.lap_at("sequences", sequences_at);
        laps.lap_at("verified", verified_at);
        laps.lap_at("carried", carried_at);
        laps.lap_at("reverse_setup", reverse_at);
        let refusal = (!verified.clean).then(|| refusal("with the source fenced", &verified));
        report.verified = Some(verified);
        report.carried = Some(carried);
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        Ok::<(), EngineError>(())
    };
    let outcome = match tokio::time::timeout(in_pause_share(options.timeout), before_switch).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Timeout {
            what: format!("{} inside the pause (--timeout)", doing.get()),
            seconds: options.timeout.as_secs(),
        }),
    };
    if let Err(error) = outcome {
        // Back to where we were: the source serves, the target replicates. The source's
        // fence first, so that it comes down even when the target does not answer (a
        // target that crashed inside the pause); then the target's side, on new sessions
        // where the old ones died with it.
        let lift = async {
            if test_hook("undo-fails") {
                return Err(EngineError::Precondition(
                    "test hook undo-fails: the fence is not lifted".into(),
                ));
            }
            let admin_again = reopened_if_silent(&[&admin], async || {
                admin_session(platform, &spec, &streams).await
            })
            .await?;
            lift_fences(admin_again.as_ref().unwrap_or(&admin), &dbs, "source").await?;
            for db in &dbs {
                journal.remove_resource(name, "fence", db, db)?;
            }
            Ok::<(), EngineError>(())
        };
        let mut lift = std::pin::pin!(lift);
        // The pause ends by its deadline: where the source does not answer in time (the
        // network to it stalled), the switch resumes first, and the fence comes down as
        // soon as the source answers again.
        let left = deadline.saturating_duration_since(Instant::now());
        let lifted_in_time = tokio::time::timeout(left, &mut lift).await.ok();
        let resumed = switch.resume().await;
        let lifted = match lifted_in_time {
            Some(lifted) => lifted,
            None => {
                tracing::warn!(migration = %name, "the pause reached its --timeout with the source's fence up: the switch resumed; the fence is lifted once the source answers");
                lift.await
            }
        };
        let undo = match &lifted {
            Ok(()) => {
                async {
                    let targets_again =
                        reopened(platform, &spec, &streams, "target", &targets).await?;
                    let sources_again =
                        reopened(platform, &spec, &streams, "source", &sources).await?;
                    let (t, s) = (
                        targets_again.as_ref().unwrap_or(&targets),
                        sources_again.as_ref().unwrap_or(&sources),
                    );
                    drop_reverse(journal, &spec, &streams, &s.clients, &t.clients).await?;
                    resume_forward(&t.clients, &forward).await
                }
                .await
            }
            Err(_) => Ok(()),
        };
        let text = crate::error::error_chain(&error);
        journal.step_failed(run, &text)?;
        if let Err(lift_error) = lifted {
            // The phase stays `cutting_over`, so `status` says so and `resume` lifts the
            // fence.
            return Err(EngineError::Precondition(format!(
                "the cutover failed ({text}) and undoing it failed too ({}): the source's databases may still refuse connections; `pgseal migrate resume {name}` lifts the fence",
                crate::error::error_chain(&lift_error)
            )));
        }
        if let Err(undo_error) = undo {
            // The phase stays `cutting_over`, so `status` says so and `resume` finishes the
            // undo (or finishes forward, once switched).
            return Err(EngineError::Precondition(format!(
                "the cutover failed ({text}); the source serves again (its fence is lifted), but undoing it on the target failed ({}): `pgseal migrate resume {name}` finishes the undo once the target answers",
                crate::error::error_chain(&undo_error)
            )));
        }
        journal.set_phase(name, Phase::Replicating, None)?;
        resumed.map_err(switch_failed(switch, "resuming"))?;
        return Err(error);
    }

    // From here on applications may write to the target: a crash is finished forward.
    journal.add_resource(name, "switched", INSTANCE, &spec.target)?;
    report.client_wait_ms = switch_over(
        switch,
        &report.kept_on_source,
        "target",
        "cutover:switched",
        &mut laps,
    )
    .await?;
    report.write_pause_ms = Some(paused.elapsed().as_millis() as u64);
    report.phases = laps.laps;
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    journal.set_phase(name, Phase::CutOver, None)?;
    tracing::info!(migration = %name, databases = dbs.len(), write_pause_ms = report.write_pause_ms, sequences = report.sequences.len(), "cut over");
    Ok(report)
}
