//! Validation: proves the target's tables equal the source's, row by row in effect, while
//! replication runs.
//!
//! Each published table with a primary key is cut into key ranges (chunks) whose size
//! adapts to about half a second of work. For each chunk both servers compute, in parallel
//! and server-side, `count(*)` and `bit_xor` of a 64-bit hash of every row
//! (`hash_record_extended(ROW(...), 0)`); columns whose hash follows equality rather than
//! identity (numeric `1.0` = `1.00`, float `-0` = `0`) or that have no hash (json, geometric
//! types, ...) are hashed as text, under identical session settings on both sides. A chunk
//! that differs is compared again once the target has applied past the source's position
//! at the first read (replication may simply have been behind); if it still differs, the
//! (key, row hash) lists of both sides are merged and the keys reported as missing, extra
//! or different. A chunk whose source side keeps changing is reported *unstable* after a
//! few tries, not as a mismatch. Tables without a primary key are compared as multisets of
//! row hashes.
//!
//! A clean result means: for every chunk, at one moment at which the target had applied
//! everything the source had committed when the source side was read, the count and the
//! XOR of the row hashes were equal on both sides. Two different rows colliding in a
//! 64-bit hash, or an even number of identical differences cancelling in the XOR within
//! one chunk, would go unnoticed.

use std::time::{Duration, Instant};

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, qualified, quote_ident};
use pgseal_platform::Platform;
use serde::Serialize;
use tokio_postgres::Client;

use crate::engine::{EngineError, connect_source_db, connect_to, streams_of};
use crate::journal::Journal;
use crate::steps::Step;

/// Session settings applied on both sides, so row text does not depend on them; and no
/// parallel workers, so each side's scan keeps to one core while both run at once.
const SESSION: &str = "SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; \
     SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'; \
     SET max_parallel_workers_per_gather = 0";

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
    "jsonb",
    "time",
    "char",
    "name",
];

/// How many keys of each kind the report lists per table.
const LISTED: usize = 50;

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
    /// Per database, the target's change log position when this pass began: the
    /// cutover's final check re-verifies only rows changed after it.
    pub horizons: std::collections::BTreeMap<String, i64>,
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

    /// The key as one text (`a|b`), for reports and merging.
    fn key_text(&self) -> String {
        let cols: Vec<String> = self.key.iter().map(|(c, _)| format!("{c}::text")).collect();
        format!("concat_ws('|', {})", cols.join(", "))
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
    /// A table is done.
    Done(&'a TableReport),
}

/// The two sides, how to wait until the target has applied up to a source position, and
/// where progress goes.
struct Sides<'a> {
    source: &'a Client,
    target: &'a Client,
    slot: String,
    progress: &'a (dyn Fn(Progress<'_>) + Sync),
}

impl Sides<'_> {
    /// The source's position now: everything it has committed is below it, asynchronous
    /// commits still in WAL buffers included (the insert position, not the write one).
    async fn source_lsn(&self) -> Result<Lsn, EngineError> {
        replication::current_wal_insert_lsn(self.source)
            .await
            .map_err(sql("source", "reading the WAL position"))
    }

    /// Waits (up to 30 s) until the target has applied and flushed everything up to `lsn`.
    /// Without a slot (not replicating) there is nothing to wait for.
    async fn applied(&self, lsn: Lsn) -> Result<(), EngineError> {
        let wait = replication::wait_confirmed(self.source, &self.slot, lsn);
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(result) => result
                .map(|_| ())
                .map_err(sql("source", "reading the slot")),
            Err(_) => Err(EngineError::Timeout {
                what: format!("the target to apply up to {lsn}"),
                seconds: 30,
            }),
        }
    }
}

/// What one consistent read of both sides returns.
enum Read {
    /// `(count, xor)` of the source and of the target.
    Sums((i64, i64), (i64, i64)),
    /// `key -> row hash` of the source and of the target.
    Rows(
        std::collections::BTreeMap<String, i64>,
        std::collections::BTreeMap<String, i64>,
    ),
    /// `row hash -> count` of the source and of the target (no key).
    Multisets(
        std::collections::BTreeMap<i64, i64>,
        std::collections::BTreeMap<i64, i64>,
    ),
}

