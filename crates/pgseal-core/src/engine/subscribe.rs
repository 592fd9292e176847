//! The steps every pgseal-replicated strategy shares on the target: one subscription per
//! stream (disabled), enabling them, and waiting until every apply worker streams.

use std::time::{Duration, Instant};

use pgseal_pg::replication;
use pgseal_platform::Platform;
use serde_json::json;
use tokio_postgres::Client;

use super::{Engine, StepResult};
use crate::error::{EngineError, platform_error, sql};

/// How long the engine waits for the apply worker to start.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);

impl<P: Platform> Engine<'_, P> {
    /// [`Step::Subscription`]: one disabled subscription per stream on the target, to
    /// its slot (which need not exist yet), copying no data: the strategy brings the
    /// tables' rows.
    pub(crate) async fn subscription(&self) -> StepResult {
        let mut made = Vec::new();
        for s in &self.streams()? {
            let conninfo = match self.spec.source_url() {
                // The subscription keeps the password in the target's catalog (on its
                // encrypted storage), as PostgreSQL does for any subscription.
                Some(url) => {
                    let mut config = crate::sessions::source_config(url)?;
                    config.dbname(&s.database);
                    pgseal_pg::conninfo(&config)
                }
                None => self
                    .platform
                    .subscriber_conninfo(&self.spec.source, &s.database)
                    .await
                    .map_err(platform_error("finding how the target reaches the source"))?,
            };
            let target = self.target_db(&s.database).await?;
            let (sub, _) = replication::create_subscription(
                &target, &s.name, &conninfo, &s.name, &s.name, false,
            )
            .await
            .map_err(sql(
                "target",
                format!("creating subscription {} in {}", s.name, s.database),
            ))?;
            made.push(json!({ "database": s.database, "subscription": sub.name, "oid": sub.oid }));
        }
        let summary = format!("{} subscription(s), disabled, copy_data=false", made.len());
        Ok((json!({ "subscriptions": made }), summary))
    }

    /// Subscription `name`'s state on `target`; an error when it is missing.
    pub(crate) async fn subscription_state(
        &self,
        target: &Client,
        name: &str,
    ) -> Result<replication::SubscriptionState, EngineError> {
        replication::subscription(target, name)
            .await
            .map_err(sql("target", "reading the subscription"))?
            .ok_or_else(|| {
                EngineError::Precondition(format!(
                    "subscription {name} is missing on the target; abort this migration"
                ))
            })
    }

    /// [`Step::Enable`]: every subscription enabled.
    pub(crate) async fn enable(&self) -> StepResult {
        let streams = self.streams()?;
        for s in &streams {
            let target = self.target_db(&s.database).await?;
            replication::enable_subscription(&target, &s.name)
                .await
                .map_err(sql("target", "enabling the subscription"))?;
        }
        Ok((
            json!({ "enabled": streams.iter().map(|s| &s.name).collect::<Vec<_>>() }),
            format!("{} subscription(s) enabled", streams.len()),
        ))
    }

    /// [`Step::Replicating`]: waits until every stream's apply worker runs and its slot
    /// is in use.
    pub(crate) async fn replicating(&self) -> StepResult {
        let source = self.source().await?;
        let started = Instant::now();
        let mut workers = Vec::new();
        let streams = self.streams()?;
        for s in &streams {
            let target = self.target_db(&s.database).await?;
            // The error count only grows, and counts lost connections too: only errors
            // during this wait say the worker cannot start (a resumed migration's worker
            // may have failed before, when the source restarted).
            let mut errors_before = None;
            loop {
                self.journal
                    .record_samples(&self.spec.name, &source, &streams)
                    .await;
                let sub = self.subscription_state(&target, &s.name).await?;
                let errors_before = *errors_before.get_or_insert(sub.apply_errors);
                let slot = replication::slot(&source, &s.name)
                    .await
                    .map_err(sql("source", "reading the slot"))?;
                if let (Some(pid), Some(slot)) = (sub.worker_pid, &slot)
                    && slot.active
                {
                    workers.push(json!({
                        "database": s.database, "worker_pid": pid, "applied_lsn": sub.applied_lsn,
                    }));
                    break;
                }
                if sub.apply_errors > errors_before {
                    return Err(EngineError::Precondition(format!(
                        "the apply worker of {} ({}) failed {} time(s); see the target's server log",
                        s.name,
                        s.database,
                        sub.apply_errors - errors_before
                    )));
                }
                if started.elapsed() > WORKER_START_TIMEOUT {
                    return Err(EngineError::Timeout {
                        what: format!(
                            "the apply worker of {} ({}) to stream from the slot",
                            s.name, s.database
                        ),
                        seconds: WORKER_START_TIMEOUT.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let summary = format!("{} apply worker(s) streaming", workers.len());
        Ok((json!({ "workers": workers }), summary))
    }
}
