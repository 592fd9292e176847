//! The full-load strategy's cost against the two ways a DBA would copy the same database
//! by hand, onto the same encrypted storage of the same PostgreSQL version, in the same run:
//! 1. `pg_dump | psql` (one stream, indexes built after the data);
//! 2. `pg_dump -Fd -j 2` then `pg_restore -j 2` (parallel; the dump directory lives on the
//!    encrypted volume too, so no row reaches plaintext disk);
//! 3. `pgseal migrate start --strategy full-load` until the target replicates (an empty
//!    encrypted target created, roles and schema copied, the parallel copy under the
//!    slot's snapshot, post-data), split by step, with rows/s and MiB/s per table from the
//!    journal;
//! 4. the same with `--split-tables-larger-than 128MiB` (the large table in ranges);
//! 5. once more, with `pgbench -R 100` (TPC-B at 100 tx/s) writing on the source the whole
//!    time: the source's peak WAL held by the migration's slot, and how long after the copy
//!    ended the stream was caught up (under 256 KiB behind), with pgbench's own counts.
//!
//! Target (issue 35): 3 at most 0.8× the faster of 1 and 2; 5 caught up within 10 s.
//!
//! Usage: `bench-fullload [SCALE] [ROUNDS] [ENGINE_VERSION]` (default 50, 3, 17), as root,
//! from the workspace root. Run `bench/fullload`. `BENCH_FULLLOAD_TABLES=N` adds N small
//! tables (a key and 100 rows each) to the source's database besides pgbench's, for the
//! cost a table pays (e.g. `BENCH_FULLLOAD_TABLES=2000 bench/fullload 1 2`);
//! `BENCH_FULLLOAD_INDEXES=N` (up to 4) adds N secondary indexes to `pgbench_accounts`,
//! for post-data with work in it.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use pgseal_bench::{Harness, median, timed};

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(50)?;
    let rounds: usize = args.next_or(3)?;
    let version: u32 = args.next_or(17)?;
    pgseal_bench::on_harness(|b| run(b, scale, rounds.max(1), version))
}

/// A fresh, empty database `copy` on the baseline target.
fn fresh_db(b: &Harness) -> anyhow::Result<()> {
    b.psql("bench-dst", "DROP DATABASE IF EXISTS copy")?;
    b.psql("bench-dst", "CREATE DATABASE copy")?;
    Ok(())
}

/// The baselines' restored database dropped once it is timed, and its server's dirty
/// buffers written: left there, autovacuum would vacuum and freeze its 5 M rows (a
/// second write of the whole table, encrypted) while the next command is timed.
fn quiet_dst(b: &Harness) -> anyhow::Result<()> {
    b.psql("bench-dst", "DROP DATABASE IF EXISTS copy")?;
    b.psql("bench-dst", "CHECKPOINT")?;
    Ok(())
}

/// The MiB the kernel holds dirty or under writeback (`/proc/meminfo`): what a command
/// that has returned left for later to write (and, on an encrypted volume, to encrypt).
fn dirty_mib() -> anyhow::Result<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib = |field: &str| -> f64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((kib("Dirty:") + kib("Writeback:")) / 1024.0)
}

/// What one way of copying left behind when it returned: the MiB it left dirty, and the
/// seconds its server's `CHECKPOINT` then took to put its data in the data files.
#[derive(Default)]
struct LeftBehind {
    dirty_mib: Vec<f64>,
    checkpoint_s: Vec<f64>,
}

