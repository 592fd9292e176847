//! The fleet's speed-up: six local sources (two each at pgbench scale SCALE/4, SCALE/2
//! and SCALE) brought to replicating by `pgseal fleet start --parallel N` for N = 1, 2
//! and 3, against the sum of the same six `pgseal migrate start` run one after another
//! in the same run (the baseline). Each round aborts every migration before the next.
//! Prints each N's time, its speed-up over the sum, and the machine's load during it
//! (cores busy, from /proc/stat), where the two cores run out.
//!
//! Then the runners of a shared journal (issue 38): the same six to replicating and
//! validated by one `pgseal fleet run --parallel 1` against two such runners at once, the
//! journal in a PostgreSQL server started here (fsync on).
//!
//! Usage: `bench-fleet [SCALE] [ROUNDS]` (default 8, 1), as root, from the workspace
//! root. Run `bench/fleet`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgseal_bench::{Harness, median, timed};

/// Busy and total jiffies of all cores, from the first line of /proc/stat.
fn cpu() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat is empty")?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Cores busy on average between two readings.
fn cores_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let cores = std::thread::available_parallelism().map_or(2, usize::from) as f64;
    let total = (after.1 - before.1).max(1) as f64;
    (after.0 - before.0) as f64 / total * cores
}

fn abort_all(b: &Harness, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        b.json(&["migrate", "abort", name])?;
    }
    Ok(())
}

/// An inventory of the six sources whose migrations are named `PREFIX-mI` (an aborted
/// migration's name stays in the journal: each run takes new ones); its path and names.
fn inventory(b: &Harness, prefix: &str) -> anyhow::Result<(String, Vec<String>)> {
    let mut text =
        String::from("[defaults]\noptions = { replica_identity_full = true, no_follow = true }\n");
    let mut names = Vec::new();
    for i in 0..6 {
        let name = format!("{prefix}-m{i}");
        text.push_str(&format!(
            "\n[[source]]\nname = \"{name}\"\nsource = \"fleet-src-{i}\"\n"
        ));
        names.push(name);
    }
    let file = b.home.join(format!("{prefix}.toml"));
    std::fs::write(&file, text)?;
    Ok((file.display().to_string(), names))
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(8)?;
    let rounds: usize = args.next_or(1)?;
    pgseal_bench::on_harness(|b| run(b, scale.max(4), rounds.max(1)))
}

fn run(b: &Harness, scale: u32, rounds: usize) -> anyhow::Result<()> {
    let scales = [scale / 4, scale / 4, scale / 2, scale / 2, scale, scale];
    for (i, s) in scales.iter().enumerate() {
        let source = format!("fleet-src-{i}");
        b.json(&[
            "instance",
            "create",
            &source,
            "--storage",
            &format!("{}MiB", 1024 + s * 60),
            "--param",
            "wal_level=logical",
        ])?;
        b.pgbench_init(&source, *s)?;
    }

    let mut sums = Vec::new();
    let mut by_n: Vec<(u32, Vec<Duration>, Vec<f64>)> =
        (1..=3).map(|n| (n, Vec::new(), Vec::new())).collect();
    for round in 0..rounds {
        // The baseline: the six one after another.
        let _ = timed(Command::new("sync"));
        let mut sum = Duration::ZERO;
        let (_, names) = inventory(b, &format!("one-{round}"))?;
        for (i, name) in names.iter().enumerate() {
            sum += timed(b.pgseal(&[
                "migrate",
                "start",
                "--source",
                &format!("fleet-src-{i}"),
                "--name",
                name,
                "--replica-identity-full",
                "--no-follow",
            ]))?
            .elapsed;
        }
        abort_all(b, &names)?;
        sums.push(sum);
        // The fleet, N at a time, N rotated from round to round.
        for k in 0..3 {
            let (n, times, busy) = &mut by_n[(k + round) % 3];
            let (file, names) = inventory(b, &format!("fleet-{round}-{n}"))?;
            let _ = timed(Command::new("sync"));
            let before = cpu()?;
            let started = Instant::now();
            let out = b
                .pgseal(&["fleet", "start", &file, "--parallel", &n.to_string()])
                .output()?;
            let elapsed = started.elapsed();
            anyhow::ensure!(
                out.status.success(),
                "fleet start --parallel {n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            busy.push(cores_busy(before, cpu()?));
            times.push(elapsed);
            abort_all(b, &names)?;
        }
    }
    let sum = median(sums);
    println!("fleet: six sources (pgbench scales {scales:?}), {rounds} round(s), medians");
    println!(
        "  one after another (six `migrate start`): {:.2} s",
        sum.as_secs_f64()
    );
    let mut json = serde_json::json!({ "sum_seconds": sum.as_secs_f64(), "parallel": [] });
    for (n, times, busy) in by_n {
        let t = median(times);
        let mut busy = busy;
        busy.sort_by(f64::total_cmp);
        let cores = busy[busy.len() / 2];
        println!(
            "  fleet start --parallel {n}: {:.2} s = {:.2}x faster than one after another; {cores:.2} cores busy on average",
            t.as_secs_f64(),
            sum.as_secs_f64() / t.as_secs_f64()
        );
        json["parallel"]
            .as_array_mut()
            .expect("an array")
            .push(serde_json::json!({
                "n": n, "seconds": t.as_secs_f64(),
                "speedup": sum.as_secs_f64() / t.as_secs_f64(), "cores_busy": cores,
            }));
    }
    json["runners"] = runners(b, rounds)?;
    println!("{json}");
    Ok(())
}

/// One `fleet run --parallel 1` against two at once, over a PostgreSQL journal.
fn runners(b: &Harness, rounds: usize) -> anyhow::Result<serde_json::Value> {
    let server = pgseal_testkit::TestCluster::builder()
        .setting("fsync", "on")
        .start()?;
    let url = server.url("postgres");
    let shared = |args: &[&str]| {
        let mut c = b.pgseal(args);
        c.env("PGSEAL_JOURNAL", &url);
        c
    };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for count in [1, 2] {
            let (file, names) = inventory(b, &format!("run-{round}-{count}"))?;
            let _ = timed(Command::new("sync"));
            let started = Instant::now();
            let children: Vec<_> = (0..count)
                .map(|r| {
                    shared(&[
                        "fleet",
                        "run",
                        &file,
                        "--parallel",
                        "1",
                        "--poll",
                        "0.5",
                        "--runner",
                        &format!("bench-{r}"),
                        "--quiet",
                    ])
                    .spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut child in children {
                anyhow::ensure!(child.wait()?.success(), "a fleet runner failed");
            }
            let elapsed = started.elapsed();
            if count == 1 { &mut one } else { &mut two }.push(elapsed);
            for name in &names {
                anyhow::ensure!(
                    shared(&["migrate", "abort", name])
                        .output()?
                        .status
                        .success(),
                    "abort {name}"
                );
            }
        }
    }
    let (one, two) = (median(one), median(two));
    println!(
        "  fleet run, shared journal in PostgreSQL, to replicating and validated: one runner \
         --parallel 1 {:.2} s, two runners --parallel 1 each {:.2} s = {:.2}x faster",
        one.as_secs_f64(),
        two.as_secs_f64(),
        one.as_secs_f64() / two.as_secs_f64()
    );
    Ok(serde_json::json!({
        "one_runner_seconds": one.as_secs_f64(), "two_runners_seconds": two.as_secs_f64(),
        "speedup": one.as_secs_f64() / two.as_secs_f64(),
    }))
}