/// What to read.
#[derive(Clone, Copy)]
enum Want {
    Sums,
    Rows,
    Multisets,
}

/// Reads both sides at the same point of the replication stream: the source table is held
/// in SHARE mode (writers to it wait, for milliseconds) while its side is read, the target
/// has applied everything the source had committed by then, and its side is read. `None`
/// when the lock could not be had within 2 s in any of [`TRIES`] tries (a long transaction
/// holds the table).
async fn consistent(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
    want: Want,
) -> Result<Option<Read>, EngineError> {
    for _ in 0..TRIES {
        if let Some(read) = consistent_once(sides, shape, cond, want).await? {
            return Ok(Some(read));
        }
    }
    Ok(None)
}

/// One try of [`consistent`].
async fn consistent_once(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
    want: Want,
) -> Result<Option<Read>, EngineError> {
    let src = sides.source;
    if let Err(e) = src
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '2s'; LOCK TABLE {} IN SHARE MODE",
            shape.table
        ))
        .await
    {
        let _ = src.batch_execute("ROLLBACK").await;
        if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            return Ok(None);
        }
        return Err(sql("source", "locking a table")(e));
    }
    let result = async {
        let source_side = match want {
            Want::Sums => Read::Sums(checksum(src, shape, cond, "source").await?, (0, 0)),
            Want::Rows => Read::Rows(
                hashes(src, shape, cond, "source").await?,
                Default::default(),
            ),
            Want::Multisets => {
                Read::Multisets(multiset(src, shape, "source").await?, Default::default())
            }
        };
        let lsn = sides.source_lsn().await?;
        sides.applied(lsn).await?;
        let t = sides.target;
        Ok::<Read, EngineError>(match source_side {
            Read::Sums(a, _) => Read::Sums(a, checksum(t, shape, cond, "target").await?),
            Read::Rows(a, _) => Read::Rows(a, hashes(t, shape, cond, "target").await?),
            Read::Multisets(a, _) => Read::Multisets(a, multiset(t, shape, "target").await?),
        })
    }
    .await;
    let _ = src.batch_execute("ROLLBACK").await;
    result.map(Some)
}

