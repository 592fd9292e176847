//! The AWS platform's errors, and how an SDK error becomes one.

use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use pgseal_platform::{ErrorKind, PlatformError};

/// An AWS platform operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The request is malformed (an identifier, a route); nothing was sent.
    #[error("{0}")]
    InvalidInput(String),
    /// No such instance, cluster, snapshot or log.
    #[error("{0}")]
    NotFound(String),
    /// KMS refused the key, or it is not usable.
    #[error("{0}")]
    Key(String),
    /// The request cannot be carried out as things stand; the message says what to do.
    #[error("{0}")]
    Precondition(String),
    /// An API call failed.
    #[error("{operation} failed: {message}")]
    Api {
        /// The API operation, e.g. `CopyDBSnapshot`.
        operation: &'static str,
        /// The service's error code, when it sent one.
        code: Option<String>,
        /// The error with its context.
        message: String,
    },
    /// A wait ran out of time; running the command again resumes it.
    #[error(
        "timed out after {seconds} s waiting for {what} (last status: {last}); run the command again to go on waiting"
    )]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
        /// The last status seen.
        last: String,
    },
    /// SQL on an instance failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An instance's SQL endpoint could not be reached.
    #[error("{what}: {source}")]
    Connect {
        /// Which instance.
        what: String,
        /// The connection error.
        #[source]
        source: pgseal_pg::ConnectError,
    },
}

/// Error codes that mean "no such thing" across RDS, KMS and CloudWatch Logs.
const NOT_FOUND_CODES: &[&str] = &[
    "DBInstanceNotFound",
    "DBInstanceNotFoundFault",
    "DBSnapshotNotFound",
    "DBSnapshotNotFoundFault",
    "DBClusterNotFoundFault",
    "DBClusterSnapshotNotFoundFault",
    "DBParameterGroupNotFound",
    "DBClusterParameterGroupNotFound",
    "ResourceNotFoundException",
];

/// Error codes that mean KMS refused the key.
const KEY_CODES: &[&str] = &[
    "NotFoundException",
    "KMSKeyNotAccessibleFault",
    "DisabledException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
];

/// Turns an SDK error of `operation` into an [`AwsError`], by its service error code.
pub(crate) fn api<E, R>(operation: &'static str, error: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = error.code().map(str::to_string);
    let message = DisplayErrorContext(&error).to_string();
    match code.as_deref() {
        Some(c) if NOT_FOUND_CODES.contains(&c) => {
            AwsError::NotFound(format!("{operation}: {}", error.message().unwrap_or(c)))
        }
        Some(c) if KEY_CODES.contains(&c) => {
            AwsError::Key(format!("{operation}: {}", error.message().unwrap_or(c)))
        }
        _ => AwsError::Api {
            operation,
            code,
            message,
        },
    }
}

impl AwsError {
    /// The platform-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AwsError::InvalidInput(_) | AwsError::Precondition(_) => ErrorKind::Precondition,
            AwsError::NotFound(_) => ErrorKind::NotFound,
            AwsError::Key(_) => ErrorKind::Key,
            AwsError::Api { .. }
            | AwsError::Timeout { .. }
            | AwsError::Sql { .. }
            | AwsError::Connect { .. } => ErrorKind::Other,
        }
    }
}

impl From<AwsError> for PlatformError {
    fn from(error: AwsError) -> Self {
        PlatformError::new(error.kind(), error)
    }
}

/// A result whose error is an [`AwsError`].
pub type Result<T> = std::result::Result<T, AwsError>;
