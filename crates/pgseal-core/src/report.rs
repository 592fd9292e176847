//! The migration report: everything a DBA shows an auditor about one migration, gathered
//! from the journal alone (no server is contacted, so a report can be made of a migration
//! long cleaned up).
//!
//! Row values never enter it: the validation table carries keys only.

use serde::Serialize;

use crate::cutover::PauseTiming;
use crate::journal::{Journal, MigrationRecord, Outcome, StepRun};
use crate::samples::Sample;
use crate::steps::Step;

/// How many differing keys of a table the report lists.
const KEYS_LISTED: usize = 10;

/// One run of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    /// The step.
    pub step: Step,
    /// Which run of this step it is (1 for the first; a resume after a crash makes 2).
    pub attempt: usize,
    /// When it started (unix ms).
    pub started_ms: i64,
    /// When it ended (unix ms), if it did.
    pub finished_ms: Option<i64>,
    /// `done`, `failed` or `running` (a run a crash interrupted stays `running`).
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
}

/// One table's validation result, keys only.
#[derive(Debug, Clone, Serialize)]
pub struct ValidatedTable {
    /// Its database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// Rows compared.
    pub rows: i64,
    /// Chunks compared.
    pub chunks: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// `validated`, `mismatched`, `suspended`, `no_primary_key` or `error`.
    pub result: String,
    /// Differing rows in all.
    pub mismatched_rows: i64,
    /// The first differing keys (missing, extra or different), keys only.
    pub first_keys: Vec<String>,
}

/// The last validation.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// When it finished (unix ms).
    pub finished_ms: Option<i64>,
    /// True when every table matched.
    pub clean: bool,
    /// Rows compared in all.
    pub rows: i64,
    /// Differing rows in all.
    pub mismatched_rows: i64,
    /// Seconds in all.
    pub seconds: f64,
    /// Per table.
    pub tables: Vec<ValidatedTable>,
    /// The catalog's verification with it (`migrate verify`), if it ran.
    pub verify: Option<Verified>,
}

/// A verification of the catalog and of what no row comparison sees, as the report shows
/// it: what was compared and what differs, named (definitions stay out of the journal).
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Objects compared, all databases together.
    pub objects: u64,
    /// Differences that count.
    pub differences: u64,
    /// Each difference, named (`db: category object: what differs`).
    pub named: Vec<String>,
    /// Normalisations applied across major versions.
    pub normalised: Vec<String>,
}

fn verified(v: &serde_json::Value) -> Option<Verified> {
    let report: crate::verify::VerifyReport = serde_json::from_value(v.clone()).ok()?;
    Some(Verified {
        objects: report.databases.values().map(|d| d.objects as u64).sum(),
        differences: report.differences as u64,
        named: report.lines(),
        normalised: report.normalised,
    })
}

/// A switch's pause: the cutover's, or a rollback's (which has no final check and no
/// rollback of its own).
#[derive(Debug, Clone, Serialize)]
pub struct Cutover {
    /// When it finished (unix ms).
    pub finished_ms: Option<i64>,
    /// What moved the applications.
    pub switch: String,
    /// Milliseconds from pause to the first write through the switch (pgseal's clock).
    pub write_pause_ms: Option<u64>,
    /// The longest client wait behind the pause as the switch saw it.
    pub client_wait_ms: Option<u64>,
    /// The pause part by part.
    pub phases: Vec<PauseTiming>,
    /// Databases moved.
    pub databases: Vec<String>,
    /// Sequences set on the target.
    pub sequences: usize,
    /// Rows re-verified by the final check, and how many differed.
    pub final_check: Option<(i64, i64)>,
    /// True when reverse replication was ready for a rollback.
    pub rollback_ready: bool,
}

/// The target's encryption and how it was checked.
#[derive(Debug, Clone, Serialize)]
pub struct Encryption {
    /// The key the user asked for.
    pub requested_key: String,
    /// The target.
    pub target: String,
    /// Whether the platform reported the target encrypted, when it was checked.
    pub encrypted: Option<bool>,
    /// The key id or ARN the platform reported.
    pub key_id: Option<String>,
    /// How the platform established it, one fact a line.
    pub evidence: Vec<String>,
    /// The encrypted snapshot the target came from (snapshot strategy), with its key.
    pub snapshot: Option<String>,
    /// Other checks recorded (for example a scan of the target's storage for plaintext).
    pub checks: Vec<String>,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    /// When the report was made (unix ms).
    pub generated_ms: i64,
    /// The journal's record of the migration.
    pub migration: MigrationRecord,
    /// Every step run, in order, with its attempt number.
    pub steps: Vec<StepLine>,
    /// Replication samples, oldest first.
    pub samples: Vec<Sample>,
    /// The apply rate between consecutive samples of each database, as
    /// `(at_ms, database, bytes_per_second)` (the slope of the slot's confirmed position).
    pub apply_rates: Vec<(i64, String, f64)>,
    /// The full load's copy rate over time, as `(at_ms, database, bytes_per_second)` of
    /// `COPY` data (empty for other strategies).
    pub copy_rates: Vec<(i64, String, f64)>,
    /// When replication into the target began (the `enable` step's end), for the
    /// catch-up plot.
    pub replication_started_ms: Option<i64>,
    /// The slot retention limit the migration runs under, in bytes.
    pub max_slot_retention: Option<u64>,
    /// The last validation.
    pub validation: Option<Validation>,
    /// The last cutover.
    pub cutover: Option<Cutover>,
    /// The last rollback, part by part as the cutover.
    pub rollback: Option<Cutover>,
    /// The target's encryption.
    pub encryption: Encryption,
    /// What cleanup removed or retired.
    pub cleaned_up: Vec<String>,
    /// The source's size in bytes, as preflight read it.
    pub source_bytes: Option<u64>,
    /// When the migration's first step started (unix ms).
    pub started_ms: Option<i64>,
    /// The LSN the restored target's WAL ends at, from which it subscribes (snapshot
    /// strategy), as PostgreSQL writes it.
    pub handoff_lsn: Option<String>,
}

