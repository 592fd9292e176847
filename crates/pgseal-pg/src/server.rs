//! Controlling one PostgreSQL server: `initdb`, its settings file, `pg_ctl` start/stop.
//! Used by the local platform's instances and by the test harness.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use pgseal_exec::{ExternalCommand, Pipe, RunAs};

use crate::PgInstall;

/// Seconds a start or stop may take.
const WAIT_SECONDS: u64 = 120;
/// How often pgseal looks whether a server has started or stopped.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
/// The settings file pgseal owns, included from `postgresql.conf`.
pub const SETTINGS_FILE: &str = "postgresql.pgseal.conf";

/// Server control failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A program failed.
    #[error(transparent)]
    Exec(#[from] pgseal_exec::Error),
    /// A settings file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting's name is not a PostgreSQL parameter name, or its value holds a line
    /// break or another control character.
    #[error("'{0}' is not a valid parameter name, or its value holds a control character")]
    BadParameter(String),
    /// The server was told to stop and had not within the time allowed.
    #[error("the server on {} did not stop within {seconds} s", data_dir.display())]
    StopTimeout {
        /// Its data directory.
        data_dir: PathBuf,
        /// The seconds waited.
        seconds: u64,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// How to stop a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect sessions, checkpoint, stop (`-m fast`).
    Fast,
    /// Stop at once; crash recovery at the next start (`-m immediate`).
    Immediate,
}

/// One server's data directory, log file, installation and OS user.
#[derive(Debug, Clone)]
pub struct ServerControl {
    /// The installation that runs it.
    pub install: PgInstall,
    /// The OS user it runs as.
    pub run_as: RunAs,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where `pg_ctl` sends its log.
    pub log_path: PathBuf,
}

impl ServerControl {
    fn pg_ctl(&self) -> ExternalCommand {
        ExternalCommand::new(self.install.program("pg_ctl")).run_as(self.run_as.clone())
    }

    /// Runs `initdb` with superuser `superuser`: trust on the unix socket (whose directory
    /// only the server's OS user and root can enter), `host_auth` for TCP. With
    /// `own_file_system` (the data directory is alone on its file system, as on an
    /// encrypted instance's volume) PostgreSQL 17 and later sync the new cluster with one
    /// `syncfs()` instead of an `fsync()` a file: 1.16-1.27 s against 1.41-1.60 s for
    /// initdb on an encrypted volume here. (On a shared file system `syncfs()` would wait
    /// for everything else written to it too.)
    pub fn initdb(
        &self,
        superuser: &str,
        host_auth: &str,
        locale: &str,
        own_file_system: bool,
    ) -> Result<(), ServerError> {
        let mut initdb = ExternalCommand::new(self.install.program("initdb"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", superuser, "--auth-local=trust"])
            .arg(format!("--auth-host={host_auth}"))
            .args(["--encoding=UTF8", "--no-instructions"])
            .arg(format!("--locale={locale}"));
        if own_file_system && self.install.version.major >= 17 {
            initdb = initdb.arg("--sync-method=syncfs");
        }
        initdb.run_as(self.run_as.clone()).run()?;
        Ok(())
    }

    /// Writes `settings` to [`SETTINGS_FILE`] in the data directory (replacing it) and makes
    /// sure `postgresql.conf` includes it last, so these win over initdb's defaults.
    pub fn write_settings(&self, settings: &[(String, String)]) -> Result<(), ServerError> {
        let mut text =
            String::from("# Written by pgseal; edit with `pgseal instance set-param`.\n");
        for (name, value) in settings {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            // A line break would end the quoted value and start a setting of its own.
            if !valid || value.chars().any(char::is_control) {
                return Err(ServerError::BadParameter(name.clone()));
            }
            text.push_str(&format!(
                "{name} = '{}'\n",
                value.replace('\\', "\\\\").replace('\'', "''")
            ));
        }
        let path = self.data_dir.join(SETTINGS_FILE);
        fs::write(&path, text).map_err(io_error(format!("cannot write {}", path.display())))?;
        let (uid, gid) = self.run_as.ids();
        nix::unistd::chown(&path, Some(uid.into()), Some(gid.into())).map_err(|e| {
            io_error(format!("cannot give {} to the server user", path.display()))(e.into())
        })?;
        let conf = self.data_dir.join("postgresql.conf");
        let include = format!("include_if_exists = '{SETTINGS_FILE}'");
        let current = fs::read_to_string(&conf).map_err(io_error("cannot read postgresql.conf"))?;
        if !current.lines().any(|l| l.trim() == include) {
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(&conf)
                .map_err(io_error("cannot open postgresql.conf"))?;
            writeln!(file, "{include}").map_err(io_error("cannot append to postgresql.conf"))?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections. `pg_ctl start -w` looks
    /// every 100 ms; pgseal looks at `postmaster.pid` every few ms beside it, as `pg_ctl`
    /// does (its start time, then its status `ready`, or `standby` for a server in
    /// recovery), and returns at the first sight, leaving `pg_ctl` to end on its own. A
    /// server that fails to start is `pg_ctl`'s error, as before.
    pub fn start(&self) -> Result<(), ServerError> {
        // pg_ctl allows its own start time 2 s of slack against the file's; and the
        // file must name another process than before (where pg_ctl knows its child's).
        let launched = unix_seconds().saturating_sub(2);
        let before = postmaster_pid(&self.data_dir);
        let mut pg_ctl = self
            .pg_ctl()
            .args(["start", "-w", "-t", &WAIT_SECONDS.to_string(), "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .spawn(Pipe::Stdout)?;
        loop {
            if pg_ctl.has_ended()? {
                pg_ctl.finish()?;
                return Ok(());
            }
            if postmaster_ready(&self.data_dir, launched, before) {
                std::thread::spawn(move || pg_ctl.finish());
                return Ok(());
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    /// Stops the server and waits until it is down. A server that is not running is fine.
    /// `pg_ctl stop -W` sends the signal; pgseal then looks every few ms (where `pg_ctl -w`
    /// looks every 100 ms) until the process `postmaster.pid` named has ended. (Not until
    /// the file is gone, as `pg_ctl` has it: the postmaster removes it just before it
    /// exits, with its working directory still in the data directory, and a volume
    /// unmounted at that moment is busy.)
    pub fn stop(&self, mode: StopMode) -> Result<(), ServerError> {
        let Some(pid) = postmaster_pid(&self.data_dir).filter(|&pid| process_alive(pid)) else {
            return Ok(());
        };
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.pg_ctl()
            .args(["stop", "-W", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .run()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT_SECONDS);
        while process_alive(pid) {
            if std::time::Instant::now() > deadline {
                return Err(ServerError::StopTimeout {
                    data_dir: self.data_dir.clone(),
                    seconds: WAIT_SECONDS,
                });
            }
            std::thread::sleep(LOOK_EVERY);
        }
        Ok(())
    }

    /// True while a server runs on the data directory: the process its `postmaster.pid`
    /// names is alive. This is the check `pg_ctl status` makes (a negative PID is a
    /// single-user server), made here without starting a program: every session pgseal
    /// opens to an instance asks first, and `pg_ctl status` cost 6-8 ms a time (a full
    /// load asked about 50 times).
    pub fn is_running(&self) -> bool {
        postmaster_alive(&self.data_dir)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Whether the process that `data_dir/postmaster.pid` names (its first line; negative for
/// a single-user server) is alive.
fn postmaster_alive(data_dir: &Path) -> bool {
    postmaster_pid(data_dir).is_some_and(process_alive)
}

/// The PID `data_dir/postmaster.pid` names (negated for a single-user server), if any.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse::<i32>().ok()?;
    (pid != 0).then_some(pid)
}

/// Whether process `pid` (or `-pid`) is alive: it exists and has not ended (a zombie
/// has; it lingers where nothing reaps it, as under a container's first process).
fn process_alive(pid: i32) -> bool {
    let pid = pid.saturating_abs();
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // `/proc/PID/stat`: "PID (NAME) STATE ...", the name in parentheses may hold any.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => true,
    }
}

/// Whether the server on `data_dir` takes connections, as `pg_ctl start -w` decides it:
/// `postmaster.pid` names a live process other than `before` (the one it named before
/// the launch), started at `launched` or later (its third line, in seconds since the
/// epoch), whose status (its eighth line) is `ready`, or `standby` for a server in
/// recovery that takes read-only sessions.
fn postmaster_ready(data_dir: &Path, launched: u64, before: Option<i32>) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    let (Some(pid), Some(started), Some(status)) = (
        lines.first().and_then(|l| l.trim().parse::<i32>().ok()),
        lines.get(2).and_then(|l| l.trim().parse::<u64>().ok()),
        lines.get(7).map(|l| l.trim()),
    ) else {
        return false;
    };
    pid > 0
        && Some(pid) != before
        && started >= launched
        && matches!(status, "ready" | "standby")
        && process_alive(pid)
}

/// Seconds since the epoch, now.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates `dir` (if missing) owned by `run_as` with mode 0700, as PostgreSQL requires of
/// its data directory.
pub fn create_owned_dir(dir: &Path, run_as: &RunAs) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        fs::create_dir(dir)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    run_as.chown(dir)
}

#[cfg(test)]
mod tests {
    use super::{postmaster_alive, postmaster_ready};

    #[test]
    fn a_server_runs_while_the_process_its_pid_file_names_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file =
            |text: &str| std::fs::write(dir.path().join("postmaster.pid"), text).unwrap();
        assert!(!postmaster_alive(dir.path()), "no pid file");
        let me = std::process::id();
        pid_file(&format!("{me}\n/data\n1700000000\n5432\n"));
        assert!(postmaster_alive(dir.path()));
        // A single-user server writes its PID negated.
        pid_file(&format!("-{me}\n"));
        assert!(postmaster_alive(dir.path()));
        // A process that has ended, and files that name none.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        pid_file(&format!("{gone}\n"));
        assert!(!postmaster_alive(dir.path()));
        for text in ["", "0\n", "postgres\n"] {
            pid_file(text);
            assert!(!postmaster_alive(dir.path()), "{text:?}");
        }
        // A process that has ended but is not reaped yet (a zombie) has ended too.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", zombie.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&stat).unwrap().contains(") Z ") {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        pid_file(&format!("{}\n", zombie.id()));
        assert!(!postmaster_alive(dir.path()), "a zombie");
        zombie.wait().unwrap();
    }

    #[test]
    fn a_server_is_ready_when_its_pid_file_says_so_for_a_live_process_started_since() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = |pid: String, started: u64, status: &str| {
            std::fs::write(
                dir.path().join("postmaster.pid"),
                format!("{pid}\n/data\n{started}\n5432\n/tmp\n*\n  1234    5678\n{status}\n"),
            )
            .unwrap()
        };
        let me = std::process::id();
        let now = super::unix_seconds();
        assert!(!postmaster_ready(dir.path(), now, None), "no pid file");
        pid_file(me.to_string(), now, "starting");
        assert!(!postmaster_ready(dir.path(), now, None));
        for status in ["ready", "standby"] {
            pid_file(me.to_string(), now, status);
            assert!(postmaster_ready(dir.path(), now, None), "{status}");
        }
        // The process the file named before the launch.
        assert!(!postmaster_ready(dir.path(), now, Some(me as i32)));
        // Started before the launch (an earlier server's file), stopping, a single-user
        // server, a process that has ended, a file cut short.
        pid_file(me.to_string(), now - 10, "ready");
        assert!(!postmaster_ready(dir.path(), now, None));
        pid_file(me.to_string(), now, "stopping");
        assert!(!postmaster_ready(dir.path(), now, None));
        pid_file(format!("-{me}"), now, "ready");
        assert!(!postmaster_ready(dir.path(), now, None));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        pid_file(gone.to_string(), now, "ready");
        assert!(!postmaster_ready(dir.path(), now, None));
        std::fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/data\n")).unwrap();
        assert!(!postmaster_ready(dir.path(), now, None));
    }
}
