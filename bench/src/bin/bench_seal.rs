//! Seal and unseal a large file with the `pgseal` binary, against a plain copy of the same
//! file measured in the same run, and print the ratios and peak RSS.
//!
//! Two comparisons, each a median over rounds. Within a round the three commands run in an
//! order rotated from round to round, so none always follows the others' writes (the
//! disk here throttles bursts), and a `sync`, untimed, precedes every timed command so one
//! command's dirty pages do not bill the next:
//! - **to disk**: `dd bs=1M conv=fsync` (read/write through user space, then fsync, as
//!   pgseal does) vs `pgseal seal IN OUT` and `pgseal unseal OUT BACK`;
//! - **to /dev/null**: the same with the output discarded, which isolates the CPU cost of
//!   sealing from the disk's.
//!
//! Usage: `bench-seal [SIZE_MIB] [ROUNDS]` (default 1024 MiB, 6 rounds). Run `bench/seal`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgseal_bench::{median, sibling_binary, timed, write_incompressible};

const PASSPHRASE: &str = "benchmark passphrase only";

/// Medians of one comparison.
struct Comparison {
    copy: Duration,
    seal: Duration,
    unseal: Duration,
}

fn dd(input: &Path, output: &str, fsync: bool) -> Command {
    let mut c = Command::new("dd");
    c.arg(format!("if={}", input.display()))
        .arg(format!("of={output}"))
        .args(["bs=1M", "status=none"]);
    if fsync {
        c.arg("conv=fsync");
    }
    c
}

fn sync() -> anyhow::Result<()> {
    timed(Command::new("sync")).map(|_| ())
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let size_mib: usize = args.next_or(1024)?;
    let rounds: usize = args.next_or(6)?;
    let pgseal = sibling_binary("pgseal")?;
    // On the work disk, not tmpfs: the comparison is about real files.
    let dir = tempfile::Builder::new()
        .prefix("pgseal-bench-")
        .tempdir_in(std::env::current_dir()?)?;
    let input = dir.path().join("input.bin");
    write_incompressible(&input, size_mib)?;
    let home = dir.path().join("home");
    let pg = |args: &[&OsStr]| {
        let mut c = Command::new(&pgseal);
        c.env("PGSEAL_HOME", &home)
            .env("PGSEAL_PASSPHRASE", PASSPHRASE)
            .arg("-q")
            .args(args);
        c
    };
    // The key store and key are made once, outside the timed runs.
    timed(pg(&[
        "key".as_ref(),
        "create".as_ref(),
        "--alias".as_ref(),
        "bench".as_ref(),
    ]))?;

    let copy = dir.path().join("copy.bin");
    let sealed = dir.path().join("sealed.bin");
    let back = dir.path().join("back.bin");
    // The stream unseal reads is made once, untimed, so rounds can run in any order.
    let reference = dir.path().join("reference.sealed");
    let seal_cmd = |out: &OsStr| {
        pg(&[
            "seal".as_ref(),
            "--key".as_ref(),
            "bench".as_ref(),
            input.as_os_str(),
            out,
        ])
    };
    let unseal_cmd = |out: &OsStr| pg(&["unseal".as_ref(), reference.as_os_str(), out]);
    timed(seal_cmd(reference.as_os_str()))?;

    // Per command (0 = dd, 1 = seal, 2 = unseal): times to disk, times to /dev/null.
    let mut disk: [Vec<Duration>; 3] = Default::default();
    let mut devnull: [Vec<Duration>; 3] = Default::default();
    let (mut rss_copy, mut rss_pgseal) = (0, 0);
    for round in 0..rounds {
        for step in 0..3 {
            let which = (round + step) % 3;
            let (to_disk, to_null) = match which {
                0 => {
                    let _ = std::fs::remove_file(&copy);
                    (
                        dd(&input, &copy.display().to_string(), true),
                        dd(&input, "/dev/null", false),
                    )
                }
                1 => {
                    let _ = std::fs::remove_file(&sealed);
                    (seal_cmd(sealed.as_os_str()), seal_cmd("-".as_ref()))
                }
                _ => {
                    let _ = std::fs::remove_file(&back);
                    (unseal_cmd(back.as_os_str()), unseal_cmd("-".as_ref()))
                }
            };
            sync()?;
            let r = timed(to_disk)?;
            disk[which].push(r.elapsed);
            if which == 0 {
                rss_copy = rss_copy.max(r.max_rss_kib);
            } else {
                rss_pgseal = rss_pgseal.max(r.max_rss_kib);
            }
            devnull[which].push(timed(to_null)?.elapsed);
        }
    }
    if std::fs::read(&back)? != std::fs::read(&input)? {
        anyhow::bail!("unsealed output differs from the input");
    }
    let summarize = |[copy, seal, unseal]: [Vec<Duration>; 3]| Comparison {
        copy: median(copy),
        seal: median(seal),
        unseal: median(unseal),
    };
    let (disk, devnull) = (summarize(disk), summarize(devnull));
    let mibs = |d: Duration| size_mib as f64 / d.as_secs_f64();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();

    println!(
        "seal benchmark: {size_mib} MiB of incompressible data, median of {rounds} rounds in rotating order"
    );
    for (name, c) in [("to disk (fsync)", &disk), ("to /dev/null", &devnull)] {
        println!("  {name}");
        println!(
            "    plain copy (dd bs=1M)  {:>7.3} s  {:>6.0} MiB/s",
            c.copy.as_secs_f64(),
            mibs(c.copy)
        );
        println!(
            "    pgseal seal            {:>7.3} s  {:>6.0} MiB/s  ratio {:.2}",
            c.seal.as_secs_f64(),
            mibs(c.seal),
            ratio(c.seal, c.copy)
        );
        println!(
            "    pgseal unseal          {:>7.3} s  {:>6.0} MiB/s  ratio {:.2}",
            c.unseal.as_secs_f64(),
            mibs(c.unseal),
            ratio(c.unseal, c.copy)
        );
    }
    println!("  targets: seal and unseal <= 1.25x the plain copy to disk; peak RSS < 64 MiB");
    println!(
        "  peak RSS: pgseal {:.1} MiB, dd {:.1} MiB",
        rss_pgseal as f64 / 1024.0,
        rss_copy as f64 / 1024.0
    );
    let report = serde_json::json!({
        "size_mib": size_mib,
        "rounds": rounds,
        "disk": { "copy_s": disk.copy.as_secs_f64(), "seal_s": disk.seal.as_secs_f64(), "unseal_s": disk.unseal.as_secs_f64(),
                  "seal_ratio": ratio(disk.seal, disk.copy), "unseal_ratio": ratio(disk.unseal, disk.copy) },
        "devnull": { "copy_s": devnull.copy.as_secs_f64(), "seal_s": devnull.seal.as_secs_f64(), "unseal_s": devnull.unseal.as_secs_f64(),
                     "seal_ratio": ratio(devnull.seal, devnull.copy), "unseal_ratio": ratio(devnull.unseal, devnull.copy) },
        "peak_rss_mib": { "pgseal": rss_pgseal as f64 / 1024.0, "dd": rss_copy as f64 / 1024.0 },
    });
    println!("{report}");
    Ok(())
}