impl LeftBehind {
    /// Measures what `instance` left since `dirty_before` (MiB dirty before it ran).
    fn measure(&mut self, b: &Harness, instance: &str, dirty_before: f64) -> anyhow::Result<()> {
        self.dirty_mib.push((dirty_mib()? - dirty_before).max(0.0));
        let started = std::time::Instant::now();
        b.psql(instance, "CHECKPOINT")?;
        self.checkpoint_s.push(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// `sh -c SCRIPT` with the source's libpq settings as `S_*` and the target's as `T_*`.
fn shell(b: &Harness, script: &str) -> anyhow::Result<Command> {
    b.between(script, ("bench-src", "postgres"), ("bench-dst", "copy"))
}

/// One table's figures over the rounds: seconds from first seen to ready, its rows and
/// bytes, and the seconds its keys took.
struct TableFigures {
    table: String,
    seconds: Vec<f64>,
    rows: f64,
    bytes: f64,
    key_seconds: Vec<f64>,
}

/// The number in the environment variable `name`, 0 when it is not set.
fn env_count(name: &str) -> anyhow::Result<u32> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse())
        .transpose()
        .with_context(|| format!("{name} is a number"))
        .map(Option::unwrap_or_default)
}

fn run(b: &Harness, scale: u32, rounds: usize, version: u32) -> anyhow::Result<()> {
    let storage = format!("{}MiB", 2048 + scale * 60);
    let engine = version.to_string();
    let mut db_mib = b.pgbench_source(&storage, scale)?;
    let extra_tables = env_count("BENCH_FULLLOAD_TABLES")?;
    if extra_tables > 0 {
        b.psql(
            "bench-src",
            &format!(
                "DO $$ BEGIN FOR i IN 1..{extra_tables} LOOP \
                   EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text)', i); \
                   EXECUTE format('INSERT INTO small_%s SELECT g, md5(g::text) FROM generate_series(1, 100) g', i); \
                 END LOOP; END $$"
            ),
        )?;
        b.psql("bench-src", "VACUUM ANALYZE")?;
        db_mib = b
            .psql("bench-src", "SELECT pg_database_size('postgres') >> 20")?
            .parse()?;
        println!("  the source also has {extra_tables} tables of 100 rows");
    }
    let indexes = env_count("BENCH_FULLLOAD_INDEXES")? as usize;
    // Secondary indexes beside the keys: post-data with work in it, which every way of
    // copying builds after the data (pg_restore -j 2 two at a time, as pgseal --jobs).
    let columns = ["bid, abalance", "abalance", "aid DESC", "bid, aid"];
    for (i, cols) in columns.iter().take(indexes).enumerate() {
        b.psql(
            "bench-src",
            &format!("CREATE INDEX accounts_extra_{i} ON pgbench_accounts ({cols})"),
        )?;
    }
    if indexes > 0 {
        db_mib = b
            .psql("bench-src", "SELECT pg_database_size('postgres') >> 20")?
            .parse()?;
        println!(
            "  pgbench_accounts also has {} secondary index(es)",
            indexes.min(columns.len())
        );
    }
    b.json(&[
        "instance",
        "create",
        "bench-dst",
        "--storage",
        &storage,
        "--encrypted",
        "--engine-version",
        &engine,
    ])?;
    // The parallel dump's directory, on the encrypted volume beside the target's data.
    let data_dir = b.json(&["instance", "describe", "bench-dst"])?["data_dir"]
        .as_str()
        .context("data_dir")?
        .to_string();
    let dump_dir = std::path::Path::new(&data_dir)
        .parent()
        .context("data dir parent")?
        .join("bench-dump");
    let env = |prefix: &str| {
        format!(
            "PGHOST=${prefix}PGHOST PGPORT=${prefix}PGPORT PGUSER=${prefix}PGUSER PGDATABASE=${prefix}PGDATABASE"
        )
    };
    let plain = format!(
        "env {} \"$BIN/pg_dump\" | env {} \"$BIN/psql\" -X -q -v ON_ERROR_STOP=1 >/dev/null",
        env("S_"),
        env("T_")
    );
    let parallel = format!(
        "rm -rf '{d}' && env {} \"$BIN/pg_dump\" -Fd -j 2 -f '{d}' && env {} \"$BIN/pg_restore\" -j 2 -d copy '{d}' && rm -rf '{d}'",
        env("S_"),
        env("T_"),
        d = dump_dir.display()
    );

    let (mut t_plain, mut t_parallel, mut t_full, mut t_split) = (vec![], vec![], vec![], vec![]);
    let mut split_steps: Vec<(String, Vec<f64>)> = Vec::new();
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    let mut tables: Vec<TableFigures> = Vec::new();
    let (mut left_plain, mut left_parallel, mut left_full) = (
        LeftBehind::default(),
        LeftBehind::default(),
        LeftBehind::default(),
    );
    for round in 0..rounds {
        for turn in 0..4 {
            let _ = timed(Command::new("sync"));
            match (round + turn) % 4 {
                0 => {
                    fresh_db(b)?;
                    let dirty = dirty_mib()?;
                    t_plain.push(timed(shell(b, &plain)?)?.elapsed);
                    left_plain.measure(b, "bench-dst", dirty)?;
                    quiet_dst(b)?;
                }
                1 => {
                    fresh_db(b)?;
                    let dirty = dirty_mib()?;
                    t_parallel.push(timed(shell(b, &parallel)?)?.elapsed);
                    left_parallel.measure(b, "bench-dst", dirty)?;
                    quiet_dst(b)?;
                }
                3 => {
                    // The same, with the large table split into ranges of 128 MiB.
                    let name = format!("s{round}");
                    let split = [
                        "--target",
                        "bench-split",
                        "--strategy",
                        "full-load",
                        "--engine-version",
                        &engine,
                        "--split-tables-larger-than",
                        "128MiB",
                    ];
                    let (elapsed, _) = b.timed_start(&name, &split, &mut split_steps)?;
                    t_split.push(elapsed);
                    b.json(&["migrate", "abort", &name])?;
                }
                _ => {
                    let name = format!("r{round}");
                    let full_load = [
                        "--target",
                        "bench-full",
                        "--strategy",
                        "full-load",
                        "--engine-version",
                        &engine,
                    ];
                    let dirty = dirty_mib()?;
                    let (elapsed, status) = b.timed_start(&name, &full_load, &mut per_step)?;
                    t_full.push(elapsed);
                    left_full.measure(b, "bench-full", dirty)?;
                    for run in status["steps"].as_array().into_iter().flatten() {
                        if run["step"] == "initial_copy" {
                            for t in run["outputs"]["tables"].as_array().into_iter().flatten() {
                                let table = t["table"].as_str().unwrap_or("?").to_string();
                                let seconds = t["seconds"].as_f64().unwrap_or(0.0);
                                let rows = t["rows"].as_f64().unwrap_or(0.0);
                                let bytes = t["source_bytes"].as_f64().unwrap_or(0.0);
                                let keys = t["keys_seconds"].as_f64().unwrap_or(0.0);
                                match tables.iter_mut().find(|t| t.table == table) {
                                    Some(t) => {
                                        t.seconds.push(seconds);
                                        t.key_seconds.push(keys);
                                    }
                                    None => tables.push(TableFigures {
                                        table,
                                        seconds: vec![seconds],
                                        rows,
                                        bytes,
                                        key_seconds: vec![keys],
                                    }),
                                }
                            }
                        }
                    }
                    b.json(&["migrate", "abort", &name])?;
                }
            }
        }
    }

    let writes = under_writes(b, &engine)?;

    let secs = |d: Duration| d.as_secs_f64();
    let (plain_m, parallel_m, full_m, split_m) = (
        median(t_plain),
        median(t_parallel),
        median(t_full),
        median(t_split),
    );
    let best = plain_m.min(parallel_m);
    let med = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let create = per_step
        .iter()
        .find(|(s, _)| s == "create_target")
        .map_or(0.0, |(_, t)| med(t));
    println!(
        "full load of a pgbench scale-{scale} database ({db_mib} MiB) onto encrypted PostgreSQL {version}, medians of {rounds} rounds:"
    );
    println!(
        "  pg_dump | psql                      {:>7.2} s",
        secs(plain_m)
    );
    println!(
        "  pg_dump -Fd -j 2 + pg_restore -j 2  {:>7.2} s",
        secs(parallel_m)
    );
    println!(
        "  pgseal migrate start --strategy full-load {:>7.2} s = {:.2}x the faster ({:.2}x without making the target instance, {create:.2} s)",
        secs(full_m),
        secs(full_m) / secs(best),
        (secs(full_m) - create) / secs(best)
    );
    let split_copy = split_steps
        .iter()
        .find(|(s, _)| s == "initial_copy")
        .map_or(0.0, |(_, t)| med(t));
    println!(
        "  the same, --split-tables-larger-than 128MiB {:>7.2} s = {:.2}x the faster (initial_copy {split_copy:.2} s)",
        secs(split_m),
        secs(split_m) / secs(best),
    );
    // What each left to write when it returned, and the ratio with that counted: the
    // full load's commits sync its tables, a restore at wal_level=replica syncs only its
    // WAL and leaves the tables' pages to the next checkpoint (encrypted then).
    println!("  left for later when it returned (MiB dirty; then its server's CHECKPOINT):");
    let on_disk = |t: f64, left: &LeftBehind| t + med(&left.checkpoint_s);
    for (way, t, left) in [
        ("pg_dump | psql", secs(plain_m), &left_plain),
        ("pg_restore -j 2", secs(parallel_m), &left_parallel),
        ("full load", secs(full_m), &left_full),
    ] {
        println!(
            "    {way:<22} {:>7.0} MiB, CHECKPOINT {:>5.2} s: {:>6.2} s with it",
            med(&left.dirty_mib),
            med(&left.checkpoint_s),
            on_disk(t, left)
        );
    }
    let best_on_disk =
        on_disk(secs(plain_m), &left_plain).min(on_disk(secs(parallel_m), &left_parallel));
    let full_on_disk = on_disk(secs(full_m), &left_full);
    println!(
        "  each with its CHECKPOINT counted: full load {full_on_disk:.2} s = {:.2}x the faster",
        full_on_disk / best_on_disk
    );
    println!("    by step (without splitting):");
    for (step, times) in &per_step {
        println!("      {step:<22} {:>7.2} s", med(times));
    }
    println!("    initial copy by table (copy until ready, then its keys; the 8 largest):");
    tables.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
    if tables.len() > 8 {
        println!("      ({} tables in all)", tables.len());
    }
    for TableFigures {
        table,
        seconds: times,
        rows,
        bytes,
        key_seconds: key_times,
    } in tables.iter().take(8)
    {
        let s = med(times).max(0.001);
        println!(
            "      {table:<26} {:>10.0} rows {:>8.1} MiB {s:>6.2} s {:>10.0} rows/s {:>6.1} MiB/s, keys {:.2} s",
            rows,
            bytes / 1048576.0,
            rows / s,
            bytes / 1048576.0 / s,
            med(key_times)
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "fullload", "scale": scale, "engine_version": version, "db_mib": db_mib,
            "plain_s": secs(plain_m), "parallel_s": secs(parallel_m), "full_load_s": secs(full_m),
            "ratio_to_best": secs(full_m) / secs(best),
            "left_dirty_mib": {
                "plain": med(&left_plain.dirty_mib), "parallel": med(&left_parallel.dirty_mib),
                "full_load": med(&left_full.dirty_mib),
            },
            "checkpoint_after_s": {
                "plain": med(&left_plain.checkpoint_s), "parallel": med(&left_parallel.checkpoint_s),
                "full_load": med(&left_full.checkpoint_s),
            },
            "ratio_to_best_with_checkpoints": full_on_disk / best_on_disk,
            "split_s": secs(split_m), "split_ratio_to_best": secs(split_m) / secs(best),
            "under_writes": writes,
            "steps": per_step.iter().map(|(s, t)| (s.clone(), med(t))).collect::<std::collections::BTreeMap<_, _>>(),
        })
    );
    Ok(())
}

