//! Test harness for pgseal: real, throwaway PostgreSQL clusters.
//!
//! [`TestCluster`] runs `initdb` into a fresh temp dir, starts the server on a free loopback
//! port with its unix socket inside that dir, waits until it accepts connections, and stops
//! it and removes everything on `Drop`. When the test that owns it panics, the server log is
//! kept and its path and tail are printed, so a failure can be read after the fact.
//!
//! When the test process is root, the server runs as OS user `postgres` (PostgreSQL refuses
//! to run as root). Tests may run in parallel: each cluster has its own dir and port, and a
//! port taken by someone else between choosing and binding is retried with another.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = pgseal_testkit::TestCluster::builder()
//!     .setting("max_connections", "50")
//!     .start()?;
//! let client = cluster.connect("postgres").await?;
//! let row = client.query_one("SHOW wal_level", &[]).await?;
//! assert_eq!(row.get::<_, String>(0), "logical");
//! # Ok(()) }
//! ```

pub mod checks;
mod cluster;
pub mod crash;
pub mod moto;
pub mod relay;
pub mod rng;

pub use checks::{assert_ledger_whole, scalar};
pub use cluster::{ClusterBuilder, Error, TestCluster};
pub use crash::crash_postmaster;
pub use moto::MotoServer;
pub use relay::Relay;
pub use rng::SeededRng;
