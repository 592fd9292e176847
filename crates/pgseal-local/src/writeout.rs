//! Writing a server's freshly written files out to their storage from several threads at
//! once.
//!
//! A table a transaction made (or emptied) and filled at `wal_level = minimal` is written
//! without WAL; its commit syncs its files instead, from the one server process that
//! commits. On an encrypted volume the kernel encrypts each page as it writes it out, in
//! the context of the process that asks: with software AES (FIELD-NOTES: no AES-NI driver
//! here) that one process is the bound, at about 60-80 MiB/s, while the other cores wait.
//! Writing the same pages out beforehand from one thread per core (`sync_file_range`,
//! each thread a share of the ranges) spreads the encryption over the cores: 640 MiB took
//! 8.4-8.6 s from one thread and 4.2-4.5 s from two on this machine's fscrypt volume. The
//! commit's own `fsync` then finds the pages clean and returns quickly; it still makes
//! them durable, so nothing here is needed for correctness.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{LocalError, io_error};

/// The size of one thread's turn: small enough that the threads end together, large
/// enough that each call writes a long run of the file.
const CHUNK: u64 = 32 << 20;

/// Writes out the files of `relations` (paths relative to `data_dir`, as
/// `pg_relation_filepath` gives them; each with its 1 GiB segments `PATH.1`, `PATH.2`, ...)
/// from up to `threads` threads, and waits until every page is written. Returns the bytes
/// the files hold. A path that is absolute or climbs out of `data_dir` is refused.
pub fn write_out(data_dir: &Path, relations: &[String], threads: usize) -> Result<u64, LocalError> {
    let mut files: Vec<(PathBuf, File, u64)> = Vec::new();
    for relation in relations {
        let relative = Path::new(relation);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(io_error(format!("writing out {relation}"))(
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a path inside the data directory",
                ),
            ));
        }
        let first = data_dir.join(relative);
        for segment in 0.. {
            let path = if segment == 0 {
                first.clone()
            } else {
                PathBuf::from(format!("{}.{segment}", first.display()))
            };
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && segment > 0 => break,
                Err(e) => return Err(io_error(format!("opening {}", path.display()))(e)),
            };
            let len = file
                .metadata()
                .map_err(io_error(format!("reading {}", path.display())))?
                .len();
            files.push((path, file, len));
        }
    }
    let chunks: Vec<(usize, u64, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, len))| {
            (0..len.div_ceil(CHUNK)).map(move |k| (i, k * CHUNK, CHUNK.min(len - k * CHUNK)))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, chunks.len().max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<(), LocalError> {
                    while let Some(&(i, offset, len)) =
                        chunks.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let (path, file, _) = &files[i];
                        sync_range(file, offset, len)
                            .map_err(io_error(format!("writing out {}", path.display())))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a write-out thread panicked"))
    })?;
    Ok(files.iter().map(|(_, _, len)| len).sum())
}

/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`: the range's dirty pages written
/// and waited for, by this thread. (Not durable on its own: it does not flush the disk's
/// cache or the file's metadata; the commit's `fsync` does.)
fn sync_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: the descriptor is open for the whole call (`file` is borrowed), and the
    // call reads no memory of this process.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_segment_is_written_out_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        let block = vec![7u8; 1 << 20];
        for (name, mib) in [("base/5/100", 70), ("base/5/100.1", 3), ("base/5/200", 1)] {
            let mut f = File::create(dir.path().join(name)).unwrap();
            for _ in 0..mib {
                f.write_all(&block).unwrap();
            }
        }
        let rels = ["base/5/100".to_string(), "base/5/200".to_string()];
        assert_eq!(write_out(dir.path(), &rels, 2).unwrap(), 74 << 20);
        // One thread, and more threads than chunks, write the same.
        assert_eq!(write_out(dir.path(), &rels, 1).unwrap(), 74 << 20);
        assert_eq!(write_out(dir.path(), &rels, 64).unwrap(), 74 << 20);
    }

    #[test]
    fn a_path_outside_the_data_directory_or_missing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../etc/passwd", "/etc/passwd", "base/./x/../../y"] {
            let err = write_out(dir.path(), &[bad.to_string()], 2).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
        let err = write_out(dir.path(), &["base/1/2".to_string()], 2).unwrap_err();
        assert!(err.to_string().contains("base/1/2"), "{err}");
    }
}
