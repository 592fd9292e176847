//! PostgreSQL toolkit for pgseal.
//!
//! - [`install`]: where the PostgreSQL server programs are and which version they are.
//! - [`connect`]: opening a `tokio-postgres` connection with errors that name the server
//!   (never the password).

pub mod connect;
pub mod install;

pub use connect::{ConnectError, connect, describe_target};
pub use install::{DiscoverError, PgInstall, PgVersion};