/// Numbers each run of a step: the n-th run of the same step is attempt n.
fn step_lines(runs: &[StepRun]) -> Vec<StepLine> {
    let mut seen: std::collections::BTreeMap<Step, usize> = Default::default();
    runs.iter()
        .map(|run| {
            let attempt = seen.entry(run.step).or_default();
            *attempt += 1;
            StepLine {
                step: run.step,
                attempt: *attempt,
                started_ms: run.started_ms,
                finished_ms: run.finished_ms,
                outcome: run.outcome,
                error: run.error.clone(),
            }
        })
        .collect()
}

/// The last finished run of `step` that succeeded.
fn last_done(runs: &[StepRun], step: Step) -> Option<&StepRun> {
    runs.iter()
        .rev()
        .find(|r| r.step == step && r.outcome == Outcome::Done)
}

fn validation(run: &StepRun) -> Option<Validation> {
    let v = run.outputs.as_ref()?;
    let tables = v["tables"]
        .as_array()
        .map(|tables| {
            tables
                .iter()
                .map(|t| {
                    let keys = |kind: &str| {
                        t[kind]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|k| k.as_str().map(|k| format!("{kind} {k}")))
                            .collect::<Vec<_>>()
                    };
                    let mut first_keys = keys("missing");
                    first_keys.extend(keys("extra"));
                    first_keys.extend(keys("different"));
                    first_keys.truncate(KEYS_LISTED);
                    ValidatedTable {
                        database: t["database"].as_str().unwrap_or_default().to_string(),
                        table: t["table"].as_str().unwrap_or_default().to_string(),
                        rows: t["rows"].as_i64().unwrap_or(0),
                        chunks: t["chunks"].as_u64().unwrap_or(0),
                        seconds: t["seconds"].as_f64().unwrap_or(0.0),
                        result: t["state"].as_str().unwrap_or("?").to_string(),
                        mismatched_rows: t["mismatched_rows"].as_i64().unwrap_or(0),
                        first_keys,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Validation {
        finished_ms: run.finished_ms,
        clean: v["clean"].as_bool().unwrap_or(false),
        rows: v["rows"].as_i64().unwrap_or(0),
        mismatched_rows: v["mismatched_rows"].as_i64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        tables,
        verify: verified(&v["verify"]),
    })
}

/// A switch's pause as its step run (cutover or rollback) journaled it.
fn cutover(run: &StepRun) -> Option<Cutover> {
    let v = run.outputs.as_ref()?;
    let strings = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Some(Cutover {
        finished_ms: run.finished_ms,
        switch: v["switch"].as_str().unwrap_or_default().to_string(),
        write_pause_ms: v["write_pause_ms"].as_u64(),
        client_wait_ms: v["client_wait_ms"].as_u64(),
        phases: serde_json::from_value(v["phases"].clone()).unwrap_or_default(),
        databases: strings("databases"),
        sequences: v["sequences"].as_array().map_or(0, Vec::len),
        final_check: v["final_check"]["rows"].as_i64().map(|rows| {
            (
                rows,
                v["final_check"]["mismatched_rows"].as_i64().unwrap_or(0),
            )
        }),
        rollback_ready: v["rollback_ready"].as_bool().unwrap_or(false),
    })
}

fn encryption(
    record: &MigrationRecord,
    runs: &[StepRun],
    facts: &[(String, i64, serde_json::Value)],
) -> Encryption {
    // The target as checked by the step that made it (restore, or create_target).
    let instance = [Step::Restore, Step::CreateTarget]
        .into_iter()
        .filter_map(|step| last_done(runs, step))
        .find_map(|run| run.outputs.as_ref().map(|o| o["instance"].clone()))
        .filter(|i| !i.is_null());
    let snapshot = last_done(runs, Step::Snapshot)
        .and_then(|run| run.outputs.as_ref())
        .map(|o| &o["snapshot"])
        .filter(|s| !s.is_null())
        .map(|s| {
            format!(
                "{} (encrypted: {}, key {})",
                s["name"].as_str().unwrap_or("?"),
                s["encrypted"],
                s["key_id"].as_str().unwrap_or("none")
            )
        });
    Encryption {
        requested_key: record.spec.key.clone(),
        target: record.spec.target.clone(),
        encrypted: instance.as_ref().and_then(|i| i["encrypted"].as_bool()),
        key_id: instance
            .as_ref()
            .and_then(|i| i["key_id"].as_str().map(str::to_string)),
        evidence: instance
            .as_ref()
            .and_then(|i| serde_json::from_value(i["evidence"].clone()).ok())
            .unwrap_or_default(),
        snapshot,
        checks: facts
            .iter()
            .filter(|(kind, _, _)| kind == "encryption_check")
            .filter_map(|(_, _, body)| body["summary"].as_str().map(str::to_string))
            .collect(),
    }
}

/// How much of a migration's replication history a report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Every kept sample: what the report page plots.
    Whole,
    /// The latest sample of each database only: where it stands now, for a status, a
    /// metrics scrape or an estimate, which a day of samples would only slow down. The
    /// report's `apply_rates` are then empty.
    Latest,
}

/// Gathers the report of migration `name` from the journal.
pub fn gather(journal: &Journal, name: &str) -> Result<MigrationReport, crate::JournalError> {
    gather_with(journal, name, History::Whole)
}

/// Gathers the report of migration `name` from the journal, with `history` of its
/// samples.
pub fn gather_with(
    journal: &Journal,
    name: &str,
    history: History,
) -> Result<MigrationReport, crate::JournalError> {
    let migration = journal.migration(name)?;
    let runs = journal.step_runs(name)?;
    let facts = journal.facts(name)?;
    let cleaned_up = facts
        .iter()
        .filter(|(kind, _, _)| kind == "cleanup")
        .flat_map(|(_, _, body)| body["removed"].as_array().cloned().unwrap_or_default())
        .filter_map(|line| line.as_str().map(str::to_string))
        .collect();
    let samples = match history {
        History::Whole => journal.samples(name)?,
        History::Latest => journal.latest_samples(name)?,
    };
    Ok(MigrationReport {
        generated_ms: crate::journal::now_ms(),
        steps: step_lines(&runs),
        apply_rates: crate::samples::apply_rates(&samples),
        copy_rates: crate::initial_copy::copy_rates(&facts),
        samples,
        replication_started_ms: last_done(&runs, Step::Enable).and_then(|r| r.finished_ms),
        max_slot_retention: migration.spec.max_slot_retention,
        validation: last_done(&runs, Step::Validate).and_then(validation),
        cutover: last_done(&runs, Step::Cutover).and_then(cutover),
        rollback: last_done(&runs, Step::Rollback).and_then(cutover),
        encryption: encryption(&migration, &runs, &facts),
        cleaned_up,
        source_bytes: last_done(&runs, Step::Preflight)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o["report"]["source_bytes"].as_u64()),
        started_ms: runs.first().map(|r| r.started_ms),
        handoff_lsn: last_done(&runs, Step::Restore)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o["handoff"]["lsn"].as_str().map(str::to_string)),
        migration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(step: Step, outcome: Outcome, started_ms: i64) -> StepRun {
        StepRun {
            step,
            started_ms,
            finished_ms: (outcome != Outcome::Running).then_some(started_ms + 10),
            outcome,
            outputs: None,
            error: (outcome == Outcome::Failed).then(|| "boom".to_string()),
            runner: None,
        }
    }

    #[test]
    fn a_step_run_again_after_a_crash_is_its_second_attempt() {
        let lines = step_lines(&[
            run(Step::Preflight, Outcome::Done, 0),
            run(Step::Snapshot, Outcome::Running, 10),
            run(Step::Snapshot, Outcome::Done, 20),
            run(Step::Restore, Outcome::Done, 30),
        ]);
        let attempts: Vec<(Step, usize, Outcome)> = lines
            .iter()
            .map(|l| (l.step, l.attempt, l.outcome))
            .collect();
        assert_eq!(
            attempts,
            vec![
                (Step::Preflight, 1, Outcome::Done),
                (Step::Snapshot, 1, Outcome::Running),
                (Step::Snapshot, 2, Outcome::Done),
                (Step::Restore, 1, Outcome::Done),
            ]
        );
    }

    #[test]
    fn validation_lists_keys_only() {
        let mut r = run(Step::Validate, Outcome::Done, 0);
        r.outputs = Some(serde_json::json!({
            "clean": false, "rows": 3, "mismatched_rows": 1, "seconds": 0.5,
            "tables": [{
                "database": "app", "table": "public.t", "state": "mismatched", "rows": 3,
                "chunks": 1, "seconds": 0.5, "mismatched_rows": 1,
                "missing": ["(7)"], "extra": [], "different": [],
                "details": [{"kind": "missing", "key": "(7)", "source": "secret row", "target": null}]
            }]
        }));
        let v = validation(&r).expect("a validation");
        assert_eq!(v.tables[0].first_keys, vec!["missing (7)".to_string()]);
        let text = serde_json::to_string(&v).unwrap();
        assert!(!text.contains("secret row"), "{text}");
    }
}
