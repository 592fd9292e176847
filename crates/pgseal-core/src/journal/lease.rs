//! Leases: which runner drives a migration, when the journal is shared (PostgreSQL).
//!
//! A lease is a row — migration, runner, host, pid, expiry — taken by one conditional
//! upsert (`INSERT … ON CONFLICT DO UPDATE … WHERE the lease expired or is the runner's
//! own … RETURNING`), atomic under the row lock PostgreSQL takes for it, and renewed by a
//! heartbeat thread. Expiry is by the journal database's clock, the one every host shares.
//!
//! A runner that stops renewing (killed, paused, cut off) loses the lease when it expires,
//! and another runner may take the migration over through `resume`. The runner that lost
//! it must act no more. Two rules make sure of it:
//! - The holder's own view of its lease ends a margin ([`LeaseTerms::margin`]) *before*
//!   the database's: it is measured from the moment before each renewal was sent, on the
//!   monotonic clock, so a pause of the whole process (SIGSTOP, a frozen VM) counts.
//! - Every journal write checks that view first (no round trip), and the engine records a
//!   step or a resource in the journal before it changes anything. A write after the
//!   view ended calls the lease's `on_lost` (the CLI stops the process at once, as a crash
//!   would, so no clean-up path acts either), and so does a renewal the database refuses.
//!
//! What remains is a pause longer than the margin that falls between a write's check and
//! the change that follows it; the margin (a third of the lease) is there for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::JournalError;
use super::store::{Store, params};

/// Who drives a migration: recorded with each lease and each step run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    /// The runner's name (`fleet run --runner`, or `host:pid` for a single command).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// The process-id space it runs in (the kernel's boot and pid namespace): where two
    /// runners share one, a lease's pid can be asked whether it still lives.
    pub space: String,
    /// Its process id.
    pub pid: u32,
}

/// How a follower's runner name begins (`follower@HOST:PID`).
pub const FOLLOWER: &str = "follower@";

impl Runner {
    /// This process as a migration's follower: its passes take the lease under this name,
    /// and commands wait for a pass to end rather than fail.
    pub fn follower() -> Runner {
        let here = Runner::here(None);
        Runner {
            id: format!("{FOLLOWER}{}", here.id),
            ..here
        }
    }

    /// True for a follower (see [`Runner::follower`]).
    pub fn is_follower(&self) -> bool {
        self.id.starts_with(FOLLOWER)
    }
}

/// This process's pid space: the boot id and the pid namespace, so that two hosts of one
/// name, or two containers on one kernel, are never taken for one another.
fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}/{namespace}", boot.trim())
}

/// True when process `pid` of this pid space is gone.
fn gone(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

impl Runner {
    /// This process, named `id` or, without one, `host:pid`.
    pub fn here(id: Option<String>) -> Runner {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        Runner {
            id: id.unwrap_or_else(|| format!("{host}:{pid}")),
            host,
            space: pid_space(),
            pid,
        }
    }
}

/// Called once when a lease is lost: the holder must stop before it changes anything.
pub type OnLost = Arc<dyn Fn(&str) + Send + Sync>;

/// How long leases last and what losing one does.
#[derive(Clone)]
pub struct LeaseTerms {
    /// How long a lease lasts without a renewal.
    pub ttl: Duration,
    /// Called with the migration's name when the lease is lost.
    pub on_lost: OnLost,
}

impl std::fmt::Debug for LeaseTerms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTerms")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The default lease: 30 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

impl Default for LeaseTerms {
    fn default() -> Self {
        LeaseTerms {
            ttl: DEFAULT_TTL,
            on_lost: Arc::new(|migration| {
                tracing::error!(%migration, "the lease on this migration was lost");
            }),
        }
    }
}

impl LeaseTerms {
    /// How much earlier than the database the holder considers its lease ended.
    pub fn margin(&self) -> Duration {
        self.ttl / 3
    }

    /// How often the heartbeat renews.
    pub fn beat(&self) -> Duration {
        self.ttl / 6
    }

    /// Until when the holder may act after a take or a renewal sent at `sent`.
    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin()
    }
}

