//! Validation cost, against a floor measured in the same run:
//! 1. floor: `COPY (SELECT * FROM t) TO STDOUT` of every pgbench table from both sides in
//!    parallel, discarded (reading the data once);
//! 2. `pgseal migrate validate` of the same pair, clean (target <= 1.5x the floor; rows/s
//!    per side, each side one core, target >= 1.5 M);
//! 3. under writes: pgbench TPC-B (4 clients) on the source while `validate` runs, against
//!    pgbench alone for as long: the longest time validation held a table locked on the
//!    source (`source_lock_max_ms`, target <= 100 ms), false mismatches (target 0), and
//!    pgbench's tps and average latency with and without validation;
//! 4. the same with 10 scattered rows changed on the target behind replication's back,
//!    alternating with clean runs of the pair in the same state (the rows changed back):
//!    target <= 1.1x the clean runs, all 10 found;
//! 5. `pgseal migrate verify` (the catalogs and what no row comparison sees) of the same
//!    pair, and of a pair whose schema has 2,000 tables (each with a key, an index, a
//!    default and a comment), against `pg_dump --schema-only` of both sides in parallel
//!    (what a DBA would run to compare them by hand).
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

/// `pg_dump --schema-only` of both instances at once, output discarded.
fn schema_dumps(b: &Harness, a: &str, t: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut children = Vec::new();
    for instance in [a, t] {
        children.push(
            b.program("pg_dump")
                .args(b.conn(instance)?)
                .args(["-d", "postgres", "--schema-only"])
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    for mut c in children {
        if !c.wait()?.success() {
            bail!("pg_dump --schema-only failed");
        }
    }
    Ok(started.elapsed())
}

/// `migrate verify NAME`, which must be clean; its time and object count.
fn verify(b: &Harness, name: &str) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let out = b.pgseal(&["migrate", "verify", name, "--json"]).output()?;
    let elapsed = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    if report["clean"] != true {
        bail!("a clean pair did not verify clean: {report}");
    }
    let objects = report["databases"]["postgres"]["objects"]
        .as_u64()
        .unwrap_or(0);
    Ok((elapsed, objects))
}

/// Alternating rounds of `migrate verify NAME` and the pg_dump floor: medians of each, and
/// the objects compared.
fn verify_rounds(
    b: &Harness,
    name: &str,
    source: &str,
    target: &str,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let (mut dumps, mut verifies, mut objects) = (vec![], vec![], 0);
    for round in 0..rounds {
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                dumps.push(schema_dumps(b, source, target)?);
            } else {
                let (t, n) = verify(b, name)?;
                verifies.push(t);
                objects = n;
            }
        }
    }
    Ok((median(verifies), median(dumps), objects))
}

