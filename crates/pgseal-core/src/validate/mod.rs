//! Validation: proves the target's tables equal the source's, row by row in effect, while
//! replication runs.
//!
//! Each published table with a primary key is cut into key ranges (chunks) whose size
//! adapts to about half a second of work. For each chunk both servers compute, in parallel
//! and server-side, `count(*)` and `bit_xor` of a 64-bit hash of every row
//! (`hash_record_extended(ROW(...), 0)`); columns whose hash follows equality rather than
//! identity (numeric `1.0` = `1.00`, float `-0` = `0`) or that have no hash (json, geometric
//! types, ...) are hashed as text, under identical session settings on both sides. A chunk
//! that differs is compared again key by key at one point of the replication stream,
//! holding no lock: the target's change log (a trigger on each validated table) tells
//! which keys changed while the two sides were read, and only those are inconclusive;
//! they are read again by key, and as a last resort with the source table held in SHARE
//! mode for at most about 100 ms (see [`locked`]). A chunk whose rows cannot be settled
//! is reported *unstable*, not as a mismatch. Tables without a primary key are compared as
//! multisets of row hashes.
//!
//! A clean result means: for every chunk, at one moment at which the target had applied
//! everything the source had committed when the source side was read, the count and the
//! XOR of the row hashes were equal on both sides. Two different rows colliding in a
//! 64-bit hash, or an even number of identical differences cancelling in the XOR within
//! one chunk, would go unnoticed.

mod change_log;
mod chunks;
mod final_check;
mod report;
mod reread;
mod shape;

use change_log::*;
pub use change_log::{CHANGE_LOG_SCHEMA, change_log_present, drop_change_log};
use chunks::*;
pub use final_check::{FinalCheck, final_check, lets_cutover, merge_partial};
pub use report::{
    LargeObjectsCompared, Progress, RowDetail, TableReport, TableState, ValidationReport,
};
use reread::*;

use std::time::{Duration, Instant};

use pgseal_pg::replication::{self, qualified};
use pgseal_platform::Platform;
use tokio_postgres::Client;

use crate::catch_up::{CatchUp, Follower};
use crate::error::{EngineError, sql};
use crate::journal::Journal;
use crate::sessions::{connect_source_db, connect_to};
use crate::steps::Step;

/// Session settings applied on both sides, so row text does not depend on them.
use pgseal_pg::catalog::SESSION;

