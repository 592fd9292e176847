//! The local platform's costs, each against a baseline measured in the same run:
//! 1. encrypted snapshot (`pgseal snapshot create --encrypt`) vs plain `pg_basebackup -Ft`
//!    of the same pgbench database (target <= 1.2x);
//! 2. restore of the encrypted snapshot vs restore of a plain snapshot;
//! 3. pgbench TPS on an encrypted instance vs a plain one (same settings): the price of
//!    encryption at rest.
//!
//! Usage: `bench-platform [SCALE] [SECONDS] [ROUNDS]` (default 50, 30, 3), as root, from
//! the workspace root. Run `bench/platform`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use pgseal_bench::{Harness as Bench, median, timed};

/// Runs `pgbench -c 4 -j 2 -T SECONDS` on an instance and returns its TPS.
fn pgbench_tps(b: &Bench, instance: &str, seconds: u32) -> anyhow::Result<f64> {
    let out = b
        .program("pgbench")
        .args(["-c", "4", "-j", "2", "-T", &seconds.to_string(), "-n"])
        .args(b.conn(instance)?)
        .arg("postgres")
        .output()?;
    if !out.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps line in pgbench output: {text}"))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let scale: u32 = args.next_or(50)?;
    let seconds: u32 = args.next_or(30)?;
    let rounds: usize = args.next_or(3)?;
    let dir = pgseal_bench::work_dir()?;
    let b = Bench::new(&dir.path().join("home"))?;
    let result = run(&b, dir.path(), scale, seconds, rounds);
    // Whatever happened, leave no server or mount behind.
    for name in ["bench-plain", "bench-enc", "restore-plain", "restore-enc"] {
        let _ = b.pgseal(&["instance", "delete", name, "--yes"]).output();
    }
    result
}

fn run(b: &Bench, dir: &Path, scale: u32, seconds: u32, rounds: usize) -> anyhow::Result<()> {
    let storage = format!("{}MiB", 1024 + scale * 60);
    for (name, extra) in [("bench-plain", None), ("bench-enc", Some("--encrypted"))] {
        let mut a = vec!["instance", "create", name, "--storage", &storage];
        a.extend(extra);
        b.json(&a)?;
        b.pgbench_init(name, scale)?;
    }

    // 1. Encrypted snapshot vs plain pg_basebackup -Ft, rounds in rotating order.
    let (mut t_base, mut t_snap) = (vec![], vec![]);
    for round in 0..rounds {
        for step in 0..2 {
            let _ = timed(Command::new("sync"));
            if (round + step) % 2 == 0 {
                t_base.push(
                    b.basebackup("bench-plain", &dir.join("basebackup"))?
                        .elapsed,
                );
            } else {
                let _ = b.pgseal(&["snapshot", "delete", "snap-enc"]).output();
                t_snap.push(
                    timed(b.pgseal(&[
                        "snapshot",
                        "create",
                        "bench-plain",
                        "--name",
                        "snap-enc",
                        "--encrypt",
                    ]))?
                    .elapsed,
                );
            }
        }
    }
    let backup_mib = b.json(&["snapshot", "describe", "snap-enc"])?["backup_bytes"]
        .as_u64()
        .unwrap_or(0)
        >> 20;

    // 2. Restore: encrypted snapshot vs plain snapshot.
    b.json(&["snapshot", "create", "bench-plain", "--name", "snap-plain"])?;
    let (mut t_rp, mut t_re) = (vec![], vec![]);
    for round in 0..rounds {
        for step in 0..2 {
            let (snap, inst, times) = if (round + step) % 2 == 0 {
                ("snap-plain", "restore-plain", &mut t_rp)
            } else {
                ("snap-enc", "restore-enc", &mut t_re)
            };
            let _ = b.pgseal(&["instance", "delete", inst, "--yes"]).output();
            let _ = timed(Command::new("sync"));
            times.push(
                timed(b.pgseal(&[
                    "snapshot",
                    "restore",
                    snap,
                    "--instance",
                    inst,
                    "--storage",
                    &storage,
                ]))?
                .elapsed,
            );
        }
    }
    for inst in ["restore-plain", "restore-enc"] {
        let _ = b.pgseal(&["instance", "delete", inst, "--yes"]).output();
    }

    // 3. pgbench TPS, alternating which instance goes first.
    let (mut tps_plain, mut tps_enc) = (vec![], vec![]);
    for round in 0..2 {
        let order = if round % 2 == 0 {
            ["bench-plain", "bench-enc"]
        } else {
            ["bench-enc", "bench-plain"]
        };
        for inst in order {
            let tps = pgbench_tps(b, inst, seconds)?;
            if inst == "bench-plain" {
                tps_plain.push(tps)
            } else {
                tps_enc.push(tps)
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;

    let (base, snap, rp, re) = (median(t_base), median(t_snap), median(t_rp), median(t_re));
    let (tp, te) = (mean(&tps_plain), mean(&tps_enc));
    println!(
        "platform benchmark: pgbench scale {scale} ({backup_mib} MiB backup), medians of {rounds} rounds in rotating order"
    );
    println!(
        "  plain pg_basebackup -Ft -X fetch      {:>7.2} s",
        secs(base)
    );
    println!(
        "  pgseal snapshot create --encrypt      {:>7.2} s  ratio {:.2} (target <= 1.2)",
        secs(snap),
        secs(snap) / secs(base)
    );
    println!(
        "  restore of the plain snapshot         {:>7.2} s",
        secs(rp)
    );
    println!(
        "  restore of the encrypted snapshot     {:>7.2} s  ratio {:.2}",
        secs(re),
        secs(re) / secs(rp)
    );
    println!(
        "  pgbench -c 4 -j 2 -T {seconds}: plain {tp:.0} tps, encrypted {te:.0} tps, ratio {:.3}",
        te / tp
    );
    // The kernel's AES driver decides most of the encrypted TPS: say which one ran.
    let aes = std::fs::read_to_string("/proc/crypto")
        .unwrap_or_default()
        .split("\n\n")
        .find(|block| block.contains("name         : xts(aes)"))
        .and_then(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("driver       : ").map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    println!("  kernel xts(aes) driver: {aes} (software AES when it is not an aesni/vaes driver)");
    println!(
        "{}",
        serde_json::json!({
            "scale": scale, "backup_mib": backup_mib, "rounds": rounds,
            "basebackup_s": secs(base), "encrypted_snapshot_s": secs(snap), "snapshot_ratio": secs(snap) / secs(base),
            "restore_plain_s": secs(rp), "restore_encrypted_s": secs(re), "restore_ratio": secs(re) / secs(rp),
            "kernel_xts_aes_driver": aes, "tps_plain": tp, "tps_encrypted": te, "tps_ratio": te / tp, "tps_runs_plain": tps_plain, "tps_runs_encrypted": tps_enc,
        })
    );
    Ok(())
}
