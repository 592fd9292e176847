//! `pgseal fleet ...`: reads the inventory, turns each of its sources into the `pgseal
//! migrate` command the user would type, runs them through the fleet's runner a few at a
//! time, and hands the results to `output/fleet.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use pgseal_core::report::{History, MigrationReport};
use pgseal_core::{Journal, JournalError, Phase};
use pgseal_fleet::status::{Row, held_elsewhere, reports, rows};
use pgseal_fleet::{Inventory, InventoryLock, Source};
use serde::Serialize;

use super::fleet_jobs::{Done, job, load, run_jobs, runner};
use super::{Context, Outcome, print_json};
use crate::cli::{FleetArgs, FleetCommand, FleetWaveArgs};
use crate::exit;
use crate::output;
use pgseal_fleet::MigrationOutcome;

/// Runs one fleet command.
pub fn run(ctx: &Context, action: &FleetCommand) -> Outcome {
    match action {
        FleetCommand::Plan(args) => plan(ctx, args),
        FleetCommand::Run(args) => super::fleet_run::run(ctx, args),
        FleetCommand::Start(args) => start(ctx, args),
        FleetCommand::Status {
            fleet,
            serve: Some(addr),
            ..
        } => {
            let inventory = load(fleet)?;
            let server = super::metrics_server(addr)?;
            super::answer_metrics(&server, || {
                let journal = ctx.journal()?;
                let sources: Vec<&Source> = inventory.sources.iter().collect();
                let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                Ok((
                    reports(&journal, &sources, History::Latest)?
                        .into_iter()
                        .flatten()
                        .collect(),
                    super::leases_of(&journal, &names)?,
                ))
            });
            Ok(exit::code(exit::OK))
        }
        FleetCommand::Status {
            fleet,
            watch,
            interval,
            serve: None,
        } => status(ctx, fleet, *watch, *interval),
        FleetCommand::Validate(args) => validate(ctx, args),
        FleetCommand::Cutover(args) => cutover(ctx, args),
        FleetCommand::Rollback(args) => rollback(ctx, args),
        FleetCommand::Cleanup {
            wave,
            retire_source,
        } => cleanup(ctx, wave, *retire_source),
        FleetCommand::Report { fleet, output } => report(ctx, fleet, output.clone()),
    }
}

/// The inventory's lock, held while a command that changes its migrations runs; a second
/// such command on the same file is refused (exit 3).
fn lock(ctx: &Context, inventory: &Inventory) -> anyhow::Result<InventoryLock> {
    InventoryLock::try_acquire(&ctx.home.join("fleet").join("locks"), &inventory.path)
        .context("cannot lock the inventory")?
        .ok_or_else(|| {
            pgseal_local::instance::LocalError::InvalidInput(format!(
                "another pgseal fleet command is working on {}: wait for it to end",
                inventory.path.display()
            ))
            .into()
        })
}

/// Prints what `command` did with each of `sources`, in their order, and returns the exit
/// code (as [`finish`]).
fn summarise(
    ctx: &Context,
    command: &'static str,
    inventory: &Inventory,
    sources: &[&Source],
    mut outcomes: BTreeMap<String, MigrationOutcome>,
    refused_code: u8,
) -> Outcome {
    let done = Done {
        command,
        file: inventory.path.clone(),
        migrations: sources
            .iter()
            .filter_map(|s| outcomes.remove(&s.name))
            .collect(),
    };
    finish(ctx, &done, refused_code)
}

/// Prints `done` and returns the exit code: 1 when one failed, else 11 when a validation
/// found rows that differ, else `refused_code` when one was refused, else 0.
fn finish(ctx: &Context, done: &Done, refused_code: u8) -> Outcome {
    ctx.print(done, || output::fleet::done(done.command, &done.migrations))?;
    let any = |action: &str| done.migrations.iter().any(|m| m.action == action);
    Ok(exit::code(if any("failed") {
        exit::FAILURE
    } else if any("differs") {
        exit::VERIFY_FAILED
    } else if any("refused") {
        refused_code
    } else {
        exit::OK
    }))
}

