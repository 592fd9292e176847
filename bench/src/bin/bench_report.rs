//! Report benchmark: `pgseal migrate report` of a migration whose journal holds a day of
//! one-per-second samples (86,400, the densest a caller could offer, well above what the
//! journal keeps: see `pgseal_core::samples`) vs `pgseal migrate list` on the same journal
//! (the cost of starting pgseal and opening the journal); then the cost of offering a
//! sample (the spacing check that refuses it, and a kept insert) vs journaling one step,
//! in the SQLite journal and in a PostgreSQL one (the cost of a shared journal).
//! Args: [ROUNDS].

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgseal_bench::{Harness, median, timed, work_dir};
use pgseal_core::journal::Journal;
use pgseal_core::samples::Sample;
use pgseal_core::{MigrationSpec, Step};

const DAY: i64 = 86_400;

fn spec(name: &str) -> anyhow::Result<MigrationSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": name, "source": "src", "target": "src-enc", "target_port": null,
        "key": "alias/bench", "database": "postgres", "databases": null, "tables": null,
        "allow_restart": false, "replica_identity_full": false,
        "long_transaction_seconds": 300, "max_slot_retention": 1u64 << 30,
        "slot_wait_seconds": 180,
    }))?)
}

fn sample(at_ms: i64, i: i64) -> Sample {
    Sample {
        at_ms,
        database: "postgres".into(),
        source_lsn: (i as u64) << 16,
        confirmed_lsn: Some(((i as u64) << 16) - 4096),
        lag_bytes: Some(4096 + (i as u64 % 600) * 1024),
        lag_seconds: Some(0.01),
        retained_bytes: Some(1 << 20),
    }
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(5), |r| r.parse())?;
    let work = work_dir()?;
    let home = work.path().join("home");
    let journal = Journal::open(&home)?;
    journal.create(&spec("day")?)?;
    for step in Step::ALL {
        let run = journal.step_started("day", step)?;
        journal.step_done(run, &serde_json::json!({}))?;
    }
    // A day of one-per-second samples, recorded past the journal's spacing (it would
    // keep one in 30 s of them).
    let start = pgseal_core::journal::now_ms() - DAY * 1000;
    let day: Vec<Sample> = (0..DAY).map(|i| sample(start + i * 1000, i + 1)).collect();
    journal.insert_samples("day", &day)?;
    let harness = Harness::new(&home)?;
    let page = work.path().join("report.html");
    let (mut reports, mut lists) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let p = page.display().to_string();
        reports.push(timed(harness.pgseal(&["migrate", "report", "day", "--output", &p]))?.elapsed);
        lists.push(timed(harness.pgseal(&["migrate", "list"]))?.elapsed);
    }
    let (report, list) = (median(reports), median(lists));
    let bytes = std::fs::metadata(&page).context("the report")?.len();
    println!(
        "migrate report, {DAY} samples: {:.3} s median of {rounds} (page {} KiB); migrate list: {:.3} s; ratio {:.2}x; report alone {:.3} s (target < 1 s)",
        report.as_secs_f64(),
        bytes >> 10,
        list.as_secs_f64(),
        report.as_secs_f64() / list.as_secs_f64(),
        report.saturating_sub(list).as_secs_f64()
    );

    // Offering samples: refused by the spacing rule (the common case while watching),
    // kept (an insert with a synchronous commit), against journaling one step; in the
    // SQLite journal, then in a PostgreSQL one (a server started here, with fsync on, as a
    // team's would be, reached over TCP loopback).
    let (refused, kept, step) = offers(&journal)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "sqlite: offer a sample: refused {:.3} ms, kept {:.3} ms; journaling one step {:.3} ms; kept/step {:.2}x",
        ms(refused),
        ms(kept),
        ms(step),
        kept.as_secs_f64() / step.as_secs_f64()
    );
    let server = pgseal_testkit::TestCluster::builder()
        .setting("fsync", "on")
        .start()?;
    let shared = Journal::open_at(
        &home,
        &pgseal_core::journal::Location::Postgres(server.url("postgres")),
    )?;
    let (pg_refused, pg_kept, pg_step) = offers(&shared)?;
    println!(
        "postgresql: offer a sample: refused {:.3} ms, kept {:.3} ms; journaling one step {:.3} ms; \
         against sqlite: refused {:.2}x, kept {:.2}x, step {:.2}x",
        ms(pg_refused),
        ms(pg_kept),
        ms(pg_step),
        pg_refused.as_secs_f64() / refused.as_secs_f64(),
        pg_kept.as_secs_f64() / kept.as_secs_f64(),
        pg_step.as_secs_f64() / step.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "report", "samples": DAY, "report_s": report.as_secs_f64(),
            "list_s": list.as_secs_f64(), "page_bytes": bytes,
            "offer_refused_ms": ms(refused), "offer_kept_ms": ms(kept), "step_ms": ms(step),
            "pg_offer_refused_ms": ms(pg_refused), "pg_offer_kept_ms": ms(pg_kept),
            "pg_step_ms": ms(pg_step),
        })
    );
    Ok(())
}

/// The cost of an offered sample refused by the spacing rule, of one kept, and of
/// journaling one step (started, then done), in `journal`.
fn offers(journal: &Journal) -> anyhow::Result<(Duration, Duration, Duration)> {
    journal.create(&spec("offers")?)?;
    let now = pgseal_core::journal::now_ms();
    journal.offer_samples("offers", &[sample(now, 1)])?;
    let n = 1000;
    let started = Instant::now();
    for i in 0..n {
        assert!(!journal.offer_samples("offers", &[sample(now + 10, i + 2)])?);
    }
    let refused = started.elapsed() / n as u32;
    let kept_n = 100;
    let started = Instant::now();
    for i in 0..kept_n {
        assert!(journal.offer_samples("offers", &[sample(now + (i + 1) * 31_000, i + 2)])?);
    }
    let kept = started.elapsed() / kept_n as u32;
    let started = Instant::now();
    for _ in 0..kept_n {
        let run = journal.step_started("offers", Step::Validate)?;
        journal.step_done(run, &serde_json::json!({}))?;
    }
    let step = started.elapsed() / kept_n as u32;
    Ok((refused, kept, step))
}
