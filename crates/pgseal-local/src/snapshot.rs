//! Snapshots: physical base backups of an instance or of any PostgreSQL reachable by URL,
//! plain or sealed; copies (encrypting, or re-keying); and restores into new instances.
//!
//! A snapshot is one tar stream from `pg_basebackup -D - -Ft -X fetch`: data files, the
//! WAL the backup needs and `backup_manifest`. A plain snapshot stores it as
//! `snapshot.tar`; an encrypted one is sealed while it streams (`snapshot.tar.sealed`, the
//! format in `docs/sealed-stream.md`), so no plaintext copy of the database lands on disk.
//! `-X fetch` needs the WAL to survive until the backup ends: pgseal holds a *temporary*
//! physical slot on a SQL session for the backup's duration, which the server drops by
//! itself if pgseal dies, so no slot is ever left behind to fill the source's disk.
//!
//! The rules RDS enforces hold: a snapshot of an encrypted instance is encrypted under the
//! instance's key; a plain snapshot restores to a plain instance and an encrypted one to an
//! instance encrypted under the snapshot's key (so a plain snapshot reaches encrypted
//! storage only through an encrypted copy); an instance's key never changes.
//!
//! A restore records what its first start showed ([`RestoreFacts`]): the backup's end LSN,
//! `pg_last_wal_replay_lsn()` and the log's `redo done at` line, and from them the handoff
//! LSN by the rule in FIELD-NOTES (for a base backup, the replay position at first start,
//! which must lie at or after the backup's end and after `redo done at`).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use pgseal_crypto::stream::{UnsealReader, seal_from};
use pgseal_crypto::{EncryptionContext, Kms};
use pgseal_exec::{ExternalCommand, Pipe, RunAs};
use pgseal_pg::Lsn;
use pgseal_pg::lsn::lsn_after;
use serde::{Deserialize, Serialize};

use crate::instance::{
    InstanceInfo, InstanceSpec, LocalError, LocalInstances, check_name, io_error,
};

const SNAPSHOT_RECORD: &str = "snapshot.json";
/// The encryption-context key that binds a sealed snapshot to its name.
pub const CONTEXT_SNAPSHOT: &str = "pgseal:snapshot";

/// Where a snapshot's data came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SnapshotSource {
    /// A local instance.
    Instance {
        /// Its name.
        name: String,
    },
    /// A server reached by URL (shown without its password).
    External {
        /// `user@host:port/dbname`.
        target: String,
    },
    /// A copy of another snapshot.
    Copy {
        /// The snapshot copied.
        of: String,
    },
}

/// How a snapshot is encrypted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotEncryption {
    /// The KMS key id its data key is wrapped under.
    pub key_id: String,
}

/// A snapshot's record, `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    /// The name.
    pub name: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// Where its data came from.
    pub source: SnapshotSource,
    /// The source's PostgreSQL version (`server_version`).
    pub engine_version: String,
    /// Encryption, if sealed.
    pub encryption: Option<SnapshotEncryption>,
    /// Where the backup's WAL starts.
    pub start_lsn: Lsn,
    /// Where the backup ends: a restore is consistent from here on.
    pub end_lsn: Lsn,
    /// Bytes of the backup itself (the tar stream).
    pub backup_bytes: u64,
    /// Bytes stored (with the sealed format's overhead).
    pub stored_bytes: u64,
    /// The source instance's parameters, carried to restores.
    pub params: BTreeMap<String, String>,
}

pub use crate::instance::RestoreFacts;

/// What a snapshot is taken from.
#[derive(Debug, Clone)]
pub enum SnapshotFrom {
    /// A local instance, by name.
    Instance(String),
    /// Any PostgreSQL, by URL (`postgres://user:password@host:port/db`).
    Url(String),
}

/// Progress reports: bytes done so far, and the expected total when known.
pub type Progress<'a> = &'a (dyn Fn(u64, Option<u64>) + Sync);

/// A reader that reports the bytes read through it.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: Option<u64>,
    progress: Progress<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.total);
        Ok(n)
    }
}