/// Compares one chunk; returns (source rows, mismatch?, unstable?).
async fn compare_chunk(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
) -> Result<(i64, bool, bool), EngineError> {
    let (src, dst) = tokio::join!(
        checksum(sides.source, shape, cond, "source"),
        checksum(sides.target, shape, cond, "target")
    );
    let src = src?;
    if src == dst? {
        return Ok((src.0, false, false));
    }
    // The target may only have been behind: compare again at one point of the stream.
    match consistent(sides, shape, cond, Want::Sums).await? {
        Some(Read::Sums(a, b)) => Ok((a.0, a != b, false)),
        _ => Ok((src.0, false, true)),
    }
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

/// `key -> row text` for the given keys.
async fn rows_by_key(
    client: &Client,
    query: &str,
    keys: &[String],
    role: &'static str,
) -> Result<std::collections::BTreeMap<String, String>, EngineError> {
    Ok(client
        .query(query, &[&keys])
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
    // Integer keys are found through the index; others by their text (a scan, only
    // when something differs).
    let filter = if shape.is_integer_key() {
        format!("{} = ANY($1::text[]::int8[])", shape.key[0].0)
    } else {
        format!("{} = ANY($1)", shape.key_text())
    };
    let query = format!(
        "SELECT {}, pgseal_row::text FROM {} pgseal_row WHERE {filter}",
        shape.key_text(),
        shape.table,
    );
    let (src, dst) = tokio::join!(
        rows_by_key(sides.source, &query, &keys, "source"),
        rows_by_key(sides.target, &query, &keys, "target")
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
            match consistent(sides, shape, &cond, Want::Sums).await? {
                Some(Read::Sums(a, b)) if a == b => {}
                Some(_) => match consistent(sides, shape, &cond, Want::Rows).await? {
                    Some(Read::Rows(a, b)) => merge(report, &a, &b),
                    _ => report.unstable_chunks += 1,
                },
                None => report.unstable_chunks += 1,
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
        ..Default::default()
    };
    if shape.key.is_empty() {
        report.state = TableState::NoPrimaryKey;
        let Some(Read::Multisets(src, dst)) =
            consistent(sides, &shape, "true", Want::Multisets).await?
        else {
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
        let (rows, mismatch, unstable) = compare_chunk(sides, &shape, &cond).await?;
        report.rows += rows;
        (sides.progress)(Progress::Rows(report.rows));
        report.chunks += 1;
        if unstable {
            report.unstable_chunks += 1;
        }
        if mismatch {
            match consistent(sides, &shape, &cond, Want::Rows).await? {
                Some(Read::Rows(src, dst)) => merge(&mut report, &src, &dst),
                _ => report.unstable_chunks += 1,
            }
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
/// records the result in the journal (step `validate`), and returns it.
pub async fn validate<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    tables: Option<&[String]>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ValidationReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    let streams = streams_of(journal, name)?;
    let run = journal.step_started(name, Step::Validate)?;
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut horizons = std::collections::BTreeMap::new();
    let mut targets = Vec::new();
    for stream in &streams {
        let db = &stream.database;
        let source = connect_source_db(platform, &spec, db).await?;
        let target = connect_to(platform, &spec.target, db, "target").await?;
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
            None => replication::published_tables(&source, &stream.name)
                .await
                .map_err(sql("source", "listing published tables"))?,
        };
        horizons.insert(db.clone(), install_change_log(&target, &listed).await?);
        let sides = Sides {
            source: &source,
            target: &target,
            slot: stream.name.clone(),
            progress,
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
            crate::samples::record(journal, name, &source, &streams).await;
            let shown = format!("{db}/{t}");
            progress(Progress::Table {
                table: &shown,
                estimated_rows,
            });
            let mut report = match table(&sides, t).await {
                Ok(r) => r,
                Err(e) => TableReport {
                    table: t.clone(),
                    state: TableState::Error,
                    error: Some(crate::engine::error_chain(&e)),
                    ..Default::default()
                },
            };
            report.database = db.clone();
            progress(Progress::Done(&report));
            reports.push(report);
        }
        targets.push(target);
    }
    let report = ValidationReport {
        rows: reports.iter().map(|r| r.rows).sum(),
        mismatched_rows: reports.iter().map(|r| r.mismatched_rows).sum(),
        seconds: started.elapsed().as_secs_f64(),
        clean: reports.iter().all(|r| {
            matches!(r.state, TableState::Validated)
                || (r.state == TableState::NoPrimaryKey && r.mismatched_rows == 0)
        }),
        tables: reports,
        horizons,
    };
    // Rows changed before this pass began were covered by it.
    for (stream, target) in streams.iter().zip(&targets) {
        target
            .execute(
                &format!("DELETE FROM {CHANGE_LOG} WHERE id <= $1"),
                &[&report.horizons[&stream.database]],
            )
            .await
            .map_err(sql("target", "trimming the change log"))?;
    }
    journal.step_done(
        run,
        &serde_json::to_value(&report).expect("a report serialises"),
    )?;
    Ok(report)
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
        // Row level even without a key: the apply worker fires row triggers only.
        target
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
                 SET search_path = pg_catalog AS $f$ BEGIN {body} END $f$; \
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

/// What the cutover's final check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalCheck {
    /// The databases checked.
    pub databases: Vec<String>,
    /// Rows re-verified (keys changed since the last full pass, and key-less tables).
    pub rows: i64,
    /// Rows that differ.
    pub mismatched_rows: i64,
    /// The first differing keys, as `table: key`.
    pub keys: Vec<String>,
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
    let present = target
        .query_opt(
            "SELECT 1 FROM pg_class WHERE oid = to_regclass($1)",
            &[&CHANGE_LOG],
        )
        .await
        .map_err(sql("target", "looking for the change log"))?
        .is_some();
    if !present {
        return Ok(check);
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
                "SELECT n.nspname || '.' || c.relname, \
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
    let cols: Vec<String> = shape
        .key
        .iter()
        .map(|(c, t)| {
            format!(
                "(j ->> {})::{t}",
                replication::quote_literal(c.trim_matches('"'))
            )
        })
        .collect();
    let cond = format!(
        "{} IN (SELECT {} FROM jsonb_array_elements({}::jsonb) j)",
        shape.key_tuple(),
        cols.join(", "),
        replication::quote_literal(keys)
    );
    hashes(client, shape, &cond, role).await
}
