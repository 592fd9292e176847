//! What a fleet command did with each of its migrations, as it prints it.

use crate::inventory::Source;
use crate::runner::Finished;

/// What a fleet command did with one migration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationOutcome {
    /// The migration.
    pub migration: String,
    /// Its wave.
    pub wave: u32,
    /// `started`, `resumed`, `ran`, `skipped`, `refused` or `failed`.
    pub action: &'static str,
    /// Why, or what came of it, in a line.
    pub detail: String,
    /// What the migrate command printed (JSON), when it ran.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
    /// Seconds it ran.
    pub seconds: f64,
}

impl MigrationOutcome {
    /// One that ran no command: `action` (`skipped`, `refused`) and why.
    pub fn without_run(s: &Source, action: &'static str, detail: String) -> MigrationOutcome {
        MigrationOutcome {
            migration: s.name.clone(),
            wave: s.wave,
            action,
            detail,
            output: serde_json::Value::Null,
            seconds: 0.0,
        }
    }

    /// One whose command ran and ended as `f`: `action` when it succeeded, with `done`
    /// as its line; `failed` (with why) or `skipped` otherwise.
    pub fn of_run(
        s: &Source,
        action: &'static str,
        f: &Finished,
        done: String,
    ) -> MigrationOutcome {
        let failed = !f.succeeded();
        MigrationOutcome {
            migration: s.name.clone(),
            wave: s.wave,
            action: if f.skipped {
                "skipped"
            } else if failed {
                "failed"
            } else {
                action
            },
            detail: if failed { f.why() } else { done },
            output: f.output.clone(),
            seconds: (f.finished_ms - f.started_ms).max(0) as f64 / 1000.0,
        }
    }
}
