//! The steps of a migration under each [`StrategyKind`], in order, and the failpoints
//! between them.

use serde::{Deserialize, Serialize};

/// How the target gets its data: the strategy the user chose (`--strategy`), as journaled
/// with the migration. What each one does in each phase is its
/// [`Strategy`](crate::strategy::Strategy) implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// A physical snapshot restored into the target, replication from its handoff LSN.
    #[default]
    Snapshot,
    /// An empty target of any newer major version: roles and schema copied, every table
    /// copied by pgseal's parallel `COPY` under its slot's exported snapshot, then native
    /// logical replication streams on from that slot.
    FullLoad,
    /// The platform's own blue/green deployment (RDS, Aurora) with every green resource
    /// encrypted under the key: the platform replicates, pgseal checks before and after.
    BlueGreen,
}

impl StrategyKind {
    /// The steps `start` runs under this strategy, in order.
    pub fn steps(self) -> &'static [Step] {
        match self {
            StrategyKind::Snapshot => &Step::ALL,
            StrategyKind::FullLoad => &Step::FULL_LOAD,
            StrategyKind::BlueGreen => &Step::BLUE_GREEN,
        }
    }

    /// The strategy's name, as `--strategy` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Snapshot => "snapshot",
            StrategyKind::FullLoad => "full-load",
            StrategyKind::BlueGreen => "blue-green",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a migration. Each is idempotent: run again after a crash, it finds what an