/// The journal's phase of each source (`None`: not started).
fn phases(journal: &Journal, sources: &[&Source]) -> anyhow::Result<Vec<Option<(Phase, String)>>> {
    sources
        .iter()
        .map(|s| match journal.migration(&s.name) {
            Ok(m) => Ok(Some((m.phase, m.spec.source))),
            Err(JournalError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })
        .collect()
}

/// One source as `fleet plan` shows it.
#[derive(Debug, Serialize)]
struct PlanRow {
    name: String,
    source: String,
    wave: u32,
    /// The phase of its migration, when it has begun (then it is not planned again).
    phase: Option<Phase>,
    /// Whether preflight ran (false: `error` says why).
    planned: bool,
    error: Option<String>,
    server_version: Option<String>,
    target_major: Option<u64>,
    source_bytes: Option<u64>,
    databases: Vec<String>,
    strategy: Option<String>,
    recommended: Option<String>,
    blockers: Vec<String>,
    warnings: Vec<String>,
    /// Seconds `start` is estimated to take to reach replicating, from this machine's
    /// measured rates (`None`: nothing measured for its strategy yet).
    estimated_start_seconds: Option<f64>,
}

impl PlanRow {
    /// A source whose migration has begun.
    fn begun(s: &Source, phase: Option<Phase>) -> PlanRow {
        PlanRow {
            name: s.name.clone(),
            source: s.source.clone(),
            wave: s.wave,
            phase,
            planned: false,
            error: None,
            server_version: None,
            target_major: None,
            source_bytes: None,
            databases: Vec::new(),
            strategy: None,
            recommended: None,
            blockers: Vec::new(),
            warnings: Vec::new(),
            estimated_start_seconds: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Plan {
    file: PathBuf,
    ready: bool,
    sources: Vec<PlanRow>,
    rates: pgseal_fleet::estimate::Rates,
}

fn findings(report: &serde_json::Value, severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["severity"] == severity)
        .map(|f| {
            format!(
                "{}: {}",
                f["id"].as_str().unwrap_or("?"),
                f["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn plan(ctx: &Context, args: &FleetArgs) -> Outcome {
    let inventory = load(args)?;
    let journal = ctx.journal()?;
    let measured: Vec<_> = journal
        .list()?
        .iter()
        .filter_map(|m| {
            pgseal_core::report::gather_with(&journal, &m.spec.name, History::Latest).ok()
        })
        .collect();
    let rates = pgseal_fleet::estimate::Rates::measure(&measured);
    let runner = runner(ctx, args.parallel, false)?;
    let all: Vec<&Source> = inventory.sources.iter().collect();
    let phases = phases(&journal, &all)?;
    // A source whose migration has begun is not planned again (its own slot and target
    // would read as clashes): its phase is shown instead.
    let mut jobs = Vec::new();
    for (s, phase) in all.iter().zip(&phases) {
        if phase.is_none() {
            let words = ["plan".to_string()].into_iter().chain(s.plan_args());
            jobs.push(job(&inventory, s, words.collect())?);
        }
    }
    let results = run_jobs(ctx, &runner, jobs);
    // A source another migration holds is a blocker of its own: `start` would refuse it.
    let held_by = held_elsewhere(&journal, &all)?;
    let sources: Vec<PlanRow> = all
        .iter()
        .zip(&phases)
        .map(|(s, phase)| {
            let Some(f) = results.iter().find(|f| f.migration == s.name) else {
                return PlanRow::begun(s, phase.as_ref().map(|p| p.0));
            };
            let r = &f.output;
            let planned = matches!(f.exit_code, Some(0) | Some(3)) && r.is_object();
            let strategy = r["strategy"].as_str().map(str::to_string);
            let bytes = r["source_bytes"].as_u64();
            let estimate = match (&strategy, bytes) {
                (Some(strategy), Some(bytes)) => {
                    rates.estimate(strategy, bytes).map(|d| d.as_secs_f64())
                }
                _ => None,
            };
            PlanRow {
                name: s.name.clone(),
                source: s.source.clone(),
                wave: s.wave,
                phase: None,
                planned,
                error: (!planned).then(|| f.why()),
                server_version: r["server_version"].as_str().map(str::to_string),
                target_major: r["target_major"].as_u64(),
                source_bytes: bytes,
                databases: r["databases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| d["carried"] == true)
                    .filter_map(|d| d["name"].as_str().map(str::to_string))
                    .collect(),
                strategy,
                recommended: r["recommended"].as_str().map(str::to_string),
                blockers: held_by
                    .get(&s.name)
                    .map(|other| format!("held: {} is already in migration {other}", s.source))
                    .into_iter()
                    .chain(findings(r, "blocker"))
                    .collect(),
                warnings: findings(r, "warning"),
                estimated_start_seconds: estimate,
            }
        })
        .collect();
    let ready = sources
        .iter()
        .all(|s| s.phase.is_some() || (s.planned && s.blockers.is_empty()));
    let plan = Plan {
        file: inventory.path.clone(),
        ready,
        sources,
        rates,
    };
    ctx.print(&plan, || {
        let rows: Vec<output::fleet::PlanLine<'_>> = plan
            .sources
            .iter()
            .map(|s| output::fleet::PlanLine {
                name: &s.name,
                source: &s.source,
                wave: s.wave,
                phase: s.phase.map(Phase::as_str),
                error: s.error.as_deref(),
                version: s.server_version.as_deref(),
                target_major: s.target_major,
                bytes: s.source_bytes,
                databases: &s.databases,
                strategy: s.strategy.as_deref(),
                recommended: s.recommended.as_deref(),
                blockers: &s.blockers,
                warnings: &s.warnings,
                estimate: s.estimated_start_seconds,
            })
            .collect();
        output::fleet::plan(&rows, plan.ready)
    })?;
    Ok(exit::code(if ready {
        exit::OK
    } else {
        exit::PRECONDITION
    }))
}

fn start(ctx: &Context, args: &FleetArgs) -> Outcome {
    let inventory = load(args)?;
    let _lock = lock(ctx, &inventory)?;
    let journal = ctx.journal()?;
    let sources = inventory.by_wave();
    // A source held by a migration outside the file, or a name the journal keeps for
    // another source: refused before anything starts.
    let mut conflicts = Vec::new();
    let held_by = held_elsewhere(&journal, &sources)?;
    for s in &sources {
        if let Some(other) = held_by.get(&s.name) {
            conflicts.push(format!(
                "{}:{}: source `{}` ({}) is already in migration {other}; a source is never in two migrations (abort or clean up {other} first)",
                inventory.path.display(),
                s.line,
                s.name,
                s.source
            ));
        }
    }
    let phases = phases(&journal, &sources)?;
    for (s, phase) in sources.iter().zip(&phases) {
        if let Some((_, recorded)) = phase
            && *recorded != s.source
        {
            conflicts.push(format!(
                "{}:{}: migration {} exists for source {recorded}, but the file gives {}",
                inventory.path.display(),
                s.line,
                s.name,
                s.source
            ));
        }
    }
    if !conflicts.is_empty() {
        anyhow::bail!(pgseal_local::instance::LocalError::InvalidInput(
            conflicts.join("\n")
        ));
    }
    let mut outcomes: BTreeMap<String, MigrationOutcome> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut actions = BTreeMap::new();
    for (s, phase) in sources.iter().zip(&phases) {
        let no_follow = s.options.no_follow == Some(true);
        let words: Vec<String> = match phase.as_ref().map(|p| p.0) {
            None => ["start".to_string()]
                .into_iter()
                .chain(s.start_args())
                .collect(),
            Some(Phase::Running | Phase::Failed) => {
                let mut w = vec!["resume".to_string(), s.name.clone()];
                if no_follow {
                    w.push("--no-follow".into());
                }
                w
            }
            Some(Phase::Aborted | Phase::Aborting) => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(
                        s,
                        "refused",
                        format!(
                            "aborted: its name stays in the journal; give the source another name to migrate it again (or finish the abort: pgseal migrate abort {})",
                            s.name
                        ),
                    ),
                );
                continue;
            }
            Some(Phase::CuttingOver) => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(
                        s,
                        "refused",
                        format!(
                            "its cutover was interrupted: pgseal migrate resume {} lifts the fence and returns it to replicating",
                            s.name
                        ),
                    ),
                );
                continue;
            }
            Some(other) => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(
                        s,
                        "skipped",
                        format!("already {}", other.as_str()),
                    ),
                );
                continue;
            }
        };
        actions.insert(
            s.name.clone(),
            if phase.is_some() {
                "resumed"
            } else {
                "started"
            },
        );
        jobs.push(job(&inventory, s, words)?);
    }
    let results = run_jobs(ctx, &runner(ctx, args.parallel, false)?, jobs);
    for f in &results {
        let s = sources
            .iter()
            .find(|s| s.name == f.migration)
            .expect("a job of the fleet's");
        outcomes.insert(
            s.name.clone(),
            MigrationOutcome::of_run(s, actions[&s.name], f, "replicating".into()),
        );
    }
    summarise(
        ctx,
        "start",
        &inventory,
        &sources,
        outcomes,
        exit::PRECONDITION,
    )
}

/// What `fleet status` prints.
#[derive(Debug, Serialize)]
struct Status {
    file: PathBuf,
    generated_ms: i64,
    migrations: Vec<Row>,
}

fn status(ctx: &Context, args: &FleetArgs, watch: bool, interval: f64) -> Outcome {
    use std::io::IsTerminal;
    let inventory = load(args)?;
    let redraw = watch && std::io::stdout().is_terminal() && !ctx.json;
    loop {
        let journal = ctx.journal()?;
        let status = Status {
            file: inventory.path.clone(),
            generated_ms: pgseal_core::journal::now_ms(),
            migrations: rows(&journal, &inventory)?,
        };
        super::show_frame(ctx, redraw, &status, || {
            output::fleet::status(&status.migrations, status.generated_ms)
        })?;
        if !watch {
            return Ok(exit::code(exit::OK));
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval.max(0.2)));
    }
}

fn validate(ctx: &Context, args: &FleetArgs) -> Outcome {
    let inventory = load(args)?;
    let _lock = lock(ctx, &inventory)?;
    let journal = ctx.journal()?;
    let sources: Vec<&Source> = inventory.sources.iter().collect();
    let phases = phases(&journal, &sources)?;
    let mut outcomes = BTreeMap::new();
    let mut jobs = Vec::new();
    for (s, phase) in sources.iter().zip(&phases) {
        match phase.as_ref().map(|p| p.0) {
            Some(Phase::Replicating) => {
                jobs.push(job(&inventory, s, vec!["validate".into(), s.name.clone()])?)
            }
            other => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(s, "skipped", not_replicating(other)),
                );
            }
        }
    }
    let results = run_jobs(ctx, &runner(ctx, args.parallel, false)?, jobs);
    for f in &results {
        let s = sources
            .iter()
            .find(|s| s.name == f.migration)
            .expect("ours");
        let clean = f.output["clean"].as_bool();
        let line = match clean {
            Some(true) => format!("clean: {} rows compared", f.output["rows"]),
            Some(false) => format!(
                "{} rows differ (pgseal migrate validate {} shows which)",
                f.output["mismatched_rows"], s.name
            ),
            None => String::new(),
        };
        // Exit 11 is "rows differ", a finding, not a failure of the command.
        let mut outcome = MigrationOutcome::of_run(s, "validated", f, line.clone());
        if f.exit_code == Some(i32::from(exit::VERIFY_FAILED)) && clean == Some(false) {
            outcome.action = "differs";
            outcome.detail = line;
        }
        outcomes.insert(s.name.clone(), outcome);
    }
    summarise(ctx, "validate", &inventory, &sources, outcomes, exit::OK)
}

