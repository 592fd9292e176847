//! Crash-safe writes for pgseal's state files (key store, instance metadata, ...).
//!
//! [`write_atomic`] leaves either the old file or the complete new one, never a mix or a
//! truncated file, whatever moment the process or the machine stops: it writes a temp file
//! beside the target, fsyncs it, renames it over the target, then fsyncs the directory so
//! the rename itself is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file that appears at its path only once complete: written to a temp file beside it,
/// then [`commit`](Self::commit)ted (fsync, rename, fsync dir). Dropped without a commit,
/// the temp file is removed and the path is untouched.
#[derive(Debug)]
pub struct PendingFile {
    file: Option<File>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    overwrite: bool,
}

impl PendingFile {
    /// Starts writing `path` with permission bits `mode`. With `overwrite` false, an
    /// existing `path` is refused now (`AlreadyExists`) and checked again at commit.
    pub fn create(path: &Path, mode: u32, overwrite: bool) -> io::Result<Self> {
        if !overwrite && path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        let (tmp, file) = create_temp_beside(path, mode)?;
        Ok(PendingFile {
            file: Some(file),
            tmp,
            path: path.to_path_buf(),
            overwrite,
        })
    }

    /// Makes the file durable and puts it at its path. Without `overwrite`, a file that
    /// appeared at the path meanwhile is not replaced (`AlreadyExists`).
    pub fn commit(self) -> io::Result<()> {
        put_all(vec![self.stage()?])
    }

    /// Makes the file durable beside its path without putting it there yet: a
    /// [`Staged`] file that [`put_all`] renames into place later, quickly (a rename and a
    /// directory fsync), for a moment that must hold as little as possible.
    pub fn stage(mut self) -> io::Result<Staged> {
        let file = self.file.as_ref().expect("staged once");
        file.sync_all()?;
        self.file = None;
        Ok(Staged {
            tmp: std::mem::take(&mut self.tmp),
            path: std::mem::take(&mut self.path),
            overwrite: self.overwrite,
        })
    }
}

/// A complete, durable file beside the path it will replace ([`PendingFile::stage`]).
/// Dropped without [`put_all`], it is removed and the path is untouched.
#[derive(Debug)]
pub struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    overwrite: bool,
}

impl Staged {
    /// Where the staged file is until it is put in place (to set its owner, say).
    pub fn staged_path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Puts every staged file at its path, in order (each a rename over what is there, or,
/// for a file created without `overwrite`, refused with `AlreadyExists` where one
/// appeared), then makes the renames durable: one fsync per directory, however many
/// files.
pub fn put_all(files: Vec<Staged>) -> io::Result<()> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for mut file in files {
        if file.overwrite {
            fs::rename(&file.tmp, &file.path)?;
        } else {
            renameat2(
                AT_FDCWD,
                &file.tmp,
                AT_FDCWD,
                &file.path,
                RenameFlags::RENAME_NOREPLACE,
            )?;
        }
        file.tmp = std::path::PathBuf::new();
        let dir = parent_dir(&file.path)?.to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        sync_dir(&dir)?;
    }
    Ok(())
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically and durably, with permission bits `mode`
/// (e.g. `0o600` for anything secret). The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = PendingFile::create(path, mode, true)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Creates a new, empty temp file beside `path` (same directory, so a rename is atomic),
/// named `.NAME.partial-PID-N`, with permission bits exactly `mode`.
fn create_temp_beside(path: &Path, mode: u32) -> io::Result<(std::path::PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".partial-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => {
                // `mode` at creation is filtered by the umask; set it exactly.
                file.set_permissions(fs::Permissions::from_mode(mode))?;
                return Ok((tmp, file));
            }
            // A stale temp file of a crashed process that had the same PID.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Creates `dir` (and its parents) with permission bits `mode` on the last component, and
/// makes the new entry durable. A `dir` that exists already keeps its mode: it may be
/// the user's own (a `PGSEAL_HOME` they made, shared with others), which pgseal neither
/// loosens nor tightens.
pub fn create_dir_all_durable(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates the one new directory `dir` with permission bits `mode` (whatever the umask),
/// durably; an error when it exists (`AlreadyExists`), so that making it claims it.
pub fn create_dir_durable(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(mode).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    sync_dir(parent_dir(dir)?)
}

/// Fsyncs a directory, making renames and new entries in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent directory",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_exact_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn staged_files_appear_only_when_put_and_go_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        write_atomic(&one, b"old", 0o600).unwrap();
        let staged: Vec<Staged> = [(&one, b"new one"), (&two, b"new two")]
            .into_iter()
            .map(|(path, bytes)| {
                let mut file = PendingFile::create(path, 0o640, true).unwrap();
                file.write_all(bytes).unwrap();
                file.stage().unwrap()
            })
            .collect();
        assert_eq!(fs::read(&one).unwrap(), b"old");
        assert!(!two.exists());
        assert!(staged[1].staged_path().exists());
        put_all(staged).unwrap();
        assert_eq!(fs::read(&one).unwrap(), b"new one");
        assert_eq!(fs::read(&two).unwrap(), b"new two");
        assert_eq!(
            fs::metadata(&two).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // Dropped unput: nothing changes and no temp file stays.
        let mut file = PendingFile::create(&one, 0o600, true).unwrap();
        file.write_all(b"never").unwrap();
        drop(file.stage().unwrap());
        assert_eq!(fs::read(&one).unwrap(), b"new one");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["one", "two"]);
    }

    #[test]
    fn pending_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut pending = PendingFile::create(&path, 0o600, false).unwrap();
        pending.write_all(b"data").unwrap();
        assert!(!path.exists());
        pending.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"data");

        let err = PendingFile::create(&path, 0o600, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);

        // A file that appears while writing is not replaced either.
        let late = dir.path().join("late.bin");
        let mut pending = PendingFile::create(&late, 0o600, false).unwrap();
        pending.write_all(b"mine").unwrap();
        fs::write(&late, b"theirs").unwrap();
        assert_eq!(
            pending.commit().unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&late).unwrap(), b"theirs");
        fs::remove_file(&late).unwrap();

        let mut dropped = PendingFile::create(&path, 0o600, true).unwrap();
        dropped.write_all(b"half").unwrap();
        drop(dropped);
        assert_eq!(
            fs::read(&path).unwrap(),
            b"data",
            "an uncommitted file changes nothing"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn failure_leaves_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        // A directory in the way of the rename makes the write fail after the temp file.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", 0o600).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
