//! [`AwsPlatform`]: the [`Platform`] trait on RDS and Aurora PostgreSQL.
//!
//! Names the engine passes are the migration's names (`rds:prod` or `prod`, `prod-enc`);
//! the platform strips the flavor prefix and follows renames made at cutover, so the engine
//! never learns that `prod` is now called `prod-pre-pgseal`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pgseal_platform::{
    BlueGreen, BlueGreenPlan, GreenResource, Handoff, Instance, InstanceStatus, NewInstance,
    ParamsChanged, Platform, Snapshot,
};

use crate::error::{AwsError, Result, api};
use crate::settings::{AwsSettings, Flavor, check_identifier, parse_source};
use crate::wait::{self, Goal, Progress};

/// The tag a restored instance or cluster carries: the snapshot it was restored from.
pub const SNAPSHOT_TAG: &str = "pgseal:snapshot";

/// RDS and Aurora through the AWS SDK.
#[derive(Clone)]
pub struct AwsPlatform {
    pub(crate) settings: AwsSettings,
    pub(crate) rds: aws_sdk_rds::Client,
    pub(crate) kms: aws_sdk_kms::Client,
    pub(crate) logs: aws_sdk_cloudwatchlogs::Client,
    /// Migration name → current AWS identifier, for names renamed at cutover.
    renames: Arc<Mutex<BTreeMap<String, String>>>,
    pub(crate) progress: Progress,
}

impl std::fmt::Debug for AwsPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsPlatform")
            .field("settings", &self.settings)
            .field("renames", &self.renames)
            .finish_non_exhaustive()
    }
}

