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

/// The passphrase benchmark homes use (throwaway key stores only).
pub const PASSPHRASE: &str = "benchmark passphrase only";

/// Runs `pgseal` and the PostgreSQL programs against one throwaway pgseal home.
#[derive(Debug)]
pub struct Harness {
    /// The `pgseal` binary built beside the benchmark.
    pub pgseal: PathBuf,
    /// `PGSEAL_HOME` for this run.
    pub home: PathBuf,
    /// The PostgreSQL server programs.
    pub bindir: PathBuf,
}

impl Harness {
    /// A harness over `home`, with the `pgseal` binary beside this one.
    pub fn new(home: &Path) -> anyhow::Result<Harness> {
        Ok(Harness {
            pgseal: sibling_binary("pgseal")?,
            home: home.to_path_buf(),
            bindir: pgseal_pg::PgInstall::discover()?.bindir,
        })
    }

    /// Whatever a run left, removed: migrations aborted, then every endpoint and every
    /// instance (their servers and mounts with them). Errors are ignored: this runs after
    /// a failure too.
    pub fn remove_everything(&self) {
        let listed = |what: &str| -> Vec<serde_json::Value> {
            self.json(&[what, "list"])
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        };
        for m in listed("migrate") {
            let name = m["spec"]["name"].as_str().unwrap_or_default();
            let _ = self.pgseal(&["migrate", "abort", name]).output();
        }
        for e in listed("endpoint") {
            let name = e["name"].as_str().unwrap_or_default();
            let _ = self.pgseal(&["endpoint", "delete", name]).output();
        }
        for i in listed("instance") {
            let name = i["name"].as_str().unwrap_or_default();
            let _ = self.pgseal(&["instance", "delete", name, "--yes"]).output();
        }
    }