/// Milliseconds since the Unix epoch, as the journal records its steps.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A full load with pgbench TPC-B writing on the source at 100 tx/s throughout: the peak
/// WAL the migration's slots hold on the source (sampled every 250 ms), and the seconds
/// from the end of the copy until the stream is under 256 KiB behind.
fn under_writes(b: &Harness, engine: &str) -> anyhow::Result<serde_json::Value> {
    // TPC-B adds one history row per transaction: the count says how many committed.
    let history = || -> anyhow::Result<i64> {
        Ok(b.psql("bench-src", "SELECT count(*) FROM pgbench_history")?
            .parse()?)
    };
    let history_before = history()?;
    let mut pgbench = b.program("pgbench");
    pgbench
        .args(["-n", "-R", "100", "-T", "3600", "-c", "2", "-j", "1"])
        .args(b.conn("bench-src")?)
        .arg("postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let pgbench = pgbench.spawn().context("starting pgbench")?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let conn = b.conn("bench-src")?;
        let psql = b.program("psql").get_program().to_owned();
        std::thread::spawn(move || {
            let mut peak = 0i64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new(&psql)
                    .args(&conn)
                    .args([
                        "-d",
                        "postgres",
                        "-Atc",
                        "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint \
                         FROM pg_replication_slots WHERE slot_name LIKE 'pgseal%'",
                    ])
                    .output();
                if let Ok(out) = out
                    && let Ok(v) = String::from_utf8_lossy(&out.stdout).trim().parse::<i64>()
                {
                    peak = peak.max(v);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        })
    };
    let mut steps = Vec::new();
    let full_load = [
        "--target",
        "bench-writes",
        "--strategy",
        "full-load",
        "--engine-version",
        engine,
    ];
    let started = b.timed_start("w0", &full_load, &mut steps);
    let caught_up_ms = started.as_ref().ok().map(|_| loop {
        let lag: i64 = b
            .psql(
                "bench-src",
                "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)), 0)::bigint \
                 FROM pg_replication_slots WHERE slot_name LIKE 'pgseal%'",
            )
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        if lag < 256 << 10 {
            break now_ms();
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-INT", &pgbench.id().to_string()])
        .status();
    let out = pgbench.wait_with_output()?;
    let committed = history()? - history_before;
    let (elapsed, status) = started?;
    b.json(&["migrate", "abort", "w0"])?;
    let copy_end = status["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["step"] == "initial_copy")
        .filter_map(|r| r["finished_ms"].as_i64())
        .next_back()
        .unwrap_or(0);
    let caught_up_s = caught_up_ms.map(|ms| (ms - copy_end) as f64 / 1000.0);
    // pgbench stopped by SIGINT prints no summary: an error of a client is on stderr.
    let errors = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("aborted") || l.contains("ERROR"))
        .count();
    println!(
        "  under pgbench at 100 tx/s: full load {:.2} s, the slot held at most {:.1} MiB of WAL, caught up {} after the copy ended; pgbench committed {committed} transactions, {errors} error line(s)",
        elapsed.as_secs_f64(),
        peak as f64 / 1048576.0,
        caught_up_s.map_or("never".to_string(), |s| format!("{s:.2} s")),
    );
    Ok(serde_json::json!({
        "full_load_s": elapsed.as_secs_f64(), "peak_slot_wal_bytes": peak,
        "caught_up_after_copy_s": caught_up_s, "pgbench_committed": committed,
        "pgbench_error_lines": errors,
    }))
}
