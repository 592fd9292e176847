//! `pgseal endpoint check`: will an application work through this endpoint? A
//! transaction-pooling PgBouncer before 1.21 hands each transaction to any server
//! connection, so a driver's named server-side prepared statements meet
//! `prepared statement "..." already exists` or `... does not exist`. The check reads the
//! server logs of the instances behind the endpoint for those errors, and reports the
//! PgBouncer version and whether it can keep prepared statements.
//!
//! Only the `ERROR:` lines are read and reported, never the `STATEMENT:` lines after them
//! (they may hold row values).

use std::path::PathBuf;

use serde::Serialize;

use super::pgbouncer::PgBouncer;
use crate::instance::{LocalError, LocalInstances, io_error};

/// What the check found.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointCheck {
    /// The endpoint.
    pub endpoint: String,
    /// Its PgBouncer.
    pub pgbouncer: PgBouncer,
    /// The server logs read (the instances the endpoint sends connections to).
    pub logs: Vec<PathBuf>,
    /// Prepared-statement failures in them, oldest first (at most [`MAX_SHOWN`]).
    pub failures: Vec<PreparedFailure>,
    /// How many there are in all.
    pub failure_count: usize,
}

/// At most this many failures are listed.
pub const MAX_SHOWN: usize = 20;

/// One prepared-statement failure from a server log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreparedFailure {
    /// The instance whose log has it.
    pub instance: String,
    /// The log line's prefix (timestamp and process id).
    pub at: String,
    /// The error's message (`prepared statement "_pg3_2" already exists`).
    pub message: String,
}

/// The messages that mean a driver's prepared statements met a connection they were not
/// prepared on.
const PATTERNS: &[(&str, &str)] = &[
    ("prepared statement \"", " already exists"),
    ("prepared statement \"", " does not exist"),
    ("unnamed prepared statement does not exist", ""),
];

/// The prepared-statement failures in a server log's text, for `instance`.
pub fn failures_in(log: &str, instance: &str) -> Vec<PreparedFailure> {
    log.lines()
        .filter_map(|line| {
            let (at, message) = line.split_once("ERROR:  ")?;
            let message = message.trim_end();
            PATTERNS
                .iter()
                .any(|(start, end)| message.starts_with(start) && message.ends_with(end))
                .then(|| PreparedFailure {
                    instance: instance.to_string(),
                    at: at.trim_end().to_string(),
                    message: message.to_string(),
                })
        })
        .collect()
}

impl LocalInstances {
    /// Checks endpoint `name`; see the module documentation.
    pub fn check_endpoint(&self, name: &str) -> Result<EndpointCheck, LocalError> {
        let info = self.endpoint(name)?;
        let pgbouncer = PgBouncer::find()?;
        let mut instances = vec![info.record.instance.clone()];
        instances.extend(info.record.routes.values().cloned());
        instances.sort();
        instances.dedup();
        let (mut logs, mut failures) = (Vec::new(), Vec::new());
        for instance in &instances {
            let log = self.describe(instance)?.log_path;
            let text =
                std::fs::read(&log).map_err(io_error(format!("cannot read {}", log.display())))?;
            failures.extend(failures_in(&String::from_utf8_lossy(&text), instance));
            logs.push(log);
        }
        let failure_count = failures.len();
        failures.truncate(MAX_SHOWN);
        Ok(EndpointCheck {
            endpoint: name.to_string(),
            pgbouncer,
            logs,
            failures,
            failure_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_drivers_failures_and_never_the_statement_text() {
        let log = "\
2026-12-02 07:40:00.101 UTC [311] ERROR:  prepared statement \"_pg3_2\" already exists
2026-12-02 07:40:00.101 UTC [311] STATEMENT:  INSERT INTO t VALUES ('secret row')
2026-12-02 07:40:01.000 UTC [312] ERROR:  prepared statement \"s0\" does not exist
2026-12-02 07:40:02.000 UTC [313] ERROR:  relation \"nope\" does not exist
2026-12-02 07:40:03.000 UTC [314] ERROR:  unnamed prepared statement does not exist
2026-12-02 07:40:04.000 UTC [315] LOG:  prepared statement \"x\" already exists
";
        let found = failures_in(log, "src");
        let messages: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "prepared statement \"_pg3_2\" already exists",
                "prepared statement \"s0\" does not exist",
                "unnamed prepared statement does not exist",
            ]
        );
        assert_eq!(found[0].at, "2026-12-02 07:40:00.101 UTC [311]");
        assert!(found.iter().all(|f| !f.message.contains("secret")));
    }
}