/// A second pair whose schema has 2,000 tables, migrated as `w`.
fn wide_pair(b: &Harness) -> anyhow::Result<()> {
    b.json(&[
        "instance",
        "create",
        "wide-src",
        "--storage",
        "1GiB",
        "--param",
        "wal_level=logical",
    ])?;
    // One statement at a time (`psql -f -` commits each): 2,000 tables in one transaction
    // would need more locks than a default server has.
    let mut script = String::from("CREATE SCHEMA wide;\n");
    for i in 1..=2000 {
        script.push_str(&format!(
            "CREATE TABLE wide.t{i} (id int PRIMARY KEY, v text DEFAULT 'x', at timestamptz);\n\
             CREATE INDEX ON wide.t{i} (at);\n\
             COMMENT ON TABLE wide.t{i} IS 'table {i}';\n"
        ));
    }
    let mut psql = b
        .program("psql")
        .args(b.conn("wide-src")?)
        .args(["-d", "postgres", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        psql.stdin
            .take()
            .context("psql's stdin")?
            .write_all(script.as_bytes())?;
    }
    let out = psql.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "making 2,000 tables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = b
        .pgseal(&[
            "migrate",
            "start",
            "--source",
            "wide-src",
            "--target",
            "wide-enc",
            "--name",
            "w",
            "--no-follow",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "migrate start (wide): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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

/// pgbench TPC-B on the source for `seconds`, 4 clients, its report on stdout.
fn pgbench(b: &Harness, seconds: u32) -> anyhow::Result<std::process::Child> {
    Ok(b.program("pgbench")
        .args(b.conn("val-src")?)
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "postgres",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

/// `(tps, average latency in ms)` from pgbench's report.
fn pgbench_figures(out: &std::process::Output) -> anyhow::Result<(f64, f64)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let figure = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("no `{prefix}` in pgbench's report: {text}"))
    };
    Ok((figure("tps = ")?, figure("latency average = ")?))
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(50)?;
    let rounds: usize = args.next_or(3)?;
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let result = run(&b, scale, rounds);
    for name in ["v", "w"] {
        let _ = b.pgseal(&["migrate", "abort", name]).output();
    }
    for instance in ["val-src", "wide-src"] {
        let _ = b
            .pgseal(&["instance", "delete", instance, "--yes"])
            .output();
    }
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
    let (floor, clean) = (median(t_floor), median(t_clean));
    let (verify_pgbench, dump_pgbench, objects_pgbench) =
        verify_rounds(b, "v", "val-src", "val-enc", rounds)?;
    // Under writes: pgbench alone, then pgbench while validation runs, for as long.
    let seconds = (clean.as_secs_f64() * rounds as f64 + 2.0).ceil() as u32;
    let alone = pgbench(b, seconds)?.wait_with_output()?;
    let writer = pgbench(b, seconds)?;
    let (mut lock_max, mut false_mismatches, mut suspended, mut passes) = (0.0f64, 0, 0, 0);
    let busy = Instant::now();
    while busy.elapsed().as_secs_f64() + clean.as_secs_f64() < f64::from(seconds) || passes == 0 {
        let (_, report) = validate(b)?;
        passes += 1;
        lock_max = lock_max.max(report["source_lock_max_ms"].as_f64().unwrap_or(f64::NAN));
        false_mismatches += report["mismatched_rows"].as_i64().unwrap_or(-1);
        suspended += report["tables"]
            .as_array()
            .context("tables")?
            .iter()
            .filter(|t| t["state"] == "suspended")
            .count();
    }
    let beside = writer.wait_with_output()?;
    let (alone, beside) = (pgbench_figures(&alone)?, pgbench_figures(&beside)?);
    // Ten scattered rows changed on the target, replication bypassed, and changed back:
    // clean and dirty runs alternate on the pair in the same state (after the writes).
    let accounts = i64::from(scale) * 100_000;
    let ids: Vec<String> = (0..10)
        .map(|i| (1 + i * accounts / 10 + 7).to_string())
        .collect();
    let plant = |delta: i32| -> anyhow::Result<()> {
        let out = b
            .program("psql")
            .args(b.conn("val-enc")?)
            .args([
                "-d",
                "postgres",
                "-c",
                &format!(
                    "SET session_replication_role = replica; UPDATE pgbench_accounts SET abalance = abalance + ({delta}) WHERE aid IN ({})",
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
        Ok(())
    };
    let (mut t_dirty, mut t_settled) = (vec![], vec![]);
    let mut found = 0;
    for _ in 0..rounds {
        let (t, report) = validate(b)?;
        if report["clean"] != true {
            bail!("the pair did not validate clean after the writes: {report}");
        }
        t_settled.push(t);
        plant(1)?;
        let (t, report) = validate(b)?;
        found = report["tables"]
            .as_array()
            .context("tables")?
            .iter()
            .find(|t| t["table"] == "public.pgbench_accounts")
            .and_then(|t| t["different"].as_array().map(Vec::len))
            .unwrap_or(0);
        t_dirty.push(t);
        plant(-1)?;
    }
    let settled = median(t_settled);
    let dirty = median(t_dirty);
    wide_pair(b)?;
    let (verify_wide, dump_wide, objects_wide) =
        verify_rounds(b, "w", "wide-src", "wide-enc", rounds)?;
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
        "  under pgbench TPC-B ({passes} passes, {seconds} s): longest lock on the source {lock_max:.1} ms (target <= 100); {false_mismatches} false mismatches (target 0); {suspended} table(s) suspended"
    );
    println!(
        "    pgbench alone {:.0} tps, {:.2} ms average; beside validation {:.0} tps ({:.2} of alone), {:.2} ms average",
        alone.0,
        alone.1,
        beside.0,
        beside.0 / alone.0,
        beside.1
    );
    println!(
        "  migrate validate, 10 scattered differences           {:>7.2} s  ratio {:.2} to a clean run in the same state ({:.2} s; target <= 1.1); found {found} of 10",
        dirty.as_secs_f64(),
        dirty.as_secs_f64() / settled.as_secs_f64(),
        settled.as_secs_f64()
    );
    for (what, v, d, n) in [
        (
            "pgbench pair",
            verify_pgbench,
            dump_pgbench,
            objects_pgbench,
        ),
        ("2,000 tables", verify_wide, dump_wide, objects_wide),
    ] {
        println!(
            "  migrate verify, {what} ({n:>6} objects)      {:>7.2} s  ratio {:.2} to pg_dump --schema-only of both sides ({:.2} s)",
            v.as_secs_f64(),
            v.as_secs_f64() / d.as_secs_f64(),
            d.as_secs_f64()
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "verify": {
                "pgbench": { "objects": objects_pgbench, "verify_s": verify_pgbench.as_secs_f64(), "schema_dumps_s": dump_pgbench.as_secs_f64() },
                "wide": { "objects": objects_wide, "verify_s": verify_wide.as_secs_f64(), "schema_dumps_s": dump_wide.as_secs_f64() },
            },
            "scale": scale, "rows": rows, "rounds": rounds,
            "floor_s": floor.as_secs_f64(), "clean_s": clean.as_secs_f64(), "dirty_s": dirty.as_secs_f64(),
            "clean_to_floor": clean.as_secs_f64() / floor.as_secs_f64(),
            "settled_clean_s": settled.as_secs_f64(),
            "dirty_to_clean": dirty.as_secs_f64() / settled.as_secs_f64(),
            "rows_per_s_per_side": per_side, "found": found,
            "under_writes": {
                "passes": passes, "source_lock_max_ms": lock_max,
                "false_mismatches": false_mismatches, "suspended_tables": suspended,
                "pgbench_tps_alone": alone.0, "pgbench_tps_beside": beside.0,
                "pgbench_latency_ms_alone": alone.1, "pgbench_latency_ms_beside": beside.1,
            },
        })
    );
    Ok(())
}
