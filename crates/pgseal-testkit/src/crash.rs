//! Hard stops of a running server, as a power cut or an OOM kill would leave it: SIGQUIT to
//! its postmaster (PostgreSQL's immediate shutdown: no checkpoint, crash recovery at the
//! next start), waited for until the process is gone.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Stops the server whose data directory is `data_dir` hard (SIGQUIT to the pid in its
/// `postmaster.pid`) and waits up to 30 s for the postmaster to exit. Its children exit
/// with it; the data directory is left as a crash leaves it.
pub fn crash_postmaster(data_dir: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("postmaster.pid names no pid"))?;
    let pid = Pid::from_raw(pid);
    kill(pid, Signal::SIGQUIT).map_err(std::io::Error::from)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Signal 0 only asks whether the process still exists.
    while kill(pid, None).is_ok() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "postmaster {pid} did not exit within 30 s of SIGQUIT"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
