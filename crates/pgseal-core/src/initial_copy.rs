//! The full-load strategy's initial copy as the user watches it, table by table: what the
//! running copy reports of itself, and what `status` (another process) reads back from the
//! journal's facts and the target's `pg_stat_progress_copy`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// The journal's fact for a copy's plan: `{database, consistent_point, tables: [{table,
/// source_bytes, rows, ranges, format}]}`, recorded once its slot is made.
pub const FACT_PLAN: &str = "copy_plan";
/// The journal's fact for tables copied whole, their keys built (a batch of them, as they
/// finished): `{database, consistent_point, tables: [{table, rows, bytes, seconds,
/// keys_seconds}]}`.
pub const FACT_TABLE: &str = "copy_table";
/// The journal's fact for how far a copy had come, once a second while it runs and once
/// at its end: `{database, consistent_point, bytes}` (`COPY` bytes so far).
pub const FACT_PROGRESS: &str = "copy_progress";
/// The journal's fact for a database's copy done: `{database, consistent_point, tables,
/// rows, bytes, seconds, workers, keys}`.
pub const FACT_DONE: &str = "copy_done";

/// One table's initial copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCopy {
    /// The database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// `waiting` (not started), `copying`, `keys` (copied, its keys being built),
    /// `ready` (copied, keys built).
    pub state: String,
    /// Rows copied so far (once started).
    pub rows: Option<i64>,
    /// `COPY` bytes copied so far (once started).
    pub bytes: Option<i64>,
    /// The table's size on the source as its statistics say (`relpages` of the heap and
    /// its TOAST table, as of the last VACUUM, ANALYZE or CREATE INDEX): read from the
    /// catalog, so that watching never waits for a lock on the table.
    pub source_bytes: Option<i64>,
    /// The ranges of pages it is copied in (1: whole).
    #[serde(default)]
    pub ranges: u32,
    /// The ranges copied so far.
    #[serde(default)]
    pub ranges_done: u32,
}

impl TableCopy {
    /// True once the table is copied whole and its keys are built.
    pub fn ready(&self) -> bool {
        self.state == "ready"
    }

    /// True once the table's copy is whole (`keys` or `ready`).
    pub fn copied(&self) -> bool {
        matches!(self.state.as_str(), "keys" | "ready")
    }
}

/// A database's latest copy as the journal's facts record it.
#[derive(Debug, Clone, Copy)]
pub struct LatestCopy<'a> {
    /// Its plan ([`FACT_PLAN`]).
    pub plan: &'a serde_json::Value,
    /// Its end ([`FACT_DONE`]), once it ended.
    pub done: Option<&'a serde_json::Value>,
}

/// The latest copy of `database` among `facts` (the journal's, oldest first), if one was
/// begun.
pub fn latest_copy<'a>(
    facts: &'a [(String, i64, serde_json::Value)],
    database: &str,
) -> Option<LatestCopy<'a>> {
    let is = |(kind, _, body): &(String, i64, serde_json::Value), wanted: &str| {
        kind == wanted && body["database"] == database
    };
    let at = facts.iter().rposition(|fact| is(fact, FACT_PLAN))?;
    let done = facts[at..]
        .iter()
        .find(|fact| is(fact, FACT_DONE))
        .map(|(_, _, body)| body);
    Some(LatestCopy {
        plan: &facts[at].2,
        done,
    })
}

/// The rate of each database's latest copy over time, from the journal's `facts`: as
/// `(at_ms, database, bytes_per_second)` between consecutive [`FACT_PROGRESS`] facts of
/// the same copy (the report's plot of the copy).
pub fn copy_rates(facts: &[(String, i64, serde_json::Value)]) -> Vec<(i64, String, f64)> {
    // One series a copy: a copy started over (a new consistent point) begins anew.
    crate::samples::rates(facts.iter().filter_map(|(kind, at_ms, body)| {
        let database = body["database"].as_str()?;
        let point = body["consistent_point"].as_str().unwrap_or_default();
        (kind == FACT_PROGRESS).then_some(())?;
        Some(((database, point), database, *at_ms, body["bytes"].as_f64()?))
    }))
}

/// The `COPY ... FROM` commands running on the target, by `schema.table`: rows and bytes
/// so far (ranges of one table summed).
pub async fn copying_now(
    target: &Client,
) -> Result<HashMap<String, (i64, i64)>, tokio_postgres::Error> {
    let rows = target
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), sum(p.tuples_processed)::bigint, \
                    sum(p.bytes_processed)::bigint \
             FROM pg_stat_progress_copy p \
             JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.command = 'COPY FROM' AND p.datname = current_database() \
             GROUP BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The tables of `database`'s latest copy while it is not done, from the journal's
