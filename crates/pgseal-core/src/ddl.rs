//! DDL during a migration (`migrate ddl`, and what `status` does about it): the source's
//! captured statements with what became of each on the target, the user's decision on
//! one that is not replayed by itself, and the subscription refreshed when a table was
//! created on the source. The capture and the replay are `pgseal_pg::ddl`'s.

use pgseal_pg::ddl::{self, Captured};
use pgseal_platform::Platform;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{EngineError, sql};
use crate::journal::{Journal, Phase};
use crate::sessions::{connect_source_db, connect_to, streams_of};

/// SQL true when the connected database has table `t`, named `schema.table` as the
/// publications list it (names as they are, not folded to lower case or parsed as SQL:
/// `public.NewTable` is the table `"NewTable"`).
const NAMED: &str = "EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname || '.' || c.relname = t)";

/// What became of a captured statement on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DdlState {
    /// Replayed on the target by the apply worker.
    Applied,
    /// The user applied it by hand (`--apply`).
    AppliedByHand,
    /// The user left it out (`--skip`).
    Skipped,
    /// Not replayed by itself: the apply worker stops on it until the user decides.
    Stopped,
    /// Not arrived on the target yet.
    Waiting,
}

/// One captured statement of one database, with its state.
#[derive(Debug, Clone, Serialize)]
pub struct DdlEntry {
    /// The database it ran in.
    pub database: String,
    /// What was captured.
    #[serde(flatten)]
    pub captured: Captured,
    /// What became of it.
    pub state: DdlState,
}

/// The captured statements of one database, with their states.
pub async fn entries(
    database: &str,
    source: &Client,
    target: &Client,
) -> Result<Vec<DdlEntry>, EngineError> {
    let captured = ddl::captured(source)
        .await
        .map_err(sql("source", "reading the captured DDL"))?;
    let (arrived, decided) = ddl::applied(target)
        .await
        .map_err(sql("target", "reading the replayed DDL"))?;
    Ok(captured
        .into_iter()
        .map(|c| {
            let state = match (
                decided.get(&c.id).map(String::as_str),
                arrived.contains(&c.id),
            ) {
                (Some("skip"), _) => DdlState::Skipped,
                (Some(_), _) => DdlState::AppliedByHand,
                (None, true) => DdlState::Applied,
                (None, false) if c.verdict.is_some() => DdlState::Stopped,
                (None, false) => DdlState::Waiting,
            };
            DdlEntry {
                database: database.to_string(),
                captured: c,
                state,
            }
        })
        .collect())
}

/// Sessions on `database`'s capturing side and its replaying side: the source and the
/// target while the migration replicates; once cut over, the other way round (DDL on the
/// new primary travels back with the reverse replication, for a rollback).
async fn sides<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    database: &str,
) -> Result<(Client, Client), EngineError> {
    let migration = journal.migration(name)?;
    let target = connect_to(platform, &migration.spec.target, database, "target").await?;
    Ok(if migration.phase == Phase::CutOver {
        // The source stays fenced after a cutover.
        let streams = streams_of(journal, name)?;
        let source =
            crate::fence::fenced_source(platform, &migration.spec, &streams, database).await?;
        (target, source)
    } else {
        let source = connect_source_db(platform, &migration.spec, database).await?;
        (source, target)
    })
}

/// Every database's captured statements of migration `name`, oldest first in each.
pub async fn list<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Vec<DdlEntry>, EngineError> {
    let mut all = Vec::new();
    for s in streams_of(journal, name)? {
        let (capturing, replaying) = sides(platform, journal, name, &s.database).await?;
        all.extend(entries(&s.database, &capturing, &replaying).await?);
    }
    Ok(all)
}