/// earlier run made and finishes the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The read-only checks of `migrate plan`; any blocker stops here.
    Preflight,
    /// Logical replication on, replica identity (if opted in), publication, logical slot.
    PrepareSource,
    /// An encrypted snapshot of the source, taken after the slot exists.
    Snapshot,
    /// The snapshot restored into a new encrypted instance; its handoff LSN recorded.
    Restore,
    /// The publication and slots the copy brought along dropped on the target.
    TargetHousekeeping,
    /// A disabled subscription on the target to the source's slot, copying no data.
    Subscription,
    /// Handoff LSN above `redo done at`, slot's `confirmed_flush_lsn` not past it.
    Guards,
    /// The subscription's origin advanced to the handoff LSN.
    OriginAdvance,
    /// The subscription enabled.
    Enable,
    /// The apply worker runs and the slot is in use: the target is replicating.
    Replicating,
    /// Full load: a new, empty, encrypted instance of the chosen major version.
    CreateTarget,
    /// Full load: roles, databases and each database's schema before the data (tables,
    /// sequences, types, functions) with the keys the apply needs (primary keys, unique
    /// constraints).
    Schema,
    /// Full load: every table copied under its database's slot snapshot by parallel
    /// `COPY` streams from source to target, each table's keys built once it is in.
    InitialCopy,
    /// Full load: the rest of the schema once the data is in (indexes, foreign keys,
    /// triggers, rules, policies).
    PostData,
    /// Blue/green: logical replication on at the source, then the platform's deployment
    /// made with every green resource under the key (or the one an earlier run made found).
    CreateDeployment,
    /// Blue/green: green made and replicating, and every green resource encrypted under
    /// the key; otherwise nothing is switched.
    GreenReady,
    /// Writes fenced on the source, drained, sequences set, applications switched to the
    /// target (`migrate cutover`; not one of the ten steps of `start`).
    Cutover,
    /// Back to the source by reverse replication (`migrate rollback`).
    Rollback,
    /// Source and target compared table by table (`migrate validate`).
    Validate,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Step; 10] = [
        Step::Preflight,
        Step::PrepareSource,
        Step::Snapshot,
        Step::Restore,
        Step::TargetHousekeeping,
        Step::Subscription,
        Step::Guards,
        Step::OriginAdvance,
        Step::Enable,
        Step::Replicating,
    ];

    /// Every step of the full-load strategy, in the order they run.
    pub const FULL_LOAD: [Step; 9] = [
        Step::Preflight,
        Step::PrepareSource,
        Step::CreateTarget,
        Step::Schema,
        Step::Subscription,
        Step::InitialCopy,
        Step::Enable,
        Step::PostData,
        Step::Replicating,
    ];

    /// Every step of the blue/green strategy, in the order they run.
    pub const BLUE_GREEN: [Step; 3] = [Step::Preflight, Step::CreateDeployment, Step::GreenReady];

    /// The step's name, as journaled and as failpoints name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::PrepareSource => "prepare_source",
            Step::Snapshot => "snapshot",
            Step::Restore => "restore",
            Step::TargetHousekeeping => "target_housekeeping",
            Step::Subscription => "subscription",
            Step::Guards => "guards",
            Step::OriginAdvance => "origin_advance",
            Step::Enable => "enable",
            Step::Replicating => "replicating",
            Step::Cutover => "cutover",
            Step::Rollback => "rollback",
            Step::Validate => "validate",
            Step::CreateTarget => "create_target",
            Step::Schema => "schema",
            Step::InitialCopy => "initial_copy",
            Step::PostData => "post_data",
            Step::CreateDeployment => "create_deployment",
            Step::GreenReady => "green_ready",
        }
    }

    /// The step of that name.
    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL
            .into_iter()
            .chain(Step::FULL_LOAD)
            .chain(Step::BLUE_GREEN)
            .chain([Step::Cutover, Step::Rollback, Step::Validate])
            .find(|s| s.as_str() == text)
    }

    /// Its position among `strategy`'s steps, counting from 1 (one past the last for
    /// the commands after `start`).
    pub fn number(self, strategy: StrategyKind) -> usize {
        let steps = strategy.steps();
        steps.iter().position(|s| *s == self).unwrap_or(steps.len()) + 1
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment variable naming a failpoint: `before:STEP` ends the process when the
/// step has been journaled as started and nothing else done; `after:STEP` ends it when
/// the step's work is done but not yet journaled as done (the hardest case for resume).
///
/// Failpoints and test hooks exist only in builds with the `failpoints` feature (the test
/// suite's: `scripts/test` enables `pgseal-cli/failpoints`); in any other build the
/// variables are ignored.
pub const FAILPOINT_VAR: &str = "PGSEAL_FAILPOINT";

/// Whether this build has failpoints and test hooks (the `failpoints` feature).
pub const FAILPOINTS: bool = cfg!(feature = "failpoints");

/// Ends the process abruptly (as a kill would) when `PGSEAL_FAILPOINT` names this point.
/// Used by the crash tests; unset, it costs one environment lookup; without the
/// `failpoints` feature, nothing.
pub fn failpoint(when: &str, step: Step) {
    if FAILPOINTS {
        failpoint_at(&format!("{when}:{}", step.as_str()));
    }
}

/// Ends the process abruptly when `PGSEAL_FAILPOINT` names `point` (points inside a step,
/// such as `cutover:fenced`, `cutover:drained`, `cutover:switched`).
pub fn failpoint_at(point: &str) {
    if FAILPOINTS && std::env::var(FAILPOINT_VAR).is_ok_and(|wanted| wanted == point) {
        eprintln!("pgseal: failpoint {point} reached: aborting the process");
        std::process::abort();
    }
}

/// The environment variable naming a point where the process waits for the test (see
/// [`wait_point`]).
pub const WAITPOINT_VAR: &str = "PGSEAL_WAITPOINT";

/// The file [`wait_point`] creates on arrival and waits to see removed.
pub const WAITPOINT_FILE_VAR: &str = "PGSEAL_WAITPOINT_FILE";

/// When `PGSEAL_WAITPOINT` names `point` (points as for [`failpoint_at`]): creates the
/// file `PGSEAL_WAITPOINT_FILE` names and waits, up to two minutes, until the test removes
/// it, so that the test can fail something outside (stop a server hard) at exactly this
/// point; then the process goes on. Only the first arrival waits. Without the
/// `failpoints` feature, nothing.
pub async fn wait_point(point: &str) {
    // Once a process: a point inside a loop waits the first time it is reached.
    static WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !FAILPOINTS || std::env::var(WAITPOINT_VAR).map_or(true, |wanted| wanted != point) {
        return;
    }
    if WAITED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Some(file) = std::env::var_os(WAITPOINT_FILE_VAR).map(std::path::PathBuf::from) else {
        return;
    };
    if std::fs::write(&file, point).is_err() {
        return;
    }
    eprintln!(
        "pgseal: wait point {point} reached: waiting for {} to go",
        file.display()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The environment variable of test hooks that make the engine misbehave on purpose, to
/// prove its guards: `late-slot` creates the slot after the snapshot instead of before;
/// `fail-after-fence` fails a cutover once its fence is up, and `undo-fails` fails that
/// cutover's undo before it lifts the fence; `fail-parallel-pre-data` fails the full
/// load's pre-data built by several sessions, after its first round.
pub const TEST_HOOK_VAR: &str = "PGSEAL_TEST_HOOK";

/// True when the test hook `name` is set (and the build has the `failpoints` feature).
pub fn test_hook(name: &str) -> bool {
    FAILPOINTS && std::env::var(TEST_HOOK_VAR).is_ok_and(|v| v.split(',').any(|h| h == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a build without the feature runs this (`scripts/test` runs it so): there the
    /// variable is ignored, even when set to a point that is reached.
    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn without_the_feature_a_failpoint_does_nothing() {
        const { assert!(!FAILPOINTS) };
        // SAFETY: this test binary's other tests neither read nor write the environment.
        unsafe { std::env::set_var(FAILPOINT_VAR, "after:preflight") };
        unsafe { std::env::set_var(TEST_HOOK_VAR, "late-slot") };
        failpoint("after", Step::Preflight);
        failpoint_at("after:preflight");
        assert!(!test_hook("late-slot"));
    }

    #[test]
    fn names_round_trip_and_number_in_order() {
        for strategy in [
            StrategyKind::Snapshot,
            StrategyKind::FullLoad,
            StrategyKind::BlueGreen,
        ] {
            for (i, step) in strategy.steps().iter().enumerate() {
                assert_eq!(Step::parse(step.as_str()), Some(*step));
                assert_eq!(step.number(strategy), i + 1);
            }
        }
        assert_eq!(Step::Subscription.number(StrategyKind::FullLoad), 5);
        assert_eq!(Step::GreenReady.number(StrategyKind::BlueGreen), 3);
        assert_eq!(Step::parse("nope"), None);
    }
}
