//! PostgreSQL's own guard on the WAL a migration's slots hold: on a source pgseal manages,
//! `max_slot_wal_keep_size` is set to the migration's `--max-slot-retention` for the
//! migration's life, so the server itself invalidates a slot (`wal_status = lost`) before
//! the WAL it holds fills the disk, whether or not anyone runs `status`.
//!
//! The setting is instance-wide: every slot on the source is held to the same limit while
//! the migration runs, other tools' slots included. The old value is journaled (resource
//! kind [`RESOURCE`], its name the old value) before the change, and put back by `abort`
//! and `cleanup`.

use tokio_postgres::Client;

use crate::error::EngineError;
use crate::journal::Journal;

/// The journal's resource kind for the guard; the resource's name is the old value.
pub const RESOURCE: &str = "max_slot_wal_keep_size";

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    move |source| EngineError::Sql {
        role: "source",
        what: what.to_string(),
        source,
    }
}

/// The source's current `max_slot_wal_keep_size` (`-1`: no limit).
pub async fn current(source: &Client) -> Result<String, EngineError> {
    Ok(source
        .query_one("SHOW max_slot_wal_keep_size", &[])
        .await
        .map_err(sql("reading max_slot_wal_keep_size"))?
        .get(0))
}

/// Sets `max_slot_wal_keep_size` to `limit` bytes (rounded up to MB) on the source, unless
/// migration `name` already did; journals the old value first (resource in `database`).
/// Returns the old value when it was set now.
pub async fn install(
    source: &Client,
    journal: &Journal,
    name: &str,
    database: &str,
    limit: u64,
) -> Result<Option<String>, EngineError> {
    if journal.resources(name)?.iter().any(|r| r.kind == RESOURCE) {
        return Ok(None);
    }
    let old = current(source).await?;
    journal.add_resource(name, RESOURCE, database, &old)?;
    set(source, &format!("{}MB", limit.div_ceil(1 << 20))).await?;
    tracing::info!(migration = %name, old = %old, limit, "max_slot_wal_keep_size set for the migration");
    Ok(Some(old))
}

/// Puts `old` back (what [`install`] journaled).
pub async fn restore(source: &Client, old: &str) -> Result<(), EngineError> {
    set(source, old).await
}

async fn set(source: &Client, value: &str) -> Result<(), EngineError> {
    // ALTER SYSTEM refuses to run in a (multi-statement) transaction.
    source
        .batch_execute(&format!(
            "ALTER SYSTEM SET max_slot_wal_keep_size = {}",
            pgseal_pg::replication::quote_literal(value)
        ))
        .await
        .map_err(sql("setting max_slot_wal_keep_size"))?;
    source
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(sql("reloading the configuration"))?;
    // pg_reload_conf() only signals the postmaster: the new value holds once it (and then
    // this session) has read the file again, which is what callers go on from.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let applied: bool = source
            .query_one(
                "SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size')) = pg_size_bytes($1)",
                &[&value],
            )
            .await
            .map_err(sql("reading max_slot_wal_keep_size"))?
            .get(0);
        if applied || std::time::Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
