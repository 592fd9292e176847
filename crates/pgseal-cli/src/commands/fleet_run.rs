//! `pgseal fleet run`: one runner of a fleet. It looks at the journal, asks
//! [`pgseal_fleet::drive::next`] what each migration needs, runs those commands (up to
//! `--parallel` at once, each child under its own lease in the runner's name), and looks
//! again, until every migration is where the file lets a runner take it.

use std::collections::BTreeMap;
use std::time::Duration;

use pgseal_fleet::drive::{Next, next};
use pgseal_fleet::{Inventory, MigrationOutcome, Source};

use super::fleet_jobs::{Done, job, load, run_jobs, runner_with_slots};
use super::{Context, Outcome};
use crate::cli::FleetRunArgs;
use crate::{exit, output};

/// The `migrate` words that do `next` for source `s`.
fn words(s: &Source, next: &Next) -> Option<Vec<String>> {
    let verb = next.verb()?.to_string();
    let no_follow = s.options.no_follow == Some(true);
    Some(match next {
        Next::Start => [verb].into_iter().chain(s.start_args()).collect(),
        Next::Resume => {
            let mut w = vec![verb, s.name.clone()];
            if no_follow {
                w.push("--no-follow".into());
            }
            w
        }
        Next::Cutover => [verb, s.name.clone()]
            .into_iter()
            .chain(s.switch_args())
            .collect(),
        _ => vec![verb, s.name.clone()],
    })
}

/// A runner's name as a directory name (for its slots).
fn dir_name(runner: &str) -> String {
    runner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the runner knows of one migration when it stops.
#[derive(Default)]
struct Kept {
    runs: u32,
    failures: u32,
    last_error: Option<String>,
    seconds: f64,
}

/// Runs `fleet run`.
pub fn run(ctx: &Context, args: &FleetRunArgs) -> Outcome {
    let inventory = load(&args.fleet)?;
    let me = ctx.journal.runner.id.clone();
    let slots = ctx.home.join("fleet").join("runners").join(dir_name(&me));
    let mut runner = runner_with_slots(ctx, args.fleet.parallel, false, &slots)?;
    // Its children record this runner's name with their leases and steps.
    runner.env.push(("PGSEAL_RUNNER".into(), me.clone()));
    tracing::info!(runner = %me, file = %inventory.path.display(), "fleet runner starts");
    let mut kept: BTreeMap<String, Kept> = BTreeMap::new();
    let mut seed = u64::from(std::process::id()) ^ pgseal_core::journal::now_ms() as u64 | 1;
    let poll = Duration::from_secs_f64(args.poll.max(0.2));
    let mut ran_once = false;
    let last = loop {
        let plan = look(ctx, &inventory, &me)?;
        if ran_once {
            break plan;
        }
        let given_up = |name: &str| kept.get(name).is_some_and(|k| k.failures >= args.attempts);
        let mut jobs = Vec::new();
        for (name, step) in &plan {
            let s = source(&inventory, name);
            if let (false, Some(words)) = (given_up(name), words(s, step)) {
                jobs.push(job(&inventory, s, words)?);
            }
        }
        // A round takes at most this runner's share, in an order of its own, so that
        // runners starting together seldom reach for the same migration; the next look
        // sees what the others took meanwhile.
        shuffle(&mut jobs, &mut seed);
        jobs.truncate(runner.slots.count());
        if jobs.is_empty() {
            let waiting = plan.iter().any(|(name, step)| {
                matches!(step, Next::Wait(_)) || (step.verb().is_some() && !given_up(name))
            });
            if !waiting || args.once {
                break plan;
            }
            std::thread::sleep(poll);
            continue;
        }
        for f in run_jobs(ctx, &runner, jobs) {
            let k = kept.entry(f.migration.clone()).or_default();
            k.runs += 1;
            k.seconds += (f.finished_ms - f.started_ms).max(0) as f64 / 1000.0;
            match f.exit_code.and_then(|c| u8::try_from(c).ok()) {
                Some(exit::OK) => k.last_error = None,
                // Another runner has it, or took it from this one: not a failure of the
                // migration; the next look sees who drives it.
                Some(exit::BUSY | exit::LEASE_LOST) => {
                    tracing::info!(runner = %me, migration = %f.migration, why = %f.why(), "another runner drives it");
                }
                _ => {
                    k.failures += 1;
                    k.last_error = Some(f.why());
                    tracing::warn!(runner = %me, migration = %f.migration, failures = k.failures, why = %f.why(), "a migration command failed");
                }
            }
        }
        // With --once, one more look, for the summary.
        ran_once = args.once;
    };
    let outcomes: Vec<MigrationOutcome> = last
        .iter()
        .map(|(name, step)| {
            let s = source(&inventory, name);
            let k = kept.remove(name).unwrap_or_default();
            let (action, detail) = match (step, k.last_error) {
                (_, Some(error)) if k.failures >= args.attempts => ("failed", error),
                (Next::Done(why), _) => ("done", why.clone()),
                (Next::Wait(why), _) => ("waiting", why.clone()),
                (other, _) => (
                    "waiting",
                    format!("next: migrate {}", other.verb().unwrap_or("?")),
                ),
            };
            MigrationOutcome {
                migration: name.clone(),
                wave: s.wave,
                action,
                detail: format!("{detail} ({} command(s) run here)", k.runs),
                output: serde_json::Value::Null,
                seconds: k.seconds,
            }
        })
        .collect();
    let done = Done {
        command: "run",
        file: inventory.path.clone(),
        migrations: outcomes,
    };
    ctx.print(&done, || {
        output::fleet::done(done.command, &done.migrations)
    })?;
    Ok(exit::code(
        if done.migrations.iter().any(|m| m.action == "failed") {
            exit::FAILURE
        } else {
            exit::OK
        },
    ))
}

/// One look at the journal: what each migration needs next, those another runner holds
/// now waiting for it.
fn look(ctx: &Context, inventory: &Inventory, me: &str) -> anyhow::Result<Vec<(String, Next)>> {
    let rows = pgseal_fleet::status::rows(&ctx.journal()?, inventory)?;
    let leased: BTreeMap<String, String> = rows
        .iter()
        .filter_map(|r| Some((r.name.clone(), r.runner.clone()?)))
        .filter(|(_, runner)| runner != me)
        .collect();
    Ok(next(
        inventory,
        &rows,
        &leased,
        pgseal_core::journal::now_ms(),
    ))
}

/// The inventory's source of that name.
fn source<'a>(inventory: &'a Inventory, name: &str) -> &'a Source {
    inventory
        .sources
        .iter()
        .find(|s| s.name == name)
        .expect("a source of the inventory")
}

/// Shuffles `items` (Fisher-Yates, xorshift64 from `seed`): an order, not a secret.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        items.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}
