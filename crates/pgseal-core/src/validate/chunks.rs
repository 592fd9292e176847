//! A table cut into key ranges (chunks) sized by time, each compared, with integer keys per bucket.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{EngineError, sql};

use super::report::*;
use super::reread::*;
use super::shape::*;

/// Seconds of work a chunk aims at.
pub(super) const CHUNK_SECONDS: f64 = 0.5;

/// Keys per bucket in the integer-key path (`key >> BUCKET_BITS`).
pub(super) const BUCKET_BITS: u32 = 10;

/// How long comparing one chunk may take before the pass gives up on it: far above the
/// half second a chunk aims at, and above the longest wait inside one (the target
/// applying what a re-read needs, 30 s, and the locked re-check's lock timeout).
pub(super) const CHUNK_WAIT: Duration = Duration::from_secs(120);

/// `work` (one chunk of `table`) within [`CHUNK_WAIT`]; past it, the whole pass stops
/// (its sessions wait on an answer that has not come): nothing is called clean.
async fn within_chunk_wait<T>(
    table: &str,
    work: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(CHUNK_WAIT, work)
        .await
        .map_err(|_| {
            EngineError::Precondition(format!(
                "comparing a chunk of {table} took over {} s: a side stopped answering (the network to it stalled?) or a lock was held that long; nothing was called clean. Run validate again once both sides answer",
                CHUNK_WAIT.as_secs()
            ))
        })?
}

/// `bucket -> (count, xor)` of a key range, one query.
pub(super) async fn buckets(
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
pub(super) async fn integer_key(
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
        let (src, dst) = within_chunk_wait(&shape.table, async {
            let (src, dst) = tokio::join!(
                buckets(sides.source, shape, &cond, "source"),
                buckets(sides.target, shape, &cond, "target")
            );
            Ok((src?, dst?))
        })
        .await?;
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
            if !within_chunk_wait(&shape.table, settle_rows(sides, shape, &cond, report)).await? {
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
pub(super) async fn table(sides: &Sides<'_>, name: &str) -> Result<TableReport, EngineError> {
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
        return Ok(settled(report, started));
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
        let bound = within_chunk_wait(&shape.table, async {
            sides
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
                .map_err(sql("source", "finding a chunk's bound"))
        })
        .await?;
        let hi: Option<Vec<String>> = bound.map(|r| {
            (0..shape.key.len())
                .map(|i| r.get::<_, String>(i))
                .collect()
        });
        let cond = shape.range(lo.as_deref(), hi.as_deref());
        let t = Instant::now();
        let (rows, unstable) = within_chunk_wait(
            &shape.table,
            compare_chunk(sides, &shape, &cond, &mut report),
        )
        .await?;
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
    Ok(settled(report, started))
}

/// A table's report once every chunk is compared: mismatched when rows differ, suspended
/// when a chunk never held still, validated otherwise; with the time since `started`.
fn settled(mut report: TableReport, started: std::time::Instant) -> TableReport {
    report.state = if report.mismatched_rows > 0 {
        TableState::Mismatched
    } else if report.unstable_chunks > 0 {
        TableState::Suspended
    } else {
        TableState::Validated
    };
    report.seconds = started.elapsed().as_secs_f64();
    report
}