impl AwsPlatform {
    /// Loads credentials and region through the standard AWS chain, with `settings` on
    /// top. Fails when no region is configured.
    pub async fn new(settings: AwsSettings) -> Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(attempts) = settings.max_attempts {
            loader = loader.retry_config(
                aws_config::retry::RetryConfig::standard().with_max_attempts(attempts.max(1)),
            );
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(AwsError::Precondition(
                "no AWS region is configured: set AWS_REGION (or --region, or a profile's region)"
                    .into(),
            ));
        }
        Ok(AwsPlatform {
            rds: aws_sdk_rds::Client::new(&config),
            kms: aws_sdk_kms::Client::new(&config),
            logs: aws_sdk_cloudwatchlogs::Client::new(&config),
            settings,
            renames: Arc::default(),
            progress: Arc::new(|line: &str| tracing::info!(target: "pgseal_aws::wait", "{line}")),
        })
    }

    /// Sends progress lines of long waits to `progress` too.
    pub fn with_progress(mut self, progress: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Arc::new(progress);
        self
    }

    /// The flavor this platform drives.
    pub fn flavor(&self) -> Flavor {
        self.settings.flavor
    }

    /// Remembers that the migration's `name` is now called `id` on AWS (as journaled at
    /// cutover).
    pub fn set_renamed(&self, name: &str, id: &str) {
        let base = base_name(name).to_string();
        let mut renames = self.renames.lock().expect("rename map lock");
        if base == id {
            renames.remove(&base);
        } else {
            renames.insert(base, id.to_string());
        }
    }

    /// Stops the instance or cluster the migration calls `name` (`cleanup
    /// --retire-source`) and waits until it is stopped.
    pub async fn stop_instance(&self, name: &str) -> Result<()> {
        let id = self.resolve(name).await?;
        self.stop(&id).await
    }

    /// The AWS identifier `name` has now: its renamed identifier when that exists,
    /// otherwise its own (a rename that was journaled but not made yet).
    pub async fn resolve(&self, name: &str) -> Result<String> {
        let base = base_name(name).to_string();
        let renamed = self
            .renames
            .lock()
            .expect("rename map lock")
            .get(&base)
            .cloned();
        if let Some(id) = renamed
            && self.status_of(&id).await?.is_some()
        {
            return Ok(id);
        }
        check_identifier(&base)?;
        Ok(base)
    }

    /// Renames the instance (RDS) or cluster (Aurora) the migration calls `name` to
    /// `new_id`, applied immediately, and waits until the new name is available and the
    /// old one gone. Does nothing when it already has that name.
    pub async fn rename(&self, name: &str, new_id: &str) -> Result<()> {
        check_identifier(new_id)?;
        let current = self.resolve(name).await?;
        if current != new_id {
            (self.progress)(&format!("renaming {current} to {new_id}"));
            match self.settings.flavor {
                Flavor::Rds => {
                    self.rds
                        .modify_db_instance()
                        .db_instance_identifier(&current)
                        .new_db_instance_identifier(new_id)
                        .apply_immediately(true)
                        .send()
                        .await
                        .map_err(|e| api("ModifyDBInstance", e))?;
                }
                Flavor::Aurora => {
                    self.rds
                        .modify_db_cluster()
                        .db_cluster_identifier(&current)
                        .new_db_cluster_identifier(new_id)
                        .apply_immediately(true)
                        .send()
                        .await
                        .map_err(|e| api("ModifyDBCluster", e))?;
                }
            }
            self.wait_gone(&current, &format!("the old name {current}"))
                .await?;
        }
        self.wait_until_available(new_id, &format!("{new_id} after the rename"))
            .await?;
        self.set_renamed(name, new_id);
        Ok(())
    }

    /// The instance or cluster `id` as AWS describes it (no name resolution).
    pub(crate) async fn describe_raw(&self, id: &str) -> Result<Described> {
        match self.settings.flavor {
            Flavor::Rds => self
                .describe_db_instance(id)
                .await
                .map(|i| Described::Rds(Box::new(i))),
            Flavor::Aurora => self
                .describe_db_cluster(id)
                .await
                .map(|c| Described::Aurora(Box::new(c))),
        }
    }

    /// The status of the instance or cluster `id`; `None` when it does not exist.
    pub(crate) async fn status_of(&self, id: &str) -> Result<Option<String>> {
        match self.describe_raw(id).await {
            Ok(d) => Ok(Some(d.status().to_string())),
            Err(AwsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Polls `status` (the resource's status word, `None` when it does not exist) until it
    /// reaches `goal`, with the platform's timeout and interval (see [`wait::for_status`]).
    pub(crate) async fn wait_for<F, Fut>(&self, what: &str, goal: Goal<'_>, status: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>>>,
    {
        wait::for_status(
            &self.progress,
            what,
            self.settings.wait_timeout,
            self.settings.poll_interval,
            goal,
            status,
        )
        .await
    }

    /// Waits until `id` is available.
    pub(crate) async fn wait_until_available(&self, id: &str, what: &str) -> Result<()> {
        self.wait_for(what, Goal::Status("available"), || self.status_of(id))
            .await
    }

    /// Waits until `id` no longer exists.
    pub(crate) async fn wait_gone(&self, id: &str, what: &str) -> Result<()> {
        self.wait_for(&format!("{what} to go"), Goal::Gone, || self.status_of(id))
            .await
    }

    /// How pgseal (`peer` false) or the other instance (`peer` true) reaches `name` over
    /// SQL as its master user; the password comes from `PGPASSWORD`.
    async fn sql_config(&self, name: &str, peer: bool) -> Result<tokio_postgres::Config> {
        let base = base_name(name);
        let id = self.resolve(name).await?;
        let described = self.describe_raw(&id).await?;
        let routes = &self.settings.routes;
        let route = if peer {
            routes.peer_via.get(base)
        } else {
            routes.connect_via.get(base)
        };
        let (host, port) = match route {
            Some(address) => {
                let (host, port) = address.rsplit_once(':').expect("routes are validated");
                (
                    host.to_string(),
                    port.parse().expect("routes are validated"),
                )
            }
            None => described.endpoint().ok_or_else(|| {
                AwsError::Precondition(format!(
                    "{id} has no endpoint yet (status {})",
                    described.status()
                ))
            })?,
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .user(described.master_username().unwrap_or("postgres"))
            .dbname("postgres")
            .application_name("pgseal")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
        Ok(config)
    }

    /// Connects to `name`'s database `dbname`.
    pub(crate) async fn sql_client(
        &self,
        name: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client> {
        let mut config = self.sql_config(name, false).await?;
        config.dbname(dbname);
        pgseal_pg::connect_pinned(&config)
            .await
            .map_err(|source| AwsError::Connect {
                what: format!("connecting to {name}"),
                source,
            })
    }

    /// The platform's view of `name`.
    async fn instance(&self, name: &str) -> Result<Instance> {
        let id = self.resolve(name).await?;
        Ok(self.describe_raw(&id).await?.to_instance(name))
    }
}

/// The plain snapshot an encrypted snapshot `name` is copied from.
fn plain_snapshot_name(name: &str) -> String {
    format!("{name}-plain")
}

/// A migration name without its flavor prefix.
pub(crate) fn base_name(name: &str) -> &str {
    parse_source(name).map_or(name, |(_, id)| id)
}

/// An RDS instance or an Aurora cluster, as described by AWS.
#[derive(Debug, Clone)]
pub enum Described {
    /// An RDS DB instance.
    Rds(Box<aws_sdk_rds::types::DbInstance>),
    /// An Aurora DB cluster.
    Aurora(Box<aws_sdk_rds::types::DbCluster>),
}

impl Described {
    /// AWS's status word (`available`, `creating`, `renaming`, ...).
    pub fn status(&self) -> &str {
        match self {
            Described::Rds(i) => i.db_instance_status().unwrap_or("unknown"),
            Described::Aurora(c) => c.status().unwrap_or("unknown"),
        }
    }

    /// `StorageEncrypted`.
    pub fn encrypted(&self) -> bool {
        match self {
            Described::Rds(i) => i.storage_encrypted().unwrap_or(false),
            Described::Aurora(c) => c.storage_encrypted().unwrap_or(false),
        }
    }

    /// `EngineVersion` (`15.4`).
    pub fn engine_version(&self) -> Option<&str> {
        match self {
            Described::Rds(i) => i.engine_version(),
            Described::Aurora(c) => c.engine_version(),
        }
    }

    /// `KmsKeyId` (an ARN once encrypted).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Described::Rds(i) => i.kms_key_id(),
            Described::Aurora(c) => c.kms_key_id(),
        }
    }

    fn endpoint(&self) -> Option<(String, u16)> {
        match self {
            Described::Rds(i) => {
                let e = i.endpoint()?;
                Some((e.address()?.to_string(), e.port()? as u16))
            }
            Described::Aurora(c) => Some((c.endpoint()?.to_string(), c.port()? as u16)),
        }
    }

    fn master_username(&self) -> Option<&str> {
        match self {
            Described::Rds(i) => i.master_username(),
            Described::Aurora(c) => c.master_username(),
        }
    }

    fn tag(&self, key: &str) -> Option<String> {
        let tags = match self {
            Described::Rds(i) => i.tag_list(),
            Described::Aurora(c) => c.tag_list(),
        };
        tags.iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    }

    /// The platform-neutral view, under the migration's `name`.
    pub fn to_instance(&self, name: &str) -> Instance {
        let status = match self.status() {
            "available" => InstanceStatus::Available,
            "stopped" | "stopping" => InstanceStatus::Stopped,
            s if s.starts_with("failed")
                || s.starts_with("incompatible")
                || s == "inaccessible-encryption-credentials"
                || s == "storage-full"
                || s == "restore-error" =>
            {
                InstanceStatus::Failed
            }
            _ => InstanceStatus::Busy,
        };
        let engine_version = match self {
            Described::Rds(i) => i.engine_version(),
            Described::Aurora(c) => c.engine_version(),
        };
        let (call, kind) = match self {
            Described::Rds(_) => ("DescribeDBInstances", "DB instance"),
            Described::Aurora(_) => ("DescribeDBClusters", "DB cluster"),
        };
        let evidence = vec![format!(
            "{call}: {kind} {name} StorageEncrypted={}, KmsKeyId={}",
            self.encrypted(),
            self.key_id().unwrap_or("none")
        )];
        Instance {
            name: name.to_string(),
            status,
            encrypted: self.encrypted(),
            key_id: self.key_id().map(str::to_string),
            engine_version: engine_version.unwrap_or("").to_string(),
            params: BTreeMap::new(),
            source_snapshot: self.tag(SNAPSHOT_TAG),
            storage: None,
            evidence,
        }
    }
}

impl Platform for AwsPlatform {
    async fn describe_instance(&self, name: &str) -> pgseal_platform::Result<Instance> {
        Ok(self.instance(name).await?)
    }

    async fn create_instance(&self, spec: &NewInstance) -> pgseal_platform::Result<Instance> {
        Err(AwsError::Precondition(format!(
            "pgseal does not create empty RDS instances ({}); create them with the AWS console, CLI or your infrastructure code",
            spec.name
        ))
        .into())
    }

    async fn set_params(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        restart: bool,
    ) -> pgseal_platform::Result<ParamsChanged> {
        let id = self.resolve(name).await?;
        Ok(self.set_parameters(&id, params, restart).await?)
    }

    async fn reboot_instance(&self, name: &str) -> pgseal_platform::Result<Instance> {
        let id = self.resolve(name).await?;
        self.reboot(&id).await?;
        Ok(self.instance(name).await?)
    }

    async fn delete_instance(&self, name: &str) -> pgseal_platform::Result<()> {
        let id = self.resolve(name).await?;
        match self.settings.flavor {
            Flavor::Rds => self.delete_db_instance(&id).await?,
            Flavor::Aurora => self.delete_db_cluster(&id).await?,
        }
        Ok(())
    }

    async fn create_snapshot(
        &self,
        instance: &str,
        name: &str,
        key: Option<&str>,
    ) -> pgseal_platform::Result<Snapshot> {
        check_identifier(name)?;
        let id = self.resolve(instance).await?;
        if let Some(key) = key {
            self.check_key(key).await?;
        }
        let Some(key) = key else {
            if self.find_snapshot(name).await?.is_none() {
                self.start_snapshot(&id, name, None).await?;
            }
            return Ok(self.wait_snapshot(name).await?);
        };
        if self.settings.flavor == Flavor::Aurora {
            // A plain cluster snapshot cannot be copied under a key; the restore encrypts
            // it (RestoreDBClusterFromSnapshot with KmsKeyId). The key's ARN goes with it.
            if self.find_snapshot(name).await?.is_none() {
                let arn = self.check_key(key).await?.arn;
                self.start_snapshot(&id, name, Some(&arn)).await?;
            }
            return Ok(self.wait_snapshot(name).await?);
        }
        // A snapshot of a plain instance is plain: it is copied under the key, then the
        // plain one is deleted (the RDS way; a restore cannot encrypt it).
        let plain = plain_snapshot_name(name);
        if self.find_snapshot(name).await?.is_none() {
            if self.find_snapshot(&plain).await?.is_none() {
                self.start_snapshot(&id, &plain, None).await?;
            }
            self.wait_snapshot(&plain).await?;
            self.copy_snapshot(&plain, name, key).await?;
        }
        let copy = self.wait_snapshot(name).await?;
        if self.find_snapshot(&plain).await?.is_some() {
            self.delete_snapshot_raw(&plain).await?;
        }
        Ok(copy)
    }

    async fn create_snapshot_of_url(
        &self,
        _url: &str,
        _name: &str,
        _key: &str,
    ) -> pgseal_platform::Result<Snapshot> {
        Err(AwsError::Precondition(
            "an AWS target is restored from an RDS or Aurora snapshot: give the source as rds:ID or aurora:ID, not a URL".into(),
        )
        .into())
    }

    async fn copy_snapshot_encrypted(
        &self,
        source: &str,
        name: &str,
        key: &str,
    ) -> pgseal_platform::Result<Snapshot> {
        check_identifier(name)?;
        self.check_key(key).await?;
        Ok(self.copy_snapshot(source, name, key).await?)
    }

    async fn restore_snapshot(
        &self,
        snapshot: &str,
        spec: &NewInstance,
    ) -> pgseal_platform::Result<Instance> {
        let id = base_name(&spec.name);
        check_identifier(id)?;
        match self.settings.flavor {
            Flavor::Rds => self.restore_db_instance(snapshot, id).await?,
            Flavor::Aurora => {
                self.restore_db_cluster(snapshot, id, spec.encryption_key.as_deref())
                    .await?
            }
        };
        Ok(self.instance(&spec.name).await?)
    }

    async fn wait_available(&self, name: &str) -> pgseal_platform::Result<Instance> {
        let id = self.resolve(name).await?;
        match self.describe_raw(&id).await? {
            Described::Rds(_) => {
                self.wait_until_available(&id, &format!("instance {id}"))
                    .await?;
            }
            // The writer may not have been added yet: finishing the restore adds it.
            Described::Aurora(cluster) => {
                let snapshot = Described::Aurora(cluster)
                    .to_instance(name)
                    .source_snapshot
                    .ok_or_else(|| {
                        AwsError::Precondition(format!(
                            "cluster {id} carries no {SNAPSHOT_TAG} tag"
                        ))
                    })?;
                self.restore_db_cluster(&snapshot, &id, None).await?;
            }
        }
        Ok(self.instance(name).await?)
    }

    async fn describe_snapshot(&self, name: &str) -> pgseal_platform::Result<Snapshot> {
        match self.find_snapshot(name).await? {
            None => Err(AwsError::NotFound(format!("snapshot {name} not found")).into()),
            Some(_) => Ok(self.wait_snapshot(name).await?),
        }
    }

    async fn delete_snapshot(&self, name: &str) -> pgseal_platform::Result<()> {
        // The plain intermediate of an encrypted snapshot goes with it (a crash may have
        // left it behind).
        let plain = plain_snapshot_name(name);
        if self.find_snapshot(&plain).await?.is_some() {
            self.delete_snapshot_raw(&plain).await?;
        }
        Ok(self.delete_snapshot_raw(name).await?)
    }

    async fn handoff(&self, instance: &str) -> pgseal_platform::Result<Handoff> {
        let id = self.resolve(instance).await?;
        Ok(match self.settings.flavor {
            Flavor::Rds => self.handoff_from_logs(&id).await?,
            Flavor::Aurora => self.handoff_from_aurora(instance).await?,
        })
    }

    async fn subscriber_conninfo(
        &self,
        instance: &str,
        dbname: &str,
    ) -> pgseal_platform::Result<String> {
        let mut config = self.sql_config(instance, true).await?;
        config.dbname(dbname);
        Ok(pgseal_pg::conninfo(&config))
    }

    async fn connection(&self, instance: &str) -> pgseal_platform::Result<tokio_postgres::Config> {
        Ok(self.sql_config(instance, false).await?)
    }
    /// RDS's files are not on this machine: nothing to write out from here.
    async fn write_out(
        &self,
        _instance: &str,
        _relations: &[String],
    ) -> pgseal_platform::Result<Option<u64>> {
        Ok(None)
    }
    async fn blue_green_plan(
        &self,
        source: &str,
        engine_version: Option<u32>,
    ) -> pgseal_platform::Result<BlueGreenPlan> {
        Ok(self.plan_deployment(source, engine_version).await?)
    }

    async fn create_blue_green(
        &self,
        migration: &str,
        source: &str,
        key: &str,
        engine_version: Option<u32>,
    ) -> pgseal_platform::Result<(BlueGreen, bool)> {
        let key = self.check_key(key).await?;
        let (mut deployment, adopted) = self
            .create_deployment(migration, source, &key.arn, engine_version)
            .await?;
        deployment.method = self.deployment_method(&deployment).await?;
        Ok((deployment, adopted))
    }

    async fn wait_blue_green(&self, migration: &str) -> pgseal_platform::Result<BlueGreen> {
        let deployment = self.our_deployment(migration).await?;
        let mut ready = self.wait_deployment_available(&deployment.id).await?;
        ready.method = self.deployment_method(&ready).await?;
        Ok(ready)
    }

    async fn green_resources(
        &self,
        migration: &str,
        key: &str,
    ) -> pgseal_platform::Result<Vec<GreenResource>> {
        let key = self.check_key(key).await?;
        let deployment = self.our_deployment(migration).await?;
        Ok(self.deployment_green(&deployment, &key.arn).await?)
    }

    async fn describe_blue_green(
        &self,
        migration: &str,
    ) -> pgseal_platform::Result<Option<BlueGreen>> {
        Ok(self.find_deployment(migration).await?)
    }

    async fn switchover_blue_green(
        &self,
        migration: &str,
        timeout: std::time::Duration,
    ) -> pgseal_platform::Result<BlueGreen> {
        let deployment = self.our_deployment(migration).await?;
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX).max(30);
        Ok(self.switchover_deployment(&deployment.id, seconds).await?)
    }

    async fn delete_blue_green(
        &self,
        migration: &str,
        delete_green: bool,
    ) -> pgseal_platform::Result<bool> {
        let Some(deployment) = self.find_deployment(migration).await? else {
            return Ok(false);
        };
        self.delete_deployment(&deployment.id, delete_green).await?;
        Ok(true)
    }
}
