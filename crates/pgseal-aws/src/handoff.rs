//! The handoff LSN of a restored copy on AWS.
//!
//! RDS: the restored instance's first start replays the WAL in its snapshot. PostgreSQL
//! logs, in this order, `redo starts at A`, `invalid record length at X: wanted 24, got 0`
//! (16+: `expected at least 24, got 0`) and `redo done at Y`, with Y < X: X is where logical
//! replication must start, Y (the start of the last replayed record) is the guard
//! (`FIELD-NOTES.md`). [`handoff_from_text`] reads both lines of the same start whatever
//! their order. pgseal reads those lines from CloudWatch Logs (the restore enables the
//! `postgresql` export) and falls back to the instance's log files
//! (`DownloadDBLogFilePortion`). Aurora: `aurora_volume_logical_start_lsn()`.

use std::future::Future;

use pgseal_pg::Lsn;
use pgseal_pg::lsn::lsn_after;
use pgseal_platform::Handoff;

use crate::error::{AwsError, Result, api};
use crate::platform::AwsPlatform;
use crate::wait::{self, Poll};

/// The line that marks the end of the copied WAL.
const END_MARKER: &str = "invalid record length at ";
/// The line that names the last replayed record.
const REDO_MARKER: &str = "redo done at ";
/// The line each recovery start begins its replay with: it separates one start's lines
/// from the next one's.
const START_MARKER: &str = "redo starts at ";
/// The markers in the order PostgreSQL logs them within one start (the order lines of the
/// same millisecond are put in).
const MARKERS: [&str; 3] = [START_MARKER, END_MARKER, REDO_MARKER];
/// Log events this long before the instance's creation still count (clock skew).
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;
/// At most this many pages of one log query: a service that keeps answering with a next
/// token is not followed forever.
const MAX_PAGES: usize = 10_000;

/// The log group RDS exports an instance's PostgreSQL log to.
pub fn log_group(instance: &str) -> String {
    format!("/aws/rds/instance/{instance}/postgresql")
}

/// Reads the handoff facts from log text: `None` until the end-of-WAL line is there.
///
/// The lines of one start lie between two `redo starts at` lines; the `redo done at` of
/// the start that logged the first end-of-WAL line is its guard, before or after it.
/// Without `redo starts at` lines (text filtered down to the two markers), the guard is
/// the nearest `redo done at` below the end that no other end-of-WAL line separates from
/// it.
pub fn handoff_from_text(text: &str) -> Option<Handoff> {
    let lines: Vec<&str> = text.lines().collect();
    let end_at = lines.iter().position(|l| l.contains(END_MARKER))?;
    let lsn = lsn_after(lines[end_at], END_MARKER)?;
    let is_boundary = |l: &&str| l.contains(START_MARKER) || l.contains(END_MARKER);
    // This start's lines: back to the line after the previous boundary, forward to the
    // line before the next one.
    let first = lines[..end_at]
        .iter()
        .rposition(is_boundary)
        .map_or(0, |i| {
            // A `redo starts at` line belongs to this start; an end line does not.
            if lines[i].contains(START_MARKER) {
                i
            } else {
                i + 1
            }
        });
    let last = lines[end_at + 1..]
        .iter()
        .position(is_boundary)
        .map_or(lines.len(), |i| end_at + 1 + i);
    let redo_done_at = lines[first..last]
        .iter()
        .filter_map(|l| lsn_after(l, REDO_MARKER))
        .filter(|redo| *redo < lsn)
        .max();
    Some(Handoff {
        lsn,
        redo_done_at,
        backup_end_lsn: None,
    })
}

/// One page of a paged log query: its items and the token of the next page.
pub type Page<T> = (Vec<T>, Option<String>);

/// Every item of a paged query, following next tokens through empty pages (CloudWatch
/// Logs returns empty pages with a next token while it scans), until no token comes or the
/// same token comes back, at most [`MAX_PAGES`] pages.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Page<T>>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        match next {
            Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
            _ => return Ok(items),
        }
    }
    Ok(items)
}

