//! Snapshots: `CreateDBSnapshot`/`CopyDBSnapshot` (RDS) and their cluster forms (Aurora).
//! A copy with `KmsKeyId` is how a plain RDS snapshot becomes encrypted.

use pgseal_platform::Snapshot;

use crate::error::{AwsError, Result, api};
use crate::platform::AwsPlatform;
use crate::settings::Flavor;
use crate::wait::{self, Poll};

/// A snapshot's facts, whatever its flavor.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFacts {
    pub status: String,
    pub encrypted: bool,
    pub key_id: Option<String>,
    /// The instance or cluster it was taken of.
    pub origin: Option<String>,
    /// The engine (`postgres`, `aurora-postgresql`).
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    /// The key a restore must encrypt under (tag `pgseal:restore-key`).
    pub restore_key: Option<String>,
}

/// The tag that carries the key a plain Aurora snapshot is to be restored under.
pub const RESTORE_KEY_TAG: &str = "pgseal:restore-key";

fn tag_value(tags: &[aws_sdk_rds::types::Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

impl AwsPlatform {
    /// The snapshot `name`, if it exists (in any status).
    pub(crate) async fn find_snapshot(&self, name: &str) -> Result<Option<SnapshotFacts>> {
        let found = match self.settings.flavor {
            Flavor::Rds => self
                .rds
                .describe_db_snapshots()
                .db_snapshot_identifier(name)
                .send()
                .await
                .map_err(|e| api("DescribeDBSnapshots", e))
                .map(|out| {
                    out.db_snapshots().first().map(|s| SnapshotFacts {
                        status: s.status().unwrap_or("unknown").to_string(),
                        encrypted: s.encrypted().unwrap_or(false),
                        key_id: s.kms_key_id().map(str::to_string),
                        origin: s.db_instance_identifier().map(str::to_string),
                        engine: s.engine().map(str::to_string),
                        engine_version: s.engine_version().map(str::to_string),
                        restore_key: tag_value(s.tag_list(), RESTORE_KEY_TAG),
                    })
                }),
            Flavor::Aurora => self
                .rds
                .describe_db_cluster_snapshots()
                .db_cluster_snapshot_identifier(name)
                .send()
                .await
                .map_err(|e| api("DescribeDBClusterSnapshots", e))
                .map(|out| {
                    out.db_cluster_snapshots().first().map(|s| SnapshotFacts {
                        status: s.status().unwrap_or("unknown").to_string(),
                        encrypted: s.storage_encrypted().unwrap_or(false),
                        key_id: s.kms_key_id().map(str::to_string),
                        origin: s.db_cluster_identifier().map(str::to_string),
                        engine: s.engine().map(str::to_string),
                        engine_version: s.engine_version().map(str::to_string),
                        restore_key: tag_value(s.tag_list(), RESTORE_KEY_TAG),
                    })
                }),
        };
        match found {
            Ok(found) => Ok(found),
            Err(AwsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts a snapshot of the instance or cluster `id`; `restore_key` is recorded on it
    /// (a tag) as the key its restore must use.
    pub(crate) async fn start_snapshot(
        &self,
        id: &str,
        name: &str,
        restore_key: Option<&str>,
    ) -> Result<()> {
        let tags: Vec<aws_sdk_rds::types::Tag> = restore_key
            .map(|k| {
                aws_sdk_rds::types::Tag::builder()
                    .key(RESTORE_KEY_TAG)
                    .value(k)
                    .build()
            })
            .into_iter()
            .collect();
        (self.progress)(&format!("snapshotting {id} as {name}"));
        match self.settings.flavor {
            Flavor::Rds => self
                .rds
                .create_db_snapshot()
                .db_instance_identifier(id)
                .db_snapshot_identifier(name)
                .set_tags(Some(tags))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| api("CreateDBSnapshot", e)),
            Flavor::Aurora => self
                .rds
                .create_db_cluster_snapshot()
                .db_cluster_identifier(id)
                .db_cluster_snapshot_identifier(name)
                .set_tags(Some(tags))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| api("CreateDBClusterSnapshot", e)),
        }
    }

    /// Waits until snapshot `name` is available; fails when it failed.
    pub(crate) async fn wait_snapshot(&self, name: &str) -> Result<Snapshot> {
        let facts = wait::until(
            &self.progress,
            &format!("snapshot {name}"),
            self.settings.wait_timeout,
            self.settings.poll_interval,
            || async {
                match self.find_snapshot(name).await? {
                    Some(f) if f.status == "available" => Ok(Poll::Done(f)),
                    Some(f) if f.status == "failed" || f.status == "error" => {
                        Err(AwsError::Precondition(format!(
                            "snapshot {name} failed on AWS; abort the migration and look at the RDS events"
                        )))
                    }
                    Some(f) => Ok(Poll::Pending(f.status)),
                    None => Err(AwsError::NotFound(format!("snapshot {name} not found"))),
                }
            },
        )
        .await?;
        Ok(Snapshot {
            name: name.to_string(),
            encrypted: facts.encrypted,
            key_id: facts.key_id,
            end_lsn: None,
            restore_key: facts.restore_key,
        })
    }

    /// Copies snapshot `source` as `name` encrypted under `key` (unless that copy exists)
    /// and waits for it.
    pub(crate) async fn copy_snapshot(
        &self,
        source: &str,
        name: &str,
        key: &str,
    ) -> Result<Snapshot> {
        if self.find_snapshot(name).await?.is_none() {
            (self.progress)(&format!(
                "copying snapshot {source} to {name} under KMS key {key}"
            ));
            match self.settings.flavor {
                Flavor::Rds => self
                    .rds
                    .copy_db_snapshot()
                    .source_db_snapshot_identifier(source)
                    .target_db_snapshot_identifier(name)
                    .kms_key_id(key)
                    .copy_tags(true)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| api("CopyDBSnapshot", e))?,
                Flavor::Aurora => self
                    .rds
                    .copy_db_cluster_snapshot()
                    .source_db_cluster_snapshot_identifier(source)
                    .target_db_cluster_snapshot_identifier(name)
                    .kms_key_id(key)
                    .copy_tags(true)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| api("CopyDBClusterSnapshot", e))?,
            }
        }
        self.wait_snapshot(name).await
    }

    /// Deletes snapshot `name` ([`AwsError::NotFound`] when it is gone already).
    pub(crate) async fn delete_snapshot_raw(&self, name: &str) -> Result<()> {
        let result = match self.settings.flavor {
            Flavor::Rds => self
                .rds
                .delete_db_snapshot()
                .db_snapshot_identifier(name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| api("DeleteDBSnapshot", e)),
            Flavor::Aurora => self
                .rds
                .delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| api("DeleteDBClusterSnapshot", e)),
        };
        match result {
            Err(AwsError::NotFound(_)) => {
                Err(AwsError::NotFound(format!("snapshot {name} not found")))
            }
            other => other,
        }
    }
}
