//! The `Platform` trait: what the migration engine needs from wherever databases live (the
//! local platform on this machine, RDS/Aurora through the AWS SDK), and nothing more.
//!
//! The engine speaks only to this trait and to PostgreSQL over SQL; it never knows which
//! platform it drives. Every operation is async (cloud APIs are, and local ones run on a
//! blocking pool) and returns [`PlatformError`], whose [`ErrorKind`] decides what the
//! engine does next.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use pgseal_pg::Lsn;
use serde::Serialize;

/// What kind of failure a [`PlatformError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such instance or snapshot.
    NotFound,
    /// The request cannot be carried out as given; nothing was changed (name taken, port
    /// in use, a rule such as "a plain snapshot restores to a plain instance").
    Precondition,
    /// The KMS refused (unknown, disabled or pending-deletion key).
    Key,
    /// Stored data failed authentication (a damaged or tampered snapshot).
    Tampered,
    /// Anything else; the message says what.
    Other,
}

/// A platform operation failed.
#[derive(Debug)]
pub struct PlatformError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The platform's own error, with its chain.
    pub inner: Box<dyn std::error::Error + Send + Sync>,
}

impl PlatformError {
    /// Wraps a platform's error with its kind.
    pub fn new(
        kind: ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PlatformError {
            kind,
            inner: inner.into(),
        }
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for PlatformError {
    // The inner error's own message is ours; its cause comes next in the chain.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// A result whose error is a [`PlatformError`].
pub type Result<T> = std::result::Result<T, PlatformError>;

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct NewInstance {
    /// The instance's name.
    pub name: String,
    /// A port, where the platform lets the caller choose.
    pub port: Option<u16>,
    /// Allocated storage in bytes; `None` for the platform's default.
    pub storage_bytes: Option<u64>,
    /// `Some(key)` for an encrypted instance under that KMS key (id, alias or ARN).
    pub encryption_key: Option<String>,
    /// Server parameters.
    pub params: BTreeMap<String, String>,
    /// The PostgreSQL major version; `None` for the platform's default (a restore keeps
    /// the snapshot's).
    pub engine_version: Option<u32>,
}

/// An instance's lifecycle state, as the engine needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Accepting connections.
    Available,
    /// Stopped.
    Stopped,
    /// Being created, modified or rebooted.
    Busy,
    /// Failed or incomplete; needs a person.
    Failed,
}

/// An instance as the engine sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Instance {
    /// The name.
    pub name: String,
    /// Its state.
    pub status: InstanceStatus,
    /// True when its storage is encrypted.
    pub encrypted: bool,
    /// The KMS key id, when encrypted.
    pub key_id: Option<String>,
    /// The PostgreSQL version.
    pub engine_version: String,
    /// Server parameters set through the platform.
    pub params: BTreeMap<String, String>,
    /// The snapshot it was restored from, if any.
    pub source_snapshot: Option<String>,
    /// How the platform established `encrypted` and `key_id`, one fact a line, for the
    /// migration report (local: the fscrypt policy read back from the volume; AWS: the
    /// fields of `DescribeDBInstances` / `DescribeDBClusters`).
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The file system holding its data, as read now; `None` where the platform does not
    /// say (AWS: RDS reports free storage through CloudWatch, which pgseal does not read).
    #[serde(default)]
    pub storage: Option<StorageUse>,
}

/// How full the storage under an instance's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StorageUse {
    /// The file system's size, in bytes.
    pub size_bytes: u64,
    /// What the server can still write, in bytes.
    pub free_bytes: u64,
}

/// A snapshot as the engine sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The name.
    pub name: String,
    /// True when encrypted.
    pub encrypted: bool,
    /// The KMS key id, when encrypted.
    pub key_id: Option<String>,
    /// Where the backup ends, when the platform knows.
    pub end_lsn: Option<Lsn>,
    /// For a plain snapshot that a restore encrypts (Aurora cannot copy a plain cluster
    /// snapshot under a key; `RestoreDBClusterFromSnapshot` takes one): the key (ARN) the
    /// restore must use. `None` everywhere else.
    #[serde(default)]
    pub restore_key: Option<String>,
}

/// Where a restored copy's WAL ends, and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Handoff {
    /// The LSN logical replication into the copy must start from, exactly.
    pub lsn: Lsn,
    /// The last replayed record's start (`redo done at`), when known: must be below `lsn`.
    pub redo_done_at: Option<Lsn>,
    /// The backup's end, when known: `lsn` must not be below it.
    pub backup_end_lsn: Option<Lsn>,
}

