//! The report page: the facts of a [`MigrationReport`] laid out for a person, through the
//! `templates/report.html` template.

use askama::Template;
use pgseal_core::journal::{Outcome, format_ms};
use pgseal_core::report::MigrationReport;

use crate::ReportError;
use crate::plots::{self, Plot};

/// One line of the step timeline, formatted.
struct TimelineRow {
    step: String,
    attempt: usize,
    started: String,
    duration: String,
    outcome: &'static str,
    error: String,
    /// Where its bar starts and how wide it is, in percent of the timeline.
    left: f64,
    width: f64,
}

/// The page's template and what it shows.
#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    report: &'a MigrationReport,
    created: String,
    generated: String,
    timeline: Vec<TimelineRow>,
    resumed_steps: Vec<String>,
    plots: Vec<Plot>,
    validated: String,
    cutover_when: String,
    peak_apply_rate: String,
}

fn seconds(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => format!("{:.1} min", ms as f64 / 60_000.0),
    }
}

fn timeline(report: &MigrationReport) -> Vec<TimelineRow> {
    let start = report
        .steps
        .iter()
        .map(|s| s.started_ms)
        .min()
        .unwrap_or(report.generated_ms);
    let end = report
        .steps
        .iter()
        .map(|s| s.finished_ms.unwrap_or(s.started_ms))
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let span = (end - start) as f64;
    report
        .steps
        .iter()
        .map(|s| {
            let finished = s.finished_ms.unwrap_or(s.started_ms);
            TimelineRow {
                step: s.step.as_str().to_string(),
                attempt: s.attempt,
                started: format_ms(s.started_ms),
                duration: s
                    .finished_ms
                    .map(|f| seconds(f - s.started_ms))
                    .unwrap_or_else(|| "did not end (interrupted)".into()),
                outcome: match s.outcome {
                    Outcome::Done => "done",
                    Outcome::Failed => "failed",
                    Outcome::Running => "interrupted",
                },
                error: s.error.clone().unwrap_or_default(),
                left: (s.started_ms - start) as f64 / span * 100.0,
                width: ((finished - s.started_ms) as f64 / span * 100.0).max(0.4),
            }
        })
        .collect()
}

/// Renders `report` as one HTML document.
pub fn render(report: &MigrationReport) -> Result<String, ReportError> {
    let origin = report.migration.created_ms;
    let cutover = report.cutover.as_ref();
    let mut plots = vec![
        plots::lag(&report.samples, origin)?,
        plots::retention(&report.samples, origin, report.max_slot_retention)?,
        plots::catch_up(&report.samples, report.replication_started_ms)?,
        plots::pause(
            "Cutover write pause",
            cutover.map(|c| c.phases.as_slice()).unwrap_or_default(),
            cutover.and_then(|c| c.client_wait_ms),
        )?,
    ];
    // A full load's copy rate, when it copied.
    if !report.copy_rates.is_empty() {
        plots.push(plots::copy_rate(&report.copy_rates, origin)?);
    }
    // A rollback's pause beside the cutover's, when there was one.
    if let Some(r) = &report.rollback {
        plots.push(plots::pause(
            "Rollback write pause",
            &r.phases,
            r.client_wait_ms,
        )?);
    }
    // Steps run again after a run that failed or was interrupted, each once (a step
    // such as validate may also be run again on purpose after it succeeded).
    let mut resumed_steps: Vec<String> = Vec::new();
    for (i, run) in report.steps.iter().enumerate() {
        let name = run.step.as_str().to_string();
        let again = report.steps[i + 1..]
            .iter()
            .any(|later| later.step == run.step);
        if run.outcome != Outcome::Done && again && !resumed_steps.contains(&name) {
            resumed_steps.push(name);
        }
    }
    let peak = report
        .apply_rates
        .iter()
        .map(|(_, _, rate)| *rate)
        .fold(0.0, f64::max);
    let peak_apply_rate = if peak > 0.0 {
        let (divisor, unit) = plots::byte_unit(peak);
        format!("{:.1} {unit}/s", peak / divisor)
    } else {
        String::new()
    };
    let page = Page {
        peak_apply_rate,
        report,
        created: format_ms(report.migration.created_ms),
        generated: format_ms(report.generated_ms),
        timeline: timeline(report),
        resumed_steps,
        plots,
        validated: report
            .validation
            .as_ref()
            .and_then(|v| v.finished_ms)
            .map(format_ms)
            .unwrap_or_default(),
        cutover_when: cutover
            .and_then(|c| c.finished_ms)
            .map(format_ms)
            .unwrap_or_default(),
    };
    Ok(page.render()?)
}
