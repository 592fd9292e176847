//! The migration engine's costs, each against a baseline measured in the same run:
//! 1. `pgseal migrate start` until the target replicates, split by step, vs a plain
//!    `pg_basebackup -Ft -X fetch` of the same pgbench database (target <= 1.5x);
//! 2. catch-up: a burst of pgbench writes made while the snapshot is taken piles up in the
//!    slot; once the subscription is enabled, the WAL it applies per second vs the rate
//!    at which the source produced that WAL;
//! 3. databases: the same start to replicating for an instance whose data is split over
//!    DATABASES databases (pgbench scale SCALE/DATABASES each), vs the one-database run of
//!    part 1 (target <= 1.1x: a stream per database costs little beyond its slot).
//!
//! Usage: `bench-migrate [SCALE] [ROUNDS] [DATABASES]` (default 50, 3, 3), as root, from
//! the workspace root. Run `bench/migrate`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pgseal_bench::{Harness, median, timed};

fn lsn(text: &str) -> anyhow::Result<u64> {
    let (hi, lo) = text.split_once('/').context("not an LSN")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(50)?;
    let rounds: usize = args.next_or(3)?;
    let databases: u32 = args.next_or(3)?;
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let result = run(&b, dir.path(), scale, rounds, databases.max(1));
    // Whatever happened, leave no migration, server or mount behind.
    b.remove_everything();
    result
}

/// `migrate start` to replicating of `source`, once, named `name`; aborted afterwards.
fn start_once(b: &Harness, source: &str, name: &str) -> anyhow::Result<Duration> {
    let elapsed = timed(b.pgseal(&[
        "migrate",
        "start",
        "--source",
        source,
        "--name",
        name,
        "--replica-identity-full",
    ]))?
    .elapsed;
    b.json(&["migrate", "abort", name])?;
    Ok(elapsed)
}

