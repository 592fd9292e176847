//! `pgseal workload ...`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use pgseal_local::instance::LocalInstances;
use pgseal_workload::{Ledger, RunOptions, read_ledger, run as run_workload, verify};

use super::{Context, Outcome, print_json, url_config};
use crate::cli::{WorkloadCommand, WorkloadTarget};
use crate::exit;

/// The connection a target names (see [`url_config`] for URLs and their passwords).
fn config(ctx: &Context, target: &WorkloadTarget) -> anyhow::Result<tokio_postgres::Config> {
    if let Some(name) = &target.instance {
        return Ok(LocalInstances::open(&ctx.home)?
            .describe(name)?
            .sql_config());
    }
    if let Some(name) = &target.endpoint {
        return Ok(LocalInstances::open(&ctx.home)?
            .endpoint(name)?
            .sql_config("postgres"));
    }
    let url = target
        .url
        .as_deref()
        .context("give --url, --instance or --endpoint")?;
    url_config(url, "--url")
}

/// Sets `stop` when SIGINT or SIGTERM arrives, so that a run ended early still finishes
/// its transactions, syncs its ledger and prints its summary.
fn stop_on_signals(
    runtime: &tokio::runtime::Runtime,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _entered = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let stop = stop.clone();
    runtime.spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("signal received: ending the run after the transactions under way");
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

/// Runs one workload command.
pub fn run(ctx: &Context, action: &WorkloadCommand) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match action {
        WorkloadCommand::Run {
            target,
            rate,
            duration,
            clients,
        } => {
            let config = config(ctx, target)?;
            let ledger = Arc::new(Ledger::open(&target.ledger)?);
            let opts = RunOptions {
                rate: *rate,
                duration: Duration::from_secs(*duration),
                clients: *clients,
                stop: Default::default(),
            };
            stop_on_signals(&runtime, &opts.stop)?;
            ctx.status(format!(
                "writing {rate} tx/s from {clients} clients for {duration} s; ledger {}",
                target.ledger.display()
            ));
            let summary = runtime.block_on(run_workload(&config, ledger, &opts))?;
            if ctx.json {
                print_json(&summary)?;
            } else {
                println!(
                    "acknowledged {} (inserts {}, updates {}, deletes {}), uncertain {}, client errors {}; longest transaction {:.0} ms, {} took {} ms or more",
                    summary.acknowledged,
                    summary.inserts,
                    summary.updates,
                    summary.deletes,
                    summary.uncertain,
                    summary.client_errors,
                    summary.latency_max_ms,
                    summary.slow_transactions.len(),
                    pgseal_workload::SLOW_MS
                );
            }
            Ok(exit::code(exit::OK))
        }
        WorkloadCommand::Verify { target } => {
            let config = config(ctx, target)?;
            let entries = read_ledger(&target.ledger)?;
            let v = runtime.block_on(verify(&config, &entries))?;
            if ctx.json {
                print_json(&v)?;
            } else {
                println!(
                    "acknowledged {}, uncertain {}, missing {}, duplicated {}, unexpected {}",
                    v.acknowledged, v.uncertain, v.missing, v.duplicated, v.unexpected
                );
                for (what, ids) in [
                    ("missing", &v.missing_ids),
                    ("duplicated", &v.duplicated_ids),
                    ("unexpected", &v.unexpected_ids),
                ] {
                    if !ids.is_empty() {
                        let shown: Vec<String> = ids.iter().map(i64::to_string).collect();
                        println!("  {what} (first {}): {}", ids.len(), shown.join(" "));
                    }
                }
            }
            Ok(exit::code(if v.is_clean() {
                exit::OK
            } else {
                exit::VERIFY_FAILED
            }))
        }
    }
}
