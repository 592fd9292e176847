//! Validation cost, against a floor measured in the same run:
//! 1. floor: `COPY (SELECT * FROM t) TO STDOUT` of every pgbench table from both sides in
//!    parallel, discarded (reading the data once);
//! 2. `pgseal migrate validate` of the same pair, clean (target <= 1.5x the floor; rows/s
//!    per side, each side one core, target >= 1.5 M);
//! 3. the same with 10 scattered rows changed on the target behind replication's back
//!    (target <= 1.1x the clean run, all 10 found).
//!
//! Usage: `bench-validate [SCALE] [ROUNDS]` (default 50, 3), as root, from the workspace
//! root. Run `bench/validate`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pgseal_bench::{Harness, median};

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// COPY of every table from both instances at once, output discarded.
fn floor(b: &Harness, a: &str, t: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for table in TABLES {
        let mut children = Vec::new();
        for instance in [a, t] {
            children.push(
                b.program("psql")
                    .args(b.conn(instance)?)
                    .args([
                        "-d",
                        "postgres",
                        "-Atc",
                        &format!("COPY (SELECT * FROM {table}) TO STDOUT"),
                    ])
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        for mut c in children {
            if !c.wait()?.success() {
                bail!("COPY of {table} failed");
            }
        }
    }
    Ok(started.elapsed())
}

fn validate(b: &Harness) -> anyhow::Result<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let out = b.pgseal(&["migrate", "validate", "v", "--json"]).output()?;
    let elapsed = started.elapsed();
    if !matches!(out.status.code(), Some(0) | Some(11)) {
        bail!("validate: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((elapsed, serde_json::from_slice(&out.stdout)?))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let scale: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let result = run(&b, scale, rounds);
    let _ = b.pgseal(&["migrate", "abort", "v"]).output();
    let _ = b
        .pgseal(&["instance", "delete", "val-src", "--yes"])
        .output();
    result
}

fn run(b: &Harness, scale: u32, rounds: usize) -> anyhow::Result<()> {
    let storage = format!("{}MiB", 1024 + scale * 60);
    b.json(&[
        "instance",
        "create",
        "val-src",
        "--storage",
        &storage,
        "--param",
        "wal_level=logical",
    ])?;
    b.pgbench_init("val-src", scale)?;
    let out = b
        .pgseal(&[
            "migrate",
            "start",
            "--source",
            "val-src",
            "--target",
            "val-enc",
            "--name",
            "v",
            "--replica-identity-full",
        ])
        .output()?;
    if !out.status.success() {
        bail!("migrate start: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (mut t_floor, mut t_clean) = (vec![], vec![]);
    let mut rows = 0;
    for round in 0..rounds {
        for turn in 0..2 {
            let _ = Command::new("sync").status();
            if (round + turn) % 2 == 0 {
                t_floor.push(floor(b, "val-src", "val-enc")?);
            } else {
                let (t, report) = validate(b)?;
                if report["clean"] != true {
                    bail!("a clean pair did not validate clean: {report}");
                }
                rows = report["rows"].as_i64().unwrap_or(0);
                t_clean.push(t);
            }
        }
    }
    // Ten scattered rows changed on the target, replication bypassed.
    let accounts = i64::from(scale) * 100_000;
    let ids: Vec<String> = (0..10)
        .map(|i| (1 + i * accounts / 10 + 7).to_string())
        .collect();
    let out = b
        .program("psql")
        .args(b.conn("val-enc")?)
        .args([
            "-d",
            "postgres",
            "-c",
            &format!(
                "SET session_replication_role = replica; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN ({})",
                ids.join(", ")
            ),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "planting differences: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut t_dirty = vec![];
    let mut found = 0;
    for _ in 0..rounds {
        let (t, report) = validate(b)?;
        found = report["tables"]
            .as_array()
            .context("tables")?
            .iter()
            .find(|t| t["table"] == "public.pgbench_accounts")
            .and_then(|t| t["different"].as_array().map(Vec::len))
            .unwrap_or(0);
        t_dirty.push(t);
    }
    let (floor, clean, dirty) = (median(t_floor), median(t_clean), median(t_dirty));
    let per_side = rows as f64 / clean.as_secs_f64();
    println!(
        "validate benchmark: pgbench scale {scale} pair ({rows} rows a side), medians of {rounds} rounds"
    );
    println!(
        "  floor: COPY of every table, both sides in parallel   {:>7.2} s",
        floor.as_secs_f64()
    );
    println!(
        "  migrate validate, clean                              {:>7.2} s  ratio {:.2} (target <= 1.5); {:.2} M rows/s a side (one core each; target >= 1.5)",
        clean.as_secs_f64(),
        clean.as_secs_f64() / floor.as_secs_f64(),
        per_side / 1e6
    );
    println!(
        "  migrate validate, 10 scattered differences           {:>7.2} s  ratio {:.2} to clean (target <= 1.1); found {found} of 10",
        dirty.as_secs_f64(),
        dirty.as_secs_f64() / clean.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "scale": scale, "rows": rows, "rounds": rounds,
            "floor_s": floor.as_secs_f64(), "clean_s": clean.as_secs_f64(), "dirty_s": dirty.as_secs_f64(),
            "clean_to_floor": clean.as_secs_f64() / floor.as_secs_f64(),
            "dirty_to_clean": dirty.as_secs_f64() / clean.as_secs_f64(),
            "rows_per_s_per_side": per_side, "found": found,
        })
    );
    Ok(())
}
