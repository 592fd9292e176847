//! What must hold before a cutover pauses anything, every problem at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgseal_pg::replication::{self};
use pgseal_platform::Platform;
use tokio_postgres::Client;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::fence::admin_session;
use crate::journal::{Journal, MigrationSpec, Phase};
use crate::sessions::{admin_database, connect_source_db, connect_to, streams_of};
use crate::status::status;
use crate::steps::Step;
use crate::stream::{self, Stream};

use super::sides::*;
use super::switch::*;

/// What the switch would leave stale on the target; each entry is `(name, why)`, `name`
/// as `--leave-stale` takes it.
pub(super) async fn stale<P: Platform, S: Switch>(
    platform: &P,
    spec: &MigrationSpec,
    streams: &[Stream],
    switch: &S,
    kept_on_source: &mut Vec<String>,
) -> Result<Vec<(String, String)>, EngineError> {
    let mut stale = Vec::new();
    let home = connect_source_db(platform, spec, &spec.database).await?;
    let all = stream::databases(&home)
        .await
        .map_err(sql("source", "listing databases"))?;
    for db in stream::outside(&all, streams) {
        if switch.keeps_other_databases() {
            match switch.cannot_keep(&db.name) {
                None => kept_on_source.push(db.name.clone()),
                Some(why) => stale.push((
                    db.name.clone(),
                    format!(
                        "database {} is not in this migration and {why}: the target has the snapshot's stale copy of it",
                        db.name
                    ),
                )),
            }
        } else {
            stale.push((
                db.name.clone(),
                format!(
                    "database {} is not in this migration, and {} moves the whole instance: the target has the snapshot's stale copy of it",
                    db.name,
                    switch.describe()
                ),
            ));
        }
    }
    for s in streams {
        let source = connect_source_db(platform, spec, &s.database).await?;
        let target = connect_to(platform, &spec.target, &s.database, "target").await?;
        let tables: Vec<(String, bool, bool)> = source
            .query(
                "SELECT n.nspname || '.' || c.relname, c.relpersistence = 'u', \
                        EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $1 \
                                AND p.schemaname = n.nspname AND p.tablename = c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
                 ORDER BY 1",
                &[&s.name],
            )
            .await
            .map_err(sql("source", "listing tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let subscribed: Vec<String> = target
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_subscription_rel r \
                 JOIN pg_subscription s ON s.oid = r.srsubid \
                 JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE s.subname = $1 AND r.srsubstate = 'r'",
                &[&s.name],
            )
            .await
            .map_err(sql("target", "listing subscribed tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (table, unlogged, published) in tables {
            let why = if unlogged {
                "is unlogged: it cannot be replicated and is empty on the target"
            } else if !published {
                "is outside the migration's publication: the target has the snapshot's stale copy"
            } else if !subscribed.contains(&table) {
                "was created after the migration started: the target's subscription does not apply it (ALTER SUBSCRIPTION ... REFRESH PUBLICATION on the target copies it)"
            } else {
                continue;
            };
            stale.push((
                format!("{}/{table}", s.database),
                format!("table {table} of {} {why}", s.database),
            ));
        }
    }
    Ok(stale)
}

/// The source's databases outside migration `name` (where an endpoint keeps sending
/// them once cut over).
pub async fn databases_outside<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Vec<String>, EngineError> {
    let spec = journal.migration(name)?.spec;
    let streams = streams_of(journal, name)?;
    let admin = admin_session(platform, &spec, &streams).await?;
    let all = stream::databases(&admin)
        .await
        .map_err(sql("source", "listing databases"))?;
    Ok(stream::outside(&all, &streams)
        .into_iter()
        .map(|d| d.name.clone())
        .collect())
}

/// How long an apply worker that failed before must have run since, without failing
/// again, for cutover to go ahead.
pub const HEALED_AFTER: Duration = Duration::from_secs(5);

/// How long cutover waits, beyond [`HEALED_AFTER`], for an apply worker that failed to
/// be started again (PostgreSQL's default `wal_retrieve_retry_interval` is 5 s).
pub(super) const RESTART_GRACE: Duration = Duration::from_secs(8);

/// True when a subscription's worker has no error, or has run [`HEALED_AFTER`] since its
/// last one with no new one since the count `before`.
pub(super) fn healed(sub: &replication::SubscriptionState, before: Option<&i64>) -> bool {
    sub.apply_errors == 0
        || (sub
            .worker_up_ms
            .is_some_and(|up| up >= HEALED_AFTER.as_millis() as i64)
            && before == Some(&sub.apply_errors))
}

/// The database of a stream whose apply worker failed before and is restarting or young
/// (neither healed nor failed again since `before`), if any.
pub(super) fn unsettled_worker(
    st: &crate::status::MigrationStatus,
    before: &HashMap<String, i64>,
) -> Option<String> {
    st.replication
        .iter()
        .flat_map(|r| &r.streams)
        .find(|s| {
            s.subscription.as_ref().is_some_and(|sub| {
                sub.enabled
                    && !healed(sub, before.get(&s.database))
                    && before.get(&s.database) == Some(&sub.apply_errors)
            })
        })
        .map(|s| s.database.clone())
}

/// Each stream's apply error count, by database.
pub(super) fn streams_errors(st: &crate::status::MigrationStatus) -> HashMap<String, i64> {
    st.replication
        .iter()
        .flat_map(|r| &r.streams)
        .filter_map(|s| Some((s.database.clone(), s.subscription.as_ref()?.apply_errors)))
        .collect()
}

/// Checks the preconditions; returns what fails, and fills the report's scope fields.
pub(super) async fn check<P: Platform, S: Switch>(
    platform: &P,
    journal: &Journal,
    name: &str,
    switch: &S,
    options: &CutoverOptions,
    report: &mut CutoverReport,
) -> Result<Vec<String>, EngineError> {
    let mut st = status(platform, journal, name, None).await?;
    // An apply worker that failed earlier (the count only grows; a source restart or a
    // lost connection counts) is trusted again once it has run `HEALED_AFTER` without
    // failing again: one that cannot apply a change fails moments after it starts. While
    // one is restarting (every `wal_retrieve_retry_interval`) or young, wait to see which.
    let errors_before: HashMap<String, i64> = streams_errors(&st);
    let deadline = Instant::now() + HEALED_AFTER + RESTART_GRACE;
    while let Some(waiting) = unsettled_worker(&st, &errors_before)
        && Instant::now() < deadline
    {
        tracing::info!(migration = %name, database = %waiting, "waiting to see a restarted apply worker keep running");
        tokio::time::sleep(Duration::from_millis(250)).await;
        st = status(platform, journal, name, None).await?;
    }
    let mut failed = Vec::new();
    if st.migration.phase != Phase::Replicating {
        failed.push(format!(
            "the migration is {}, not replicating",
            st.migration.phase.as_str()
        ));
    }
    match &st.replication {
        None => failed.push("replication state unknown (servers not reached)".into()),
        Some(rep) => {
            for s in &rep.streams {
                let db = &s.database;
                match s.lag_bytes {
                    Some(lag) if lag > options.max_lag => failed.push(format!(
                        "{db}: lag is {lag} bytes, above --max-lag {}",
                        options.max_lag
                    )),
                    None => failed.push(format!("{db}: lag unknown: the slot is missing")),
                    _ => {}
                }
                match &s.subscription {
                    None => failed.push(format!("{db}: the subscription is missing on the target")),
                    Some(sub) => {
                        if sub.apply_errors > 0 && !healed(sub, errors_before.get(db)) {
                            failed.push(format!(
                                "{db}: the apply worker reported {} error(s) and has not run {} s since without failing",
                                sub.apply_errors,
                                HEALED_AFTER.as_secs()
                            ));
                        }
                        if sub.worker_pid.is_none() {
                            failed.push(format!("{db}: the apply worker is not running"));
                        }
                    }
                }
                if let Some(schema) = &s.schema
                    && !schema.drift.is_empty()
                {
                    failed.push(format!(
                        "{db}: schema drift ({} difference(s)); `pgseal migrate status {name}` shows the DDL to run on the target",
                        schema.drift.len()
                    ));
                }
            }
        }
    }
    // The target must be encrypted under the snapshot's key, as the platform says now.
    // (A full load's target: under the key it was created with.)
    let expected_key = match journal.outputs(name, Step::Snapshot)? {
        Some(snapshot) => Some(
            snapshot["snapshot"]["restore_key"]
                .as_str()
                .or(snapshot["snapshot"]["key_id"].as_str())
                .map(str::to_string),
        ),
        None => journal
            .outputs(name, Step::CreateTarget)?
            .map(|created| created["instance"]["key_id"].as_str().map(str::to_string)),
    };
    if let Some(expected) = expected_key {
        match platform.describe_instance(&st.migration.spec.target).await {
            Ok(target) if !target.encrypted => failed.push(format!(
                "the target {} is NOT encrypted (the platform reports StorageEncrypted=false): cutting over would move the data onto unencrypted storage",
                target.name
            )),
            Ok(target) if target.key_id != expected => failed.push(format!(
                "the target {} is encrypted under {}, not the expected {}",
                target.name,
                target.key_id.as_deref().unwrap_or("no key"),
                expected.as_deref().unwrap_or("?")
            )),
            Ok(_) => {}
            Err(e) => failed.push(format!("the target cannot be described: {e}")),
        }
    }
    match journal.outputs(name, Step::Validate)? {
        Some(last) if !crate::validate::lets_cutover(&last) => failed.push(
            match serde_json::from_value::<crate::verify::VerifyReport>(last["verify"].clone()) {
                Ok(v) if !v.clean => format!(
                    "the last validation's verification found {} difference(s) between the catalogs: {}; `pgseal migrate verify {name}` shows both sides, validate again once fixed",
                    v.differences,
                    v.lines().join("; ")
                ),
                _ => format!(
                    "the last validation found {} mismatched row(s) or a table it could not compare; `pgseal migrate validate {name}` again once fixed",
                    last["mismatched_rows"],
                ),
            },
        ),
        // The final check compares only rows the target's change log names: without the
        // log (an earlier cutover that failed after dropping it), it would compare nothing.
        Some(last) if st.migration.phase == Phase::Replicating => {
            // DDL rewrites rows without the change log seeing them: the tables it changed
            // are compared again first (`pgseal migrate cutover` does it before calling
            // this; a dry run lists them).
            let since = crate::ddl::since_validation(platform, journal, name, &last).await?;
            if options.dry_run {
                report.revalidate = since
                    .iter()
                    .flat_map(crate::ddl::DdlSinceValidation::qualified_tables)
                    .collect();
            } else {
                // DDL that changed no table (a materialized view's refresh, a comment, a
                // grant, a drop) left no rows behind the change log's back: nothing to
                // compare again, so it does not hold the cutover up. An application that
                // refreshes a view every few seconds would otherwise refuse cutover after
                // cutover, its refresh landing between `validate` and the cutover's check.
                for d in since.iter().filter(|d| d.tables.is_empty()) {
                    tracing::info!(
                        database = %d.database,
                        first = d.first,
                        last = d.last,
                        "DDL since the last validation changed no table: nothing to compare again"
                    );
                }
                for d in since.iter().filter(|d| !d.tables.is_empty()) {
                    failed.push(format!(
                        "{}: DDL ran on the source since the last validation (captured statements {}..={}, `pgseal migrate ddl {name}`), changing {}; `pgseal migrate cutover {name}` again compares them (`pgseal migrate validate {name} --tables {}`) first",
                        d.database,
                        d.first,
                        d.last,
                        d.tables.join(", "),
                        d.qualified_tables().join(","),
                    ));
                }
            }
            for s in streams_of(journal, name)? {
                let target = connect_to(platform, &st.migration.spec.target, &s.database, "target").await?;
                if !crate::validate::change_log_present(&target).await? {
                    failed.push(format!(
                        "{}: the change log the final check reads is gone from the target (an earlier cutover attempt removed it); `pgseal migrate validate {name}` again",
                        s.database
                    ));
                }
            }
        }
        _ => {}
    }
    if st.migration.phase == Phase::Replicating {
        let streams = streams_of(journal, name)?;
        let spec = &st.migration.spec;
        let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
        let source = connect_source_db(platform, spec, admin_database(&[])).await?;
        let target = connect_to(platform, &spec.target, admin_database(&[]), "target").await?;
        let read = async |client: &Client, role| {
            pgseal_pg::globals::read(client, &dbs)
                .await
                .map_err(sql(role, "reading roles and database properties"))
        };
        let (want, have) = (
            read(&source, "source").await?,
            read(&target, "target").await?,
        );
        let gaps = crate::carry::password_gaps(&want, &have, &options.without_password);
        if !gaps.is_empty() {
            failed.push(format!(
                "login role(s) {} have no password on the target, and their passwords on the source cannot be read here to carry (pg_authid): set them on the target (ALTER ROLE ... PASSWORD), or accept each with --without-password ROLE",
                gaps.join(", ")
            ));
        }
        if options.dry_run {
            let differences = pgseal_pg::globals::diff(&want, &have, &carry_options(options));
            report.carried_before = Some(crate::carry::Carried {
                globals: differences
                    .iter()
                    .map(pgseal_pg::globals::Difference::summary)
                    .collect(),
                ..Default::default()
            });
        }
        match stale(platform, spec, &streams, switch, &mut report.kept_on_source).await {
            Ok(items) => {
                for (item, why) in items {
                    if options.leave_stale.contains(&item) {
                        report.left_stale.push(item);
                    } else {
                        failed.push(format!(
                            "{why}; migrate it too, or accept it with --leave-stale {item}"
                        ));
                    }
                }
            }
            Err(e) => failed.push(format!(
                "what the switch would leave stale cannot be checked: {}",
                crate::error::error_chain(&e)
            )),
        }
    }
    Ok(failed)
}
