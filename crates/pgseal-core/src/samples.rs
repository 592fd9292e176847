//! Time series of a migration's replication, recorded in the journal for the report.
//!
//! Each [`Sample`] is one stream (one database) at one moment, as the source sees it: its
//! WAL position, the slot's confirmed position (so the apply rate is the slope between
//! two samples), the lag in bytes and seconds, and the WAL the slot holds.
//!
//! **Rate.** `status` (and `status --watch`), the steps of `start` that wait on
//! replication, `validate` and `cutover` offer samples whenever they read these facts;
//! the journal keeps one only when the migration's last sample is older than
//! [`spacing`]: 1 s in the first minute of the migration's life, then a sixtieth of its
//! age, at most 30 s. A day of replication watched without pause keeps about 3,000
//! samples per database (60·ln 30 ≈ 204 in the first half hour, then one each 30 s),
//! some 200 KiB of journal.

use std::time::Duration;

use pgseal_pg::Lsn;
use pgseal_pg::replication::{self, SlotState};
use serde::{Deserialize, Serialize};

use crate::stream::Stream;

/// One stream's replication at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When (unix milliseconds).
    pub at_ms: i64,
    /// The database.
    pub database: String,
    /// The source's WAL position.
    pub source_lsn: u64,
    /// The slot's `confirmed_flush_lsn`, once the target confirmed anything.
    pub confirmed_lsn: Option<u64>,
    /// Bytes of source WAL not yet confirmed applied.
    pub lag_bytes: Option<u64>,
    /// The walsender's `replay_lag` in seconds (absent when idle).
    pub lag_seconds: Option<f64>,
    /// WAL the slot holds on the source (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_bytes: Option<i64>,
}

/// The least time between two kept samples of a migration `age` old.
pub fn spacing(age: Duration) -> Duration {
    (age / 60).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

impl Sample {
    /// A sample of which only the lag and the slot's retention are known (no positions,
    /// no replay lag): what a plot or a metric reads, made by hand.
    pub fn lag_only(at_ms: i64, database: &str, lag_bytes: u64, retained_bytes: i64) -> Sample {
        Sample {
            at_ms,
            database: database.into(),
            source_lsn: 0,
            confirmed_lsn: None,
            lag_bytes: Some(lag_bytes),
            lag_seconds: None,
            retained_bytes: Some(retained_bytes),
        }
    }

    /// Stream `database`'s sample at `at_ms` from what the source showed: its WAL position
    /// `source_lsn`, the stream's slot (if it exists) and the walsender's `replay_lag`.
    pub fn of(
        at_ms: i64,
        database: &str,
        source_lsn: Lsn,
        slot: Option<&SlotState>,
        lag_seconds: Option<f64>,
    ) -> Sample {
        let confirmed = slot.and_then(|s| s.confirmed_flush_lsn);
        Sample {
            at_ms,
            database: database.to_string(),
            source_lsn: source_lsn.0,
            confirmed_lsn: confirmed.map(|c| c.0),
            lag_bytes: confirmed.map(|c| source_lsn.0.saturating_sub(c.0)),
            lag_seconds,
            retained_bytes: slot.and_then(|s| s.retained_bytes),
        }
    }
}

/// The `replay_lag` of stream `name`'s walsender on the source, in seconds (absent when
/// idle or not connected). After either side restarted, the walsender of the apply worker
/// that went can linger beside the new one's for a moment, both under the stream's name:
/// the newer is the stream's.
pub async fn replay_lag(
    source: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<f64>, tokio_postgres::Error> {
    Ok(source
        .query_opt(
            "SELECT EXTRACT(epoch FROM replay_lag)::float8 FROM pg_stat_replication \
             WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
            &[&name],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Reads a sample of every stream from the source's server-wide views (`source` may be
/// a session in any database of the instance), stamped `at_ms`.
pub async fn read(
    source: &tokio_postgres::Client,
    streams: &[Stream],
    at_ms: i64,
) -> Result<Vec<Sample>, tokio_postgres::Error> {
    let source_lsn = replication::current_wal_lsn(source).await?;
    let mut samples = Vec::with_capacity(streams.len());
    for s in streams {
        let slot = replication::slot(source, &s.name).await?;
        let lag_seconds = replay_lag(source, &s.name).await?;
        samples.push(Sample::of(
            at_ms,
            &s.database,
            source_lsn,
            slot.as_ref(),
            lag_seconds,
        ));
    }
    Ok(samples)
}

/// The apply rate of each sample after the first of its database: bytes the slot
/// confirmed per second since the previous sample, as `(at_ms, database, bytes_per_s)`.
pub fn apply_rates(samples: &[Sample]) -> Vec<(i64, String, f64)> {
    rates(samples.iter().filter_map(|s| {
        let confirmed = s.confirmed_lsn? as f64;
        Some((
            (s.database.as_str(), ""),
            s.database.as_str(),
            s.at_ms,
            confirmed,
        ))
    }))
}

/// The slope of a growing count between consecutive `points` of one series, as
/// `(at_ms, label, per_second)`: each point is `(series, label, at_ms, count)`, a count
/// that went down gives 0, and two points at one instant give none.
pub(crate) fn rates<'a>(
    points: impl IntoIterator<Item = ((&'a str, &'a str), &'a str, i64, f64)>,
) -> Vec<(i64, String, f64)> {
    let mut last: std::collections::HashMap<(&str, &str), (i64, f64)> = Default::default();
    let mut out = Vec::new();
    for (series, label, at_ms, count) in points {
        if let Some((before_ms, before)) = last.insert(series, (at_ms, count))
            && at_ms > before_ms
        {
            out.push((
                at_ms,
                label.to_string(),
                (count - before).max(0.0) * 1000.0 / (at_ms - before_ms) as f64,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_grows_with_age_within_bounds() {
        assert_eq!(spacing(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(spacing(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(spacing(Duration::from_secs(600)), Duration::from_secs(10));
        assert_eq!(
            spacing(Duration::from_secs(86_400)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn apply_rate_is_the_slope_per_database() {
        let sample = |at_ms, database: &str, confirmed| Sample {
            at_ms,
            database: database.into(),
            source_lsn: 0,
            confirmed_lsn: confirmed,
            lag_bytes: None,
            lag_seconds: None,
            retained_bytes: None,
        };
        let rates = apply_rates(&[
            sample(0, "a", Some(1000)),
            sample(0, "b", None),
            sample(2000, "a", Some(5000)),
            sample(2000, "b", Some(10)),
            sample(3000, "b", Some(1010)),
        ]);
        assert_eq!(
            rates,
            vec![(2000, "a".into(), 2000.0), (3000, "b".into(), 1000.0)]
        );
    }
}
