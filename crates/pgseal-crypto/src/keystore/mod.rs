//! The local KMS: a key store under `PGSEAL_HOME/kms`.
//!
//! Files (directory 0700, files 0600):
//! - `keystore.json`: every key's sealed material and state, aliases, KDF parameters (see
//!   [`file`]); rewritten crash-safely on every change.
//! - `audit.log`: one JSON line per operation (time, operation, key, encryption context,
//!   outcome), never key material.
//! - `lock`: held (`flock`) while a change is read, made and written, so concurrent pgseal
//!   processes never lose each other's changes.
//!
//! Lifecycle, as a cloud KMS has it: create, rotate (new material; older versions kept so
//! everything wrapped before still unwraps; new wraps use the newest), disable/enable,
//! schedule deletion after 7–30 days (refused use while pending; cancelling leaves the key
//! disabled), and deletion for good once the date has passed. `pgseal/default` is a
//! *managed* key made on first use, like `aws/rds`; it cannot be disabled or deleted.

mod audit;
mod file;
mod passphrase;

pub use passphrase::{MIN_NEW_PASSPHRASE_LEN, PASSPHRASE_ENV, Passphrase};

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use zeroize::Zeroizing;

use self::audit::AuditLog;
use self::file::{
    KdfParams, RootKeys, STORE_FORMAT, StoreBody, StoreFile, StoredKey, StoredState, StoredVersion,
};
use crate::kms::{DataKeySpec, GeneratedDataKey, KeyId, KeyMetadata, KeyState, Kms, WrappedKey};
use crate::primitives::{TAG_LEN, open_random_nonce, seal_random_nonce};
use crate::{DataKey, EncryptionContext, Error, Result};

/// The alias of the managed default key.
pub const DEFAULT_KEY_ALIAS: &str = "pgseal/default";
/// Fewest and most days a deletion may be scheduled ahead (as AWS KMS).
pub const DELETION_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
const STORE_FILE: &str = "keystore.json";
const DATA_KEY_AAD: &[u8] = b"pgseal/kms/v1/datakey";
const MASTER_KEY_LEN: usize = 32;

/// The local KMS. Opening it derives the root key from the passphrase once; each operation
/// then re-reads the store, so several processes can share it.
pub struct LocalKms {
    dir: PathBuf,
    store_path: PathBuf,
    root: RootKeys,
    kdf: KdfParams,
    verifier: String,
    audit: AuditLog,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The store's lock, held while a change is made; released on drop.
struct StoreLock {
    _guard: Flock<File>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A fresh opaque key id, UUID-shaped.
fn new_key_id() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("the system random generator never fails here");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Aliases are given as `name` or `alias/name`.
fn alias_name(key_ref: &str) -> &str {
    key_ref.strip_prefix("alias/").unwrap_or(key_ref)
}

fn check_alias(alias: &str) -> Result<()> {
    let valid = !alias.is_empty()
        && alias.len() <= 256
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c));
    if !valid {
        return Err(Error::InvalidInput(format!(
            "alias '{alias}' is not valid: use 1–256 letters, digits, '/', '_', '-' or '.'"
        )));
    }
    if alias.starts_with("pgseal/") {
        return Err(Error::InvalidInput(format!(
            "alias '{alias}' is reserved: names starting with 'pgseal/' belong to pgseal's managed keys"
        )));
    }
    Ok(())
}

fn key_index(body: &StoreBody, key_ref: &str) -> Option<usize> {
    let id = body
        .aliases
        .get(alias_name(key_ref))
        .map(String::as_str)
        .unwrap_or(key_ref);
    body.keys.iter().position(|k| k.id == id)
}

fn ensure_usable(key: &StoredKey) -> Result<()> {
    match key.state {
        StoredState::Enabled => Ok(()),
        StoredState::Disabled => Err(Error::KeyDisabled {
            key_id: key.id.clone(),
        }),
        StoredState::PendingDeletion => Err(Error::KeyPendingDeletion {
            key_id: key.id.clone(),
            deletion_date: rfc3339(key.deletion_date.unwrap_or(0)),
        }),
    }
}

fn data_key_aad(key_id: &str, version: u32, context: &EncryptionContext, len: usize) -> Vec<u8> {
    let mut aad = DATA_KEY_AAD.to_vec();
    aad.push(u8::try_from(key_id.len()).expect("key ids are short"));
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(&(len as u32).to_be_bytes());
    aad.extend_from_slice(&context.canonical_bytes());
    aad
}

