//! The ways `migrate cutover` moves applications: an endpoint (PgBouncer paused, pointed
//! at the target, resumed), a hook command, or the new URL printed.

use pgseal_core::cutover::{Switch, SwitchError};
use pgseal_local::endpoint::{EndpointInfo, PreparedPoint, admin};
use pgseal_local::instance::LocalInstances;

/// What an `--on-switch` hook inherits from pgseal's environment; beside these it gets
/// only `PGSEAL_NEW_URL`, `PGSEAL_MIGRATION` and `PGSEAL_TARGET`.
const HOOK_ENVIRONMENT: [&str; 3] = ["PATH", "HOME", "LANG"];

/// One write the way applications make it: assigns a transaction id and commits.
async fn write_once(config: &tokio_postgres::Config) -> Result<(), SwitchError> {
    let client = pgseal_pg::connect(config).await?;
    client.simple_query("SELECT pg_current_xact_id()").await?;
    Ok(())
}

/// How long [`probe_endpoint`] waits for its write (PgBouncer keeps a client waiting while
/// it tries to reach a server that is down).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One write through endpoint `info` to database `database`, as an application makes it:
/// proof that the endpoint routes writes somewhere that takes them.
pub async fn probe_endpoint(info: &EndpointInfo, database: &str) -> Result<(), SwitchError> {
    match tokio::time::timeout(PROBE_TIMEOUT, write_once(&info.sql_config(database))).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer in {} s", PROBE_TIMEOUT.as_secs()).into()),
    }
}

