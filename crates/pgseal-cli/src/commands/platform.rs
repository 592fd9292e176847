//! Which platform a migration runs on: the local one, or AWS for `rds:ID` / `aurora:ID`
//! sources (with the `aws` feature). [`AnyPlatform`] lets every migrate command drive either
//! through the same engine.

use std::collections::BTreeMap;

use pgseal_core::{Journal, MigrationSpec};
use pgseal_local::platform::LocalPlatform;
use pgseal_platform::{
    BlueGreen, BlueGreenPlan, GreenResource, Handoff, Instance, NewInstance, ParamsChanged,
    Platform, Result, Snapshot,
};

use super::Context;

/// True when `source` names an AWS database (`rds:ID`, `aurora:ID`).
pub fn is_aws_source(source: &str) -> bool {
    source.starts_with("rds:") || source.starts_with("aurora:")
}

/// The identifier in `rds:ID` / `aurora:ID`; other names as they are.
pub fn aws_id(name: &str) -> &str {
    name.strip_prefix("rds:")
        .or_else(|| name.strip_prefix("aurora:"))
        .unwrap_or(name)
}

/// The platform of one migration.
pub enum AnyPlatform {
    /// Instances on this machine.
    Local(LocalPlatform),
    /// RDS or Aurora.
    #[cfg(feature = "aws")]
    Aws(pgseal_aws::AwsPlatform),
}

/// Calls the same method on whichever platform this is.
macro_rules! each {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyPlatform::Local($p) => $call,
            #[cfg(feature = "aws")]
            AnyPlatform::Aws($p) => $call,
        }
    };
}

impl Platform for AnyPlatform {
    async fn describe_instance(&self, name: &str) -> Result<Instance> {
        each!(self, p => p.describe_instance(name).await)
    }
    async fn create_instance(&self, spec: &NewInstance) -> Result<Instance> {
        each!(self, p => p.create_instance(spec).await)
    }
    async fn set_params(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        restart: bool,
    ) -> Result<ParamsChanged> {
        each!(self, p => p.set_params(name, params, restart).await)
    }
    async fn reboot_instance(&self, name: &str) -> Result<Instance> {
        each!(self, p => p.reboot_instance(name).await)
    }
    async fn delete_instance(&self, name: &str) -> Result<()> {
        each!(self, p => p.delete_instance(name).await)
    }
    async fn create_snapshot(
        &self,
        instance: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<Snapshot> {
        each!(self, p => p.create_snapshot(instance, name, key).await)
    }
    async fn create_snapshot_of_url(&self, url: &str, name: &str, key: &str) -> Result<Snapshot> {
        each!(self, p => p.create_snapshot_of_url(url, name, key).await)
    }
    async fn copy_snapshot_encrypted(
        &self,
        source: &str,
        name: &str,
        key: &str,
    ) -> Result<Snapshot> {
        each!(self, p => p.copy_snapshot_encrypted(source, name, key).await)
    }
    async fn restore_snapshot(&self, snapshot: &str, spec: &NewInstance) -> Result<Instance> {
        each!(self, p => p.restore_snapshot(snapshot, spec).await)
    }
    async fn wait_available(&self, name: &str) -> Result<Instance> {
        each!(self, p => p.wait_available(name).await)
    }
    async fn describe_snapshot(&self, name: &str) -> Result<Snapshot> {
        each!(self, p => p.describe_snapshot(name).await)
    }
    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        each!(self, p => p.delete_snapshot(name).await)
    }
    async fn handoff(&self, instance: &str) -> Result<Handoff> {
        each!(self, p => p.handoff(instance).await)
    }
    async fn subscriber_conninfo(&self, instance: &str, dbname: &str) -> Result<String> {
        each!(self, p => p.subscriber_conninfo(instance, dbname).await)
    }
    async fn connection(&self, instance: &str) -> Result<tokio_postgres::Config> {
        each!(self, p => p.connection(instance).await)
    }
    async fn write_out(&self, instance: &str, relations: &[String]) -> Result<Option<u64>> {
        each!(self, p => p.write_out(instance, relations).await)
    }
    async fn blue_green_plan(
        &self,
        source: &str,
        engine_version: Option<u32>,
    ) -> Result<BlueGreenPlan> {
        each!(self, p => p.blue_green_plan(source, engine_version).await)
    }
    async fn create_blue_green(
        &self,
        migration: &str,
        source: &str,
        key: &str,
        engine_version: Option<u32>,
    ) -> Result<(BlueGreen, bool)> {
        each!(self, p => p.create_blue_green(migration, source, key, engine_version).await)
    }
    async fn wait_blue_green(&self, migration: &str) -> Result<BlueGreen> {
        each!(self, p => p.wait_blue_green(migration).await)
    }
    async fn green_resources(&self, migration: &str, key: &str) -> Result<Vec<GreenResource>> {
        each!(self, p => p.green_resources(migration, key).await)
    }
    async fn describe_blue_green(&self, migration: &str) -> Result<Option<BlueGreen>> {
        each!(self, p => p.describe_blue_green(migration).await)
    }
    async fn switchover_blue_green(
        &self,
        migration: &str,
        timeout: std::time::Duration,
    ) -> Result<BlueGreen> {
        each!(self, p => p.switchover_blue_green(migration, timeout).await)
    }
    async fn delete_blue_green(&self, migration: &str, delete_green: bool) -> Result<bool> {
        each!(self, p => p.delete_blue_green(migration, delete_green).await)
    }
}

