//! Errors of the KMS and the sealed-stream format.

use std::path::PathBuf;

/// What kind of failure an [`Error`] is: callers (the CLI's exit codes, retry logic) decide
/// on this, not on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No passphrase was given for the key store.
    NoPassphrase,
    /// The passphrase does not open the key store.
    WrongPassphrase,
    /// The key store's files are damaged or were changed outside pgseal.
    KeyStoreDamaged,
    /// No key has that id or alias.
    KeyNotFound,
    /// The key exists but refuses use (disabled, pending deletion).
    KeyUnusable,
    /// Sealed data or a wrapped key failed authentication: damaged, tampered with, or not
    /// made under this key and encryption context.
    Tampered,
    /// The input is not a pgseal sealed stream at all.
    NotSealed,
    /// A request that cannot be carried out as given (bad alias, bad number of days, ...).
    InvalidInput,
    /// Reading or writing failed.
    Io,
}

/// Errors of the KMS and the sealed-stream format.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No passphrase source was given.
    #[error(
        "no passphrase for the key store: set PGSEAL_PASSPHRASE or pass --passphrase-file FILE"
    )]
    NoPassphrase,
    /// The passphrase does not open the key store.
    #[error("cannot open key store {}: wrong passphrase", path.display())]
    WrongPassphrase {
        /// The key store file.
        path: PathBuf,
    },
    /// The key store file cannot be read as a key store.
    #[error("key store {} is damaged: {reason}; restore it from a backup (keys cannot be recovered without it)", path.display())]
    KeyStoreDamaged {
        /// The key store file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No key has that id or alias.
    #[error("no KMS key '{key}' (see `pgseal key list`)")]
    KeyNotFound {
        /// The id or alias asked for.
        key: String,
    },
    /// The key is disabled.
    #[error("KMS key {key_id} is disabled; enable it with `pgseal key enable {key_id}`")]
    KeyDisabled {
        /// The key.
        key_id: String,
    },
    /// The key is scheduled for deletion.
    #[error(
        "KMS key {key_id} is pending deletion (on {deletion_date}); cancel with `pgseal key cancel-deletion {key_id}`"
    )]
    KeyPendingDeletion {
        /// The key.
        key_id: String,
        /// When it will be deleted (RFC 3339).
        deletion_date: String,
    },
    /// A wrapped data key does not open.
    #[error(
        "cannot decrypt the data key under KMS key {key_id}: wrong key, wrong encryption context, or damaged"
    )]
    UnwrapFailed {
        /// The key named in the wrapped blob.
        key_id: String,
    },
    /// Sealed data failed a check.
    #[error("sealed data is damaged or was tampered with: {reason}")]
    Tampered {
        /// Which check failed, and where.
        reason: String,
    },
    /// Not a pgseal sealed stream.
    #[error("input is not a pgseal sealed stream: {reason}")]
    NotSealed {
        /// Why it is not.
        reason: String,
    },
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    InvalidInput(String),
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoPassphrase => ErrorKind::NoPassphrase,
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::KeyStoreDamaged { .. } => ErrorKind::KeyStoreDamaged,
            Error::KeyNotFound { .. } => ErrorKind::KeyNotFound,
            Error::KeyDisabled { .. } | Error::KeyPendingDeletion { .. } => ErrorKind::KeyUnusable,
            Error::UnwrapFailed { .. } | Error::Tampered { .. } => ErrorKind::Tampered,
            Error::NotSealed { .. } => ErrorKind::NotSealed,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn tampered(reason: impl Into<String>) -> Error {
        Error::Tampered {
            reason: reason.into(),
        }
    }
}

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream error carried through `std::io::Read`/`Write`, recoverable with
/// [`Error::from_io`].
impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        let kind = match error.kind() {
            ErrorKind::Io => std::io::ErrorKind::Other,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, error)
    }
}

impl Error {
    /// Unwraps a crate error that travelled inside a `std::io::Error` (from the stream
    /// reader or writer), or wraps a plain I/O error with `what`.
    pub fn from_io(error: std::io::Error, what: &str) -> Error {
        if error.get_ref().is_some_and(|e| e.is::<Error>()) {
            let inner = error.into_inner().expect("checked above");
            *inner.downcast::<Error>().expect("checked above")
        } else {
            Error::Io {
                what: what.to_string(),
                source: error,
            }
        }
    }
}