fn not_replicating(phase: Option<Phase>) -> String {
    match phase {
        None => "not started (pgseal fleet start)".into(),
        Some(p) => format!("{}, not replicating", p.as_str()),
    }
}

/// What a wave command does with one migration of the wave.
enum Choice {
    /// Runs `pgseal migrate` with these words.
    Run(Vec<String>),
    /// Leaves it, saying why (nothing to do).
    Skip(String),
    /// Refuses it, saying why (it is not ready).
    Refuse(String),
}

/// Runs `command` over the wave: `choose` decides for each migration from its journal
/// (`None`: not started); `done` names what a run that succeeded did.
fn wave_command(
    ctx: &Context,
    args: &FleetWaveArgs,
    command: &'static str,
    done: &'static str,
    choose: impl Fn(&Source, Option<&MigrationReport>) -> Choice,
) -> Outcome {
    let inventory = load(&args.fleet)?;
    let _lock = lock(ctx, &inventory)?;
    let journal = ctx.journal()?;
    let sources = inventory.wave(Some(args.wave))?;
    let reports = reports(&journal, &sources, History::Latest)?;
    let mut outcomes = BTreeMap::new();
    let mut jobs = Vec::new();
    for (s, report) in sources.iter().zip(&reports) {
        match choose(s, report.as_ref()) {
            Choice::Run(words) => jobs.push(job(&inventory, s, words)?),
            Choice::Skip(why) => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(s, "skipped", why),
                );
            }
            Choice::Refuse(why) => {
                outcomes.insert(
                    s.name.clone(),
                    MigrationOutcome::without_run(s, "refused", why),
                );
            }
        }
    }
    let runner = runner(ctx, args.fleet.parallel, !args.keep_going)?;
    for f in run_jobs(ctx, &runner, jobs) {
        let s = sources
            .iter()
            .find(|s| s.name == f.migration)
            .expect("ours");
        let line = f.output["write_pause_ms"]
            .as_u64()
            .map_or_else(String::new, |ms| format!("writes paused {ms} ms"));
        outcomes.insert(s.name.clone(), MigrationOutcome::of_run(s, done, &f, line));
    }
    summarise(
        ctx,
        command,
        &inventory,
        &sources,
        outcomes,
        exit::PRECONDITION,
    )
}