/// Records the user's decision on captured statement `id` of `database` (`skip`, or
/// `applied` once done by hand on the replaying side: the target, or the source once cut
/// over); the apply worker goes on at its next try.
/// Journaled as a fact.
pub async fn decide<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    database: &str,
    id: i64,
    decision: &str,
) -> Result<DdlEntry, EngineError> {
    let (source, target) = sides(platform, journal, name, database).await?;
    let found = entries(database, &source, &target)
        .await?
        .into_iter()
        .find(|e| e.captured.id == id)
        .ok_or_else(|| {
            EngineError::Precondition(format!(
                "no captured DDL statement {id} in {database}: `pgseal migrate ddl {name}` lists them"
            ))
        })?;
    if found.state == DdlState::Applied {
        return Err(EngineError::Precondition(format!(
            "captured DDL statement {id} in {database} was replayed already: there is nothing to decide"
        )));
    }
    // Leaving out a table the source has would leave the publication carrying rows the
    // other side has no table for (and block the refresh that subscribes new tables).
    if decision == "skip" {
        let tables = ddl::statement_tables(&source, id)
            .await
            .map_err(sql("source", "reading the statement's tables"))?;
        let missing: Vec<String> = target
            .query(
                &format!("SELECT t FROM unnest($1::text[]) t WHERE NOT {NAMED}"),
                &[&tables],
            )
            .await
            .map_err(sql("target", "looking for the statement's tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !missing.is_empty() {
            return Err(EngineError::Precondition(format!(
                "skipping captured DDL statement {id} in {database} would leave {} missing on the other side while the source has it and replication carries its rows: create it there by hand (`pg_dump --schema-only --table=...` of the source), then `pgseal migrate ddl {name} --database {database} --apply {id}`",
                missing.join(", ")
            )));
        }
    }
    ddl::decide(&target, id, decision)
        .await
        .map_err(sql("target", "recording the decision"))?;
    // Killed here, the decision stands (the apply goes on) and deciding again is harmless.
    crate::steps::failpoint_at("ddl:decided");
    journal.add_fact(
        name,
        "ddl_decision",
        &serde_json::json!({
            "database": database,
            "id": id,
            "decision": decision,
            "command_tag": found.captured.command_tag,
        }),
    )?;
    tracing::info!(
        migration = name,
        database,
        id,
        decision,
        "DDL decision recorded"
    );
    let mut decided = found;
    decided.state = if decision == "skip" {
        DdlState::Skipped
    } else {
        DdlState::AppliedByHand
    };
    Ok(decided)
}

/// Refreshes subscription `subscription` when the publication has tables it does not know
/// (made on the source since, their creation replayed on the target): their rows are then
/// copied and streamed. Returns the tables.
pub async fn refresh_new_tables(
    source: &Client,
    target: &Client,
    publication: &str,
    subscription: &str,
) -> Result<Vec<String>, EngineError> {
    let new = ddl::unsubscribed(source, target, publication, subscription)
        .await
        .map_err(sql("target", "comparing the subscription's tables"))?;
    if new.is_empty() {
        return Ok(new);
    }
    // A table is created on the target when its replayed statement arrives: until then,
    // refreshing would fail on it.
    let exists = target
        .query(
            &format!("SELECT count(*) FROM unnest($1::text[]) t WHERE {NAMED}"),
            &[&new],
        )
        .await
        .map_err(sql("target", "looking for the new tables"))?[0]
        .get::<_, i64>(0);
    if exists as usize != new.len() {
        return Ok(Vec::new());
    }
    ddl::refresh(target, subscription)
        .await
        .map_err(sql("target", "refreshing the subscription"))?;
    // Killed here, the next look finds the tables subscribed and copies nothing again.
    crate::steps::failpoint_at("ddl:refreshed");
    Ok(new)
}

/// DDL captured in one database since the last validation, which may have rewritten rows
/// no change log saw (`ADD COLUMN ... DEFAULT` fills the existing rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DdlSinceValidation {
    /// The database.
    pub database: String,
    /// The first and last captured statements since.
    pub first: i64,
    /// See `first`.
    pub last: i64,
    /// The tables they made or changed (`schema.table`; a partitioned table's
    /// partitions): comparing these again vouches for them.
    pub tables: Vec<String>,
}

impl DdlSinceValidation {
    /// The tables as `validate --tables` takes them (`database/schema.table`).
    pub fn qualified_tables(&self) -> Vec<String> {
        self.tables
            .iter()
            .map(|t| format!("{}/{t}", self.database))
            .collect()
    }
}

/// Per database of migration `name`, the DDL its source captured since the last
/// validation (`last`, the journal's record of it); databases without any are left out.
pub async fn since_validation<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    last: &serde_json::Value,
) -> Result<Vec<DdlSinceValidation>, EngineError> {
    let spec = journal.migration(name)?.spec;
    let mut found = Vec::new();
    for s in streams_of(journal, name)? {
        let source = connect_source_db(platform, &spec, &s.database).await?;
        let now = ddl::last_id(&source)
            .await
            .map_err(sql("source", "reading the captured DDL"))?;
        let seen = last["ddl_seen"][&s.database].as_i64().unwrap_or(0);
        if now > seen {
            let tables = ddl::touched_tables(&source, seen)
                .await
                .map_err(sql("source", "reading the tables DDL changed"))?;
            found.push(DdlSinceValidation {
                database: s.database.clone(),
                first: seen + 1,
                last: now,
                tables,
            });
        }
    }
    Ok(found)
}
