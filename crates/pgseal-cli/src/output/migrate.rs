//! Human rendering of the `migrate` commands: plan, status, validation, cutover,
//! rollback, cleanup and the list. Each function takes what a command gathered and returns
//! the text; the command prints it (or JSON instead).

use std::fmt::Write as _;

use pgseal_core::cutover::{CleanupReport, CutoverReport, RollbackReport};
use pgseal_core::journal::{MigrationRecord, MigrationSpec, Phase, format_ms};
use pgseal_core::preflight::{PreflightReport, Severity};
use pgseal_core::status::MigrationStatus;
use pgseal_core::validate::{TableReport, ValidationReport};

use super::table;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).expect("writing to a String")
    };
}

/// A validation table state's name, as the JSON has it.
pub fn state_name(state: pgseal_core::validate::TableState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One line on what was carried besides replication, when anything was.
fn carried_line(out: &mut String, when: &str, carried: Option<&pgseal_core::carry::Carried>) {
    let Some(c) = carried else { return };
    let lo = &c.large_objects;
    if lo.copied + lo.unlinked + lo.metadata == 0 && c.globals.is_empty() {
        return;
    }
    outln!(
        out,
        "{when}: {} large object(s) copied ({} bytes), {} unlinked, {} given their owner or privileges; {} role or database difference(s){}",
        lo.copied,
        lo.bytes,
        lo.unlinked,
        lo.metadata,
        c.globals.len(),
        if c.globals.is_empty() {
            String::new()
        } else {
            format!(": {}", c.globals.join("; "))
        }
    );
}

/// `migrate cutover`: what it did, or why a dry run would be refused.
pub fn cutover(name: &str, spec: &MigrationSpec, report: &CutoverReport) -> String {
    let mut out = String::new();
    if report.dry_run {
        if report.failed_checks.is_empty() {
            outln!(
                out,
                "cutover of {name}: every precondition holds (dry run, nothing changed)"
            );
        } else {
            outln!(out, "cutover of {name} would be refused:");
            for c in &report.failed_checks {
                outln!(out, "  - {c}");
            }
        }
        if !report.revalidate.is_empty() {
            outln!(
                out,
                "DDL ran on the source since the last validation: the cutover first compares again {}",
                report.revalidate.join(", ")
            );
        }
        carried_line(
            &mut out,
            "to carry to the target before the pause",
            report.carried_before.as_ref(),
        );
    } else {
        outln!(
            out,
            "cut over {name} to {} with {}: {} database(s) ({}), write pause {} ms (drained at {} after the fence's barrier at {}), {} sequence(s) set, {} source session(s) ended",
            spec.target,
            report.switch,
            report.databases.len(),
            report.databases.join(", "),
            report.write_pause_ms.unwrap_or(0),
            report.drained_lsn.map_or("?".into(), |l| l.to_string()),
            report.fence_lsn.map_or("?".into(), |l| l.to_string()),
            report.sequences.len(),
            report.sessions_ended
        );
        pause_lines(&mut out, &report.phases, report.client_wait_ms);
        carried_line(
            &mut out,
            "carried before the pause",
            report.carried_before.as_ref(),
        );
        carried_line(
            &mut out,
            "carried inside the pause",
            report.carried.as_ref(),
        );
        for w in &report.workers_ended {
            outln!(out, "the fence ended background worker {w}");
        }
        if !report.kept_on_source.is_empty() {
            outln!(
                out,
                "outside the migration, still served by the source through the endpoint: {}",
                report.kept_on_source.join(", ")
            );
        }
        if !report.left_stale.is_empty() {
            outln!(
                out,
                "left stale on the target, as accepted: {}",
                report.left_stale.join(", ")
            );
        }
        outln!(
            out,
            "the source {} stays fenced (no connections to {})",
            spec.source,
            report.databases.join(", ")
        );
    }
    out
}

/// `migrate rollback`: what it did.
pub fn rollback(name: &str, spec: &MigrationSpec, report: &RollbackReport) -> String {
    let mut out = String::new();
    outln!(
        out,
        "rolled {name} back to {} with {}: write pause {} ms (drained at {} after the target's fence at {}), {} sequence(s) set",
        spec.source,
        report.switch,
        report.write_pause_ms,
        report.drained_lsn,
        report.fence_lsn,
        report.sequences.len()
    );
    pause_lines(&mut out, &report.phases, report.client_wait_ms);
    carried_line(
        &mut out,
        "carried back before the pause",
        Some(&report.carried_before),
    );
    carried_line(
        &mut out,
        "carried back inside the pause",
        Some(&report.carried),
    );
    outln!(
        out,
        "the encrypted target {} stays fenced; `pgseal migrate cleanup {name}` removes it",
        spec.target
    );
    out
}

/// A switch's pause part by part, and the longest client wait behind it when known.
fn pause_lines(
    out: &mut String,
    phases: &[pgseal_core::cutover::PauseTiming],
    client_wait_ms: Option<u64>,
) {
    if !phases.is_empty() {
        let parts: Vec<String> = phases
            .iter()
            .map(|p| format!("{} {:.0}", p.phase, p.ms))
            .collect();
        outln!(out, "the pause in ms: {}", parts.join(", "));
    }
    if let Some(wait) = client_wait_ms {
        outln!(
            out,
            "longest client wait behind the pause: {wait} ms (PgBouncer's maxwait)"
        );
    }
}

/// `migrate cleanup`: what it removed.
pub fn cleanup(name: &str, spec: &MigrationSpec, report: &CleanupReport) -> String {
    let mut out = String::new();
    for line in &report.removed {
        outln!(out, "removed {line}");
    }
    outln!(
        out,
        "migration {name} cleaned up; {} is the database now",
        spec.target
    );
    out
}

/// `migrate validate`: the differing keys of each table, then every table's result.
pub fn validation(name: &str, report: &ValidationReport) -> String {
    let mut out = String::new();
    for t in report
        .tables
        .iter()
        .filter(|t| t.mismatched_rows > 0 || t.error.is_some())
    {
        outln!(out, "{}: {} mismatched row(s)", t.table, t.mismatched_rows);
        for (label, keys) in [
            ("missing on the target", &t.missing),
            ("extra on the target", &t.extra),
            ("different", &t.different),
        ] {
            if !keys.is_empty() {
                let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
                outln!(
                    out,
                    "  {label}: {}{}",
                    shown.join(", "),
                    if keys.len() > 5 {
                        format!(" and {} more", keys.len() - 5)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if let Some(e) = &t.error {
            outln!(out, "  error: {e}");
        }
    }
    let mut rows = vec![vec![
        "TABLE".to_string(),
        "STATE".into(),
        "ROWS".into(),
        "CHUNKS".into(),
        "SECONDS".into(),
        "MISMATCHED".into(),
    ]];
    for t in &report.tables {
        rows.push(vec![
            t.table.clone(),
            state_name(t.state),
            t.rows.to_string(),
            t.chunks.to_string(),
            format!("{:.2}", t.seconds),
            t.mismatched_rows.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    for (db, lo) in &report.large_objects {
        outln!(
            out,
            "{db}: large objects {} on the source, {} on the target{}{}",
            lo.source,
            lo.target,
            if lo.copied_first > 0 {
                format!(
                    " ({} written since the follower's last pass, copied first)",
                    lo.copied_first
                )
            } else {
                String::new()
            },
            if lo.differing.is_empty() {
                ", equal".to_string()
            } else {
                format!(
                    ", {} differ: {}",
                    lo.differing.len(),
                    lo.differing
                        .iter()
                        .take(10)
                        .map(|d| format!("{} ({})", d.oid, d.what))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let copying: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| t.state == pgseal_core::validate::TableState::Copying)
        .map(|t| t.table.as_str())
        .collect();
    if !copying.is_empty() {
        outln!(
            out,
            "still being copied, not comparable yet: {} (validate again once `pgseal migrate status` shows them copied)",
            copying.join(", ")
        );
    }
    if let Some(v) = &report.verify {
        out.push_str(&verification(name, v));
    }
    outln!(
        out,
        "validation of {name}: {} rows in {} tables compared in {:.1} s, {} mismatched: {}",
        report.rows,
        report.tables.len(),
        report.seconds,
        report.mismatched_rows,
        if report.clean { "clean" } else { "NOT clean" }
    );
    out
}

/// `migrate verify`'s result: each difference with both sides' definitions, what was
/// carried first, sequences behind, normalisations, and a summary line.
pub fn verification(name: &str, report: &pgseal_core::verify::VerifyReport) -> String {
    let mut out = String::new();
    for g in &report.globals_carried {
        outln!(out, "carried first (the follower had not yet): {g}");
    }
    for g in &report.globals {
        outln!(out, "differs: {g}");
    }
    for (db, v) in &report.databases {
        for d in &v.differences {
            outln!(out, "{db}: {} {}", d.category.label(), d.object);
            outln!(out, "  source: {}", d.source.as_deref().unwrap_or("(none)"));
            outln!(out, "  target: {}", d.target.as_deref().unwrap_or("(none)"));
        }
        for l in &v.large_objects.carried {
            outln!(out, "{db}: large object {} {}: copied first", l.oid, l.what);
        }
        for l in &v.large_objects.differing {
            outln!(out, "{db}: large object {} {}", l.oid, l.what);
        }
        for sq in &v.sequences_behind {
            outln!(
                out,
                "{db}: sequence {} at {} on the source, {} on the target{}",
                sq.sequence,
                sq.source,
                sq.target.map_or("unused".to_string(), |t| t.to_string()),
                if v.sequences_count {
                    ""
                } else {
                    " (the cutover sets it)"
                }
            );
        }
    }
    for n in &report.normalised {
        outln!(
            out,
            "normalised (the sides run different major versions): {n}"
        );
    }
    let objects: usize = report.databases.values().map(|v| v.objects).sum();
    outln!(
        out,
        "verification of {name}: {objects} objects in {} database(s) compared in {:.1} s, {} difference(s): {}",
        report.databases.len(),
        report.seconds,
        report.differences,
        if report.clean { "clean" } else { "NOT clean" }
    );
    out
}

/// The line before a cutover's comparison of the tables DDL changed since the last
/// validation.
pub fn revalidating(since: &[pgseal_core::ddl::DdlSinceValidation]) -> String {
    let parts: Vec<String> = since
        .iter()
        .map(|d| {
            format!(
                "{} (statements {}..={}: {})",
                d.database,
                d.first,
                d.last,
                if d.tables.is_empty() {
                    "no table changed".to_string()
                } else {
                    d.tables.join(", ")
                }
            )
        })
        .collect();
    format!(
        "DDL ran on the source since the last validation in {}: comparing those tables again before the cutover",
        parts.join("; ")
    )
}

/// `migrate ddl`: one line a captured statement, with its state and why it stopped.
pub fn ddl(name: &str, entries: &[pgseal_core::ddl::DdlEntry]) -> String {
    if entries.is_empty() {
        return format!("no DDL captured for migration {name}\n");
    }
    let mut out = String::new();
    for e in entries {
        let state = serde_json::to_value(e.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>4}  {:<16} {:<20} {}\n",
            e.captured.id,
            state,
            format!("{}/{}", e.database, e.captured.command_tag),
            e.captured.statement.trim()
        ));
        if e.state == pgseal_core::ddl::DdlState::Stopped {
            out.push_str(&format!(
                "      not replayed: {}\n      apply it on the target by hand, then `pgseal migrate ddl {name} --database {} --apply {}`; or `--skip {}`\n",
                e.captured.verdict.as_deref().unwrap_or(""),
                e.database,
                e.captured.id,
                e.captured.id
            ));
        }
    }
    out
}

/// One validated table, as `validate` reports it while it goes.
pub fn validated_table(t: &TableReport) -> String {
    format!(
        "  {:<40} {:>10} rows {:>5} chunks {:>7.2} s  {}",
        t.table,
        t.rows,
        t.chunks,
        t.seconds,
        state_name(t.state)
    )
}

/// `migrate list`: one line a migration.
pub fn list(migrations: &[MigrationRecord]) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "PHASE".into(),
        "SOURCE".into(),
        "TARGET".into(),
        "KEY".into(),
        "CREATED".into(),
    ]];
    for m in migrations {
        rows.push(vec![
            m.spec.name.clone(),
            m.phase.as_str().to_string(),
            m.spec.source.clone(),
            m.spec.target.clone(),
            m.spec.key.clone(),
            format_ms(m.created_ms),
        ]);
    }
    table(&rows)
}

/// Bytes as `N B` or `N.N MiB`.
fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} B")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// `migrate status`: the steps, each stream's replication, the warnings.
pub fn status(s: &MigrationStatus) -> String {
    let spec = &s.migration.spec;
    let mut out = format!(
        "migration {}: {} -> {} (key {}, {})\nphase: {}{}\n",
        spec.name,
        spec.source,
        spec.target,
        spec.key,
        spec.databases
            .as_ref()
            .map_or("the whole instance".to_string(), |d| format!(
                "databases {}",
                d.join(", ")
            )),
        s.migration.phase.as_str(),
        s.migration
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(" - {e}"))
    );
    if let Some(h) = &s.handoff {
        out.push_str(&format!("handoff LSN: {}\n", h.lsn));
    }
    if let Some(done) = s.steps.iter().rev().find(|r| {
        r.step == pgseal_core::Step::Cutover && r.outcome == pgseal_core::journal::Outcome::Done
    }) && let Some(outputs) = &done.outputs
    {
        out.push_str(&format!(
            "cut over with {}: write pause {} ms, {} sequence(s) set\n",
            outputs["switch"].as_str().unwrap_or("?"),
            outputs["write_pause_ms"],
            outputs["sequences"].as_array().map_or(0, Vec::len)
        ));
    }
    if let Some(f) = &s.follower {
        match (&f.heartbeat, f.running) {
            (Some(h), running) => {
                let last = &h.last;
                out.push_str(&format!(
                    "follower: {} (pid {}), last pass {:.1} s ago{}\n",
                    if running { "running" } else { "NOT running" },
                    h.pid,
                    f.last_pass_age_seconds.unwrap_or(0.0),
                    if let Some(e) = &last.error {
                        format!(", failed: {e}")
                    } else if let Some(idle) = &last.idle {
                        format!(", idle: {idle}")
                    } else {
                        format!(
                            ": {} table(s) subscribed, {} large object(s) copied, {} role or database difference(s) carried",
                            last.refreshed.len(),
                            last.large_objects.copied,
                            last.globals.len()
                        )
                    }
                ));
            }
            (None, true) => out.push_str("follower: running, no pass yet\n"),
            (None, false) => out.push_str("follower: none\n"),
        }
    }
    out.push_str("\nsteps:\n");
    let mut rows = vec![vec![
        "#".to_string(),
        "STEP".into(),
        "OUTCOME".into(),
        "STARTED".into(),
        "SECONDS".into(),
    ]];
    for run in &s.steps {
        rows.push(vec![
            run.step.number(s.migration.spec.strategy).to_string(),
            run.step.as_str().to_string(),
            match run.outcome {
                pgseal_core::journal::Outcome::Done => "done".to_string(),
                pgseal_core::journal::Outcome::Failed => "failed".to_string(),
                pgseal_core::journal::Outcome::Running if s.migration.phase == Phase::Running => {
                    "running or interrupted".to_string()
                }
                pgseal_core::journal::Outcome::Running => "interrupted".to_string(),
            },
            format_ms(run.started_ms),
            run.duration()
                .map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64())),
        ]);
    }
    out.push_str(&table(&rows));
    if let Some(r) = &s.replication {
        out.push_str(&format!(
            "\nreplication: source WAL position {}, lag {} (slowest database), slots hold {} of WAL in all\n",
            r.source_lsn,
            r.lag_bytes.map_or("?".to_string(), mib),
            r.retained_bytes
                .map_or("?".to_string(), |b| mib(b.max(0) as u64)),
        ));
        let mut rows = vec![vec![
            "DATABASE".to_string(),
            "SLOT".into(),
            "CONFIRMED".into(),
            "HOLDS".into(),
            "LAG".into(),
            "WORKER".into(),
            "APPLY ERRORS".into(),
            "SCHEMA".into(),
        ]];
        for st in &r.streams {
            rows.push(vec![
                match st.source_allows_connections {
                    Some(false) => format!("{} (fenced)", st.database),
                    _ => st.database.clone(),
                },
                match &st.slot {
                    Some(slot) => format!(
                        "{} ({}, {})",
                        slot.name,
                        if slot.active { "active" } else { "inactive" },
                        slot.wal_status.as_deref().unwrap_or("?")
                    ),
                    None => format!("{} MISSING", st.name),
                },
                st.slot
                    .as_ref()
                    .and_then(|s| s.confirmed_flush_lsn)
                    .map_or("?".to_string(), |l| l.to_string()),
                st.slot
                    .as_ref()
                    .and_then(|s| s.retained_bytes)
                    .map_or("?".to_string(), |b| mib(b.max(0) as u64)),
                st.lag_bytes.map_or("?".to_string(), |lag| {
                    format!(
                        "{}{}",
                        mib(lag),
                        st.lag_seconds
                            .map_or(String::new(), |s| format!(", {s:.1} s"))
                    )
                }),
                st.subscription.as_ref().map_or("-".to_string(), |sub| {
                    match (sub.enabled, sub.worker_pid) {
                        (_, Some(p)) => format!("pid {p}"),
                        (true, None) => "not running".to_string(),
                        (false, None) => "disabled".to_string(),
                    }
                }),
                st.subscription
                    .as_ref()
                    .map_or("-".to_string(), |sub| sub.apply_errors.to_string()),
                st.schema.as_ref().map_or("-".to_string(), |schema| {
                    if schema.drift.is_empty() {
                        "equal".to_string()
                    } else {
                        format!("DRIFT ({})", schema.drift.len())
                    }
                }),
            ]);
        }
        out.push_str(&table(&rows));
        for st in &r.streams {
            for d in st.schema.iter().flat_map(|schema| &schema.drift) {
                out.push_str(&format!(
                    "  {}/{}: {}\n    run on the target: {}\n",
                    st.database, d.table, d.detail, d.statement
                ));
                if let Some(caution) = &d.caution {
                    out.push_str(&format!("    caution: {caution}\n"));
                }
            }
        }
        let copying: Vec<_> = r.streams.iter().flat_map(|st| &st.copy).collect();
        if !copying.is_empty() {
            let ready = copying.iter().filter(|t| t.ready()).count();
            out.push_str(&format!(
                "\ninitial copy: {ready} of {} table(s) ready\n",
                copying.len()
            ));
            let mut rows = vec![vec![
                "DATABASE".to_string(),
                "TABLE".into(),
                "STATE".into(),
                "ROWS".into(),
                "COPIED".into(),
                "SOURCE SIZE".into(),
            ]];
            for t in copying {
                rows.push(vec![
                    t.database.clone(),
                    t.table.clone(),
                    t.state.clone(),
                    t.rows.map_or("-".into(), |r| r.to_string()),
                    t.bytes.map_or("-".into(), |b| mib(b.max(0) as u64)),
                    t.source_bytes.map_or("?".into(), |b| mib(b.max(0) as u64)),
                ]);
            }
            out.push_str(&table(&rows));
        }
    }
    let sides = [("source", &s.storage.source), ("target", &s.storage.target)];
    let storage: Vec<String> = sides
        .iter()
        .filter_map(|(side, use_)| {
            use_.map(|u| format!("{side} {} free of {}", mib(u.free_bytes), mib(u.size_bytes)))
        })
        .collect();
    if !storage.is_empty() {
        out.push_str(&format!("\nstorage: {}\n", storage.join(", ")));
    }
    if let Some(v) = &s.last_validation {
        out.push_str(&format!(
            "\nlast validation: {} rows, {} mismatched ({})\n",
            v["rows"],
            v["mismatched_rows"],
            if v["clean"] == true {
                "clean"
            } else {
                "NOT clean"
            }
        ));
    }
    for w in &s.warnings {
        out.push_str(&format!("\nwarning: {w}"));
    }
    if !s.warnings.is_empty() {
        out.push('\n');
    }
    out
}

/// `migrate plan`: the scope, the strategies, every finding with its fix.
pub fn plan(r: &PreflightReport, source: &str, target: &str, name: &str) -> String {
    let mut out = format!(
        "migration {name}: {source} ({} MiB, {} tables carried, PostgreSQL {}) -> encrypted instance {target}\n\nscope:\n",
        r.source_bytes >> 20,
        r.tables,
        r.server_version
    );
    let mut rows = vec![vec![
        "DATABASE".to_string(),
        "SIZE".into(),
        "TABLES".into(),
        "CARRIED".into(),
        "NOT CARRIED".into(),
    ]];
    for d in &r.databases {
        rows.push(vec![
            d.name.clone(),
            mib(d.bytes.max(0) as u64),
            if d.carried {
                d.tables.to_string()
            } else {
                "-".into()
            },
            if d.carried { "yes" } else { "no" }.to_string(),
            if d.carried {
                d.not_carried.join("; ")
            } else {
                "the whole database: an endpoint keeps it on the source; a hook or rename switch refuses unless --leave-stale".into()
            },
        ]);
    }
    out.push_str(&table(&rows));
    for d in r.databases.iter().filter(|d| d.carried) {
        for c in &d.carried_by_pgseal {
            out.push_str(&format!("{}: {c}\n", d.name));
        }
    }
    out.push_str(&format!(
        "\nstrategy: {} (PostgreSQL {} -> {}); recommended: {}\n",
        r.strategy, r.source_major, r.target_major, r.recommended
    ));
    for c in &r.strategies {
        out.push_str(&format!(
            "  {:<10} {:<12} {}\n",
            c.strategy.as_str(),
            if c.possible {
                "possible"
            } else {
                "not possible"
            },
            c.why
        ));
    }
    if let Some(bg) = &r.blue_green {
        out.push_str(&format!(
            "\nblue/green: {} replication ({})\n  parameters: {}\n  DDL: {}\n  limits (* = this source meets it):\n",
            bg.method,
            bg.why,
            match (bg.needs_logical_replication, bg.reboot) {
                (false, _) => "none changed, no reboot (physical replication needs no logical decoding)".to_string(),
                (true, false) => "rds.logical_replication is on already; no reboot".to_string(),
                (true, true) => "rds.logical_replication = 1 is set at start, which reboots the source (--allow-restart)".to_string(),
            },
            bg.ddl
        ));
        for l in &bg.limits {
            out.push_str(&format!(
                "  {} {}{}\n",
                if l.met { "*" } else { "-" },
                l.limit,
                l.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ));
        }
    }
    if !r.ddl_stops.is_empty() {
        out.push_str("\nDDL on the source is replayed on the target in its place in the stream, but for\nthese, where the target's apply stops until you decide (`pgseal migrate ddl`):\n");
        for s in &r.ddl_stops {
            out.push_str(&format!("  - {s}\n"));
        }
    }
    out.push('\n');
    for f in &r.findings {
        let label = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "  {label:<8} {}\n  {:<8} fix: {}\n",
            f.detail, "", f.fix
        ));
    }
    let blockers = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .count();
    out.push('\n');
    out.push_str(&if blockers == 0 {
        "Ready: nothing blocks the migration.\n".to_string()
    } else {
        format!("Not ready: {blockers} blocker(s). Fix them (nothing was changed) and run `pgseal migrate plan` again.\n")
    });
    out
}
