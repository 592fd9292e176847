//! Locks on one migration in one home: `PGSEAL_HOME/migrations/NAME.KIND` files held with
//! `flock`, released by the kernel when their process dies. With the SQLite journal (one
//! machine), [`MigrationLock`] is how one process at a time drives a migration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::JournalError;

/// An exclusive lock on one migration, held while a process works on it (released when
/// dropped, or by the kernel when the process dies). It holds the migration's follower
/// (`crate::follow`) off for as long: taking it waits for a pass the follower is in the
/// middle of, which ends within seconds.
#[derive(Debug)]
pub struct MigrationLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    _gate: nix::fcntl::Flock<std::fs::File>,
}

/// How long a command waits for the follower to finish its pass.
pub(crate) const PASS_WAIT: Duration = Duration::from_secs(120);

/// `PGSEAL_HOME/migrations/NAME.KIND`, a migration's lock file of that kind.
fn lock_path(home: &Path, name: &str, kind: &str) -> PathBuf {
    home.join("migrations").join(format!("{name}.{kind}"))
}

/// Opens (creating) [`lock_path`] for locking.
fn lock_file(home: &Path, name: &str, kind: &str) -> Result<std::fs::File, JournalError> {
    let path = lock_path(home, name, kind);
    let lock_error = |source| JournalError::Lock {
        migration: name.to_string(),
        path: path.clone(),
        source,
    };
    pgseal_crashsafe::create_dir_all_durable(&home.join("migrations"), 0o700)
        .map_err(lock_error)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_error)
}

/// Takes an exclusive lock on [`lock_path`] without waiting; `None` when another process
/// holds it.
pub(crate) fn try_lock(
    home: &Path,
    name: &str,
    kind: &str,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, JournalError> {
    let file = lock_file(home, name, kind)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(JournalError::Lock {
            migration: name.to_string(),
            path: lock_path(home, name, kind),
            source: std::io::Error::from(errno),
        }),
    }
}

/// [`try_lock`], trying again for up to `limit`; `None` when another process held it all
/// that time.
pub(crate) fn wait_lock(
    home: &Path,
    name: &str,
    kind: &str,
    limit: Duration,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, JournalError> {
    let waited = std::time::Instant::now();
    loop {
        if let Some(lock) = try_lock(home, name, kind)? {
            return Ok(Some(lock));
        }
        if waited.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl MigrationLock {
    /// Takes the lock on `PGSEAL_HOME/migrations/NAME.lock`, failing at once when another
    /// process holds it, then holds the follower off (`NAME.pass`), waiting for its pass
    /// to end.
    pub fn acquire(home: &Path, name: &str) -> Result<MigrationLock, JournalError> {
        let lock = try_lock(home, name, "lock")?
            .ok_or_else(|| JournalError::Busy(name.to_string(), lock_path(home, name, "lock")))?;
        let gate = wait_lock(home, name, "pass", PASS_WAIT)?
            .ok_or_else(|| JournalError::Busy(name.to_string(), lock_path(home, name, "pass")))?;
        Ok(MigrationLock {
            _lock: lock,
            _gate: gate,
        })
    }
}