/// Sends `RESUME` to an endpoint; one that is not paused is fine.
pub async fn resume_endpoint(info: &EndpointInfo) -> Result<(), SwitchError> {
    match admin(info, "RESUME").await {
        Ok(_) => Ok(()),
        Err(e)
            if e.to_string().contains("not paused") || format!("{e:?}").contains("not paused") =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`EndpointSwitch`]'s [`Switch::ready`] prepared: the databases it was told stay,
/// and the configuration written for them.
type Ready = (Vec<String>, PreparedPoint);

/// A PgBouncer endpoint in front of the source: one entry per database, so the
/// databases outside the migration keep going to the instance they were on.
pub struct EndpointSwitch {
    /// The local platform's instances and endpoints.
    pub instances: LocalInstances,
    /// The endpoint's name.
    pub endpoint: String,
    /// The instance it points at now.
    pub from: String,
    /// The instance to point it at.
    pub target: String,
    /// The database applications use.
    pub database: String,
    /// The configuration [`Switch::ready`] wrote beside the endpoint's, for the databases
    /// it was told stay: the pause only puts it in place.
    prepared: std::sync::Mutex<Option<Box<Ready>>>,
}

impl EndpointSwitch {
    /// A switch of endpoint `endpoint` from instance `from` to `target`, probed through
    /// `database`.
    pub fn new(
        instances: LocalInstances,
        endpoint: String,
        from: String,
        target: String,
        database: String,
    ) -> EndpointSwitch {
        EndpointSwitch {
            instances,
            endpoint,
            from,
            target,
            database,
            prepared: Default::default(),
        }
    }

    fn info(&self) -> Result<EndpointInfo, SwitchError> {
        Ok(self.instances.endpoint(&self.endpoint)?)
    }

    /// The endpoint pointed at the target but for the databases in `stay`, which keep
    /// going to the instance they are on, written beside its configuration.
    fn prepare(&self, stay: &[String]) -> Result<PreparedPoint, SwitchError> {
        let routes = stay
            .iter()
            .map(|db| (db.clone(), self.from.clone()))
            .collect();
        Ok(self
            .instances
            .prepare_point(&self.endpoint, &self.target, routes)?)
    }
}

impl Switch for EndpointSwitch {
    fn describe(&self) -> String {
        format!("endpoint {}", self.endpoint)
    }

    fn keeps_other_databases(&self) -> bool {
        true
    }

    fn cannot_keep(&self, db: &str) -> Option<String> {
        pgseal_local::endpoint::unroutable(db)
    }

    async fn ready(&self, stay: &[String]) -> Result<(), SwitchError> {
        // The instances looked up, `pgbouncer --version` asked (which settings its
        // configuration may use) and the new configuration written and made durable
        // here, not inside the pause, which only renames it into place and reloads.
        let prepared = self.prepare(stay)?;
        *self.prepared.lock().expect("not poisoned") = Some(Box::new((stay.to_vec(), prepared)));
        Ok(())
    }

    async fn pause(&self) -> Result<(), SwitchError> {
        admin(&self.info()?, "PAUSE").await?;
        Ok(())
    }

    async fn point_to_target(&self, stay: &[String]) -> Result<(), SwitchError> {
        let ready = self.prepared.lock().expect("not poisoned").take();
        let prepared = match ready.map(|ready| *ready) {
            Some((prepared_for, prepared)) if prepared_for == stay => prepared,
            _ => self.prepare(stay)?,
        };
        self.instances.apply_point(prepared).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<(), SwitchError> {
        resume_endpoint(&self.info()?).await
    }

    async fn probe_write(&self) -> Result<(), SwitchError> {
        write_once(&self.info()?.sql_config(&self.database)).await
    }

    async fn longest_client_wait(&self) -> Option<std::time::Duration> {
        let info = self.info().ok()?;
        match pgseal_local::endpoint::longest_client_wait(&info).await {
            Ok(wait) => Some(wait),
            Err(error) => {
                tracing::warn!(endpoint = %self.endpoint, %error, "the clients' wait could not be read");
                None
            }
        }
    }
}

/// No endpoint: a hook command is run with the new URL in its environment, or the URL is
/// printed for the operator.
pub struct HookSwitch {
    /// `sh -c` command, if any.
    pub command: Option<String>,
    /// The migration's name.
    pub migration: String,
    /// The target instance.
    pub target: String,
    /// The target's URL (no password).
    pub new_url: String,
    /// How pgseal writes to the target.
    pub target_config: tokio_postgres::Config,
}

impl HookSwitch {
    /// A hook (or printed URL) switch to a local instance's database.
    pub fn to_instance(
        instances: &LocalInstances,
        instance: &str,
        database: &str,
        command: Option<String>,
        migration: &str,
    ) -> Result<HookSwitch, pgseal_local::instance::LocalError> {
        let info = instances.describe(instance)?;
        let mut target_config = info.sql_config();
        target_config.dbname(database);
        Ok(HookSwitch {
            command,
            migration: migration.to_string(),
            target: instance.to_string(),
            new_url: info.url.replace("/postgres", &format!("/{database}")),
            target_config,
        })
    }
}

impl Switch for HookSwitch {
    fn describe(&self) -> String {
        match &self.command {
            Some(c) => format!("hook `{c}`"),
            None => "printed URL".to_string(),
        }
    }

    fn keeps_other_databases(&self) -> bool {
        false
    }

    async fn pause(&self) -> Result<(), SwitchError> {
        Ok(())
    }

    async fn point_to_target(&self, _stay: &[String]) -> Result<(), SwitchError> {
        match &self.command {
            None => {
                eprintln!(
                    "pgseal: applications must now use {} (instance {})",
                    self.new_url, self.target
                );
                Ok(())
            }
            Some(command) => {
                // A clean environment: the hook must not inherit the key store's
                // passphrase, a source's PGPASSWORD or cloud credentials.
                let mut hook = tokio::process::Command::new("sh");
                hook.env_clear();
                for kept in HOOK_ENVIRONMENT {
                    if let Some(value) = std::env::var_os(kept) {
                        hook.env(kept, value);
                    }
                }
                let status = hook
                    .arg("-c")
                    .arg(command)
                    .env("PGSEAL_NEW_URL", &self.new_url)
                    .env("PGSEAL_MIGRATION", &self.migration)
                    .env("PGSEAL_TARGET", &self.target)
                    .status()
                    .await?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("the --on-switch hook failed ({status})").into())
                }
            }
        }
    }

    async fn resume(&self) -> Result<(), SwitchError> {
        Ok(())
    }

    async fn probe_write(&self) -> Result<(), SwitchError> {
        write_once(&self.target_config).await
    }
}

/// AWS: applications keep their endpoint because the target takes the source's name. At
/// cutover the source becomes `<id>-pre-pgseal` and the target `<id>`; rollback renames
/// them back. Each rename is journaled (kind `renamed`, `NAME=NEW_ID`) before it is made,
/// so a crash in between is finished by `resume`.
#[cfg(feature = "aws")]
pub struct RenameSwitch {
    /// The AWS platform (shares its rename map with the engine's).
    pub platform: pgseal_aws::AwsPlatform,
    /// The journal (opened again for each rename).
    pub journal: pgseal_core::JournalConfig,
    /// The migration's name.
    pub migration: String,
    /// The source's name, as the migration knows it (`rds:prod`).
    pub source: String,
    /// The target's name, as the migration knows it (`prod-enc`).
    pub target: String,
    /// The database applications use.
    pub database: String,
    /// True for rollback: names go back to what they were.
    pub back: bool,
}

