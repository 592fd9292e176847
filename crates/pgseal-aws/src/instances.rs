//! Instances (RDS) and clusters (Aurora): describe, restore from a snapshot with the
//! source's settings, reboot, delete.

use aws_sdk_rds::types::{DbCluster, DbInstance, Tag};

use crate::error::{AwsError, Result, api};
use crate::platform::{AwsPlatform, Described, SNAPSHOT_TAG};
use crate::snapshots::SnapshotFacts;
use crate::wait::Goal;

/// What PostgreSQL log type RDS exports to CloudWatch Logs (the handoff line is in it).
const LOG_EXPORT: &str = "postgresql";

impl AwsPlatform {
    /// `DescribeDBInstances` of one instance.
    pub(crate) async fn describe_db_instance(&self, id: &str) -> Result<DbInstance> {
        let out = self
            .rds
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .map_err(|e| api("DescribeDBInstances", e))?;
        out.db_instances()
            .first()
            .cloned()
            .ok_or_else(|| AwsError::NotFound(format!("RDS instance {id} not found")))
    }

    /// `DescribeDBClusters` of one cluster.
    pub(crate) async fn describe_db_cluster(&self, id: &str) -> Result<DbCluster> {
        let out = self
            .rds
            .describe_db_clusters()
            .db_cluster_identifier(id)
            .send()
            .await
            .map_err(|e| api("DescribeDBClusters", e))?;
        out.db_clusters()
            .first()
            .cloned()
            .ok_or_else(|| AwsError::NotFound(format!("Aurora cluster {id} not found")))
    }

    /// A snapshot's facts, and the instance or cluster it was taken of, as it is now.
    async fn snapshot_origin(&self, snapshot: &str) -> Result<(SnapshotFacts, Described)> {
        let facts = self
            .find_snapshot(snapshot)
            .await?
            .ok_or_else(|| AwsError::NotFound(format!("snapshot {snapshot} not found")))?;
        let origin = facts.origin.clone().ok_or_else(|| {
            AwsError::Precondition(format!("snapshot {snapshot} names no source"))
        })?;
        let described = self.describe_raw(&origin).await.map_err(|e| match e {
            AwsError::NotFound(_) => AwsError::Precondition(format!(
                "{origin}, which snapshot {snapshot} was taken of, is gone: pgseal restores with its instance class, parameter group, subnet group and security groups"
            )),
            other => other,
        })?;
        Ok((facts, described))
    }

    /// Restores RDS snapshot `snapshot` as instance `id` with the source's instance class,
    /// parameter group, subnet group, security groups, port and availability settings, and
    /// the `postgresql` log exported to CloudWatch Logs; waits until it is available.
    pub(crate) async fn restore_db_instance(&self, snapshot: &str, id: &str) -> Result<()> {
        // Already restored (or still restoring) from this snapshot: wait for it.
        match self.describe_db_instance(id).await {
            Ok(i) => {
                let tag = Described::Rds(Box::new(i)).to_instance(id).source_snapshot;
                if tag.as_deref() != Some(snapshot) {
                    return Err(AwsError::Precondition(format!(
                        "instance {id} exists and was not restored from {snapshot}"
                    )));
                }
            }
            Err(AwsError::NotFound(_)) => self.start_instance_restore(snapshot, id).await?,
            Err(e) => return Err(e),
        }
        self.wait_until_available(id, &format!("instance {id}"))
            .await
    }

    /// Sends `RestoreDBInstanceFromDBSnapshot` with the source's settings.
    async fn start_instance_restore(&self, snapshot: &str, id: &str) -> Result<()> {
        let (_, Described::Rds(source)) = self.snapshot_origin(snapshot).await? else {
            unreachable!("an RDS platform describes instances")
        };
        let mut request = self
            .rds
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(id)
            .db_snapshot_identifier(snapshot)
            .enable_cloudwatch_logs_exports(LOG_EXPORT)
            .tags(snapshot_tag(snapshot))
            .copy_tags_to_snapshot(true)
            .set_db_instance_class(source.db_instance_class().map(str::to_string))
            .set_multi_az(source.multi_az())
            .set_publicly_accessible(source.publicly_accessible())
            .set_db_subnet_group_name(
                source
                    .db_subnet_group()
                    .and_then(|g| g.db_subnet_group_name())
                    .map(str::to_string),
            )
            .set_port(source.endpoint().and_then(|e| e.port()));
        if let Some(group) = source
            .db_parameter_groups()
            .first()
            .and_then(|g| g.db_parameter_group_name())
        {
            request = request.db_parameter_group_name(group);
        }
        for group in source.vpc_security_groups() {
            if let Some(sg) = group.vpc_security_group_id() {
                request = request.vpc_security_group_ids(sg);
            }
        }
        (self.progress)(&format!(
            "restoring {snapshot} as {id} ({})",
            source.db_instance_class().unwrap_or("?")
        ));
        request
            .send()
            .await
            .map_err(|e| api("RestoreDBInstanceFromDBSnapshot", e))?;
        Ok(())
    }

