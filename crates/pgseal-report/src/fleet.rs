//! The fleet report: one page over every migration of an inventory, each summarised and
//! linked to its own report, with the fleet's lag and pauses side by side
//! (`templates/fleet.html`).

use std::path::PathBuf;

use askama::Template;
use pgseal_core::journal::format_ms;
use pgseal_core::report::MigrationReport;

use crate::ReportError;
use crate::plots::{self, Plot};

/// One migration of the fleet, as the page gets it.
#[derive(Debug, Clone)]
pub struct FleetMigration<'a> {
    /// The migration's name.
    pub name: &'a str,
    /// Its source, as the inventory gives it.
    pub source: &'a str,
    /// Its wave.
    pub wave: u32,
    /// Its journal's facts; `None` while it has not been started.
    pub report: Option<&'a MigrationReport>,
    /// Where its own report page is.
    pub link: Option<PathBuf>,
}

/// One row of the page's table, formatted.
struct Row {
    name: String,
    link: String,
    wave: u32,
    source: String,
    target: String,
    phase: String,
    started: String,
    handoff: String,
    pause: String,
    validation: String,
    validation_ok: bool,
    encryption: String,
    encrypted: bool,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct Page {
    file: String,
    generated: String,
    rows: Vec<Row>,
    plots: Vec<Plot>,
    counts: String,
}

fn row(m: &FleetMigration<'_>) -> Row {
    let link = m
        .link
        .as_ref()
        .map(|p| format!("file://{}", p.display()))
        .unwrap_or_default();
    let mut row = Row {
        name: m.name.to_string(),
        link,
        wave: m.wave,
        source: m.source.to_string(),
        target: String::new(),
        phase: "not started".into(),
        started: String::new(),
        handoff: String::new(),
        pause: String::new(),
        validation: "never".into(),
        validation_ok: false,
        encryption: String::new(),
        encrypted: false,
    };
    let Some(r) = m.report else {
        return row;
    };
    row.target = r.migration.spec.target.clone();
    row.phase = r.migration.phase.as_str().replace('_', " ");
    row.started = r.started_ms.map(format_ms).unwrap_or_default();
    let replicating = match (r.started_ms, r.replication_started_ms) {
        (Some(s), Some(e)) => format!("replicating {:.1} s after start", (e - s) as f64 / 1000.0),
        _ => "not replicating yet".into(),
    };
    row.handoff = match &r.handoff_lsn {
        Some(lsn) => format!("handoff at {lsn}, {replicating}"),
        None => replicating,
    };
    row.pause = [
        r.cutover
            .as_ref()
            .and_then(|c| c.write_pause_ms)
            .map(|ms| format!("cutover {ms} ms")),
        r.rollback
            .as_ref()
            .and_then(|c| c.write_pause_ms)
            .map(|ms| format!("rollback {ms} ms")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    if let Some(v) = &r.validation {
        row.validation_ok = v.clean;
        row.validation = format!(
            "{} ({} rows{}), {}",
            if v.clean { "clean" } else { "rows differ" },
            v.rows,
            if v.clean {
                String::new()
            } else {
                format!(", {} differ", v.mismatched_rows)
            },
            v.finished_ms.map(format_ms).unwrap_or_default()
        );
    }
    let e = &r.encryption;
    row.encrypted = e.encrypted == Some(true);
    row.encryption = match e.encrypted {
        Some(true) => format!(
            "encrypted under {}",
            e.key_id.as_deref().unwrap_or(&e.requested_key)
        ),
        Some(false) => "NOT encrypted".into(),
        None => format!("not checked yet (key {})", e.requested_key),
    };
    row
}

/// Renders the fleet of inventory `file` as one HTML document.
pub fn render(file: &str, migrations: &[FleetMigration<'_>]) -> Result<String, ReportError> {
    let reports: Vec<(&str, &MigrationReport)> = migrations
        .iter()
        .filter_map(|m| m.report.map(|r| (m.name, r)))
        .collect();
    let origin = reports
        .iter()
        .map(|(_, r)| r.migration.created_ms)
        .min()
        .unwrap_or(0);
    let lags: Vec<(&str, &[pgseal_core::samples::Sample])> = reports
        .iter()
        .map(|(n, r)| (*n, r.samples.as_slice()))
        .collect();
    let pauses: Vec<(&str, Option<u64>, Option<u64>)> = reports
        .iter()
        .map(|(n, r)| {
            (
                *n,
                r.cutover.as_ref().and_then(|c| c.write_pause_ms),
                r.rollback.as_ref().and_then(|c| c.write_pause_ms),
            )
        })
        .collect();
    let rows: Vec<Row> = migrations.iter().map(row).collect();
    let mut phases: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &rows {
        *phases.entry(r.phase.as_str()).or_default() += 1;
    }
    let counts = phases
        .iter()
        .map(|(p, n)| format!("{n} {p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let page = Page {
        file: file.to_string(),
        generated: format_ms(pgseal_core::journal::now_ms()),
        plots: vec![
            plots::fleet_lag(&lags, origin)?,
            plots::fleet_pauses(&pauses)?,
        ],
        counts,
        rows,
    };
    Ok(page.render()?)
}
