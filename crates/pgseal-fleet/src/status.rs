//! Where each migration of a fleet stands, read from the journal alone (no connection to
//! any source or target): its phase, its replication lag and slot retention as last
//! sampled, its last validation and the pauses of its cutover and rollback.

use std::collections::BTreeMap;

use pgseal_core::report::{History, MigrationReport, gather_with};
use pgseal_core::{Journal, JournalError, Phase};
use serde::Serialize;

use crate::inventory::{Inventory, Source};

/// One migration of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The migration's name.
    pub name: String,
    /// Its source.
    pub source: String,
    /// Its wave.
    pub wave: u32,
    /// Its phase; `None` while it has not been started.
    pub phase: Option<Phase>,
    /// The last error, while failed.
    pub error: Option<String>,
    /// When replication was last sampled (unix ms), by its follower or `status`.
    pub sampled_ms: Option<i64>,
    /// Bytes of source WAL the target had not applied then (the largest of its databases).
    pub lag_bytes: Option<u64>,
    /// Bytes of WAL its slots held on the source then (the largest of its databases).
    pub retained_bytes: Option<i64>,
    /// Its last validation: when it finished and whether every table matched.
    pub validation: Option<Validation>,
    /// The cutover's write pause, in milliseconds.
    pub cutover_pause_ms: Option<u64>,
    /// The rollback's write pause, in milliseconds.
    pub rollback_pause_ms: Option<u64>,
    /// The size of the source when preflight read it, in bytes.
    pub source_bytes: Option<u64>,
    /// The runner that holds the migration's lease now (a shared journal), if any.
    pub runner: Option<String>,
}

/// A validation, in brief.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// When it finished (unix ms).
    pub finished_ms: Option<i64>,
    /// True when every table matched.
    pub clean: bool,
    /// Rows that differed.
    pub mismatched_rows: i64,
}

impl Row {
    /// True when its last validation found every table the same.
    pub fn validated_clean(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| v.clean)
    }

    fn of(source: &Source, report: Option<&MigrationReport>) -> Row {
        let mut row = Row {
            name: source.name.clone(),
            source: source.source.clone(),
            wave: source.wave,
            phase: None,
            error: None,
            sampled_ms: None,
            lag_bytes: None,
            retained_bytes: None,
            validation: None,
            cutover_pause_ms: None,
            rollback_pause_ms: None,
            source_bytes: None,
            runner: None,
        };
        let Some(report) = report else {
            return row;
        };
        row.phase = Some(report.migration.phase);
        row.error = report.migration.error.clone();
        if let Some(last) = report.samples.iter().map(|s| s.at_ms).max() {
            let latest = report.samples.iter().filter(|s| s.at_ms == last);
            row.sampled_ms = Some(last);
            row.lag_bytes = latest.clone().filter_map(|s| s.lag_bytes).max();
            row.retained_bytes = latest.filter_map(|s| s.retained_bytes).max();
        }
        row.validation = report.validation.as_ref().map(|v| Validation {
            finished_ms: v.finished_ms,
            clean: v.clean,
            mismatched_rows: v.mismatched_rows,
        });
        row.cutover_pause_ms = report.cutover.as_ref().and_then(|c| c.write_pause_ms);
        row.rollback_pause_ms = report.rollback.as_ref().and_then(|c| c.write_pause_ms);
        row.source_bytes = report.source_bytes;
        row
    }
}

/// The report of each source's migration (`None` where none was started), with
/// `history` of its samples.
pub fn reports(
    journal: &Journal,
    sources: &[&Source],
    history: History,
) -> Result<Vec<Option<MigrationReport>>, JournalError> {
    sources
        .iter()
        .map(|s| match gather_with(journal, &s.name, history) {
            Ok(report) => Ok(Some(report)),
            Err(JournalError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .collect()
}

/// A row for each source of the inventory, in the file's order.
pub fn rows(journal: &Journal, inventory: &Inventory) -> Result<Vec<Row>, JournalError> {
    let sources: Vec<&Source> = inventory.sources.iter().collect();
    let reports = reports(journal, &sources, History::Latest)?;
    let leases = journal.leases()?;
    Ok(sources
        .iter()
        .zip(&reports)
        .map(|(s, r)| Row {
            runner: leases
                .iter()
                .find(|l| l.migration == s.name && l.left_ms > 0)
                .map(|l| l.runner.clone()),
            ..Row::of(s, r.as_ref())
        })
        .collect())
}

/// For each of `sources` that another migration in the journal still holds (one of
/// another name, not aborted, rolled back or cleaned up), that migration's name, by
/// source name: a source is never in two. The journal's migrations are listed once.
pub fn held_elsewhere(
    journal: &Journal,
    sources: &[&Source],
) -> Result<BTreeMap<String, String>, JournalError> {
    let migrations = journal.list()?;
    Ok(sources
        .iter()
        .filter_map(|source| {
            migrations
                .iter()
                .find(|m| {
                    m.spec.name != source.name
                        && m.spec.source == source.source
                        && !matches!(
                            m.phase,
                            Phase::Aborted | Phase::RolledBack | Phase::CleanedUp
                        )
                })
                .map(|m| (source.name.clone(), m.spec.name.clone()))
        })
        .collect())
}
