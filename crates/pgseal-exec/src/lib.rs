//! Running external programs the way pgseal needs them run.
//!
//! Every program pgseal drives (`initdb`, `pg_ctl`, `pg_basebackup`, `mkfs.ext4`, `mount`,
//! `pgbouncer`, ...) goes through [`ExternalCommand`]: the child gets a clean environment
//! (only `PATH`, a fixed `C` locale and what the caller names), its output is captured, and a
//! failure comes back as [`Error::Command`] with the program, its exit status and the tail of
//! its stderr, so the user sees *why* it failed, not only *that* it failed.
//!
//! PostgreSQL refuses to run as root, so [`RunAs`] lets a command run as another OS user
//! (normally `postgres`); [`RunAs::server_user`] picks the right one for this process.
//!
//! Secrets never go on a command line: arguments are shown in errors and logs.

mod program;
pub mod run_as;

pub use program::{find_program, find_program_in};
pub use run_as::RunAs;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// How many bytes of a failed program's stderr an error keeps (the end of it, where the
/// reason usually is).
const STDERR_TAIL_BYTES: usize = 4096;

/// Errors from running an external program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program ran and exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program's name or path as it was invoked.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of what it wrote to stderr (or stdout when stderr was empty), trimmed.
        stderr: String,
    },
    /// The program could not be started at all (not found, not executable, ...).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program's name or path.
        program: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The OS user a command should run as does not exist.
    #[error(
        "OS user '{user}' does not exist; create it with: useradd --system --create-home --home-dir /var/lib/postgresql --shell /bin/bash {user}"
    )]
    NoSuchUser {
        /// The missing user's name.
        user: String,
    },
    /// Looking up an OS user failed.
    #[error("cannot look up OS user '{user}': {source}")]
    UserLookup {
        /// The user's name.
        user: String,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
}

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One invocation of an external program: built up, then [`run`](Self::run) once.
///
/// ```
/// use pgseal_exec::ExternalCommand;
/// let out = ExternalCommand::new("echo").arg("hello").run().unwrap();
/// assert_eq!(out.stdout_text().trim(), "hello");
/// ```
#[derive(Clone)]
pub struct ExternalCommand {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    run_as: RunAs,
    stdin: Option<Vec<u8>>,
    die_with_parent: bool,
    /// Descriptors the program inherits (memory files it reads by path).
    inherited: Vec<std::os::fd::RawFd>,
}

impl fmt::Debug for ExternalCommand {
    // Environment values are left out: they are the one place a caller could pass a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field(
                "env_names",
                &self.envs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("current_dir", &self.current_dir)
            .field("run_as", &self.run_as)
            .finish()
    }
}

/// A file that lives in memory only (`memfd_create(2)`), for a program that must open a
/// path it can seek in (`pg_restore --jobs` reads its archive so): nothing reaches a disk,
/// and it is gone with this process however it ends, where a temporary file would stay
/// behind a killed one. Pass it with [`ExternalCommand::memory_file`].
#[derive(Debug)]
pub struct MemoryFile {
    fd: std::os::fd::OwnedFd,
}

