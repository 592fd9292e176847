//! The target-side change log: the keys every replicated change touched, which the cutover's final check re-verifies.

use pgseal_pg::replication::{self, qualified, quote_ident};
use tokio_postgres::Client;

use crate::error::{EngineError, sql};

/// The target-side change log: the keys every replicated change touched, recorded by an
/// `ENABLE ALWAYS` trigger (it fires for the apply worker too) on each validated table.
pub(super) const CHANGE_LOG: &str = "pgseal_validate.changes";

/// The schema of the change log (and of nothing else): on the target only.
pub const CHANGE_LOG_SCHEMA: &str = "pgseal_validate";

/// Installs (idempotently) the change log and its triggers on the target's tables and
/// returns the log's current position (the horizon of a pass that starts now).
pub(super) async fn install_change_log(
    target: &Client,
    tables: &[String],
) -> Result<i64, EngineError> {
    target
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS pgseal_validate; \
             CREATE TABLE IF NOT EXISTS {CHANGE_LOG} (id bigserial PRIMARY KEY, tbl regclass NOT NULL, key jsonb)"
        ))
        .await
        .map_err(sql("target", "installing the change log"))?;
    for table in tables {
        let row = target
            .query_one(
                "SELECT c.oid::int8, \
                        coalesce(array_agg(a.attname::text ORDER BY k.n) FILTER (WHERE a.attname IS NOT NULL), '{}') \
                 FROM pg_class c \
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
                 LEFT JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true \
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 WHERE c.oid = $1::text::regclass GROUP BY c.oid",
                &[&qualified(table)],
            )
            .await
            .map_err(sql("target", "reading a primary key"))?;
        let (oid, key): (i64, Vec<String>) = (row.get(0), row.get(1));
        // One function a table, with the key columns named statically: no whole-row
        // conversion per change. A key-less table only records that it was touched.
        let function = format!("pgseal_validate.log_{oid}");
        let body = if key.is_empty() {
            format!("INSERT INTO {CHANGE_LOG} (tbl, key) VALUES (TG_RELID, NULL); RETURN NULL;")
        } else {
            let build = |row: &str| {
                let pairs: Vec<String> = key
                    .iter()
                    .map(|c| {
                        format!(
                            "{}, {row}.{}",
                            replication::quote_literal(c),
                            quote_ident(c)
                        )
                    })
                    .collect();
                format!("jsonb_build_object({})", pairs.join(", "))
            };
            let (new, old) = (build("NEW"), build("OLD"));
            format!(
                "IF TG_OP <> 'DELETE' THEN INSERT INTO {CHANGE_LOG} (tbl, key) VALUES (TG_RELID, {new}); END IF; \
                 IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND {old} <> {new}) THEN \
                   INSERT INTO {CHANGE_LOG} (tbl, key) VALUES (TG_RELID, {old}); END IF; \
                 RETURN NULL;"
            )
        };
        // Row level even without a key: the apply worker fires row triggers only. It
        // runs as pgseal's role (SECURITY DEFINER): on PostgreSQL 16 and later the apply
        // worker applies as each table's owner, who may not write the log. Quoted with a
        // dollar tag no key column's name holds.
        let mut tag = "$pgseal$".to_string();
        while body.contains(&tag) {
            tag.insert(tag.len() - 1, '_');
        }
        target
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
                 SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {tag} BEGIN {body} END {tag}; \
                 DROP TRIGGER IF EXISTS pgseal_changes ON {t}; \
                 CREATE TRIGGER pgseal_changes AFTER INSERT OR UPDATE OR DELETE ON {t} \
                 FOR EACH ROW EXECUTE FUNCTION {function}(); \
                 ALTER TABLE {t} ENABLE ALWAYS TRIGGER pgseal_changes",
                t = qualified(table),
            ))
            .await
            .map_err(sql("target", "installing a change trigger"))?;
    }
    let row = target
        .query_one(
            &format!("SELECT coalesce(max(id), 0) FROM {CHANGE_LOG}"),
            &[],
        )
        .await
        .map_err(sql("target", "reading the change log"))?;
    Ok(row.get(0))
}

/// Removes the change log and its triggers from the target (before it takes writes).
pub async fn drop_change_log(target: &Client) -> Result<(), EngineError> {
    target
        .batch_execute("DROP SCHEMA IF EXISTS pgseal_validate CASCADE")
        .await
        .map_err(sql("target", "removing the change log"))
}

/// Whether the target database holds the change log the final check reads.
pub async fn change_log_present(target: &Client) -> Result<bool, EngineError> {
    Ok(target
        .query_opt(
            "SELECT 1 FROM pg_class WHERE oid = to_regclass($1)",
            &[&CHANGE_LOG],
        )
        .await
        .map_err(sql("target", "looking for the change log"))?
        .is_some())
}
