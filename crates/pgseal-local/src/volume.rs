//! Encrypted volumes: an ext4 image of the allocated size, made with the `encrypt`
//! feature, loop-mounted, holding a directory under an fscrypt v2 policy.

use std::path::{Path, PathBuf};

use pgseal_crypto::DataKey;
use pgseal_exec::ExternalCommand;

use crate::fscrypt::{self, FscryptError, KeyIdentifier};

/// Volume failures.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A program (mkfs.ext4, mount, umount) failed.
    #[error(transparent)]
    Exec(#[from] pgseal_exec::Error),
    /// An fscrypt ioctl failed.
    #[error(transparent)]
    Fscrypt(#[from] FscryptError),
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// An encrypted volume: its image file and where it is mounted.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The ext4 image (the ciphertext at rest).
    pub image: PathBuf,
    /// Where it is mounted when open.
    pub mount_point: PathBuf,
}

impl Volume {
    /// Describes a volume (nothing is touched).
    pub fn new(image: PathBuf, mount_point: PathBuf) -> Self {
        Volume { image, mount_point }
    }

    /// Makes the image: a sparse file of `size_bytes` with an ext4 file system that
    /// supports encryption. Refuses to overwrite an existing image.
    pub fn create(&self, size_bytes: u64) -> Result<(), VolumeError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.image)
            .map_err(io_error(format!(
                "cannot create volume image {}",
                self.image.display()
            )))?;
        file.set_len(size_bytes).map_err(io_error(format!(
            "cannot size volume image {}",
            self.image.display()
        )))?;
        drop(file);
        ExternalCommand::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "encrypt", "-m", "0", "-L", "pgseal"])
            .arg(&self.image)
            .run()?;
        Ok(())
    }

    /// True when the volume is mounted at its mount point.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.mount_point)
    }

    /// Loop-mounts the image at the mount point (made if missing). Idempotent.
    pub fn mount(&self) -> Result<(), VolumeError> {
        if self.is_mounted() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.mount_point).map_err(io_error(format!(
            "cannot create mount point {}",
            self.mount_point.display()
        )))?;
        ExternalCommand::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
            .arg(&self.image)
            .arg(&self.mount_point)
            .run()?;
        Ok(())
    }

    /// Unmounts and detaches the loop device. Idempotent.
    pub fn unmount(&self) -> Result<(), VolumeError> {
        if !self.is_mounted() {
            return Ok(());
        }
        ExternalCommand::new("umount")
            .arg("-d")
            .arg(&self.mount_point)
            .run()?;
        Ok(())
    }

    /// Adds the volume key to the mounted file system.
    pub fn unlock(&self, key: &DataKey) -> Result<KeyIdentifier, VolumeError> {
        Ok(fscrypt::add_key(&self.mount_point, key)?)
    }

    /// Makes `dir` (inside the mount) an empty encrypted directory under key `id`.
    pub fn make_encrypted_dir(&self, dir: &Path, id: KeyIdentifier) -> Result<(), VolumeError> {
        std::fs::create_dir(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        fscrypt::set_policy(dir, id)?;
        Ok(())
    }

    /// Removes the volume key from the kernel; `files_busy` when something still holds
    /// files open.
    pub fn lock(&self, id: KeyIdentifier) -> Result<fscrypt::Removal, VolumeError> {
        Ok(fscrypt::remove_key(&self.mount_point, id)?)
    }
}

/// True when `path` is a mount point (listed in `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = canonical.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == target)
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
