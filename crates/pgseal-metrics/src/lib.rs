//! Migrations as Prometheus metrics, for a team's dashboards.
//!
//! [`render`] turns what the journal knows of some migrations (their
//! [`MigrationReport`]s) into Prometheus' text format (version 0.0.4) with
//! `prometheus-client`; [`serve`] answers `GET /metrics` with it, read anew from the
//! journal at each scrape. Lag and retention are as last sampled (by the migration's
//! follower, or `status`): `pgseal_sample_age_seconds` says how long ago.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `pgseal_migration_phase` | migration, source, phase | 1 for the phase it is in |
//! | `pgseal_stream_lag_bytes` | migration, database | source WAL not yet applied on the target |
//! | `pgseal_stream_lag_seconds` | migration, database | the walsender's replay lag |
//! | `pgseal_slot_retained_bytes` | migration, source, database | WAL the stream's slot holds on the source |
//! | `pgseal_slot_retention_limit_bytes` | migration, source | `--max-slot-retention` |
//! | `pgseal_sample_age_seconds` | migration | since the last sample |
//! | `pgseal_last_pause_seconds` | migration, switch (`cutover`, `rollback`) | the last write pause (pgseal's clock) |
//! | `pgseal_validation_clean` | migration | 1 when the last validation matched every table |
//! | `pgseal_validation_mismatched_rows` | migration | rows the last validation found different |
//! | `pgseal_validation_timestamp_seconds` | migration | when the last validation finished |
//! | `pgseal_lease_seconds_left` | migration, runner, host | until the runner's lease expires (shared journal) |

mod serve;

pub use serve::{Server, serve};

use std::sync::atomic::AtomicU64;