/// `pgseal migrate WORD NAME` with the source's switch.
fn switching(word: &str, s: &Source) -> Choice {
    Choice::Run(
        [word.to_string(), s.name.clone()]
            .into_iter()
            .chain(s.switch_args())
            .collect(),
    )
}

fn cutover(ctx: &Context, args: &FleetWaveArgs) -> Outcome {
    wave_command(ctx, args, "cutover", "cut over", |s, report| {
        let phase = report.map(|r| r.migration.phase);
        match (phase, report.and_then(|r| r.validation.as_ref())) {
            (Some(Phase::CutOver | Phase::CleanedUp), _) => Choice::Skip("already cut over".into()),
            (Some(Phase::Replicating), Some(v)) if v.clean => switching("cutover", s),
            (Some(Phase::Replicating), Some(v)) => Choice::Refuse(format!(
                "its last validation found {} differing rows: fix them and validate again",
                v.mismatched_rows
            )),
            (Some(Phase::Replicating), None) => {
                Choice::Refuse("never validated: pgseal fleet validate first".into())
            }
            (other, _) => Choice::Refuse(not_replicating(other)),
        }
    })
}

fn rollback(ctx: &Context, args: &FleetWaveArgs) -> Outcome {
    wave_command(
        ctx,
        args,
        "rollback",
        "rolled back",
        |s, report| match report.map(|r| r.migration.phase) {
            Some(Phase::CutOver) => switching("rollback", s),
            Some(p) => Choice::Skip(format!("{}, not cut over", p.as_str())),
            None => Choice::Skip("not started".into()),
        },
    )
}

