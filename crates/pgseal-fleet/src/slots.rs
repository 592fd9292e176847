//! At most N migration commands at once, however many `pgseal fleet` processes run: each
//! command holds one of N lock files (`flock(2)`) in the home's `fleet/slots` while it
//! runs. The kernel drops a lock with the process that held it, so a killed fleet leaves
//! no slot taken.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// How long a waiting command sleeps between looks for a free slot.
const POLL: Duration = Duration::from_millis(100);

/// N slots under one directory.
#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
    count: usize,
}

/// A slot held: released when dropped.
#[derive(Debug)]
pub struct Slot {
    /// Which of the N (from 0).
    pub index: usize,
    _lock: Flock<File>,
}

impl Slots {
    /// `count` slots (at least 1) kept in `dir`, which is made (the owner's only) when
    /// missing.
    pub fn new(dir: &Path, count: usize) -> std::io::Result<Slots> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Slots {
            dir: dir.to_path_buf(),
            count: count.max(1),
        })
    }

    /// How many slots there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Takes a free slot, waiting for one while all are held.
    pub fn acquire(&self) -> std::io::Result<Slot> {
        loop {
            if let Some(slot) = self.try_acquire()? {
                return Ok(slot);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Takes a free slot, or `None` while all are held.
    pub fn try_acquire(&self) -> std::io::Result<Option<Slot>> {
        for index in 0..self.count {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("{index}.lock")))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(Slot { index, _lock: lock })),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => return Err(e.into()),
            }
        }
        Ok(None)
    }
}

/// One changing fleet command at a time per inventory file: held while `start`,
/// `validate`, `cutover`, `rollback` or `cleanup` runs, so that a second one on the same
/// file is refused rather than racing the first for the same migrations.
#[derive(Debug)]
pub struct InventoryLock {
    _lock: Flock<File>,
}

impl InventoryLock {
    /// Takes the lock of `inventory` (kept in `dir`), or `None` while another process
    /// holds it.
    pub fn try_acquire(dir: &Path, inventory: &Path) -> std::io::Result<Option<InventoryLock>> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = std::fs::canonicalize(inventory).unwrap_or_else(|_| inventory.to_path_buf());
        let name: String = path
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let tail = &name[name.len().saturating_sub(200)..];
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{tail}.lock")))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(InventoryLock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_n_are_held_at_once_and_a_dropped_slot_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let one = Slots::new(dir.path(), 2).unwrap();
        // A second holder of the same directory (another fleet process) shares the N.
        let other = Slots::new(dir.path(), 2).unwrap();
        let a = one.acquire().unwrap();
        let b = other.acquire().unwrap();
        assert_ne!(a.index, b.index);
        assert!(one.try_acquire().unwrap().is_none());
        assert!(other.try_acquire().unwrap().is_none());
        drop(a);
        let c = other.try_acquire().unwrap().expect("a slot was freed");
        assert!(one.try_acquire().unwrap().is_none());
        drop((b, c));
        assert_eq!(Slots::new(dir.path(), 0).unwrap().count(), 1);
    }

    #[test]
    fn an_inventory_is_locked_once_and_another_is_not_held_up() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let locks = dir.path().join("locks");
        let held = InventoryLock::try_acquire(&locks, &a)
            .unwrap()
            .expect("free");
        assert!(InventoryLock::try_acquire(&locks, &a).unwrap().is_none());
        let other = InventoryLock::try_acquire(&locks, &b).unwrap();
        assert!(other.is_some());
        drop(held);
        assert!(InventoryLock::try_acquire(&locks, &a).unwrap().is_some());
    }
}