use pgseal_core::journal::LeaseRecord;
use pgseal_core::report::MigrationReport;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Making or serving the metrics failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The text could not be written (never expected: it goes to memory).
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    /// The address could not be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// One family of gauges, registered under `name` with `help`.
fn family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, FloatGauge> {
    let family = Family::<Labels, FloatGauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// The metrics of `reports` (each a migration as its journal has it), at `now_ms`, in
/// Prometheus' text format.
pub fn render(
    reports: &[&MigrationReport],
    leases: &[LeaseRecord],
    now_ms: i64,
) -> Result<String, MetricsError> {
    let mut registry = Registry::with_prefix("pgseal");
    let lease = family(
        &mut registry,
        "lease_seconds_left",
        "Seconds before the runner's lease on the migration expires unless renewed \
         (negative: expired, another runner may take it over)",
    );
    for l in leases {
        lease
            .get_or_create(&vec![
                ("migration", l.migration.clone()),
                ("runner", l.runner.clone()),
                ("host", l.host.clone()),
            ])
            .set(l.left_ms as f64 / 1000.0);
    }
    let phase = family(
        &mut registry,
        "migration_phase",
        "1 for the phase the migration is in",
    );
    let lag_bytes = family(
        &mut registry,
        "stream_lag_bytes",
        "Source WAL not yet applied on the target, per stream, as last sampled",
    );
    let lag_seconds = family(
        &mut registry,
        "stream_lag_seconds",
        "The walsender's replay lag per stream, as last sampled",
    );
    let retained = family(
        &mut registry,
        "slot_retained_bytes",
        "WAL the stream's slot holds on the source, as last sampled",
    );
    let limit = family(
        &mut registry,
        "slot_retention_limit_bytes",
        "WAL a slot may hold before the migration is aborted (--max-slot-retention)",
    );
    let age = family(
        &mut registry,
        "sample_age_seconds",
        "Seconds since the migration's replication was last sampled",
    );
    let pause = family(
        &mut registry,
        "last_pause_seconds",
        "The last write pause of the cutover or the rollback, by pgseal's clock",
    );
    let clean = family(
        &mut registry,
        "validation_clean",
        "1 when the last validation found every table the same on both sides",
    );
    let mismatched = family(
        &mut registry,
        "validation_mismatched_rows",
        "Rows the last validation found different",
    );
    let validated_at = family(
        &mut registry,
        "validation_timestamp_seconds",
        "When the last validation finished (unix seconds)",
    );
    for r in reports {
        let spec = &r.migration.spec;
        let name = spec.name.clone();
        let of = |more: &[(&'static str, String)]| -> Labels {
            let mut labels = vec![("migration", name.clone())];
            labels.extend(more.iter().cloned());
            labels
        };
        phase
            .get_or_create(&of(&[
                ("source", spec.source.clone()),
                ("phase", r.migration.phase.as_str().to_string()),
            ]))
            .set(1.0);
        if let Some(last) = r.samples.iter().map(|s| s.at_ms).max() {
            age.get_or_create(&of(&[]))
                .set((now_ms - last).max(0) as f64 / 1000.0);
            for s in r.samples.iter().filter(|s| s.at_ms == last) {
                let db = of(&[("database", s.database.clone())]);
                if let Some(v) = s.lag_bytes {
                    lag_bytes.get_or_create(&db).set(v as f64);
                }
                if let Some(v) = s.lag_seconds {
                    lag_seconds.get_or_create(&db).set(v);
                }
                if let Some(v) = s.retained_bytes {
                    retained
                        .get_or_create(&of(&[
                            ("source", spec.source.clone()),
                            ("database", s.database.clone()),
                        ]))
                        .set(v as f64);
                }
            }
        }
        if let Some(l) = r.max_slot_retention {
            limit
                .get_or_create(&of(&[("source", spec.source.clone())]))
                .set(l as f64);
        }
        for (switch, c) in [("cutover", &r.cutover), ("rollback", &r.rollback)] {
            if let Some(ms) = c.as_ref().and_then(|c| c.write_pause_ms) {
                pause
                    .get_or_create(&of(&[("switch", switch.to_string())]))
                    .set(ms as f64 / 1000.0);
            }
        }
        if let Some(v) = &r.validation {
            clean
                .get_or_create(&of(&[]))
                .set(if v.clean { 1.0 } else { 0.0 });
            mismatched
                .get_or_create(&of(&[]))
                .set(v.mismatched_rows as f64);
            if let Some(at) = v.finished_ms {
                validated_at.get_or_create(&of(&[])).set(at as f64 / 1000.0);
            }
        }
    }
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_core::samples::Sample;
    use pgseal_core::{Journal, MigrationSpec, Phase};

    fn sample(at_ms: i64, database: &str, lag: u64, retained: i64) -> Sample {
        Sample {
            lag_seconds: Some(0.5),
            ..Sample::lag_only(at_ms, database, lag, retained)
        }
    }

    /// A sample as read back: its metric, its labels (sorted) and its value.
    type Read = (String, Vec<(String, String)>, f64);

    /// Every sample of `text`, read by a Prometheus text-format parser this project did
    /// not write.
    fn parsed(text: &str) -> Vec<Read> {
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        scrape
            .samples
            .into_iter()
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    other => panic!("{other:?}"),
                };
                let mut labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                labels.sort();
                (s.metric, labels, value)
            })
            .collect()
    }

    #[test]
    fn the_journal_of_two_migrations_reads_as_metrics_a_parser_accepts() {
        let home = tempfile::tempdir().unwrap();
        let journal = Journal::open(home.path()).unwrap();
        for (name, source) in [("shop", "shop-db"), ("odd \"name\"", "postgres://x/y")] {
            let mut spec = MigrationSpec::new(name, source, "t", "k", "postgres");
            spec.max_slot_retention = Some(1 << 30);
            journal.create(&spec).unwrap();
        }
        journal.set_phase("shop", Phase::Replicating, None).unwrap();
        journal
            .insert_samples(
                "shop",
                &[
                    sample(1_000, "app", 900, 5_000),
                    sample(2_000, "app", 100, 6_000),
                    sample(2_000, "audit", 7, 8_000),
                ],
            )
            .unwrap();
        let reports: Vec<_> = ["shop", "odd \"name\""]
            .iter()
            .map(|n| pgseal_core::report::gather(&journal, n).unwrap())
            .collect();
        let text = render(&reports.iter().collect::<Vec<_>>(), &[], 5_000).unwrap();
        // A scrape reads only each database's latest sample, and says the same.
        let latest: Vec<_> = ["shop", "odd \"name\""]
            .iter()
            .map(|n| {
                pgseal_core::report::gather_with(&journal, n, pgseal_core::report::History::Latest)
                    .unwrap()
            })
            .collect();
        assert_eq!(latest[0].samples.len(), 2);
        // (A family's series come in no fixed order: compared as sets.)
        let sorted = |text: &str| {
            let mut all: Vec<String> = parsed(text).iter().map(|s| format!("{s:?}")).collect();
            all.sort();
            all
        };
        assert_eq!(
            sorted(&render(&latest.iter().collect::<Vec<_>>(), &[], 5_000).unwrap()),
            sorted(&text)
        );
        let samples = parsed(&text);
        let get = |metric: &str, labels: &[(&str, &str)]| -> Option<f64> {
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            want.sort();
            samples
                .iter()
                .find(|(m, l, _)| m == metric && *l == want)
                .map(|s| s.2)
        };
        // The latest sample of each database, not an earlier one.
        assert_eq!(
            get(
                "pgseal_stream_lag_bytes",
                &[("migration", "shop"), ("database", "app")]
            ),
            Some(100.0),
            "{text}"
        );
        assert_eq!(
            get(
                "pgseal_slot_retained_bytes",
                &[
                    ("migration", "shop"),
                    ("source", "shop-db"),
                    ("database", "audit")
                ]
            ),
            Some(8_000.0)
        );
        assert_eq!(
            get("pgseal_sample_age_seconds", &[("migration", "shop")]),
            Some(3.0)
        );
        assert_eq!(
            get(
                "pgseal_migration_phase",
                &[
                    ("migration", "shop"),
                    ("source", "shop-db"),
                    ("phase", "replicating")
                ]
            ),
            Some(1.0)
        );
        // A name with quotes is escaped as the text format says (`\"`). The parser
        // above splits labels naively and does not unescape, so this is checked on the
        // text itself.
        assert!(
            text.contains(
                "pgseal_migration_phase{migration=\"odd \\\"name\\\"\",source=\"postgres://x/y\",phase=\"running\"} 1"
            ),
            "{text}"
        );
        assert_eq!(
            get(
                "pgseal_slot_retention_limit_bytes",
                &[("migration", "shop"), ("source", "shop-db")]
            ),
            Some((1u64 << 30) as f64)
        );
        // Never validated, never cut over: no such series.
        assert!(!text.contains("pgseal_validation_clean{"), "{text}");
        assert!(!text.contains("pgseal_last_pause_seconds{"), "{text}");
    }

    #[test]
    fn the_endpoint_answers_metrics_and_nothing_else() {
        use std::io::{Read, Write};
        let server = serve("127.0.0.1:0").unwrap();
        let addr = server.addr();
        std::thread::spawn(move || server.run(|| Ok("pgseal_x 1\n".to_string())));
        let get = |path: &str| -> String {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let metrics = get("/metrics");
        assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
        assert!(metrics.contains(CONTENT_TYPE), "{metrics}");
        assert!(metrics.ends_with("pgseal_x 1\n"), "{metrics}");
        assert!(get("/").starts_with("HTTP/1.0 404"));
    }

    #[test]
    fn leases_read_as_the_seconds_each_runner_has_left() {
        let leases = [
            LeaseRecord {
                migration: "shop".into(),
                runner: "runner \"a\"".into(),
                host: "h1".into(),
                pid: 7,
                taken_ms: 0,
                expires_ms: 30_000,
                left_ms: 12_500,
            },
            LeaseRecord {
                migration: "audit".into(),
                runner: "b".into(),
                host: "h2".into(),
                pid: 8,
                taken_ms: 0,
                expires_ms: 1_000,
                left_ms: -4_000,
            },
        ];
        let samples = parsed(&render(&[], &leases, 0).unwrap());
        let left: Vec<(String, f64)> = samples
            .iter()
            .filter(|(m, _, _)| m == "pgseal_lease_seconds_left")
            .map(|(_, l, v)| (l.iter().map(|(k, v)| format!("{k}={v}")).collect(), *v))
            .collect();
        assert_eq!(left.len(), 2, "{samples:?}");
        assert!(
            left.contains(&("host=h2migration=auditrunner=b".to_string(), -4.0)),
            "{left:?}"
        );
        assert!(
            left.iter()
                .any(|(l, v)| l.starts_with("host=h1migration=shop") && *v == 12.5),
            "{left:?}"
        );
    }
}
