//! `pgseal migrate follow`: the follower's loop (see `pgseal_core::follow`), and the
//! background follower `start` and `resume` leave running.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgseal_core::follow::{self, FollowState, FollowerLock, Heartbeat, PassGate};
use pgseal_core::status::Retention;

use super::platform::for_spec;
use super::{Context, Outcome, print_json};
use crate::exit;

/// What a background follower inherits from the command that starts it: how to reach the
/// servers (libpq's and AWS's settings, the server binaries), nothing else. It never
/// needs the key store, so never gets its passphrase.
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "RUST_LOG",
    "PGSEAL_PG_BINDIR",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
];

/// How long one pass may take before the follower gives it up (and the gate it holds): a
/// pass is a few catalog reads and what it carries, so this only ends a pass a silent
/// server (or network) holds; the next pass opens new sessions.
const PASS_WAIT: Duration = Duration::from_secs(120);

/// Starts `name`'s follower in the background, detached from this terminal, its output
/// appended to its log, with `extra` arguments of `migrate follow`; returns its process
/// id, or `None` when one runs already.
pub fn spawn(ctx: &Context, name: &str, extra: &[String]) -> anyhow::Result<Option<u32>> {
    if FollowerLock::held(&ctx.home, name)? {
        return Ok(None);
    }
    let log_path = follow::log_path(&ctx.home, name);
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)?
    };
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env_clear()
        .args(["-v", "migrate", "follow", name, "--home"])
        .arg(&ctx.home)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for key in INHERITED {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command.envs(ctx.journal_env());
    // Its own process group: a Ctrl-C meant for this command does not end it.
    command.process_group(0);
    let child = command.spawn()?;
    tracing::info!(migration = name, pid = child.id(), log = %log_path.display(), "follower started");
    Ok(Some(child.id()))
}

/// `migrate follow --detach`: starts `name`'s follower in the background (every
/// `interval` seconds, serving metrics on `serve`) and writes its process id to its pid
/// file; says so, or names the follower that runs already.
pub fn detach(ctx: &Context, name: &str, interval: f64, serve: Option<&str>) -> Outcome {
    // A migration that does not exist is refused here, not in the background.
    ctx.journal()?.migration(name)?;
    let mut extra = vec!["--interval".to_string(), interval.to_string()];
    if let Some(addr) = serve {
        extra.extend(["--serve".to_string(), addr.to_string()]);
    }
    let pid_file = follow::pid_path(&ctx.home, name);
    let (pid, started) = match spawn(ctx, name, &extra)? {
        Some(pid) => {
            pgseal_crashsafe::write_atomic(&pid_file, format!("{pid}\n").as_bytes(), 0o600)?;
            (Some(pid), true)
        }
        None => {
            let running = follow::follower_status(&ctx.home, name)?;
            (running.heartbeat.map(|h| h.pid), false)
        }
    };
    let log = follow::log_path(&ctx.home, name);
    if ctx.json {
        print_json(&serde_json::json!({
            "migration": name, "pid": pid, "started": started,
            "pid_file": started.then_some(&pid_file), "log": log,
        }))?;
    } else if started {
        println!(
            "follower of {name} started in the background: pid {} (in {}), log {}",
            pid.unwrap_or_default(),
            pid_file.display(),
            log.display()
        );
    } else {
        println!(
            "migration {name} has a follower already (pid {}); nothing started",
            pid.map_or("?".to_string(), |p| p.to_string())
        );
    }
    Ok(exit::code(exit::OK))
}

/// Aborts migration `name` because `why` (a slot over its retention limit), saying so on
/// stderr before and after: what `status` and the follower do to protect the source's
/// disk. The caller holds the migration's lock.
pub fn abort_protecting_source(
    runtime: &tokio::runtime::Runtime,
    platform: &super::platform::AnyPlatform,
    journal: &pgseal_core::Journal,
    name: &str,
    why: &str,
) -> anyhow::Result<()> {
    tracing::error!(migration = name, %why, "aborting the migration to protect the source's disk");
    eprintln!("pgseal: {why}: aborting migration {name} to protect the source's disk");
    runtime.block_on(pgseal_core::abort::abort(platform, journal, name))?;
    eprintln!("pgseal: migration {name} aborted (slot and publication dropped)");
    Ok(())
}

