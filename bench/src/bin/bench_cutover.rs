//! Cutover write pause, against the other way of switching measured in the same run:
//! 1. endpoint mode: the ledger workload writes through a PgBouncer endpoint at a steady
//!    rate for the whole run; ROUNDS migrations each cut over through it (each round
//!    migrates the previous round's target onto a new key: a chain of key changes). Write
//!    pause per cutover (pause to first write accepted on the target, pgseal's clock), the
//!    longest wait PgBouncer saw (`client_wait_ms`), and the longest transaction the
//!    ledger's clients timed themselves during each cutover (their own clocks: from
//!    `BEGIN` sent to `COMMIT` answered), p50 and max of each; client errors over the
//!    whole run (target: client max <= 1 s, 0 errors).
//! 2. hook mode: the same, without an endpoint; the workload writes straight to the source,
//!    whose sessions the fence ends (connections dropped and re-made by the application);
//! 3. endpoint mode over DATABASES databases: the ledger in `postgres` and pgbench TPC-B
//!    (50 tx/s) through the endpoint into each other database, every one fenced, drained
//!    and switched at each cutover (target: max <= 1 s, 0 client errors, 0 pgbench
//!    failures); pgbench's own per-transaction log (`-l`) gives its longest transaction
//!    during each switch; each cutover is rolled back after 3 s of writes on the target,
//!    measured the same ways, and the next round migrates the same source again. The parts
//!    of both pauses (medians) are printed.
//! 4. endpoint mode with large objects: 1,000 of 64 KiB on the source before the first
//!    round, and pgbench writing 20 more a second through the endpoint (a custom script:
//!    `lo_from_bytea`) beside the ledger; replication does not carry them, the cutover
//!    does: what its `carried` phase takes inside the pause and how many objects it copied
//!    there, against mode 1's pause (target: the pause no more than 100 ms longer).
//!
//! With TABLES, each chain's first source also holds that many small tables (one row each)
//! in `postgres`: the pause should not grow with the catalog.
//!
//! "During a pause" means under way at any moment between the pause's start (the report's
//! `paused_at_unix_ms`) and its end (`write_pause_ms` later). The same is also measured over
//! each whole command (work before the pause included), and outside every pgseal command
//! of a chain (`background`: the machine's own stalls, the floor the others stand on).
//!
//! `BENCH_CUTOVER_ONLY=databases` runs mode 3 alone; `BENCH_LOGS=DIR` keeps the statement
//! log of every cutover and rollback (`PGSEAL_LOG=debug`) in DIR.
//!
//! Usage: `bench-cutover [ROUNDS] [RATE] [DATABASES] [TABLES]` (default 5, 200, 3, 0), as
//! root, from the workspace root. Run `bench/cutover`.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use pgseal_bench::Harness;

