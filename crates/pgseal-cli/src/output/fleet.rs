//! What `pgseal fleet` prints for a person: the plan's table, the status table, and what
//! a command did with each migration.

use super::table;
use pgseal_fleet::MigrationOutcome;
use pgseal_fleet::status::Row;

/// Bytes as B, MiB or GiB.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 20 => format!("{b} B"),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{:.2} GiB", b as f64 / f64::from(1 << 30)),
    }
}

/// Seconds as `N s`, `N.N min` or `N.N h`.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// One source of `fleet plan`, as the table shows it.
pub struct PlanLine<'a> {
    /// The migration.
    pub name: &'a str,
    /// Its source.
    pub source: &'a str,
    /// Its wave.
    pub wave: u32,
    /// The phase of its migration, when it has begun (it is not planned again).
    pub phase: Option<&'a str>,
    /// Why preflight did not run.
    pub error: Option<&'a str>,
    /// The source's version.
    pub version: Option<&'a str>,
    /// The target's major version.
    pub target_major: Option<u64>,
    /// The source's size.
    pub bytes: Option<u64>,
    /// The databases carried.
    pub databases: &'a [String],
    /// The strategy asked for.
    pub strategy: Option<&'a str>,
    /// The strategy pgseal recommends.
    pub recommended: Option<&'a str>,
    /// Blockers, `id: detail`.
    pub blockers: &'a [String],
    /// Warnings, `id: detail`.
    pub warnings: &'a [String],
    /// Estimated seconds to replicating.
    pub estimate: Option<f64>,
}

/// `fleet plan`: a row per source, then every blocker and warning by name.
pub fn plan(lines: &[PlanLine<'_>], ready: bool) -> String {
    let mut rows = vec![
        [
            "MIGRATION",
            "WAVE",
            "SOURCE",
            "VERSION",
            "SIZE",
            "DATABASES",
            "STRATEGY",
            "RECOMMENDED",
            "BLOCKERS",
            "WARNINGS",
            "EST. START",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for l in lines {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        rows.push(vec![
            l.name.to_string(),
            l.wave.to_string(),
            l.source.to_string(),
            or_dash(l.version.map(|v| {
                let v = v.split_whitespace().next().unwrap_or(v);
                match l.target_major {
                    Some(t) => format!("{v} → {t}"),
                    None => v.to_string(),
                }
            })),
            or_dash(l.bytes.map(size)),
            if l.databases.is_empty() {
                "-".into()
            } else {
                l.databases.join(",")
            },
            or_dash(l.strategy.map(str::to_string)),
            or_dash(l.recommended.map(str::to_string)),
            if let Some(phase) = l.phase {
                format!("(migration {phase})")
            } else if l.error.is_some() {
                "cannot plan".into()
            } else {
                l.blockers.len().to_string()
            },
            l.warnings.len().to_string(),
            if l.phase.is_some() || l.error.is_some() || !l.blockers.is_empty() {
                "-".into()
            } else {
                l.estimate
                    .map_or("not measured here".into(), |s| format!("~{}", duration(s)))
            },
        ]);
    }
    let mut out = table(&rows);
    for l in lines {
        if let Some(e) = l.error {
            out.push_str(&format!("\n{}: cannot plan: {e}\n", l.name));
        }
        for b in l.blockers {
            out.push_str(&format!("\n{}: BLOCKER {b}\n", l.name));
        }
        for w in l.warnings {
            out.push_str(&format!("{}: warning {w}\n", l.name));
        }
    }
    out.push_str(if ready {
        "\nevery source is ready: pgseal fleet start FILE\n"
    } else {
        "\nnot ready: fix what is listed (pgseal migrate plan on one source shows each fix)\n"
    });
    out
}

/// `fleet status`: a row per migration.
pub fn status(rows: &[Row], now_ms: i64) -> String {
    let mut lines = vec![
        [
            "MIGRATION",
            "WAVE",
            "SOURCE",
            "PHASE",
            "LAG",
            "SLOT HOLDS",
            "SAMPLED",
            "VALIDATION",
            "PAUSE",
            "RUNNER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        let validation = match &r.validation {
            None => "never".to_string(),
            Some(v) if v.clean => "clean".to_string(),
            Some(v) => format!("{} rows differ", v.mismatched_rows),
        };
        let pause = [
            r.cutover_pause_ms.map(|ms| format!("cutover {ms} ms")),
            r.rollback_pause_ms.map(|ms| format!("rollback {ms} ms")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        lines.push(vec![
            r.name.clone(),
            r.wave.to_string(),
            r.source.clone(),
            r.phase
                .map_or("not started".to_string(), |p| p.as_str().to_string()),
            r.lag_bytes.map_or("-".into(), size),
            r.retained_bytes
                .map_or("-".into(), |b| size(b.max(0) as u64)),
            r.sampled_ms.map_or("-".into(), |at| {
                format!("{} ago", duration(((now_ms - at).max(0)) as f64 / 1000.0))
            }),
            validation,
            if pause.is_empty() { "-".into() } else { pause },
            r.runner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&lines);
    for r in rows {
        if let Some(e) = &r.error {
            out.push_str(&format!("{}: {e}\n", r.name));
        }
    }
    out
}

/// What `fleet start`, `validate`, `cutover`, `rollback` or `cleanup` did with each
/// migration.
pub fn done(command: &str, migrations: &[MigrationOutcome]) -> String {
    let mut rows = vec![
        ["MIGRATION", "WAVE", "DID", "SECONDS", "DETAIL"]
            .map(String::from)
            .to_vec(),
    ];
    for m in migrations {
        rows.push(vec![
            m.migration.clone(),
            m.wave.to_string(),
            m.action.to_string(),
            if m.seconds > 0.0 {
                format!("{:.1}", m.seconds)
            } else {
                "-".into()
            },
            m.detail.clone(),
        ]);
    }
    let failed = migrations.iter().filter(|m| m.action == "failed").count();
    let refused = migrations.iter().filter(|m| m.action == "refused").count();
    let mut out = format!("fleet {command}:\n{}", table(&rows));
    if failed > 0 {
        out.push_str(&format!(
            "{failed} failed: each is a migration of its own (pgseal migrate status NAME; run the fleet command again to retry)\n"
        ));
    }
    if refused > 0 {
        out.push_str(&format!("{refused} refused: the detail says why\n"));
    }
    out
}