/// The holder's own view of a lease.
#[derive(Debug)]
pub(crate) struct Validity {
    migration: String,
    until: Mutex<Instant>,
    lost: AtomicBool,
}

impl Validity {
    /// True when the lease was lost, or may have ended by the holder's own clock.
    fn ended(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
            || Instant::now() >= *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails (after calling `on_lost`, once) when the lease may have ended.
    pub(crate) fn check(&self, terms: &LeaseTerms) -> Result<(), JournalError> {
        if self.ended() {
            self.lose(terms);
            return Err(JournalError::LeaseLost(self.migration.clone()));
        }
        Ok(())
    }

    fn lose(&self, terms: &LeaseTerms) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            (terms.on_lost)(&self.migration);
        }
    }
}

/// A lease held, renewed by a heartbeat thread until dropped (which gives it back).
#[derive(Debug)]
pub struct Lease {
    pub(crate) validity: Arc<Validity>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// Takes or renews: succeeds (returning a row) when there is no lease, when it expired, or
/// when it is this very process's own (same runner, pid space and pid: two processes
/// given one runner name by mistake still never share a lease).
/// With `?7` and `?8` (a holder's runner and pid as last read), it also takes a lease whose
/// holder is that one, seen gone.
fn take_sql(now: &str) -> String {
    format!(
        "INSERT INTO lease (migration, runner, host, space, pid, taken_ms, expires_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, {now}, {now} + ?6) \
         ON CONFLICT (migration) DO UPDATE SET runner = excluded.runner, host = excluded.host, \
           space = excluded.space, pid = excluded.pid, taken_ms = excluded.taken_ms, \
           expires_ms = excluded.expires_ms \
         WHERE lease.expires_ms < {now} \
           OR (lease.runner = excluded.runner AND lease.space = excluded.space \
               AND lease.pid = excluded.pid) \
           OR (lease.runner = ?7 AND lease.pid = ?8) \
         RETURNING runner"
    )
}

impl Lease {
    /// Takes the lease on `migration` for `runner`, or says who holds it. `location` names
    /// the journal in errors. The heartbeat gets a connection of its own once the lease is
    /// taken.
    pub(crate) fn take(
        store: &dyn Store,
        location: &str,
        migration: &str,
        runner: &Runner,
        terms: &LeaseTerms,
    ) -> Result<Lease, JournalError> {
        let now = store.dialect().now_ms();
        let ttl_ms = terms.ttl.as_millis() as i64;
        let fail = |e| JournalError::store(location, e);
        let mut sent = Instant::now();
        let take = |gone_holder: Option<(&str, i64)>| {
            store.query(
                &take_sql(now),
                &params![
                    migration,
                    &runner.id,
                    &runner.host,
                    &runner.space,
                    i64::from(runner.pid),
                    ttl_ms,
                    gone_holder.map(|(r, _)| r),
                    gone_holder.map(|(_, p)| p)
                ],
            )
        };
        let mut taken = take(None).map_err(fail)?;
        if taken.is_empty() {
            let holder = store
                .query(
                    &format!(
                        "SELECT runner, host, pid, expires_ms - {now}, space FROM lease \
                         WHERE migration = ?1"
                    ),
                    &params![migration],
                )
                .map_err(fail)?;
            let row = holder.first();
            let text = |i: usize| {
                row.and_then(|r| r.get::<String>(i).ok())
                    .unwrap_or_default()
            };
            let pid = row.and_then(|r| r.get::<i64>(2).ok()).unwrap_or(0);
            let (holder_runner, space) = (text(0), text(4));
            // A holder in this pid space whose process is gone (killed, crashed) left its
            // lease behind: it is taken at once rather than after its expiry. A paused one
            // still lives and keeps it.
            if space == runner.space && pid != i64::from(runner.pid) && gone(pid) {
                tracing::warn!(migration, holder = %holder_runner, pid, "the lease's holder is gone from this host; taking the lease over");
                sent = Instant::now();
                taken = take(Some((&holder_runner, pid))).map_err(fail)?;
            }
            if taken.is_empty() {
                return Err(JournalError::Leased {
                    migration: migration.to_string(),
                    runner: holder_runner,
                    host: text(1),
                    pid,
                    seconds: row
                        .and_then(|r| r.get::<i64>(3).ok())
                        .map_or(0, |ms| (ms.max(0) + 999) / 1000),
                });
            }
        }
        let beat = match store.reopen() {
            Ok(beat) => beat,
            Err(e) => {
                give_back(store, migration, runner);
                return Err(fail(e));
            }
        };
        let validity = Arc::new(Validity {
            migration: migration.to_string(),
            until: Mutex::new(terms.valid_until(sent)),
            lost: AtomicBool::new(false),
        });
        tracing::info!(migration, runner = %runner.id, ttl_s = terms.ttl.as_secs(), "lease taken");
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let heartbeat = {
            let (validity, stop, terms) = (validity.clone(), stop.clone(), terms.clone());
            let (migration, runner) = (migration.to_string(), runner.clone());
            std::thread::Builder::new()
                .name("pgseal-lease".into())
                .spawn(move || heartbeat(&*beat, &migration, &runner, &terms, &validity, &stop))
                .map_err(|e| fail(e.into()))?
        };
        Ok(Lease {
            validity,
            stop,
            heartbeat: Some(heartbeat),
        })
    }

