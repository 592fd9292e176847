//! The steps of a snapshot-strategy migration, in order, and the failpoints between them.

use serde::{Deserialize, Serialize};

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
        }
    }

    /// The step of that name.
    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL
            .into_iter()
            .chain([Step::Cutover, Step::Rollback, Step::Validate])
            .find(|s| s.as_str() == text)
    }

    /// Its position, counting from 1.
    pub fn number(self) -> usize {
        Step::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(Step::ALL.len())
            + 1
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
pub const FAILPOINT_VAR: &str = "PGSEAL_FAILPOINT";

/// Ends the process abruptly (as a kill would) when `PGSEAL_FAILPOINT` names this point.
/// Used by the crash tests; unset, it costs one environment lookup.
pub fn failpoint(when: &str, step: Step) {
    if let Ok(wanted) = std::env::var(FAILPOINT_VAR)
        && wanted == format!("{when}:{}", step.as_str())
    {
        eprintln!("pgseal: failpoint {wanted} reached: aborting the process");
        std::process::abort();
    }
}

/// Ends the process abruptly when `PGSEAL_FAILPOINT` names `point` (points inside a step,
/// such as `cutover:fenced`, `cutover:drained`, `cutover:switched`).
pub fn failpoint_at(point: &str) {
    if std::env::var(FAILPOINT_VAR).is_ok_and(|wanted| wanted == point) {
        eprintln!("pgseal: failpoint {point} reached: aborting the process");
        std::process::abort();
    }
}

/// The environment variable of test hooks that make the engine misbehave on purpose, to
/// prove its guards: `late-slot` creates the slot after the snapshot instead of before.
pub const TEST_HOOK_VAR: &str = "PGSEAL_TEST_HOOK";

/// True when the test hook `name` is set.
pub fn test_hook(name: &str) -> bool {
    std::env::var(TEST_HOOK_VAR).is_ok_and(|v| v.split(',').any(|h| h == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_number_in_order() {
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(Step::parse(step.as_str()), Some(step));
            assert_eq!(step.number(), i + 1);
        }
        assert_eq!(Step::parse("nope"), None);
    }
}
