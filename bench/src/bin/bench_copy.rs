//! One big table streamed from a source onto an encrypted target three ways, in the same
//! run, on the same storage (issue 35: the copy a faster full load would be built on):
//! 1. `pg_dump --data-only -t pgbench_accounts | psql` (the baseline a DBA runs);
//! 2. `pgseal_pg::copy` in PostgreSQL's text format (`COPY ... TO STDOUT` piped into
//!    `COPY ... FROM STDIN` in one process, nothing on local disk);
//! 3. the same in the binary format.
//!
//! The target's table keeps its primary key, as in every way alike, and is emptied before
//! each copy. Prints each way's median time, rows/s and MiB/s of `COPY` data, and its
//! ratio to the baseline.
//!
//! Usage: `bench-copy [SCALE] [ROUNDS] [ENGINE_VERSION]` (default 20, 3, 17), as root,
//! from the workspace root. Run `bench/copy`.

use std::time::{Duration, Instant};

use pgseal_bench::{Harness, median, timed};
use pgseal_pg::copy::{CopyFormat, copy_table};

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(20)?;
    let rounds: usize = args.next_or(3)?;
    let version: u32 = args.next_or(17)?;
    pgseal_bench::on_harness(|b| run(b, scale, rounds.max(1), version))
}

/// A pinned session on an instance's `postgres` database over its unix socket.
async fn session(b: &Harness, instance: &str) -> anyhow::Result<tokio_postgres::Client> {
    let env = b.libpq(instance, "postgres")?;
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(get("PGHOST"))
        .port(get("PGPORT").parse()?)
        .user("postgres")
        .dbname("postgres");
    Ok(pgseal_pg::connect_pinned(&config).await?)
}

fn run(b: &Harness, scale: u32, rounds: usize, version: u32) -> anyhow::Result<()> {
    b.pgbench_source("2GiB", scale)?;
    let version = version.to_string();
    b.json(&[
        "instance",
        "create",
        "bench-dst",
        "--encrypted",
        "--storage",
        "4GiB",
        "--engine-version",
        &version,
    ])?;
    // The table's definition with its key, and nothing else.
    timed(b.between(
        "\"$BIN/pg_dump\" -h \"$S_PGHOST\" -p \"$S_PGPORT\" -U \"$S_PGUSER\" --schema-only -t pgbench_accounts \"$S_PGDATABASE\" \
         | \"$BIN/psql\" -X -q -v ON_ERROR_STOP=1 -h \"$T_PGHOST\" -p \"$T_PGPORT\" -U \"$T_PGUSER\" \"$T_PGDATABASE\"",
        ("bench-src", "postgres"),
        ("bench-dst", "postgres"),
    )?)?;
    let rows: f64 = b
        .psql("bench-src", "SELECT count(*) FROM pgbench_accounts")?
        .parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut dump, mut text, mut binary) = (Vec::new(), Vec::new(), Vec::new());
    let (mut text_bytes, mut binary_bytes) = (0u64, 0u64);
    let empty = || b.psql("bench-dst", "TRUNCATE pgbench_accounts; CHECKPOINT");
    for _ in 0..rounds {
        empty()?;
        dump.push(
            timed(b.between(
                "\"$BIN/pg_dump\" -h \"$S_PGHOST\" -p \"$S_PGPORT\" -U \"$S_PGUSER\" --data-only -t pgbench_accounts \"$S_PGDATABASE\" \
                 | \"$BIN/psql\" -X -q -v ON_ERROR_STOP=1 -h \"$T_PGHOST\" -p \"$T_PGPORT\" -U \"$T_PGUSER\" \"$T_PGDATABASE\"",
                ("bench-src", "postgres"),
                ("bench-dst", "postgres"),
            )?)?
            .elapsed,
        );
        for (format, times, bytes) in [
            (CopyFormat::Text, &mut text, &mut text_bytes),
            (CopyFormat::Binary, &mut binary, &mut binary_bytes),
        ] {
            empty()?;
            let (elapsed, copied) = runtime.block_on(async {
                let (from, to) = (
                    session(b, "bench-src").await?,
                    session(b, "bench-dst").await?,
                );
                let started = Instant::now();
                let copied =
                    copy_table(&from, &to, ("public", "pgbench_accounts"), &[], format).await?;
                anyhow::Ok((started.elapsed(), copied))
            })?;
            anyhow::ensure!(
                copied.rows as f64 == rows,
                "{format:?} copied {} rows of {rows}",
                copied.rows
            );
            times.push(elapsed);
            *bytes = copied.bytes;
        }
    }
    let (dump, text, binary) = (median(dump), median(text), median(binary));
    let line = |name: &str, t: Duration, bytes: Option<u64>| {
        let mib = bytes
            .map(|b| {
                format!(
                    ", {:.1} MiB/s of COPY data",
                    b as f64 / 1048576.0 / t.as_secs_f64()
                )
            })
            .unwrap_or_default();
        println!(
            "  {name}: {:.2} s, {:.0} rows/s{mib}, {:.2}x the baseline",
            t.as_secs_f64(),
            rows / t.as_secs_f64(),
            t.as_secs_f64() / dump.as_secs_f64()
        );
    };
    println!(
        "copy benchmark: pgbench_accounts at scale {scale} ({rows} rows) onto an encrypted PostgreSQL {version} target, median of {rounds} rounds"
    );
    line("pg_dump --data-only | psql (baseline)", dump, None);
    line("pgseal_pg::copy, text", text, Some(text_bytes));
    line("pgseal_pg::copy, binary", binary, Some(binary_bytes));
    println!(
        "{}",
        serde_json::json!({
            "scale": scale, "rows": rows, "rounds": rounds, "engine_version": version,
            "dump_seconds": dump.as_secs_f64(), "text_seconds": text.as_secs_f64(),
            "binary_seconds": binary.as_secs_f64(), "text_bytes": text_bytes,
            "binary_bytes": binary_bytes,
        })
    );
    Ok(())
}