impl MemoryFile {
    /// A memory file named `name` (for `/proc` listings only) holding `bytes`.
    pub fn new(name: &str, bytes: &[u8]) -> std::io::Result<Self> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, bytes)?;
        Ok(Self { fd: file.into() })
    }

    /// The path the program opens it by (`/dev/fd/N`: a fresh open, from the start).
    pub fn path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/dev/fd/{}", self.fd.as_raw_fd())
    }
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Everything the program wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the program wrote to stderr.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl ExternalCommand {
    /// A command for `program`: a path, or a bare name looked up on `PATH`.
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            run_as: RunAs::CurrentUser,
            stdin: None,
            die_with_parent: false,
            inherited: Vec::new(),
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets one environment variable for the child (on top of the clean base environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Runs the child as another OS user.
    pub fn run_as(mut self, run_as: RunAs) -> Self {
        self.run_as = run_as;
        self
    }

    /// Feeds these bytes to the child's stdin (otherwise stdin is empty).
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Has the kernel kill the program (SIGKILL) when the thread that runs it, and so this
    /// process, dies: for a one-off tool whose work must not go on behind a killed pgseal.
    /// Never for a server or daemon the program starts. Holds for [`run`](Self::run) and
    /// [`output`](Self::output), whose thread waits for the program.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// Lets the program open `file` by its [`path`](MemoryFile::path). Holds for
    /// [`run`](Self::run) and [`output`](Self::output).
    pub fn memory_file(mut self, file: &MemoryFile) -> Self {
        use std::os::fd::AsRawFd;
        self.inherited.push(file.fd.as_raw_fd());
        self
    }

    /// The program as it will be invoked, for messages.
    pub fn program_name(&self) -> String {
        self.program.display().to_string()
    }

    /// The command line as text, for logs and messages (never holds secrets: see crate docs).
    pub fn display_command_line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Builds the `std` command with the clean environment applied.
    fn to_std_command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd.env_clear();
        cmd.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        );
        // A fixed locale keeps messages parseable and identical on every machine.
        cmd.env("LC_ALL", "C");
        cmd.env("LANG", "C");
        self.run_as.apply(&mut cmd);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs the program to completion, capturing its output. A non-zero exit is
    /// [`Error::Command`].
    pub fn run(&self) -> Result<CommandOutput> {
        let output = self.output()?;
        if output.status.success() {
            Ok(CommandOutput {
                stdout: output.stdout,
                stderr: output.stderr,
            })
        } else {
            Err(Error::Command {
                program: self.program_name(),
                status: output.status,
                stderr: failure_text(&output),
            })
        }
    }

    /// Runs the program and returns its raw outcome whatever the exit status, for callers
    /// that give particular exit codes their own meaning (`e2fsck`'s 1: something fixed;
    /// `test -x DIR`'s failure: the directory is not reachable).
    pub fn output(&self) -> Result<Output> {
        tracing::debug!(command = %self.display_command_line(), run_as = ?self.run_as, "running external program");
        let mut cmd = self.prepared_command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let spawn_error = |source| Error::Spawn {
            program: self.program_name(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        if let Some(bytes) = &self.stdin {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin was piped");
            // A child that exits without reading all of stdin is reported by its exit status.
            let _ = stdin.write_all(bytes);
        }
        child.wait_with_output().map_err(spawn_error)
    }

    /// The std command with its environment, and with what must happen between fork and
    /// exec: the parent-death signal and the inherited memory files.
    fn prepared_command(&self) -> Command {
        let mut cmd = self.to_std_command();
        if self.die_with_parent || !self.inherited.is_empty() {
            use std::os::unix::process::CommandExt;
            let (die, inherited) = (self.die_with_parent, self.inherited.clone());
            // SAFETY: prctl(2) and fcntl(2) are async-signal-safe; the closure allocates
            // nothing (the list was copied before the fork).
            unsafe {
                cmd.pre_exec(move || {
                    if die {
                        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                            .map_err(std::io::Error::from)?;
                    }
                    for fd in &inherited {
                        // The program keeps this one across exec. (Open: the command
                        // borrows its MemoryFile until it has run.)
                        let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                        nix::fcntl::fcntl(
                            fd,
                            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                        )
                        .map_err(std::io::Error::from)?;
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Runs the program to its end with stdout collected, handing each line it writes on
    /// stderr to `line` as soon as it is written (for a program whose progress is shown
    /// while it runs). Stdin is empty. As with [`output`](Self::output), the exit status
    /// is the caller's to judge, and [`die_with_parent`](Self::die_with_parent) holds.
    pub fn output_with_stderr_lines(&self, mut line: impl FnMut(&str)) -> Result<Output> {
        use std::io::BufRead;
        tracing::debug!(command = %self.display_command_line(), run_as = ?self.run_as, "running external program, streaming its stderr");
        let mut cmd = self.prepared_command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| Error::Spawn {
            program: self.program_name(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let mut stdout_pipe = child.stdout.take().expect("stdout was piped");
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout_pipe, &mut buf);
            buf
        });
        let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr was piped"));
        for text in stderr.split(b'\n').map_while(std::result::Result::ok) {
            line(String::from_utf8_lossy(&text).trim_end_matches('\r'));
        }
        let status = child.wait().map_err(spawn_error)?;
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: Vec::new(),
        })
    }
}

/// Which of a spawned program's standard streams the caller gets to stream through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// The caller writes the program's stdin.
    Stdin,
    /// The caller reads the program's stdout.
    Stdout,
}

/// A program started with [`ExternalCommand::spawn`]: the caller streams through its
/// stdin or stdout while its stderr is collected on a thread; [`finish`](Self::finish)
/// waits for it and turns a failure into [`Error::Command`].
#[derive(Debug)]
pub struct RunningCommand {
    program: String,
    child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl RunningCommand {
    /// The program's stdin, when spawned with [`Pipe::Stdin`] (once).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The program's stdout, when spawned with [`Pipe::Stdout`] (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits for the program; a non-zero exit is [`Error::Command`] with its stderr.
    /// Close or drop the stdin you took first, or a program reading it never ends.
    pub fn finish(mut self) -> Result<CommandOutput> {
        let status = self.child.wait().map_err(|source| Error::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let output = Output {
            status,
            stdout: Vec::new(),
            stderr,
        };
        if status.success() {
            Ok(CommandOutput {
                stdout: Vec::new(),
                stderr: output.stderr,
            })
        } else {
            Err(Error::Command {
                program: self.program,
                status,
                stderr: failure_text(&output),
            })
        }
    }

    /// Whether the program has ended (then [`finish`](Self::finish) returns at once).
    pub fn has_ended(&mut self) -> Result<bool> {
        self.child
            .try_wait()
            .map(|status| status.is_some())
            .map_err(|source| Error::Spawn {
                program: self.program.clone(),
                source,
            })
    }

    /// Stops the program at once (SIGKILL) and reaps it; for cleaning up after a failure
    /// on the caller's side.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ExternalCommand {
    /// Starts the program with `pipe` connected to the caller, the other standard stream
    /// discarded, and stderr collected.
    pub fn spawn(&self, pipe: Pipe) -> Result<RunningCommand> {
        tracing::debug!(command = %self.display_command_line(), run_as = ?self.run_as, ?pipe, "starting external program");
        let mut cmd = self.to_std_command();
        match pipe {
            Pipe::Stdin => cmd.stdin(Stdio::piped()).stdout(Stdio::null()),
            Pipe::Stdout => cmd.stdin(Stdio::null()).stdout(Stdio::piped()),
        };
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.program_name(),
            source,
        })?;
        let mut stderr_pipe = child.stderr.take().expect("stderr was piped");
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr_pipe, &mut buf);
            buf
        });
        Ok(RunningCommand {
            program: self.program_name(),
            child,
            stderr: Some(stderr),
        })
    }
}

/// The end of stderr (or of stdout when stderr is empty), trimmed, for an error message.
fn failure_text(output: &Output) -> String {
    let raw = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        &output.stdout
    } else {
        &output.stderr
    };
    let start = raw.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = String::from_utf8_lossy(&raw[start..]).trim().to_string();
    if text.is_empty() {
        "(no output)".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_program_status_and_stderr() {
        let err = ExternalCommand::new("sh")
            .args(["-c", "echo doing; echo 'it broke' >&2; exit 3"])
            .run()
            .unwrap_err();
        match err {
            Error::Command {
                program,
                status,
                stderr,
            } => {
                assert_eq!(program, "sh");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "it broke");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn environment_is_clean_but_for_path_locale_and_named_variables() {
        // The test runner's own environment has far more than these four variables.
        assert!(std::env::vars_os().count() > 4);
        let out = ExternalCommand::new("env")
            .env("PGSEAL_TEST_VAR", "x")
            .run()
            .unwrap()
            .stdout_text();
        let mut names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        assert_eq!(names, ["LANG", "LC_ALL", "PATH", "PGSEAL_TEST_VAR"]);
    }

    /// Set for the helper process of the test below, to the file it writes its program's
    /// pid into.
    const DIE_HELPER_VAR: &str = "PGSEAL_EXEC_DIE_WITH_PARENT_PIDFILE";

    /// In the helper process only (the test below runs this test binary again with
    /// [`DIE_HELPER_VAR`] set): runs a long `sleep` that should die with it.
    #[test]
    fn die_with_parent_helper() {
        if let Some(pidfile) = std::env::var_os(DIE_HELPER_VAR) {
            let _ = ExternalCommand::new("sh")
                .args(["-c", "echo $$ > \"$0\"; exec sleep 60"])
                .arg(pidfile)
                .die_with_parent()
                .run();
        }
    }

    #[test]
    fn a_program_asked_to_die_with_its_parent_dies_when_it_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::die_with_parent_helper",
                "--test-threads=1",
            ])
            .env(DIE_HELPER_VAR, &pidfile)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                break nix::unistd::Pid::from_raw(pid);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the helper never started its program"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        helper.kill().unwrap();
        helper.wait().unwrap();
        // The sleep is the helper's child: gone once the kernel's SIGKILL lands.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the program outlived the process that ran it"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_memory_file_is_read_by_path_and_seeks() {
        let file = MemoryFile::new("test", b"first line\nsecond line\n").unwrap();
        // tail reads it by path, seeking from the end.
        let out = ExternalCommand::new("tail")
            .args(["-n", "1", &file.path()])
            .memory_file(&file)
            .run()
            .unwrap();
        assert_eq!(out.stdout_text(), "second line\n");
        // Not passed, the program cannot open it.
        assert!(ExternalCommand::new("cat").arg(file.path()).run().is_err());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = ExternalCommand::new("/nonexistent/pgseal-no-such-program")
            .run()
            .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("cannot start /nonexistent/pgseal-no-such-program")
        );
    }

    #[test]
    fn stdin_is_fed_and_stdout_captured() {
        let out = ExternalCommand::new("cat")
            .stdin_bytes(b"abc".to_vec())
            .run()
            .unwrap();
        assert_eq!(out.stdout, b"abc");
    }

    #[test]
    fn spawned_programs_stream_and_report_failures() {
        let mut running = ExternalCommand::new("sh")
            .args(["-c", "echo streamed; echo warn >&2"])
            .spawn(Pipe::Stdout)
            .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut running.take_stdout().unwrap(), &mut out).unwrap();
        assert_eq!(out, "streamed\n");
        assert_eq!(running.finish().unwrap().stderr_text(), "warn\n");

        let mut running = ExternalCommand::new("sh")
            .args(["-c", "n=$(wc -c); echo \"got $n\" >&2; exit 4"])
            .spawn(Pipe::Stdin)
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = running.take_stdin().unwrap();
            stdin.write_all(b"12345").unwrap();
        }
        let Error::Command { status, stderr, .. } = running.finish().unwrap_err() else {
            panic!("expected a command error")
        };
        assert_eq!((status.code(), stderr.as_str()), (Some(4), "got 5"));
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let err = ExternalCommand::new("sh")
            .args(["-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"])
            .run()
            .unwrap_err();
        let Error::Command { stderr, .. } = err else {
            panic!("expected a command error")
        };
        assert_eq!(stderr.len(), STDERR_TAIL_BYTES);
    }
}
