//! What every fleet command shares: the inventory checked line by line with `migrate
//! start`'s own parser, and the runner that turns each source into a `pgseal migrate`
//! command with the environment it needs.

use anyhow::Context as _;
use clap::Parser as _;
use pgseal_fleet::{Event, Finished, Inventory, InventoryError, Job, Runner, Slots, Source};

use super::Context;
use crate::cli::{Cli, FleetArgs};

/// What `fleet start`, `run`, `validate`, `cutover`, `rollback` and `cleanup` print.
#[derive(Debug, serde::Serialize)]
pub struct Done {
    /// The fleet command.
    pub command: &'static str,
    /// The inventory.
    pub file: std::path::PathBuf,
    /// What it did with each migration, in the file's order.
    pub migrations: Vec<pgseal_fleet::MigrationOutcome>,
}

/// The inventory, with every source's `migrate start` line checked by the same parser
/// as a typed one: a bad value is named with the file, the line and the field before
/// anything runs.
pub fn load(args: &FleetArgs) -> anyhow::Result<Inventory> {
    let inventory = Inventory::read(&args.file)?;
    for s in &inventory.sources {
        let line = ["pgseal", "migrate", "start"]
            .into_iter()
            .map(String::from)
            .chain(s.start_args());
        if let Err(e) = Cli::try_parse_from(line) {
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return Err(InventoryError::Invalid {
                path: inventory.path.clone(),
                line: s.line,
                message: format!("source `{}`: {}", s.name, fields_for_flags(first)),
            }
            .into());
        }
    }
    Ok(inventory)
}

/// A parser message with each `--flag-name <VALUE>` it quotes named as the inventory's
/// field (`max_slot_retention`).
fn fields_for_flags(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find("'--") {
        out.push_str(&rest[..at]);
        let flag = &rest[at + 3..];
        let end = flag.find(['\'', ' ', '=']).unwrap_or(flag.len());
        let field = match &flag[..end] {
            "database" => "databases".to_string(),
            other => other.replace('-', "_"),
        };
        out.push_str(&format!("field `{field}`"));
        let close = flag[end..].find('\'').map_or(flag.len(), |i| end + i + 1);
        rest = &flag[close..];
    }
    out.push_str(rest);
    out
}

/// The environment every migrate command of the fleet gets: pgseal's own settings, the
/// AWS SDK's, libpq's, and the basics; nothing else of the fleet's environment.
fn common_env() -> Vec<(String, String)> {
    const BASICS: [&str; 6] = [
        "HOME",
        "USER",
        "TMPDIR",
        "XDG_DATA_HOME",
        "TZ",
        "RUST_BACKTRACE",
    ];
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PGSEAL_")
                || k.starts_with("AWS_")
                || (k.starts_with("PG") && !k.starts_with("PGSEAL"))
                || BASICS.contains(&k.as_str())
        })
        .collect()
}

/// `PGPASSWORD` for a source whose `password_env` names where it is; an unset variable
/// is refused before anything runs.
fn source_env(inventory: &Inventory, s: &Source) -> anyhow::Result<Vec<(String, String)>> {
    let Some(var) = &s.password_env else {
        return Ok(Vec::new());
    };
    let password = std::env::var(var).map_err(|_| InventoryError::Invalid {
        path: inventory.path.clone(),
        line: s.line,
        message: format!(
            "source `{}`: field `password_env`: the environment variable {var} is not set",
            s.name
        ),
    })?;
    Ok(vec![("PGPASSWORD".into(), password)])
}

/// A runner of this pgseal, with `parallel` slots (default: the cores) shared by every
/// fleet command of this home.
pub fn runner(ctx: &Context, parallel: Option<u32>, stop: bool) -> anyhow::Result<Runner> {
    runner_with_slots(ctx, parallel, stop, &ctx.home.join("fleet").join("slots"))
}

/// [`runner`] with slots of its own in `slots` (a `fleet run` runner's: several runners
/// of one home each run their own `--parallel`).
pub fn runner_with_slots(
    ctx: &Context,
    parallel: Option<u32>,
    stop: bool,
    slots: &std::path::Path,
) -> anyhow::Result<Runner> {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let count = parallel.map_or(cores, |n| n as usize);
    let mut common_args = vec!["--home".to_string(), ctx.home.display().to_string()];
    if let Some(file) = &ctx.passphrase_file {
        common_args.extend(["--passphrase-file".into(), file.display().to_string()]);
    }
    common_args.push("--json".into());
    Ok(Runner {
        program: std::env::current_exe().context("cannot find pgseal's own program")?,
        common_args,
        env: common_env()
            .into_iter()
            .chain(
                ctx.journal_env()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v)),
            )
            .collect(),
        slots: Slots::new(slots, count).context("cannot make the fleet's slots")?,
        stop_at_first_failure: stop,
    })
}

/// A job that runs `pgseal migrate WORDS...` for source `s`.
pub fn job(inventory: &Inventory, s: &Source, words: Vec<String>) -> anyhow::Result<Job> {
    Ok(Job {
        migration: s.name.clone(),
        args: ["migrate".to_string()].into_iter().chain(words).collect(),
        env: source_env(inventory, s)?,
    })
}

/// Runs `jobs`, showing progress (bars on a terminal, JSON lines otherwise).
pub fn run_jobs(ctx: &Context, runner: &Runner, jobs: Vec<Job>) -> Vec<Finished> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let progress = super::progress::FleetProgress::new(ctx);
    runner.run(jobs, &|e: Event<'_>| progress.show(&e))
}
