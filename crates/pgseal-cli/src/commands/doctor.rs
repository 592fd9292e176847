//! `pgseal doctor`.

use pgseal_local::doctor::{Check, DoctorInputs, DoctorReport, Need, Status, run_doctor};

use super::{Context, Outcome, print_json};
use crate::exit;

/// Runs the checks and prints them.
pub fn run(ctx: &Context) -> Outcome {
    let report = run_doctor(&DoctorInputs::from_process(ctx.home.clone()));
    if ctx.json {
        print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(exit::code(if report.ready {
        exit::OK
    } else {
        exit::PRECONDITION
    }))
}

fn label(check: &Check) -> &'static str {
    match (check.status, check.need) {
        (Status::Ok, _) => "ok",
        (Status::Missing, Need::Required) => "MISSING",
        (Status::Missing, Need::Recommended) => "warning",
    }
}

/// The human-readable report.
fn render(report: &DoctorReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.title.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from("pgseal doctor: what this machine has for the local platform\n\n");
    for check in &report.checks {
        out.push_str(&format!(
            "  {:<8} {:<width$}  {}\n",
            label(check),
            check.title,
            check.detail
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!(
                "  {:<8} {:<width$}  needed for: {}\n",
                "", "", check.needed_for
            ));
            out.push_str(&format!("  {:<8} {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let required: Vec<&str> = report.missing_required().map(|c| c.title).collect();
    let warnings = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Missing && c.need == Need::Recommended)
        .count();
    out.push('\n');
    if required.is_empty() {
        out.push_str("Ready: everything required is here");
        if warnings > 0 {
            out.push_str(&format!(
                " ({warnings} recommended piece(s) missing, see above)"
            ));
        }
        out.push_str(".\n");
    } else {
        out.push_str(&format!(
            "Not ready: {} required piece(s) missing: {}. Run the fixes above, then `pgseal doctor` again.\n",
            required.len(),
            required.join(", ")
        ));
    }
    out
}
