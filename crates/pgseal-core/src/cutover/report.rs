//! What the phases that switch applications (cutover, rollback, cleanup) are asked and
//! what they report, whichever strategy runs them: pgseal's own fence, drain and switch,
//! or a platform's switchover.

use std::time::Duration;

use pgseal_pg::Lsn;
use serde::Serialize;

use crate::error::EngineError;

/// How long one part of a write pause took.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PauseTiming {
    /// The part: `pause`, `fence`, `drain`, `final_check`, `sequences`, `verified`, `carried`,
    /// `reverse_setup`, `switch`, `resume`, `first_write`.
    pub phase: String,
    /// Milliseconds the pause waited for it. Parts that run side by side (after the
    /// drain) count only what the pause waited for them beyond the parts listed before
    /// them, so the parts add up to the pause.
    pub ms: f64,
}

/// What cutover is asked to do.
#[derive(Debug, Clone, Default)]
pub struct CutoverOptions {
    /// The largest lag (bytes) at which cutover may start.
    pub max_lag: u64,
    /// How long fence, drain and sequences may take before pgseal gives up and lifts the fence.
    pub timeout: Duration,
    /// Only check the preconditions.
    pub dry_run: bool,
    /// Databases (`NAME`) and tables (`DATABASE/SCHEMA.TABLE`) the user accepts to leave
    /// stale on the target.
    pub leave_stale: Vec<String>,
    /// Login roles the user accepts to arrive without the password they have on the
    /// source (`--without-password`): pgseal cannot read it there, or is told not to
    /// carry it; the user sets it on the target, or the role logs in otherwise.
    pub without_password: Vec<String>,
}

/// One sequence set on the other side.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceSync {
    /// Its database.
    pub database: String,
    /// `schema.sequence`.
    pub sequence: String,
    /// The `last_value` read.
    pub last_value: i64,
    /// The `is_called` read.
    pub is_called: bool,
}

/// What cutover did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CutoverReport {
    /// Preconditions that failed (empty when all hold).
    pub failed_checks: Vec<String>,
    /// True when only the checks ran.
    pub dry_run: bool,
    /// The databases moved (one stream each).
    pub databases: Vec<String>,
    /// Databases outside the migration that the switch keeps sending to the source.
    pub kept_on_source: Vec<String>,
    /// Databases and tables the user accepted to leave stale (`--leave-stale`).
    pub left_stale: Vec<String>,
    /// Client sessions of the fenced databases ended by the fence.
    pub sessions_ended: i64,
    /// Background workers ended by the fence (`backend_type pid database`).
    pub workers_ended: Vec<String>,
    /// The flushed WAL position after the fence's barrier.
    pub fence_lsn: Option<Lsn>,
    /// The lowest confirmed position of the slots when drained (≥ `fence_lsn`).
    pub drained_lsn: Option<Lsn>,
    /// Milliseconds from pause to drained.
    pub drain_ms: Option<u64>,
    /// Sequences set on the target.
    pub sequences: Vec<SequenceSync>,
    /// Milliseconds from pause to the first write accepted through the switch.
    pub write_pause_ms: Option<u64>,
    /// When the pause began, in milliseconds since the Unix epoch: the pause set beside
    /// the applications' own logs.
    pub paused_at_unix_ms: Option<i64>,
    /// The pause part by part, as pgseal's clock measured it.
    pub phases: Vec<PauseTiming>,
    /// The longest a client waited behind the pause, as the switch saw it (PgBouncer's
    /// `maxwait` of the oldest waiting client just before the switch, plus the time until
    /// `RESUME` returned); absent when the switch cannot know.
    pub client_wait_ms: Option<u64>,
    /// What the applications were switched with.
    pub switch: String,
    /// True when reverse replication (target → source) was set up for `rollback`.
    pub rollback_ready: bool,
    /// The re-verification of rows changed since the last clean validation, if one ran.
    pub final_check: Option<crate::validate::FinalCheck>,
    /// The catalog and what no row comparison sees, verified before the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_before: Option<crate::verify::VerifyReport>,
    /// The same inside the pause, with the source fenced: the sequences, and the catalog
    /// of each database whose DDL moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<crate::verify::VerifyReport>,
    /// What replication does not carry and pgseal did before the pause: large objects,
    /// roles, memberships, database properties (a dry run: what differs now).
    pub carried_before: Option<crate::carry::Carried>,
    /// The same, carried inside the pause (what changed since).
    pub carried: Option<crate::carry::Carried>,
    /// A dry run: the tables (`database/schema.table`) DDL changed since the last
    /// validation, which `pgseal migrate cutover` compares again before it starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revalidate: Vec<String>,
}

/// Refuses a cutover whose checks failed, naming them; nothing was changed then.
pub(crate) fn refuse_failed(report: &CutoverReport) -> Result<(), EngineError> {
    if report.failed_checks.is_empty() {
        return Ok(());
    }
    Err(EngineError::Precondition(format!(
        "cutover refused, nothing was changed: {}",
        report.failed_checks.join("; ")
    )))
}

/// Where an interrupted cutover was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// It had not switched: the fence is lifted and the migration replicates again.
    BackToReplicating,
    /// It had switched: the migration is cut over (the caller points and resumes the switch
    /// again, which is idempotent).
    CutOver,
    /// A rollback had not switched back: the target serves again, still cut over.
    StillCutOver,
    /// A rollback had switched back: the migration is rolled back.
    RolledBack,
}

/// What `cleanup` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// `kind name` of each object removed.
    pub removed: Vec<String>,
}