/// Validates migration `name`'s published tables in every database of its scope (or
/// only `tables`, as `schema.table` in every database or `database/schema.table`),
/// records the result in the journal (step `validate`), and returns it. A table still
/// being copied is waited for up to `copy_wait` ([`COPY_WAIT`] by default), then reported
/// as [`TableState::Copying`].
pub async fn validate<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    compared: &crate::verify::Compared,
    tables: Option<&[String]>,
    copy_wait: Duration,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ValidationReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    // What each database is compared with: pgseal's streams, or (blue/green) every
    // database of the scope against green.
    let blue_green = !compared.by_pgseal();
    let (target_name, scope) = (&compared.target, &compared.scope);
    let streams = if blue_green {
        Vec::new()
    } else {
        scope.clone()
    };
    // A pass over some tables adds to the last validation rather than replace it.
    let previous = match tables {
        Some(_) => journal.outputs(name, Step::Validate)?,
        None => None,
    };
    let run = journal.step_started(name, Step::Validate)?;
    let started = Instant::now();
    let mut listed_by_db = std::collections::BTreeMap::new();
    let mut ddl_vouched = std::collections::BTreeMap::new();
    let mut reports = Vec::new();
    let mut horizons = std::collections::BTreeMap::new();
    let mut ddl_seen = std::collections::BTreeMap::new();
    let mut targets = Vec::new();
    let mut verifying = crate::verify::Verifying::default();
    for stream in scope {
        let db = &stream.database;
        let source = connect_source_db(platform, &spec, db).await?;
        ddl_seen.insert(
            db.clone(),
            pgseal_pg::ddl::last_id(&source)
                .await
                .map_err(sql("source", "reading the captured DDL"))?,
        );
        let target = connect_to(platform, target_name, db, "target").await?;
        let source_aux = connect_source_db(platform, &spec, db).await?;
        let follower = Follower::of(&source_aux, stream, compared.replicator.method()).await?;
        let catch_up = CatchUp::new(name, db, &source_aux, &target, follower).await?;
        // An apply stopped on a statement is named at once, not after a wait per table.
        if let Some(why) = catch_up.stopped(None).await? {
            return Err(EngineError::Precondition(why));
        }
        for (client, role) in [(&source, "source"), (&target, "target")] {
            client
                .batch_execute(SESSION)
                .await
                .map_err(sql(role, "setting the session"))?;
        }
        let listed: Vec<String> = match tables {
            Some(t) => t
                .iter()
                .filter_map(|t| match t.split_once('/') {
                    Some((d, table)) => (d == db).then(|| table.to_string()),
                    None => Some(t.clone()),
                })
                .collect(),
            None => {
                comparable_tables(&source, (!blue_green).then_some(stream.name.as_str())).await?
            }
        };
        // pgseal's own tables (the captured DDL, the user's decisions on it) are not the
        // user's: they are not validated.
        let listed: Vec<String> = listed
            .into_iter()
            .filter(|t| replication::split_qualified(t).0 != "pgseal_ddl")
            .collect();
        if tables.is_some() {
            let since = previous
                .as_ref()
                .and_then(|p| p["ddl_seen"][db].as_i64())
                .unwrap_or(0);
            let touched = pgseal_pg::ddl::touched_tables(&source, since)
                .await
                .map_err(sql("source", "reading the tables DDL changed"))?;
            ddl_vouched.insert(db.clone(), touched.iter().all(|t| listed.contains(t)));
        }
        listed_by_db.insert(
            db.clone(),
            listed.iter().map(|t| qualified(t)).collect::<Vec<String>>(),
        );
        if !blue_green {
            horizons.insert(db.clone(), install_change_log(&target, &listed).await?);
        }
        let sides = Sides {
            source: &source,
            source_aux: &source_aux,
            target: &target,
            catch_up,
            progress,
            longest_lock_ms: std::sync::Mutex::new(0.0),
        };
        for t in &listed {
            let estimated_rows: i64 = source
                .query_one(
                    "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
                    &[&qualified(t)],
                )
                .await
                .map_err(sql("source", "reading a table's size"))?
                .get(0);
            journal.record_samples(name, &source, &streams).await;
            let shown = format!("{db}/{t}");
            progress(Progress::Table {
                table: &shown,
                estimated_rows,
            });
            let copied = match &sides.catch_up.follower {
                Follower::Stream { slot } => {
                    copied(&target, slot, copy_wait, t, &shown, progress).await?
                }
                Follower::Platform | Follower::Standby => true,
            };
            let outcome = if copied {
                table(&sides, t).await
            } else {
                Ok(TableReport {
                    table: t.clone(),
                    state: TableState::Copying,
                    ..Default::default()
                })
            };
            let mut report = match outcome {
                Ok(r) => r,
                // Stopped or failing apply: named at once, for the whole pass.
                Err(EngineError::Precondition(why)) => return Err(EngineError::Precondition(why)),
                Err(e) => TableReport {
                    table: t.clone(),
                    state: TableState::Error,
                    error: Some(crate::error::error_chain(&e)),
                    ..Default::default()
                },
            };
            report.database = db.clone();
            report.source_lock_ms =
                std::mem::take(&mut *sides.longest_lock_ms.lock().expect("not poisoned"));
            progress(Progress::Done(&report));
            reports.push(report);
            crate::steps::wait_point("validate:table").await;
        }
        // A whole pass also verifies the catalog and the data no row comparison sees.
        if tables.is_none() {
            let _gate =
                crate::follow::PassGate::hold(journal.home(), name, Duration::from_secs(60));
            verifying
                .database(
                    db,
                    &source,
                    &target,
                    Some(&sides.catch_up),
                    crate::verify::Sequences::Trailing,
                    !blue_green,
                )
                .await?;
            if *db == scope[0].database {
                let databases: Vec<String> = scope.iter().map(|s| s.database.clone()).collect();
                verifying
                    .globals(
                        &source,
                        &target,
                        &databases,
                        !blue_green,
                        &Default::default(),
                    )
                    .await?;
            }
        }
        targets.push(target);
    }
    // A pass over some tables verifies nothing besides them.
    let verified = tables.is_none().then(|| verifying.finish());
    let report = ValidationReport {
        rows: reports.iter().map(|r| r.rows).sum(),
        mismatched_rows: reports.iter().map(|r| r.mismatched_rows).sum(),
        seconds: started.elapsed().as_secs_f64(),
        clean: reports.iter().all(|r| {
            matches!(r.state, TableState::Validated)
                || (r.state == TableState::NoPrimaryKey && r.mismatched_rows == 0)
        }) && verified.as_ref().is_none_or(|v| v.clean),
        // Each database's large objects, as the verification compared them.
        large_objects: verified
            .iter()
            .flat_map(|v| &v.databases)
            .map(|(db, d)| (db.clone(), d.large_objects.clone()))
            .collect(),
        source_lock_max_ms: reports.iter().map(|r| r.source_lock_ms).fold(0.0, f64::max),
        tables: reports,
        horizons,
        ddl_seen,
        ddl_vouched,
        verify: verified,
    };
    // Rows of the tables compared that changed before this pass began were covered by it;
    // the other tables' changes stay for the cutover's final check.
    for (stream, target) in streams.iter().zip(&targets) {
        let horizon = report.horizons[&stream.database];
        // NULL: a whole pass, every table's entries.
        let compared: Option<&Vec<String>> = tables.map(|_| &listed_by_db[&stream.database]);
        target
            .execute(
                &format!(
                    "DELETE FROM {CHANGE_LOG} WHERE id <= $1 AND ($2::text[] IS NULL \
                     OR tbl = ANY (SELECT to_regclass(t) FROM unnest($2::text[]) t))"
                ),
                &[&horizon, &compared],
            )
            .await
            .map_err(sql("target", "trimming the change log"))?;
    }
    let pass = serde_json::to_value(report.journaled()).expect("a report serialises");
    let recorded = match tables {
        Some(_) => merge_partial(previous.as_ref(), pass),
        None => pass,
    };
    journal.step_done(run, &recorded)?;
    Ok(report)
}

