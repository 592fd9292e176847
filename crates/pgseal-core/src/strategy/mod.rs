//! The strategies: how a migration gets its target and moves applications onto it. Each
//! implements [`Strategy`] in a module of its own, and says there what it does in every
//! phase: its `start` steps, what validation compares, how the switch happens, whether
//! there is a way back and what cleanup removes. The phases ([`crate::migration`]) call a
//! migration's strategy through the trait and never ask which one it is.
//!
//! - [`snapshot`]: an encrypted physical snapshot restored, logical replication from its
//!   handoff LSN; pgseal's own fence, drain and switch.
//! - [`full_load`]: an empty target of any newer major version loaded by parallel `COPY`
//!   under its slot's exported snapshot;
//!   pgseal's own fence, drain and switch.
//! - [`blue_green`]: the platform's blue/green deployment under the key; the platform
//!   replicates and switches over, pgseal checks before and after.
//!
//! Adding a strategy: a variant of [`StrategyKind`] (its name and its steps in
//! [`crate::steps`]), a module here implementing [`Strategy`], and one line per method in
//! the dispatch below (`docs/design.md`, "Adding a strategy").

use std::future::Future;

use pgseal_platform::Platform;

use crate::cutover::Switch;
use crate::cutover::{CleanupReport, CutoverOptions, CutoverReport, Recovered, RollbackReport};
use crate::engine::{Engine, StepResult};
use crate::error::EngineError;
use crate::handle::Handle;
use crate::journal::{Journal, MigrationSpec};
use crate::sessions::streams_of;
use crate::steps::{Step, StrategyKind};
use crate::verify::{Compared, Replicator};

pub mod blue_green;
pub mod full_load;
pub mod snapshot;

/// What a strategy does in each phase of a migration. Every method gets the migration's
/// name; the journal holds its spec and what its steps recorded.
///
/// Only [`Strategy::run_step`] is required. The provided methods are pgseal's own
/// replication and switch, what the snapshot and full-load strategies do after `start`:
/// validation against the target over pgseal's streams, the fence-drain-switch cutover
/// ([`crate::cutover`]), rollback by reverse replication, cleanup. A strategy whose
/// platform replicates and switches (blue/green) provides its own.
pub trait Strategy {
    /// Runs `step`, one of this strategy's [`StrategyKind::steps`], and returns what to
    /// journal and one line on what it did. Steps it shares with other strategies are the
    /// engine's ([`Engine`]); the strategy says which it runs and how.
    fn run_step<P: Platform>(
        &self,
        engine: &Engine<'_, P>,
        step: Step,
    ) -> impl Future<Output = StepResult>;

    /// Whether pgseal captures DDL on the source and replays it on the target (so a
    /// validation that follows DDL re-checks the tables it touched).
    fn replays_ddl(&self) -> bool {
        true
    }

