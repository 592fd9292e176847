//! A migration's commands, each through its strategy: what `migrate start`, `cutover`,
//! `rollback`, `resume`, `cleanup`, `validate`, `verify` and `follow` run. Each reads the
//! migration from the journal and calls its [`Strategy`]; nothing here (or below) asks
//! which strategy a migration runs.
//!
//! The layers, top to bottom: this module; [`crate::strategy`] (one module per strategy);
//! the mechanisms the strategies are made of ([`crate::engine`]'s shared steps,
//! [`crate::cutover`], [`crate::validate`], [`crate::verify`], [`crate::carry`],
//! [`crate::follow`], [`crate::status`]); the primitives ([`crate::sessions`],
//! [`crate::fence`], [`crate::journal`], [`crate::stream`], [`crate::error`]). No module
//! imports one above it (`tests/layout.rs`).

use std::time::{Duration, Instant};

use pgseal_platform::Platform;

use crate::cutover::{
    CleanupReport, CutoverOptions, CutoverReport, Recovered, RollbackReport, Switch,
};
use crate::engine::{Engine, Event};
use crate::error::{EngineError, error_chain};
use crate::handle::Handle;
use crate::journal::{Journal, Phase};
use crate::steps::failpoint;
use crate::strategy::Strategy;
use crate::validate::{Progress, ValidationReport};
use crate::verify::VerifyReport;

impl<P: Platform> Engine<'_, P> {
    /// Whether every step of the migration's strategy is journaled as done.
    fn every_step_done(&self) -> Result<bool, EngineError> {
        for &step in self.spec.strategy.steps() {
            if self.journal.outputs(&self.spec.name, step)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs every step not yet done, in order, and returns once the target replicates.
    /// A failure is journaled (phase `failed`, the step's error) and returned; running
    /// again retries from the failed step.
    pub async fn run(&self) -> Result<(), EngineError> {
        let name = &self.spec.name;
        let record = self.journal.migration(name)?;
        match record.phase {
            Phase::Aborting | Phase::Aborted => {
                return Err(EngineError::Precondition(format!(
                    "migration {name} was aborted; start a new one (with another --name, or after `pgseal migrate abort {name}` has finished)"
                )));
            }
            Phase::Replicating | Phase::CutOver | Phase::CleanedUp | Phase::RolledBack => {
                return Ok(());
            }
            Phase::CuttingOver => {
                return Err(EngineError::Precondition(format!(
                    "migration {name} was interrupted during cutover; `pgseal migrate resume {name}` lifts the fence first"
                )));
            }
            Phase::Failed if self.every_step_done()? => {
                // Every step is done: what failed it came after (a slot lost while the
                // target followed, as `status` found). Nothing to run again can mend that.
                return Err(EngineError::Precondition(format!(
                    "migration {name} failed after it replicated, and running its steps again cannot mend it: {}",
                    record
                        .error
                        .as_deref()
                        .unwrap_or("see `pgseal migrate status`")
                )));
            }
            Phase::Running | Phase::Failed => {}
        }
        self.journal.set_phase(name, Phase::Running, None)?;
        for &step in self.spec.strategy.steps() {
            if self.journal.outputs(name, step)?.is_some() {
                (self.observer)(&Event::AlreadyDone(step));
                continue;
            }
            let run = self.journal.step_started(name, step)?;
            (self.observer)(&Event::Started(step));
            failpoint("before", step);
            let started = Instant::now();
            tracing::info!(migration = %name, %step, "step started");
            match self.spec.strategy.run_step(self, step).await {
                Ok((outputs, summary)) => {
                    failpoint("after", step);
                    crate::steps::wait_point(&format!("after:{}", step.as_str())).await;
                    self.journal.step_done(run, &outputs)?;
                    let elapsed = started.elapsed();
                    tracing::info!(migration = %name, %step, seconds = elapsed.as_secs_f64(), "step done");
                    (self.observer)(&Event::Done {
                        step,
                        elapsed,
                        summary,
                    });
                }
                Err(error) => {
                    let text = error_chain(&error);
                    tracing::info!(migration = %name, %step, error = %text, "step failed");
                    self.journal.step_failed(run, &text)?;
                    self.journal.set_phase(
                        name,
                        Phase::Failed,
                        Some(&format!("step {step}: {text}")),
                    )?;
                    if matches!(error, EngineError::SlotWait(_)) {
                        // Nothing may be left behind: what this start made goes, and so
                        // does the journal's record (start again once the wait is over).
                        crate::abort::abort(self.platform, self.journal, name).await?;
                        self.journal.forget(name)?;
                    }
                    return Err(error);
                }
            }
        }
        self.journal.set_phase(name, Phase::Replicating, None)?;
        Ok(())
    }
}

/// Cuts migration `name` over: pgseal's fence, drain and switch through `switch`, or the
/// platform's switchover, as its strategy does it.
pub async fn cutover<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    options: &CutoverOptions,
) -> Result<CutoverReport, EngineError> {
    let strategy = journal.migration(name)?.spec.strategy;
    let m = Handle::new(platform, journal, name);
    strategy.cut_over(&m, switch, options).await
}