impl LocalKms {
    /// Opens the key store in `dir`, creating it (with this passphrase) when it does not
    /// exist yet. A wrong passphrase is [`Error::WrongPassphrase`]; a file that is not a key
    /// store, or was changed outside pgseal, is [`Error::KeyStoreDamaged`].
    pub fn open(dir: &Path, passphrase: &Passphrase) -> Result<Self> {
        if !dir.join(STORE_FILE).exists() && passphrase.len() < MIN_NEW_PASSPHRASE_LEN {
            return Err(Error::InvalidInput(format!(
                "a new key store needs a passphrase of at least {MIN_NEW_PASSPHRASE_LEN} characters"
            )));
        }
        pgseal_crashsafe::create_dir_all_durable(dir, 0o700).map_err(Error::io(format!(
            "cannot create the key store directory {}",
            dir.display()
        )))?;
        let store_path = dir.join(STORE_FILE);
        let lock = Self::lock_dir(dir)?;
        let kms = if store_path.exists() {
            let file = Self::read_file(&store_path)?;
            let root =
                RootKeys::derive(passphrase, &file.kdf).ok_or_else(|| Error::KeyStoreDamaged {
                    path: store_path.clone(),
                    reason: "its key-derivation parameters are invalid".into(),
                })?;
            if !root.check_verifier(&file.verifier) {
                return Err(Error::WrongPassphrase { path: store_path });
            }
            if !root.check_mac(&file) {
                return Err(Error::KeyStoreDamaged {
                    path: store_path,
                    reason: "its integrity check fails (it was changed outside pgseal)".into(),
                });
            }
            LocalKms {
                audit: AuditLog::new(dir.join("audit.log")),
                dir: dir.to_path_buf(),
                store_path,
                root,
                kdf: file.kdf,
                verifier: file.verifier,
            }
        } else {
            let kdf = KdfParams::new_default();
            let root = RootKeys::derive(passphrase, &kdf).expect("default parameters are valid");
            let kms = LocalKms {
                audit: AuditLog::new(dir.join("audit.log")),
                dir: dir.to_path_buf(),
                store_path,
                verifier: root.make_verifier(),
                root,
                kdf,
            };
            kms.write_body(&StoreBody::default())?;
            tracing::info!(dir = %dir.display(), "created a new key store");
            let created: Result<()> = Ok(());
            kms.audit.record("CreateKeyStore", "-", None, &created);
            kms
        };
        kms.purge_due_deletions_locked(&lock, now_secs())?;
        Ok(kms)
    }