    /// Restores Aurora cluster snapshot `snapshot` as cluster `id` encrypted under `key`
    /// (else the key recorded with the snapshot, else the snapshot's own), with the source
    /// cluster's settings, adds a writer instance of the source writer's class, and waits
    /// until both are available. What exists already is waited for, not made again.
    pub(crate) async fn restore_db_cluster(
        &self,
        snapshot: &str,
        id: &str,
        key: Option<&str>,
    ) -> Result<()> {
        let (facts, Described::Aurora(source)) = self.snapshot_origin(snapshot).await? else {
            unreachable!("an Aurora platform describes clusters")
        };
        let engine = facts
            .engine
            .or_else(|| source.engine().map(str::to_string))
            .unwrap_or_else(|| "aurora-postgresql".into());
        if self.status_of(id).await?.is_none() {
            let mut request = self
                .rds
                .restore_db_cluster_from_snapshot()
                .db_cluster_identifier(id)
                .snapshot_identifier(snapshot)
                .engine(&engine)
                .set_engine_version(facts.engine_version)
                .set_kms_key_id(
                    key.map(str::to_string)
                        .or(facts.restore_key)
                        .or(facts.key_id),
                )
                .enable_cloudwatch_logs_exports(LOG_EXPORT)
                .tags(snapshot_tag(snapshot))
                .set_db_subnet_group_name(source.db_subnet_group().map(str::to_string))
                .set_db_cluster_parameter_group_name(
                    source.db_cluster_parameter_group().map(str::to_string),
                )
                .set_port(source.port());
            for group in source.vpc_security_groups() {
                if let Some(sg) = group.vpc_security_group_id() {
                    request = request.vpc_security_group_ids(sg);
                }
            }
            (self.progress)(&format!("restoring {snapshot} as cluster {id}"));
            request
                .send()
                .await
                .map_err(|e| api("RestoreDBClusterFromSnapshot", e))?;
        }
        self.wait_until_available(id, &format!("cluster {id}"))
            .await?;
        let writer = format!("{id}-writer");
        if self.instance_status(&writer).await?.is_none() {
            let class = self
                .writer_class(&source)
                .await?
                .unwrap_or_else(|| "db.r6g.large".into());
            (self.progress)(&format!("adding writer {writer} ({class}) to {id}"));
            self.rds
                .create_db_instance()
                .db_instance_identifier(&writer)
                .db_cluster_identifier(id)
                .engine(&engine)
                .db_instance_class(class)
                .send()
                .await
                .map_err(|e| api("CreateDBInstance", e))?;
        }
        self.wait_instance_available(&writer).await
    }

    /// The instance class of a cluster's writer.
    async fn writer_class(&self, cluster: &DbCluster) -> Result<Option<String>> {
        match writer_of(cluster) {
            Some(writer) => Ok(self
                .describe_db_instance(&writer)
                .await?
                .db_instance_class()
                .map(str::to_string)),
            None => Ok(None),
        }
    }