/// Runs `name`'s follower: a pass every `interval` seconds until the migration no longer
/// needs one (or once).
pub fn run(ctx: &Context, name: &str, interval: f64, once: bool, serve: Option<&str>) -> Outcome {
    let Some(_follower) = FollowerLock::acquire(&ctx.home, name)? else {
        let running = follow::follower_status(&ctx.home, name)?;
        let pid = running.heartbeat.map(|h| h.pid.to_string());
        ctx.status(format!(
            "migration {name} has a follower already (pid {}); nothing to do",
            pid.as_deref().unwrap_or("?")
        ));
        return Ok(exit::code(exit::OK));
    };
    // With a shared journal, each pass takes the migration's lease under the follower's
    // own name: a runner on another host is held off too, and a command waits for it.
    let journal = pgseal_core::JournalConfig {
        runner: pgseal_core::journal::Runner::follower(),
        ..ctx.journal.clone()
    }
    .open()?;
    let spec = journal.migration(name)?.spec;
    // The metrics beside the loop, for as long as it runs.
    if let Some(addr) = serve {
        let server = super::metrics_server(addr)?;
        let reports = super::migration_reports(ctx.journal.clone(), name.to_string());
        std::thread::spawn(move || super::answer_metrics(&server, reports));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let platform = for_spec(ctx, &runtime, Some(&journal), &spec, false)?;
    let mut state = FollowState::default();
    let mut heartbeat = Heartbeat {
        pid: std::process::id(),
        started_ms: pgseal_core::journal::now_ms(),
        passes: 0,
        last: Default::default(),
    };
    tracing::info!(migration = name, pid = heartbeat.pid, "following");
    loop {
        // Gone with its home (a test's temporary one), or forgotten: nothing to follow.
        if !ctx.home.exists() {
            return Ok(exit::code(exit::OK));
        }
        let (phase, limit) = match journal.migration(name) {
            Ok(record) => (record.phase, record.spec.max_slot_retention),
            Err(pgseal_core::JournalError::NotFound(_)) => return Ok(exit::code(exit::OK)),
            Err(e) => return Err(e.into()),
        };
        if !follow::follows(phase) {
            tracing::info!(migration = name, phase = phase.as_str(), "follower stops");
            return Ok(exit::code(exit::OK));
        }
        let gate = PassGate::open(&ctx.home, name)?;
        let leased = match &gate {
            Some(_) => match journal.hold_if_shared(name) {
                Ok(lease) => Some(lease),
                Err(e) if e.is_busy() => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let pass = match leased {
            None => pgseal_core::follow::Pass {
                at_ms: pgseal_core::journal::now_ms(),
                idle: Some("another pgseal command works on the migration".into()),
                ..Default::default()
            },
            Some(_lease) => {
                let pass = runtime.block_on(async {
                    tokio::time::timeout(
                        PASS_WAIT,
                        pgseal_core::migration::follow_pass(&platform, &journal, name, &mut state),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(pgseal_core::EngineError::Timeout {
                            what: "a follower pass (the source or the target stopped answering?); the next pass starts afresh".into(),
                            seconds: PASS_WAIT.as_secs(),
                        })
                    })
                });
                match pass {
                    Ok(pass) => pass,
                    Err(e) => {
                        let error = pgseal_core::error::error_chain(&e);
                        tracing::warn!(migration = name, %error, "follower pass failed");
                        pgseal_core::follow::Pass {
                            at_ms: pgseal_core::journal::now_ms(),
                            error: Some(error),
                            ..Default::default()
                        }
                    }
                }
            }
        };
        // The gate (and the lease, given back at the end of its pass) free for commands.
        drop(gate);
        if !pass.refreshed.is_empty()
            || pass.large_objects.copied + pass.large_objects.unlinked > 0
            || !pass.globals.is_empty()
        {
            tracing::info!(
                migration = name,
                refreshed = ?pass.refreshed,
                large_objects_copied = pass.large_objects.copied,
                large_objects_unlinked = pass.large_objects.unlinked,
                globals = pass.globals.len(),
                "follower pass"
            );
        }
        let retained = pass.retained_bytes;
        heartbeat.passes += 1;
        heartbeat.last = pass;
        follow::write_heartbeat(&ctx.home, name, &heartbeat)?;
        // The source's disk before the migration: over --max-slot-retention, it is aborted,
        // as `status` does, between two passes (the gate is free).
        if pgseal_core::status::retention(retained, limit) == Retention::Exceeded {
            let why = format!(
                "a slot holds {} MiB of WAL on the source, over --max-slot-retention ({} MiB)",
                retained.unwrap_or_default() >> 20,
                limit.unwrap_or_default() >> 20
            );
            // Another command works on it: the next pass looks again.
            match journal.hold(name) {
                Err(e) if e.is_busy() => {
                    tracing::warn!(migration = name, %why, "over the retention limit; another command holds the migration");
                }
                lock => {
                    let _lock = lock?;
                    abort_protecting_source(&runtime, &platform, &journal, name, &why)?;
                    return Ok(exit::code(exit::PRECONDITION));
                }
            }
        }
        if once {
            if ctx.json {
                print_json(&heartbeat.last)?;
            }
            let failed = heartbeat.last.error.is_some();
            return Ok(exit::code(if failed { exit::FAILURE } else { exit::OK }));
        }
        std::thread::sleep(Duration::from_secs_f64(interval.max(0.2)));
    }
}
