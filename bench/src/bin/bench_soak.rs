//! Fault soak: migrations under the ledger workload, with pgseal killed (SIGKILL) at a
//! seeded random moment inside `migrate start`, inside `migrate cutover` and inside
//! `migrate rollback`, each followed by `migrate resume` (and the command again when
//! resume undid it) until the migration reaches the phase the command was for. Once per
//! run the source server is also stopped hard (SIGQUIT to its postmaster: an immediate
//! shutdown) mid-catch-up, and once mid-cutover, then started again; so is the target,
//! once mid-catch-up and in every third round at a random moment of the cutover or (the
//! next time) the rollback. One round in ten (the 4th, 14th, ...) fills the target's
//! volume mid-catch-up: 20 MiB more is written on the source than the target has room
//! for, the apply stops, `status` must name the fix (`pgseal instance resize`), the soak
//! applies it, and the round goes on. Every third round (3, 6, 9, ...) migrates a server
//! reached by URL through a TCP relay the soak controls (the subscription and pgseal's
//! sessions cross it; the ledger writes to the server directly; cutover and rollback
//! switch with a hook): the relay cuts every connection or holds them silent for 1 to
//! 5 s once mid-catch-up and once at a seeded moment inside the cutover or (in turn) the
//! rollback, instead of a kill there.
//!
//! Each round: a source instance with two databases (the ledger's `postgres` and a pgbench
//! one), a PgBouncer endpoint in front of it, the ledger workload writing through the
//! endpoint at RATE tx/s for the whole round; start, cutover and rollback as above;
//! `workload verify` on the source (which holds the writes after the rollback); `migrate
//! cleanup`; then a scan for what should be gone: replication slots, publications,
//! subscriptions and replication origins on the source, the DDL capture (event trigger
//! and schema), fenced databases, the abandoned target instance, snapshots.
//!
//! A calibration round without faults first measures how long each command takes; the
//! kill moments are drawn uniformly over those durations.
//!
//! Prints rounds, kills, missing, duplicated, unexpected and leftovers (all but rounds and
//! kills must be 0: anything else is a bug), then a JSON line.
//!
//! Usage: `bench-soak [ROUNDS] [SEED] [RATE]` (default 30, 1, 50), as root, from the
//! workspace root (a release build without test features: the faults come from outside).
//! Run `bench/soak`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pgseal_bench::Harness;
use pgseal_testkit::SeededRng;

/// The faults one round injects.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// SIGKILL pgseal inside start, cutover and rollback.
    kill: bool,
    /// Stop the source hard while the target catches up.
    crash_source_catching_up: bool,
    /// Stop the source hard while cutover runs (instead of killing pgseal there).
    crash_source_in_cutover: bool,
    /// Stop the target hard while it catches up.
    crash_target_catching_up: bool,
    /// Stop the target hard while this command runs (1 cutover, 2 rollback), instead of
    /// killing pgseal there.
    crash_target_in: Option<usize>,
    /// Fill the target's volume while it catches up, then grow it as `status` says.
    fill_target_disk: bool,
    /// Reach the source by URL through a relay, and cut or stall the relay mid-catch-up
    /// and inside this command (1 cutover, 2 rollback).
    relay_in: Option<usize>,
}

/// What one round found.
#[derive(Debug, Default, serde::Serialize)]
struct Round {
    round: usize,
    kills: usize,
    /// Where each kill landed: `command@ms (phase after it)`.
    kill_points: Vec<String>,
    source_crashes: usize,
    target_crashes: usize,
    /// Times the target's volume filled and was grown.
    disk_fulls: usize,
    /// Relay outages: `cut|silent N ms in WHERE@ms`.
    outages: Vec<String>,
    resumes: usize,
    /// Commands run again after resume undid an interrupted one.
    retries: usize,
    /// Commands that failed although no fault was injected into them (with their error).
    unforced_failures: Vec<String>,
    acknowledged: u64,
    uncertain: u64,
    client_errors: u64,
    missing: u64,
    duplicated: u64,
    unexpected: u64,
    /// What should have been gone after cleanup, as `what: count`.
    leftovers: Vec<String>,
    /// How long each command took when not interrupted (calibration), ms.
    #[serde(skip)]
    durations: [Duration; 3],
    seconds: f64,
}

