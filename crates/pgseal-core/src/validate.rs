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

use std::time::{Duration, Instant};

use pgseal_pg::replication::{self, qualified, quote_ident};
use pgseal_pg::sql::unquote_ident;
use pgseal_platform::Platform;
use serde::Serialize;
use tokio_postgres::Client;

use crate::catch_up::{CatchUp, Follower};
use crate::error::EngineError;
use crate::journal::Journal;
use crate::sessions::{connect_source_db, connect_to};
use crate::steps::{Step, Strategy};

/// Session settings applied on both sides, so row text does not depend on them.
use pgseal_pg::catalog::SESSION;

/// Types hashed by their binary value (their hash is exact); every other column is hashed
/// as its text.
const EXACT_TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "text",
    "varchar",
    "bpchar",
    "bool",
    "bytea",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "oid",
    "time",
    "char",
    "name",
];

/// How many keys of each kind the report lists per table.
const LISTED: usize = 50;

/// Key column types whose values are identifiers pgseal may keep in its journal: numbers
/// and uuids a database hands out, not text a person typed (an e-mail address, a name).
const IDENTIFIER_TYPES: &[&str] = &["smallint", "integer", "bigint", "uuid", "oid"];

/// Seconds of work a chunk aims at.
const CHUNK_SECONDS: f64 = 0.5;

/// Tries before a chunk whose source keeps changing is called unstable.
const TRIES: usize = 3;

/// A table's validation state, in the vocabulary DBAs know from AWS DMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// Every chunk equal.
    #[default]
    Validated,
    /// Some rows differ.
    Mismatched,
    /// Some chunks kept changing; the rest equal.
    Suspended,
    /// No primary key: compared as multisets of row hashes.
    NoPrimaryKey,
    /// The comparison itself failed.
    Error,
    /// Still being copied by the subscription (a table made on the source during the
    /// migration): not comparable yet, never counted as mismatched.
    Copying,
}

/// A differing row as both sides have it (its text), for the first few differences.
#[derive(Debug, Clone, Serialize)]
pub struct RowDetail {
    /// `missing`, `extra` or `different`.
    pub kind: &'static str,
    /// The key.
    pub key: String,
    /// The source's row, if it has one.
    pub source: Option<String>,
    /// The target's row, if it has one.
    pub target: Option<String>,
}

/// One table's result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TableReport {
    /// Its database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// Its state.
    pub state: TableState,
    /// Rows compared (source side).
    pub rows: i64,
    /// Chunks compared.
    pub chunks: usize,
    /// Seconds taken.
    pub seconds: f64,
    /// Keys on the source missing on the target (first few).
    pub missing: Vec<String>,
    /// Keys on the target not on the source (first few).
    pub extra: Vec<String>,
    /// Keys whose rows differ (first few).
    pub different: Vec<String>,
    /// Differing rows in all (missing + extra + different, or by hash without a key).
    pub mismatched_rows: i64,
    /// Chunks that kept changing.
    pub unstable_chunks: usize,
    /// The error, when the state is `error`.
    pub error: Option<String>,
    /// The first differing rows in full, from both sides.
    pub details: Vec<RowDetail>,
    /// The longest time this table was held in SHARE mode on the source (the locked
    /// re-check of a difference unlocked reads could not settle), in milliseconds.
    pub source_lock_ms: f64,
    /// True in the journal's copy when the keys were left out of it (they are not all
    /// identifiers, see [`ValidationReport::journaled`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_withheld: bool,
    /// Whether this table's key columns are all identifiers (integers, uuids).
    #[serde(skip)]
    pub keys_are_identifiers: bool,
}

impl TableReport {
    /// This table's result as the journal keeps it: no row text, and keys only when they
    /// are identifiers.
    fn journaled(&self) -> TableReport {
        let mut kept = self.clone();
        kept.details.clear();
        if !self.keys_are_identifiers {
            kept.keys_withheld =
                !(kept.missing.is_empty() && kept.extra.is_empty() && kept.different.is_empty());
            kept.missing.clear();
            kept.extra.clear();
            kept.different.clear();
        }
        kept
    }
}

