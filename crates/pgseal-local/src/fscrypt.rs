//! The kernel's fscrypt interface (v2 policies), as `Documentation/filesystems/fscrypt.rst`
//! and `<linux/fscrypt.h>` define it: add a raw key to a filesystem, set a policy on an
//! empty directory, remove the key again.
//!
//! With a v2 policy the key belongs to the filesystem, not to a process or user keyring:
//! once root has added it, a server running as `postgres` reads the files; once it is
//! removed, the files' plaintext is gone from the kernel (the inode caches are evicted) and
//! only ciphertext remains.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use pgseal_crypto::DataKey;
use zeroize::Zeroizing;

/// `FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER`.
const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
/// `FSCRYPT_POLICY_V2`.
const POLICY_V2: u8 = 2;
/// `FSCRYPT_MODE_AES_256_XTS`: file contents.
const MODE_AES_256_XTS: u8 = 1;
/// `FSCRYPT_MODE_AES_256_CTS`: file names.
const MODE_AES_256_CTS: u8 = 4;
/// `FSCRYPT_POLICY_FLAGS_PAD_32`: names padded to 32 bytes, hiding their lengths best.
const POLICY_FLAGS_PAD_32: u8 = 0x03;
/// `FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY`.
const REMOVAL_FILES_BUSY: u32 = 0x1;

/// `_IOWR('f', 23, struct fscrypt_add_key_arg)` (80-byte header).
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong = 0xC050_6617;
/// `_IOR('f', 19, struct fscrypt_policy_v1)`; takes a v2 policy too (the version byte says).
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = 0x800C_6613;
/// `_IOWR('f', 22, __u8[9])`: FS_IOC_GET_ENCRYPTION_POLICY_EX.
const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong = 0xC009_6616;
/// `_IOWR('f', 24, struct fscrypt_remove_key_arg)`.
const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong = 0xC040_6618;

/// The raw key size for AES-256-XTS contents.
pub const RAW_KEY_LEN: usize = 64;
/// Size of `struct fscrypt_key_specifier`.
const KEY_SPEC_LEN: usize = 40;
/// Size of `struct fscrypt_add_key_arg` before `raw[]`.
const ADD_KEY_HEADER_LEN: usize = 80;

/// The kernel's 16-byte identifier of a key added to a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIdentifier(pub [u8; 16]);

impl KeyIdentifier {
    /// Lowercase hex, as `fscrypt status` prints it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// fscrypt failures, with the kernel's errno.
#[derive(Debug, thiserror::Error)]
pub enum FscryptError {
    /// An ioctl failed.
    #[error("fscrypt {operation} on {path} failed: {source}")]
    Ioctl {
        /// Which operation.
        operation: &'static str,
        /// The file or directory it was applied to.
        path: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The key has the wrong length for AES-256-XTS.
    #[error("an fscrypt key must be {RAW_KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
}

fn open(path: &Path) -> Result<File, FscryptError> {
    File::open(path).map_err(|source| FscryptError::Ioctl {
        operation: "open",
        path: path.display().to_string(),
        source,
    })
}

/// Runs one ioctl on `path` with `arg` as its in/out buffer.
fn ioctl(
    path: &Path,
    operation: &'static str,
    request: libc::c_ulong,
    arg: &mut [u8],
) -> Result<(), FscryptError> {
    let file = open(path)?;
    // SAFETY: `arg` is a live, writable buffer at least as large as the structure the
    // request reads and writes (the callers size it from <linux/fscrypt.h>); the fd is open
    // for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(FscryptError::Ioctl {
            operation,
            path: path.display().to_string(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Adds a 64-byte raw key to the filesystem mounted at `mount_point`; returns the
/// identifier the kernel derived for it. The key goes from `key` into a zeroizing buffer
/// and from there only to the kernel.
pub fn add_key(mount_point: &Path, key: &DataKey) -> Result<KeyIdentifier, FscryptError> {
    if key.len() != RAW_KEY_LEN {
        return Err(FscryptError::KeyLength(key.len()));
    }
    let mut arg = Zeroizing::new(vec![0u8; ADD_KEY_HEADER_LEN + RAW_KEY_LEN]);
    arg[0..4].copy_from_slice(&KEY_SPEC_TYPE_IDENTIFIER.to_ne_bytes());
    arg[KEY_SPEC_LEN..KEY_SPEC_LEN + 4].copy_from_slice(&(RAW_KEY_LEN as u32).to_ne_bytes());
    arg[ADD_KEY_HEADER_LEN..].copy_from_slice(key.expose());
    ioctl(mount_point, "add key", FS_IOC_ADD_ENCRYPTION_KEY, &mut arg)?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&arg[8..24]);
    Ok(KeyIdentifier(id))
}

/// Sets a v2 policy (AES-256-XTS contents, AES-256-CTS names) with key `id` on `dir`,
/// which must be an empty directory on a filesystem where that key has been added.
pub fn set_policy(dir: &Path, id: KeyIdentifier) -> Result<(), FscryptError> {
    let mut policy = [0u8; 24];
    policy[0] = POLICY_V2;
    policy[1] = MODE_AES_256_XTS;
    policy[2] = MODE_AES_256_CTS;
    policy[3] = POLICY_FLAGS_PAD_32;
    policy[8..24].copy_from_slice(&id.0);
    ioctl(dir, "set policy", FS_IOC_SET_ENCRYPTION_POLICY, &mut policy)
}

/// The key identifier of the v2 policy on `dir` (readable whether or not the key is
/// present in the kernel).
pub fn policy_key_id(dir: &Path) -> Result<KeyIdentifier, FscryptError> {
    // struct fscrypt_get_policy_ex_arg { __u64 policy_size; union { ...v2 (24 bytes) } }
    let mut arg = [0u8; 8 + 24];
    arg[0..8].copy_from_slice(&24u64.to_ne_bytes());
    ioctl(dir, "get policy", FS_IOC_GET_ENCRYPTION_POLICY_EX, &mut arg)?;
    if arg[8] != POLICY_V2 {
        return Err(FscryptError::Ioctl {
            operation: "get policy",
            path: dir.display().to_string(),
            source: std::io::Error::other(format!("policy version {} is not v2", arg[8])),
        });
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&arg[16..32]);
    Ok(KeyIdentifier(id))
}

/// What removing a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Some files were still open: their plaintext stays until they are closed, after
    /// which a second removal finishes the job.
    pub files_busy: bool,
}

/// Removes key `id` from the filesystem mounted at `mount_point`.
pub fn remove_key(mount_point: &Path, id: KeyIdentifier) -> Result<Removal, FscryptError> {
    let mut arg = [0u8; 64];
    arg[0..4].copy_from_slice(&KEY_SPEC_TYPE_IDENTIFIER.to_ne_bytes());
    arg[8..24].copy_from_slice(&id.0);
    ioctl(
        mount_point,
        "remove key",
        FS_IOC_REMOVE_ENCRYPTION_KEY,
        &mut arg,
    )?;
    let flags = u32::from_ne_bytes(
        arg[KEY_SPEC_LEN..KEY_SPEC_LEN + 4]
            .try_into()
            .expect("4 bytes"),
    );
    Ok(Removal {
        files_busy: flags & REMOVAL_FILES_BUSY != 0,
    })
}