/// What setting parameters did.
#[derive(Debug, Clone, Serialize)]
pub struct ParamsChanged {
    /// Parameters now in effect.
    pub applied: Vec<String>,
    /// Parameters waiting for a restart.
    pub pending_restart: Vec<String>,
    /// True when the instance was restarted to apply them.
    pub restarted: bool,
}

/// A deployment in which the platform itself keeps a copy of the source (green) current
/// and switches applications to it (RDS and Aurora Blue/Green), as pgseal journals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlueGreen {
    /// The platform's identifier (`bgd-...`).
    pub id: String,
    /// Its name (`pgseal-<migration>`).
    pub name: String,
    /// The platform's status word (`PROVISIONING`, `AVAILABLE`, `SWITCHOVER_COMPLETED`, ...).
    pub status: String,
    /// The platform's words on the status, when it gives some.
    pub status_details: Option<String>,
    /// The blue resource (an ARN on AWS).
    pub source: String,
    /// The green resource, once made.
    pub target: Option<String>,
    /// Each blue member with its green twin.
    pub members: Vec<(String, String)>,
    /// How green is kept current, as read from the deployment's resources (green's
    /// engine version against blue's); `None` until green exists.
    #[serde(default)]
    pub method: Option<ReplicationMethod>,
}

/// How a platform's blue/green deployment keeps green current, which decides what
/// validation waits for, which limits apply and whether DDL is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMethod {
    /// Green is a physical standby of blue (RDS for PostgreSQL at the same major
    /// version): every byte of WAL is replayed, DDL and large objects included; green is
    /// read-only until the switchover promotes it.
    Physical,
    /// Green subscribes to blue's logical replication (Aurora PostgreSQL, and RDS with a
    /// major version upgrade): rows only, no DDL, no large objects.
    Logical,
}

impl ReplicationMethod {
    /// The method's word, as journaled and shown (`physical`, `logical`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMethod::Physical => "physical",
            ReplicationMethod::Logical => "logical",
        }
    }

    /// Whether the source needs logical decoding on (`rds.logical_replication = 1`,
    /// which takes a reboot) for this method.
    pub fn needs_logical_wal(self) -> bool {
        self == ReplicationMethod::Logical
    }

    /// Whether green receives blue's DDL.
    pub fn carries_ddl(self) -> bool {
        self == ReplicationMethod::Physical
    }
}

impl fmt::Display for ReplicationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The deployment a platform would make for a source: how it would replicate and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlueGreenPlan {
    /// The replication method.
    pub method: ReplicationMethod,
    /// Why this method, in the platform's terms (engine, versions).
    pub why: String,
    /// The source's engine version as the platform reports it (`15.4`).
    pub source_version: String,
}

/// One green resource and its encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GreenResource {
    /// Its identifier.
    pub id: String,
    /// Its storage is encrypted.
    pub encrypted: bool,
    /// The key it is encrypted under (an ARN on AWS).
    pub key_id: Option<String>,
    /// Why it is not encrypted under the key asked for, if it is not.
    pub problem: Option<String>,
}

/// The answer of a platform without blue/green deployments.
fn no_blue_green() -> PlatformError {
    PlatformError::new(
        ErrorKind::Precondition,
        "this platform has no blue/green deployments (RDS and Aurora have): use --strategy snapshot",
    )
}

/// What the migration engine needs from a platform.
pub trait Platform: Send + Sync {
    /// Describes an instance.
    fn describe_instance(&self, name: &str) -> impl Future<Output = Result<Instance>> + Send;

    /// Creates an instance and waits until it is available.
    fn create_instance(&self, spec: &NewInstance) -> impl Future<Output = Result<Instance>> + Send;

    /// Sets parameters; restarts only when `restart` is true and one needs it.
    fn set_params(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        restart: bool,
    ) -> impl Future<Output = Result<ParamsChanged>> + Send;

    /// Restarts an instance and waits until it is available.
    fn reboot_instance(&self, name: &str) -> impl Future<Output = Result<Instance>> + Send;

