//! Local instances: PostgreSQL servers pgseal creates and runs, as RDS runs DB instances.
//!
//! Layout under `PGSEAL_HOME/instances/NAME/` (directories 0711 so the server's OS user
//! can pass through, files pgseal owns 0600):
//! - `instance.json`: the record (port, storage, parameters, encryption key id and wrapped
//!   volume key, creation time, source snapshot), written crash-safely;
//! - `socket/`: the server's unix socket (0700, server user only);
//! - plain instances: `data/` and `log/`;
//! - encrypted instances: `volume.img` (ext4, the ciphertext at rest) mounted at `mnt/`,
//!   where `mnt/pgseal/` is under an fscrypt v2 policy and holds `data/` and `log/`: tables,
//!   WAL and logs are all encrypted. The volume key is a 64-byte KMS data key bound to the
//!   instance's name; only its wrapped form is stored. It is added to the kernel when the
//!   instance starts and removed, and the volume unmounted, when it stops.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pgseal_crypto::{DataKeySpec, EncryptionContext, Kms, WrappedKey};
use pgseal_exec::{ExternalCommand, RunAs};
use pgseal_pg::server::{ServerControl, ServerError, StopMode, create_owned_dir};
use pgseal_pg::{Lsn, PgInstall, PgInstalls};
use serde::{Deserialize, Serialize};

use crate::fscrypt::KeyIdentifier;
use crate::volume::{Volume, VolumeError};

/// The superuser every instance has (the RDS "master user").
pub const MASTER_USER: &str = "postgres";
/// Default allocated storage: 10 GiB (a sparse image: only what is used takes disk).
pub const DEFAULT_STORAGE_BYTES: u64 = 10 << 30;
/// Smallest allocated storage: room for initdb, WAL segments and a checkpoint.
pub const MIN_STORAGE_BYTES: u64 = 256 << 20;
/// The first port tried when none is given.
pub const FIRST_AUTO_PORT: u16 = 5433;

/// The environment variable that moves where automatic ports start (default
/// [`FIRST_AUTO_PORT`]): several pgseal homes on one machine each get their own range, so
/// a port an instance of one home frees while it is down is not picked by another.
pub const FIRST_PORT_ENV: &str = "PGSEAL_FIRST_PORT";
/// The encryption-context key that binds a volume key to its instance.
pub const CONTEXT_INSTANCE: &str = "pgseal:instance";
const RECORD_FILE: &str = "instance.json";

pub use crate::error::LocalError;
pub(crate) use crate::error::io_error;

/// What the first start of a restored instance showed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreFacts {
    /// The snapshot restored.
    pub snapshot: String,
    /// The snapshot's backup end LSN.
    pub backup_end_lsn: Lsn,
    /// `pg_last_wal_replay_lsn()` at first start (NULL after any later restart).
    pub replay_lsn: Option<Lsn>,
    /// The log's `redo done at` LSN (the *start* of the last record replayed).
    pub redo_done_at: Option<Lsn>,
    /// The log's `invalid record length at` LSN (the end of the WAL, for crash copies).
    pub invalid_record_at: Option<Lsn>,
    /// The LSN where this copy's WAL ends: replication into it must start exactly here.
    pub handoff_lsn: Lsn,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The instance's name.
    pub name: String,
    /// The TCP port; `None` picks a free one from [`FIRST_AUTO_PORT`].
    pub port: Option<u16>,
    /// Allocated storage in bytes (the encrypted volume's size).
    pub storage_bytes: u64,
    /// `Some(key)` for an encrypted instance under that KMS key id or alias.
    pub encryption_key: Option<String>,
    /// Server parameters.
    pub params: BTreeMap<String, String>,
    /// The PostgreSQL major version; `None` for the default installation's.
    pub engine_version: Option<u32>,
    /// The master user's password, if TCP logins should work.
    pub master_password: Option<zeroize::Zeroizing<String>>,
}

/// The encryption part of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionRecord {
    /// The KMS key id.
    pub key_id: String,
    /// The key as the user named it at creation (alias or id).
    pub key_ref: String,
    /// The volume key wrapped by the KMS (base64).
    pub wrapped_volume_key: String,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Being created; a record left in this state after a crash is incomplete.
    Creating,
    /// Created.
    Created,
}

/// An instance's record, `instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    /// The name.
    pub name: String,
    /// The TCP port (loopback).
    pub port: u16,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The PostgreSQL version it was created with.
    pub engine_version: String,
    /// Allocated storage in bytes.
    pub storage_bytes: u64,
    /// Encryption, if encrypted.
    pub encryption: Option<EncryptionRecord>,
    /// Server parameters set through pgseal.
    pub params: BTreeMap<String, String>,
    /// The snapshot it was restored from, if any.
    pub source_snapshot: Option<String>,
    /// What its first start after a restore showed (the handoff LSN among them).
    #[serde(default)]
    pub restore: Option<RestoreFacts>,
    /// Creation state.
    pub state: RecordState,
}