/// `facts` and what the target copies `now` ([`copying_now`]); empty once it is done.
/// A table copied whole is `ready`, one the target copies is `copying`, the rest
/// `waiting` (also when the copy is not running: `migrate resume` starts it over).
pub fn progress(
    database: &str,
    facts: &[(String, i64, serde_json::Value)],
    now: &HashMap<String, (i64, i64)>,
) -> Vec<TableCopy> {
    let Some(latest) = latest_copy(facts, database) else {
        return Vec::new();
    };
    if latest.done.is_some() {
        return Vec::new();
    }
    let point = &latest.plan["consistent_point"];
    let ready: HashMap<&str, &serde_json::Value> = facts
        .iter()
        .filter(|(kind, _, body)| {
            kind == FACT_TABLE && body["database"] == database && body["consistent_point"] == *point
        })
        .flat_map(|(_, _, body)| body["tables"].as_array().into_iter().flatten())
        .filter_map(|t| t["table"].as_str().map(|name| (name, t)))
        .collect();
    latest.plan["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let table = t["table"].as_str()?;
            let ranges = t["ranges"].as_u64().unwrap_or(1) as u32;
            let (state, rows, bytes, done) = match (ready.get(table), now.get(table)) {
                (Some(body), _) => (
                    "ready",
                    body["rows"].as_i64(),
                    body["bytes"].as_i64(),
                    ranges,
                ),
                (None, Some((rows, bytes))) => ("copying", Some(*rows), Some(*bytes), 0),
                (None, None) => ("waiting", None, None, 0),
            };
            Some(TableCopy {
                database: database.to_string(),
                table: table.to_string(),
                state: state.to_string(),
                rows,
                bytes,
                source_bytes: t["source_bytes"].as_i64(),
                ranges,
                ranges_done: done,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fact(kind: &str, body: serde_json::Value) -> (String, i64, serde_json::Value) {
        (kind.to_string(), 0, body)
    }

    #[test]
    fn copy_rates_are_the_slopes_between_one_copys_progress_facts() {
        let progress = |at: i64, db: &str, point: &str, bytes: i64| {
            (
                FACT_PROGRESS.to_string(),
                at,
                json!({"database": db, "consistent_point": point, "bytes": bytes}),
            )
        };
        let facts = vec![
            progress(1_000, "app", "0/1", 0),
            progress(2_000, "app", "0/1", 4_000),
            // A new copy (started over): no slope across the two.
            progress(3_000, "app", "0/2", 0),
            progress(3_500, "other", "0/9", 0),
            progress(3_500, "app", "0/2", 1_000),
            progress(4_500, "other", "0/9", 10_000),
        ];
        assert_eq!(
            copy_rates(&facts),
            [
                (2_000, "app".to_string(), 4_000.0),
                (3_500, "app".to_string(), 2_000.0),
                (4_500, "other".to_string(), 10_000.0),
            ]
        );
    }

    #[test]
    fn progress_follows_the_latest_copy_of_the_database_until_it_is_done() {
        let plan = |point: &str| {
            fact(
                FACT_PLAN,
                json!({"database": "app", "consistent_point": point, "tables": [
                    {"table": "public.big", "source_bytes": 1000, "ranges": 3},
                    {"table": "public.small", "source_bytes": 10, "ranges": 1},
                    {"table": "public.other", "source_bytes": 5, "ranges": 1},
                ]}),
            )
        };
        let mut facts = vec![
            plan("0/1"),
            // Of the first, interrupted copy: not of the latest.
            fact(
                FACT_TABLE,
                json!({"database": "app", "consistent_point": "0/1", "tables": [{"table": "public.big", "rows": 7, "bytes": 70}]}),
            ),
            fact(
                FACT_PLAN,
                json!({"database": "other", "consistent_point": "0/9", "tables": []}),
            ),
            plan("0/2"),
            fact(
                FACT_TABLE,
                json!({"database": "app", "consistent_point": "0/2", "tables": [{"table": "public.small", "rows": 3, "bytes": 30}]}),
            ),
        ];
        let now: HashMap<String, (i64, i64)> = [("public.big".to_string(), (5, 50))].into();
        let seen: Vec<(String, String, Option<i64>)> = progress("app", &facts, &now)
            .into_iter()
            .map(|t| (t.table, t.state, t.rows))
            .collect();
        assert_eq!(
            seen,
            [
                ("public.big".into(), "copying".into(), Some(5)),
                ("public.small".into(), "ready".into(), Some(3)),
                ("public.other".into(), "waiting".into(), None),
            ]
        );
        assert!(progress("nowhere", &facts, &now).is_empty());
        facts.push(fact(
            FACT_DONE,
            json!({"database": "app", "consistent_point": "0/2"}),
        ));
        assert!(progress("app", &facts, &now).is_empty());
        assert!(latest_copy(&facts, "app").unwrap().done.is_some());
        assert!(latest_copy(&facts, "other").unwrap().done.is_none());
    }
}
