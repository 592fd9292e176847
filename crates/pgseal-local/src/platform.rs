//! The local platform behind the engine's [`Platform`] trait. Each call runs on tokio's
//! blocking pool (servers, volumes and backups are driven by blocking programs).

use std::collections::BTreeMap;
use std::sync::Arc;

use pgseal_crypto::{Kms, LocalKms};
use pgseal_platform::{
    ErrorKind, Handoff, Instance, InstanceStatus, NewInstance, ParamsChanged, Platform,
    PlatformError, Result, Snapshot,
};

use crate::instance::{
    DEFAULT_STORAGE_BYTES, InstanceInfo, InstanceSpec, LocalError, LocalInstances,
};
use crate::snapshot::{SnapshotFrom, SnapshotRecord};

/// The local platform: instances and snapshots under one home, keys from the local KMS.
#[derive(Clone)]
pub struct LocalPlatform {
    shared: Arc<Shared>,
}

struct Shared {
    instances: LocalInstances,
    kms: Option<LocalKms>,
    master_password: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for LocalPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPlatform")
            .field("instances", &self.shared.instances)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn kms(&self) -> Option<&dyn Kms> {
        self.kms.as_ref().map(|k| k as &dyn Kms)
    }
}

fn no_progress(_: u64, _: Option<u64>) {}

/// Gives a local error the kind the engine decides on.
pub fn classify(error: LocalError) -> PlatformError {
    let kind = match &error {
        LocalError::NotFound(_) | LocalError::SnapshotNotFound(_) => ErrorKind::NotFound,
        e if e.is_precondition() => ErrorKind::Precondition,
        LocalError::Kms(k) => match k.kind() {
            pgseal_crypto::ErrorKind::Tampered | pgseal_crypto::ErrorKind::NotSealed => {
                ErrorKind::Tampered
            }
            pgseal_crypto::ErrorKind::KeyNotFound | pgseal_crypto::ErrorKind::KeyUnusable => {
                ErrorKind::Key
            }
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    };
    PlatformError::new(kind, error)
}

fn instance(info: InstanceInfo) -> Instance {
    let evidence = encryption_evidence(&info);
    Instance {
        evidence,
        storage: storage_use(&info.data_dir),
        status: match info.status {
            "available" => InstanceStatus::Available,
            "stopped" => InstanceStatus::Stopped,
            _ => InstanceStatus::Failed,
        },
        name: info.name,
        encrypted: info.encrypted,
        key_id: info.key_id,
        engine_version: info.engine_version,
        params: info.params,
        source_snapshot: info.source_snapshot,
    }
}

/// The file system holding `data_dir` (an encrypted instance's volume, else the
/// machine's): its size and what an unprivileged writer can still use; `None` while it
/// cannot be read (an encrypted instance's volume is unmounted while it is stopped).
fn storage_use(data_dir: &std::path::Path) -> Option<pgseal_platform::StorageUse> {
    let fs = nix::sys::statvfs::statvfs(data_dir).ok()?;
    let block = fs.fragment_size() as u64;
    Some(pgseal_platform::StorageUse {
        size_bytes: fs.blocks() as u64 * block,
        free_bytes: fs.blocks_available() as u64 * block,
    })
}

/// How `info`'s encryption is known: the fscrypt policy read back from the directory
/// holding its data (`FS_IOC_GET_ENCRYPTION_POLICY_EX`), and where the ciphertext lives.
fn encryption_evidence(info: &InstanceInfo) -> Vec<String> {
    if !info.encrypted {
        return vec!["no fscrypt policy: the instance's data is on plain storage".into()];
    }
    let mut evidence = Vec::new();
    let root = info.data_dir.parent().unwrap_or(&info.data_dir);
    match crate::fscrypt::policy_key_id(root) {
        Ok(id) => evidence.push(format!(
            "fscrypt v2 policy read back from {} (FS_IOC_GET_ENCRYPTION_POLICY_EX): AES-256-XTS contents, AES-256-CTS names, key identifier {}",
            root.display(),
            id.to_hex()
        )),
        Err(e) => evidence.push(format!("the fscrypt policy could not be read: {e}")),
    }
    if let Some(image) = &info.volume_image {
        evidence.push(format!(
            "ciphertext at rest in {}; its volume key is a data key sealed under KMS key {}",
            image.display(),
            info.key_id.as_deref().unwrap_or("?")
        ));
    }
    evidence
}

fn snapshot(record: SnapshotRecord) -> Snapshot {
    Snapshot {
        name: record.name,
        encrypted: record.encryption.is_some(),
        key_id: record.encryption.map(|e| e.key_id),
        end_lsn: Some(record.end_lsn),
        restore_key: None,
    }
}

fn spec(new: &NewInstance, storage_default: u64) -> InstanceSpec {
    InstanceSpec {
        name: new.name.clone(),
        port: new.port,
        storage_bytes: new.storage_bytes.unwrap_or(storage_default),
        encryption_key: new.encryption_key.clone(),
        params: new.params.clone(),
        engine_version: new.engine_version,
        master_password: None,
    }
}

impl LocalPlatform {
    /// The platform over `instances`, with the KMS for encrypted instances and snapshots.
    pub fn new(instances: LocalInstances, kms: Option<LocalKms>) -> Self {
        Self::with_master_password(instances, kms, None)
    }

    /// [`LocalPlatform::new`], whose new instances get `password` for their master user
    /// (TCP logins), as `pgseal instance create` gives it.
    pub fn with_master_password(
        instances: LocalInstances,
        kms: Option<LocalKms>,
        password: Option<zeroize::Zeroizing<String>>,
    ) -> Self {
        LocalPlatform {
            shared: Arc::new(Shared {
                instances,
                kms,
                master_password: password,
            }),
        }
    }

    /// The instances this platform manages.
    pub fn instances(&self) -> &LocalInstances {
        &self.shared.instances
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> std::result::Result<T, LocalError> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || work(&shared).map_err(classify))
            .await
            .unwrap_or_else(|e| {
                Err(PlatformError::new(
                    ErrorKind::Other,
                    format!("a platform task failed: {e}"),
                ))
            })
    }
}