    /// The key store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_dir(dir: &Path) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(Error::io("cannot open the key store lock"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("cannot lock the key store")(e.into()))?;
        Ok(StoreLock { _guard: lock })
    }

    fn lock(&self) -> Result<StoreLock> {
        Self::lock_dir(&self.dir)
    }

    fn read_file(path: &Path) -> Result<StoreFile> {
        let bytes = std::fs::read(path).map_err(Error::io(format!(
            "cannot read key store {}",
            path.display()
        )))?;
        let file: StoreFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::KeyStoreDamaged {
                path: path.to_path_buf(),
                reason: format!("it is not a key store file ({e})"),
            })?;
        if file.format != STORE_FORMAT {
            return Err(Error::KeyStoreDamaged {
                path: path.to_path_buf(),
                reason: format!(
                    "format {} is not one this pgseal reads ({STORE_FORMAT})",
                    file.format
                ),
            });
        }
        Ok(file)
    }

    /// Reads the current keys and aliases, checking the file's integrity.
    fn read_body(&self) -> Result<StoreBody> {
        let file = Self::read_file(&self.store_path)?;
        if file.kdf != self.kdf || file.verifier != self.verifier || !self.root.check_mac(&file) {
            return Err(Error::KeyStoreDamaged {
                path: self.store_path.clone(),
                reason: "its integrity check fails (it was changed outside pgseal)".into(),
            });
        }
        Ok(file.body)
    }

    fn write_body(&self, body: &StoreBody) -> Result<()> {
        let file = StoreFile {
            format: STORE_FORMAT,
            kdf: self.kdf.clone(),
            verifier: self.verifier.clone(),
            mac: self.root.mac(STORE_FORMAT, &self.kdf, &self.verifier, body),
            body: body.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the store serialises");
        pgseal_crashsafe::write_atomic(&self.store_path, &bytes, 0o600).map_err(Error::io(format!(
            "cannot write key store {}",
            self.store_path.display()
        )))
    }

    /// Reads, changes and writes the store under its lock.
    fn modify<T>(&self, change: impl FnOnce(&mut StoreBody) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut body = self.read_body()?;
        let out = change(&mut body)?;
        self.write_body(&body)?;
        Ok(out)
    }

    fn metadata(body: &StoreBody, key: &StoredKey) -> KeyMetadata {
        let state = match key.state {
            StoredState::Enabled => KeyState::Enabled,
            StoredState::Disabled => KeyState::Disabled,
            StoredState::PendingDeletion => KeyState::PendingDeletion {
                deletion_date: rfc3339(key.deletion_date.unwrap_or(0)),
            },
        };
        let newest = key.versions.last().expect("a key has at least one version");
        KeyMetadata {
            key_id: KeyId(key.id.clone()),
            aliases: body
                .aliases
                .iter()
                .filter(|(_, id)| **id == key.id)
                .map(|(alias, _)| alias.clone())
                .collect(),
            description: key.description.clone(),
            created: rfc3339(key.created),
            state,
            material_versions: newest.version,
            last_rotated: (newest.version > 1).then(|| rfc3339(newest.created)),
            managed: key.managed,
        }
    }

    fn new_stored_key(&self, description: &str, managed: bool) -> StoredKey {
        let id = new_key_id();
        let material = DataKey::random(MASTER_KEY_LEN);
        let now = now_secs();
        StoredKey {
            versions: vec![StoredVersion {
                version: 1,
                created: now,
                material: self.root.seal_material(&id, 1, material.expose()),
            }],
            id,
            description: description.to_string(),
            created: now,
            state: StoredState::Enabled,
            deletion_date: None,
            managed,
        }
    }

    /// Finds a key by id or alias; the managed default key is made on first use.
    fn find_or_make_default(&self, key_ref: &str) -> Result<(StoreBody, usize)> {
        let body = self.read_body()?;
        if let Some(i) = key_index(&body, key_ref) {
            return Ok((body, i));
        }
        if alias_name(key_ref) != DEFAULT_KEY_ALIAS {
            return Err(Error::KeyNotFound {
                key: key_ref.to_string(),
            });
        }
        self.modify(|body| {
            // Another process may have made it meanwhile.
            if key_index(body, DEFAULT_KEY_ALIAS).is_none() {
                let key = self.new_stored_key(
                    "Default key pgseal manages for encrypted instances and snapshots",
                    true,
                );
                body.aliases
                    .insert(DEFAULT_KEY_ALIAS.to_string(), key.id.clone());
                tracing::info!(key_id = %key.id, "created the managed default key pgseal/default");
                body.keys.push(key);
            }
            Ok(())
        })?;
        let body = self.read_body()?;
        let i = key_index(&body, key_ref).expect("just made");
        Ok((body, i))
    }

    fn version_material(&self, key: &StoredKey, version: u32) -> Result<Zeroizing<Vec<u8>>> {
        let stored = key
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| Error::UnwrapFailed {
                key_id: key.id.clone(),
            })?;
        self.root
            .open_material(&key.id, version, &stored.material)
            .ok_or_else(|| Error::KeyStoreDamaged {
                path: self.store_path.clone(),
                reason: format!(
                    "the material of key {} version {version} does not open",
                    key.id
                ),
            })
    }

    fn wrap(
        &self,
        key: &StoredKey,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey> {
        let newest = key
            .versions
            .last()
            .expect("a key has at least one version")
            .version;
        let material = self.version_material(key, newest)?;
        let aad = data_key_aad(&key.id, newest, context, plaintext.len());
        let sealed = seal_random_nonce(&material, &aad, plaintext.expose());
        Ok(WrappedKey::assemble(
            &KeyId(key.id.clone()),
            newest,
            &sealed,
        ))
    }

    fn unwrap_key(&self, wrapped: &WrappedKey, context: &EncryptionContext) -> Result<DataKey> {
        let (key_id, version, sealed) = wrapped.parts()?;
        let body = self.read_body()?;
        let key = key_index(&body, &key_id.0)
            .map(|i| &body.keys[i])
            .ok_or_else(|| Error::KeyNotFound {
                key: key_id.0.clone(),
            })?;
        ensure_usable(key)?;
        let material = self.version_material(key, version)?;
        // The plaintext length is bound into the AAD: it is the sealed length minus nonce and tag.
        let len = sealed.len().saturating_sub(12 + TAG_LEN);
        let aad = data_key_aad(&key.id, version, context, len);
        open_random_nonce(&material, &aad, sealed)
            .map(DataKey::from_bytes)
            .ok_or(Error::UnwrapFailed {
                key_id: key.id.clone(),
            })
    }

    /// Creates a KMS key, optionally with an alias.
    pub fn create_key(&self, alias: Option<&str>, description: &str) -> Result<KeyMetadata> {
        let alias = alias.map(alias_name);
        let result = (|| {
            if let Some(alias) = alias {
                check_alias(alias)?;
            }
            self.modify(|body| {
                if let Some(alias) = alias
                    && body.aliases.contains_key(alias)
                {
                    return Err(Error::InvalidInput(format!(
                        "alias '{alias}' is already taken"
                    )));
                }
                let key = self.new_stored_key(description, false);
                if let Some(alias) = alias {
                    body.aliases.insert(alias.to_string(), key.id.clone());
                }
                body.keys.push(key);
                Ok(Self::metadata(body, body.keys.last().expect("just pushed")))
            })
        })();
        let key = result
            .as_ref()
            .map(|m| m.key_id.0.clone())
            .unwrap_or_else(|_| alias.unwrap_or("-").to_string());
        self.audit.record("CreateKey", &key, None, &result);
        result
    }

    /// Every key, oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyMetadata>> {
        let body = self.read_body()?;
        Ok(body.keys.iter().map(|k| Self::metadata(&body, k)).collect())
    }

    /// Changes one key under the lock, recording the operation.
    fn change_key(
        &self,
        operation: &str,
        key_ref: &str,
        change: impl FnOnce(&mut StoredKey, &LocalKms) -> Result<()>,
    ) -> Result<KeyMetadata> {
        let result = self.modify(|body| {
            let i = key_index(body, key_ref).ok_or_else(|| Error::KeyNotFound {
                key: key_ref.to_string(),
            })?;
            change(&mut body.keys[i], self)?;
            Ok(Self::metadata(body, &body.keys[i]))
        });
        let key = result
            .as_ref()
            .map(|m| m.key_id.0.clone())
            .unwrap_or_else(|_| key_ref.to_string());
        self.audit.record(operation, &key, None, &result);
        result
    }

    /// Adds a new version of key material; new wraps use it, older wraps still unwrap.
    pub fn rotate_key(&self, key_ref: &str) -> Result<KeyMetadata> {
        self.change_key("RotateKey", key_ref, |key, kms| {
            ensure_usable(key)?;
            let version = key
                .versions
                .last()
                .expect("a key has at least one version")
                .version
                + 1;
            let material = DataKey::random(MASTER_KEY_LEN);
            key.versions.push(StoredVersion {
                version,
                created: now_secs(),
                material: kms.root.seal_material(&key.id, version, material.expose()),
            });
            Ok(())
        })
    }

    /// Disables a key: every operation with it is refused until it is enabled.
    pub fn disable_key(&self, key_ref: &str) -> Result<KeyMetadata> {
        self.change_key("DisableKey", key_ref, |key, _| {
            refuse_managed(key, "disabled")?;
            match key.state {
                StoredState::PendingDeletion => Err(pending_error(key, "disable")),
                _ => {
                    key.state = StoredState::Disabled;
                    Ok(())
                }
            }
        })
    }

    /// Enables a disabled key.
    pub fn enable_key(&self, key_ref: &str) -> Result<KeyMetadata> {
        self.change_key("EnableKey", key_ref, |key, _| match key.state {
            StoredState::PendingDeletion => Err(pending_error(key, "enable")),
            _ => {
                key.state = StoredState::Enabled;
                Ok(())
            }
        })
    }

    /// Schedules deletion `days` days from now (7–30); the key refuses use meanwhile.
    pub fn schedule_key_deletion(&self, key_ref: &str, days: u32) -> Result<KeyMetadata> {
        self.change_key("ScheduleKeyDeletion", key_ref, |key, _| {
            if !DELETION_DAYS.contains(&days) {
                return Err(Error::InvalidInput(format!(
                    "--days must be from {} to {} (got {days})",
                    DELETION_DAYS.start(),
                    DELETION_DAYS.end()
                )));
            }
            refuse_managed(key, "deleted")?;
            key.state = StoredState::PendingDeletion;
            key.deletion_date = Some(now_secs() + u64::from(days) * 86_400);
            Ok(())
        })
    }

    /// Cancels a scheduled deletion; the key is left disabled (enable it to use it).
    pub fn cancel_key_deletion(&self, key_ref: &str) -> Result<KeyMetadata> {
        self.change_key("CancelKeyDeletion", key_ref, |key, _| {
            if key.state != StoredState::PendingDeletion {
                return Err(Error::InvalidInput(format!(
                    "key {} is not pending deletion",
                    key.id
                )));
            }
            key.state = StoredState::Disabled;
            key.deletion_date = None;
            Ok(())
        })
    }

    /// Deletes for good every key whose deletion date is at or before `now` (seconds since
    /// the epoch). Runs on every open; public so the lifecycle can be tested.
    pub fn purge_due_deletions_at(&self, now: u64) -> Result<Vec<KeyId>> {
        let lock = self.lock()?;
        self.purge_due_deletions_locked(&lock, now)
    }

    fn purge_due_deletions_locked(&self, _lock: &StoreLock, now: u64) -> Result<Vec<KeyId>> {
        let mut body = self.read_body()?;
        let due: Vec<String> = body
            .keys
            .iter()
            .filter(|k| {
                k.state == StoredState::PendingDeletion && k.deletion_date.is_some_and(|d| d <= now)
            })
            .map(|k| k.id.clone())
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        body.keys.retain(|k| !due.contains(&k.id));
        body.aliases.retain(|_, id| !due.contains(id));
        self.write_body(&body)?;
        for id in &due {
            self.audit
                .record("DeleteKey", id, None, &Ok::<(), Error>(()));
        }
        Ok(due.into_iter().map(KeyId).collect())
    }
}

