//! What `fleet run` does next with each migration of the inventory, from where each
//! stands in the journal, who holds its lease and what the file allows.
//!
//! The file allows starting and validating every source; cutting over only the sources of
//! a wave marked `cutover = "auto"`, inside its window. Waves go in order: a wave starts
//! once every source of the waves before it replicates (or is past it), and cuts over
//! once every source of the waves before it that cuts over on its own has.

use pgseal_core::Phase;
use serde::Serialize;

use crate::inventory::{Inventory, Source};
use crate::status::Row;

/// What to do next with one migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "next", content = "why")]
pub enum Next {
    /// `migrate start`: it is not in the journal.
    Start,
    /// `migrate resume`: it was interrupted, failed, or its cutover was interrupted.
    Resume,
    /// `migrate validate`: it replicates and has no clean validation.
    Validate,
    /// `migrate cutover`: its wave cuts over on its own, now.
    Cutover,
    /// Nothing now; later, perhaps (the text says what it waits for).
    Wait(String),
    /// Nothing more: it is where the file lets a runner take it.
    Done(String),
}

impl Next {
    /// The `migrate` subcommand that does it, if any.
    pub fn verb(&self) -> Option<&'static str> {
        match self {
            Next::Start => Some("start"),
            Next::Resume => Some("resume"),
            Next::Validate => Some("validate"),
            Next::Cutover => Some("cutover"),
            Next::Wait(_) | Next::Done(_) => None,
        }
    }
}

/// True once a migration replicates or is past it.
fn replicates(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Replicating | Phase::CutOver | Phase::CleanedUp | Phase::RolledBack)
    )
}

/// True once a migration's cutover is behind it (or will never come).
fn switched(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::CutOver | Phase::CleanedUp | Phase::RolledBack | Phase::Aborted)
    )
}

