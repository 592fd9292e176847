//! PostgreSQL toolkit for pgseal.
//!
//! - [`install`]: where the PostgreSQL server programs are and which version they are.
//! - [`lsn`]: WAL positions.
//! - [`server`]: `initdb`, settings and `pg_ctl` for one server.
//! - [`connect`]: opening a `tokio-postgres` connection with errors that name the server
//!   (never the password).
//! - [`replication`]: publications, logical slots, subscriptions and their origins.
//! - [`schema`]: column-list fingerprints and the drift between two databases.
//! - [`catalog`]: a fingerprint of a database's catalog, compared object by object.
//! - [`globals`]: roles, memberships and database properties, compared and carried.
//! - [`large_objects`]: large objects, compared and copied object by object.
//! - [`ddl`]: DDL captured on one side and replayed on the other.
//! - [`sql`]: names and values quoted as SQL text by PostgreSQL's rules.

pub mod catalog;
pub mod connect;
pub mod copy;
pub mod ddl;
pub mod exported_slot;
pub mod globals;
pub mod install;
pub mod large_objects;
pub mod lsn;
pub mod replication;
pub mod schema;
pub mod server;
pub mod sql;
pub mod tls;

pub use connect::{
    ConnectError, ConnectFailure, config_from_url, connect, connect_pinned, connect_with, conninfo,
    describe_target, libpq_env, set_scram_password,
};
pub use install::{DiscoverError, PgInstall, PgInstalls, PgVersion};
pub use lsn::Lsn;