impl Platform for LocalPlatform {
    async fn describe_instance(&self, name: &str) -> Result<Instance> {
        let name = name.to_string();
        self.blocking(move |s| s.instances.describe(&name).map(instance))
            .await
    }

    async fn create_instance(&self, new: &NewInstance) -> Result<Instance> {
        let mut spec = spec(new, DEFAULT_STORAGE_BYTES);
        spec.master_password = self.shared.master_password.clone();
        self.blocking(move |s| s.instances.create(&spec, s.kms()).map(instance))
            .await
    }

    async fn set_params(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        restart: bool,
    ) -> Result<ParamsChanged> {
        let (name, params) = (name.to_string(), params.clone());
        self.blocking(move |s| {
            let c = s.instances.set_params(&name, &params, restart, s.kms())?;
            Ok(ParamsChanged {
                applied: c.applied,
                pending_restart: c.pending_restart,
                restarted: c.restarted,
            })
        })
        .await
    }

    async fn reboot_instance(&self, name: &str) -> Result<Instance> {
        let name = name.to_string();
        self.blocking(move |s| s.instances.reboot(&name, s.kms()).map(instance))
            .await
    }

    async fn delete_instance(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |s| s.instances.delete(&name)).await
    }

    async fn create_snapshot(
        &self,
        instance: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<Snapshot> {
        let (from, name, key) = (
            SnapshotFrom::Instance(instance.to_string()),
            name.to_string(),
            key.map(str::to_string),
        );
        self.blocking(move |s| {
            s.instances
                .create_snapshot(&from, &name, key.as_deref(), s.kms(), &no_progress)
                .map(snapshot)
        })
        .await
    }

    async fn create_snapshot_of_url(&self, url: &str, name: &str, key: &str) -> Result<Snapshot> {
        let (from, name, key) = (
            SnapshotFrom::Url(url.to_string()),
            name.to_string(),
            key.to_string(),
        );
        self.blocking(move |s| {
            s.instances
                .create_snapshot(&from, &name, Some(&key), s.kms(), &no_progress)
                .map(snapshot)
        })
        .await
    }

    async fn copy_snapshot_encrypted(
        &self,
        source: &str,
        name: &str,
        key: &str,
    ) -> Result<Snapshot> {
        let (source, name, key) = (source.to_string(), name.to_string(), key.to_string());
        self.blocking(move |s| {
            s.instances
                .copy_snapshot(&source, &name, Some(&key), s.kms(), &no_progress)
                .map(snapshot)
        })
        .await
    }

    async fn restore_snapshot(&self, snap: &str, new: &NewInstance) -> Result<Instance> {
        let (snap, new) = (snap.to_string(), new.clone());
        self.blocking(move |s| {
            let record = s.instances.snapshot(&snap)?;
            let default = DEFAULT_STORAGE_BYTES.max(record.backup_bytes * 2 + (256 << 20));
            s.instances
                .restore_snapshot(&snap, &spec(&new, default), s.kms(), &no_progress)
                .map(instance)
        })
        .await
    }

    async fn describe_snapshot(&self, name: &str) -> Result<Snapshot> {
        let name = name.to_string();
        self.blocking(move |s| s.instances.snapshot(&name).map(snapshot))
            .await
    }

    async fn subscriber_conninfo(&self, name: &str, dbname: &str) -> Result<String> {
        // Both servers run as the same OS user, which the socket directory (0700) and
        // its trust rule admit: no password is needed, so none is stored.
        let (name, dbname) = (name.to_string(), dbname.to_string());
        self.blocking(move |s| {
            let mut config = s.instances.describe(&name)?.sql_config();
            config.dbname(&dbname);
            Ok(pgseal_pg::conninfo(&config))
        })
        .await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |s| s.instances.delete_snapshot(&name))
            .await
    }

    async fn handoff(&self, name: &str) -> Result<Handoff> {
        let name = name.to_string();
        self.blocking(move |s| {
            let info = s.instances.describe(&name)?;
            let facts = info.restore.ok_or_else(|| {
                LocalError::InvalidInput(format!(
                    "instance '{name}' was not restored from a snapshot: it has no handoff LSN"
                ))
            })?;
            Ok(Handoff {
                lsn: facts.handoff_lsn,
                redo_done_at: facts.redo_done_at,
                backup_end_lsn: Some(facts.backup_end_lsn),
            })
        })
        .await
    }

    async fn connection(&self, name: &str) -> Result<tokio_postgres::Config> {
        let name = name.to_string();
        self.blocking(move |s| {
            let info = s.instances.describe(&name)?;
            let config = info.sql_config();
            Ok(config)
        })
        .await
    }

    async fn write_out(&self, name: &str, relations: &[String]) -> Result<Option<u64>> {
        let name = name.to_string();
        let relations = relations.to_vec();
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        self.blocking(move |s| {
            let info = s.instances.describe(&name)?;
            crate::writeout::write_out(&info.data_dir, &relations, threads).map(Some)
        })
        .await
    }
}