fn refuse_managed(key: &StoredKey, verb: &str) -> Result<()> {
    if key.managed {
        Err(Error::InvalidInput(format!(
            "key {} is pgseal's managed default key and cannot be {verb}; use a key of your own for that",
            key.id
        )))
    } else {
        Ok(())
    }
}

fn pending_error(key: &StoredKey, verb: &str) -> Error {
    Error::InvalidInput(format!(
        "key {} is pending deletion; cannot {verb} it: run `pgseal key cancel-deletion {}` first",
        key.id, key.id
    ))
}

impl Kms for LocalKms {
    fn resolve(&self, key: &str) -> Result<KeyId> {
        let (body, i) = self.find_or_make_default(key)?;
        Ok(KeyId(body.keys[i].id.clone()))
    }

    fn describe_key(&self, key: &str) -> Result<KeyMetadata> {
        let result = self
            .find_or_make_default(key)
            .map(|(body, i)| Self::metadata(&body, &body.keys[i]));
        self.audit.record("DescribeKey", key, None, &result);
        result
    }

    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedDataKey> {
        let result = (|| {
            let (body, i) = self.find_or_make_default(key)?;
            let stored = &body.keys[i];
            ensure_usable(stored)?;
            let plaintext = DataKey::random(spec.key_len());
            let wrapped = self.wrap(stored, &plaintext, context)?;
            Ok((stored.id.clone(), GeneratedDataKey { plaintext, wrapped }))
        })();
        let key_name = result
            .as_ref()
            .map(|(id, _)| id.as_str())
            .unwrap_or(key)
            .to_string();
        self.audit
            .record("GenerateDataKey", &key_name, Some(context), &result);
        result.map(|(_, generated)| generated)
    }

    fn decrypt(&self, wrapped: &WrappedKey, context: &EncryptionContext) -> Result<DataKey> {
        let result = self.unwrap_key(wrapped, context);
        let key_name = wrapped.key_id().map(|k| k.0).unwrap_or_else(|_| "-".into());
        self.audit
            .record("Decrypt", &key_name, Some(context), &result);
        result
    }

    fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        dest_key: &str,
        dest_context: &EncryptionContext,
    ) -> Result<WrappedKey> {
        let result = (|| {
            let plaintext = self.unwrap_key(wrapped, context)?;
            let (body, i) = self.find_or_make_default(dest_key)?;
            ensure_usable(&body.keys[i])?;
            self.wrap(&body.keys[i], &plaintext, dest_context)
        })();
        self.audit
            .record("ReEncrypt", dest_key, Some(dest_context), &result);
        result
    }
}
