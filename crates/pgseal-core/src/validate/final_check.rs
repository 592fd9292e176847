//! The cutover's final check, and what a validation record lets the cutover do.

use std::time::Instant;

use pgseal_pg::replication::{self};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{EngineError, sql};

/// Session settings applied on both sides, so row text does not depend on them.
use pgseal_pg::catalog::SESSION;

use super::change_log::*;
use super::report::*;
use super::reread::*;
use super::shape::*;

/// Whether a journaled validation result lets a cutover go ahead: no mismatched row and
/// no table whose comparison failed. Tables left `suspended` (some rows kept changing) do:
/// every row that could not be settled was changed after the pass began, so the target's
/// change log names it, and the final check compares it with the source fenced.
pub fn lets_cutover(outputs: &serde_json::Value) -> bool {
    outputs["verify"]["clean"] != false
        && outputs["mismatched_rows"] == 0
        && outputs["tables"].as_array().is_some_and(|t| {
            t.iter()
                .all(|t| t["state"] != "error" && t["state"] != "mismatched")
        })
}

/// The journal's record of a pass over some tables (`pass`), given the last validation
/// (`previous`): the cutover goes by the record, so it keeps what no pass has covered
/// since.
/// - Tables the pass did not compare keep their earlier result (a mismatch found before
///   still blocks the cutover); totals and `clean` are counted over all of them.
/// - Each database's horizon stays the earlier pass's: the final check must still
///   re-verify other tables' rows changed since then (the pass trimmed only its own).
/// - `ddl_seen` stays the earlier pass's (0 without one) unless the pass compared every
///   table the DDL captured since made or changed (`ddl_vouched`).
pub fn merge_partial(
    previous: Option<&serde_json::Value>,
    mut pass: serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    let key = |t: &Value| (t["database"].to_string(), t["table"].to_string());
    let compared: std::collections::BTreeSet<_> = pass["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(key)
        .collect();
    let mut tables: Vec<Value> = pass["tables"].as_array().cloned().unwrap_or_default();
    if let Some(previous) = previous {
        tables.extend(
            previous["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| !compared.contains(&key(t)))
                .cloned(),
        );
    }
    let sum = |field: &str| tables.iter().filter_map(|t| t[field].as_i64()).sum::<i64>();
    pass["rows"] = sum("rows").into();
    pass["mismatched_rows"] = sum("mismatched_rows").into();
    pass["clean"] = tables
        .iter()
        .all(|t| {
            t["state"] == "validated"
                || (t["state"] == "no_primary_key" && t["mismatched_rows"] == 0)
        })
        .into();
    let vouched = pass["ddl_vouched"].clone();
    for field in ["horizons", "ddl_seen"] {
        let earlier = previous.map(|p| p[field].clone()).unwrap_or(Value::Null);
        if let Some(map) = pass[field].as_object_mut() {
            for (db, value) in map.iter_mut() {
                let vouched = field == "ddl_seen" && vouched[db.as_str()] == true;
                *value = match (field, earlier[db.as_str()].as_i64()) {
                    _ if vouched => value.clone(),
                    (_, Some(v)) => v.into(),
                    ("ddl_seen", None) => 0.into(),
                    (_, None) => value.clone(),
                };
            }
        }
    }
    pass["tables"] = tables.into();
    pass["partial"] = true.into();
    pass
}

/// What the cutover's final check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalCheck {
    /// The databases checked.
    pub databases: Vec<String>,
    /// Rows re-verified (keys changed since the last full pass, and key-less tables).
    pub rows: i64,
    /// Rows that differ.
    pub mismatched_rows: i64,
    /// The first differing keys, as `table: key`, of tables whose keys are identifiers
    /// (the check's result is journaled; see [`ValidationReport::journaled`]).
    pub keys: Vec<String>,
    /// Differing rows whose keys are not listed (not identifiers, or no key).
    pub keys_withheld: i64,
    /// Milliseconds taken.
    pub millis: u64,
}

impl FinalCheck {
    /// Adds database `database`'s check to this one (its keys prefixed with the database).
    pub fn add(&mut self, database: &str, check: FinalCheck) {
        self.databases.push(database.to_string());
        self.rows += check.rows;
        self.mismatched_rows += check.mismatched_rows;
        self.millis += check.millis;
        self.keys_withheld += check.keys_withheld;
        for key in check.keys {
            if self.keys.len() < LISTED {
                self.keys.push(format!("{database}/{key}"));
            }
        }
    }
}

/// Re-verifies only what changed on the target since the last clean full pass began
/// (`horizon`): rows by key, and whole key-less tables touched. Both sides are still (the
/// source fenced and drained), so one read of each side is exact.
pub async fn final_check(
    source: &Client,
    target: &Client,
    horizon: i64,
) -> Result<FinalCheck, EngineError> {
    let started = Instant::now();
    let mut check = FinalCheck::default();
    if !change_log_present(target).await? {
        return Err(EngineError::Precondition(
            "the target's change log is gone, so the final check would compare nothing; validate again before cutting over".into(),
        ));
    }
    for (client, role) in [(source, "source"), (target, "target")] {
        client
            .batch_execute(SESSION)
            .await
            .map_err(sql(role, "setting the session"))?;
    }
    let groups = target
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname), \
                        (jsonb_agg(DISTINCT l.key) FILTER (WHERE l.key IS NOT NULL))::text, bool_or(l.key IS NULL) \
                 FROM {CHANGE_LOG} l JOIN pg_class c ON c.oid = l.tbl \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE l.id > $1 GROUP BY 1"
            ),
            &[&horizon],
        )
        .await
        .map_err(sql("target", "reading the change log"))?;
    for g in groups {
        let (table, keys, keyless): (String, Option<String>, bool) = (g.get(0), g.get(1), g.get(2));
        let shape = shape(source, &table).await?;
        let mut report = TableReport {
            table: table.clone(),
            ..Default::default()
        };
        if keyless || shape.key.is_empty() {
            let (a, b) = (
                multiset(source, &shape, "source").await?,
                multiset(target, &shape, "target").await?,
            );
            check.rows += a.values().sum::<i64>();
            merge_multisets(&mut report, &a, &b);
        } else if let Some(keys) = keys {
            check.rows +=
                serde_json::from_str::<Vec<serde_json::Value>>(&keys).map_or(0, |k| k.len() as i64);
            merge(
                &mut report,
                &changed_rows(source, &shape, &keys, "source").await?,
                &changed_rows(target, &shape, &keys, "target").await?,
            );
        }
        check.mismatched_rows += report.mismatched_rows;
        if !shape.keys_are_identifiers() {
            check.keys_withheld += report.mismatched_rows;
            continue;
        }
        for k in report
            .missing
            .iter()
            .chain(&report.extra)
            .chain(&report.different)
        {
            if check.keys.len() < LISTED {
                check.keys.push(format!("{table}: {k}"));
            }
        }
    }
    check.millis = started.elapsed().as_millis() as u64;
    Ok(check)
}

/// `key -> row hash` of the rows whose keys are in `keys` (a JSON array of key objects,
/// as the change log records them).
pub(super) async fn changed_rows(
    client: &Client,
    shape: &Shape,
    keys: &str,
    role: &'static str,
) -> Result<std::collections::BTreeMap<String, i64>, EngineError> {
    let cols = shape.key_from_json("j");
    let cond = format!(
        "{} IN (SELECT {} FROM jsonb_array_elements({}::jsonb) j)",
        shape.key_tuple(),
        cols.join(", "),
        replication::quote_literal(keys)
    );
    hashes(client, shape, &cond, role).await
}
