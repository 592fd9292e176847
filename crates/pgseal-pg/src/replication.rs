//! Native logical replication objects over SQL: publications and logical slots on the
//! publisher, subscriptions and their replication origins on the subscriber.
//!
//! Every function here is safe to call again after a crash: creation checks first and
//! reports what already exists, and dropping something that is gone is not an error.

use tokio_postgres::Client;

pub use crate::sql::{qualified, quote_ident, quote_literal, split_qualified};
use tokio_postgres::types::PgLsn;

use crate::Lsn;

impl From<PgLsn> for Lsn {
    fn from(value: PgLsn) -> Self {
        Lsn(u64::from(value))
    }
}

impl From<Lsn> for PgLsn {
    fn from(value: Lsn) -> Self {
        PgLsn::from(value.0)
    }
}

/// Gives `table` (quoted, as the journal keeps it) back its default replica identity,
/// after pgseal set `FULL` for a migration; false when the table is gone (dropped during
/// the migration).
pub async fn restore_replica_identity(
    client: &Client,
    table: &str,
) -> Result<bool, tokio_postgres::Error> {
    match client
        .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT"))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A replication slot on the publisher, as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotState {
    /// The slot's name.
    pub name: String,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// The database a logical slot decodes.
    pub database: Option<String>,
    /// True while a walsender streams from it.
    pub active: bool,
    /// The walsender's process id while active.
    pub active_pid: Option<i32>,
    /// The oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
    /// Everything before this the subscriber has confirmed applied and flushed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot holds back on the publisher (current position − restart_lsn).
    pub retained_bytes: Option<i64>,
}

/// What [`slot`] and [`slots`] read of a slot.
const SLOT_COLUMNS: &str = "SELECT slot_name::text, slot_type, database::text, active, active_pid, restart_lsn, \
            confirmed_flush_lsn, wal_status, \
            CASE WHEN restart_lsn IS NULL THEN NULL \
                 ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END \
     FROM pg_replication_slots";

fn slot_state(r: &tokio_postgres::Row) -> SlotState {
    SlotState {
        name: r.get(0),
        slot_type: r.get(1),
        database: r.get(2),
        active: r.get(3),
        active_pid: r.get(4),
        restart_lsn: r.get::<_, Option<PgLsn>>(5).map(Lsn::from),
        confirmed_flush_lsn: r.get::<_, Option<PgLsn>>(6).map(Lsn::from),
        wal_status: r.get(7),
        retained_bytes: r.get(8),
    }
}

/// Reads one slot, if it exists.
pub async fn slot(client: &Client, name: &str) -> Result<Option<SlotState>, tokio_postgres::Error> {
    let row = client
        .query_opt(&format!("{SLOT_COLUMNS} WHERE slot_name = $1"), &[&name])
        .await?;
    Ok(row.as_ref().map(slot_state))
}

/// Reads the slots named in `names` in one statement (one round trip however many);
/// those that do not exist are left out.
pub async fn slots(
    client: &Client,
    names: &[String],
) -> Result<Vec<SlotState>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("{SLOT_COLUMNS} WHERE slot_name = ANY($1)"),
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(slot_state).collect())
}

/// Creates a logical slot with the `pgoutput` plugin in the connected database, unless
/// one of that name exists. Returns the slot as it is afterwards and whether it was made
/// now. Creation waits for transactions running at that moment to finish.
pub async fn create_logical_slot(
    client: &Client,
    name: &str,
) -> Result<(SlotState, bool), tokio_postgres::Error> {
    let created = if slot(client, name).await?.is_none() {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name],
            )
            .await?;
        true
    } else {
        false
    };
    let state = slot(client, name)
        .await?
        .expect("a slot just created or found exists");
    Ok((state, created))
}