    /// Why pgseal's follower has nothing to do for this strategy (the platform replicates),
    /// if it has not.
    fn follower_idle(&self) -> Option<&'static str> {
        None
    }

    /// What validation and verification compare the source with: the instance, the
    /// databases and who replicates into it.
    fn compared_with<P: Platform>(
        &self,
        m: &Handle<'_, P>,
        spec: &MigrationSpec,
    ) -> impl Future<Output = Result<Compared, EngineError>> {
        async move {
            Ok(Compared {
                target: spec.target.clone(),
                scope: streams_of(m.journal, m.name)?,
                replicator: Replicator::Pgseal,
            })
        }
    }

    /// The cutover: applications moved to the target through `switch`, or by the
    /// platform's own switchover (which then moves the names itself; see
    /// [`Strategy::switch_moves_names`]).
    fn cut_over<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        switch: &S,
        options: &CutoverOptions,
    ) -> impl Future<Output = Result<CutoverReport, EngineError>> {
        crate::cutover::cutover(m, switch, options)
    }

    /// Whether the cutover moved the applications' names itself (a platform switchover),
    /// so the caller's switch has nothing left to do.
    fn switch_moves_names(&self) -> bool {
        false
    }

    /// Back to the source after a cutover through `switch`, or a refusal saying why this
    /// strategy has no way back.
    fn roll_back<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        switch: &S,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<RollbackReport, EngineError>> {
        crate::cutover::rollback(m, switch, timeout)
    }

    /// Settles a cutover a killed run left `cutting_over`: undone before its switch,
    /// finished after it.
    fn recover_cutover<P: Platform>(
        &self,
        m: &Handle<'_, P>,
    ) -> impl Future<Output = Result<Recovered, EngineError>> {
        crate::cutover::recover_interrupted(m)
    }

    /// What cleanup removes once the migration is cut over or rolled back.
    fn clean_up<P: Platform>(
        &self,
        m: &Handle<'_, P>,
    ) -> impl Future<Output = Result<CleanupReport, EngineError>> {
        crate::cutover::cleanup(m)
    }

    /// The instance the applications left at the switch, when it is not the spec's
    /// source (a platform that renamed it), for cleanup to retire.
    fn old_source(&self, journal: &Journal, name: &str) -> Result<Option<String>, EngineError> {
        let _ = (journal, name);
        Ok(None)
    }
}

/// The error for a step that is not one of `kind`'s.
fn not_its_step(kind: StrategyKind, step: Step) -> EngineError {
    EngineError::Precondition(format!(
        "{step} is not a step of the {kind} strategy's start (cutover, rollback and validate are commands of their own)"
    ))
}

/// Runs `$body` with `$s` bound to the strategy `$kind` names: the one place that maps
/// a journaled [`StrategyKind`] to its implementation.
macro_rules! each {
    ($kind:expr, $s:ident => $body:expr) => {
        match $kind {
            StrategyKind::Snapshot => {
                let $s = snapshot::Snapshot;
                $body
            }
            StrategyKind::FullLoad => {
                let $s = full_load::FullLoad;
                $body
            }
            StrategyKind::BlueGreen => {
                let $s = blue_green::BlueGreen;
                $body
            }
        }
    };
}

impl Strategy for StrategyKind {
    async fn run_step<P: Platform>(&self, engine: &Engine<'_, P>, step: Step) -> StepResult {
        each!(self, s => s.run_step(engine, step).await)
    }

    fn replays_ddl(&self) -> bool {
        each!(self, s => s.replays_ddl())
    }

    fn follower_idle(&self) -> Option<&'static str> {
        each!(self, s => s.follower_idle())
    }

    async fn compared_with<P: Platform>(
        &self,
        m: &Handle<'_, P>,
        spec: &MigrationSpec,
    ) -> Result<Compared, EngineError> {
        each!(self, s => s.compared_with(m, spec).await)
    }

    async fn cut_over<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        switch: &S,
        options: &CutoverOptions,
    ) -> Result<CutoverReport, EngineError> {
        each!(self, s => s.cut_over(m, switch, options).await)
    }

    fn switch_moves_names(&self) -> bool {
        each!(self, s => s.switch_moves_names())
    }

    async fn roll_back<P: Platform, S: Switch>(
        &self,
        m: &Handle<'_, P>,
        switch: &S,
        timeout: std::time::Duration,
    ) -> Result<RollbackReport, EngineError> {
        each!(self, s => s.roll_back(m, switch, timeout).await)
    }

    async fn recover_cutover<P: Platform>(
        &self,
        m: &Handle<'_, P>,
    ) -> Result<Recovered, EngineError> {
        each!(self, s => s.recover_cutover(m).await)
    }

    async fn clean_up<P: Platform>(&self, m: &Handle<'_, P>) -> Result<CleanupReport, EngineError> {
        each!(self, s => s.clean_up(m).await)
    }

    fn old_source(&self, journal: &Journal, name: &str) -> Result<Option<String>, EngineError> {
        each!(self, s => s.old_source(journal, name))
    }
}
