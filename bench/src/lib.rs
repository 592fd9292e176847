//! Shared pieces of pgseal's benchmarks: timing child processes with their peak memory,
//! and medians. Each benchmark measures its baseline in the same run and prints ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One timed run of a child process.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Peak resident memory of that child alone, in KiB (`wait4`'s `ru_maxrss`).
    pub max_rss_kib: i64,
}

/// Runs `cmd` to completion (stdout discarded) and times it; measures that child's own
/// peak RSS. A non-zero exit is an error.
pub fn timed(mut cmd: Command) -> anyhow::Result<Run> {
    cmd.stdout(Stdio::null()).stdin(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; `status` and `usage` are valid for
    // writes. The `Child` is never waited on afterwards (dropping it does not wait).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    if reaped != pid {
        bail!(
            "wait4 failed for {cmd:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status})");
    }
    drop(child);
    Ok(Run {
        elapsed,
        max_rss_kib: usage.ru_maxrss,
    })
}

/// The median of some durations.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// A binary built beside this one in the same target directory (`cargo build --release
/// --bins` builds both).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.parent().map(|d| d.join(name)).unwrap_or_default();
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes `mib` MiB of incompressible data (xorshift) to `path`.
pub fn write_incompressible(path: &Path, mib: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}