/// Drops a slot if it exists, ending the walsender that holds it first. Returns true when
/// a slot was dropped.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    for _ in 0..50 {
        let Some(state) = slot(client, name).await? else {
            return Ok(false);
        };
        if let Some(pid) = state.active_pid {
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
        {
            Ok(_) => return Ok(true),
            // Taken again between the check and the drop (a subscriber reconnecting).
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    // Last try: its error says why the slot stays busy.
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await?;
    Ok(true)
}

/// Waits until slot `name` has `confirmed_flush_lsn` ≥ `lsn` — the subscriber has applied
/// and flushed everything before it — polling every 10 ms, and returns that position;
/// `None` when the slot does not exist. Callers bound the wait.
pub async fn wait_confirmed(
    client: &Client,
    name: &str,
    lsn: Lsn,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    loop {
        let Some(state) = slot(client, name).await? else {
            return Ok(None);
        };
        if let Some(confirmed) = state.confirmed_flush_lsn
            && confirmed >= lsn
        {
            return Ok(Some(confirmed));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// True when a publication of that name exists in the connected database.
pub async fn publication_exists(
    client: &Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some())
}

/// Creates a publication for all tables, or for `tables` (`schema.table`, already
/// validated names), unless it exists. Returns true when created now.
pub async fn create_publication(
    client: &Client,
    name: &str,
    tables: Option<&[String]>,
) -> Result<bool, tokio_postgres::Error> {
    if publication_exists(client, name).await? {
        return Ok(false);
    }
    let what = match tables {
        None => "FOR ALL TABLES".to_string(),
        Some(list) => format!(
            "FOR TABLE {}",
            list.iter()
                .map(|t| qualified(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    client
        .batch_execute(&format!("CREATE PUBLICATION {} {what}", quote_ident(name)))
        .await?;
    Ok(true)
}

/// Drops a publication if it exists. Returns true when one was dropped.
pub async fn drop_publication(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    if !publication_exists(client, name).await? {
        return Ok(false);
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await?;
    Ok(true)
}

/// The tables a publication publishes, as `schema.table`.
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A subscription on the subscriber, with its origin's progress and its worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionState {
    /// The subscription's name.
    pub name: String,
    /// Its oid; its replication origin is `pg_<oid>`.
    pub oid: u32,
    /// True when enabled.
    pub enabled: bool,
    /// The slot it streams from on the publisher.
    pub slot_name: Option<String>,
    /// The publisher position of the end of the last transaction applied (the origin's
    /// `remote_lsn`), or where the origin was advanced to.
    pub applied_lsn: Option<Lsn>,
    /// The apply worker's process id while it runs.
    pub worker_pid: Option<i32>,
    /// The last position the worker reported back to the publisher.
    pub reported_lsn: Option<Lsn>,
    /// Errors the apply worker hit (`pg_stat_subscription_stats.apply_error_count`). The
    /// count only grows: a lost connection to the publisher counts too.
    pub apply_errors: i64,
    /// How long the apply worker running now has run, in milliseconds.
    pub worker_up_ms: Option<i64>,
}

impl SubscriptionState {
    /// The name of the subscription's replication origin.
    pub fn origin(&self) -> String {
        format!("pg_{}", self.oid)
    }
}

/// Reads one subscription of the connected database, if it exists.
pub async fn subscription(
    client: &Client,
    name: &str,
) -> Result<Option<SubscriptionState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.subname::text, s.oid, s.subenabled, s.subslotname::text, o.remote_lsn, \
                    w.pid, w.latest_end_lsn, coalesce(st.apply_error_count, 0), \
                    (extract(epoch FROM now() - a.backend_start) * 1000)::bigint \
             FROM pg_subscription s \
             LEFT JOIN pg_replication_origin_status o ON o.external_id = 'pg_' || s.oid \
             LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL \
             LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid \
             LEFT JOIN pg_stat_activity a ON a.pid = w.pid \
             WHERE s.subname = $1 \
               AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| SubscriptionState {
        name: r.get(0),
        oid: r.get(1),
        enabled: r.get(2),
        slot_name: r.get(3),
        applied_lsn: r.get::<_, Option<PgLsn>>(4).map(Lsn::from),
        worker_pid: r.get(5),
        reported_lsn: r.get::<_, Option<PgLsn>>(6).map(Lsn::from),
        apply_errors: r.get(7),
        worker_up_ms: r.get(8),
    }))
}

/// Creates a disabled subscription to an existing slot, unless it exists. With
/// `copy_data` false it copies nothing (the data is already there, from a snapshot); with
/// true, once enabled, native tablesync copies every published table, each from its own
/// snapshot, and the apply worker applies a table's changes only past the point its copy
/// ended. `conninfo` is how the subscriber's server reaches the publisher; it may hold a
/// password and is never logged. Returns the subscription and whether it was made now.
pub async fn create_subscription(
    client: &Client,
    name: &str,
    conninfo: &str,
    publication: &str,
    slot: &str,
    copy_data: bool,
) -> Result<(SubscriptionState, bool), tokio_postgres::Error> {
    let created = if subscription(client, name).await?.is_none() {
        client
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
                 WITH (copy_data = {copy_data}, create_slot = false, enabled = false, slot_name = {})",
                quote_ident(name),
                quote_literal(conninfo),
                quote_ident(publication),
                quote_literal(slot),
            ))
            .await?;
        true
    } else {
        false
    };
    let state = subscription(client, name)
        .await?
        .expect("a subscription just created or found exists");
    Ok((state, created))
}

/// Moves a subscription's replication origin to `lsn`: the apply worker then skips every
/// transaction whose commit record starts before it. Only safe while the subscription is
/// disabled, which the caller checks.
pub async fn advance_origin(
    client: &Client,
    subscription: &SubscriptionState,
    lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_replication_origin_advance($1, $2)",
            &[&subscription.origin(), &PgLsn::from(lsn)],
        )
        .await?;
    Ok(())
}

/// Enables a subscription: its apply worker starts streaming from the slot.
pub async fn enable_subscription(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(name)))
        .await
}

/// Drops a subscription if it exists, detaching it from its slot first so the drop leaves
/// the publisher's slot alone (the caller drops it there). The tablesync slots of an
/// unfinished initial copy are dropped on the publisher by PostgreSQL itself. Returns true
/// when one was dropped.
pub async fn drop_subscription(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    if subscription(client, name).await?.is_none() {
        return Ok(false);
    }
    let ident = quote_ident(name);
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {ident} DISABLE; \
             ALTER SUBSCRIPTION {ident} SET (slot_name = NONE); \
             DROP SUBSCRIPTION {ident}"
        ))
        .await?;
    Ok(true)
}

/// The publisher's WAL insert position: past every commit already visible, including
/// asynchronous ones (`synchronous_commit = off`) whose records are still in WAL buffers,
/// beyond the write position `pg_current_wal_lsn()` returns.
pub async fn current_wal_insert_lsn(client: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()", &[])
        .await?;
    Ok(Lsn::from(row.get::<_, PgLsn>(0)))
}

/// The publisher's current WAL position.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let row = client.query_one("SELECT pg_current_wal_lsn()", &[]).await?;
    Ok(Lsn::from(row.get::<_, PgLsn>(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_with_their_quotes_doubled() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        // A backslash makes it an escape string: the same text under either setting of
        // standard_conforming_strings, and no way out of the quotes.
        assert_eq!(quote_literal(r"a\') OR 1=1 --"), r"E'a\\'') OR 1=1 --'");
        assert_eq!(qualified("accounts"), r#""public"."accounts""#);
        assert_eq!(qualified("app.Orders"), r#""app"."Orders""#);
    }
}