/// How long validation waits by default for a table the subscription is still copying.
pub const COPY_WAIT: Duration = Duration::from_secs(60);

/// Whether table `table` (`schema.table`) has been copied by subscription `slot` of the
/// connected target (its state `ready` or `synchronized`); waits for it up to
/// `wait`, telling `progress`. False when it is still copying then (or not yet
/// subscribed: the follower refreshes the subscription).
async fn copied(
    target: &Client,
    slot: &str,
    wait: Duration,
    table: &str,
    shown: &str,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<bool, EngineError> {
    let started = Instant::now();
    loop {
        let state: Option<String> = target
            .query_opt(
                "SELECT r.srsubstate::text FROM pg_subscription_rel r \
                 JOIN pg_subscription s ON s.oid = r.srsubid \
                 WHERE s.subslotname = $1 AND r.srrelid = to_regclass($2)",
                &[&slot, &qualified(table)],
            )
            .await
            .map_err(sql("target", "reading the table's copy state"))?
            .map(|r| r.get(0));
        if matches!(state.as_deref(), Some("r" | "s")) {
            return Ok(true);
        }
        let waited = started.elapsed();
        if waited >= wait {
            return Ok(false);
        }
        progress(Progress::Copying {
            table: shown,
            waited: waited.as_secs(),
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The tables a whole pass compares, as SQL writes their names (`"Shop. ünï"."Orders"`:
/// a schema or table name may hold a dot): those publication `publication` publishes, or
/// (blue/green, without one) [`user_tables`].
async fn comparable_tables(
    source: &Client,
    publication: Option<&str>,
) -> Result<Vec<String>, EngineError> {
    let rows = match publication {
        Some(publication) => {
            source
                .query(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables \
                     WHERE pubname = $1 ORDER BY 1",
                    &[&publication],
                )
                .await
        }
        None => {
            source
                .query(
                    &format!(
                        "SELECT format('%I.%I', n.nspname, c.relname) {USER_TABLES} ORDER BY 1"
                    ),
                    &[],
                )
                .await
        }
    };
    Ok(rows
        .map_err(sql("source", "listing published tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `FROM ... WHERE` of the tables the platform's replication carries.
const USER_TABLES: &str = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgseal_validate') \
       AND n.nspname NOT LIKE 'pg\\_%'";

/// Every table of the connected database the platform's replication carries: ordinary
/// and partitioned tables outside the system schemas and pgseal's own, as `schema.table`.
pub(crate) async fn user_tables(source: &Client) -> Result<Vec<String>, EngineError> {
    let rows = source
        .query(
            &format!("SELECT n.nspname || '.' || c.relname {USER_TABLES} ORDER BY 1"),
            &[],
        )
        .await
        .map_err(sql("source", "listing tables"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::shape::record_fields;
    use super::*;

    #[test]
    fn record_text_splits_into_its_fields() {
        assert_eq!(record_fields("(x,1)"), vec!["x", "1"]);
        assert_eq!(record_fields("(\"a,b\",c)"), vec!["a,b", "c"]);
        assert_eq!(
            record_fields("(\"say \"\"hi\"\"\",\"a\\\\b\")"),
            vec!["say \"hi\"", "a\\b"]
        );
        assert_eq!(record_fields("(\"\",)"), vec!["", ""]);
    }

    #[test]
    fn the_journal_keeps_no_row_text_and_only_identifier_keys() {
        let table = |identifiers: bool| TableReport {
            table: "public.t".into(),
            state: TableState::Mismatched,
            missing: vec!["alice@example.com".into()],
            mismatched_rows: 1,
            details: vec![RowDetail {
                kind: "missing",
                key: "alice@example.com".into(),
                source: Some("(alice@example.com,secret)".into()),
                target: None,
            }],
            keys_are_identifiers: identifiers,
            ..Default::default()
        };
        let report = ValidationReport {
            tables: vec![table(false), table(true)],
            rows: 2,
            mismatched_rows: 2,
            seconds: 0.1,
            clean: false,
            source_lock_max_ms: 0.0,
            horizons: Default::default(),
            ddl_seen: Default::default(),
            ddl_vouched: Default::default(),
            large_objects: Default::default(),
            // A default may hold a value: the journal names the column, not its default.
            verify: Some(crate::verify::VerifyReport {
                databases: [(
                    "app".to_string(),
                    crate::verify::DatabaseVerified {
                        differences: vec![pgseal_pg::catalog::Difference {
                            category: pgseal_pg::catalog::Category::Column,
                            object: "column public.t.c".into(),
                            source: Some("text default 'secret'".into()),
                            target: None,
                        }],
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
        };
        let kept = serde_json::to_value(report.journaled()).unwrap();
        assert_eq!(
            kept["verify"]["databases"]["app"]["differences"][0]["object"],
            "column public.t.c"
        );
        let text = kept.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(kept["tables"][0]["missing"], serde_json::json!([]));
        assert_eq!(kept["tables"][0]["keys_withheld"], true);
        assert_eq!(
            kept["tables"][1]["missing"],
            serde_json::json!(["alice@example.com"])
        );
        assert_eq!(kept["tables"][1]["details"], serde_json::json!([]));
        assert_eq!(kept["mismatched_rows"], 2);
        // What the command prints keeps everything.
        assert!(serde_json::to_string(&report).unwrap().contains("secret"));
    }

    #[test]
    fn a_pass_over_some_tables_keeps_what_it_did_not_cover() {
        let table = |db: &str, t: &str, state: &str, mismatched: i64| serde_json::json!({"database": db, "table": t, "state": state, "rows": 10, "mismatched_rows": mismatched});
        let previous = serde_json::json!({
            "tables": [table("app", "public.a", "validated", 0), table("app", "public.b", "mismatched", 2)],
            "rows": 20, "mismatched_rows": 2, "clean": false,
            "horizons": {"app": 5}, "ddl_seen": {"app": 3},
        });
        // Only a again: b's mismatch still blocks, and the horizon and DDL mark stay.
        let pass = serde_json::json!({
            "tables": [table("app", "public.a", "validated", 0)],
            "rows": 10, "mismatched_rows": 0, "clean": true,
            "horizons": {"app": 9}, "ddl_seen": {"app": 4},
        });
        let merged = merge_partial(Some(&previous), pass);
        assert_eq!(merged["tables"].as_array().unwrap().len(), 2);
        assert_eq!(merged["mismatched_rows"], 2);
        assert_eq!(merged["clean"], false);
        assert!(!lets_cutover(&merged));
        assert_eq!(merged["horizons"]["app"], 5);
        assert_eq!(merged["ddl_seen"]["app"], 3);
        // b compared again and equal now: the record is clean.
        let pass = serde_json::json!({
            "tables": [table("app", "public.b", "validated", 0)],
            "rows": 10, "mismatched_rows": 0, "clean": true,
            "horizons": {"app": 12}, "ddl_seen": {"app": 4},
        });
        let merged = merge_partial(Some(&merged), pass);
        assert_eq!(
            (merged["clean"].as_bool(), merged["rows"].as_i64()),
            (Some(true), Some(20))
        );
        assert!(lets_cutover(&merged));
        // A pass over every table the DDL changed vouches for it.
        let pass = serde_json::json!({
            "tables": [], "horizons": {"app": 14}, "ddl_seen": {"app": 6},
            "ddl_vouched": {"app": true},
        });
        assert_eq!(merge_partial(Some(&merged), pass)["ddl_seen"]["app"], 6);
        // A first pass over some tables vouches for no DDL.
        let pass =
            serde_json::json!({"tables": [], "horizons": {"app": 1}, "ddl_seen": {"app": 4}});
        let merged = merge_partial(None, pass);
        assert_eq!(
            (
                merged["horizons"]["app"].as_i64(),
                merged["ddl_seen"]["app"].as_i64()
            ),
            (Some(1), Some(0))
        );
    }

    #[test]
    fn a_suspended_table_lets_the_cutover_go_ahead_a_mismatch_does_not() {
        let outputs = |state: &str, mismatched: i64| serde_json::json!({"mismatched_rows": mismatched, "tables": [{"state": "validated"}, {"state": state}]});
        assert!(lets_cutover(&outputs("suspended", 0)));
        assert!(!lets_cutover(&outputs("mismatched", 1)));
        assert!(!lets_cutover(&outputs("error", 0)));
    }
}
