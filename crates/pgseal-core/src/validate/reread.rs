//! Comparing a range at one point of the stream: unlocked reads, the change log, the locked re-check, and what differs merged into the report.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::catch_up::CatchUp;
use crate::error::{EngineError, sql};

use super::report::*;
use super::shape::*;

/// The two sides, how to wait until the target has applied up to a source position, and
/// where progress goes.
pub(super) struct Sides<'a> {
    pub(super) source: &'a Client,
    /// A second session on the source: it reads the slot and commits the catch-up's
    /// barriers while `source` holds a table in the locked re-check.
    pub(super) source_aux: &'a Client,
    pub(super) target: &'a Client,
    /// How the target follows the source, which is what validation waits on.
    pub(super) catch_up: CatchUp<'a>,
    pub(super) progress: &'a (dyn Fn(Progress<'_>) + Sync),
    /// The longest time a table was held locked on the source, in milliseconds.
    pub(super) longest_lock_ms: std::sync::Mutex<f64>,
}

/// How long the locked re-check may wait for the target to catch up while it holds the
/// source's table.
pub(super) const LOCKED_CATCH_UP: Duration = Duration::from_millis(50);

/// The locked re-check's `lock_timeout` and `statement_timeout` on the source: writers
/// queue behind the lock while it is asked for, and while the source side is read.
pub(super) const LOCK_TIMEOUT: &str = "100ms";

/// `row hash -> count` of both sides (a table without a key).
pub(super) type MultisetPair = (
    std::collections::BTreeMap<i64, i64>,
    std::collections::BTreeMap<i64, i64>,
);

/// Reads both sides holding nothing: the source side, then (once the target has applied
/// everything the source had committed by then) the target side.
///
/// Equal reads settle a range: everything the source read was committed before the
/// position the target then applied, and a change the source's read missed would show on
/// the target's side as a difference. A difference settles nothing, even for a key that
/// did not move: PostgreSQL writes and flushes a commit record (and the walsender sends
/// it) before the committing backend leaves the proc array, so a commit can be applied on
/// the target (and logged in its change log) before the source's read could see it. Only
/// the locked re-check ([`locked`]: the table's `SHARE` lock waits for that writer to
/// end) settles a difference.
pub(super) async fn unlocked<T>(
    sides: &Sides<'_>,
    shape: &Shape,
    read: impl AsyncFn(&Client, &'static str) -> Result<T, EngineError>,
) -> Result<(T, T), EngineError> {
    let started = Instant::now();
    let source_side = read(sides.source, "source").await?;
    let read_source = started.elapsed();
    let lsn = sides.catch_up.source_lsn(sides.source).await?;
    sides.catch_up.applied(lsn).await?;
    let caught_up = started.elapsed();
    let target_side = read(sides.target, "target").await?;
    tracing::debug!(
        table = %shape.table,
        read_source_ms = read_source.as_secs_f64() * 1e3,
        caught_up_ms = caught_up.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "re-read a differing range"
    );
    Ok((source_side, target_side))
}

/// Reads both sides at one point of the stream, for a difference unlocked reads could not
/// settle: the source table is held in SHARE mode (writers queue; `lock_timeout` and
/// `statement_timeout` [`LOCK_TIMEOUT`]) while its side is read, and the target is given
/// [`LOCKED_CATCH_UP`] to apply everything the source had committed by then (see
/// [`Sides::received`]); then its side is read and the lock let go.
/// `None` when the lock, the read or the catch-up did not fit in that time.
pub(super) async fn locked<T>(
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

/// Tries before a chunk whose source keeps changing is called unstable.
pub(super) const TRIES: usize = 3;

/// Compares the rows under `cond` key by key and adds what differs to `report`. Keys that
/// differ are read again, by key, up to [`TRIES`] times, then once more under the lock,
/// which alone makes a difference count (see [`unlocked`]); if they still cannot be
/// settled the chunk counts as unstable (the cutover's final check compares them again
/// with the source fenced: they are in the change log). Returns false in that case.
pub(super) async fn settle_rows(
    sides: &Sides<'_>,
    shape: &Shape,
    cond: &str,
    report: &mut TableReport,
) -> Result<bool, EngineError> {
    let mut cond = cond.to_string();
    for _ in 0..TRIES {
        let (src, dst) = unlocked(sides, shape, async |c, role| {
            hashes(c, shape, &cond, role).await
        })
        .await?;
        // Only equality is settled without the lock: a difference may be a commit the
        // target applied before the source's read could see it (see [`unlocked`]). What
        // differs is read again, then under the lock.
        let unsettled = differing(&src, &dst);
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
pub(super) fn differing(
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
pub(super) async fn settle_multiset(
    sides: &Sides<'_>,
    shape: &Shape,
) -> Result<Option<MultisetPair>, EngineError> {
    for _ in 0..TRIES {
        let (src, dst) =
            unlocked(sides, shape, async |c, role| multiset(c, shape, role).await).await?;
        // Equal settles it; a difference is read again and then under the lock (see
        // [`settle_rows`]).
        if src == dst {
            return Ok(Some((src, dst)));
        }
    }
    locked(sides, shape, async |c, role| multiset(c, shape, role).await).await
}

/// Compares one chunk; returns (source rows, unstable?) and adds what differs to `report`.
pub(super) async fn compare_chunk(
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
pub(super) fn merge_multisets(
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
pub(super) fn merge(
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
pub(super) const DETAILED: usize = 10;

/// `key -> row text` of the rows `query` selects.
pub(super) async fn rows_by_key(
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
pub(super) async fn details(
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