/// The whole validation.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Rows compared in all.
    pub rows: i64,
    /// Differing rows in all.
    pub mismatched_rows: i64,
    /// Seconds in all.
    pub seconds: f64,
    /// True when every table is validated (or, without a key, equal as a multiset).
    pub clean: bool,
    /// The longest time any table was held locked on the source, in milliseconds.
    pub source_lock_max_ms: f64,
    /// Per database, the target's change log position when this pass began: the
    /// cutover's final check re-verifies only rows changed after it.
    pub horizons: std::collections::BTreeMap<String, i64>,
    /// Per database, the last DDL statement captured on the source when this pass began:
    /// a cutover after later DDL (which rewrites rows no change log sees) wants a new pass.
    pub ddl_seen: std::collections::BTreeMap<String, i64>,
    /// Per database, the large objects of both sides compared (contents, owner,
    /// privileges, comment); absent in a pass over some tables only.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub large_objects: std::collections::BTreeMap<String, LargeObjectsCompared>,
    /// The catalog and the data no row comparison sees, compared (`pgseal migrate
    /// verify`); absent in a pass over some tables only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::VerifyReport>,
    /// A pass over some tables only: per database, whether it compared every table the
    /// DDL captured since the last validation made or changed (then it vouches for that
    /// DDL as a whole pass would).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ddl_vouched: std::collections::BTreeMap<String, bool>,
}

pub use crate::verify::LargeObjectsCompared;

impl ValidationReport {
    /// The report as the journal (a file on the host's disk, beside an encrypted target)
    /// keeps it: counts and states, no row text (`details` is only ever printed by the
    /// command that found it), and the differing keys only for tables whose key columns
    /// are all identifiers (integers, uuids). Other keys (text, e-mail addresses, ...) and
    /// the row hashes of key-less tables are left out; `keys_withheld` says so, and
    /// `pgseal migrate validate` shows them again on the terminal.
    pub fn journaled(&self) -> ValidationReport {
        ValidationReport {
            tables: self.tables.iter().map(TableReport::journaled).collect(),
            verify: self
                .verify
                .as_ref()
                .map(crate::verify::VerifyReport::journaled),
            ..self.clone()
        }
    }
}

fn sql(role: &'static str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.to_string();
    move |source| EngineError::Sql { role, what, source }
}

/// A table's key columns (with their types) and row-hash expression.
struct Shape {
    table: String,
    key: Vec<(String, String)>,
    row_hash: String,
}

async fn shape(client: &Client, table: &str) -> Result<Shape, EngineError> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified(table)],
        )
        .await
        .map_err(sql("source", "reading a table's columns"))?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| {
            let (name, typ): (String, String) = (r.get(0), r.get(1));
            if EXACT_TYPES.contains(&typ.as_str()) {
                quote_ident(&name)
            } else {
                format!("{}::text", quote_ident(&name))
            }
        })
        .collect();
    let key = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
            &[&qualified(table)],
        )
        .await
        .map_err(sql("source", "reading a primary key"))?
        .iter()
        .map(|r| (quote_ident(&r.get::<_, String>(0)), r.get::<_, String>(1)))
        .collect();
    Ok(Shape {
        table: qualified(table),
        key,
        // The whole-row value when every column hashes exactly (cheapest), else a ROW of
        // the columns with text where needed.
        row_hash: if parts.iter().all(|p| !p.ends_with("::text")) {
            "hash_record_extended(pgseal_row, 0)".to_string()
        } else {
            format!("hash_record_extended(ROW({}), 0)", parts.join(", "))
        },
    })
}

impl Shape {
    /// True for a single `smallint`, `integer` or `bigint` key.
    fn is_integer_key(&self) -> bool {
        self.key.len() == 1 && ["smallint", "integer", "bigint"].contains(&self.key[0].1.as_str())
    }

    fn key_tuple(&self) -> String {
        let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        format!("({})", cols.join(", "))
    }

    /// The key as one text, for reports and merging: the column's text for a one-column
    /// key, else the row's text (`(a,"b,c")`), which quotes what would be ambiguous.
    fn key_text(&self) -> String {
        match self.key.as_slice() {
            [(c, _)] => format!("{c}::text"),
            _ => format!("{}::text", self.key_row()),
        }
    }

    /// The key columns as a row constructor.
    fn key_row(&self) -> String {
        let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        format!("ROW({})", cols.join(", "))
    }

    /// A WHERE clause that picks the rows of `keys` (as [`Shape::key_text`] gives them)
    /// through the primary key's index.
    fn keys_filter(&self, keys: &[String]) -> String {
        if keys.is_empty() {
            return "false".into();
        }
        if self.is_integer_key() {
            let numbers: Vec<String> = keys
                .iter()
                .map(|k| k.parse::<i64>().map_or("NULL".into(), |n| n.to_string()))
                .collect();
            return format!("{} IN ({})", self.key[0].0, numbers.join(", "));
        }
        let tuples: Vec<String> = keys
            .iter()
            .map(|k| match self.key.len() {
                1 => self.literal(std::slice::from_ref(k)),
                _ => self.literal(&record_fields(k)),
            })
            .collect();
        format!("{} IN ({})", self.key_tuple(), tuples.join(", "))
    }

