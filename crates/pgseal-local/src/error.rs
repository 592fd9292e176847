//! The local platform's error: what failed, and whether the user can fix the input and
//! run again with nothing changed.

use std::path::PathBuf;

use pgseal_pg::server::ServerError;

use crate::volume::VolumeError;

/// Local platform failures. [`LocalError::is_precondition`] tells the ones where nothing
/// was changed and the user can fix the input and run again.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The name is not a valid instance name.
    #[error(
        "'{0}' is not a valid instance name: use 1-63 lowercase letters, digits and '-', starting with a letter"
    )]
    BadName(String),
    /// An instance of that name exists.
    #[error("instance '{0}' already exists (see `pgseal instance list`)")]
    NameTaken(String),
    /// No instance of that name.
    #[error("no instance '{0}' (see `pgseal instance list`)")]
    NotFound(String),
    /// No snapshot of that name.
    #[error("no snapshot '{0}' (see `pgseal snapshot list`)")]
    SnapshotNotFound(String),
    /// The port is taken.
    #[error("port {port} is in use{by}; choose another with --port", by = by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default())]
    PortInUse {
        /// The port.
        port: u16,
        /// Which instance holds it, if one of ours.
        by: Option<String>,
    },
    /// An instance's own port was taken by another program while the instance was down.
    #[error(
        "instance '{name}' cannot start: its port {port} is now in use by another program (`ss -ltnp 'sport = :{port}'` names it); stop that program, then start the instance again. Several pgseal homes on one machine should each set PGSEAL_FIRST_PORT to a range of their own"
    )]
    PortTakenWhileDown {
        /// The instance.
        name: String,
        /// Its port.
        port: u16,
    },
    /// Encrypted volumes cannot be made here.
    #[error(
        "encrypted instances are not possible on this machine: {reason}; run `pgseal doctor` for the fix"
    )]
    EncryptionUnavailable {
        /// What is missing.
        reason: String,
    },
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    InvalidInput(String),
    /// The server's OS user cannot reach pgseal's home.
    #[error(
        "the server's OS user cannot enter {dir}: choose a home it can traverse (--home /var/lib/pgseal), or allow it (chmod o+x on each parent)"
    )]
    Unreachable {
        /// The directory.
        dir: PathBuf,
    },
    /// No usable PostgreSQL installation.
    #[error(transparent)]
    Install(#[from] pgseal_pg::DiscoverError),
    /// A KMS operation failed.
    #[error("KMS: {0}")]
    Kms(#[from] pgseal_crypto::Error),
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Controlling the server failed.
    #[error("{0}\n--- server log tail ---\n{1}")]
    Server(#[source] ServerError, String),
    /// A program failed.
    #[error(transparent)]
    Exec(#[from] pgseal_exec::Error),
    /// A server could not be reached.
    #[error(transparent)]
    Connect(#[from] pgseal_pg::ConnectError),
    /// SQL failed.
    #[error("SQL on {target}: {source}")]
    Sql {
        /// What it ran against (`instance 'orders'`, `the source of snapshot ...`).
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An instance record cannot be read.
    #[error("instance record {path} is damaged: {reason}")]
    RecordDamaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl LocalError {
    /// True when nothing was changed and fixing the input (name, port, key, machine set-up)
    /// and running again is the way on.
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            LocalError::BadName(_)
                | LocalError::NameTaken(_)
                | LocalError::PortInUse { .. }
                | LocalError::PortTakenWhileDown { .. }
                | LocalError::EncryptionUnavailable { .. }
                | LocalError::InvalidInput(_)
                | LocalError::Unreachable { .. }
        )
    }
}

/// Maps an I/O error to [`LocalError::Io`] with `what` was being done.
pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}