/// An instance as `describe` and `list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    /// The name.
    pub name: String,
    /// `available`, `stopped` or `incomplete` (a creation that did not finish: delete it).
    pub status: &'static str,
    /// The TCP port (loopback).
    pub port: u16,
    /// A URL for the master user over TCP (needs the master password).
    pub url: String,
    /// The unix socket directory (trust authentication for root and the server user).
    pub socket_dir: PathBuf,
    /// True for an encrypted instance.
    pub encrypted: bool,
    /// The KMS key id, if encrypted.
    pub key_id: Option<String>,
    /// The key as named at creation, if encrypted.
    pub key_ref: Option<String>,
    /// Allocated storage in bytes.
    pub storage_bytes: u64,
    /// The PostgreSQL version.
    pub engine_version: String,
    /// When it was created.
    pub created: String,
    /// Server parameters set through pgseal.
    pub params: BTreeMap<String, String>,
    /// The snapshot it was restored from.
    pub source_snapshot: Option<String>,
    /// What the first start after a restore showed, with the handoff LSN.
    pub restore: Option<RestoreFacts>,
    /// The data directory (on the encrypted volume when encrypted).
    pub data_dir: PathBuf,
    /// The server log.
    pub log_path: PathBuf,
    /// The volume image (the ciphertext at rest), if encrypted.
    pub volume_image: Option<PathBuf>,
}

/// How a resize was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeHow {
    /// The volume grew while the server ran.
    Online,
    /// The server was stopped, the volume grown, and the server started again.
    WithRestart,
    /// The instance was stopped; its volume grew.
    Offline,
    /// A plain instance: only the record changed.
    RecordOnly,
}

/// What `resize` did.
#[derive(Debug, Clone, Serialize)]
pub struct Resized {
    /// The instance afterwards.
    pub instance: InstanceInfo,
    /// How.
    pub how: ResizeHow,
}

impl InstanceInfo {
    /// A connection to the instance's `postgres` database as the master user, over its
    /// unix socket (trust: root and the server's OS user only).
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(MASTER_USER)
            .dbname("postgres")
            .application_name("pgseal");
        config
    }
}

/// What `set_params` did.
#[derive(Debug, Clone, Serialize)]
pub struct ParamChange {
    /// Parameters now in effect (the server re-read its settings).
    pub applied: Vec<String>,
    /// Parameters that take effect only after a restart.
    pub pending_restart: Vec<String>,
    /// True when the instance was restarted to apply them.
    pub restarted: bool,
}

/// Paths of one instance.
pub(crate) struct Paths {
    dir: PathBuf,
    record: PathBuf,
    socket: PathBuf,
    /// The directory holding `data/` and `log/` (under the fscrypt policy when encrypted).
    root: PathBuf,
    volume: Option<Volume>,
    /// The PostgreSQL major version the instance runs (from its record).
    major: Option<u32>,
}

impl Paths {
    pub(crate) fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }
    fn log(&self) -> PathBuf {
        self.log_dir().join("postgresql.log")
    }
}

/// The local platform's instances.
#[derive(Debug, Clone)]
pub struct LocalInstances {
    pub(crate) home: PathBuf,
    /// The default installation: new instances, snapshots and restores use it.
    pub(crate) install: PgInstall,
    /// Every installation, one per major version (`instance create --engine-version`).
    pub(crate) installs: PgInstalls,
    pub(crate) run_as: RunAs,
    /// Where automatic ports start ([`FIRST_PORT_ENV`], else [`FIRST_AUTO_PORT`]).
    pub(crate) first_auto_port: u16,
}

/// Checks an instance name (RDS-style identifier).
pub fn check_name(name: &str) -> Result<(), LocalError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LocalError::BadName(name.to_string()))
    }
}

/// Parameters pgseal manages itself, which cannot be set by hand.
/// PostgreSQL's parameter names are case-insensitive (`UNIX_SOCKET_DIRECTORIES` is
/// `unix_socket_directories`): compared so. The files and sockets an instance's security
/// rests on (who may connect, as whom; where its logs go: on its encrypted volume) are
/// pgseal's.
const RESERVED_PARAMS: [&str; 11] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "log_directory",
];