/// Rolls migration `name` back to its source through `switch` after a cutover, where its
/// strategy has a way back; `timeout` bounds the pause.
pub async fn rollback<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    timeout: Duration,
) -> Result<RollbackReport, EngineError> {
    let record = journal.migration(name)?;
    if record.phase != Phase::CutOver {
        return Err(EngineError::Precondition(format!(
            "migration {name} is {}; rollback follows a cutover",
            record.phase.as_str()
        )));
    }
    let m = Handle::new(platform, journal, name);
    record.spec.strategy.roll_back(&m, switch, timeout).await
}

/// Settles a cutover of migration `name` that a killed run left `cutting_over`.
pub async fn recover_interrupted<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let strategy = journal.migration(name)?.spec.strategy;
    strategy
        .recover_cutover(&Handle::new(platform, journal, name))
        .await
}

/// Removes what migration `name` left once it is cut over (or rolled back).
pub async fn cleanup<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<CleanupReport, EngineError> {
    let record = journal.migration(name)?;
    match record.phase {
        Phase::CleanedUp => Ok(CleanupReport::default()),
        Phase::CutOver | Phase::RolledBack => {
            let m = Handle::new(platform, journal, name);
            record.spec.strategy.clean_up(&m).await
        }
        phase => Err(EngineError::Precondition(format!(
            "migration {name} is {}; cleanup follows a cutover (before one, `pgseal migrate abort {name}` removes everything)",
            phase.as_str()
        ))),
    }
}

/// The instance the applications of migration `name` left at its switch when its
/// strategy's switch renamed it (blue/green's old blue), for cleanup to retire.
pub fn old_source(journal: &Journal, name: &str) -> Result<Option<String>, EngineError> {
    let strategy = journal.migration(name)?.spec.strategy;
    strategy.old_source(journal, name)
}

/// Validates migration `name` against what its strategy compares; see
/// [`crate::validate::validate`].
pub async fn validate<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    tables: Option<&[String]>,
    copy_wait: Duration,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ValidationReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    let m = Handle::new(platform, journal, name);
    let compared = spec.strategy.compared_with(&m, &spec).await?;
    crate::validate::validate(
        platform, journal, name, &compared, tables, copy_wait, progress,
    )
    .await
}

/// Verifies migration `name` against what its strategy compares; see
/// [`crate::verify::verify`].
pub async fn verify<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<VerifyReport, EngineError> {
    // Checked before what is compared is looked up (blue/green reads green and lists
    // blue's databases).
    let record = journal.migration(name)?;
    if record.phase != Phase::Replicating {
        return Err(EngineError::Precondition(format!(
            "migration {name} is {}: verify compares a target that follows its source. \
             The cutover verified both sides before its pause and, where DDL ran since, inside it \
             with the source fenced; `pgseal migrate report {name}` shows what it found",
            record.phase.as_str()
        )));
    }
    let spec = record.spec;
    let m = Handle::new(platform, journal, name);
    let compared = spec.strategy.compared_with(&m, &spec).await?;
    crate::verify::verify(platform, journal, name, &compared, progress).await
}

/// One pass of migration `name`'s follower (see [`crate::follow::pass`]), or nothing but
/// why, where its strategy leaves the following to the platform.
pub async fn follow_pass<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    state: &mut crate::follow::FollowState,
) -> Result<crate::follow::Pass, EngineError> {
    let strategy = journal.migration(name)?.spec.strategy;
    if let Some(why) = strategy.follower_idle() {
        return Ok(crate::follow::Pass {
            at_ms: crate::journal::now_ms(),
            idle: Some(why.to_string()),
            ..Default::default()
        });
    }
    crate::follow::pass(platform, journal, name, state).await
}
