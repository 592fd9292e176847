//! The KMS audit log: one JSON line per operation, never key material.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::EncryptionContext;

/// Appends audit records to `audit.log` in the key store directory.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    path: PathBuf,
}

/// One audit record.
#[derive(Debug, Serialize)]
struct Record<'a> {
    time: String,
    operation: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a EncryptionContext>,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl AuditLog {
    pub(crate) fn new(path: PathBuf) -> Self {
        AuditLog { path }
    }

    /// Records one operation. An audit line that cannot be written is logged as a warning;
    /// the operation's own outcome stands.
    pub(crate) fn record<T>(
        &self,
        operation: &str,
        key: &str,
        context: Option<&EncryptionContext>,
        outcome: &crate::Result<T>,
    ) {
        let record = Record {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            operation,
            key,
            encryption_context: context,
            outcome: if outcome.is_ok() { "ok" } else { "error" },
            error: outcome.as_ref().err().map(|e| e.to_string()),
        };
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a KMS audit record");
                return;
            }
        };
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(error) = written {
            tracing::warn!(%error, path = %self.path.display(), "cannot append to the KMS audit log");
        }
    }
}