fn run(
    b: &Harness,
    dir: &std::path::Path,
    scale: u32,
    rounds: usize,
    databases: u32,
) -> anyhow::Result<()> {
    let storage = format!("{}MiB", 1024 + scale * 60);
    let db_mib = b.pgbench_source(&storage, scale)?;

    // 1. Start to replicating vs pg_basebackup, rotating which goes first.
    let (mut t_base, mut t_start) = (vec![], vec![]);
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for turn in 0..2 {
            let _ = timed(Command::new("sync"));
            if (round + turn) % 2 == 0 {
                let target = dir.join("basebackup");
                t_base.push(b.basebackup("bench-src", &target)?.elapsed);
                std::fs::remove_dir_all(&target)?;
            } else {
                let name = format!("r{round}");
                let (elapsed, _) = b.timed_start(&name, &[], &mut per_step)?;
                t_start.push(elapsed);
                b.json(&["migrate", "abort", &name])?;
            }
        }
    }

    // The floor no engine can beat here: the same bytes written once onto encrypted
    // storage (fscrypt AES-256-XTS on a loop device; the kernel's AES driver decides it).
    let target = dir.join("basebackup");
    b.basebackup("bench-src", &target)?;
    b.json(&[
        "instance",
        "create",
        "bench-floor",
        "--storage",
        &storage,
        "--encrypted",
    ])?;
    let floor_dir = b.json(&["instance", "describe", "bench-floor"])?["data_dir"]
        .as_str()
        .context("data_dir")?
        .to_string();
    let floor_file = std::path::Path::new(&floor_dir)
        .parent()
        .context("data_dir has a parent")?
        .join("floor.bin");
    let mut t_floor = vec![];
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&floor_file);
        let _ = timed(Command::new("sync"));
        let mut dd = Command::new("dd");
        dd.arg(format!("if={}", target.join("base.tar").display()))
            .arg(format!("of={}", floor_file.display()))
            .args(["bs=1M", "conv=fsync"])
            .stderr(Stdio::null());
        t_floor.push(timed(dd)?.elapsed);
    }
    let _ = b
        .pgseal(&["instance", "delete", "bench-floor", "--yes"])
        .output();
    std::fs::remove_dir_all(&target)?;

    // 2. Catch-up: writes during the snapshot, subscription enabled afterwards.
    let before = lsn(&b.psql("bench-src", "SELECT pg_current_wal_lsn()")?)?;
    let burst_started = Instant::now();
    let mut burst = b.program("pgbench");
    burst
        .args(["-c", "4", "-j", "2", "-T", "20", "-n"])
        .args(b.conn("bench-src")?)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut burst = burst.spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    // Stop after the subscription exists, before the guards and the enable.
    let out = b
        .pgseal(&[
            "migrate",
            "start",
            "--source",
            "bench-src",
            "--name",
            "catchup",
            "--replica-identity-full",
        ])
        .env("PGSEAL_FAILPOINT", "after:subscription")
        .stderr(Stdio::null())
        .output()?;
    if out.status.code().is_some() {
        bail!("the catch-up run did not stop at its failpoint");
    }
    if !burst.wait()?.success() {
        bail!("pgbench burst failed");
    }
    let burst_secs = burst_started.elapsed().as_secs_f64();
    let after = lsn(&b.psql("bench-src", "SELECT pg_current_wal_lsn()")?)?;
    let status = b.json(&["migrate", "status", "catchup"])?;
    let handoff = lsn(status["handoff"]["lsn"].as_str().context("no handoff")?)?;
    let backlog = after.saturating_sub(handoff);
    let resumed = Instant::now();
    let out = b.pgseal(&["migrate", "resume", "catchup"]).output()?;
    if !out.status.success() {
        bail!("resume: {}", String::from_utf8_lossy(&out.stderr));
    }
    loop {
        let status = b.json(&["migrate", "status", "catchup"])?;
        let confirmed = status["replication"]["streams"][0]["slot"]["confirmed_flush_lsn"]
            .as_str()
            .map(lsn)
            .transpose()?
            .unwrap_or(0);
        if confirmed >= after {
            break;
        }
        if resumed.elapsed() > Duration::from_secs(1800) {
            bail!("catch-up did not finish in 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let catchup_secs = resumed.elapsed().as_secs_f64();
    b.json(&["migrate", "abort", "catchup"])?;

    // 3. The same data over several databases: one stream each.
    b.json(&[
        "instance",
        "create",
        "bench-multi",
        "--storage",
        &storage,
        "--param",
        "wal_level=logical",
    ])?;
    let each = (scale / databases).max(1);
    for i in 0..databases {
        let db = if i == 0 {
            "postgres".to_string()
        } else {
            format!("db{i}")
        };
        b.pgbench_init_db("bench-multi", &db, each)?;
    }
    let multi_mib: u64 = b
        .psql(
            "bench-multi",
            "SELECT sum(pg_database_size(oid))::bigint >> 20 FROM pg_database WHERE NOT datistemplate",
        )?
        .parse()?;
    let single_mib: u64 = b
        .psql(
            "bench-src",
            "SELECT sum(pg_database_size(oid))::bigint >> 20 FROM pg_database WHERE NOT datistemplate",
        )?
        .parse()?;
    let (mut t_one, mut t_many) = (vec![], vec![]);
    for round in 0..rounds {
        let _ = timed(Command::new("sync"));
        if round % 2 == 0 {
            t_one.push(start_once(b, "bench-src", &format!("one{round}"))?);
            t_many.push(start_once(b, "bench-multi", &format!("many{round}"))?);
        } else {
            t_many.push(start_once(b, "bench-multi", &format!("many{round}"))?);
            t_one.push(start_once(b, "bench-src", &format!("one{round}"))?);
        }
    }
    let (one, many) = (median(t_one), median(t_many));
    let produced_rate = (after - before) as f64 / burst_secs / 1048576.0;
    let applied_rate = backlog as f64 / catchup_secs / 1048576.0;

    let (base, start, floor) = (median(t_base), median(t_start), median(t_floor));
    println!(
        "migrate benchmark: pgbench scale {scale} ({db_mib} MiB database), medians of {rounds} rounds in rotating order"
    );
    println!(
        "  plain pg_basebackup -Ft -X fetch           {:>7.2} s",
        base.as_secs_f64()
    );
    println!(
        "  pgseal migrate start -> replicating        {:>7.2} s  ratio {:.2} (target <= 1.5)",
        start.as_secs_f64(),
        start.as_secs_f64() / base.as_secs_f64()
    );
    println!(
        "  floor: pg_basebackup + writing its tar once onto encrypted storage {:>5.2} s  (start / floor {:.2}: what the engine adds)",
        (base + floor).as_secs_f64(),
        start.as_secs_f64() / (base + floor).as_secs_f64()
    );
    let mut steps_json = serde_json::Map::new();
    for (step, times) in &per_step {
        let mut t = times.clone();
        t.sort_by(f64::total_cmp);
        let m = t[t.len() / 2];
        println!("      {step:<22} {m:>7.2} s");
        steps_json.insert(step.clone(), serde_json::json!(m));
    }
    println!(
        "  catch-up: {:.1} MiB of WAL written during the snapshot at {produced_rate:.1} MiB/s; applied {:.1} MiB in {catchup_secs:.1} s = {applied_rate:.1} MiB/s (ratio {:.2} of the write rate)",
        (after - before) as f64 / 1048576.0,
        backlog as f64 / 1048576.0,
        applied_rate / produced_rate
    );
    println!(
        "  {databases} databases of scale {each} ({multi_mib} MiB in all) vs 1 of scale {scale} ({single_mib} MiB): start -> replicating {:.2} s vs {:.2} s, ratio {:.2} (target <= 1.1)",
        many.as_secs_f64(),
        one.as_secs_f64(),
        many.as_secs_f64() / one.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "scale": scale, "database_mib": db_mib, "rounds": rounds,
            "basebackup_s": base.as_secs_f64(), "start_to_replicating_s": start.as_secs_f64(),
            "ratio": start.as_secs_f64() / base.as_secs_f64(), "steps_s": steps_json,
            "encrypted_write_s": floor.as_secs_f64(), "ratio_to_floor": start.as_secs_f64() / (base + floor).as_secs_f64(),
            "burst_wal_mib": (after - before) as f64 / 1048576.0, "burst_write_mib_s": produced_rate,
            "backlog_mib": backlog as f64 / 1048576.0, "catchup_s": catchup_secs, "catchup_mib_s": applied_rate,
            "databases": databases, "databases_mib": multi_mib, "one_database_mib": single_mib,
            "databases_start_s": many.as_secs_f64(), "one_database_start_s": one.as_secs_f64(),
            "databases_ratio": many.as_secs_f64() / one.as_secs_f64(),
        })
    );
    Ok(())
}
