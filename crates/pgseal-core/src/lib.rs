//! pgseal's migration engine (snapshot, full-load and blue/green strategies).
//!
//! - [`preflight`]: the read-only checks `migrate plan` runs; every problem at once.
//! - [`steps`]: the ten steps from source to replicating target, and the failpoints.
//! - [`journal`]: the journal of specs, phases, step runs and created resources, in SQLite
//!   or PostgreSQL, with the leases that let one runner at a time drive a migration.
//! - [`migration`]: the commands (`start`, `cutover`, `rollback`, `resume`, `cleanup`,
//!   `validate`, `verify`, `follow`), each through the migration's strategy.
//! - [`strategy`]: the [`strategy::Strategy`] trait and one module per strategy.
//! - [`engine`]: the step runner's context and the steps the strategies share.
//! - [`error`]: the engine's error type.
//! - [`handle`]: one migration as the phases act on it (platform, journal, name).
//! - [`sessions`]: a migration's streams and connections to either side.
//! - [`status`]: lag, slot retention, apply errors, schema drift.
//! - [`cutover`]: fence, drain, sequences, switch; lifted again on any failure.
//! - [`validate`]: chunked, server-side row-hash comparison of source and target.
//! - [`verify`]: the catalog and the data no row comparison sees (materialized views,
//!   sequences, large objects, roles and settings), compared object by object.
//! - [`abort`]: removes everything a migration created.
//! - [`ddl`]: DDL captured on the source and replayed on the target, and the decisions on
//!   statements that are not replayed by themselves.
//! - [`samples`]: replication time series kept in the journal for the report.
//! - [`report`]: everything the migration report shows, gathered from the journal.
//! - [`stream`]: the per-database replication streams a migration owns.
//! - [`follow`]: the follower that keeps a replicating migration moving between commands.
//! - [`carry`]: what replication does not carry (large objects, roles, database
//!   properties), carried at a switch.

pub mod abort;
pub mod carry;
pub(crate) mod catch_up;
pub mod cutover;
pub mod ddl;
pub mod engine;
pub mod error;
pub(crate) mod fence;
pub mod follow;
pub mod handle;
pub mod initial_copy;
pub mod journal;
pub mod migration;
pub mod preflight;
pub mod report;
pub mod samples;
pub mod sessions;
pub mod slot_guard;
pub mod status;
pub mod steps;
pub mod strategy;
pub mod stream;
pub mod validate;
pub mod verify;

pub use engine::{Engine, Event, Surroundings};
pub use error::EngineError;
pub use journal::{Journal, JournalConfig, JournalError, MigrationLock, MigrationSpec, Phase};
pub use steps::Step;