    /// Each key column's value, typed, from a key object as the change log records it
    /// (`json` names the jsonb value in the query).
    fn key_from_json(&self, json: &str) -> Vec<String> {
        self.key
            .iter()
            .map(|(c, t)| {
                format!(
                    "({json} ->> {})::{t}",
                    replication::quote_literal(&unquote_ident(c))
                )
            })
            .collect()
    }

    /// True when every key column is an identifier type (see [`IDENTIFIER_TYPES`]).
    fn keys_are_identifiers(&self) -> bool {
        !self.key.is_empty()
            && self
                .key
                .iter()
                .all(|(_, t)| IDENTIFIER_TYPES.contains(&t.as_str()))
    }

    /// A key value (one text per column) as a typed row literal.
    fn literal(&self, values: &[String]) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .zip(values)
            .map(|((_, t), v)| format!("{}::{t}", replication::quote_literal(v)))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The WHERE clause of the chunk `(lo, hi]`.
    fn range(&self, lo: Option<&[String]>, hi: Option<&[String]>) -> String {
        let mut conds = vec!["true".to_string()];
        if let Some(lo) = lo {
            conds.push(format!("{} > {}", self.key_tuple(), self.literal(lo)));
        }
        if let Some(hi) = hi {
            conds.push(format!("{} <= {}", self.key_tuple(), self.literal(hi)));
        }
        conds.join(" AND ")
    }
}

/// The fields of a record's text (`(a,"b,c","d""e")`), as PostgreSQL's `record_out`
/// writes them: comma-separated, double-quoted when needed, `""` and `\` escaping inside
/// quotes. (A key's fields are never NULL.)
fn record_fields(text: &str) -> Vec<String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text);
    let mut fields = vec![String::new()];
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// `(count, xor of row hashes)` of a chunk.
async fn checksum(
    client: &Client,
    shape: &Shape,
    cond: &str,
    role: &'static str,
) -> Result<(i64, i64), EngineError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(bit_xor({}), 0) FROM {} pgseal_row WHERE {cond}",
                shape.row_hash, shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "checksumming a chunk"))?;
    Ok((row.get(0), row.get(1)))
}