/// The next step of each source, in the file's order. `rows` are [`crate::status::rows`]
/// of the same inventory; `leased` names, by migration, the other runner that drives it
/// now; `now_ms` places the waves' windows.
pub fn next(
    inventory: &Inventory,
    rows: &[Row],
    leased: &std::collections::BTreeMap<String, String>,
    now_ms: i64,
) -> Vec<(String, Next)> {
    let phase_of = |s: &Source| rows.iter().find(|r| r.name == s.name).and_then(|r| r.phase);
    let earlier = |wave: u32| inventory.sources.iter().filter(move |s| s.wave < wave);
    inventory
        .sources
        .iter()
        .map(|s| {
            let row = rows.iter().find(|r| r.name == s.name);
            let phase = row.and_then(|r| r.phase);
            let policy = inventory.policy(s.wave);
            let next = if let Some(runner) = leased.get(&s.name) {
                Next::Wait(format!("runner {runner} drives it"))
            } else if let Some(behind) = earlier(s.wave).find(|e| !replicates(phase_of(e))) {
                Next::Wait(format!(
                    "wave {} starts once wave {} replicates ({} does not yet)",
                    s.wave, behind.wave, behind.name
                ))
            } else {
                match phase {
                    None => Next::Start,
                    Some(Phase::Running | Phase::Failed | Phase::CuttingOver) => Next::Resume,
                    Some(Phase::Replicating) if !row.is_some_and(Row::validated_clean) => {
                        Next::Validate
                    }
                    Some(Phase::Replicating) if !policy.auto_cutover => {
                        Next::Done("replicating and validated; its wave is cut over by hand".into())
                    }
                    Some(Phase::Replicating) => {
                        let waiting = earlier(s.wave).find(|e| {
                            inventory.policy(e.wave).auto_cutover && !switched(phase_of(e))
                        });
                        match (waiting, policy.window) {
                            (Some(e), _) => Next::Wait(format!(
                                "wave {} cuts over once wave {} has ({} has not yet)",
                                s.wave, e.wave, e.name
                            )),
                            (None, Some(w)) if !w.contains(now_ms) => {
                                Next::Wait(format!("its wave cuts over inside {w}"))
                            }
                            (None, _) => Next::Cutover,
                        }
                    }
                    Some(p @ (Phase::CutOver | Phase::CleanedUp | Phase::RolledBack)) => {
                        Next::Done(p.as_str().into())
                    }
                    Some(p @ (Phase::Aborted | Phase::Aborting)) => Next::Done(format!(
                        "{}: a runner never starts it again (give the source another name)",
                        p.as_str()
                    )),
                }
            };
            (s.name.clone(), next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inventory(text: &str) -> Inventory {
        Inventory::parse(std::path::Path::new("fleet.toml"), text).unwrap()
    }

    fn row(name: &str, wave: u32, phase: Option<Phase>, clean: Option<bool>) -> Row {
        Row {
            name: name.into(),
            source: name.into(),
            wave,
            phase,
            error: None,
            sampled_ms: None,
            lag_bytes: None,
            retained_bytes: None,
            validation: clean.map(|clean| crate::status::Validation {
                finished_ms: Some(1),
                clean,
                mismatched_rows: 0,
            }),
            cutover_pause_ms: None,
            rollback_pause_ms: None,
            source_bytes: None,
            runner: None,
        }
    }

    const FILE: &str = "
[[source]]
name = \"a\"
source = \"a\"
[[source]]
name = \"b\"
source = \"b\"
wave = 2
[[source]]
name = \"c\"
source = \"c\"
wave = 2
[[wave]]
number = 2
cutover = \"auto\"
window = \"01:00-02:00\"
";

    fn verbs(next: &[(String, Next)]) -> Vec<String> {
        next.iter()
            .map(|(n, x)| match x {
                Next::Wait(w) => format!("{n}:wait {w}"),
                Next::Done(d) => format!("{n}:done {d}"),
                other => format!("{n}:{}", other.verb().unwrap()),
            })
            .collect()
    }

    #[test]
    fn waves_go_in_order_and_only_an_auto_wave_cuts_over_inside_its_window() {
        let inv = inventory(FILE);
        let at = |h: i64| h * 3_600_000 + 30 * 60_000;
        let none = BTreeMap::new();
        // Nothing started: only wave 1 starts.
        let fresh = [
            row("a", 1, None, None),
            row("b", 2, None, None),
            row("c", 2, None, None),
        ];
        let n = verbs(&next(&inv, &fresh, &none, at(1)));
        assert_eq!(n[0], "a:start");
        assert!(
            n[1].starts_with("b:wait wave 2 starts once wave 1 replicates"),
            "{n:?}"
        );
        // Wave 1 replicates and is validated: it is done (a manual wave); wave 2 starts,
        // resumes, validates.
        let rows = [
            row("a", 1, Some(Phase::Replicating), Some(true)),
            row("b", 2, Some(Phase::Failed), None),
            row("c", 2, Some(Phase::Replicating), None),
        ];
        let n = verbs(&next(&inv, &rows, &none, at(1)));
        assert!(
            n[0].starts_with("a:done replicating and validated"),
            "{n:?}"
        );
        assert_eq!(n[1..], ["b:resume", "c:validate"]);
        // Validated: cut over inside the window only; an unclean validation validates again.
        let rows = [
            row("a", 1, Some(Phase::Replicating), Some(true)),
            row("b", 2, Some(Phase::Replicating), Some(true)),
            row("c", 2, Some(Phase::Replicating), Some(false)),
        ];
        assert_eq!(
            verbs(&next(&inv, &rows, &none, at(1)))[1..],
            ["b:cutover", "c:validate"]
        );
        let outside = verbs(&next(&inv, &rows, &none, at(5)));
        assert_eq!(
            outside[1],
            "b:wait its wave cuts over inside 01:00-02:00 UTC"
        );
        // Another runner's lease: this one waits; a cutover interrupted: resumed.
        let leased = BTreeMap::from([("b".to_string(), "r2".to_string())]);
        let rows = [
            row("a", 1, Some(Phase::CutOver), Some(true)),
            row("b", 2, Some(Phase::Running), None),
            row("c", 2, Some(Phase::CuttingOver), Some(true)),
        ];
        let n = verbs(&next(&inv, &rows, &leased, at(1)));
        assert_eq!(
            n,
            ["a:done cut_over", "b:wait runner r2 drives it", "c:resume"]
        );
    }
}
