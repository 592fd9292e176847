//! The follower: what keeps a migration moving between commands. Nothing else runs once
//! `start` returns, yet a replicating migration has work no single command does:
//!
//! - a table made on the source (its `CREATE TABLE` replayed on the target) gets rows only
//!   once the subscription is refreshed;
//! - large objects written on the source are not replicated at all;
//! - roles, memberships and database settings made on the source are not either;
//! - the slots' WAL on the source wants watching, and the report wants samples.
//!
//! `pgseal migrate follow NAME` runs [`pass`] every few seconds while the migration
//! replicates (`start` and `resume` leave one running) and stops by itself once the
//! migration is cut over, rolled back, cleaned up or aborted. One follower a migration
//! ([`FollowerLock`]); a command that changes the migration holds it off for as long as
//! it runs (`MigrationLock` waits for a pass in progress, [`PassGate`]). Each pass is
//! written to `PGSEAL_HOME/migrations/NAME.follow.json` ([`Heartbeat`]), which `status`
//! shows: when the last pass ran and what it did.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pgseal_platform::Platform;
use serde::{Deserialize, Serialize};

use crate::carry::{Baseline, LargeObjects};
use crate::error::EngineError;
use crate::journal::{Journal, JournalError, Phase, try_lock};
use crate::sessions::{connect_source_db, connect_to, streams_of};

/// The one follower of a migration holds this for as long as it runs.
#[derive(Debug)]
pub struct FollowerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl FollowerLock {
    /// Takes it; `None` when another follower of `name` runs.
    pub fn acquire(home: &Path, name: &str) -> Result<Option<FollowerLock>, JournalError> {
        Ok(try_lock(home, name, "follower")?.map(|lock| FollowerLock { _lock: lock }))
    }

    /// Whether a follower of `name` runs now.
    pub fn held(home: &Path, name: &str) -> Result<bool, JournalError> {
        Ok(try_lock(home, name, "follower")?.is_none())
    }
}

/// Held by the follower for one pass; a command holding `MigrationLock` keeps it from
/// starting one.
#[derive(Debug)]
pub struct PassGate {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl PassGate {
    /// Opens it for one pass; `None` while a command works on the migration.
    pub fn open(home: &Path, name: &str) -> Result<Option<PassGate>, JournalError> {
        Ok(try_lock(home, name, "pass")?.map(|lock| PassGate { _lock: lock }))
    }

    /// Holds the follower off (waiting up to `limit` for a pass in progress); `None` when
    /// it could not (then the caller goes on beside it).
    pub fn hold(home: &Path, name: &str, limit: std::time::Duration) -> Option<PassGate> {
        crate::journal::wait_lock(home, name, "pass", limit)
            .ok()
            .flatten()
            .map(|lock| PassGate { _lock: lock })
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pass {
    /// When it began (ms since the epoch).
    pub at_ms: i64,
    /// How long it took.
    pub seconds: f64,
    /// Tables made on the source whose subscription was refreshed, as
    /// `database/schema.table`: their rows are being copied.
    pub refreshed: Vec<String>,
    /// Large objects carried to the target.
    pub large_objects: LargeObjects,
    /// Roles, memberships and database properties carried to the target.
    pub globals: Vec<String>,
    /// Why the pass stopped short, if it did (the next one tries again).
    pub error: Option<String>,
    /// The most WAL one of the migration's slots held on the source (bytes), as the pass
    /// read it: what the follower holds against `--max-slot-retention`.
    #[serde(default)]
    pub retained_bytes: Option<i64>,
    /// What it did not do and why, when it did nothing (another command was running, the
    /// migration is not replicating).
    pub idle: Option<String>,
}

/// What a follower writes after each pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The follower's process id.
    pub pid: u32,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Passes so far.
    pub passes: u64,
    /// The last one.
    pub last: Pass,
}

/// Where `name`'s follower writes its heartbeat.
pub fn heartbeat_path(home: &Path, name: &str) -> PathBuf {
    home.join("migrations").join(format!("{name}.follow.json"))
}

/// Where `migrate follow --detach` writes the process id of the follower it started.
pub fn pid_path(home: &Path, name: &str) -> PathBuf {
    home.join("migrations").join(format!("{name}.follow.pid"))
}

/// Where `name`'s follower writes its log.
pub fn log_path(home: &Path, name: &str) -> PathBuf {
    home.join("migrations").join(format!("{name}.follow.log"))
}

/// Writes `heartbeat` (whole, or not at all).
pub fn write_heartbeat(home: &Path, name: &str, heartbeat: &Heartbeat) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(heartbeat).expect("a heartbeat serialises");
    pgseal_crashsafe::write_atomic(&heartbeat_path(home, name), &bytes, 0o600)
}

/// The follower of `name` as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FollowerStatus {
    /// Whether one runs now.
    pub running: bool,
    /// Its last heartbeat, if it ever wrote one.
    pub heartbeat: Option<Heartbeat>,
    /// Seconds since its last pass began.
    pub last_pass_age_seconds: Option<f64>,
}

