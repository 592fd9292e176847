//! Server parameters on AWS go through parameter groups. A default group (`default.*`)
//! cannot be changed, so pgseal copies it to `pgseal-<id>`, attaches the copy, and sets the
//! parameters there; `wal_level = logical` is `rds.logical_replication = 1` on AWS.

use std::collections::BTreeMap;

use aws_sdk_rds::types::{ApplyMethod, Parameter};
use pgseal_platform::ParamsChanged;

use crate::error::{AwsError, Result, api};
use crate::platform::{AwsPlatform, Described};

/// The AWS parameter for a PostgreSQL setting pgseal asks for.
fn aws_parameter(name: &str, value: &str) -> (String, String) {
    match (name, value) {
        ("wal_level", "logical") => ("rds.logical_replication".into(), "1".into()),
        _ => (name.to_string(), value.to_string()),
    }
}

/// The name of the custom group pgseal makes for instance or cluster `id`.
pub fn custom_group(id: &str) -> String {
    format!("pgseal-{id}")
}

/// A copy that a run before this one already made is fine.
fn already_there_is_fine<T>(copied: Result<T>) -> Result<()> {
    match copied {
        Ok(_) => Ok(()),
        Err(AwsError::Api { code: Some(c), .. }) if c == "DBParameterGroupAlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

impl AwsPlatform {
    /// Sets `params` on `id`'s (custom) parameter group; reboots when `restart` and a
    /// parameter waits for one.
    pub(crate) async fn set_parameters(
        &self,
        id: &str,
        params: &BTreeMap<String, String>,
        restart: bool,
    ) -> Result<ParamsChanged> {
        let group = self.writable_group(id).await?;
        let parameters: Vec<Parameter> = params
            .iter()
            .map(|(n, v)| {
                let (name, value) = aws_parameter(n, v);
                Parameter::builder()
                    .parameter_name(name)
                    .parameter_value(value)
                    .apply_method(ApplyMethod::PendingReboot)
                    .build()
            })
            .collect();
        let names: Vec<String> = parameters
            .iter()
            .filter_map(|p| p.parameter_name().map(str::to_string))
            .collect();
        (self.progress)(&format!(
            "setting {} in parameter group {group}",
            names.join(", ")
        ));
        match self.describe_raw(id).await? {
            Described::Rds(_) => {
                self.rds
                    .modify_db_parameter_group()
                    .db_parameter_group_name(&group)
                    .set_parameters(Some(parameters))
                    .send()
                    .await
                    .map_err(|e| api("ModifyDBParameterGroup", e))?;
            }
            Described::Aurora(_) => {
                self.rds
                    .modify_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(&group)
                    .set_parameters(Some(parameters))
                    .send()
                    .await
                    .map_err(|e| api("ModifyDBClusterParameterGroup", e))?;
            }
        }
        if restart {
            self.reboot(id).await?;
            Ok(ParamsChanged {
                applied: names,
                pending_restart: Vec::new(),
                restarted: true,
            })
        } else {
            Ok(ParamsChanged {
                applied: Vec::new(),
                pending_restart: names,
                restarted: false,
            })
        }
    }

    /// The parameter group of `id` that may be modified: its own custom group, or a copy
    /// of its default group made, attached and waited for now.
    async fn writable_group(&self, id: &str) -> Result<String> {
        let described = self.describe_raw(id).await?;
        let current = match &described {
            Described::Rds(i) => i
                .db_parameter_groups()
                .first()
                .and_then(|g| g.db_parameter_group_name())
                .map(str::to_string),
            Described::Aurora(c) => c.db_cluster_parameter_group().map(str::to_string),
        }
        .ok_or_else(|| AwsError::Precondition(format!("{id} reports no parameter group")))?;
        if !current.starts_with("default.") {
            return Ok(current);
        }
        let custom = custom_group(id);
        let description = format!("pgseal: {current} with logical replication, for {id}");
        (self.progress)(&format!(
            "{id} uses the default parameter group {current}: copying it to {custom}"
        ));
        match &described {
            Described::Rds(_) => {
                let copied = self
                    .rds
                    .copy_db_parameter_group()
                    .source_db_parameter_group_identifier(&current)
                    .target_db_parameter_group_identifier(&custom)
                    .target_db_parameter_group_description(&description)
                    .send()
                    .await
                    .map_err(|e| api("CopyDBParameterGroup", e));
                already_there_is_fine(copied)?;
                self.rds
                    .modify_db_instance()
                    .db_instance_identifier(id)
                    .db_parameter_group_name(&custom)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| api("ModifyDBInstance", e))?;
            }
            Described::Aurora(_) => {
                let copied = self
                    .rds
                    .copy_db_cluster_parameter_group()
                    .source_db_cluster_parameter_group_identifier(&current)
                    .target_db_cluster_parameter_group_identifier(&custom)
                    .target_db_cluster_parameter_group_description(&description)
                    .send()
                    .await
                    .map_err(|e| api("CopyDBClusterParameterGroup", e));
                already_there_is_fine(copied)?;
                self.rds
                    .modify_db_cluster()
                    .db_cluster_identifier(id)
                    .db_cluster_parameter_group_name(&custom)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| api("ModifyDBCluster", e))?;
            }
        }
        self.wait_until_available(id, &format!("{id} to take parameter group {custom}"))
            .await?;
        Ok(custom)
    }
}