    /// A quiet `pgseal ARGS` command on this home.
    pub fn pgseal(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.pgseal);
        c.env("PGSEAL_HOME", &self.home)
            .env("PGSEAL_PASSPHRASE", PASSPHRASE)
            .arg("-q")
            .args(args);
        c
    }

    /// Runs `pgseal ARGS --json` and parses its output; a failure is an error.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.pgseal(args).arg("--json").output()?;
        if !out.status.success() {
            bail!("pgseal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "pgseal {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `-h SOCKET -p PORT -U postgres` for an instance.
    pub fn conn(&self, instance: &str) -> anyhow::Result<Vec<String>> {
        let info = self.json(&["instance", "describe", instance])?;
        Ok(vec![
            "-h".into(),
            info["socket_dir"].as_str().context("socket_dir")?.into(),
            "-p".into(),
            info["port"].to_string(),
            "-U".into(),
            "postgres".into(),
        ])
    }

    /// libpq's environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`) for an
    /// instance's `db` over its unix socket.
    pub fn libpq(&self, instance: &str, db: &str) -> anyhow::Result<Vec<(String, String)>> {
        let info = self.json(&["instance", "describe", instance])?;
        Ok(vec![
            (
                "PGHOST".into(),
                info["socket_dir"].as_str().context("socket_dir")?.into(),
            ),
            ("PGPORT".into(), info["port"].to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), db.into()),
        ])
    }

    /// `sh -c SCRIPT` with `from`'s libpq settings (instance, database) as `S_PGHOST`...
    /// and `to`'s as `T_PGHOST`..., and the PostgreSQL programs' directory as `BIN`.
    pub fn between(
        &self,
        script: &str,
        from: (&str, &str),
        to: (&str, &str),
    ) -> anyhow::Result<Command> {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        for (prefix, (instance, db)) in [("S_", from), ("T_", to)] {
            for (k, v) in self.libpq(instance, db)? {
                c.env(format!("{prefix}{k}"), v);
            }
        }
        c.env("BIN", &self.bindir);
        Ok(c)
    }

    /// A PostgreSQL program (`pgbench`, `pg_basebackup`, `psql`).
    pub fn program(&self, name: &str) -> Command {
        Command::new(self.bindir.join(name))
    }

    /// Creates `bench-src`, a plain instance with `wal_level=logical` on `storage`, filled
    /// by `pgbench -i -s SCALE`; returns its database's size in MiB.
    pub fn pgbench_source(&self, storage: &str, scale: u32) -> anyhow::Result<u64> {
        self.json(&[
            "instance",
            "create",
            "bench-src",
            "--storage",
            storage,
            "--param",
            "wal_level=logical",
        ])?;
        self.pgbench_init("bench-src", scale)?;
        Ok(self
            .psql("bench-src", "SELECT pg_database_size('postgres') >> 20")?
            .parse()?)
    }

    /// `pgbench -i -s SCALE` on an instance's `postgres` database.
    pub fn pgbench_init(&self, instance: &str, scale: u32) -> anyhow::Result<()> {
        self.pgbench_init_db(instance, "postgres", scale)
    }

    /// `pgbench -i -s SCALE` on database `db` of an instance (created first unless it is
    /// `postgres`).
    pub fn pgbench_init_db(&self, instance: &str, db: &str, scale: u32) -> anyhow::Result<()> {
        if db != "postgres" {
            self.psql(instance, &format!("CREATE DATABASE {db}"))?;
        }
        let mut c = self.program("pgbench");
        c.args(["-i", "-q", "-s", &scale.to_string()])
            .args(self.conn(instance)?)
            .arg(db);
        timed(c).map(|_| ())
    }

    /// Times `pg_basebackup -D DIR -Ft -X fetch --checkpoint=fast` of an instance into a
    /// fresh `DIR` (removed first); leaves `DIR/base.tar` for the caller.
    pub fn basebackup(&self, instance: &str, dir: &Path) -> anyhow::Result<Run> {
        let _ = std::fs::remove_dir_all(dir);
        let mut c = self.program("pg_basebackup");
        c.arg("-D")
            .arg(dir)
            .args(["-F", "t", "-X", "fetch", "--checkpoint=fast"])
            .args(self.conn(instance)?);
        timed(c)
    }

    /// One value from `psql -Atc SQL` on an instance's `postgres` database.
    pub fn psql(&self, instance: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .program("psql")
            .args(self.conn(instance)?)
            .args(["-d", "postgres", "-Atc", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Times `pgseal migrate start` of `bench-src` as migration `name` with replica identity
    /// FULL (and `extra` arguments), then adds the seconds of its steps to `per_step`;
    /// returns the time and the migration's `migrate status --json` report.
    pub fn timed_start(
        &self,
        name: &str,
        extra: &[&str],
        per_step: &mut Vec<(String, Vec<f64>)>,
    ) -> anyhow::Result<(Duration, serde_json::Value)> {
        let mut args = vec![
            "migrate",
            "start",
            "--source",
            "bench-src",
            "--name",
            name,
            "--replica-identity-full",
        ];
        args.extend_from_slice(extra);
        let elapsed = timed(self.pgseal(&args))?.elapsed;
        let status = self.json(&["migrate", "status", name])?;
        add_step_seconds(per_step, &status);
        Ok((elapsed, status))
    }
}

/// Adds the seconds of each step a `migrate status --json` report shows to `per_step`
/// (step name → one entry per run).
pub fn add_step_seconds(per_step: &mut Vec<(String, Vec<f64>)>, status: &serde_json::Value) {
    for run in status["steps"].as_array().into_iter().flatten() {
        if let (Some(step), Some(start), Some(end)) = (
            run["step"].as_str(),
            run["started_ms"].as_i64(),
            run["finished_ms"].as_i64(),
        ) {
            let seconds = (end - start) as f64 / 1000.0;
            match per_step.iter_mut().find(|(s, _)| s == step) {
                Some((_, times)) => times.push(seconds),
                None => per_step.push((step.to_string(), vec![seconds])),
            }
        }
    }
}

/// Runs `bench` on a harness over a fresh work directory (see [`work_dir`]), then removes
/// whatever it left (migrations, endpoints, instances, their servers and mounts), whether
/// it failed or not.
pub fn on_harness(bench: impl FnOnce(&Harness) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let dir = work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let result = bench(&b);
    b.remove_everything();
    result
}

/// A benchmark's positional arguments, each with its default when left out.
pub struct Args(std::iter::Skip<std::env::Args>);

impl Args {
    /// The program's arguments, after its name.
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1))
    }

    /// The next argument parsed, or `default` when there is none.
    pub fn next_or<T: std::str::FromStr>(&mut self, default: T) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        Ok(self
            .0
            .next()
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    }
}

/// A work directory on the disk under the current directory (not tmpfs: benchmarks are
/// about real files), traversable by the server's OS user; removed when dropped.
pub fn work_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("pgseal-bench-")
        .tempdir_in(std::env::current_dir()?)?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}
