//! What can go wrong with the journal.

use std::path::PathBuf;

use super::store::StoreError;

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal's database could not be opened, read or written.
    #[error("journal {location}: {source}")]
    Store {
        /// The journal (its file, or its server without the password).
        location: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// `--journal` names no journal pgseal can keep (the text says why).
    #[error("journal {0}")]
    BadLocation(String),
    /// A stored value could not be decoded (the journal was edited or is from a newer pgseal).
    #[error("journal {location}: migration {migration}: {detail}")]
    Corrupt {
        /// The journal.
        location: String,
        /// The migration concerned.
        migration: String,
        /// What could not be read.
        detail: String,
    },
    /// No migration of that name.
    #[error("no migration named '{0}' (see `pgseal migrate list`)")]
    NotFound(String),
    /// A migration of that name exists already.
    #[error(
        "a migration named '{0}' exists already: `pgseal migrate resume {0}` continues it, `pgseal migrate abort {0}` removes it"
    )]
    Exists(String),
    /// Another pgseal process is working on the migration.
    #[error(
        "migration '{0}' is being run by another pgseal process (its lock {1} is held); wait for it or stop it first"
    )]
    Busy(String, PathBuf),
    /// Another runner holds the migration's lease.
    #[error(
        "migration '{migration}' is leased by runner {runner} (host {host}, pid {pid}) for {seconds} s more; wait for it, or for the lease to expire if that runner is gone"
    )]
    Leased {
        /// The migration.
        migration: String,
        /// The runner holding it.
        runner: String,
        /// Its host.
        host: String,
        /// Its process.
        pid: i64,
        /// Seconds until the lease expires unless renewed.
        seconds: i64,
    },
    /// This process's lease on the migration ended: another runner may be driving it.
    #[error(
        "the lease on migration '{0}' was lost (not renewed in time, or taken over); this process stops without changing anything more"
    )]
    LeaseLost(String),
    /// The lock file could not be opened.
    #[error("cannot lock migration '{migration}' ({path}): {source}")]
    Lock {
        /// The migration.
        migration: String,
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl JournalError {
    pub(crate) fn store(location: &str, source: StoreError) -> JournalError {
        JournalError::Store {
            location: location.to_string(),
            source,
        }
    }

    /// True when another process or runner drives the migration now.
    pub fn is_busy(&self) -> bool {
        matches!(self, JournalError::Busy(..) | JournalError::Leased { .. })
    }
}
