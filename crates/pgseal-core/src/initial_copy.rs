//! The full-load strategy's initial copy as the user watches it: each published table's
//! tablesync state on the target (`pg_subscription_rel`), the rows and bytes its COPY has
//! received (`pg_stat_progress_copy`), against the table's size on the source.

use std::collections::HashMap;

use pgseal_pg::replication::TableSync;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// One table's initial copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCopy {
    /// The database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// The tablesync state: `init`, `data` (copying), `finishedcopy`, `syncdone`, `ready`.
    pub state: String,
    /// Rows copied so far (while copying; the source's estimate once ready).
    pub rows: Option<i64>,
    /// COPY bytes received so far (while copying).
    pub bytes: Option<i64>,
    /// The table's size on the source as its statistics say (`relpages` of the heap and
    /// its TOAST table, as of the last VACUUM, ANALYZE or CREATE INDEX): read from the
    /// catalog, so that watching never waits for a lock on the table.
    pub source_bytes: Option<i64>,
}

impl TableCopy {
    /// True once the main apply worker applies this table's changes.
    pub fn ready(&self) -> bool {
        self.state == "ready"
    }

    /// True once the table's COPY is done (`finishedcopy`, `syncdone` or `ready`).
    pub fn copied(&self) -> bool {
        matches!(self.state.as_str(), "finishedcopy" | "syncdone" | "ready")
    }
}

/// The estimated size (bytes) and row count of every table publication `publication`
/// publishes, read from the catalog of the source database `client` is connected to.
pub async fn source_sizes(
    client: &Client,
    publication: &str,
) -> Result<HashMap<String, (i64, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT format('%s.%s', p.schemaname, p.tablename), \
                    ((c.relpages::bigint + coalesce(t.relpages, 0)::bigint) \
                        * current_setting('block_size')::bigint), \
                    greatest(c.reltuples, 0)::bigint \
             FROM pg_publication_tables p \
             JOIN pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
             WHERE p.pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The initial copy of database `database`, table by table: its subscription's sync states
/// (`replication::table_syncs` on the target) with the source's sizes from
/// [`source_sizes`].
pub fn progress(
    database: &str,
    syncs: Vec<TableSync>,
    sizes: &HashMap<String, (i64, i64)>,
) -> Vec<TableCopy> {
    syncs
        .into_iter()
        .map(
            |TableSync {
                 table,
                 state,
                 rows,
                 bytes,
             }| {
                let size = sizes.get(&table).copied();
                let rows = match (&rows, state.as_str()) {
                    (Some(_), _) => rows,
                    (None, "ready" | "syncdone" | "finishedcopy") => size.map(|s| s.1),
                    _ => None,
                };
                TableCopy {
                    database: database.to_string(),
                    table,
                    state,
                    rows,
                    bytes,
                    source_bytes: size.map(|s| s.0),
                }
            },
        )
        .collect()
}

/// Tablesync errors of subscription `subscription` so far
/// (`pg_stat_subscription_stats.sync_error_count`); PostgreSQL retries each.
pub async fn sync_errors(
    target: &Client,
    subscription: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = target
        .query_opt(
            "SELECT coalesce(st.sync_error_count, 0) FROM pg_subscription s \
             LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid WHERE s.subname = $1",
            &[&subscription],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}