#[cfg(feature = "aws")]
impl RenameSwitch {
    /// The two renames in the order they must happen: `(name, new id)`.
    fn renames(&self) -> [(String, String); 2] {
        let (source, target) = (
            super::platform::aws_id(&self.source),
            super::platform::aws_id(&self.target),
        );
        if self.back {
            // The target gives the name back first.
            [
                (target.to_string(), target.to_string()),
                (source.to_string(), source.to_string()),
            ]
        } else {
            [
                (
                    source.to_string(),
                    format!("{source}{}", pgseal_aws::RETIRED_SUFFIX),
                ),
                (target.to_string(), source.to_string()),
            ]
        }
    }
}

#[cfg(feature = "aws")]
impl Switch for RenameSwitch {
    fn describe(&self) -> String {
        let source = super::platform::aws_id(&self.source);
        if self.back {
            format!(
                "renames back ({} -> {source})",
                super::platform::aws_id(&self.target)
            )
        } else {
            format!(
                "renames ({source} -> {source}{}, {} -> {source})",
                pgseal_aws::RETIRED_SUFFIX,
                super::platform::aws_id(&self.target)
            )
        }
    }

    fn keeps_other_databases(&self) -> bool {
        // A rename moves the whole instance.
        false
    }

    async fn pause(&self) -> Result<(), SwitchError> {
        // The fence holds writes; renames keep the endpoint for what comes after it.
        Ok(())
    }

    async fn point_to_target(&self, _stay: &[String]) -> Result<(), SwitchError> {
        let journal = self.journal.open()?;
        for (name, new_id) in self.renames() {
            if self.back {
                self.platform.rename(&name, &new_id).await?;
                let recorded: Vec<String> = journal
                    .resources(&self.migration)?
                    .into_iter()
                    .filter(|r| r.kind == "renamed" && r.name.starts_with(&format!("{name}=")))
                    .map(|r| r.name)
                    .collect();
                for r in recorded {
                    journal.remove_resource(
                        &self.migration,
                        "renamed",
                        pgseal_core::journal::INSTANCE,
                        &r,
                    )?;
                }
            } else {
                journal.add_resource(
                    &self.migration,
                    "renamed",
                    pgseal_core::journal::INSTANCE,
                    &format!("{name}={new_id}"),
                )?;
                self.platform.rename(&name, &new_id).await?;
            }
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), SwitchError> {
        Ok(())
    }

    async fn probe_write(&self) -> Result<(), SwitchError> {
        use pgseal_platform::Platform as _;
        let to = if self.back {
            &self.source
        } else {
            &self.target
        };
        let mut config = self.platform.connection(to).await?;
        config.dbname(&self.database);
        write_once(&config).await
    }
}

/// The way applications are moved, chosen once for a cutover or a rollback (see
/// `commands::migrate::choose_switch`).
pub enum ChosenSwitch {
    /// A PgBouncer endpoint.
    Endpoint(EndpointSwitch),
    /// A hook command, or the new URL printed.
    Hook(HookSwitch),
    /// AWS: the instances renamed.
    #[cfg(feature = "aws")]
    Rename(RenameSwitch),
}

/// Calls `$call` on whichever switch was chosen.
macro_rules! on_chosen {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            ChosenSwitch::Endpoint($s) => $call,
            ChosenSwitch::Hook($s) => $call,
            #[cfg(feature = "aws")]
            ChosenSwitch::Rename($s) => $call,
        }
    };
}

impl Switch for ChosenSwitch {
    fn describe(&self) -> String {
        on_chosen!(self, s => s.describe())
    }

    fn keeps_other_databases(&self) -> bool {
        on_chosen!(self, s => s.keeps_other_databases())
    }

    fn cannot_keep(&self, db: &str) -> Option<String> {
        on_chosen!(self, s => s.cannot_keep(db))
    }

    async fn ready(&self, stay: &[String]) -> Result<(), SwitchError> {
        on_chosen!(self, s => s.ready(stay).await)
    }

    async fn pause(&self) -> Result<(), SwitchError> {
        on_chosen!(self, s => s.pause().await)
    }

    async fn point_to_target(&self, stay: &[String]) -> Result<(), SwitchError> {
        on_chosen!(self, s => s.point_to_target(stay).await)
    }

    async fn resume(&self) -> Result<(), SwitchError> {
        on_chosen!(self, s => s.resume().await)
    }

    async fn probe_write(&self) -> Result<(), SwitchError> {
        on_chosen!(self, s => s.probe_write().await)
    }

    async fn longest_client_wait(&self) -> Option<std::time::Duration> {
        on_chosen!(self, s => s.longest_client_wait().await)
    }
}
