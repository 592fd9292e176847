//! RDS and Aurora Blue/Green deployments under a target KMS key: the platform's own way to
//! encrypt an unencrypted source or move it to another key (`CreateBlueGreenDeployment`
//! with `TargetResourceConfigurations`, one `TargetKmsKeyId` per blue resource: the
//! instance and each of its read replicas on RDS, the cluster on Aurora).
//!
//! AWS runs the replication; pgseal names the deployment after the migration
//! (`pgseal-<migration>`) and tags it, so a run killed after `CreateBlueGreenDeployment`
//! returned finds and adopts the deployment instead of making a second one, and checks
//! every green resource's encryption before anything is switched.

use aws_sdk_rds::types::{BlueGreenDeployment, Filter, Tag, TargetResourceConfiguration};
use pgseal_platform::{BlueGreen, BlueGreenPlan, GreenResource, ReplicationMethod};

use crate::error::{AwsError, Result, api};
use crate::platform::{AwsPlatform, Described};
use crate::settings::Flavor;
use crate::wait::{self, Poll};

/// The tag a deployment pgseal made carries: the migration's name.
pub const MIGRATION_TAG: &str = "pgseal:migration";

/// The deployment's status once green is ready to be switched to.
pub const AVAILABLE: &str = "AVAILABLE";

/// The deployment name of migration `migration`.
pub fn deployment_name(migration: &str) -> String {
    format!("pgseal-{migration}")
}