/// `key text -> row hash` of a chunk.
async fn hashes(
    client: &Client,
    shape: &Shape,
    cond: &str,
    role: &'static str,
) -> Result<std::collections::BTreeMap<String, i64>, EngineError> {
    let rows = client
        .query(
            &format!(
                "SELECT {}, {} FROM {} pgseal_row WHERE {cond}",
                shape.key_text(),
                shape.row_hash,
                shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "listing a chunk's rows"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `row hash -> count` of a table without a key.
async fn multiset(
    client: &Client,
    shape: &Shape,
    role: &'static str,
) -> Result<std::collections::BTreeMap<i64, i64>, EngineError> {
    let rows = client
        .query(
            &format!(
                "SELECT {} AS h, count(*) FROM {} pgseal_row GROUP BY 1",
                shape.row_hash, shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "hashing a table"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What validation reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A table starts; `estimated_rows` from the planner's statistics.
    Table {
        /// `schema.table`.
        table: &'a str,
        /// About how many rows it has.
        estimated_rows: i64,
    },
    /// Rows compared so far in the current table.
    Rows(i64),
    /// A table is still being copied; validation waits for it.
    Copying {
        /// `database/schema.table`.
        table: &'a str,
        /// Seconds waited so far.
        waited: u64,
    },
    /// A table is done.
    Done(&'a TableReport),
}

/// The two sides, how to wait until the target has applied up to a source position, and
/// where progress goes.
struct Sides<'a> {
    source: &'a Client,
    /// A second session on the source: it reads the slot and commits the catch-up's
    /// barriers while `source` holds a table in the locked re-check.
    source_aux: &'a Client,
    target: &'a Client,
    /// How the target follows the source, which is what validation waits on.
    catch_up: CatchUp<'a>,
    progress: &'a (dyn Fn(Progress<'_>) + Sync),
    /// The longest time a table was held locked on the source, in milliseconds.
    longest_lock_ms: std::sync::Mutex<f64>,
}

/// How long the locked re-check may wait for the target to catch up while it holds the
/// source's table.
const LOCKED_CATCH_UP: Duration = Duration::from_millis(50);

/// The locked re-check's `lock_timeout` and `statement_timeout` on the source: writers
/// queue behind the lock while it is asked for, and while the source side is read.
const LOCK_TIMEOUT: &str = "100ms";

impl Sides<'_> {
    /// Without a change log: the platform's replication (green is read-only).
    fn platform(&self) -> bool {
        matches!(self.catch_up.follower, Follower::Platform)
    }

    /// The target's change log position now (0 without a change log).
    async fn log_position(&self) -> Result<i64, EngineError> {
        if self.platform() {
            return Ok(0);
        }
        Ok(self
            .target
            .query_one(
                &format!("SELECT coalesce(max(id), 0) FROM {CHANGE_LOG}"),
                &[],
            )
            .await
            .map_err(sql("target", "reading the change log"))?
            .get(0))
    }

    /// What of `shape`'s table the target's change log shows changed after `since`; all
    /// of it without a change log.
    async fn moved(&self, shape: &Shape, since: i64) -> Result<Moved, EngineError> {
        if self.platform() {
            return Ok(Moved::Table);
        }
        if shape.key.is_empty() {
            let any = self
                .target
                .query_opt(
                    &format!(
                        "SELECT 1 FROM {CHANGE_LOG} WHERE id > $1 AND tbl = $2::text::regclass LIMIT 1"
                    ),
                    &[&since, &shape.table],
                )
                .await
                .map_err(sql("target", "reading the change log"))?;
            return Ok(if any.is_some() {
                Moved::Table
            } else {
                Moved::Keys(Default::default())
            });
        }
        let cols: Vec<String> = shape
            .key_from_json("l.key")
            .iter()
            .zip(&shape.key)
            .map(|(value, (c, _))| format!("{value} AS {c}"))
            .collect();
        let rows = self
            .target
            .query(
                &format!(
                    "SELECT DISTINCT {} FROM (SELECT {} FROM {CHANGE_LOG} l \
                     WHERE l.id > $1 AND l.tbl = $2::text::regclass) k",
                    shape.key_text(),
                    cols.join(", ")
                ),
                &[&since, &shape.table],
            )
            .await
            .map_err(sql("target", "reading the change log"))?;
        Ok(Moved::Keys(rows.iter().map(|r| r.get(0)).collect()))
    }
}

/// What moved on the target while a read was under way.
enum Moved {
    /// These keys (possibly none).
    Keys(std::collections::BTreeSet<String>),
    /// Any row of the table (it has no key, or the target keeps no change log).
    Table,
}

/// `row hash -> count` of both sides (a table without a key).
type MultisetPair = (
    std::collections::BTreeMap<i64, i64>,
    std::collections::BTreeMap<i64, i64>,
);

/// Reads both sides holding nothing: the target's change log position, the source side,
/// then (once the target has applied everything the source had committed by then) the
/// target side, then what the change log shows moved meanwhile.
///
/// For a key that did not move, the two reads are of the same point of the stream: every
/// change applied on the target before the first position was committed on the source
/// before its read began, everything the source read was committed before the position
/// the target then applied, and the key was not changed in between. A key that moved is
/// inconclusive.
async fn unlocked<T>(
    sides: &Sides<'_>,
    shape: &Shape,
    read: impl AsyncFn(&Client, &'static str) -> Result<T, EngineError>,
) -> Result<(T, T, Moved), EngineError> {
    let started = Instant::now();
    let since = sides.log_position().await?;
    let source_side = read(sides.source, "source").await?;
    let read_source = started.elapsed();
    let lsn = sides.catch_up.source_lsn(sides.source).await?;
    sides.catch_up.applied(lsn).await?;
    let caught_up = started.elapsed();
    let target_side = read(sides.target, "target").await?;
    let moved = sides.moved(shape, since).await?;
    tracing::debug!(
        table = %shape.table,
        read_source_ms = read_source.as_secs_f64() * 1e3,
        caught_up_ms = caught_up.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "re-read a differing range"
    );
    Ok((source_side, target_side, moved))
}

/// Reads both sides at one point of the stream, for a difference unlocked reads could not
/// settle: the source table is held in SHARE mode (writers queue; `lock_timeout` and
/// `statement_timeout` [`LOCK_TIMEOUT`]) while its side is read, and the target is given
/// [`LOCKED_CATCH_UP`] to apply everything the source had committed by then (see
/// [`Sides::received`]); then its side is read and the lock let go.
/// `None` when the lock, the read or the catch-up did not fit in that time.
async fn locked<T>(
    sides: &Sides<'_>,
    shape: &Shape,
    read: impl AsyncFn(&Client, &'static str) -> Result<T, EngineError>,
) -> Result<Option<(T, T)>, EngineError> {
    let src = sides.source;
    // Catch up first, holding nothing, so that the wait under the lock is short.
    sides
        .catch_up
        .applied(sides.catch_up.source_lsn(sides.source_aux).await?)
        .await?;
    if let Err(e) = src
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
             SET LOCAL statement_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN SHARE MODE",
            shape.table
        ))
        .await
    {
        let _ = src.batch_execute("ROLLBACK").await;
        // Either timeout may end the wait for the lock: both are 100 ms.
        if matches!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                | Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        ) {
            return Ok(None);
        }
        return Err(sql("source", "locking a table")(e));
    }
    let held = Instant::now();
    let result = async {
        let source_side = match read(src, "source").await {
            Ok(s) => s,
            Err(EngineError::Sql { source, .. })
                if source.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let lsn = sides.catch_up.source_lsn(src).await?;
        if !sides
            .catch_up
            .received(lsn, Instant::now() + LOCKED_CATCH_UP)
            .await?
        {
            return Ok(None);
        }
        Ok(Some((source_side, read(sides.target, "target").await?)))
    }
    .await;
    let _ = src.batch_execute("ROLLBACK").await;
    let ms = held.elapsed().as_secs_f64() * 1000.0;
    let mut longest = sides.longest_lock_ms.lock().expect("not poisoned");
    *longest = longest.max(ms);
    result
}

/// Compares the rows under `cond` key by key and adds what differs to `report`. Keys that
/// moved while being read and differ are read again, by key, up to [`TRIES`] times, then
/// once more under the lock; if they still cannot be settled the chunk counts as unstable
/// (the cutover's final check compares them again with the source fenced: they are in the
/// change log). Returns false in that case.
async fn settle_rows(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
    report: &mut TableReport,
) -> Result<bool, EngineError> {
    let mut cond = cond.to_string();
    for _ in 0..TRIES {
        let (src, dst, moved) = unlocked(sides, shape, async |c, role| {
            hashes(c, shape, &cond, role).await
        })
        .await?;
        let unsettled = match moved {
            Moved::Table => differing(&src, &dst),
            Moved::Keys(keys) => differing(&src, &dst)
                .into_iter()
                .filter(|k| keys.contains(k))
                .collect(),
        };
        let (mut a, mut b) = (src, dst);
        a.retain(|k, _| !unsettled.contains(k));
        b.retain(|k, _| !unsettled.contains(k));
        merge(report, &a, &b);
        if unsettled.is_empty() {
            return Ok(true);
        }
        cond = shape.keys_filter(&unsettled);
    }
    match locked(sides, shape, async |c, role| {
        hashes(c, shape, &cond, role).await
    })
    .await?
    {
        Some((a, b)) => {
            merge(report, &a, &b);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The keys whose rows differ between two `key -> row hash` lists (or are on one side).
fn differing(
    src: &std::collections::BTreeMap<String, i64>,
    dst: &std::collections::BTreeMap<String, i64>,
) -> Vec<String> {
    src.keys()
        .chain(dst.keys())
        .filter(|k| src.get(*k) != dst.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect()
}

/// Compares a whole table without a key as multisets of row hashes: unlocked up to
/// [`TRIES`] times while it keeps changing, then once under the lock. `None` when it
/// could not be settled.
async fn settle_multiset(
    sides: &Sides<'_>,
    shape: &Shape,
) -> Result<Option<MultisetPair>, EngineError> {
    for _ in 0..TRIES {
        let (src, dst, moved) =
            unlocked(sides, shape, async |c, role| multiset(c, shape, role).await).await?;
        if src == dst || !matches!(moved, Moved::Table) {
            return Ok(Some((src, dst)));
        }
    }
    locked(sides, shape, async |c, role| multiset(c, shape, role).await).await
}

/// Compares one chunk; returns (source rows, unstable?) and adds what differs to `report`.
async fn compare_chunk(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
    report: &mut TableReport,
) -> Result<(i64, bool), EngineError> {
    let (src, dst) = tokio::join!(
        checksum(sides.source, shape, cond, "source"),
        checksum(sides.target, shape, cond, "target")
    );
    let src = src?;
    if src == dst? {
        return Ok((src.0, false));
    }
    // The target may only have been behind: compare key by key.
    let settled = settle_rows(sides, shape, cond, report).await?;
    Ok((src.0, !settled))
}

/// Adds the differences between two `row hash -> count` multisets (a table without a key)
/// to a report.
fn merge_multisets(
    report: &mut TableReport,
    src: &std::collections::BTreeMap<i64, i64>,
    dst: &std::collections::BTreeMap<i64, i64>,
) {
    let all: std::collections::BTreeSet<&i64> = src.keys().chain(dst.keys()).collect();
    for h in all {
        let (a, b) = (
            src.get(h).copied().unwrap_or(0),
            dst.get(h).copied().unwrap_or(0),
        );
        if a > b && report.missing.len() < LISTED {
            report.missing.push(format!("row hash {h} x{}", a - b));
        }
        if b > a && report.extra.len() < LISTED {
            report.extra.push(format!("row hash {h} x{}", b - a));
        }
        report.mismatched_rows += (a - b).abs();
    }
}

/// Adds the differences between two `key -> row hash` lists to a report.
fn merge(
    report: &mut TableReport,
    src: &std::collections::BTreeMap<String, i64>,
    dst: &std::collections::BTreeMap<String, i64>,
) {
    for (k, h) in src {
        let list = match dst.get(k) {
            None => &mut report.missing,
            Some(d) if d != h => &mut report.different,
            Some(_) => continue,
        };
        report.mismatched_rows += 1;
        if list.len() < LISTED {
            list.push(k.clone());
        }
    }
    for k in dst.keys().filter(|k| !src.contains_key(*k)) {
        report.mismatched_rows += 1;
        if report.extra.len() < LISTED {
            report.extra.push(k.clone());
        }
    }
}

/// How many differing rows are fetched in full for the report.
const DETAILED: usize = 10;

/// `key -> row text` of the rows `query` selects.
async fn rows_by_key(
    client: &Client,
    query: &str,
    role: &'static str,
) -> Result<std::collections::BTreeMap<String, String>, EngineError> {
    Ok(client
        .query(query, &[])
        .await
        .map_err(sql(role, "fetching differing rows"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Fetches the first few differing rows in full from both sides.
async fn details(
    sides: &Sides<'_>,
    shape: &Shape,
    report: &mut TableReport,
) -> Result<(), EngineError> {
    let wanted: Vec<(&'static str, String)> = [
        ("missing", &report.missing),
        ("extra", &report.extra),
        ("different", &report.different),
    ]
    .into_iter()
    .flat_map(|(kind, keys)| keys.iter().map(move |k| (kind, k.clone())))
    .take(DETAILED)
    .collect();
    if wanted.is_empty() || shape.key.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
    let query = format!(
        "SELECT {}, pgseal_row::text FROM {} pgseal_row WHERE {}",
        shape.key_text(),
        shape.table,
        shape.keys_filter(&keys),
    );
    let (src, dst) = tokio::join!(
        rows_by_key(sides.source, &query, "source"),
        rows_by_key(sides.target, &query, "target")
    );
    let (src, dst) = (src?, dst?);
    report.details = wanted
        .into_iter()
        .map(|(kind, key)| RowDetail {
            kind,
            source: src.get(&key).cloned(),
            target: dst.get(&key).cloned(),
            key,
        })
        .collect();
    Ok(())
}

/// Keys per bucket in the integer-key path (`key >> BUCKET_BITS`).
const BUCKET_BITS: u32 = 10;

/// `bucket -> (count, xor)` of a key range, one query.
async fn buckets(
    client: &Client,
    shape: &Shape,
    cond: &str,
    role: &'static str,
) -> Result<std::collections::BTreeMap<i64, (i64, i64)>, EngineError> {
    let key = &shape.key[0].0;
    let rows = client
        .query(
            &format!(
                "SELECT ({key} >> {BUCKET_BITS})::int8, count(*), bit_xor({}) FROM {} pgseal_row WHERE {cond} GROUP BY 1",
                shape.row_hash, shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "checksumming a chunk"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The integer-key path: chunks are key ranges sized by time, each checksummed per bucket
/// of 1,024 keys, so a difference is found again by reading only its bucket (through the
/// index), never the whole chunk a second time. Key bounds span both sides, so rows only
/// the target has are compared too.
async fn integer_key(
    sides: &Sides<'_>,
    shape: &Shape,
    report: &mut TableReport,
) -> Result<(), EngineError> {
    let key = &shape.key[0].0;
    let bounds = format!(
        "SELECT min({key})::int8, max({key})::int8 FROM {}",
        shape.table
    );
    let (a, b) = tokio::join!(
        sides.source.query_one(&bounds, &[]),
        sides.target.query_one(&bounds, &[])
    );
    let (a, b) = (
        a.map_err(sql("source", "reading key bounds"))?,
        b.map_err(sql("target", "reading key bounds"))?,
    );
    let mins = [a.get::<_, Option<i64>>(0), b.get::<_, Option<i64>>(0)];
    let maxs = [a.get::<_, Option<i64>>(1), b.get::<_, Option<i64>>(1)];
    let (Some(min), Some(max)) = (mins.iter().flatten().min(), maxs.iter().flatten().max()) else {
        return Ok(()); // both empty
    };
    let (min, max) = (*min, *max);
    let mut lo = min.saturating_sub(1);
    let mut width: i64 = 20_000;
    while lo < max {
        let hi = lo.saturating_add(width).min(max);
        let cond = format!("{key} > {lo} AND {key} <= {hi}");
        let t = Instant::now();
        let (src, dst) = tokio::join!(
            buckets(sides.source, shape, &cond, "source"),
            buckets(sides.target, shape, &cond, "target")
        );
        let (src, dst) = (src?, dst?);
        report.rows += src.values().map(|v| v.0).sum::<i64>();
        (sides.progress)(Progress::Rows(report.rows));
        report.chunks += 1;
        let differing: Vec<i64> = src
            .keys()
            .chain(dst.keys())
            .copied()
            .collect::<std::collections::BTreeSet<i64>>()
            .into_iter()
            .filter(|b| src.get(b) != dst.get(b))
            .collect();
        for bucket in differing {
            let first = bucket << BUCKET_BITS;
            let last = first + (1 << BUCKET_BITS) - 1;
            let cond =
                format!("{key} > {lo} AND {key} <= {hi} AND {key} >= {first} AND {key} <= {last}");
            if !settle_rows(sides, shape, &cond, report).await? {
                report.unstable_chunks += 1;
            }
        }
        let took = t.elapsed().as_secs_f64().max(0.001);
        width = ((width as f64 * CHUNK_SECONDS / took) as i64).clamp(1 << BUCKET_BITS, 1 << 40);
        lo = hi;
    }
    Ok(())
}

/// Validates one table.
async fn table(sides: &Sides<'_>, name: &str) -> Result<TableReport, EngineError> {
    let started = Instant::now();
    let shape = shape(sides.source, name).await?;
    let mut report = TableReport {
        table: name.to_string(),
        state: TableState::Validated,
        error: None,
        keys_are_identifiers: shape.keys_are_identifiers(),
        ..Default::default()
    };
    if shape.key.is_empty() {
        report.state = TableState::NoPrimaryKey;
        let Some((src, dst)) = settle_multiset(sides, &shape).await? else {
            report.state = TableState::Suspended;
            report.unstable_chunks = 1;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        };
        report.rows = src.values().sum();
        report.chunks = 1;
        merge_multisets(&mut report, &src, &dst);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    if shape.is_integer_key() {
        integer_key(sides, &shape, &mut report).await?;
        details(sides, &shape, &mut report).await?;
        report.state = if report.mismatched_rows > 0 {
            TableState::Mismatched
        } else if report.unstable_chunks > 0 {
            TableState::Suspended
        } else {
            TableState::Validated
        };
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let key_cols: Vec<String> = shape
        .key
        .iter()
        .map(|(c, _)| format!("{c}::text"))
        .collect();
    let mut lo: Option<Vec<String>> = None;
    let mut chunk_rows: i64 = 20_000;
    loop {
        // The chunk's upper bound: the key `chunk_rows` rows on, on the source.
        let bound = sides
            .source
            .query_opt(
                &format!(
                    "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
                    key_cols.join(", "),
                    shape.table,
                    shape.range(lo.as_deref(), None),
                    shape
                        .key
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    chunk_rows - 1
                ),
                &[],
            )
            .await
            .map_err(sql("source", "finding a chunk's bound"))?;
        let hi: Option<Vec<String>> = bound.map(|r| {
            (0..shape.key.len())
                .map(|i| r.get::<_, String>(i))
                .collect()
        });
        let cond = shape.range(lo.as_deref(), hi.as_deref());
        let t = Instant::now();
        let (rows, unstable) = compare_chunk(sides, &shape, &cond, &mut report).await?;
        report.rows += rows;
        (sides.progress)(Progress::Rows(report.rows));
        report.chunks += 1;
        if unstable {
            report.unstable_chunks += 1;
        }
        // About half a second of work per chunk.
        let took = t.elapsed().as_secs_f64().max(0.001);
        chunk_rows = ((chunk_rows as f64 * CHUNK_SECONDS / took) as i64).clamp(1_000, 2_000_000);
        match hi {
            Some(hi) => lo = Some(hi),
            None => break,
        }
    }
    // Rows beyond the source's last key exist only on the target: the last chunk is
    // unbounded above, so they were compared there.
    details(sides, &shape, &mut report).await?;
    report.state = if report.mismatched_rows > 0 {
        TableState::Mismatched
    } else if report.unstable_chunks > 0 {
        TableState::Suspended
    } else {
        TableState::Validated
    };
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Validates migration `name`'s published tables in every database of its scope (or
/// only `tables`, as `schema.table` in every database or `database/schema.table`),
/// records the result in the journal (step `validate`), and returns it. A table still
/// being copied is waited for up to `copy_wait` ([`COPY_WAIT`] by default), then reported
/// as [`TableState::Copying`].
pub async fn validate<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    tables: Option<&[String]>,
    copy_wait: Duration,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ValidationReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    let blue_green = spec.strategy == Strategy::BlueGreen;
    // What each database is compared with: pgseal's streams, or (blue/green) every
    // database of the scope against green.
    let (target_name, scope) = crate::verify::compared_with(platform, journal, name, &spec).await?;
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
    let mut large_objects = std::collections::BTreeMap::new();
    let mut verified_all: Option<crate::verify::VerifyReport> = None;
    let mut normalised = std::collections::BTreeSet::new();
    let mut verify_spent = Duration::ZERO;
    for stream in &scope {
        let db = &stream.database;
        let source = connect_source_db(platform, &spec, db).await?;
        ddl_seen.insert(
            db.clone(),
            pgseal_pg::ddl::last_id(&source)
                .await
                .map_err(sql("source", "reading the captured DDL"))?,
        );
        let target = connect_to(platform, &target_name, db, "target").await?;
        let source_aux = connect_source_db(platform, &spec, db).await?;
        let follower = Follower::of(&source_aux, stream, blue_green).await?;
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
                Follower::Platform => true,
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
        }
        // A whole pass also verifies the catalog and the data no row comparison sees.
        if tables.is_none() {
            let _gate =
                crate::follow::PassGate::hold(journal.home(), name, Duration::from_secs(60));
            let verify_began = Instant::now();
            let (verified, used) = crate::verify::database(
                &source,
                &target,
                Some(&sides.catch_up),
                crate::verify::Sequences::Trailing,
                !blue_green,
            )
            .await?;
            normalised.extend(used);
            let verify = verified_all.get_or_insert_with(crate::verify::VerifyReport::default);
            if verify.databases.is_empty() {
                let databases: Vec<String> = scope.iter().map(|s| s.database.clone()).collect();
                (verify.globals_carried, verify.globals) = crate::verify::globals(
                    &source,
                    &target,
                    &databases,
                    !blue_green,
                    &Default::default(),
                )
                .await?;
            }
            verify_spent += verify_began.elapsed();
            large_objects.insert(db.clone(), verified.large_objects.clone());
            verify.databases.insert(db.clone(), verified);
        }
        targets.push(target);
    }
    if let Some(v) = verified_all.as_mut() {
        v.finish(Instant::now(), normalised);
        v.seconds = verify_spent.as_secs_f64();
    }
    let report = ValidationReport {
        rows: reports.iter().map(|r| r.rows).sum(),
        mismatched_rows: reports.iter().map(|r| r.mismatched_rows).sum(),
        seconds: started.elapsed().as_secs_f64(),
        clean: reports.iter().all(|r| {
            matches!(r.state, TableState::Validated)
                || (r.state == TableState::NoPrimaryKey && r.mismatched_rows == 0)
        }) && verified_all.as_ref().is_none_or(|v| v.clean),
        large_objects,
        source_lock_max_ms: reports.iter().map(|r| r.source_lock_ms).fold(0.0, f64::max),
        tables: reports,
        horizons,
        ddl_seen,
        ddl_vouched,
        verify: verified_all,
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

/// The target-side change log: the keys every replicated change touched, recorded by an
/// `ENABLE ALWAYS` trigger (it fires for the apply worker too) on each validated table.
const CHANGE_LOG: &str = "pgseal_validate.changes";

/// Installs (idempotently) the change log and its triggers on the target's tables and
/// returns the log's current position (the horizon of a pass that starts now).
async fn install_change_log(target: &Client, tables: &[String]) -> Result<i64, EngineError> {
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
async fn changed_rows(
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

#[cfg(test)]
mod tests {
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