    /// The status of RDS instance `id` (Aurora members too); `None` when it does not exist.
    async fn instance_status(&self, id: &str) -> Result<Option<String>> {
        match self.describe_db_instance(id).await {
            Ok(i) => Ok(Some(
                i.db_instance_status().unwrap_or("unknown").to_string(),
            )),
            Err(AwsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the RDS instance `id` (an Aurora member) is available.
    async fn wait_instance_available(&self, id: &str) -> Result<()> {
        self.wait_for(&format!("instance {id}"), Goal::Status("available"), || {
            self.instance_status(id)
        })
        .await
    }

    /// Deletes RDS instance `id` without a final snapshot and waits until it is gone.
    pub(crate) async fn delete_db_instance(&self, id: &str) -> Result<()> {
        self.rds
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .send()
            .await
            .map_err(|e| api("DeleteDBInstance", e))?;
        (self.progress)(&format!("deleting instance {id}"));
        self.wait_for(&format!("instance {id} to be deleted"), Goal::Gone, || {
            self.instance_status(id)
        })
        .await
    }

    /// Deletes Aurora cluster `id`: its instances first, then the cluster, without a final
    /// snapshot; waits until it is gone.
    pub(crate) async fn delete_db_cluster(&self, id: &str) -> Result<()> {
        let cluster = self.describe_db_cluster(id).await?;
        for member in cluster.db_cluster_members() {
            if let Some(instance) = member.db_instance_identifier() {
                match self.delete_db_instance(instance).await {
                    Ok(()) | Err(AwsError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.rds
            .delete_db_cluster()
            .db_cluster_identifier(id)
            .skip_final_snapshot(true)
            .send()
            .await
            .map_err(|e| api("DeleteDBCluster", e))?;
        self.wait_gone(id, &format!("cluster {id}")).await
    }

    /// Stops the RDS instance or Aurora cluster `id` and waits until it is stopped. (AWS
    /// starts a stopped instance again after seven days.)
    pub(crate) async fn stop(&self, id: &str) -> Result<()> {
        match self.describe_raw(id).await? {
            Described::Rds(_) => {
                self.rds
                    .stop_db_instance()
                    .db_instance_identifier(id)
                    .send()
                    .await
                    .map_err(|e| api("StopDBInstance", e))?;
            }
            Described::Aurora(_) => {
                self.rds
                    .stop_db_cluster()
                    .db_cluster_identifier(id)
                    .send()
                    .await
                    .map_err(|e| api("StopDBCluster", e))?;
            }
        }
        // Gone while stopping is an error, not "not there yet".
        self.wait_for(
            &format!("{id} to stop"),
            Goal::Status("stopped"),
            || async {
                match self.status_of(id).await? {
                    Some(status) => Ok(Some(status)),
                    None => Err(AwsError::NotFound(format!("{id} is gone"))),
                }
            },
        )
        .await
    }

    /// Reboots the RDS instance `id`, or the writer of Aurora cluster `id`, and waits
    /// until it is available with its parameters in sync.
    pub(crate) async fn reboot(&self, id: &str) -> Result<()> {
        let instance = match self.describe_raw(id).await? {
            Described::Rds(_) => id.to_string(),
            Described::Aurora(cluster) => writer_of(&cluster).ok_or_else(|| {
                AwsError::Precondition(format!("cluster {id} has no writer instance"))
            })?,
        };
        (self.progress)(&format!("rebooting {instance}"));
        self.rds
            .reboot_db_instance()
            .db_instance_identifier(&instance)
            .send()
            .await
            .map_err(|e| api("RebootDBInstance", e))?;
        crate::wait::until(
            &self.progress,
            &format!("{instance} to come back with its parameters in sync"),
            self.settings.wait_timeout,
            self.settings.poll_interval,
            || async {
                let i = self.describe_db_instance(&instance).await?;
                let status = i.db_instance_status().unwrap_or("unknown");
                let pending: Vec<&str> = i
                    .db_parameter_groups()
                    .iter()
                    .filter_map(|g| g.parameter_apply_status())
                    .filter(|s| *s != "in-sync")
                    .collect();
                if status == "available" && pending.is_empty() {
                    Ok(crate::wait::Poll::Done(()))
                } else {
                    Ok(crate::wait::Poll::Pending(format!(
                        "{status}{}",
                        if pending.is_empty() {
                            String::new()
                        } else {
                            format!(", parameters {}", pending.join(","))
                        }
                    )))
                }
            },
        )
        .await
    }
}

/// The writer instance of an Aurora cluster.
pub(crate) fn writer_of(cluster: &DbCluster) -> Option<String> {
    cluster
        .db_cluster_members()
        .iter()
        .find(|m| m.is_cluster_writer() == Some(true))
        .or_else(|| cluster.db_cluster_members().first())
        .and_then(|m| m.db_instance_identifier())
        .map(str::to_string)
}

fn snapshot_tag(snapshot: &str) -> Tag {
    Tag::builder().key(SNAPSHOT_TAG).value(snapshot).build()
}