fn check_reserved(params: &BTreeMap<String, String>) -> Result<(), LocalError> {
    match RESERVED_PARAMS
        .iter()
        .find(|r| params.keys().any(|k| k.eq_ignore_ascii_case(r)))
    {
        Some(reserved) => Err(LocalError::InvalidInput(format!(
            "'{reserved}' is managed by pgseal (the port is --port)"
        ))),
        None => Ok(()),
    }
}

/// A checked, not yet made, instance: its record and (encrypted) its volume key.
pub(crate) struct NewInstance {
    pub(crate) record: InstanceRecord,
    pub(crate) volume_key: Option<pgseal_crypto::DataKey>,
    /// True when pgseal chose the port (it may choose another if that one is taken by the
    /// time the server starts).
    pub(crate) auto_port: bool,
}

/// How many other ports an instance whose port pgseal chose tries when another process
/// takes its port between the choice and the server's start.
const PORT_RETRIES: usize = 5;

/// How long a settings change waits for the server to have re-read its files.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Parses a size such as `10GiB`, `512MiB`, `1TiB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 10GiB, 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit (use MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Where automatic ports start: [`FIRST_PORT_ENV`] when set, else [`FIRST_AUTO_PORT`].
fn first_auto_port() -> Result<u16, LocalError> {
    match std::env::var(FIRST_PORT_ENV) {
        Err(_) => Ok(FIRST_AUTO_PORT),
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(port) if port >= 1024 => Ok(port),
            _ => Err(LocalError::InvalidInput(format!(
                "{FIRST_PORT_ENV}={text:?}: expected a TCP port from 1024 to 65535"
            ))),
        },
    }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl LocalInstances {
    /// The instances under `home`, run with the machine's PostgreSQL installation.
    pub fn open(home: &Path) -> Result<Self, LocalError> {
        Ok(LocalInstances {
            home: home.to_path_buf(),
            install: PgInstall::discover()?,
            installs: PgInstalls::discover(),
            run_as: RunAs::server_user()?,
            first_auto_port: first_auto_port()?,
        })
    }

    /// Every PostgreSQL installation the instances can run with.
    pub fn installs(&self) -> &PgInstalls {
        &self.installs
    }

    /// The installation for major version `major` (the default one for `None`).
    fn install_for(&self, major: Option<u32>) -> Result<&PgInstall, LocalError> {
        match major {
            None => Ok(&self.install),
            Some(m) if m == self.install.version.major => Ok(&self.install),
            Some(m) => self.installs.for_major(m).ok_or_else(|| {
                LocalError::InvalidInput(format!(
                    "PostgreSQL {m} is not installed (installed: {}); `bash scripts/setup` provisions 17, or name another installation root in {}",
                    self.installs
                        .majors()
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    pgseal_pg::install::ROOTS_ENV
                ))
            }),
        }
    }

    /// pgseal's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The OS user servers run as.
    pub(crate) fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    pub(crate) fn instances_dir(&self) -> PathBuf {
        self.home.join("instances")
    }

    pub(crate) fn paths(&self, record: &InstanceRecord) -> Paths {
        let dir = self.instances_dir().join(&record.name);
        let volume = record
            .encryption
            .as_ref()
            .map(|_| Volume::new(dir.join("volume.img"), dir.join("mnt")));
        let root = match &volume {
            Some(v) => v.mount_point.join("pgseal"),
            None => dir.clone(),
        };
        Paths {
            record: dir.join(RECORD_FILE),
            socket: dir.join("socket"),
            root,
            volume,
            dir,
            major: pgseal_pg::PgVersion::major_of(&record.engine_version),
        }
    }

    fn server(&self, paths: &Paths) -> ServerControl {
        ServerControl {
            // A record of a version no longer installed falls back to the default one,
            // whose server then refuses the data directory with a clear message.
            install: self
                .install_for(paths.major)
                .unwrap_or(&self.install)
                .clone(),
            run_as: self.run_as.clone(),
            data_dir: paths.data(),
            log_path: paths.log(),
        }
    }

    pub(crate) fn server_error(&self, paths: &Paths, error: ServerError) -> LocalError {
        LocalError::Server(error, self.server(paths).log_tail(15))
    }

    fn write_record(&self, record: &InstanceRecord) -> Result<(), LocalError> {
        let path = self.instances_dir().join(&record.name).join(RECORD_FILE);
        let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        pgseal_crashsafe::write_atomic(&path, &bytes, 0o600)
            .map_err(io_error(format!("cannot write {}", path.display())))
    }

    /// Reads an instance's record.
    pub fn record(&self, name: &str) -> Result<InstanceRecord, LocalError> {
        check_name(name)?;
        let path = self.instances_dir().join(name).join(RECORD_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::NotFound(name.to_string()));
            }
            Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| LocalError::RecordDamaged {
            path,
            reason: e.to_string(),
        })
    }

    fn all_records(&self) -> Result<Vec<InstanceRecord>, LocalError> {
        let dir = self.instances_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("cannot list {}", dir.display()))(e)),
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.path().join(RECORD_FILE).exists() {
                records.push(self.record(&name)?);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    pub(crate) fn info(&self, record: &InstanceRecord) -> InstanceInfo {
        let paths = self.paths(record);
        let status = match record.state {
            RecordState::Creating => "incomplete",
            RecordState::Created
                if paths.volume.as_ref().is_none_or(Volume::is_mounted)
                    && self.server(&paths).is_running() =>
            {
                "available"
            }
            RecordState::Created => "stopped",
        };
        InstanceInfo {
            name: record.name.clone(),
            status,
            port: record.port,
            url: format!(
                "postgres://{MASTER_USER}@127.0.0.1:{}/postgres",
                record.port
            ),
            socket_dir: paths.socket.clone(),
            encrypted: record.encryption.is_some(),
            key_id: record.encryption.as_ref().map(|e| e.key_id.clone()),
            key_ref: record.encryption.as_ref().map(|e| e.key_ref.clone()),
            storage_bytes: record.storage_bytes,
            engine_version: record.engine_version.clone(),
            created: record.created.clone(),
            params: record.params.clone(),
            source_snapshot: record.source_snapshot.clone(),
            restore: record.restore.clone(),
            data_dir: paths.data(),
            log_path: paths.log(),
            volume_image: paths.volume.as_ref().map(|v| v.image.clone()),
        }
    }

    /// Describes one instance.
    pub fn describe(&self, name: &str) -> Result<InstanceInfo, LocalError> {
        Ok(self.info(&self.record(name)?))
    }

    /// Every instance, by name.
    pub fn list(&self) -> Result<Vec<InstanceInfo>, LocalError> {
        Ok(self.all_records()?.iter().map(|r| self.info(r)).collect())
    }

    /// Picks the port: the one asked for if free, else the first free one from
    /// [`FIRST_AUTO_PORT`] (or [`FIRST_PORT_ENV`]) that no other instance has.
    fn choose_port(&self, asked: Option<u16>) -> Result<u16, LocalError> {
        let records = self.all_records()?;
        let owner = |port: u16| {
            records
                .iter()
                .find(|r| r.port == port)
                .map(|r| r.name.clone())
        };
        match asked {
            Some(port) if port < 1024 => Err(LocalError::InvalidInput(format!(
                "port {port} is privileged: the server runs as an unprivileged user; choose 1024 or above"
            ))),
            Some(port) => match owner(port) {
                Some(by) => Err(LocalError::PortInUse {
                    port,
                    by: Some(format!("instance '{by}'")),
                }),
                None if !port_free(port) => Err(LocalError::PortInUse { port, by: None }),
                None => Ok(port),
            },
            None => self.choose_port_after(self.first_auto_port - 1),
        }
    }

    /// The first free port after `taken` that no instance has.
    fn choose_port_after(&self, taken: u16) -> Result<u16, LocalError> {
        let records = self.all_records()?;
        (taken.saturating_add(1)..u16::MAX)
            .find(|p| !records.iter().any(|r| r.port == *p) && port_free(*p))
            .ok_or(LocalError::PortInUse {
                port: taken,
                by: None,
            })
    }

    /// Checks what encrypted volumes need, before anything is made.
    fn check_encryption_possible(&self) -> Result<(), LocalError> {
        let unavailable = |reason: &str| {
            Err(LocalError::EncryptionUnavailable {
                reason: reason.to_string(),
            })
        };
        if !nix::unistd::Uid::effective().is_root() {
            return unavailable("pgseal is not running as root");
        }
        if !Path::new("/sys/fs/ext4/features/encryption").exists() {
            return unavailable("the kernel's ext4 has no encryption support");
        }
        if !Path::new("/dev/loop-control").exists() && !Path::new("/dev/loop0").exists() {
            return unavailable("there are no loop devices");
        }
        if pgseal_exec::find_program("mkfs.ext4").is_none() {
            return unavailable("mkfs.ext4 is not on PATH");
        }
        Ok(())
    }

    /// Makes a directory that the server user may pass through (0711), durably; one that
    /// exists keeps its mode but for the search bits it lacks (nothing else is added or
    /// taken away).
    pub(crate) fn make_passable_dir(dir: &Path) -> Result<(), LocalError> {
        use std::os::unix::fs::PermissionsExt;
        let failed = io_error(format!("cannot create {}", dir.display()));
        pgseal_crashsafe::create_dir_all_durable(dir, 0o711).map_err(failed)?;
        let mode = std::fs::metadata(dir)
            .map_err(io_error(format!("cannot read {}", dir.display())))?
            .permissions()
            .mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode((mode | 0o011) & 0o7777),
            )
            .map_err(io_error(format!(
                "cannot let the server's user pass through {}",
                dir.display()
            )))?;
        }
        Ok(())
    }

    /// Proves the server's OS user can enter `dir` (every parent must be traversable).
    fn check_reachable(&self, dir: &Path) -> Result<(), LocalError> {
        let ok = ExternalCommand::new("test")
            .arg("-x")
            .arg(dir)
            .run_as(self.run_as.clone())
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            Ok(())
        } else {
            Err(LocalError::Unreachable {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// Creates and starts an instance. Every input is checked before anything is made; a
    /// failure part-way removes what was made.
    pub fn create(
        &self,
        spec: &InstanceSpec,
        kms: Option<&dyn Kms>,
    ) -> Result<InstanceInfo, LocalError> {
        let plan = self.plan_new(spec, spec.encryption_key.as_deref(), kms)?;
        let record = self.build(plan, |paths, server| {
            server
                .initdb(
                    MASTER_USER,
                    "scram-sha-256",
                    "C.UTF-8",
                    paths.volume.is_some(),
                )
                .map_err(|e| self.server_error(paths, e))
        })?;
        if let Some(password) = &spec.master_password
            && let Err(error) = self.with_client(&record, |client| async move {
                pgseal_pg::set_scram_password(&client, MASTER_USER, password.as_bytes()).await
            })
        {
            let _ = self.remove_files(&record);
            return Err(error);
        }
        tracing::info!(instance = %record.name, port = record.port, encrypted = record.encryption.is_some(), "instance created");
        Ok(self.info(&record))
    }

    /// Checks everything about a new instance and prepares its record and volume key;
    /// nothing is made yet. `encryption_key` names the KMS key for an encrypted instance.
    pub(crate) fn plan_new(
        &self,
        spec: &InstanceSpec,
        encryption_key: Option<&str>,
        kms: Option<&dyn Kms>,
    ) -> Result<NewInstance, LocalError> {
        check_name(&spec.name)?;
        if spec.storage_bytes < MIN_STORAGE_BYTES {
            return Err(LocalError::InvalidInput(format!(
                "--storage must be at least {} MiB",
                MIN_STORAGE_BYTES >> 20
            )));
        }
        if self.instances_dir().join(&spec.name).exists() {
            return Err(LocalError::NameTaken(spec.name.clone()));
        }
        let port = self.choose_port(spec.port)?;
        check_reserved(&spec.params)?;
        let install = self.install_for(spec.engine_version)?;
        let encryption = match encryption_key {
            None => None,
            Some(key) => {
                self.check_encryption_possible()?;
                let kms = kms.ok_or_else(|| {
                    LocalError::InvalidInput("an encrypted instance needs the KMS".into())
                })?;
                // Resolve and test the key now: a disabled key fails before anything is made.
                let meta = kms.describe_key(key)?;
                let context = EncryptionContext::new().with(CONTEXT_INSTANCE, &spec.name);
                let generated = kms.generate_data_key(key, DataKeySpec::Aes256Xts, &context)?;
                Some((
                    EncryptionRecord {
                        key_id: meta.key_id.0,
                        key_ref: key.to_string(),
                        wrapped_volume_key: B64.encode(generated.wrapped.as_bytes()),
                    },
                    generated.plaintext,
                ))
            }
        };
        let (encryption, volume_key) = match encryption {
            Some((record, key)) => (Some(record), Some(key)),
            None => (None, None),
        };
        Ok(NewInstance {
            auto_port: spec.port.is_none(),
            record: InstanceRecord {
                name: spec.name.clone(),
                port,
                created: now_rfc3339(),
                engine_version: install.version.to_string(),
                storage_bytes: spec.storage_bytes,
                encryption,
                params: spec.params.clone(),
                source_snapshot: None,
                restore: None,
                state: RecordState::Creating,
            },
            volume_key,
        })
    }

    /// Makes a planned instance: its directory and record (state `creating`), the encrypted
    /// volume, the owned directories; then `populate` fills the data directory (initdb, or a
    /// snapshot's files), and the server is configured and started. On failure everything
    /// made is removed again.
    pub(crate) fn build(
        &self,
        plan: NewInstance,
        populate: impl FnOnce(&Paths, &ServerControl) -> Result<(), LocalError>,
    ) -> Result<InstanceRecord, LocalError> {
        let NewInstance {
            mut record,
            volume_key,
            auto_port,
        } = plan;
        Self::make_passable_dir(&self.home)?;
        Self::make_passable_dir(&self.instances_dir())?;
        self.check_reachable(&self.instances_dir())?;
        let dir = self.instances_dir().join(&record.name);
        pgseal_crashsafe::create_dir_durable(&dir, 0o711)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        let made = (|| {
            self.write_record(&record)?;
            let paths = self.paths(&record);
            if let (Some(volume), Some(key)) = (&paths.volume, &volume_key) {
                volume.create(record.storage_bytes)?;
                volume.mount()?;
                let id = volume.unlock(key)?;
                volume.make_encrypted_dir(&paths.root, id)?;
                std::fs::set_permissions(
                    &paths.root,
                    std::os::unix::fs::PermissionsExt::from_mode(0o711),
                )
                .map_err(io_error("cannot set the encrypted directory's mode"))?;
            }
            for owned in [paths.data(), paths.log_dir(), paths.socket.clone()] {
                create_owned_dir(&owned, &self.run_as)
                    .map_err(io_error(format!("cannot create {}", owned.display())))?;
            }
            let server = self.server(&paths);
            populate(&paths, &server)?;
            let mut retries = if auto_port { PORT_RETRIES } else { 0 };
            loop {
                server
                    .write_settings(&self.settings(&record, &paths))
                    .map_err(|e| self.server_error(&paths, e))?;
                match server.start() {
                    Ok(()) => break,
                    // Another process bound the port after it was chosen: choose again.
                    Err(_) if retries > 0 && server.log_tail(5).contains("could not bind") => {
                        retries -= 1;
                        let taken = record.port;
                        record.port = self.choose_port_after(taken)?;
                        tracing::info!(instance = %record.name, taken, port = record.port, "port taken meanwhile; trying another");
                        self.write_record(&record)?;
                    }
                    Err(e) => return Err(self.server_error(&paths, e)),
                }
            }
            let mut done = record.clone();
            done.state = RecordState::Created;
            self.write_record(&done)?;
            Ok(done)
        })();
        made.inspect_err(|_| {
            // Undo: nothing half-made stays behind.
            if let Err(cleanup) = self.remove_files(&record) {
                tracing::warn!(instance = %record.name, %cleanup, "could not remove a failed instance's files");
            }
        })
    }

    /// Saves a changed record (for modules that add facts to it).
    pub(crate) fn save_record(&self, record: &InstanceRecord) -> Result<(), LocalError> {
        self.write_record(record)
    }

    /// The settings pgseal writes: its own, then the instance's parameters.
    fn settings(&self, record: &InstanceRecord, paths: &Paths) -> Vec<(String, String)> {
        let mut settings = vec![
            ("port".to_string(), record.port.to_string()),
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            (
                "unix_socket_directories".to_string(),
                paths.socket.display().to_string(),
            ),
            (
                "log_line_prefix".to_string(),
                "%m [%p] %q%u@%d ".to_string(),
            ),
        ];
        settings.extend(record.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        settings
    }

    /// Runs `work` with a superuser connection over the instance's unix socket.
    pub(crate) fn with_client<F, Fut, T>(
        &self,
        record: &InstanceRecord,
        work: F,
    ) -> Result<T, LocalError>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.with_database(record, "postgres", work)
    }

    /// The same on database `db`.
    pub(crate) fn with_database<F, Fut, T>(
        &self,
        record: &InstanceRecord,
        db: &str,
        work: F,
    ) -> Result<T, LocalError>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut config = self.info(record).sql_config();
        config.dbname(db);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("cannot start an async runtime"))?;
        let sql_error = |source| LocalError::Sql {
            target: format!("instance '{}'", record.name),
            source,
        };
        runtime.block_on(async {
            let client = pgseal_pg::connect_pinned(&config).await?;
            work(client).await.map_err(sql_error)
        })
    }

    /// Opens the volume (encrypted instances) and starts the server. Idempotent.
    pub fn start(&self, name: &str, kms: Option<&dyn Kms>) -> Result<InstanceInfo, LocalError> {
        let record = self.created_record(name)?;
        let paths = self.paths(&record);
        let taken = || LocalError::PortTakenWhileDown {
            name: record.name.clone(),
            port: record.port,
        };
        // An unmounted volume means a stopped server: a taken port is named before the
        // key reaches the kernel.
        if paths.volume.as_ref().is_some_and(|v| !v.is_mounted()) && !port_free(record.port) {
            return Err(taken());
        }
        if let (Some(volume), Some(enc)) = (&paths.volume, &record.encryption) {
            let kms = kms.ok_or_else(|| {
                LocalError::InvalidInput("starting an encrypted instance needs the KMS".into())
            })?;
            let wrapped =
                WrappedKey::from_bytes(B64.decode(&enc.wrapped_volume_key).map_err(|e| {
                    LocalError::RecordDamaged {
                        path: paths.record.clone(),
                        reason: format!("wrapped volume key: {e}"),
                    }
                })?);
            // Unwrap first: a disabled key fails before the volume is touched.
            let key = kms.decrypt(
                &wrapped,
                &EncryptionContext::new().with(CONTEXT_INSTANCE, &record.name),
            )?;
            volume.mount()?;
            volume.unlock(&key)?;
        }
        let server = self.server(&paths);
        if !server.is_running() {
            if !port_free(record.port) {
                return Err(taken());
            }
            // Settings are rewritten so a changed socket path or port always holds.
            server
                .write_settings(&self.settings(&record, &paths))
                .map_err(|e| self.server_error(&paths, e))?;
            server.start().map_err(|e| self.server_error(&paths, e))?;
        }
        Ok(self.info(&record))
    }

    /// Stops the server, removes the volume key from the kernel and unmounts the volume
    /// (encrypted instances), leaving only ciphertext. Idempotent.
    pub fn stop(&self, name: &str) -> Result<InstanceInfo, LocalError> {
        let record = self.created_record(name)?;
        let paths = self.paths(&record);
        self.stop_files(&record, &paths, StopMode::Fast)?;
        Ok(self.info(&record))
    }

    fn stop_files(
        &self,
        record: &InstanceRecord,
        paths: &Paths,
        mode: StopMode,
    ) -> Result<(), LocalError> {
        if let Some(volume) = &paths.volume {
            if !volume.is_mounted() {
                return Ok(());
            }
            self.server(paths)
                .stop(mode)
                .map_err(|e| self.server_error(paths, e))?;
            if let Some(id) = self.volume_key_id(record, paths)? {
                let removal = volume.lock(id)?;
                if removal.files_busy {
                    tracing::warn!(instance = %record.name, "files still open while locking the volume");
                }
            }
            volume.unmount()?;
        } else {
            self.server(paths)
                .stop(mode)
                .map_err(|e| self.server_error(paths, e))?;
        }
        Ok(())
    }

    /// The kernel identifier of the volume key, read from the encrypted directory's policy.
    fn volume_key_id(
        &self,
        _record: &InstanceRecord,
        paths: &Paths,
    ) -> Result<Option<KeyIdentifier>, LocalError> {
        if !paths.root.exists() {
            return Ok(None);
        }
        Ok(Some(
            crate::fscrypt::policy_key_id(&paths.root).map_err(VolumeError::from)?,
        ))
    }

    /// Restarts the server (a reboot in RDS terms).
    pub fn reboot(&self, name: &str, kms: Option<&dyn Kms>) -> Result<InstanceInfo, LocalError> {
        let record = self.created_record(name)?;
        let paths = self.paths(&record);
        self.server(&paths)
            .stop(StopMode::Fast)
            .map_err(|e| self.server_error(&paths, e))?;
        self.start(name, kms)
    }

    pub(crate) fn created_record(&self, name: &str) -> Result<InstanceRecord, LocalError> {
        let record = self.record(name)?;
        if record.state == RecordState::Creating {
            return Err(LocalError::InvalidInput(format!(
                "instance '{name}' was never fully created; remove it with `pgseal instance delete {name} --yes`"
            )));
        }
        Ok(record)
    }

    /// Stops the instance and deletes all of its files (the volume image with them).
    pub fn delete(&self, name: &str) -> Result<(), LocalError> {
        let record = self.record(name)?;
        self.remove_files(&record)?;
        tracing::info!(instance = %name, "instance deleted");
        Ok(())
    }

    pub(crate) fn remove_files(&self, record: &InstanceRecord) -> Result<(), LocalError> {
        let paths = self.paths(record);
        let _ = self.server(&paths).stop(StopMode::Immediate);
        if let Some(volume) = &paths.volume {
            volume.unmount()?;
        }
        match std::fs::remove_dir_all(&paths.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("cannot remove {}", paths.dir.display()))(
                e,
            )),
        }
    }

    /// Grows an instance's allocated storage (never shrinks it). An encrypted instance's
    /// volume grows online where the kernel allows it (CAP_SYS_RESOURCE), else offline,
    /// with a restart of a running instance; a plain instance's storage is the machine's
    /// file system, so only the record changes.
    pub fn resize(
        &self,
        name: &str,
        storage_bytes: u64,
        kms: Option<&dyn Kms>,
    ) -> Result<Resized, LocalError> {
        let mut record = self.created_record(name)?;
        if storage_bytes < record.storage_bytes {
            return Err(LocalError::InvalidInput(format!(
                "storage can only grow: {name} has {} MiB, asked for {} MiB",
                record.storage_bytes >> 20,
                storage_bytes >> 20
            )));
        }
        let paths = self.paths(&record);
        let mut how = ResizeHow::RecordOnly;
        if let Some(volume) = &paths.volume {
            let running = volume.is_mounted();
            if running && crate::volume::can_grow_online() {
                volume.grow(storage_bytes)?;
                how = ResizeHow::Online;
            } else {
                if running && kms.is_none() {
                    return Err(LocalError::InvalidInput(
                        "growing this running instance needs a restart, and the restart needs the KMS".into(),
                    ));
                }
                self.stop_files(&record, &paths, StopMode::Fast)?;
                volume.grow_offline(storage_bytes)?;
                how = ResizeHow::Offline;
                if running {
                    self.start(name, kms)?;
                    how = ResizeHow::WithRestart;
                }
            }
        }
        record.storage_bytes = storage_bytes;
        self.write_record(&record)?;
        tracing::info!(instance = %name, storage_bytes, ?how, "instance storage grown");
        Ok(Resized {
            instance: self.info(&record),
            how,
        })
    }

    /// Sets parameters. Those the server can take on reload take effect at once; those that
    /// need a restart (such as `wal_level`) are reported, and applied by a restart only when
    /// `apply_with_restart` is true.
    pub fn set_params(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        apply_with_restart: bool,
        kms: Option<&dyn Kms>,
    ) -> Result<ParamChange, LocalError> {
        let mut record = self.created_record(name)?;
        check_reserved(params)?;
        record.params.extend(params.clone());
        let paths = self.paths(&record);
        let server = self.server(&paths);
        let running = paths.volume.as_ref().is_none_or(Volume::is_mounted) && server.is_running();
        if !running {
            self.write_record(&record)?;
            return Ok(ParamChange {
                applied: Vec::new(),
                pending_restart: params.keys().cloned().collect(),
                restarted: false,
            });
        }
        server
            .write_settings(&self.settings(&record, &paths))
            .map_err(|e| self.server_error(&paths, e))?;
        self.write_record(&record)?;
        let names: Vec<String> = params.keys().cloned().collect();
        let instance = record.name.clone();
        let pending: Vec<String> = self.with_client(&record, |client| async move {
            // The reload is asked for from this session, which handles the postmaster's
            // signal before its next statement: its own load time changes once the files
            // are re-read (a few milliseconds; a fixed 300 ms wait before).
            let load_time = "SELECT pg_conf_load_time()::text";
            let before: String = client.query_one(load_time, &[]).await?.get(0);
            client.execute("SELECT pg_reload_conf()", &[]).await?;
            let deadline = Instant::now() + RELOAD_WAIT;
            loop {
                let now: String = client.query_one(load_time, &[]).await?.get(0);
                if now != before {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(instance = %instance, "the server has not re-read its settings yet; what needs a restart may be under-reported");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let rows = client
                .query(
                    "SELECT name FROM pg_settings WHERE pending_restart AND name = ANY($1)",
                    &[&names],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })?;
        let applied = params
            .keys()
            .filter(|k| !pending.contains(k))
            .cloned()
            .collect();
        if apply_with_restart && !pending.is_empty() {
            self.reboot(name, kms)?;
            return Ok(ParamChange {
                applied: params.keys().cloned().collect(),
                pending_restart: Vec::new(),
                restarted: true,
            });
        }
        Ok(ParamChange {
            applied,
            pending_restart: pending,
            restarted: false,
        })
    }
}

#[cfg(test)]
mod name_properties {
    use super::check_name;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a user types, a name pgseal accepts is one path component that cannot
        /// climb (`..`), hide (`.x`) or split (`/`), holds nothing a shell or a log would
        /// read twice, and fits PostgreSQL's 63-byte names.
        #[test]
        fn an_accepted_name_is_a_safe_path_component(text in "\\PC{0,70}|[a-z0-9./_-]{0,70}") {
            if check_name(&text).is_ok() {
                prop_assert!((1..=63).contains(&text.len()));
                prop_assert!(!text.contains(['/', '.', '\\', '\0', ' ', '\n']));
                prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                let path = std::path::Path::new("/home").join(&text);
                prop_assert_eq!(path.parent(), Some(std::path::Path::new("/home")));
            }
        }
    }

    #[test]
    fn paths_and_odd_names_are_refused() {
        for bad in [
            "..",
            "../x",
            "a/b",
            ".hidden",
            "Bad_Name2",
            "",
            "x-",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("orders-enc2").is_ok());
    }
}
