//! The blue/green strategy's steps: the platform's own deployment (RDS and Aurora
//! Blue/Green with a `TargetKmsKeyId` for each blue resource, and a `TargetEngineVersion`
//! for an upgrade) made or found again, then green awaited and each green resource's
//! encryption checked before anything can be switched. The platform replicates; pgseal
//! journals, checks and cleans up.
//!
//! How the platform replicates decides the rest ([`method`]): physically (RDS at the same
//! major version), green is a hot standby whose replay position validation waits for, no
//! logical decoding is turned on and DDL is carried; logically (Aurora, or an upgrade),
//! validation waits for green's subscriptions, the source needs logical decoding and the
//! cutover compares both schemas, since DDL is not carried.
//!
//! Crash safety: the deployment is recorded as a resource (by its name,
//! `pgseal-<migration>`) before it is asked for, and the platform names and tags it after
//! the migration, so a run killed after the request finds it again instead of making a
//! second one, and `abort` deletes it (with green) whatever the run got to.

use std::time::Instant;

use pgseal_platform::{Platform, ReplicationMethod};
use serde_json::json;

use super::{Strategy, not_its_step};
use crate::cutover::report::{
    CleanupReport, CutoverOptions, CutoverReport, PauseTiming, Recovered, refuse_failed,
};
use crate::cutover::{RollbackReport, Switch};
use crate::engine::{Engine, StepResult};
use crate::error::{EngineError, platform_error, sql};
use crate::handle::Handle;
use crate::journal::{DEPLOYMENT, INSTANCE, Journal, MigrationSpec, Outcome, Phase};
use crate::sessions::connect_source_db;
use crate::steps::{Step, StrategyKind};
use crate::stream;
use crate::verify::{Compared, Replicator};

/// The blue/green strategy (`--strategy blue-green`): the platform replicates and
/// switches over; pgseal checks green before and after, and has no way back.
#[derive(Debug, Clone, Copy)]
pub struct BlueGreen;

impl Strategy for BlueGreen {
    async fn run_step<P: Platform>(&self, engine: &Engine<'_, P>, step: Step) -> StepResult {
        match step {
            Step::Preflight => engine.preflight().await,
            Step::CreateDeployment => engine.create_deployment().await,
            Step::GreenReady => engine.green_ready().await,
            other => Err(not_its_step(StrategyKind::BlueGreen, other)),
        }
    }

    /// pgseal replays no DDL: the platform's physical replication carries it, its logical
    /// replication does not (the cutover refuses on schema drift instead).
    fn replays_ddl(&self) -> bool {
        false
    }

    fn follower_idle(&self) -> Option<&'static str> {
        Some("the platform's blue/green deployment replicates")
    }

    /// Green, and every database of the scope (the platform replicates them all).
    async fn compared_with<P: Platform>(
        &self,
        m: &Handle<'_, P>,
        spec: &MigrationSpec,
    ) -> Result<Compared, EngineError> {
        Ok(Compared {
            target: green_instance(m.journal, m.name)?,
            scope: scope(m.platform, spec, m.name).await?,
            replicator: Replicator::Platform(method(m.journal, m.name)?),
        })
    }

    async fn cut_over<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        _switch: &S,
        options: &CutoverOptions,
    ) -> Result<CutoverReport, EngineError> {
        switchover(m.platform, m.journal, m.name, options).await
    }

    /// The platform's switchover moves the names.
    fn switch_moves_names(&self) -> bool {
        true
    }

    async fn roll_back<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        _switch: &S,
        _timeout: std::time::Duration,
    ) -> Result<RollbackReport, EngineError> {
        Err(EngineError::Precondition(format!(
            "migration {name} was switched over by the platform's blue/green deployment, which has no way back: the old blue is kept as it was at the switchover (see `pgseal migrate status {name}`)",
            name = m.name
        )))
    }

    async fn recover_cutover<P: Platform>(
        &self,
        m: &Handle<'_, P>,
    ) -> Result<Recovered, EngineError> {
        recover(m.platform, m.journal, m.name).await
    }

    async fn clean_up<P: Platform>(&self, m: &Handle<'_, P>) -> Result<CleanupReport, EngineError> {
        cleanup(m.platform, m.journal, m.name).await
    }

    /// The old blue, which the platform renamed at its switchover.
    fn old_source(&self, journal: &Journal, name: &str) -> Result<Option<String>, EngineError> {
        old_blue(journal, name)
    }
}