/// Connection details for `pg_basebackup` and for the SQL session beside it.
struct SourceConn {
    /// The server, for both.
    config: tokio_postgres::Config,
}

impl SourceConn {
    /// What `pg_basebackup` gets in its environment (its arguments name no server): host,
    /// port, user, the password, and the same TLS settings pgseal's own session follows
    /// (`PGSSLMODE`, `PGSSLROOTCERT`, a URL's `sslmode=require`), so the physical copy is
    /// never read under weaker TLS than the session beside it. Holds the password: never
    /// log it.
    fn libpq_env(&self) -> Vec<(&'static str, zeroize::Zeroizing<String>)> {
        pgseal_pg::libpq_env(&self.config)
            .into_iter()
            .map(|(k, v)| (k, zeroize::Zeroizing::new(v)))
            .collect()
    }
}

fn source_from_url(url: &str) -> Result<(SourceConn, String), LocalError> {
    // The password comes from PGPASSWORD when the URL has none.
    let (config, _) = pgseal_pg::config_from_url(url).map_err(|e| {
        LocalError::InvalidInput(format!("--source-url is not a PostgreSQL URL: {e}"))
    })?;
    let target = pgseal_pg::describe_target(&config);
    Ok((SourceConn { config }, target))
}

/// The claim on a new snapshot's name: no other process writes a snapshot of that name
/// while it is held (see `LocalInstances::claim_snapshot`).
struct SnapshotClaim {
    path: PathBuf,
    _lock: Flock<std::fs::File>,
}

impl Drop for SnapshotClaim {
    /// Removes the lock file while still holding it (the lock goes after this runs), so
    /// no lock file outlives the snapshot's making.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl LocalInstances {
    fn snapshots_dir(&self) -> PathBuf {
        self.home.join("snapshots")
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.snapshots_dir().join(name)
    }

    fn snapshot_data_path(&self, record: &SnapshotRecord) -> PathBuf {
        self.data_path(&record.name, record.encryption.is_some())
    }

    /// The file a snapshot's data lives in, sealed or plain.
    fn data_path(&self, name: &str, sealed: bool) -> PathBuf {
        let file = if sealed {
            "snapshot.tar.sealed"
        } else {
            "snapshot.tar"
        };
        self.snapshot_dir(name).join(file)
    }

    /// Writes `input` as snapshot `name`'s data, sealed under `seal` when given (bound to
    /// the snapshot's name); the file appears only once complete. Returns the bytes stored
    /// and the key id sealed under.
    fn write_data(
        &self,
        name: &str,
        input: &mut (impl Read + Send),
        seal: Option<(&dyn Kms, &str)>,
    ) -> Result<(u64, Option<String>), LocalError> {
        let path = self.data_path(name, seal.is_some());
        let mut out = pgseal_crashsafe::PendingFile::create(&path, 0o600, false)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        let written = match seal {
            Some((kms, key)) => {
                let context = EncryptionContext::new().with(CONTEXT_SNAPSHOT, name);
                let summary = seal_from(
                    kms,
                    key,
                    context,
                    input,
                    &mut out,
                    pgseal_crypto::stream::DEFAULT_CHUNK_SIZE,
                )?;
                (summary.sealed_bytes, Some(summary.key_id.0))
            }
            None => (
                std::io::copy(input, &mut out).map_err(io_error("cannot write the snapshot"))?,
                None,
            ),
        };
        out.commit()
            .map_err(io_error(format!("cannot put {} in place", path.display())))?;
        Ok(written)
    }

