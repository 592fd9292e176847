//! The handoff LSN of a restored copy on AWS.
//!
//! RDS: the restored instance's first start replays the WAL in its snapshot and logs
//! `redo done at X` and then `invalid record length at Y` — Y is where logical
//! replication must start (`FIELD-NOTES.md`). pgseal reads those lines from CloudWatch
//! Logs (the restore enables the `postgresql` export) and falls back to the instance's
//! log files (`DownloadDBLogFilePortion`). Aurora: `aurora_volume_logical_start_lsn()`.

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
/// Log events this long before the instance's creation still count (clock skew).
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

/// The log group RDS exports an instance's PostgreSQL log to.
pub fn log_group(instance: &str) -> String {
    format!("/aws/rds/instance/{instance}/postgresql")
}

/// Reads the handoff facts from log text: `None` until the end-of-WAL line is there.
pub fn handoff_from_text(text: &str) -> Option<Handoff> {
    let lsn = lsn_after(text, END_MARKER)?;
    // Only a `redo done at` before the end-of-WAL line belongs to the same start.
    let before = &text[..text.find(END_MARKER).expect("found above")];
    Some(Handoff {
        lsn,
        redo_done_at: lsn_after(before, REDO_MARKER),
        backup_end_lsn: None,
    })
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

    /// The lines of `id`'s exported log that carry either marker, oldest first.
    async fn cloudwatch_text(&self, id: &str, since_ms: Option<i64>) -> Result<String> {
        let mut text = String::new();
        for marker in [REDO_MARKER, END_MARKER] {
            let mut token = None;
            loop {
                let out = self
                    .logs
                    .filter_log_events()
                    .log_group_name(log_group(id))
                    .filter_pattern(format!("\"{}\"", marker.trim_end()))
                    .set_start_time(since_ms)
                    .set_next_token(token.take())
                    .send()
                    .await;
                let out = match out.map_err(|e| api("FilterLogEvents", e)) {
                    Ok(out) => out,
                    // The group appears with the instance's first exported line.
                    Err(AwsError::NotFound(_)) => return Ok(String::new()),
                    Err(e) => return Err(e),
                };
                for event in out.events() {
                    text.push_str(event.message().unwrap_or(""));
                    text.push('\n');
                }
                match out.next_token() {
                    Some(t) if !out.events().is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        // The redo lines come first, as in the log: the first start's precedes its end line.
        Ok(text)
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
            let mut marker = Some("0".to_string());
            while let Some(m) = marker.take() {
                let portion = self
                    .rds
                    .download_db_log_file_portion()
                    .db_instance_identifier(id)
                    .log_file_name(&name)
                    .marker(m)
                    .send()
                    .await
                    .map_err(|e| api("DownloadDBLogFilePortion", e))?;
                text.push_str(portion.log_file_data().unwrap_or(""));
                if portion.additional_data_pending() == Some(true) {
                    marker = portion.marker().map(str::to_string);
                }
            }
            if text.contains(END_MARKER) {
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

    #[test]
    fn the_end_of_wal_line_gives_the_handoff_and_the_redo_line_before_it_the_guard() {
        let log = "2026-11-24 LOG:  redo starts at 0/2000028\n\
                   2026-11-24 LOG:  redo done at 0/3000110 system usage: ...\n\
                   2026-11-24 LOG:  invalid record length at 0/3000148: wanted 24, got 0\n\
                   2026-11-25 LOG:  redo done at 0/9000000\n";
        let h = handoff_from_text(log).unwrap();
        assert_eq!(h.lsn.to_string(), "0/3000148");
        assert_eq!(h.redo_done_at.unwrap().to_string(), "0/3000110");
        assert!(handoff_from_text("LOG:  redo done at 0/3000110\n").is_none());
    }
}