/// Every database of blue/green migration `name`'s scope, read from blue.
async fn scope<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    name: &str,
) -> Result<Vec<stream::Stream>, EngineError> {
    let home = connect_source_db(platform, spec, &spec.database).await?;
    let all = stream::databases(&home)
        .await
        .map_err(sql("source", "listing databases"))?;
    stream::plan(name, &all, spec.databases.as_deref()).map_err(EngineError::Precondition)
}

impl<P: Platform> Engine<'_, P> {
    /// Logical replication on at the source where the platform's method needs it (not
    /// for physical replication: no parameter change, no reboot), then the deployment
    /// made (green on `--engine-version` when given), or found when an earlier run made
    /// it.
    async fn create_deployment(&self) -> StepResult {
        let plan = self
            .platform
            .blue_green_plan(&self.spec.source, self.spec.engine_version)
            .await
            .map_err(platform_error("planning the blue/green deployment"))?;
        let restarted = if plan.method.needs_logical_wal() {
            self.ensure_logical_wal().await?.1
        } else {
            false
        };
        let name = &self.spec.name;
        self.journal
            .add_resource(name, DEPLOYMENT, INSTANCE, &format!("pgseal-{name}"))?;
        let (deployment, adopted) = self
            .platform
            .create_blue_green(
                name,
                &self.spec.source,
                &self.spec.key,
                self.spec.engine_version,
            )
            .await
            .map_err(platform_error("creating the blue/green deployment"))?;
        let summary = format!(
            "blue/green deployment {} ({}, {} replication) {} for {}{}",
            deployment.name,
            deployment.id,
            plan.method,
            if adopted {
                "found, made by an earlier run,"
            } else {
                "made"
            },
            deployment.source,
            if restarted {
                "; the source was restarted for logical replication"
            } else {
                ""
            }
        );
        Ok((
            json!({ "deployment": deployment, "adopted": adopted, "restarted": restarted, "plan": plan }),
            summary,
        ))
    }

    /// Waits for green, then checks every green resource is encrypted under the key:
    /// refused otherwise, with nothing switched.
    async fn green_ready(&self) -> StepResult {
        let name = &self.spec.name;
        let deployment = self
            .platform
            .wait_blue_green(name)
            .await
            .map_err(platform_error("waiting for green"))?;
        let green = self
            .platform
            .green_resources(name, &self.spec.key)
            .await
            .map_err(platform_error("describing green"))?;
        let problems: Vec<&str> = green.iter().filter_map(|g| g.problem.as_deref()).collect();
        if green.is_empty() || !problems.is_empty() {
            return Err(EngineError::Precondition(format!(
                "green is not encrypted under {}: {}; nothing was switched. `pgseal migrate abort {name}` deletes the deployment and green",
                self.spec.key,
                if problems.is_empty() {
                    "the deployment has no green resource".to_string()
                } else {
                    problems.join("; ")
                }
            )));
        }
        let summary = format!(
            "deployment {} is {} ({} replication); {} green resource(s) encrypted under {} ({})",
            deployment.id,
            deployment.status,
            deployment
                .method
                .map_or("unknown", pgseal_platform::ReplicationMethod::as_str),
            green.len(),
            self.spec.key,
            green
                .iter()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((json!({ "deployment": deployment, "green": green }), summary))
    }
}

/// The green instance (or cluster) of blue/green migration `name`, as its `green_ready`
/// step recorded it: what validation compares the source with.
pub fn green_instance(journal: &Journal, name: &str) -> Result<String, EngineError> {
    let outputs = journal.outputs(name, Step::GreenReady)?.ok_or_else(|| {
        EngineError::Precondition(format!(
            "migration {name} has no green ready yet: `pgseal migrate resume {name}` waits for it"
        ))
    })?;
    let target = outputs["deployment"]["target"].as_str().ok_or_else(|| {
        EngineError::Precondition(format!(
            "the journal's green_ready of {name} names no green resource"
        ))
    })?;
    Ok(arn_tail(target).to_string())
}