    /// True while this holder may still act.
    pub fn held(&self) -> bool {
        !self.validity.ended()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.heartbeat.take() {
            let _ = thread.join();
        }
    }
}

/// Renews the lease every [`LeaseTerms::beat`] until stopped, then gives it back. A
/// renewal the database refuses (the lease expired, or another runner has it) loses it;
/// a renewal that fails (the journal unreachable) is tried again until the holder's view
/// ends.
fn heartbeat(
    store: &dyn Store,
    migration: &str,
    holder: &Runner,
    terms: &LeaseTerms,
    validity: &Validity,
    stop: &(Mutex<bool>, Condvar),
) {
    let now = store.dialect().now_ms();
    let renew = format!(
        "UPDATE lease SET expires_ms = {now} + ?3 \
         WHERE migration = ?1 AND runner = ?2 AND space = ?4 AND pid = ?5 \
           AND expires_ms >= {now}"
    );
    let ttl_ms = terms.ttl.as_millis() as i64;
    let (runner, pid) = (holder.id.as_str(), i64::from(holder.pid));
    let (stopped, wake) = stop;
    loop {
        {
            let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, terms.beat(), |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                break;
            }
        }
        if validity.lost.load(Ordering::SeqCst) {
            return;
        }
        let sent = Instant::now();
        match store.execute(
            &renew,
            &params![migration, runner, ttl_ms, &holder.space, pid],
        ) {
            Ok(1) => {
                *validity.until.lock().unwrap_or_else(|p| p.into_inner()) = terms.valid_until(sent);
            }
            Ok(_) => {
                tracing::error!(
                    migration,
                    runner,
                    "the lease expired or was taken by another runner"
                );
                validity.lose(terms);
                return;
            }
            Err(error) => {
                tracing::warn!(migration, runner, %error, "the lease could not be renewed; trying again");
                if validity.check(terms).is_err() {
                    return;
                }
            }
        }
    }
    if !validity.lost.load(Ordering::SeqCst) {
        give_back(store, migration, holder);
    }
}

/// Gives a lease back: deletes its row, if it is still `holder`'s very own. A failure is
/// logged; the lease then expires by itself.
fn give_back(store: &dyn Store, migration: &str, holder: &Runner) {
    if let Err(error) = store.execute(
        "DELETE FROM lease WHERE migration = ?1 AND runner = ?2 AND space = ?3 AND pid = ?4",
        &params![migration, &holder.id, &holder.space, i64::from(holder.pid)],
    ) {
        tracing::warn!(migration, runner = %holder.id, %error, "the lease was not given back; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_and_the_beat_leave_renewals_to_spare() {
        let terms = LeaseTerms {
            ttl: Duration::from_secs(30),
            ..LeaseTerms::default()
        };
        // Four renewals fit in the holder's own view of the lease.
        assert!(terms.ttl - terms.margin() >= terms.beat() * 4);
    }
}
