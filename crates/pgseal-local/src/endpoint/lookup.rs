//! How a TCP endpoint authenticates clients against the instance's own roles without a
//! password on disk: PgBouncer's `auth_query`, run as a dedicated role that can do one
//! thing — call [`LOOKUP_FUNCTION`], a `SECURITY DEFINER` function that returns the SCRAM
//! verifier of one login role. PgBouncer checks the client's SCRAM proof against it; the
//! verifier cannot be used to log in elsewhere, and no plaintext password exists anywhere.
//!
//! PgBouncer 1.18 runs `auth_query` in the database the client asks for, so the function
//! is installed in every database that accepts connections, `template1` included (new
//! databases inherit it). A snapshot carries it to the target; the full-load strategy
//! copies it with the schema (and the role with the roles).
//!
//! Superusers are not looked up: they cannot log in over TCP through an endpoint (they
//! use its unix socket). Neither can the lookup role itself, which has no password.

use tokio_postgres::Client;

/// The role PgBouncer runs `auth_query` as (no password, no privilege but the lookup).
pub const LOOKUP_ROLE: &str = "pgseal_endpoint";

/// The schema that holds the lookup function, in every database.
pub const LOOKUP_SCHEMA: &str = "pgseal_endpoint";

/// The function PgBouncer calls.
pub const LOOKUP_FUNCTION: &str = "pgseal_endpoint.lookup";

/// PgBouncer's `auth_query`.
pub fn auth_query() -> String {
    format!("SELECT usename, passwd FROM {LOOKUP_FUNCTION}($1)")
}

/// Creates the lookup role (once per instance; run on any database).
pub const CREATE_ROLE: &str = "DO $$ BEGIN \
       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgseal_endpoint') THEN \
         CREATE ROLE pgseal_endpoint LOGIN NOINHERIT; \
       END IF; \
     END $$";

/// Creates (or replaces) the lookup function in the current database.
pub const CREATE_FUNCTION: &str = "CREATE SCHEMA IF NOT EXISTS pgseal_endpoint; \
     REVOKE ALL ON SCHEMA pgseal_endpoint FROM PUBLIC; \
     GRANT USAGE ON SCHEMA pgseal_endpoint TO pgseal_endpoint; \
     CREATE OR REPLACE FUNCTION pgseal_endpoint.lookup(role_name text, OUT usename name, OUT passwd text) \
       RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER \
       SET search_path = pg_catalog AS $f$ \
         SELECT rolname, rolpassword FROM pg_catalog.pg_authid \
          WHERE rolname = role_name AND rolcanlogin AND NOT rolsuper \
            AND rolname <> 'pgseal_endpoint' \
            AND rolpassword LIKE 'SCRAM-SHA-256$%' \
            AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) \
       $f$; \
     REVOKE ALL ON FUNCTION pgseal_endpoint.lookup(text) FROM PUBLIC; \
     GRANT EXECUTE ON FUNCTION pgseal_endpoint.lookup(text) TO pgseal_endpoint";

/// Drops the function and its schema from the current database.
pub const DROP_FUNCTION: &str = "DROP SCHEMA IF EXISTS pgseal_endpoint CASCADE";

/// Drops the lookup role (after the function is gone from every database).
pub const DROP_ROLE: &str = "DROP ROLE IF EXISTS pgseal_endpoint";

/// The databases of the instance `client` is connected to that accept connections.
pub async fn databases(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