/// How blue/green migration `name`'s deployment replicates: as its `green_ready` step read
/// it from the deployment, else as `create_deployment` planned it; logical when neither
/// says (the stricter: no position is trusted without the platform's slots, and DDL is
/// compared).
pub fn method(journal: &Journal, name: &str) -> Result<ReplicationMethod, EngineError> {
    let read = |step: Step, pointer: &str| -> Result<Option<ReplicationMethod>, EngineError> {
        Ok(journal
            .outputs(name, step)?
            .and_then(|o| serde_json::from_value(o.pointer(pointer)?.clone()).ok()))
    };
    Ok(read(Step::GreenReady, "/deployment/method")?
        .or(read(Step::CreateDeployment, "/plan/method")?)
        .unwrap_or(ReplicationMethod::Logical))
}

/// The identifier at the end of an ARN (`arn:aws:rds:...:db:prod` → `prod`).
fn arn_tail(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// `cutover` of a blue/green migration: refused unless the last validation of green
/// against blue was clean and every green resource is still under the key; then the
/// platform's switchover (it blocks writes on blue, lets green catch up and moves the
/// names), timed as pgseal sees it. Journaled: the phase is `cutting_over` from the
/// request on, so a run killed meanwhile is settled by [`recover`].
async fn switchover<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    options: &CutoverOptions,
) -> Result<CutoverReport, EngineError> {
    let record = journal.migration(name)?;
    let spec = record.spec;
    let mut report = CutoverReport {
        dry_run: options.dry_run,
        switch: format!("the platform's blue/green switchover of pgseal-{name}"),
        ..Default::default()
    };
    let mut failed = Vec::new();
    if record.phase != Phase::Replicating {
        failed.push(format!(
            "migration {name} is {}; cutover follows replicating",
            record.phase.as_str()
        ));
    }
    // The last validation is the one that counts: a later one that did not finish (green
    // stopped following, say) leaves no earlier clean one standing.
    let unfinished = journal
        .step_runs(name)?
        .into_iter()
        .rev()
        .find(|r| r.step == Step::Validate)
        .filter(|r| r.outcome != Outcome::Done);
    match journal.outputs(name, Step::Validate)? {
        _ if unfinished.is_some() => failed.push(format!(
            "the last validation of green did not finish ({}): `pgseal migrate validate {name}` again once green follows blue",
            unfinished
                .as_ref()
                .and_then(|r| r.error.as_deref())
                .unwrap_or("interrupted")
        )),
        None => failed.push(format!(
            "green was never compared with blue: run `pgseal migrate validate {name}` first"
        )),
        Some(last) if !crate::validate::lets_cutover(&last) => failed.push(format!(
            "the last validation found {} mismatched row(s) or a table it could not compare; `pgseal migrate validate {name}` again once fixed",
            last["mismatched_rows"]
        )),
        Some(_) => {}
    }
    match platform.green_resources(name, &spec.key).await {
        Ok(green) => failed.extend(green.into_iter().filter_map(|g| g.problem)),
        Err(e) => failed.push(format!("green cannot be described: {e}")),
    }
    // Physical replication replays blue's DDL; only logical replication leaves it out.
    let method = method(journal, name)?;
    if record.phase == Phase::Replicating && !method.carries_ddl() {
        match schema_drift(platform, journal, name).await {
            Ok(found) => failed.extend(found),
            Err(e) => failed.push(format!(
                "blue's schema cannot be compared with green's: {}",
                crate::error::error_chain(&e)
            )),
        }
    }
    report.failed_checks = failed;
    if options.dry_run {
        return Ok(report);
    }
    refuse_failed(&report)?;
    journal.set_phase(name, Phase::CuttingOver, None)?;
    let run = journal.step_started(name, Step::Cutover)?;
    let started = Instant::now();
    crate::steps::failpoint_at("cutover:switchover_requested");
    let switched = platform.switchover_blue_green(name, options.timeout).await;
    let deployment = match switched {
        Ok(d) => d,
        Err(source) => {
            let error = platform_error("switching the blue/green deployment over")(source);
            journal.step_failed(run, &crate::error::error_chain(&error))?;
            // Settled by what the platform says now: back to replicating when nothing
            // moved, otherwise left cutting over for `resume`.
            recover(platform, journal, name).await.ok();
            return Err(error);
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    crate::steps::failpoint_at("cutover:switched_over");
    report.phases = vec![PauseTiming {
        phase: "switchover".into(),
        ms,
    }];
    journal.step_done(
        run,
        &json!({ "deployment": deployment, "switchover_ms": ms, "old_blue": deployment.source }),
    )?;
    journal.set_phase(name, Phase::CutOver, None)?;
    Ok(report)
}

/// The platform's blue/green replication carries rows, not DDL: a schema change made on
/// blue after green was created is missing on green, and a switchover would lose it (and
/// the rows that need it). One finding per database of the scope whose tables differ
/// between blue and green, with what differs and the choices.
async fn schema_drift<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Vec<String>, EngineError> {
    let spec = journal.migration(name)?.spec;
    let green = green_instance(journal, name)?;
    let mut found = Vec::new();
    for s in &scope(platform, &spec, name).await? {
        let blue = connect_source_db(platform, &spec, &s.database).await?;
        let target = crate::sessions::connect_to(platform, &green, &s.database, "target").await?;
        let tables = crate::validate::user_tables(&blue).await?;
        let on_blue = pgseal_pg::schema::definitions(&blue, &tables)
            .await
            .map_err(sql("source", "reading the schema"))?;
        let on_green = pgseal_pg::schema::definitions(&target, &tables)
            .await
            .map_err(sql("target", "reading the schema"))?;
        let drift = pgseal_pg::schema::drift(&on_blue, &on_green, "");
        if drift.is_empty() {
            continue;
        }
        let shown: Vec<String> = drift
            .iter()
            .take(5)
            .map(|d| format!("{} ({}): {}", d.table, d.detail, d.statement))
            .collect();
        found.push(format!(
            "{}: DDL ran on blue since green was made, and blue/green does not carry DDL; {} difference(s): {}{}. Run the same DDL on green (read-only by default: in a session after `SET default_transaction_read_only = off`), then `pgseal migrate validate {name}`; or `pgseal migrate abort {name}` and start again",
            s.database,
            drift.len(),
            shown.join("; "),
            if drift.len() > shown.len() { "; ..." } else { "" }
        ));
    }
    Ok(found)
}

/// Settles a blue/green cutover a killed run left `cutting_over`, by the deployment's
/// status: switched over → cut over; still available (the switchover never started, or
/// the platform rolled it back) → replicating; still switching → an error saying to run
/// `resume` again.
async fn recover<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let deployment = platform
        .describe_blue_green(name)
        .await
        .map_err(platform_error("describing the blue/green deployment"))?
        .ok_or_else(|| {
            EngineError::Precondition(format!(
                "the blue/green deployment pgseal-{name} is gone: check the instances by hand"
            ))
        })?;
    match deployment.status.as_str() {
        "SWITCHOVER_COMPLETED" => {
            if journal.outputs(name, Step::Cutover)?.is_none() {
                let run = journal.step_started(name, Step::Cutover)?;
                journal.step_done(
                    run,
                    &json!({ "deployment": deployment, "old_blue": deployment.source, "recovered": true }),
                )?;
            }
            journal.set_phase(name, Phase::CutOver, None)?;
            Ok(Recovered::CutOver)
        }
        "AVAILABLE" => {
            journal.set_phase(name, Phase::Replicating, None)?;
            Ok(Recovered::BackToReplicating)
        }
        other => Err(EngineError::Precondition(format!(
            "the blue/green deployment pgseal-{name} is {other}: run `pgseal migrate resume {name}` again once the platform is done"
        ))),
    }
}

/// `cleanup` of a blue/green migration after its switchover: the deployment deleted (the
/// platform keeps both environments' instances); the old blue is for the caller to stop
/// or delete (see [`old_blue`]).
async fn cleanup<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<CleanupReport, EngineError> {
    let mut report = CleanupReport::default();
    let deleted = platform
        .delete_blue_green(name, false)
        .await
        .map_err(platform_error("deleting the blue/green deployment"))?;
    if deleted {
        report
            .removed
            .push(format!("blue/green deployment pgseal-{name}"));
    }
    journal.remove_resource(name, DEPLOYMENT, INSTANCE, &format!("pgseal-{name}"))?;
    journal.set_phase(name, Phase::CleanedUp, None)?;
    Ok(report)
}

/// The old blue of a blue/green migration that was switched over (the platform renamed
/// it, e.g. `prod-old1`), as its cutover recorded it.
fn old_blue(journal: &Journal, name: &str) -> Result<Option<String>, EngineError> {
    Ok(journal
        .outputs(name, Step::Cutover)?
        .and_then(|o| o["old_blue"].as_str().map(|arn| arn_tail(arn).to_string())))
}
