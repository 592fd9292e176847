//! The blue/green strategy's steps: the platform's own deployment (RDS and Aurora
//! Blue/Green with a `TargetKmsKeyId` for each blue resource) made or found again, then
//! green awaited and each green resource's encryption checked before anything can be
//! switched. The platform replicates; pgseal journals, checks and cleans up.
//!
//! Crash safety: the deployment is recorded as a resource (by its name,
//! `pgseal-<migration>`) before it is asked for, and the platform names and tags it after
//! the migration, so a run killed after the request finds it again instead of making a
//! second one, and `abort` deletes it (with green) whatever the run got to.

use pgseal_platform::Platform;
use serde_json::json;

use super::{Engine, EngineError, StepResult};
use crate::journal::{INSTANCE, MigrationSpec};
use crate::steps::Strategy;

/// The journal's resource kind of a blue/green deployment.
pub const DEPLOYMENT: &str = "blue_green";

impl<P: Platform> Engine<'_, P> {
    /// Logical replication on at the source (what blue/green replicates with), then the
    /// deployment made, or found when an earlier run made it.
    pub(super) async fn create_deployment(&self) -> StepResult {
        let (_, restarted) = self.ensure_logical_wal().await?;
        let name = &self.spec.name;
        self.journal
            .add_resource(name, DEPLOYMENT, INSTANCE, &format!("pgseal-{name}"))?;
        let (deployment, adopted) = self
            .platform
            .create_blue_green(name, &self.spec.source, &self.spec.key)
            .await
            .map_err(Self::platform_error("creating the blue/green deployment"))?;
        let summary = format!(
            "blue/green deployment {} ({}) {} for {}{}",
            deployment.name,
            deployment.id,
            if adopted {
                "found, made by an earlier run,"
            } else {
                "made"
            },
            deployment.source,
            if restarted {
                "; the source was restarted for logical replication"
            } else {
                ""
            }
        );
        Ok((
            json!({ "deployment": deployment, "adopted": adopted, "restarted": restarted }),
            summary,
        ))
    }

    /// Waits for green, then checks every green resource is encrypted under the key:
    /// refused otherwise, with nothing switched.
    pub(super) async fn green_ready(&self) -> StepResult {
        let name = &self.spec.name;
        let deployment = self
            .platform
            .wait_blue_green(name)
            .await
            .map_err(Self::platform_error("waiting for green"))?;
        let green = self
            .platform
            .green_resources(name, &self.spec.key)
            .await
            .map_err(Self::platform_error("describing green"))?;
        let problems: Vec<&str> = green.iter().filter_map(|g| g.problem.as_deref()).collect();
        if green.is_empty() || !problems.is_empty() {
            return Err(EngineError::Precondition(format!(
                "green is not encrypted under {}: {}; nothing was switched. `pgseal migrate abort {name}` deletes the deployment and green",
                self.spec.key,
                if problems.is_empty() {
                    "the deployment has no green resource".to_string()
                } else {
                    problems.join("; ")
                }
            )));
        }
        let summary = format!(
            "deployment {} is {}; {} green resource(s) encrypted under {} ({})",
            deployment.id,
            deployment.status,
            green.len(),
            self.spec.key,
            green
                .iter()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((json!({ "deployment": deployment, "green": green }), summary))
    }
}

/// Refuses `what` (`cutover`, `validate`) on a blue/green migration: pgseal does not yet
/// compare green with blue, and switching over without that proof is what the strategy
/// exists to avoid. The message gives the way the platform offers.
pub fn refuse_unproven(spec: &MigrationSpec, what: &str) -> Result<(), EngineError> {
    if spec.strategy != Strategy::BlueGreen {
        return Ok(());
    }
    Err(EngineError::Precondition(format!(
        "`migrate {what}` of a blue-green migration is not built yet: pgseal cannot yet compare green with blue, and it switches nothing over without that proof. Green is made, encrypted and replicated by AWS (see `pgseal migrate status {name}`); to switch without pgseal's proof, run `aws rds switchover-blue-green-deployment` on deployment pgseal-{name}; `pgseal migrate abort {name}` deletes the deployment and green",
        name = spec.name
    )))
}
