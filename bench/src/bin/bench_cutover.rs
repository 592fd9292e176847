//! Cutover write pause, against the other way of switching measured in the same run:
//! 1. endpoint mode: the ledger workload writes through a PgBouncer endpoint at a steady
//!    rate for the whole run; ROUNDS migrations each cut over through it (each round
//!    migrates the previous round's target onto a new key: a chain of key changes). Write
//!    pause per cutover (pause to first write accepted on the target), p50 and max; client
//!    errors over the whole run (target: max <= 1 s, 0 errors).
//! 2. hook mode: the same, without an endpoint; the workload writes straight to the source,
//!    whose sessions the fence ends (connections dropped and re-made by the application).
//!
//! Usage: `bench-cutover [ROUNDS] [RATE]` (default 5, 200), as root, from the workspace
//! root. Run `bench/cutover`.

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

/// Runs `rounds` chained migrations with cutover; returns the write pauses (ms), the
/// sessions the fences ended, and the workload's summary.
fn chain(
    b: &Harness,
    label: &str,
    endpoint: bool,
    rounds: usize,
    rate: f64,
) -> anyhow::Result<(Vec<u64>, i64, serde_json::Value)> {
    let first = format!("{label}0");
    b.json(&["instance", "create", &first, "--param", "wal_level=logical"])?;
    let ep = format!("{label}-ep");
    if endpoint {
        b.json(&["endpoint", "create", &ep, "--instance", &first])?;
    }
    let ledger = b.home.join(format!("{label}.ledger")).display().to_string();
    let seconds = 20 * rounds as u64 + 10;
    let on: Vec<String> = if endpoint {
        vec!["--endpoint".into(), ep.clone()]
    } else {
        vec!["--instance".into(), first.clone()]
    };
    let on: Vec<&str> = on.iter().map(String::as_str).collect();
    let workload = spawn_workload(b, &on, &ledger, rate, seconds)?;
    let (mut pauses, mut ended) = (Vec::new(), 0);
    let mut source = first;
    for round in 0..rounds {
        let key = format!("bench/{label}{round}");
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
        std::thread::sleep(Duration::from_secs(3));
        let report = if endpoint {
            b.json(&["migrate", "cutover", &name, "--endpoint", &ep])?
        } else {
            b.json(&["migrate", "cutover", &name, "--on-switch", "true"])?
        };
        pauses.push(
            report["write_pause_ms"]
                .as_u64()
                .context("write_pause_ms")?,
        );
        ended += report["sessions_ended"].as_i64().unwrap_or(0);
        b.json(&["migrate", "cleanup", &name, "--delete-source"])?;
        source = target;
    }
    let out = workload.wait_with_output()?;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if endpoint {
        let _ = b.pgseal(&["endpoint", "delete", &ep]).output();
    }
    let _ = b.pgseal(&["instance", "delete", &source, "--yes"]).output();
    Ok((pauses, ended, summary))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let rate: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200.0);
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let result = (|| {
        let endpoint = chain(&b, "ep", true, rounds, rate)?;
        let hook = chain(&b, "hk", false, rounds, rate)?;
        anyhow::Ok((endpoint, hook))
    })();
    // Whatever happened, leave no server, endpoint or mount behind.
    if let Ok(list) = b.json(&["endpoint", "list"]) {
        for e in list.as_array().into_iter().flatten() {
            let _ = b
                .pgseal(&["endpoint", "delete", e["name"].as_str().unwrap_or_default()])
                .output();
        }
    }
    if let Ok(list) = b.json(&["instance", "list"]) {
        for i in list.as_array().into_iter().flatten() {
            let name = i["name"].as_str().unwrap_or_default();
            let _ = b.pgseal(&["instance", "delete", name, "--yes"]).output();
        }
    }
    let ((ep_pauses, _, ep_run), (hk_pauses, hk_ended, hk_run)) = result?;
    println!(
        "cutover benchmark: {rounds} chained cutovers per mode, ledger workload at {rate} tx/s"
    );
    println!(
        "  endpoint (PgBouncer PAUSE/RESUME): write pause p50 {} ms, max {} ms (target <= 1000); client errors {}, acknowledged {}",
        percentile(ep_pauses.clone(), 0.5),
        percentile(ep_pauses.clone(), 1.0),
        ep_run["client_errors"],
        ep_run["acknowledged"]
    );
    println!(
        "  hook (no endpoint; direct connections): write pause p50 {} ms, max {} ms; sessions ended by the fences {}, client errors {}",
        percentile(hk_pauses.clone(), 0.5),
        percentile(hk_pauses.clone(), 1.0),
        hk_ended,
        hk_run["client_errors"]
    );
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds, "rate": rate,
            "endpoint_pauses_ms": ep_pauses, "endpoint_client_errors": ep_run["client_errors"],
            "endpoint_acknowledged": ep_run["acknowledged"],
            "hook_pauses_ms": hk_pauses, "hook_sessions_ended": hk_ended, "hook_client_errors": hk_run["client_errors"],
        })
    );
    Ok(())
}