fn cleanup(ctx: &Context, args: &FleetWaveArgs, retire_source: bool) -> Outcome {
    wave_command(ctx, args, "cleanup", "cleaned up", |s, report| {
        let mut words = vec!["cleanup".to_string(), s.name.clone()];
        match report.map(|r| r.migration.phase) {
            Some(Phase::CutOver) => {
                if retire_source {
                    words.push("--retire-source".into());
                }
                Choice::Run(words)
            }
            // The source is the database again: never retired.
            Some(Phase::RolledBack) => Choice::Run(words),
            Some(p) => Choice::Skip(format!("{}: nothing to clean up", p.as_str())),
            None => Choice::Skip("not started".into()),
        }
    })
}

fn report(ctx: &Context, args: &FleetArgs, output: Option<PathBuf>) -> Outcome {
    let inventory = load(args)?;
    let journal = ctx.journal()?;
    let sources: Vec<&Source> = inventory.sources.iter().collect();
    let reports = reports(&journal, &sources, History::Whole)?;
    // Each migration's own page, written where `migrate report` writes it, so that the
    // fleet's links lead somewhere current.
    let mut links = Vec::new();
    for (s, r) in sources.iter().zip(&reports) {
        links.push(match r {
            Some(report) => Some(super::migrate::write_report_of(
                &ctx.home, &s.name, report, None,
            )?),
            None => None,
        });
    }
    let migrations: Vec<pgseal_report::fleet::FleetMigration<'_>> = sources
        .iter()
        .zip(&reports)
        .zip(links)
        .map(|((s, r), link)| pgseal_report::fleet::FleetMigration {
            name: &s.name,
            source: &s.source,
            wave: s.wave,
            report: r.as_ref(),
            link,
        })
        .collect();
    let page = pgseal_report::fleet::render(&inventory.path.display().to_string(), &migrations)?;
    let stem = inventory
        .path
        .file_stem()
        .map_or_else(|| "fleet".to_string(), |s| s.to_string_lossy().to_string());
    let path = output.unwrap_or_else(|| ctx.home.join("fleet").join(format!("{stem}.html")));
    super::migrate::write_page(&ctx.home, &path, &page)?;
    if ctx.json {
        print_json(&serde_json::json!({ "report": path, "migrations": migrations.len() }))?;
    } else {
        println!("{}", path.display());
    }
    Ok(exit::code(exit::OK))
}
