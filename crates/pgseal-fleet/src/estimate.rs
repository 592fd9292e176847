//! How long `migrate start` will take to bring a source to replicating, from what this
//! machine has measured: the migrations in its journal that got there, per strategy.
//!
//! Each such migration gives a size and a duration (first step to the end of `enable`).
//! The model is a fixed cost plus a rate: the fixed cost is the shortest duration seen
//! (the smallest source pays almost nothing else), the rate is the bytes over the rest
//! of the time. With one measurement, or sizes all alike, it is that fixed cost scaled
//! by size where the rate cannot be told.

use std::collections::BTreeMap;
use std::time::Duration;

use pgseal_core::report::MigrationReport;
use serde::Serialize;

/// Below this much time beyond the fixed cost, in all, there is no rate to tell.
const LEAST_VARIABLE_MS: f64 = 500.0;

/// What was measured for one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Migrations measured.
    pub migrations: usize,
    /// The shortest start, in seconds.
    pub fixed_seconds: f64,
    /// Bytes per second beyond the fixed cost, when it can be told.
    pub bytes_per_second: Option<f64>,
    /// The largest source measured, in bytes.
    pub largest_bytes: u64,
}

/// What was measured, per strategy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates(pub BTreeMap<String, Measured>);

impl Rates {
    /// The rates the migrations in `reports` show.
    pub fn measure<'a>(reports: impl IntoIterator<Item = &'a MigrationReport>) -> Rates {
        let mut points: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        for r in reports {
            let (Some(bytes), Some(start), Some(end)) =
                (r.source_bytes, r.started_ms, r.replication_started_ms)
            else {
                continue;
            };
            if end > start {
                points
                    .entry(r.migration.spec.strategy.as_str().to_string())
                    .or_default()
                    .push((bytes, (end - start) as f64));
            }
        }
        Rates(
            points
                .into_iter()
                .map(|(strategy, points)| {
                    let fixed = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                    let bytes: f64 = points.iter().map(|p| p.0 as f64).sum();
                    let beyond: f64 = points.iter().map(|p| p.1 - fixed).sum();
                    let measured = Measured {
                        migrations: points.len(),
                        fixed_seconds: fixed / 1000.0,
                        bytes_per_second: (beyond >= LEAST_VARIABLE_MS)
                            .then(|| bytes / (beyond / 1000.0)),
                        largest_bytes: points.iter().map(|p| p.0).max().unwrap_or(0),
                    };
                    (strategy, measured)
                })
                .collect(),
        )
    }

    /// The estimated start of a source of `bytes` by `strategy` (its `--strategy` name);
    /// `None` where nothing of that strategy was measured here.
    pub fn estimate(&self, strategy: &str, bytes: u64) -> Option<Duration> {
        let m = self.0.get(strategy)?;
        let seconds = match m.bytes_per_second {
            Some(rate) => m.fixed_seconds + bytes as f64 / rate,
            None if m.largest_bytes > 0 => {
                m.fixed_seconds * (bytes as f64 / m.largest_bytes as f64).max(1.0)
            }
            None => m.fixed_seconds,
        };
        Some(Duration::from_secs_f64(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_cost_and_a_rate_are_told_apart_from_two_sizes() {
        let mut rates = Rates::default();
        rates.0.insert(
            pgseal_core::steps::StrategyKind::Snapshot
                .as_str()
                .to_string(),
            Measured {
                migrations: 2,
                fixed_seconds: 10.0,
                bytes_per_second: Some(1e6),
                largest_bytes: 20_000_000,
            },
        );
        let est = rates.estimate("snapshot", 5_000_000).unwrap();
        assert_eq!(est.as_secs(), 15);
        assert!(rates.estimate("full-load", 1).is_none());
    }
}