/// Reads `name`'s follower's state.
pub fn follower_status(home: &Path, name: &str) -> Result<FollowerStatus, JournalError> {
    let heartbeat: Option<Heartbeat> = std::fs::read(heartbeat_path(home, name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let now = crate::journal::now_ms();
    Ok(FollowerStatus {
        running: FollowerLock::held(home, name)?,
        last_pass_age_seconds: heartbeat
            .as_ref()
            .map(|h| (now - h.last.at_ms).max(0) as f64 / 1000.0),
        heartbeat,
    })
}

/// Whether a follower has anything left to do in `phase`: it stops once the migration is
/// cut over (the target serves; a rollback carries back what it must itself), rolled
/// back, cleaned up or aborted.
pub fn follows(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Running | Phase::Failed | Phase::Replicating | Phase::CuttingOver
    )
}

/// What a follower remembers between passes: each database's large-object marks on the
/// source after its last pass (the first pass compares everything).
#[derive(Debug, Default)]
pub struct FollowState {
    baseline: Option<Baseline>,
}

/// One pass over migration `name`: for every database, the subscription refreshed for
/// tables made on the source, the large objects written since the last pass carried,
/// roles and database properties made equal (`crate::carry`), and a replication sample
/// recorded. Does nothing but say why unless the migration replicates.
pub async fn pass<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    state: &mut FollowState,
) -> Result<Pass, EngineError> {
    let started = Instant::now();
    let mut done = Pass {
        at_ms: crate::journal::now_ms(),
        ..Default::default()
    };
    let record = journal.migration(name)?;
    if record.phase != Phase::Replicating {
        done.idle = Some(format!("the migration is {}", record.phase.as_str()));
        return Ok(done);
    }
    let spec = record.spec;
    let streams = streams_of(journal, name)?;
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    for s in &streams {
        let source = connect_source_db(platform, &spec, &s.database).await?;
        let target = connect_to(platform, &spec.target, &s.database, "target").await?;
        for table in crate::ddl::refresh_new_tables(&source, &target, &s.name, &s.name).await? {
            done.refreshed.push(format!("{}/{table}", s.database));
        }
        sources.push(source);
        targets.push(target);
    }
    if !done.refreshed.is_empty() {
        journal.add_fact(
            name,
            "ddl_refresh",
            &serde_json::json!({ "tables": done.refreshed }),
        )?;
    }
    let databases: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    let options = Default::default();
    let sides = crate::carry::Sides {
        from: &sources,
        from_role: "source",
        to: &targets,
        to_role: "target",
        databases: &databases,
        options: &options,
    };
    let (carried, baseline) = crate::carry::since(&sides, state.baseline.as_ref()).await?;
    state.baseline = Some(baseline);
    done.large_objects = carried.large_objects;
    done.globals = carried.globals;
    // The slots' WAL is read at every pass (the retention guard needs it now), and kept
    // as a sample when one is due.
    if let Some(source) = sources.first() {
        let now = crate::journal::now_ms();
        match crate::samples::read(source, &streams, now).await {
            Ok(samples) => {
                done.retained_bytes = samples.iter().filter_map(|s| s.retained_bytes).max();
                journal.keep_samples(name, now, &samples);
            }
            Err(e) => tracing::warn!(migration = %name, error = %e, "the slots' WAL was not read"),
        }
    }
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}