impl AwsPlatform {
    /// Waits (up to the handoff timeout) for the first start's end-of-WAL line of RDS
    /// instance `id`, from CloudWatch Logs or else its log files.
    pub(crate) async fn handoff_from_logs(&self, id: &str) -> Result<Handoff> {
        let instance = self.describe_db_instance(id).await?;
        let since = instance
            .instance_create_time()
            .map(|t| t.to_millis().unwrap_or(0) - CLOCK_SLACK_MS);
        let fallback_error = std::sync::Mutex::new(String::new());
        let found = wait::until(
            &self.progress,
            &format!("the first start of {id} to log where its WAL ends"),
            self.settings.handoff_timeout,
            self.settings.poll_interval,
            || async {
                let text = self.cloudwatch_text(id, since).await?;
                if let Some(h) = handoff_from_text(&text) {
                    tracing::info!(instance = id, lsn = %h.lsn, source = "cloudwatch", "handoff LSN found");
                    return Ok(Poll::Done(h));
                }
                match self.log_file_text(id).await {
                    Ok(text) => {
                        if let Some(h) = handoff_from_text(&text) {
                            tracing::info!(instance = id, lsn = %h.lsn, source = "log files", "handoff LSN found");
                            return Ok(Poll::Done(h));
                        }
                    }
                    Err(e) => {
                        tracing::debug!(instance = id, error = %e, "log file fallback failed");
                        *fallback_error.lock().expect("not poisoned") = e.to_string();
                    }
                }
                Ok(Poll::Pending(format!("no '{}' line yet", END_MARKER.trim_end())))
            },
        )
        .await;
        let fallback_error = fallback_error.into_inner().expect("not poisoned");
        found.map_err(|e| match e {
            AwsError::Timeout { seconds, .. } => AwsError::Precondition(format!(
                "no '{}' line from {id}'s first start in {seconds} s, neither in CloudWatch Logs ({}) nor in its log files{}: is the postgresql log export enabled? Run `pgseal migrate resume` to wait again",
                END_MARKER.trim_end(),
                log_group(id),
                if fallback_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({fallback_error})")
                }
            )),
            other => other,
        })
    }

    /// The lines of `id`'s exported log that carry one of the [`MARKERS`], oldest first
    /// (one query a marker; lines of the same millisecond in PostgreSQL's order).
    async fn cloudwatch_text(&self, id: &str, since_ms: Option<i64>) -> Result<String> {
        let mut events: Vec<(i64, usize, String)> = Vec::new();
        for (rank, marker) in MARKERS.iter().enumerate() {
            let found = all_pages(|token| async move {
                let out = self
                    .logs
                    .filter_log_events()
                    .log_group_name(log_group(id))
                    .filter_pattern(format!("\"{}\"", marker.trim_end()))
                    .set_start_time(since_ms)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| api("FilterLogEvents", e))?;
                let page = out
                    .events()
                    .iter()
                    .map(|e| {
                        let text = e.message().unwrap_or("").to_string();
                        (e.timestamp().unwrap_or(0), rank, text)
                    })
                    .collect();
                Ok((page, out.next_token().map(str::to_string)))
            })
            .await;
            match found {
                Ok(found) => events.extend(found),
                // The group appears with the instance's first exported line.
                Err(AwsError::NotFound(_)) => return Ok(String::new()),
                Err(e) => return Err(e),
            }
        }
        events.sort();
        Ok(events.into_iter().map(|(_, _, text)| text + "\n").collect())
    }

    /// The instance's log files, oldest first, through `DownloadDBLogFilePortion`.
    async fn log_file_text(&self, id: &str) -> Result<String> {
        let files = self
            .rds
            .describe_db_log_files()
            .db_instance_identifier(id)
            .send()
            .await
            .map_err(|e| api("DescribeDBLogFiles", e))?;
        let mut names: Vec<(i64, String)> = files
            .describe_db_log_files()
            .iter()
            .filter_map(|f| {
                Some((
                    f.last_written().unwrap_or(0),
                    f.log_file_name()?.to_string(),
                ))
            })
            .collect();
        names.sort();
        let mut text = String::new();
        for (_, name) in names {
            let name = name.as_str();
            let portions = all_pages(|marker| async move {
                let portion = self
                    .rds
                    .download_db_log_file_portion()
                    .db_instance_identifier(id)
                    .log_file_name(name)
                    .marker(marker.unwrap_or_else(|| "0".into()))
                    .send()
                    .await
                    .map_err(|e| api("DownloadDBLogFilePortion", e))?;
                let next = (portion.additional_data_pending() == Some(true))
                    .then(|| portion.marker().map(str::to_string))
                    .flatten();
                Ok((
                    vec![portion.log_file_data().unwrap_or("").to_string()],
                    next,
                ))
            })
            .await?;
            text.extend(portions);
            // The guard's line may follow the end line: stop once both are read.
            if handoff_from_text(&text).is_some_and(|h| h.redo_done_at.is_some()) {
                break;
            }
        }
        Ok(text)
    }

    /// Aurora: the restored cluster's writer says where logical replication starts.
    pub(crate) async fn handoff_from_aurora(&self, name: &str) -> Result<Handoff> {
        let client = self.sql_client(name, "postgres").await?;
        let text: String = client
            .query_one("SELECT aurora_volume_logical_start_lsn()::text", &[])
            .await
            .map_err(|source| AwsError::Sql {
                what: format!("reading aurora_volume_logical_start_lsn() on {name} (Aurora PostgreSQL 15.2+, 14.3+, 13.6+ or 12.10+)"),
                source,
            })?
            .get(0);
        let lsn: Lsn = text.parse().map_err(|_| {
            AwsError::Precondition(format!("aurora_volume_logical_start_lsn() gave {text:?}"))
        })?;
        Ok(Handoff {
            lsn,
            redo_done_at: None,
            backup_end_lsn: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real PostgreSQL 15.20 crash start (`pg_ctl stop -m immediate`, then start), in
    /// RDS's log prefix, followed by a later crash start of the same instance.
    const PG15: &str = "\
2026-12-05 11:59:15 UTC::@:[21214]:LOG:  database system was interrupted; last known up at 2026-12-05 11:59:14 UTC
2026-12-05 11:59:15 UTC::@:[21214]:LOG:  database system was not properly shut down; automatic recovery in progress
2026-12-05 11:59:15 UTC::@:[21214]:LOG:  redo starts at 0/1511B00
2026-12-05 11:59:15 UTC::@:[21214]:LOG:  invalid record length at 0/1537590: wanted 24, got 0
2026-12-05 11:59:15 UTC::@:[21214]:LOG:  redo done at 0/15373F8 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.00 s
2026-12-05 11:59:15 UTC::@:[21212]:LOG:  checkpoint starting: end-of-recovery immediate wait
2026-12-05 12:10:00 UTC::@:[30001]:LOG:  redo starts at 0/9000028
2026-12-05 12:10:00 UTC::@:[30001]:LOG:  invalid record length at 0/9100000: wanted 24, got 0
2026-12-05 12:10:00 UTC::@:[30001]:LOG:  redo done at 0/90FFF00 system usage: CPU: user: 0.00 s
";

    /// The same from PostgreSQL 17.10, whose end line reads as 16's does.
    const PG16_WORDING: &str = "\
2026-12-05 11:59:17 UTC::@:[21258]:LOG:  redo starts at 0/14D8A68
2026-12-05 11:59:17 UTC::@:[21258]:LOG:  invalid record length at 0/14FF560: expected at least 24, got 0
2026-12-05 11:59:17 UTC::@:[21258]:LOG:  redo done at 0/14FF3C8 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.00 s
2026-12-05 11:59:17 UTC::@:[21256]:LOG:  checkpoint starting: end-of-recovery immediate wait
";

    fn handoff(text: &str) -> (String, Option<String>) {
        let h = handoff_from_text(text).expect("an end line");
        (h.lsn.to_string(), h.redo_done_at.map(|l| l.to_string()))
    }

    /// `text` with its `redo done at` and `invalid record length at` lines swapped.
    fn swapped(text: &str) -> String {
        let mut lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() - 1 {
            if lines[i].contains(END_MARKER) && lines[i + 1].contains(REDO_MARKER) {
                lines.swap(i, i + 1);
            }
        }
        lines.join("\n")
    }

    #[test]
    fn the_first_starts_end_and_redo_lines_are_read_in_postgresql_order_and_reversed() {
        let first = ("0/1537590".to_string(), Some("0/15373F8".to_string()));
        assert_eq!(handoff(PG15), first);
        assert_eq!(handoff(&swapped(PG15)), first);
        let pg16 = ("0/14FF560".to_string(), Some("0/14FF3C8".to_string()));
        assert_eq!(handoff(PG16_WORDING), pg16);
        assert_eq!(handoff(&swapped(PG16_WORDING)), pg16);
    }

    #[test]
    fn filtered_text_without_start_lines_keeps_each_redo_line_with_its_own_start() {
        // CloudWatch queries return only the marker lines.
        let only = |text: &str, keep: &[&str]| {
            text.lines()
                .filter(|l| keep.iter().any(|m| l.contains(m)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let filtered = only(PG15, &[END_MARKER, REDO_MARKER]);
        let first = ("0/1537590".to_string(), Some("0/15373F8".to_string()));
        assert_eq!(handoff(&filtered), first);
        assert_eq!(handoff(&swapped(&filtered)), first);
        // The first start's redo line not (yet) there: the later start's is not taken.
        let end_only: String = filtered
            .lines()
            .filter(|l| !l.contains("0/15373F8"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(handoff(&end_only), ("0/1537590".to_string(), None));
        assert!(handoff_from_text(&only(PG15, &[REDO_MARKER, START_MARKER])).is_none());
    }

    #[tokio::test]
    async fn paging_goes_on_through_an_empty_page_and_stops_on_a_repeated_token() {
        // Pages: [a], [] with a token, [b, c], end.
        let pages = |token: Option<String>| async move {
            Ok(match token.as_deref() {
                None => (vec!["a"], Some("t1".to_string())),
                Some("t1") => (vec![], Some("t2".to_string())),
                Some("t2") => (vec!["b", "c"], None),
                other => panic!("unexpected token {other:?}"),
            })
        };
        assert_eq!(all_pages(pages).await.unwrap(), ["a", "b", "c"]);
        // A service that hands the same token back is not followed forever.
        let mut calls = 0;
        let stuck = all_pages(|_| {
            calls += 1;
            async { Ok((vec![1], Some("same".to_string()))) }
        })
        .await
        .unwrap();
        assert_eq!((stuck.len(), calls), (2, 2));
    }
}