/// The last part of an ARN (`arn:aws:rds:...:db:prod` → `prod`).
pub fn arn_id(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// The ARNs of `deployment`'s green resources: each member's green twin and the green
/// target, once each.
fn green_arns(deployment: &BlueGreen) -> Vec<&str> {
    let mut arns: Vec<&str> = deployment.members.iter().map(|(_, g)| g.as_str()).collect();
    arns.extend(deployment.target.as_deref());
    arns.sort_unstable();
    arns.dedup();
    arns
}

fn from_sdk(d: &BlueGreenDeployment) -> BlueGreen {
    BlueGreen {
        id: d
            .blue_green_deployment_identifier()
            .unwrap_or("")
            .to_string(),
        name: d.blue_green_deployment_name().unwrap_or("").to_string(),
        status: d.status().unwrap_or("unknown").to_string(),
        status_details: d.status_details().map(str::to_string),
        source: d.source().unwrap_or("").to_string(),
        target: d.target().map(str::to_string),
        members: d
            .switchover_details()
            .iter()
            .filter_map(|s| {
                Some((
                    s.source_member()?.to_string(),
                    s.target_member()?.to_string(),
                ))
            })
            .collect(),
        method: None,
    }
}

/// The major and minor numbers of an engine version (`15.4` → (15, 4); `17` → (17, 0)).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// The lowest minor version of each RDS for PostgreSQL major version from which AWS makes
/// a blue/green deployment with a major version upgrade (RDS User Guide, "PostgreSQL
/// replication methods for blue/green deployments"); 16 and later from 16.1.
fn upgrade_floor(major: u32) -> Option<u32> {
    match major {
        11 => Some(21),
        12 => Some(16),
        13 => Some(12),
        14 => Some(9),
        15 => Some(4),
        m if m >= 16 => Some(1),
        _ => None,
    }
}

/// How AWS replicates a blue/green deployment of a source on engine version
/// `source_version` (`aurora`: Aurora PostgreSQL) with green on major version `target`
/// (`None`: the source's), as its documentation states: Aurora PostgreSQL logically;
/// RDS for PostgreSQL physically at the same major version and logically with a major
/// version upgrade (from the minor versions [`upgrade_floor`] names).
pub fn replication_method(
    aurora: bool,
    source_version: &str,
    target: Option<u32>,
) -> Result<(ReplicationMethod, String)> {
    let (major, minor) = major_minor(source_version).ok_or_else(|| {
        AwsError::Precondition(format!(
            "the source's engine version {source_version:?} is not a PostgreSQL version"
        ))
    })?;
    let target = target.unwrap_or(major);
    if target < major {
        return Err(AwsError::Precondition(format!(
            "a blue/green deployment cannot move {source_version} down to PostgreSQL {target}"
        )));
    }
    if aurora {
        let why = if target > major {
            format!(
                "Aurora PostgreSQL replicates blue/green logically; green is upgraded from {source_version} to {target}"
            )
        } else {
            format!("Aurora PostgreSQL replicates blue/green logically ({source_version})")
        };
        return Ok((ReplicationMethod::Logical, why));
    }
    if target == major {
        return Ok((
            ReplicationMethod::Physical,
            format!(
                "RDS for PostgreSQL at the same major version ({source_version} on both sides) replicates blue/green physically"
            ),
        ));
    }
    match upgrade_floor(major) {
        Some(floor) if minor >= floor => Ok((
            ReplicationMethod::Logical,
            format!(
                "RDS for PostgreSQL replicates blue/green logically when green is upgraded ({source_version} to {target})"
            ),
        )),
        Some(floor) => Err(AwsError::Precondition(format!(
            "AWS makes a blue/green deployment with a major version upgrade only from {major}.{floor}; the source runs {source_version}: upgrade its minor version first"
        ))),
        None => Err(AwsError::Precondition(format!(
            "AWS makes no blue/green deployment with a major version upgrade from {source_version}"
        ))),
    }
}

impl AwsPlatform {
    /// How a blue/green deployment of `source` with green on major version
    /// `engine_version` would replicate (see [`replication_method`]).
    pub async fn plan_deployment(
        &self,
        source: &str,
        engine_version: Option<u32>,
    ) -> Result<BlueGreenPlan> {
        let id = self.resolve(source).await?;
        let described = self.describe_raw(&id).await?;
        let version = described.engine_version().unwrap_or_default().to_string();
        let (method, why) = replication_method(
            self.settings.flavor == Flavor::Aurora,
            &version,
            engine_version,
        )?;
        Ok(BlueGreenPlan {
            method,
            why,
            source_version: version,
        })
    }

    /// How `deployment` replicates, read from its resources: green's engine version
    /// against blue's (a higher major version is an upgrade, replicated logically), and
    /// the engine; `None` while it has no green.
    pub async fn deployment_method(
        &self,
        deployment: &BlueGreen,
    ) -> Result<Option<ReplicationMethod>> {
        let Some(green) = deployment.target.as_deref() else {
            return Ok(None);
        };
        let version = async |arn: &str| -> Result<String> {
            let described = self.describe_raw(arn_id(arn)).await?;
            Ok(described.engine_version().unwrap_or_default().to_string())
        };
        let (blue, green) = (version(&deployment.source).await?, version(green).await?);
        let target = major_minor(&green).map(|(major, _)| major);
        Ok(Some(
            replication_method(self.settings.flavor == Flavor::Aurora, &blue, target)?.0,
        ))
    }

    /// The ARNs blue/green makes a green copy of for `source`, each of which gets its own
    /// `TargetKmsKeyId`: the instance and each of its read replicas (RDS), or the cluster
    /// (Aurora).
    pub async fn blue_resources(&self, source: &str) -> Result<Vec<String>> {
        let id = self.resolve(source).await?;
        let described = self.describe_raw(&id).await?;
        let arn = |d: &Described| match d {
            Described::Rds(i) => i.db_instance_arn().map(str::to_string),
            Described::Aurora(c) => c.db_cluster_arn().map(str::to_string),
        };
        let mut arns = vec![
            arn(&described).ok_or_else(|| AwsError::Precondition(format!("{id} has no ARN")))?,
        ];
        if let Described::Rds(instance) = &described {
            for replica in instance.read_replica_db_instance_identifiers() {
                let replica = self.describe_db_instance(replica).await?;
                arns.extend(replica.db_instance_arn().map(str::to_string));
            }
        }
        Ok(arns)
    }

    /// What on the account keeps `source` from a blue/green deployment, as AWS documents
    /// its limits: an RDS Proxy in front of it, cascading or cross-Region read replicas, a
    /// Multi-AZ DB cluster. Empty when nothing does.
    pub async fn blue_green_blockers(&self, source: &str) -> Result<Vec<String>> {
        let id = self.resolve(source).await?;
        let mut found = Vec::new();
        if let Described::Rds(instance) = self.describe_raw(&id).await? {
            if let Some(cluster) = instance.db_cluster_identifier() {
                found.push(format!("{id} belongs to Multi-AZ DB cluster {cluster}"));
            }
            let region = instance
                .db_instance_arn()
                .and_then(|a| a.split(':').nth(3))
                .unwrap_or_default()
                .to_string();
            for replica in instance.read_replica_db_instance_identifiers() {
                if replica.starts_with("arn:") && replica.split(':').nth(3) != Some(region.as_str())
                {
                    found.push(format!("cross-Region read replica {replica}"));
                    continue;
                }
                let described = self.describe_db_instance(arn_id(replica)).await?;
                for cascaded in described.read_replica_db_instance_identifiers() {
                    found.push(format!("cascading read replica {replica} -> {cascaded}"));
                }
            }
        }
        let proxies = self
            .rds
            .describe_db_proxies()
            .send()
            .await
            .map_err(|e| api("DescribeDBProxies", e))?;
        for proxy in proxies.db_proxies() {
            let Some(proxy_name) = proxy.db_proxy_name() else {
                continue;
            };
            let targets = self
                .rds
                .describe_db_proxy_targets()
                .db_proxy_name(proxy_name)
                .send()
                .await
                .map_err(|e| api("DescribeDBProxyTargets", e))?;
            if targets
                .targets()
                .iter()
                .any(|t| t.rds_resource_id() == Some(id.as_str()))
            {
                found.push(format!("RDS Proxy {proxy_name} in front of {id}"));
            }
        }
        Ok(found)
    }

    /// The deployment of migration `migration`, if one exists: found by its name and
    /// checked to carry pgseal's tag for the migration (a deployment of that name that
    /// pgseal did not make is refused).
    pub async fn find_deployment(&self, migration: &str) -> Result<Option<BlueGreen>> {
        let name = deployment_name(migration);
        let out = self
            .rds
            .describe_blue_green_deployments()
            .filters(
                Filter::builder()
                    .name("blue-green-deployment-name")
                    .values(&name)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api("DescribeBlueGreenDeployments", e))?;
        let Some(found) = out
            .blue_green_deployments()
            .iter()
            .find(|d| d.blue_green_deployment_name() == Some(name.as_str()))
        else {
            return Ok(None);
        };
        let ours = found
            .tag_list()
            .iter()
            .any(|t| t.key() == Some(MIGRATION_TAG) && t.value() == Some(migration));
        if !ours {
            return Err(AwsError::Precondition(format!(
                "a blue/green deployment named {name} exists but pgseal did not make it for migration {migration} (no {MIGRATION_TAG} tag): delete it or choose another --name"
            )));
        }
        Ok(Some(from_sdk(found)))
    }

    /// Creates the deployment of migration `migration` for `source` with every blue
    /// resource's green encrypted under `key_arn` (and on major version `engine_version`
    /// when given: `TargetEngineVersion` beside the target configurations), or adopts the one an earlier run made.
    /// Returns it and whether it was adopted.
    pub async fn create_deployment(
        &self,
        migration: &str,
        source: &str,
        key_arn: &str,
        engine_version: Option<u32>,
    ) -> Result<(BlueGreen, bool)> {
        if let Some(existing) = self.find_deployment(migration).await? {
            tracing::info!(migration, id = %existing.id, "adopting the blue/green deployment an earlier run made");
            return Ok((existing, true));
        }
        let blue = self.blue_resources(source).await?;
        let mut request = self
            .rds
            .create_blue_green_deployment()
            .blue_green_deployment_name(deployment_name(migration))
            .source(&blue[0])
            // A major version upgrade in the same deployment (logical replication).
            .set_target_engine_version(engine_version.map(|v| v.to_string()))
            .tags(Tag::builder().key(MIGRATION_TAG).value(migration).build());
        for arn in &blue {
            request = request.target_resource_configurations(
                TargetResourceConfiguration::builder()
                    .source_arn(arn)
                    .target_kms_key_id(key_arn)
                    .build()
                    .map_err(|e| {
                        AwsError::InvalidInput(format!("a target configuration for {arn}: {e}"))
                    })?,
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| api("CreateBlueGreenDeployment", e))?;
        let made = out.blue_green_deployment().ok_or_else(|| AwsError::Api {
            operation: "CreateBlueGreenDeployment",
            code: None,
            message: "no deployment in the answer".into(),
        })?;
        tracing::info!(migration, id = ?made.blue_green_deployment_identifier(), resources = blue.len(), "blue/green deployment created");
        Ok((from_sdk(made), false))
    }

    /// Migration `migration`'s deployment; an error when there is none.
    pub async fn our_deployment(&self, migration: &str) -> Result<BlueGreen> {
        self.find_deployment(migration).await?.ok_or_else(|| {
            AwsError::NotFound(format!(
                "no blue/green deployment {} (of migration {migration})",
                deployment_name(migration)
            ))
        })
    }

    /// The deployment `id` as AWS describes it now; `None` when it is gone.
    pub async fn describe_deployment(&self, id: &str) -> Result<Option<BlueGreen>> {
        let out = self
            .rds
            .describe_blue_green_deployments()
            .blue_green_deployment_identifier(id)
            .send()
            .await;
        match out {
            Ok(out) => Ok(out.blue_green_deployments().first().map(from_sdk)),
            Err(e) => match api("DescribeBlueGreenDeployments", e) {
                AwsError::Api {
                    code: Some(code), ..
                } if code.starts_with("BlueGreenDeploymentNotFound") => Ok(None),
                AwsError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Waits (with progress, up to the platform's wait timeout) until deployment `id` is
    /// available: green made and replicating.
    pub async fn wait_deployment_available(&self, id: &str) -> Result<BlueGreen> {
        wait::until(
            &self.progress,
            &format!("blue/green deployment {id} to be available"),
            self.settings.wait_timeout,
            self.settings.poll_interval,
            || async {
                match self.describe_deployment(id).await? {
                    None => Err(AwsError::NotFound(format!(
                        "blue/green deployment {id} is gone"
                    ))),
                    Some(d) if d.status == AVAILABLE => Ok(Poll::Done(d)),
                    Some(d) if d.status.contains("FAILED") || d.status.contains("INVALID") => {
                        Err(AwsError::Precondition(format!(
                            "blue/green deployment {id} is {}: {}",
                            d.status,
                            d.status_details.as_deref().unwrap_or("no details")
                        )))
                    }
                    Some(d) => Ok(Poll::Pending(d.status)),
                }
            },
        )
        .await
    }

    /// Every green resource of `deployment` with its encryption, checked against
    /// `key_arn`: the green instance and its replicas (RDS), or the green cluster (Aurora).
    pub async fn deployment_green(
        &self,
        deployment: &BlueGreen,
        key_arn: &str,
    ) -> Result<Vec<GreenResource>> {
        let mut found = Vec::new();
        for arn in green_arns(deployment) {
            let id = arn_id(arn);
            let described = match self.settings.flavor {
                Flavor::Aurora if arn.contains(":cluster:") => {
                    Described::Aurora(Box::new(self.describe_db_cluster(id).await?))
                }
                _ => Described::Rds(Box::new(self.describe_db_instance(id).await?)),
            };
            let (encrypted, key_id) = (described.encrypted(), described.key_id());
            let problem = (!(encrypted && key_id == Some(key_arn))).then(|| {
                format!(
                    "green {id} is StorageEncrypted={encrypted}, KmsKeyId={}, not under {key_arn}",
                    key_id.unwrap_or("none")
                )
            });
            found.push(GreenResource {
                id: id.to_string(),
                encrypted,
                key_id: key_id.map(str::to_string),
                problem,
            });
        }
        Ok(found)
    }

    /// Switches deployment `id` over (AWS renames green to blue's names) and waits until
    /// the switchover completed; `timeout_s` is AWS's own switchover timeout.
    pub async fn switchover_deployment(&self, id: &str, timeout_s: i32) -> Result<BlueGreen> {
        self.rds
            .switchover_blue_green_deployment()
            .blue_green_deployment_identifier(id)
            .switchover_timeout(timeout_s)
            .send()
            .await
            .map_err(|e| api("SwitchoverBlueGreenDeployment", e))?;
        wait::until(
            &self.progress,
            &format!("blue/green deployment {id} to switch over"),
            self.settings.wait_timeout,
            self.settings.poll_interval,
            || async {
                match self.describe_deployment(id).await? {
                    Some(d) if d.status == "SWITCHOVER_COMPLETED" => Ok(Poll::Done(d)),
                    Some(d) if d.status == "SWITCHOVER_FAILED" => {
                        Err(AwsError::Precondition(format!(
                            "the switchover of {id} failed: {}",
                            d.status_details.as_deref().unwrap_or("no details")
                        )))
                    }
                    Some(d) => Ok(Poll::Pending(d.status)),
                    None => Err(AwsError::NotFound(format!(
                        "blue/green deployment {id} is gone"
                    ))),
                }
            },
        )
        .await
    }

    /// Deletes deployment `id`, and its green resources with it when `delete_target`
    /// (before a switchover: what abort does). A deployment already gone is no error.
    pub async fn delete_deployment(&self, id: &str, delete_target: bool) -> Result<()> {
        let Some(deployment) = self.describe_deployment(id).await? else {
            return Ok(());
        };
        let greens: Vec<String> = if delete_target {
            green_arns(&deployment)
                .into_iter()
                .map(|a| arn_id(a).to_string())
                .collect()
        } else {
            Vec::new()
        };
        let out = self
            .rds
            .delete_blue_green_deployment()
            .blue_green_deployment_identifier(id)
            .delete_target(delete_target)
            .send()
            .await;
        match out.map_err(|e| api("DeleteBlueGreenDeployment", e)) {
            Ok(_) => {}
            Err(AwsError::Api {
                code: Some(code), ..
            }) if code.starts_with("BlueGreenDeploymentNotFound") => {}
            Err(e) => return Err(e),
        }
        for green in greens {
            self.wait_gone(&green, &format!("green {green}")).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_follows_awss_table_and_refuses_what_aws_refuses() {
        use ReplicationMethod::{Logical, Physical};
        let cases = [
            // RDS at the same major version (no upgrade, or none asked): physical.
            (false, "15.4", None, Physical),
            (false, "15.2", Some(15), Physical),
            // RDS with a major version upgrade from a supported minor: logical.
            (false, "15.4", Some(17), Logical),
            (false, "16.1", Some(17), Logical),
            (false, "14.9", Some(16), Logical),
            // Aurora PostgreSQL: always logical.
            (true, "15.4", None, Logical),
            (true, "15.4", Some(16), Logical),
        ];
        for (aurora, version, target, expected) in cases {
            let (method, _) = replication_method(aurora, version, target).unwrap();
            assert_eq!(method, expected, "{aurora} {version} {target:?}");
        }
        let method = |aurora, version, target| replication_method(aurora, version, target);
        // Below the documented floor, or downwards: refused, naming what to do.
        let refused = method(false, "15.3", Some(17)).unwrap_err().to_string();
        assert!(refused.contains("only from 15.4"), "{refused}");
        assert!(method(false, "16.0", Some(17)).is_err());
        assert!(method(false, "15.4", Some(14)).is_err());
        assert!(method(false, "garbage", None).is_err());
        assert_eq!(major_minor("17"), Some((17, 0)));
    }
}
