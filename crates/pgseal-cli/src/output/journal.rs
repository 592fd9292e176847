//! What `pgseal journal` prints for a person.

use pgseal_core::journal::LeaseRecord;
use pgseal_core::journal::copy::Copied;

/// The result of `journal copy`.
pub fn copied(copied: &Copied, from: &str, to: &str) -> String {
    let rows: Vec<String> = copied
        .rows
        .iter()
        .map(|(table, n)| format!("{n} {table}"))
        .collect();
    format!(
        "copied {} migration(s) from {from} to {to}: {}\n\
         use --journal (or PGSEAL_JOURNAL) with that URL from now on; {from} is left as it was",
        copied.migrations.len(),
        rows.join(", ")
    )
}

/// The table of `journal leases`.
pub fn leases(leases: &[LeaseRecord]) -> String {
    if leases.is_empty() {
        return "no leases: no runner drives a migration now".into();
    }
    let mut rows = vec![vec![
        "MIGRATION".to_string(),
        "RUNNER".into(),
        "HOST".into(),
        "PID".into(),
        "TAKEN".into(),
        "EXPIRES".into(),
    ]];
    for l in leases {
        let left = if l.left_ms < 0 {
            format!("expired {} s ago", -l.left_ms / 1000)
        } else {
            format!("in {} s", (l.left_ms + 999) / 1000)
        };
        rows.push(vec![
            l.migration.clone(),
            l.runner.clone(),
            l.host.clone(),
            l.pid.to_string(),
            pgseal_core::journal::format_ms(l.taken_ms),
            left,
        ]);
    }
    super::terminal_safe(&super::table(&rows))
}
