//! The PgBouncer program: where it is, which version, and what that version can do.

use std::path::PathBuf;

use pgseal_exec::ExternalCommand;
use serde::Serialize;

use crate::error::LocalError;

/// The first PgBouncer release that keeps server-side prepared statements across
/// transaction pooling (`max_prepared_statements`).
pub const PREPARED_STATEMENTS_SINCE: (u32, u32) = (1, 21);

/// The prepared statements an endpoint keeps per server connection when its PgBouncer can
/// (1.21+): a client's named statements are prepared again on whichever server connection
/// runs them.
pub const MAX_PREPARED_STATEMENTS: u32 = 200;

/// A PgBouncer installation.
#[derive(Debug, Clone, Serialize)]
pub struct PgBouncer {
    /// The program.
    pub program: PathBuf,
    /// Its version as `pgbouncer --version` prints it (`1.18.0`).
    pub version: String,
    /// True when this version has `max_prepared_statements` (1.21+), so applications may
    /// use server-side prepared statements through a transaction-pooling endpoint.
    pub prepared_statements: bool,
}

impl PgBouncer {
    /// Finds PgBouncer on `PATH` (or `/usr/sbin`) and asks it for its version, once per
    /// process (a cutover rewrites the configuration inside its pause).
    pub fn find() -> Result<PgBouncer, LocalError> {
        static FOUND: std::sync::OnceLock<PgBouncer> = std::sync::OnceLock::new();
        if let Some(found) = FOUND.get() {
            return Ok(found.clone());
        }
        let found = Self::at(program()?)?;
        Ok(FOUND.get_or_init(|| found).clone())
    }

    /// Asks the PgBouncer at `program` for its version.
    pub fn at(program: PathBuf) -> Result<PgBouncer, LocalError> {
        let output = ExternalCommand::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| LocalError::InvalidInput(format!("pgbouncer --version failed: {e}")))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).ok_or_else(|| {
            LocalError::InvalidInput(format!(
                "cannot read the version of {} from {:?}",
                program.display(),
                text.lines().next().unwrap_or_default()
            ))
        })?;
        let prepared_statements = supports_prepared_statements(&version);
        Ok(PgBouncer {
            program,
            version,
            prepared_statements,
        })
    }
}

/// The version from `pgbouncer --version`'s first line (`PgBouncer 1.18.0`).
pub fn parse_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let version = first
        .strip_prefix("PgBouncer ")?
        .split_whitespace()
        .next()?;
    version
        .split('.')
        .next()?
        .parse::<u32>()
        .ok()
        .map(|_| version.to_string())
}

/// True when `version` (`1.21.0`) is at least [`PREPARED_STATEMENTS_SINCE`].
pub fn supports_prepared_statements(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= PREPARED_STATEMENTS_SINCE
}

pub(crate) fn program() -> Result<PathBuf, LocalError> {
    pgseal_exec::find_program("pgbouncer")
        .or_else(|| {
            let p = PathBuf::from("/usr/sbin/pgbouncer");
            p.exists().then_some(p)
        })
        .ok_or_else(|| {
            LocalError::InvalidInput(
                "pgbouncer is not installed: run `bash scripts/setup` (or apt-get install pgbouncer)".into(),
            )
        })
}

/// What each common driver needs behind a transaction-pooling PgBouncer that cannot keep
/// server-side prepared statements (before 1.21): `(driver, setting)`.
pub const DRIVER_SETTINGS: &[(&str, &str)] = &[
    ("psycopg 3", "connect(..., prepare_threshold=None)"),
    ("asyncpg", "connect(..., statement_cache_size=0)"),
    (
        "pgx (Go)",
        "config.DefaultQueryExecMode = pgx.QueryExecModeExec (or QueryExecModeSimpleProtocol)",
    ),
    ("JDBC (pgjdbc)", "prepareThreshold=0 in the URL"),
    (
        "node-postgres",
        "unnamed queries only: no `name` in query configs",
    ),
    (
        "tokio-postgres (Rust)",
        "query_typed / execute_typed (unnamed statements), not prepare()",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debian_versions_and_what_they_can_do() {
        let text = "PgBouncer 1.18.0\nlibevent 2.1.12-stable\ntls: OpenSSL 3.0.19\n";
        assert_eq!(parse_version(text).as_deref(), Some("1.18.0"));
        assert!(!supports_prepared_statements("1.18.0"));
        assert!(!supports_prepared_statements("1.20.1"));
        assert!(supports_prepared_statements("1.21.0"));
        assert!(supports_prepared_statements("1.24.1"));
        assert!(supports_prepared_statements("2.0.0"));
        assert_eq!(parse_version("pgbouncer version 1"), None);
        assert_eq!(parse_version(""), None);
    }
}
