//! The ledger workload: the proof that a migration lost no committed transaction and
//! applied none twice.
//!
//! [`run`] writes transactions from several clients at a steady rate. Each transaction has
//! an id made by the client and writes an event row keyed by it; the id is appended to the
//! ledger file only after `COMMIT` is acknowledged. A connection lost during `COMMIT` leaves
//! the outcome unknown: such ids are recorded as *uncertain*, never as acknowledged. The
//! client reconnects and goes on (each loss is a client error), so a run can span a
//! cutover.
//!
//! Three kinds of transaction touch three tables:
//! - `insert`: a new event, a new account with balance 100, and a row in a table with no
//!   primary key (`REPLICA IDENTITY FULL`);
//! - `update`: an event, and `balance + 1` on an earlier account (an update applied twice
//!   shows as an excess balance);
//! - `delete`: an event, and the removal of an earlier row from the table without a key.
//!
//! [`verify`] reads the ledger and the database and counts `acknowledged`, `missing`
//! (acknowledged but absent, or an acknowledged effect not visible), `duplicated` (an
//! effect applied more than once) and `unexpected` (committed events nobody acknowledged,
//! beyond the uncertain ones).

mod ledger;
mod run;
mod verify;

pub use ledger::{Entry, Kind, Ledger, Outcome, read_ledger};
pub use run::{RunOptions, RunSummary, SLOW_KEPT, SLOW_MS, SlowTransaction, run, unix_ms};
pub use verify::{Verification, verify};

/// The workload's tables, created by [`run`] when missing.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS pgseal_ledger_events (
    txid bigint PRIMARY KEY, client int NOT NULL, kind text NOT NULL, target bigint,
    at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS pgseal_ledger_accounts (
    id bigint PRIMARY KEY, balance bigint NOT NULL, updated_by bigint);
CREATE TABLE IF NOT EXISTS pgseal_ledger_nokey (txid bigint NOT NULL, note text NOT NULL);
ALTER TABLE pgseal_ledger_nokey REPLICA IDENTITY FULL;";

/// Workload failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] pgseal_pg::ConnectError),
    /// SQL failed outside the retried transaction loop (schema, verification queries).
    #[error("workload SQL failed: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// The ledger file could not be read or written.
    #[error("ledger {path}: {source}")]
    Ledger {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A ledger line is not one this workload writes.
    #[error("ledger {path} line {line}: {reason}")]
    LedgerFormat {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}