    /// Claims snapshot name `name` for a new snapshot: refuses an invalid name, a complete
    /// snapshot of that name, or one another process is writing. The claim is a lock
    /// (`snapshots/.NAME.lock`, `flock`) held until the returned guard drops; a directory
    /// of that name without its record, found under the claim, is what a killed process
    /// left half-written: it is removed, so the snapshot can be taken again.
    fn claim_snapshot(&self, name: &str) -> Result<SnapshotClaim, LocalError> {
        check_name(name)?;
        let dir = self.snapshot_dir(name);
        if dir.join(SNAPSHOT_RECORD).exists() {
            return Err(LocalError::InvalidInput(format!(
                "snapshot '{name}' already exists"
            )));
        }
        pgseal_crashsafe::create_dir_all_durable(&self.snapshots_dir(), 0o700)
            .map_err(io_error("cannot create the snapshots directory"))?;
        let lock_path = self.snapshots_dir().join(format!(".{name}.lock"));
        let lock = loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io_error(format!("cannot open {}", lock_path.display())))?;
            let lock =
                Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                    LocalError::InvalidInput(format!(
                        "snapshot '{name}' is being written by another process ({errno})"
                    ))
                })?;
            // The holder before us removes the file before it lets go: a lock on a file no
            // longer at the path claims nothing, so open the path again.
            let held = lock
                .metadata()
                .map_err(io_error(format!("cannot read {}", lock_path.display())))?;
            match std::fs::metadata(&lock_path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => break lock,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(format!("cannot read {}", lock_path.display()))(e)),
            }
        };
        let claim = SnapshotClaim {
            path: lock_path,
            _lock: lock,
        };
        if dir.join(SNAPSHOT_RECORD).exists() {
            return Err(LocalError::InvalidInput(format!(
                "snapshot '{name}' already exists"
            )));
        }
        if dir.exists() {
            tracing::warn!(
                snapshot = name,
                "removing a snapshot a killed process left half-written"
            );
            std::fs::remove_dir_all(&dir).map_err(io_error(format!(
                "cannot remove the half-written {}",
                dir.display()
            )))?;
        }
        Ok(claim)
    }

    /// Reads a snapshot's record.
    pub fn snapshot(&self, name: &str) -> Result<SnapshotRecord, LocalError> {
        check_name(name)?;
        let path = self.snapshot_dir(name).join(SNAPSHOT_RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::SnapshotNotFound(name.to_string()));
            }
            Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| LocalError::RecordDamaged {
            path,
            reason: e.to_string(),
        })
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, LocalError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(self.snapshots_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_error("cannot list snapshots")(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join(SNAPSHOT_RECORD).exists() {
                out.push(self.snapshot(&name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), LocalError> {
        self.snapshot(name)?;
        std::fs::remove_dir_all(self.snapshot_dir(name))
            .map_err(io_error(format!("cannot delete snapshot {name}")))
    }

    /// Makes a new snapshot's directory, under the claim on its name.
    fn new_snapshot_dir(&self, name: &str, _claim: &SnapshotClaim) -> Result<PathBuf, LocalError> {
        let dir = self.snapshot_dir(name);
        pgseal_crashsafe::create_dir_durable(&dir, 0o700)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        Ok(dir)
    }

    fn write_snapshot_record(&self, record: &SnapshotRecord) -> Result<(), LocalError> {
        let path = self.snapshot_dir(&record.name).join(SNAPSHOT_RECORD);
        let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        pgseal_crashsafe::write_atomic(&path, &bytes, 0o600)
            .map_err(io_error(format!("cannot write {}", path.display())))
    }

    /// Takes a snapshot online (no downtime). `encrypt_key` seals it while it streams; for an
    /// encrypted instance the snapshot is always sealed, under the instance's own key.
    pub fn create_snapshot(
        &self,
        from: &SnapshotFrom,
        name: &str,
        encrypt_key: Option<&str>,
        kms: Option<&dyn Kms>,
        progress: Progress<'_>,
    ) -> Result<SnapshotRecord, LocalError> {
        let claim = self.claim_snapshot(name)?;
        let (conn, source, params, key) = match from {
            SnapshotFrom::Instance(instance) => {
                let record = self.created_record(instance)?;
                let info = self.info(&record);
                if info.status != "available" {
                    return Err(LocalError::InvalidInput(format!(
                        "instance '{instance}' is {}; start it first (`pgseal instance start {instance}`)",
                        info.status
                    )));
                }
                let key = match (&record.encryption, encrypt_key) {
                    (Some(enc), None) => Some(enc.key_id.clone()),
                    (Some(enc), Some(asked)) => {
                        let kms = kms.ok_or_else(|| {
                            LocalError::InvalidInput("sealing needs the KMS".into())
                        })?;
                        let asked_id = kms.resolve(asked)?.0;
                        if asked_id != enc.key_id {
                            return Err(LocalError::InvalidInput(format!(
                                "a snapshot of encrypted instance '{instance}' is encrypted under its key {}; \
                                 to change keys, copy the snapshot with `pgseal snapshot copy --key`",
                                enc.key_id
                            )));
                        }
                        Some(asked_id)
                    }
                    (None, asked) => asked.map(str::to_string),
                };
                let config = info.sql_config();
                (
                    SourceConn { config },
                    SnapshotSource::Instance {
                        name: instance.clone(),
                    },
                    record.params.clone(),
                    key,
                )
            }
            SnapshotFrom::Url(url) => {
                let (conn, target) = source_from_url(url)?;
                (
                    conn,
                    SnapshotSource::External { target },
                    BTreeMap::new(),
                    encrypt_key.map(str::to_string),
                )
            }
        };
        let seal = match &key {
            Some(k) => {
                let kms =
                    kms.ok_or_else(|| LocalError::InvalidInput("sealing needs the KMS".into()))?;
                // Fails now, before the backup starts, for an unknown or disabled key.
                let meta = kms.describe_key(k)?;
                if meta.state != pgseal_crypto::KeyState::Enabled {
                    return Err(LocalError::Kms(pgseal_crypto::Error::KeyDisabled {
                        key_id: meta.key_id.0,
                    }));
                }
                Some((kms, k.clone()))
            }
            None => None,
        };

        let dir = self.new_snapshot_dir(name, &claim)?;
        let made = self.stream_backup(&conn, name, seal, progress).and_then(
            |(taken, stored_bytes, key_id)| {
                let record = SnapshotRecord {
                    name: name.to_string(),
                    created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                    source: source.clone(),
                    engine_version: taken.server_version,
                    encryption: key_id.map(|key_id| SnapshotEncryption { key_id }),
                    start_lsn: taken.start_lsn,
                    end_lsn: taken.end_lsn,
                    backup_bytes: taken.bytes,
                    stored_bytes,
                    params: params.clone(),
                };
                self.write_snapshot_record(&record)?;
                Ok(record)
            },
        );
        made.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Runs `pg_basebackup` into the snapshot's file (sealed when `seal` is given) while a
    /// SQL session holds a temporary physical slot. Returns what was taken, the bytes
    /// stored and the key id sealed under.
    fn stream_backup(
        &self,
        conn: &SourceConn,
        name: &str,
        seal: Option<(&dyn Kms, String)>,
        progress: Progress<'_>,
    ) -> Result<(Taken, u64, Option<String>), LocalError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io_error("cannot start an async runtime"))?;
        let target = pgseal_pg::describe_target(&conn.config);
        let sql_error = |source| LocalError::Sql {
            target: format!("the source of snapshot '{name}' ({target})"),
            source,
        };
        let slot = format!(
            "pgseal_snapshot_{}_{}",
            std::process::id(),
            name.replace('-', "_")
        );
        let (client, server_version, total) = runtime.block_on(async {
            let client = pgseal_pg::connect_pinned(&conn.config).await?;
            // Temporary: dropped by the server when this session ends, however it ends.
            client
                .execute("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot])
                .await
                .map_err(sql_error)?;
            let row = client
                .query_one("SELECT current_setting('server_version'), (SELECT sum(pg_database_size(oid))::bigint FROM pg_database)", &[])
                .await
                .map_err(sql_error)?;
            Ok::<_, LocalError>((client, row.get::<_, String>(0), row.get::<_, Option<i64>>(1)))
        })?;

        let taken = self.run_pg_basebackup(conn, name, seal, progress, total, server_version);
        // Drop the slot now, whatever happened: the server would drop it when the session
        // closes, but only some moments after this returns.
        runtime.block_on(async {
            if let Err(error) = client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await {
                tracing::warn!(%slot, %error, "could not drop the snapshot's temporary slot; the server drops it with the session");
            }
        });
        drop(client);
        taken
    }

    /// Runs `pg_basebackup` into the snapshot's file (sealed when `seal` is given) and reads
    /// the WAL positions it reports.
    fn run_pg_basebackup(
        &self,
        conn: &SourceConn,
        name: &str,
        seal: Option<(&dyn Kms, String)>,
        progress: Progress<'_>,
        total: Option<i64>,
        server_version: String,
    ) -> Result<(Taken, u64, Option<String>), LocalError> {
        let mut cmd = ExternalCommand::new(self.install.program("pg_basebackup"))
            .args([
                "-D",
                "-",
                "-F",
                "t",
                "-X",
                "fetch",
                "--checkpoint=fast",
                "-v",
                "--no-password",
            ])
            .arg(format!("--label=pgseal snapshot {name}"));
        for (key, value) in conn.libpq_env() {
            cmd = cmd.env(key, value.as_str());
        }
        let mut running = cmd.spawn(Pipe::Stdout)?;
        let stdout = running.take_stdout().expect("stdout was piped");
        let mut input = Counting {
            inner: stdout,
            done: 0,
            total: total.map(|t| t as u64),
            progress,
        };
        let copied = self.write_data(
            name,
            &mut input,
            seal.as_ref().map(|(kms, key)| (*kms, key.as_str())),
        );
        let bytes = input.done;
        let (stored, key_id) = match copied {
            Ok(c) => c,
            Err(e) => {
                running.kill();
                return Err(e);
            }
        };
        // A failure here leaves a complete-looking file; the caller removes the snapshot's
        // directory on any error.
        let finished = running.finish()?;
        let log = finished.stderr_text();
        let lsn = |marker: &str| {
            lsn_after(&log, marker).ok_or_else(|| {
                LocalError::InvalidInput(format!(
                    "pg_basebackup did not report its {marker}: {log}"
                ))
            })
        };
        Ok((
            Taken {
                server_version,
                start_lsn: lsn("write-ahead log start point: ")?,
                end_lsn: lsn("write-ahead log end point: ")?,
                bytes,
            },
            stored,
            key_id,
        ))
    }

    /// Copies a snapshot: plain or encrypted under `key` (a plain snapshot becomes encrypted
    /// this way, and an encrypted one can move to another key). An encrypted snapshot can
    /// not be copied to a plain one. The data streams through; nothing plaintext is written.
    pub fn copy_snapshot(
        &self,
        source: &str,
        name: &str,
        key: Option<&str>,
        kms: Option<&dyn Kms>,
        progress: Progress<'_>,
    ) -> Result<SnapshotRecord, LocalError> {
        let src = self.snapshot(source)?;
        let claim = self.claim_snapshot(name)?;
        let key = match (&src.encryption, key) {
            (Some(enc), None) => Some(enc.key_id.clone()),
            (_, Some(k)) => Some(k.to_string()),
            (None, None) => None,
        };
        let kms_needed = || {
            kms.ok_or_else(|| LocalError::InvalidInput("encrypted snapshots need the KMS".into()))
        };
        if let Some(k) = &key {
            kms_needed()?.describe_key(k)?;
        }
        let file = std::fs::File::open(self.snapshot_data_path(&src))
            .map_err(io_error("cannot open the snapshot"))?;
        let total = Some(src.backup_bytes);
        // The plaintext tar as a stream: unsealed on the fly for an encrypted source.
        let plain: Box<dyn Read + Send> = match &src.encryption {
            Some(_) => Box::new(UnsealReader::open(kms_needed()?, file)?),
            None => Box::new(file),
        };
        let mut input = Counting {
            inner: plain,
            done: 0,
            total,
            progress,
        };
        let dir = self.new_snapshot_dir(name, &claim)?;
        let made = (|| {
            let seal = match &key {
                Some(k) => Some((kms_needed()?, k.as_str())),
                None => None,
            };
            let (stored, key_id) = self.write_data(name, &mut input, seal)?;
            let record = SnapshotRecord {
                name: name.to_string(),
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
                source: SnapshotSource::Copy {
                    of: src.name.clone(),
                },
                encryption: key_id.map(|key_id| SnapshotEncryption { key_id }),
                stored_bytes: stored,
                ..src.clone()
            };
            self.write_snapshot_record(&record)?;
            Ok(record)
        })();
        made.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Restores a snapshot into a new instance: plain from a plain snapshot, encrypted under
    /// the snapshot's key from an encrypted one. The stream is authenticated before the
    /// server starts; a damaged snapshot leaves no instance behind. Records the handoff LSN.
    pub fn restore_snapshot(
        &self,
        snapshot: &str,
        spec: &InstanceSpec,
        kms: Option<&dyn Kms>,
        progress: Progress<'_>,
    ) -> Result<InstanceInfo, LocalError> {
        let snap = self.snapshot(snapshot)?;
        if spec.encryption_key.is_some() {
            return Err(LocalError::InvalidInput(
                "a restore takes its encryption from the snapshot: a plain snapshot restores to a plain instance; \
                 to restore onto encrypted storage, first make an encrypted copy (`pgseal snapshot copy --key`)"
                    .into(),
            ));
        }
        let needed = snap.backup_bytes + snap.backup_bytes / 4 + (256 << 20);
        if spec.storage_bytes < needed {
            return Err(LocalError::InvalidInput(format!(
                "--storage {} MiB is too small for snapshot '{snapshot}' ({} MiB of data); give at least {} MiB",
                spec.storage_bytes >> 20,
                snap.backup_bytes >> 20,
                needed >> 20
            )));
        }
        let mut spec = spec.clone();
        for (k, v) in &snap.params {
            spec.params.entry(k.clone()).or_insert_with(|| v.clone());
        }
        // Authenticate the header and unwrap the data key before anything is made.
        let file = std::fs::File::open(self.snapshot_data_path(&snap))
            .map_err(io_error("cannot open the snapshot"))?;
        let mut reader: Box<dyn Read + Send> = match &snap.encryption {
            Some(_) => {
                let kms = kms.ok_or_else(|| {
                    LocalError::InvalidInput("encrypted snapshots need the KMS".into())
                })?;
                Box::new(UnsealReader::open(kms, file)?)
            }
            None => Box::new(file),
        };
        let key_id = snap.encryption.as_ref().map(|e| e.key_id.clone());
        let mut plan = self.plan_new(&spec, key_id.as_deref(), kms)?;
        plan.record.source_snapshot = Some(snap.name.clone());
        let run_as = self.run_as.clone();
        let record = self.build(plan, |paths, _server| {
            let mut input = Counting {
                inner: &mut reader,
                done: 0,
                total: Some(snap.backup_bytes),
                progress,
            };
            extract_tar(&mut input, &paths.data(), &run_as)?;
            complete_config(&paths.data(), &run_as)
        })?;
        let facts = self.first_start_facts(&record, &snap);
        let mut record = record;
        match facts {
            Ok(facts) => {
                tracing::info!(instance = %record.name, snapshot = %snap.name, handoff_lsn = %facts.handoff_lsn, "restored");
                record.restore = Some(facts);
                self.save_record(&record)?;
                Ok(self.info(&record))
            }
            Err(e) => {
                let _ = self.remove_files(&record);
                Err(e)
            }
        }
    }

    /// Reads the handoff facts right after the first start and checks them.
    fn first_start_facts(
        &self,
        record: &crate::instance::InstanceRecord,
        snap: &SnapshotRecord,
    ) -> Result<RestoreFacts, LocalError> {
        let replay: Option<String> = self.with_client(record, |client| async move {
            let row = client
                .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                .await?;
            Ok(row.get(0))
        })?;
        let replay_lsn = replay.as_deref().and_then(|t| t.parse().ok());
        let log = std::fs::read_to_string(self.info(record).log_path).unwrap_or_default();
        let redo_done_at = lsn_after(&log, "redo done at ");
        let invalid_record_at = lsn_after(&log, "invalid record length at ");
        let handoff = replay_lsn.or(invalid_record_at).ok_or_else(|| {
            LocalError::InvalidInput("the restored copy reported no end of WAL (no replay LSN, no 'invalid record length' line)".into())
        })?;
        if handoff < snap.end_lsn || redo_done_at.is_some_and(|r| r >= handoff) {
            return Err(LocalError::InvalidInput(format!(
                "the restored copy's end of WAL {handoff} fails the handoff checks (backup end {}, redo done at {})",
                snap.end_lsn,
                redo_done_at
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into())
            )));
        }
        Ok(RestoreFacts {
            snapshot: snap.name.clone(),
            backup_end_lsn: snap.end_lsn,
            replay_lsn,
            redo_done_at,
            invalid_record_at,
            handoff_lsn: handoff,
        })
    }
}

/// What `pg_basebackup` took.
struct Taken {
    server_version: String,
    start_lsn: Lsn,
    end_lsn: Lsn,
    bytes: u64,
}

/// Extracts a tar stream into `dir` as the server's OS user (so ownership is right).
fn extract_tar(
    input: &mut impl Read,
    dir: &std::path::Path,
    run_as: &RunAs,
) -> Result<(), LocalError> {
    let mut running = ExternalCommand::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(dir)
        .run_as(run_as.clone())
        .spawn(Pipe::Stdin)?;
    let mut stdin = running.take_stdin().expect("stdin was piped");
    let copied = std::io::copy(input, &mut stdin);
    drop(stdin);
    match copied {
        Ok(_) => {
            running.finish()?;
            Ok(())
        }
        Err(e) => {
            running.kill();
            Err(
                match e
                    .get_ref()
                    .is_some_and(|inner| inner.is::<pgseal_crypto::Error>())
                {
                    true => LocalError::Kms(pgseal_crypto::Error::from_io(
                        e,
                        "cannot unseal the snapshot",
                    )),
                    false => io_error("cannot restore the snapshot's files")(e),
                },
            )
        }
    }
}

/// Gives a restored data directory what a backup of a distribution-managed cluster lacks
/// (Debian keeps `postgresql.conf` and `pg_hba.conf` in /etc): a minimal config that
/// includes pgseal's settings, and an access policy like the one instances are made with.
fn complete_config(data: &std::path::Path, run_as: &RunAs) -> Result<(), LocalError> {
    let write = |name: &str, text: &str| -> Result<(), LocalError> {
        let path = data.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .map_err(io_error(format!("cannot write {}", path.display())))?;
            run_as.chown(&path).map_err(io_error(format!(
                "cannot give {} to the server user",
                path.display()
            )))?;
        }
        Ok(())
    };
    write(
        "postgresql.conf",
        "# Written by pgseal at restore; settings are in postgresql.pgseal.conf.\n",
    )?;
    write(
        "pg_hba.conf",
        "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_basebackup_is_given_the_urls_tls_and_no_server_on_its_command_line() {
        let (conn, _) =
            source_from_url("postgres://app@db.example:6543/shop?sslmode=require").unwrap();
        let env: Vec<(&str, String)> = conn
            .libpq_env()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert!(
            env.contains(&("PGSSLMODE", "require".to_string())),
            "{env:?}"
        );
        assert!(
            env.contains(&("PGHOST", "db.example".to_string())),
            "{env:?}"
        );
        assert!(env.contains(&("PGPORT", "6543".to_string())), "{env:?}");
        assert!(env.contains(&("PGUSER", "app".to_string())), "{env:?}");
    }
}