fn spawn_workload(
    b: &Harness,
    target: &[&str],
    ledger: &str,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Child> {
    Ok(b.pgseal(&["workload", "run"])
        .args(target)
        .args([
            "--ledger",
            ledger,
            "--rate",
            &rate.to_string(),
            "--clients",
            "4",
            "--duration",
            &seconds.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn percentile(mut xs: Vec<u64>, p: f64) -> u64 {
    xs.sort_unstable();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// What one chain of cutovers measured.
struct Chain {
    /// Write pause of each cutover (ms, pgseal's clock).
    pauses: Vec<u64>,
    /// The longest client wait PgBouncer saw at each cutover (ms; empty without one).
    waits: Vec<u64>,
    /// The longest transaction the ledger's clients saw under way during each cutover's
    /// pause (ms, their clocks; 0 when none took `SLOW_MS` or more).
    client_max: Vec<u64>,
    /// The same over each whole `migrate cutover` command, work before the pause
    /// included.
    command_max: Vec<u64>,
    /// The longest transaction (the ledger's or pgbench's) under way while no pgseal
    /// command ran: the stalls of the machine itself, the baseline the others stand on.
    background_max: u64,
    /// Sessions the fences ended.
    ended: i64,
    /// The ledger workload's summary.
    ledger: serde_json::Value,
    /// Transactions pgbench processed and failed, over the extra databases (or the large
    /// objects' writer).
    pgbench: (i64, i64),
    /// The `carried` part of each pause (ms) and the large objects copied in it.
    carried: Vec<(u64, u64)>,
    /// Each cutover's pause part by part (ms).
    phases: Vec<Vec<(String, f64)>>,
    /// pgbench's longest transaction under way during each cutover's pause (ms, its own
    /// per-transaction log; 0 without pgbench).
    pgbench_max: Vec<u64>,
    /// The rollback after each cutover, when the chain rolls back (measured as the
    /// cutover is).
    back: Back,
}

/// What the rollbacks of a chain measured, as [`Chain`] does for its cutovers.
#[derive(Default)]
struct Back {
    pauses: Vec<u64>,
    waits: Vec<u64>,
    client_max: Vec<u64>,
    command_max: Vec<u64>,
    pgbench_max: Vec<u64>,
    phases: Vec<Vec<(String, f64)>>,
}

/// Every transaction pgbench logged (`-l`) in `dir`: (start, end) in Unix µs. A line is
/// `client transaction latency_us script epoch_s epoch_us [lag_us]`; the latency is from
/// the transaction's scheduled start under `-R`, as the application waits for it.
fn pgbench_latencies(dir: &std::path::Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if let [_, _, latency, _, seconds, micros, ..] = fields[..] {
                let end = seconds * 1_000_000 + micros;
                all.push((end.saturating_sub(latency), end));
            }
        }
    }
    Ok(all)
}

/// `longest` of each switch's window (from, to: Unix ms), in order.
fn per_window(windows: &[(u64, u64)], longest: impl Fn(u64, u64) -> u64) -> Vec<u64> {
    windows
        .iter()
        .map(|&(from, to)| longest(from, to))
        .collect()
}

/// The longest of pgbench's `transactions` under way between `from` and `to` (Unix ms),
/// in ms rounded up; 0 when none was.
fn longest_pgbench(transactions: &[(u64, u64)], from: u64, to: u64) -> u64 {
    transactions
        .iter()
        .filter(|&&(start, end)| start <= to * 1000 && end >= from * 1000)
        .map(|&(start, end)| (end - start).div_ceil(1000))
        .max()
        .unwrap_or(0)
}

/// Runs a cutover or rollback (`args`) and returns its report. With `BENCH_LOGS=DIR` in
/// the environment, pgseal logs every statement it sends (`PGSEAL_LOG=debug`) into
/// `DIR/NAME-COMMAND.log`: where the time of a slow switch went.
fn switch(b: &Harness, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let Some(dir) = std::env::var_os("BENCH_LOGS") else {
        return b.json(args);
    };
    let out = b
        .pgseal(args)
        .arg("--json")
        .env("PGSEAL_LOG", "debug,tokio_postgres=debug")
        .output()?;
    let file = std::path::Path::new(&dir).join(format!("{}-{}.log", args[2], args[1]));
    std::fs::write(&file, &out.stderr)?;
    if !out.status.success() {
        bail!("pgseal {args:?} failed: see {}", file.display());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// When a switch's pause began and ended (Unix ms), from its report.
fn pause_window(report: &serde_json::Value) -> anyhow::Result<(u64, u64)> {
    let from = report["paused_at_unix_ms"]
        .as_u64()
        .context("paused_at_unix_ms")?;
    let ms = report["write_pause_ms"]
        .as_u64()
        .context("write_pause_ms")?;
    Ok((from, from + ms))
}

/// The longest of `transactions` (start, end: Unix µs) under way at no time in `busy`
/// (Unix ms), in ms rounded up; 0 when none was.
fn longest_outside(transactions: &[(u64, u64)], busy: &[(u64, u64)]) -> u64 {
    transactions
        .iter()
        .filter(|&&(start, end)| {
            busy.iter()
                .all(|&(from, to)| start > to * 1000 || end < from * 1000)
        })
        .map(|&(start, end)| (end - start).div_ceil(1000))
        .max()
        .unwrap_or(0)
}

/// A switch's pause part by part, as its report journaled it.
fn phases_of(report: &serde_json::Value) -> Vec<(String, f64)> {
    report["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["phase"].as_str().unwrap_or("?").to_string(),
                p["ms"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// Each part's median over `runs`, in the order of the first run: `pause 3, fence 12, ...`.
fn median_phases(runs: &[Vec<(String, f64)>]) -> String {
    let Some(first) = runs.first() else {
        return "none".into();
    };
    first
        .iter()
        .map(|(name, _)| {
            let mut xs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|(n, _)| n == name).map(|(_, ms)| *ms))
                .collect();
            xs.sort_by(f64::total_cmp);
            format!("{name} {:.0}", xs[xs.len() / 2])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Large objects on the source before the first round, their size, and how many more a
/// second are written during the run.
const LARGE_OBJECTS: (u32, usize, u32) = (1000, 64 << 10, 20);

/// A number pgbench printed after `label`.
fn pgbench_field(text: &str, label: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// What a chain runs besides the ledger, and whether each round rolls back.
#[derive(Clone, Copy)]
struct Mode {
    /// Databases: the ledger in `postgres`, pgbench through the endpoint in the others.
    databases: u32,
    /// Large objects written beside the ledger.
    large_objects: bool,
    /// Each cutover rolled back after writes on the target: the next round migrates the
    /// same source again (otherwise it migrates the previous target).
    roll_back: bool,
    /// Small tables (one row each) made in `postgres` beside the ledger's before the first
    /// round: a catalog the pause must not grow with.
    tables: u32,
}

/// Runs `rounds` migrations with cutover (and, by `mode`, rollback), through an endpoint or
/// a hook.
fn chain(
    b: &Harness,
    label: &str,
    endpoint: bool,
    rounds: usize,
    rate: f64,
    mode: Mode,
) -> anyhow::Result<Chain> {
    let Mode {
        databases,
        large_objects,
        roll_back,
        tables,
    } = mode;
    let first = format!("{label}0");
    // A slot and a sender per database each way, an apply worker per database (the
    // defaults, 10 and 4, hold four databases); the targets inherit them.
    let (senders, workers) = (2 * databases + 2, databases + 2);
    b.json(&[
        "instance",
        "create",
        &first,
        "--param",
        "wal_level=logical",
        "--param",
        &format!("max_replication_slots={senders}"),
        "--param",
        &format!("max_wal_senders={senders}"),
        "--param",
        &format!("max_logical_replication_workers={workers}"),
        "--param",
        &format!("max_worker_processes={}", workers + 6),
    ])?;
    if tables > 0 {
        b.psql(
            &first,
            &format!(
                "DO $$ BEGIN FOR i IN 1..{tables} LOOP \
                   EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v int); \
                                   INSERT INTO small_%s VALUES (1, 1)', i, i); \
                 END LOOP; END $$"
            ),
        )?;
    }
    let (pool, size, per_second) = LARGE_OBJECTS;
    let script = b.home.join(format!("{label}-lo.sql"));
    if large_objects {
        b.psql(
            &first,
            &format!(
                "SELECT count(lo_from_bytea(0, convert_to(repeat('x', {size}), 'UTF8'))) FROM generate_series(1, {pool})"
            ),
        )?;
        std::fs::write(
            &script,
            format!("SELECT lo_from_bytea(0, convert_to(repeat('y', {size}), 'UTF8'));\n"),
        )?;
    }
    let extra: Vec<String> = (1..databases).map(|i| format!("db{i}")).collect();
    for db in &extra {
        b.pgbench_init_db(&first, db, 1)?;
    }
    let ep = format!("{label}-ep");
    if endpoint {
        b.json(&["endpoint", "create", &ep, "--instance", &first])?;
    }
    let ledger = b.home.join(format!("{label}.ledger")).display().to_string();
    // Long enough for every round: a round that also rolls back takes longer, and more so
    // with many databases (each cutover's sessions, slots and subscriptions are per
    // database). A round that ends after the workload did is refused below, not measured.
    let per_round = if roll_back {
        40 + 3 * databases as u64
    } else {
        20
    };
    let seconds = per_round * rounds as u64 + 10;
    let workload_ends = pgseal_workload::unix_ms() + seconds * 1000;
    let on: Vec<String> = if endpoint {
        vec!["--endpoint".into(), ep.clone()]
    } else {
        vec!["--instance".into(), first.clone()]
    };
    let on: Vec<&str> = on.iter().map(String::as_str).collect();
    let workload = spawn_workload(b, &on, &ledger, rate, seconds)?;
    let mut benches = Vec::new();
    let pgbench_logs = b.home.join(format!("{label}-pgbench"));
    std::fs::create_dir_all(&pgbench_logs)?;
    if endpoint && !extra.is_empty() {
        let info = b.json(&["endpoint", "describe", &ep])?;
        let (dir, port) = (
            info["socket_dir"]
                .as_str()
                .context("socket_dir")?
                .to_string(),
            info["port"].as_u64().context("port")?.to_string(),
        );
        for db in &extra {
            let mut c = b.program("pgbench");
            c.args([
                "-n", "-c", "1", "-R", "50", "-h", &dir, "-p", &port, "-U", "postgres",
            ])
            // One line per transaction: pgbench's own clock, no row values.
            .arg("-l")
            .arg(format!("--log-prefix={}", pgbench_logs.join(db).display()))
            .args(["-T", &seconds.to_string(), db])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
            benches.push(c.spawn()?);
        }
    }
    if endpoint && large_objects {
        let info = b.json(&["endpoint", "describe", &ep])?;
        let mut c = b.program("pgbench");
        c.args(["-n", "-c", "1", "-R", &per_second.to_string(), "-f"])
            .arg(&script)
            .args([
                "-h",
                info["socket_dir"].as_str().context("socket_dir")?,
                "-p",
                &info["port"].as_u64().context("port")?.to_string(),
                "-U",
                "postgres",
                "-T",
                &seconds.to_string(),
                "postgres",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        benches.push(c.spawn()?);
    }
    let (mut pauses, mut waits, mut windows, mut ended) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut paused, mut back_paused) = (Vec::new(), Vec::new());
    // When the other pgseal commands of the chain ran (start, cleanup).
    let mut others = Vec::new();
    let mut carried = Vec::new();
    let mut phases = Vec::new();
    let mut back = Back::default();
    let mut back_windows = Vec::new();
    let mut source = first;
    for round in 0..rounds {
        let key = format!("bench/{label}{round}");
        let started = pgseal_workload::unix_ms();
        b.json(&["key", "create", "--alias", &key])?;
        let name = format!("{label}m{round}");
        let target = format!("{label}{}", round + 1);
        let out = b
            .pgseal(&[
                "migrate",
                "start",
                "--source",
                &source,
                "--target",
                &target,
                "--name",
                &name,
                "--key",
                &key,
                "--replica-identity-full",
            ])
            .output()?;
        if !out.status.success() {
            bail!("migrate start: {}", String::from_utf8_lossy(&out.stderr));
        }
        others.push((started, pgseal_workload::unix_ms()));
        std::thread::sleep(Duration::from_secs(3));
        let began = pgseal_workload::unix_ms();
        let report = if endpoint {
            switch(b, &["migrate", "cutover", &name, "--endpoint", &ep])?
        } else {
            switch(b, &["migrate", "cutover", &name, "--on-switch", "true"])?
        };
        windows.push((began, pgseal_workload::unix_ms()));
        paused.push(pause_window(&report)?);
        pauses.push(
            report["write_pause_ms"]
                .as_u64()
                .context("write_pause_ms")?,
        );
        waits.extend(report["client_wait_ms"].as_u64());
        let carried_ms = report["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["phase"] == "carried")
            .and_then(|p| p["ms"].as_f64())
            .unwrap_or(0.0);
        carried.push((
            carried_ms.ceil() as u64,
            report["carried"]["large_objects"]["copied"]
                .as_u64()
                .unwrap_or(0),
        ));
        ended += report["sessions_ended"].as_i64().unwrap_or(0);
        phases.push(phases_of(&report));
        if roll_back {
            // Writes land on the target for a while, then everything goes back.
            std::thread::sleep(Duration::from_secs(3));
            let began = pgseal_workload::unix_ms();
            let report = switch(b, &["migrate", "rollback", &name, "--endpoint", &ep])?;
            back_windows.push((began, pgseal_workload::unix_ms()));
            back_paused.push(pause_window(&report)?);
            back.pauses.push(
                report["write_pause_ms"]
                    .as_u64()
                    .context("write_pause_ms")?,
            );
            back.waits.extend(report["client_wait_ms"].as_u64());
            back.phases.push(phases_of(&report));
            // Cleanup after a rollback removes the target too.
            let started = pgseal_workload::unix_ms();
            b.json(&["migrate", "cleanup", &name])?;
            others.push((started, pgseal_workload::unix_ms()));
        } else {
            let started = pgseal_workload::unix_ms();
            b.json(&["migrate", "cleanup", &name, "--delete-source"])?;
            others.push((started, pgseal_workload::unix_ms()));
            source = target;
        }
    }
    if let Some(late) = windows
        .iter()
        .chain(&back_windows)
        .find(|(_, to)| *to > workload_ends)
    {
        bail!(
            "a switch ended at {} ms, after the workload's end ({workload_ends} ms): its clients were not measured; raise the workload's duration",
            late.1
        );
    }
    let out = workload.wait_with_output()?;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let slow: Vec<pgseal_workload::SlowTransaction> =
        serde_json::from_value(summary["slow_transactions"].clone()).unwrap_or_default();
    let client_max = per_window(&paused, |from, to| longest_during(&slow, from, to));
    let command_max = per_window(&windows, |from, to| longest_during(&slow, from, to));
    back.client_max = per_window(&back_paused, |from, to| longest_during(&slow, from, to));
    back.command_max = per_window(&back_windows, |from, to| longest_during(&slow, from, to));
    let mut pgbench = (0, 0);
    for child in benches {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        pgbench.0 += pgbench_field(&text, "number of transactions actually processed: ");
        let failed = pgbench_field(&text, "number of failed transactions: ");
        pgbench.1 += if out.status.success() && failed >= 0 {
            failed
        } else {
            1
        };
    }
    // (pgbench has written its logs once it has exited.)
    let latencies = pgbench_latencies(&pgbench_logs)?;
    let pgbench_max = per_window(&paused, |from, to| longest_pgbench(&latencies, from, to));
    back.pgbench_max = per_window(&back_paused, |from, to| {
        longest_pgbench(&latencies, from, to)
    });
    // Outside every pgseal command of the chain.
    let busy: Vec<(u64, u64)> = windows
        .iter()
        .chain(&back_windows)
        .chain(&others)
        .copied()
        .collect();
    let ledger_slow: Vec<(u64, u64)> = slow
        .iter()
        .map(|t| {
            let start = t.began_unix_ms * 1000;
            (start, start + (t.ms * 1000.0) as u64)
        })
        .collect();
    let background_max =
        longest_outside(&ledger_slow, &busy).max(longest_outside(&latencies, &busy));
    if endpoint {
        let _ = b.pgseal(&["endpoint", "delete", &ep]).output();
    }
    let _ = b.pgseal(&["instance", "delete", &source, "--yes"]).output();
    Ok(Chain {
        pgbench_max,
        pauses,
        waits,
        client_max,
        command_max,
        background_max,
        ended,
        ledger: summary,
        pgbench,
        carried,
        phases,
        back,
    })
}

/// The longest of the `slow` transactions that were under way between `from` and `to`
/// (Unix ms), rounded up; 0 when none was.
fn longest_during(slow: &[pgseal_workload::SlowTransaction], from: u64, to: u64) -> u64 {
    slow.iter()
        .filter(|t| t.began_unix_ms <= to && t.began_unix_ms as f64 + t.ms >= from as f64)
        .map(|t| t.ms.ceil() as u64)
        .max()
        .unwrap_or(0)
}

/// `p50 A, max B` of `xs` (ms), or `none` when empty.
fn spread(xs: &[u64]) -> String {
    if xs.is_empty() {
        return "none".into();
    }
    format!(
        "p50 {} ms, max {} ms",
        percentile(xs.to_vec(), 0.5),
        percentile(xs.to_vec(), 1.0)
    )
}

/// Prints what the chain over several databases (mode 3) measured.
fn print_databases(many: &Chain, databases: u32) {
    println!(
        "  endpoint over {databases} databases (ledger + pgbench in each other one): client max {} (target <= 1000), over the whole command {}, background {} ms; pgseal's timer {}; PgBouncer's longest wait {}; ledger client errors {}, pgbench {} processed, {} failed",
        spread(&many.client_max),
        spread(&many.command_max),
        many.background_max,
        spread(&many.pauses),
        spread(&many.waits),
        many.ledger["client_errors"],
        many.pgbench.0,
        many.pgbench.1
    );
    println!(
        "    pgbench's longest transaction during each cutover's pause (its own log): {}",
        spread(&many.pgbench_max)
    );
    println!(
        "    its cutovers' parts (ms, median): {}",
        median_phases(&many.phases)
    );
    println!(
        "    rolled back after each cutover: client max {} (target <= 1000), over the whole command {}; pgbench's longest transaction {}; pgseal's timer {}; PgBouncer's longest wait {}; parts (ms, median): {}",
        spread(&many.back.client_max),
        spread(&many.back.command_max),
        spread(&many.back.pgbench_max),
        spread(&many.back.pauses),
        spread(&many.back.waits),
        median_phases(&many.back.phases)
    );
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let rounds: usize = args.next_or(5)?;
    let rate: f64 = args.next_or(200.0)?;
    let databases: u32 = args.next_or(3)?;
    let tables: u32 = args.next_or(0)?;
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let one = Mode {
        databases: 1,
        large_objects: false,
        roll_back: false,
        tables,
    };
    let several = Mode {
        databases: databases.max(2),
        roll_back: true,
        ..one
    };
    // Only mode 3, for work on the pause over several databases.
    if std::env::var("BENCH_CUTOVER_ONLY").as_deref() == Ok("databases") {
        let many = chain(&b, "db", true, rounds, rate, several);
        b.remove_everything();
        let many = many?;
        println!(
            "cutover benchmark, mode 3 only: {rounds} rounds, ledger at {rate} tx/s, {tables} extra tables"
        );
        print_databases(&many, databases);
        return Ok(());
    }
    let result = (|| {
        let endpoint = chain(&b, "ep", true, rounds, rate, one)?;
        let hook = chain(&b, "hk", false, rounds, rate, one)?;
        let many = chain(&b, "db", true, rounds, rate, several)?;
        let with_objects = Mode {
            large_objects: true,
            ..one
        };
        let objects = chain(&b, "lo", true, rounds, rate, with_objects)?;
        anyhow::Ok((endpoint, hook, many, objects))
    })();
    // Whatever happened, leave no server, endpoint or mount behind.
    b.remove_everything();
    let (ep, hk, many, lo) = result?;
    println!(
        "cutover benchmark: {rounds} chained cutovers per mode, ledger workload at {rate} tx/s, {tables} extra tables \
         (client max: the ledger's longest transaction under way during each pause, by its own clock; \
         0 = none took {} ms; over the whole command: the same from the command's start to its end, work before the pause included; \
         background: the longest transaction, the ledger's or pgbench's, while no pgseal command ran)",
        pgseal_workload::SLOW_MS
    );
    println!(
        "  endpoint (PgBouncer PAUSE/RESUME): client max {} (target <= 1000), over the whole command {}, background {} ms; pgseal's timer {}; PgBouncer's longest wait {}; client errors {}, acknowledged {}",
        spread(&ep.client_max),
        spread(&ep.command_max),
        ep.background_max,
        spread(&ep.pauses),
        spread(&ep.waits),
        ep.ledger["client_errors"],
        ep.ledger["acknowledged"]
    );
    println!(
        "  hook (no endpoint; direct connections): client max {}; pgseal's timer {}; sessions ended by the fences {}, client errors {}",
        spread(&hk.client_max),
        spread(&hk.pauses),
        hk.ended,
        hk.ledger["client_errors"]
    );
    print_databases(&many, databases);
    println!(
        "  endpoint, one database: its cutovers' parts (ms, median): {}",
        median_phases(&ep.phases)
    );
    let lo_carried: Vec<u64> = lo.carried.iter().map(|c| c.0).collect();
    let lo_copied: Vec<u64> = lo.carried.iter().map(|c| c.1).collect();
    let ratio = |a: &[u64], b: &[u64]| {
        if a.is_empty() || b.is_empty() {
            0.0
        } else {
            percentile(a.to_vec(), 0.5) as f64 / percentile(b.to_vec(), 0.5).max(1) as f64
        }
    };
    println!(
        "  endpoint with large objects ({} of {} KiB to start, {}/s written through the endpoint): 'carried' inside the pause {}, objects copied there {}; pgseal's timer {} = {:.2}x the endpoint mode's p50 (target: no more than 100 ms longer); client max {}; ledger client errors {}, large objects written {} ({} failed)",
        LARGE_OBJECTS.0,
        LARGE_OBJECTS.1 >> 10,
        LARGE_OBJECTS.2,
        spread(&lo_carried),
        spread(&lo_copied).replace(" ms", ""),
        spread(&lo.pauses),
        ratio(&lo.pauses, &ep.pauses),
        spread(&lo.client_max),
        lo.ledger["client_errors"],
        lo.pgbench.0,
        lo.pgbench.1
    );
    println!(
        "{}",
        serde_json::json!({
            "large_objects_carried_ms": lo_carried, "large_objects_copied_in_pause": lo_copied,
            "large_objects_pauses_ms": lo.pauses, "large_objects_client_max_ms": lo.client_max,
            "large_objects_written": lo.pgbench.0, "large_objects_failed": lo.pgbench.1,
            "rounds": rounds, "rate": rate, "databases": databases,
            "endpoint_pauses_ms": ep.pauses, "endpoint_client_wait_ms": ep.waits,
            "endpoint_client_max_ms": ep.client_max,
            "endpoint_client_errors": ep.ledger["client_errors"],
            "endpoint_acknowledged": ep.ledger["acknowledged"],
            "hook_pauses_ms": hk.pauses, "hook_client_max_ms": hk.client_max,
            "hook_sessions_ended": hk.ended, "hook_client_errors": hk.ledger["client_errors"],
            "databases_pauses_ms": many.pauses, "databases_client_wait_ms": many.waits,
            "databases_client_max_ms": many.client_max,
            "databases_client_errors": many.ledger["client_errors"],
            "databases_pgbench_processed": many.pgbench.0, "databases_pgbench_failed": many.pgbench.1,
            "rollback_pauses_ms": many.back.pauses, "rollback_client_wait_ms": many.back.waits,
            "rollback_client_max_ms": many.back.client_max,
            "rollback_command_max_ms": many.back.command_max,
            "databases_command_max_ms": many.command_max,
            "endpoint_command_max_ms": ep.command_max,
            "databases_background_max_ms": many.background_max,
            "endpoint_background_max_ms": ep.background_max,
            "databases_pgbench_max_ms": many.pgbench_max,
            "rollback_pgbench_max_ms": many.back.pgbench_max,
            "tables": tables,
        })
    );
    Ok(())
}