    /// Deletes an instance and its storage.
    fn delete_instance(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Takes a snapshot of an instance; encrypted instances' snapshots are encrypted under
    /// their key, and `key` seals a plain instance's snapshot.
    fn create_snapshot(
        &self,
        instance: &str,
        name: &str,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Snapshot>> + Send;

    /// Takes a snapshot of a server outside the platform, reached by `url` (its password
    /// from `PGPASSWORD`), sealed under `key`. Platforms that cannot (a cloud cannot back
    /// up a server it does not run) refuse with [`ErrorKind::Precondition`].
    fn create_snapshot_of_url(
        &self,
        url: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Snapshot>> + Send;

    /// Copies a snapshot encrypted under `key`.
    fn copy_snapshot_encrypted(
        &self,
        source: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Snapshot>> + Send;

    /// Restores a snapshot into a new instance (encrypted exactly when the snapshot is).
    fn restore_snapshot(
        &self,
        snapshot: &str,
        spec: &NewInstance,
    ) -> impl Future<Output = Result<Instance>> + Send;

    /// Waits for an instance that is still being made (a restore a crashed pgseal left
    /// running, on a platform that goes on without it) and describes it. Platforms whose
    /// work stops with pgseal keep this default: describe it as it is.
    fn wait_available(&self, name: &str) -> impl Future<Output = Result<Instance>> + Send {
        self.describe_instance(name)
    }

    /// Describes a snapshot (only complete snapshots exist).
    fn describe_snapshot(&self, name: &str) -> impl Future<Output = Result<Snapshot>> + Send;

    /// Deletes a snapshot.
    fn delete_snapshot(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Where a restored instance's WAL ended at its first start.
    fn handoff(&self, instance: &str) -> impl Future<Output = Result<Handoff>> + Send;

    /// A libpq connection string by which another instance's server (a subscriber)
    /// reaches `instance`'s database `dbname` as its master user. It may hold a password:
    /// never log it.
    fn subscriber_conninfo(
        &self,
        instance: &str,
        dbname: &str,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Writes the files of `instance`'s data directory named by `relations` (paths
    /// relative to it, as `pg_relation_filepath` gives them) out to its storage from
    /// several threads at once, and waits for them; returns the bytes they hold, or
    /// `None` where the platform's files are not on this machine (AWS).
    ///
    /// Only a head start: a server syncs a table written without WAL from the one
    /// process that commits it, and on storage whose cipher runs on the CPU that one
    /// process is the bound. The commit's own sync still makes the files durable.
    fn write_out(
        &self,
        instance: &str,
        relations: &[String],
    ) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// How to reach an instance over SQL as its master user.
    fn connection(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<tokio_postgres::Config>> + Send;

    /// How a blue/green deployment of `source` would replicate, with green on major
    /// version `engine_version` (`None`: the source's): the platform's own rule. Refused
    /// with [`ErrorKind::Precondition`] where no deployment can make that version.
    fn blue_green_plan(
        &self,
        source: &str,
        engine_version: Option<u32>,
    ) -> impl Future<Output = Result<BlueGreenPlan>> + Send {
        let _ = (source, engine_version);
        async { Err(no_blue_green()) }
    }

    /// Creates the blue/green deployment of migration `migration` for `source`, every
    /// green resource encrypted under `key` and on major version `engine_version`
    /// (`None`: the source's), or finds the one an earlier run made (named and tagged
    /// after the migration). Returns it and whether it was found. Platforms without
    /// blue/green deployments refuse with [`ErrorKind::Precondition`].
    fn create_blue_green(
        &self,
        migration: &str,
        source: &str,
        key: &str,
        engine_version: Option<u32>,
    ) -> impl Future<Output = Result<(BlueGreen, bool)>> + Send {
        let _ = (migration, source, key, engine_version);
        async { Err(no_blue_green()) }
    }

    /// Waits until migration `migration`'s deployment is ready to switch over (green made
    /// and replicating) and describes it.
    fn wait_blue_green(&self, migration: &str) -> impl Future<Output = Result<BlueGreen>> + Send {
        let _ = migration;
        async { Err(no_blue_green()) }
    }

    /// Each green resource of migration `migration`'s deployment with its encryption,
    /// checked against `key`.
    fn green_resources(
        &self,
        migration: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<GreenResource>>> + Send {
        let _ = (migration, key);
        async { Err(no_blue_green()) }
    }

    /// Migration `migration`'s deployment as the platform describes it now; `None` when
    /// there is none.
    fn describe_blue_green(
        &self,
        migration: &str,
    ) -> impl Future<Output = Result<Option<BlueGreen>>> + Send {
        let _ = migration;
        async { Err(no_blue_green()) }
    }

    /// Switches migration `migration`'s deployment over (the platform moves the
    /// applications' names to green), `timeout` being the platform's own switchover
    /// timeout, and waits until the switchover completed.
    fn switchover_blue_green(
        &self,
        migration: &str,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<BlueGreen>> + Send {
        let _ = (migration, timeout);
        async { Err(no_blue_green()) }
    }

    /// Deletes migration `migration`'s deployment, with its green resources when
    /// `delete_green` (an abort before any switchover). A deployment already gone is no
    /// error; returns whether one was deleted.
    fn delete_blue_green(
        &self,
        migration: &str,
        delete_green: bool,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (migration, delete_green);
        async { Err(no_blue_green()) }
    }
}