/// The platform for migration `spec` (with the key store when `kms`, for the local one).
pub fn for_spec(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    journal: Option<&Journal>,
    spec: &MigrationSpec,
    kms: bool,
) -> anyhow::Result<AnyPlatform> {
    if !is_aws_source(&spec.source) {
        // A full load's target gets the master password instances get
        // (PGSEAL_MASTER_PASSWORD), as any instance pgseal makes.
        return Ok(AnyPlatform::Local(LocalPlatform::with_master_password(
            pgseal_local::instance::LocalInstances::open(&ctx.home)?,
            ctx.open_kms_if(kms)?,
            super::instance::master_password_from_env(),
        )));
    }
    #[cfg(feature = "aws")]
    {
        let platform = runtime.block_on(aws::platform(ctx, spec))?;
        if let Some(journal) = journal {
            for r in journal.resources(&spec.name)? {
                if r.kind == "renamed"
                    && let Some((name, id)) = r.name.split_once('=')
                {
                    platform.set_renamed(name, id);
                }
            }
        }
        Ok(AnyPlatform::Aws(platform))
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (runtime, journal);
        anyhow::bail!(pgseal_local::instance::LocalError::InvalidInput(format!(
            "{} is an AWS database, and this pgseal was built without AWS support: build it with `cargo build --release --features aws`",
            spec.source
        )))
    }
}

/// The AWS side: settings from the journal and the environment.
#[cfg(feature = "aws")]
pub mod aws {
    use std::time::Duration;

    use pgseal_aws::{AwsPlatform, AwsSettings, Routes, parse_source};
    use pgseal_core::MigrationSpec;

    use crate::commands::Context;

    /// Reads a number from environment variable `name`, if set.
    fn env_number(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    /// The routes recorded in `platform` settings (`connect_via.NAME`, `peer_via.NAME`),
    /// with `PGSEAL_CONNECT_VIA` and `PGSEAL_PEER_VIA` (`ID=HOST:PORT,...`) over them (a
    /// tunnel's port may change between runs).
    pub fn routes(platform: &std::collections::BTreeMap<String, String>) -> anyhow::Result<Routes> {
        let mut routes = Routes::default();
        for (key, value) in platform {
            if let Some(name) = key.strip_prefix("connect_via.") {
                routes.connect_via.insert(name.into(), value.clone());
            } else if let Some(name) = key.strip_prefix("peer_via.") {
                routes.peer_via.insert(name.into(), value.clone());
            }
        }
        for (variable, map) in [
            ("PGSEAL_CONNECT_VIA", &mut routes.connect_via),
            ("PGSEAL_PEER_VIA", &mut routes.peer_via),
        ] {
            if let Ok(list) = std::env::var(variable) {
                for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                    let (name, address) = pgseal_aws::parse_route(item.trim())?;
                    map.insert(name, address);
                }
            }
        }
        Ok(routes)
    }

    /// The AWS platform for `spec`. Test and tuning knobs (environment):
    /// `PGSEAL_AWS_MAX_ATTEMPTS`, `PGSEAL_AWS_POLL_MS`, `PGSEAL_AWS_WAIT_SECONDS`,
    /// `PGSEAL_AWS_HANDOFF_SECONDS`.
    pub async fn platform(ctx: &Context, spec: &MigrationSpec) -> anyhow::Result<AwsPlatform> {
        let (flavor, _) = parse_source(&spec.source)
            .ok_or_else(|| anyhow::anyhow!("{} is not rds:ID or aurora:ID", spec.source))?;
        let mut settings = AwsSettings::new(flavor);
        settings.region = spec.platform.get("region").cloned();
        settings.endpoint_url = spec.platform.get("endpoint_url").cloned();
        settings.routes = routes(&spec.platform)?;
        settings.max_attempts = env_number("PGSEAL_AWS_MAX_ATTEMPTS").map(|n| n as u32);
        if let Some(ms) = env_number("PGSEAL_AWS_POLL_MS") {
            settings.poll_interval = Duration::from_millis(ms);
        }
        if let Some(s) = env_number("PGSEAL_AWS_WAIT_SECONDS") {
            settings.wait_timeout = Duration::from_secs(s);
        }
        if let Some(s) = env_number("PGSEAL_AWS_HANDOFF_SECONDS") {
            settings.handoff_timeout = Duration::from_secs(s);
        }
        let quiet = ctx.quiet;
        Ok(AwsPlatform::new(settings)
            .await?
            .with_progress(move |line| {
                if !quiet {
                    eprintln!("  aws: {line}");
                }
            }))
    }
}
