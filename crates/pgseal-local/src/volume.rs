//! Encrypted volumes: an ext4 image of the allocated size, made with the `encrypt`
//! feature, loop-mounted, holding a directory under an fscrypt v2 policy.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
            .mode(0o600)
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
        // The file system's root: the server's user passes through, nobody lists it.
        std::fs::set_permissions(&self.mount_point, std::fs::Permissions::from_mode(0o711))
            .map_err(io_error(format!(
                "cannot set the mode of {}",
                self.mount_point.display()
            )))?;
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

    /// Makes the image file `size_bytes` long (sparse); false when it already is.
    fn grow_image(&self, size_bytes: u64) -> Result<bool, VolumeError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .map_err(io_error(format!(
                "cannot open volume image {}",
                self.image.display()
            )))?;
        let current = file
            .metadata()
            .map_err(io_error("cannot read the image's size"))?
            .len();
        if size_bytes <= current {
            return Ok(false);
        }
        file.set_len(size_bytes).map_err(io_error(format!(
            "cannot grow volume image {}",
            self.image.display()
        )))?;
        Ok(true)
    }

    /// Grows an unmounted volume to `size_bytes`: the image, a forced check, the file system.
    pub fn grow_offline(&self, size_bytes: u64) -> Result<(), VolumeError> {
        if !self.grow_image(size_bytes)? {
            return Ok(());
        }
        // resize2fs insists on a freshly checked file system; e2fsck exits 1 when it fixed
        // something (fine), 2 and up when it could not.
        let check = ExternalCommand::new("e2fsck")
            .args(["-f", "-p"])
            .arg(&self.image)
            .output()?;
        if check.status.code().is_none_or(|c| c > 1) {
            return Err(VolumeError::Exec(pgseal_exec::Error::Command {
                program: "e2fsck".into(),
                status: check.status,
                stderr: String::from_utf8_lossy(&check.stderr).trim().to_string(),
            }));
        }
        ExternalCommand::new("resize2fs").arg(&self.image).run()?;
        Ok(())
    }

    /// Grows the volume to `size_bytes` while it is mounted: the image file, the loop
    /// device's idea of its size, then the file system (ext4 grows online). The kernel
    /// allows this only with CAP_SYS_RESOURCE ([`can_grow_online`]).
    pub fn grow(&self, size_bytes: u64) -> Result<(), VolumeError> {
        if !self.grow_image(size_bytes)? {
            return Ok(());
        }
        let out = ExternalCommand::new("losetup")
            .arg("-j")
            .arg(&self.image)
            .run()?;
        let device =
            out.stdout_text()
                .lines()
                .find_map(|l| l.split(':').next().map(str::to_string))
                .ok_or_else(|| {
                    io_error("cannot find the volume's loop device")(std::io::Error::other(
                        format!("no loop device backs {}", self.image.display()),
                    ))
                })?;
        ExternalCommand::new("losetup")
            .args(["-c", &device])
            .run()?;
        ExternalCommand::new("resize2fs").arg(&device).run()?;
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

/// True when this process may grow a mounted ext4 file system (the kernel's online resize
/// needs CAP_SYS_RESOURCE, which restricted containers drop).
pub fn can_grow_online() -> bool {
    crate::capabilities::has_capability(
        Path::new("/proc/self/status"),
        crate::capabilities::CAP_SYS_RESOURCE,
    )
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