/// The soak's commands, in the order a round runs them.
const COMMANDS: [&str; 3] = ["start", "cutover", "rollback"];

/// The phase each command leads to.
const GOALS: [&str; 3] = ["replicating", "cut_over", "rolled_back"];

struct Soak<'a> {
    b: &'a Harness,
    rate: f64,
    rng: SeededRng,
    /// This round's source, when reached by URL through a relay.
    via: Option<Via>,
}

/// A source server reached by URL through a relay the soak controls.
struct Via {
    server: pgseal_testkit::TestCluster,
    relay: pgseal_testkit::Relay,
}

impl Via {
    /// The URL pgseal migrates from: through the relay.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.relay.port()
        )
    }

    /// psql's arguments reaching the server directly.
    fn psql(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.server.port().to_string(),
            "-U",
            "postgres",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Soak<'_> {
    /// The arguments of command `i` for round `r`.
    fn args(&self, i: usize, r: usize) -> Vec<String> {
        let name = format!("m{r}");
        let mut args: Vec<String> = vec!["migrate".into(), COMMANDS[i].into()];
        let source = self.via.as_ref().map_or(format!("s{r}"), Via::url);
        match i {
            0 => args.extend(
                [
                    "--source",
                    &source,
                    "--target",
                    &format!("t{r}"),
                    "--name",
                    &name,
                    "--key",
                    "soak",
                    "--replica-identity-full",
                ]
                .map(String::from),
            ),
            // Through a relay there is no endpoint: a hook that does nothing (the ledger
            // writes to the source, fenced while the migration is cut over).
            _ if self.via.is_some() => args.extend([name, "--on-switch".into(), "true".into()]),
            _ => args.extend([name, "--endpoint".into(), format!("e{r}")]),
        }
        args
    }

    fn command(&self, i: usize, r: usize) -> Command {
        let args = self.args(i, r);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = self.b.pgseal(&args);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    /// The migration's phase, or `None` when the journal has no such migration (a start
    /// killed before it recorded one).
    fn phase(&self, r: usize) -> anyhow::Result<Option<String>> {
        let out = self
            .b
            .pgseal(&["migrate", "status", &format!("m{r}"), "--json"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("no migration named") {
            return Ok(None);
        }
        if !out.status.success() {
            bail!("migrate status m{r}: {stderr}");
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(status["migration"]["phase"].as_str().map(String::from))
    }

    /// Runs command `i` of round `r` to its end; its error when it failed.
    fn run_plain(&self, i: usize, r: usize) -> anyhow::Result<Option<String>> {
        let out = self.command(i, r).output()?;
        Ok(
            (!out.status.success())
                .then(|| String::from_utf8_lossy(&out.stderr).trim().to_string()),
        )
    }

    /// After command `i` was interrupted (or failed): `migrate resume` and, when resume
    /// undid the command, the command again (uninterrupted), until the migration reaches
    /// the command's phase. Counts resumes and retries into `round`.
    fn settle(&self, i: usize, r: usize, round: &mut Round) -> anyhow::Result<()> {
        let name = format!("m{r}");
        let mut last_error = String::new();
        for _ in 0..10 {
            if self.phase(r)?.is_none() {
                // Killed before the journal had it: start again.
                round.retries += 1;
                self.run_plain(i, r)?;
                continue;
            };
            let out = self.b.pgseal(&["migrate", "resume", &name]).output()?;
            round.resumes += 1;
            if !out.status.success() {
                last_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
            }
            let after = self.phase(r)?.unwrap_or_default();
            if after == GOALS[i] {
                return Ok(());
            }
            let before_goal = match i {
                1 => "replicating",
                2 => "cut_over",
                _ => "",
            };
            if after == before_goal {
                round.retries += 1;
                if let Some(error) = self.run_plain(i, r)? {
                    // A cutover can be refused while the target catches up after a
                    // source crash: give it a moment.
                    last_error = error;
                    std::thread::sleep(Duration::from_secs(2));
                }
                continue;
            }
            if !out.status.success() {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        bail!(
            "m{r}: {} never reached {} (phase {:?}); last error: {last_error}",
            COMMANDS[i],
            GOALS[i],
            self.phase(r)?
        )
    }

    /// One round: source, endpoint, workload, the three commands with their faults, the
    /// verification, cleanup and the scan for leftovers.
    fn round(
        &mut self,
        r: usize,
        faults: Faults,
        calibration: &[Duration; 3],
    ) -> anyhow::Result<Round> {
        let b = self.b;
        let began = Instant::now();
        let mut round = Round {
            round: r,
            ..Default::default()
        };
        self.via = None;
        let (source, endpoint) = (format!("s{r}"), format!("e{r}"));
        // Where the ledger writes and is verified: through the endpoint (a local source),
        // or straight to the server (one reached through the relay).
        let (writes_to, verified_on) = if faults.relay_in.is_some() {
            let server = pgseal_testkit::TestCluster::start()
                .map_err(|e| anyhow::anyhow!("a source server: {e}"))?;
            let relay = pgseal_testkit::Relay::start(&format!("127.0.0.1:{}", server.port()))?;
            let via = Via { server, relay };
            let create = b
                .program("psql")
                .args(via.psql())
                .args(["-d", "postgres", "-c", "CREATE DATABASE bank"])
                // In the configuration the target's copy starts from: rollback needs
                // logical WAL on the target.
                .args(["-c", "ALTER SYSTEM SET wal_level = logical"])
                .output()?;
            if !create.status.success() {
                bail!(
                    "CREATE DATABASE bank: {}",
                    String::from_utf8_lossy(&create.stderr)
                );
            }
            let init = b
                .program("pgbench")
                .args(via.psql())
                .args(["-i", "-s", "1", "-q", "bank"])
                .output()?;
            if !init.status.success() {
                bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
            }
            let direct = ["--url".to_string(), via.server.url("postgres")];
            self.via = Some(via);
            (direct.clone(), direct)
        } else {
            b.json(&[
                "instance",
                "create",
                &source,
                "--param",
                "wal_level=logical",
            ])?;
            b.pgbench_init_db(&source, "bank", 1)?;
            b.json(&["endpoint", "create", &endpoint, "--instance", &source])?;
            (
                ["--endpoint".to_string(), endpoint.clone()],
                ["--instance".to_string(), source.clone()],
            )
        };
        let ledger = b.home.join(format!("soak{r}.ledger"));
        let workload = b
            .pgseal(&["workload", "run"])
            .args(&writes_to)
            .arg("--ledger")
            .arg(&ledger)
            .args(["--rate", &self.rate.to_string(), "--clients", "4"])
            .args(["--duration", "3600", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(1));
        let result = self.commands(r, faults, calibration, &mut round);
        // Whatever happened, end the workload and keep its summary.
        let summary = stop_workload(workload)?;
        result?;
        round.acknowledged = summary["acknowledged"].as_u64().unwrap_or(0);
        round.uncertain = summary["uncertain"].as_u64().unwrap_or(0);
        round.client_errors = summary["client_errors"].as_u64().unwrap_or(0);
        let verified = b
            .pgseal(&["workload", "verify"])
            .args(&verified_on)
            .arg("--ledger")
            .arg(&ledger)
            .arg("--json")
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&verified.stdout)
            .with_context(|| String::from_utf8_lossy(&verified.stderr).to_string())?;
        round.missing = v["missing"].as_u64().context("missing")?;
        round.duplicated = v["duplicated"].as_u64().context("duplicated")?;
        round.unexpected = v["unexpected"].as_u64().context("unexpected")?;
        b.json(&["migrate", "cleanup", &format!("m{r}")])?;
        round.leftovers = self.leftovers(r)?;
        if self.via.take().is_none() {
            b.json(&["endpoint", "delete", &endpoint])?;
            b.json(&["instance", "delete", &source, "--yes"])?;
        }
        let _ = std::fs::remove_file(&ledger);
        round.seconds = began.elapsed().as_secs_f64();
        Ok(round)
    }

    /// Start, cutover and rollback of round `r` with `faults`.
    fn commands(
        &mut self,
        r: usize,
        faults: Faults,
        calibration: &[Duration; 3],
        round: &mut Round,
    ) -> anyhow::Result<()> {
        for i in 0..3 {
            if i == 1 && faults.crash_source_catching_up {
                // Mid-catch-up: the workload keeps writing; the target's apply worker
                // loses its walsender and must pick up where it confirmed.
                std::thread::sleep(self.rng.within(Duration::from_secs(2)));
                self.crash(&format!("s{r}"))?;
                round.source_crashes += 1;
                self.wait_ready_for_cutover(r)?;
            }
            if i == 1 && faults.crash_target_catching_up {
                // The target restarts and its apply worker goes on from what it confirmed.
                std::thread::sleep(self.rng.within(Duration::from_secs(2)));
                self.crash(&format!("t{r}"))?;
                round.target_crashes += 1;
                self.wait_ready_for_cutover(r)?;
            }
            if i == 1 && faults.relay_in.is_some() {
                // Mid-catch-up: the network between the target (and pgseal) and the
                // source drops or stalls; the apply worker must pick up where it
                // confirmed.
                std::thread::sleep(self.rng.within(Duration::from_secs(2)));
                let outage = self.relay_outage("catch-up")?;
                round.outages.push(outage);
                self.wait_ready_for_cutover(r)?;
            }
            if i == 1 && faults.fill_target_disk {
                self.fill_target_disk(r)?;
                round.disk_fulls += 1;
                self.wait_ready_for_cutover(r)?;
            }
            let in_target_crash = faults.crash_target_in == Some(i);
            let in_relay = faults.relay_in == Some(i);
            let server_crash =
                (i == 1 && faults.crash_source_in_cutover) || in_target_crash || in_relay;
            let kill_after =
                (faults.kill && !server_crash).then(|| self.rng.within(calibration[i]));
            let began = Instant::now();
            let mut child = self.command(i, r).spawn()?;
            let mut killed = false;
            if in_relay {
                let at = self.rng.within(calibration[i]);
                std::thread::sleep(at);
                let outage = self.relay_outage(&format!("{}@{}ms", COMMANDS[i], at.as_millis()))?;
                round.outages.push(outage);
            } else if server_crash {
                let at = self.rng.within(calibration[i]);
                std::thread::sleep(at);
                let (side, instance) = if in_target_crash {
                    round.target_crashes += 1;
                    ("target", format!("t{r}"))
                } else {
                    round.source_crashes += 1;
                    ("source", format!("s{r}"))
                };
                self.crash(&instance)?;
                round.kill_points.push(format!(
                    "{side} crash in {}@{}ms",
                    COMMANDS[i],
                    at.as_millis()
                ));
            } else if let Some(delay) = kill_after {
                killed = wait_or_kill(&mut child, delay)?;
            }
            let out = child.wait_with_output()?;
            round.durations[i] = began.elapsed();
            if killed {
                round.kills += 1;
                round.kill_points.push(format!(
                    "{}@{}ms ({})",
                    COMMANDS[i],
                    kill_after.unwrap_or_default().as_millis(),
                    self.phase(r)?.unwrap_or_else(|| "not journaled".into())
                ));
            }
            if !killed && !server_crash && !out.status.success() {
                // Not a fault the soak injected: worth reading, and settled like one.
                round.unforced_failures.push(format!(
                    "{}: {}",
                    COMMANDS[i],
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            if killed || !out.status.success() || server_crash {
                self.settle(i, r, round)?;
            }
            // Let the workload write on this side for a moment.
            std::thread::sleep(Duration::from_millis(1500));
        }
        Ok(())
    }

    /// Waits (up to a minute) until `migrate cutover --dry-run` passes its checks, as a
    /// user would after the source came back.
    fn wait_ready_for_cutover(&self, r: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let name = format!("m{r}");
        loop {
            let out = self
                .b
                .pgseal(&["migrate", "cutover", &name, "--dry-run"])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "m{r} not ready for cutover a minute after the source's crash: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// psql's arguments reaching round `r`'s source.
    fn source_psql(&self, r: usize) -> anyhow::Result<Vec<String>> {
        match &self.via {
            Some(via) => Ok(via.psql()),
            None => self.b.conn(&format!("s{r}")),
        }
    }

    /// Cuts the relay or holds it silent (drawn) for 1 to 5 s (drawn), noting `what` the
    /// outage fell in.
    fn relay_outage(&mut self, what: &str) -> anyhow::Result<String> {
        let silent = self.rng.below(2) == 1;
        let lasting = Duration::from_secs(1 + self.rng.below(5) as u64);
        let via = self.via.as_ref().context("this round has no relay")?;
        if silent {
            via.relay.hold();
        } else {
            via.relay.cut();
        }
        std::thread::sleep(lasting);
        if silent {
            via.relay.release();
        } else {
            via.relay.restore();
        }
        Ok(format!(
            "{} {} ms in {what}",
            if silent { "silent" } else { "cut" },
            lasting.as_millis()
        ))
    }

    /// Fills round `r`'s target volume to 512 KiB free (a file beside the data, allocated
    /// as root) and writes 20 MiB more on the source; waits (up to 90 s) for the apply to
    /// fail and `status` to name the resize that fixes it, runs that resize, and removes
    /// the file.
    fn fill_target_disk(&self, r: usize) -> anyhow::Result<()> {
        let b = self.b;
        let (name, target) = (format!("m{r}"), format!("t{r}"));
        let status = b.json(&["migrate", "status", &name])?;
        let free = status["storage"]["target"]["free_bytes"]
            .as_u64()
            .context("the target's free storage")?;
        let info = b.json(&["instance", "describe", &target])?;
        let data_dir = std::path::PathBuf::from(info["data_dir"].as_str().context("data_dir")?);
        let volume = data_dir.ancestors().nth(2).context("the target's volume")?;
        let filler = volume.join("soak-filler");
        let filled = Command::new("fallocate")
            .args(["-l", &free.saturating_sub(512 << 10).to_string()])
            .arg(&filler)
            .output()?;
        if !filled.status.success() {
            bail!("fallocate: {}", String::from_utf8_lossy(&filled.stderr));
        }
        let result = (|| {
            let bulk = b
                .program("psql")
                .args(self.source_psql(r)?)
                .args(["-d", "bank", "-Atc"])
                .arg(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) \
                     SELECT 1, 1, g, 0, now(), 'soak' FROM generate_series(1, 300000) g",
                )
                .output()?;
            if !bulk.status.success() {
                bail!("writing 20 MiB: {}", String::from_utf8_lossy(&bulk.stderr));
            }
            let deadline = Instant::now() + Duration::from_secs(90);
            let fix = loop {
                let status = b.json(&["migrate", "status", &name])?;
                let failing = status["replication"]["streams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|st| st["subscription"]["apply_errors"].as_i64() > Some(0));
                let fix = status["warnings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w.as_str())
                    .find_map(|w| {
                        let at = w.find("`pgseal instance resize ")?;
                        let rest = &w[at + 1..];
                        Some(rest[..rest.find('`')?].to_string())
                    });
                if let (true, Some(fix)) = (failing, fix) {
                    break fix;
                }
                if Instant::now() > deadline {
                    bail!("m{r}: the full target was not named with its fix: {status}");
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            let args: Vec<&str> = fix.split_whitespace().skip(1).collect();
            b.json(&args)?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&filler);
        result
    }

    /// Stops instance `instance` hard (SIGQUIT to the postmaster: immediate shutdown, crash
    /// recovery at the next start) and starts it again.
    fn crash(&self, instance: &str) -> anyhow::Result<()> {
        let info = self.b.json(&["instance", "describe", instance])?;
        let data_dir = info["data_dir"].as_str().context("data_dir")?;
        pgseal_testkit::crash_postmaster(std::path::Path::new(data_dir))
            .with_context(|| format!("stopping {instance} hard"))?;
        self.b.json(&["instance", "start", instance])?;
        Ok(())
    }

    /// What should be gone after cleanup of a rolled-back migration: the abandoned target,
    /// snapshots, and on the source every replication object and fence.
    fn leftovers(&self, r: usize) -> anyhow::Result<Vec<String>> {
        let b = self.b;
        let source = format!("s{r}");
        let mut found = Vec::new();
        let instances = b.json(&["instance", "list"])?;
        let others: Vec<&str> = instances
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str())
            .filter(|n| *n != source)
            .collect();
        if !others.is_empty() {
            found.push(format!("instances: {}", others.join(",")));
        }
        let snapshots = b.json(&["snapshot", "list"])?;
        let n = snapshots.as_array().map_or(0, Vec::len);
        if n > 0 {
            found.push(format!("snapshots: {n}"));
        }
        let count = |db: &str, sql: &str| -> anyhow::Result<i64> {
            let out = b
                .program("psql")
                .args(self.source_psql(r)?)
                .args(["-d", db, "-Atc", sql])
                .output()?;
            if !out.status.success() {
                bail!("psql {db}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
        };
        for (what, sql) in [
            ("slots", "SELECT count(*) FROM pg_replication_slots"),
            ("subscriptions", "SELECT count(*) FROM pg_subscription"),
            ("origins", "SELECT count(*) FROM pg_replication_origin"),
            (
                "fenced databases",
                "SELECT count(*) FROM pg_database WHERE NOT datallowconn AND datname <> 'template0'",
            ),
        ] {
            let n = count("postgres", sql)?;
            if n > 0 {
                found.push(format!("{what}: {n}"));
            }
        }
        for db in ["postgres", "bank"] {
            let n = count(db, "SELECT count(*) FROM pg_publication")?;
            if n > 0 {
                found.push(format!("publications in {db}: {n}"));
            }
            // The DDL capture: its event trigger and schema.
            let n = count(
                db,
                "SELECT (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgseal%') \
                      + (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgseal%')",
            )?;
            if n > 0 {
                found.push(format!("DDL capture objects in {db}: {n}"));
            }
        }
        Ok(found)
    }
}

/// Waits up to `delay` for `child` to exit; SIGKILLs it if it has not. True when killed.
fn wait_or_kill(child: &mut Child, delay: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if child.try_wait()?.is_some() {
        return Ok(false);
    }
    child.kill()?;
    Ok(true)
}

/// Ends the workload with SIGTERM (it finishes its transactions, syncs the ledger) and
/// returns its summary.
fn stop_workload(workload: Child) -> anyhow::Result<serde_json::Value> {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(workload.id() as libc::pid_t, libc::SIGTERM) };
    let out = workload.wait_with_output()?;
    serde_json::from_slice(&out.stdout).context("the workload printed no summary")
}

fn main() -> anyhow::Result<()> {
    let mut args = pgseal_bench::Args::from_env();
    let rounds: usize = args.next_or(30)?;
    let seed: u64 = args.next_or(1)?;
    let rate: f64 = args.next_or(50.0)?;
    let dir = pgseal_bench::work_dir()?;
    let b = Harness::new(&dir.path().join("home"))?;
    let mut soak = Soak {
        b: &b,
        rate,
        rng: SeededRng::new(seed),
        via: None,
    };
    // The two source crashes go to two different rounds the seed picks, and so does the
    // target's crash mid-catch-up.
    // (Never a round through the relay: its source is not an instance of the soak's.)
    let local = |r: usize| {
        if r.is_multiple_of(3) {
            r % rounds + 1
        } else {
            r
        }
    };
    let catch_up_round = local(1 + soak.rng.below(rounds));
    let mut cutover_round = local(1 + soak.rng.below(rounds));
    if cutover_round == catch_up_round && rounds > 1 {
        cutover_round = local(cutover_round % rounds + 1);
    }
    let target_catch_up_round = 1 + soak.rng.below(rounds);
    // Every third round stops the target inside a command: cutover, then rollback, in turn.
    let target_in = |r: usize| (r % 3 == 2).then_some(1 + (r / 3) % 2);
    let result = (|| {
        b.json(&["key", "create", "--alias", "soak"])?;
        let calibration = soak.round(0, Faults::default(), &[Duration::ZERO; 3])?;
        let durations = calibration.durations;
        eprintln!(
            "calibration: start {:?}, cutover {:?}, rollback {:?}; verified {} acknowledged, {} missing",
            durations[0], durations[1], durations[2], calibration.acknowledged, calibration.missing
        );
        let mut done = vec![calibration];
        for r in 1..=rounds {
            let faults = Faults {
                kill: true,
                crash_source_catching_up: r == catch_up_round,
                crash_source_in_cutover: r == cutover_round,
                crash_target_catching_up: r == target_catch_up_round,
                // One server stopped at a time: the source's cutover round keeps its own.
                crash_target_in: target_in(r).filter(|&i| !(i == 1 && r == cutover_round)),
                fill_target_disk: r % 10 == 4,
                // Every third round through the relay: an outage inside the cutover, then
                // (the next time) inside the rollback.
                relay_in: r.is_multiple_of(3).then_some(1 + (r / 3 + 1) % 2),
            };
            let round = soak.round(r, faults, &durations)?;
            eprintln!("{}", serde_json::to_string(&round)?);
            done.push(round);
        }
        anyhow::Ok(done)
    })();
    // Whatever happened, leave no server, endpoint or mount behind.
    b.remove_everything();
    let done = result?;
    let faulted = &done[1..];
    let sum = |f: fn(&Round) -> u64| faulted.iter().map(f).sum::<u64>();
    let kills = sum(|r| r.kills as u64);
    let crashes = sum(|r| r.source_crashes as u64);
    let target_crashes = sum(|r| r.target_crashes as u64);
    let disk_fulls = sum(|r| r.disk_fulls as u64);
    let outages = sum(|r| r.outages.len() as u64);
    let (missing, duplicated, unexpected) = (
        sum(|r| r.missing),
        sum(|r| r.duplicated),
        sum(|r| r.unexpected),
    );
    let leftovers: Vec<String> = faulted
        .iter()
        .flat_map(|r| {
            r.leftovers
                .iter()
                .map(move |l| format!("round {}: {l}", r.round))
        })
        .collect();
    println!(
        "fault soak: {rounds} rounds (seed {seed}, ledger at {rate} tx/s through an endpoint, straight to the source in the relay's rounds; 2 databases)"
    );
    println!(
        "  kills {kills} (SIGKILL of pgseal inside start/cutover/rollback), source crashes {crashes} (rounds {catch_up_round} mid-catch-up, {cutover_round} mid-cutover), target crashes {target_crashes} (round {target_catch_up_round} mid-catch-up, every third round inside cutover or rollback), target disks filled and grown {disk_fulls} (rounds 4, 14, 24, ...), relay outages {outages} (cut or silent 1-5 s, every third round: mid-catch-up and inside cutover or rollback), resumes {}, commands run again {}",
        sum(|r| r.resumes as u64),
        sum(|r| r.retries as u64)
    );
    let unforced: Vec<String> = faulted
        .iter()
        .flat_map(|r| {
            r.unforced_failures
                .iter()
                .map(move |f| format!("round {}: {f}", r.round))
        })
        .collect();
    println!(
        "  acknowledged {}, uncertain {}, client errors {}; commands that failed with no fault injected {}{}",
        sum(|r| r.acknowledged),
        sum(|r| r.uncertain),
        sum(|r| r.client_errors),
        unforced.len(),
        if unforced.is_empty() {
            String::new()
        } else {
            format!(": {}", unforced.join("; "))
        }
    );
    println!(
        "  missing {missing}, duplicated {duplicated}, unexpected {unexpected}, leftovers {} (all must be 0){}",
        leftovers.len(),
        if leftovers.is_empty() {
            String::new()
        } else {
            format!(": {}", leftovers.join("; "))
        }
    );
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds, "seed": seed, "rate": rate, "kills": kills,
            "source_crashes": crashes, "target_crashes": target_crashes, "disk_fulls": disk_fulls, "relay_outages": outages, "missing": missing, "duplicated": duplicated,
            "unexpected": unexpected, "leftovers": leftovers, "unforced_failures": unforced,
            "per_round": faulted,
        })
    );
    if missing + duplicated + unexpected > 0 || !leftovers.is_empty() {
        bail!("the soak found lost, doubled or unexpected rows, or leftovers");
    }
    Ok(())
}
