//! The engine's error: what went wrong in a step or a phase, and whether the user must
//! change something before trying again.

use pgseal_pg::ConnectError;
use pgseal_platform::{ErrorKind, PlatformError};

use crate::journal::JournalError;
use crate::preflight::{PreflightReport, Severity};

/// A migration step could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A server could not be reached.
    #[error("cannot connect to the {role}")]
    Connect {
        /// `source` or `target`.
        role: &'static str,
        /// The connection error (names the server, never the password).
        #[source]
        source: ConnectError,
    },
    /// An SQL statement failed.
    #[error("{what} on the {role}")]
    Sql {
        /// `source` or `target`.
        role: &'static str,
        /// What was being done.
        what: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The platform refused or failed.
    #[error("{what}")]
    Platform {
        /// What was being done.
        what: String,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// Preflight found blockers; nothing was changed.
    #[error("preflight found {} blocker(s), nothing was changed: {}", blockers(.0).len(), blockers(.0).join("; "))]
    Blocked(Box<PreflightReport>),
    /// A safety guard refused to go on.
    #[error("guard failed, the subscription stays disabled: {0}")]
    Guard(String),
    /// The migration cannot go on as it stands; the message says what to do.
    #[error("{0}")]
    Precondition(String),
    /// Creating a slot waited too long for running transactions; what `start` made was
    /// removed again and the migration forgotten.
    #[error("{0}")]
    SlotWait(String),
    /// A client program (`pg_dump`, `psql`, ...) failed.
    #[error("{what}")]
    Tool {
        /// What was run, against which server (no password).
        what: String,
        /// The program's failure (its exit status and stderr).
        #[source]
        source: pgseal_exec::Error,
    },
    /// A wait timed out.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
    },
}

fn blockers(report: &PreflightReport) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .map(|f| format!("{} (fix: {})", f.detail, f.fix))
        .collect()
}

impl EngineError {
    /// True when the user must change something before trying again (a blocker, a guard,
    /// a refused precondition), as opposed to a failure a retry may clear.
    pub fn is_precondition(&self) -> bool {
        match self {
            EngineError::Blocked(_)
            | EngineError::Guard(_)
            | EngineError::Precondition(_)
            | EngineError::SlotWait(_) => true,
            EngineError::Journal(e) => {
                e.is_busy() || matches!(e, JournalError::NotFound(_) | JournalError::Exists(_))
            }
            EngineError::Platform { source, .. } => {
                matches!(source.kind, ErrorKind::Precondition | ErrorKind::Key)
            }
            _ => false,
        }
    }
}

/// The message of an error and of its causes, joined by `: ` (what the journal records).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Maps a server's error to [`EngineError::Sql`], naming the side (`source` or `target`)
/// and what was being done.
pub(crate) fn sql(
    role: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Sql { role, what, source }
}

/// Maps a platform's error to [`EngineError::Platform`], saying what was being done.
pub(crate) fn platform_error(
    what: impl Into<String>,
) -> impl FnOnce(pgseal_platform::PlatformError) -> EngineError {
    let what = what.into();
    move |source| EngineError::Platform { what, source }
}
