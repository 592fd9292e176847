//! The throwaway cluster itself.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use pgseal_exec::RunAs;
use pgseal_pg::server::{ServerControl, StopMode};
use pgseal_pg::{ConnectError, PgInstall};
use tempfile::TempDir;

/// How many times a start is retried with a new port when the chosen one was taken.
const PORT_ATTEMPTS: usize = 8;
/// The superuser every test cluster has (trust authentication, loopback only).
pub const SUPERUSER: &str = "postgres";

/// Errors from setting up a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable PostgreSQL installation.
    #[error("no PostgreSQL server installation (run scripts/setup): {0}")]
    Install(#[from] pgseal_pg::DiscoverError),
    /// An external program failed.
    #[error(transparent)]
    Exec(#[from] pgseal_exec::Error),
    /// Controlling the server failed.
    #[error(transparent)]
    Server(#[from] pgseal_pg::server::ServerError),
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not start; its log tail is included.
    #[error("server did not start on port {port}: {reason}\n--- server log tail ---\n{log_tail}")]
    Start {
        /// The port it was started on.
        port: u16,
        /// What pg_ctl said.
        reason: String,
        /// The end of the server log.
        log_tail: String,
    },
    /// An SQL statement of the harness failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Builds a [`TestCluster`] with server settings of the test's choosing.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    major: Option<u32>,
}

impl ClusterBuilder {
    /// Sets one `postgresql.conf` parameter (later calls win). The defaults are
    /// `wal_level=logical` with room for slots and senders, and `fsync=off` for speed.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Runs the server of PostgreSQL major version `major` (one of those
    /// [`pgseal_pg::PgInstalls::discover`] finds, as `scripts/setup` provides 17) instead of
    /// the default installation.
    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }

    /// Runs `initdb` and starts the server. Blocking: call it before or outside async code,
    /// or through `spawn_blocking`.
    pub fn start(self) -> Result<TestCluster, Error> {
        let install = match self.major {
            None => PgInstall::discover()?,
            Some(major) => pgseal_pg::PgInstalls::discover()
                .for_major(major)
                .cloned()
                .ok_or_else(|| {
                    io_error(format!("find PostgreSQL {major}"))(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not installed: `bash scripts/setup` provides 17",
                    ))
                })?,
        };
        let run_as = RunAs::server_user()?;
        let root = tempfile::Builder::new()
            .prefix("pgseal-test-")
            .tempdir()
            .map_err(io_error("create the cluster's temp dir"))?;
        run_as
            .chown(root.path())
            .map_err(io_error("give the cluster's temp dir to the server user"))?;
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("socket");
        fs::create_dir(&socket_dir).map_err(io_error("create the socket dir"))?;
        run_as
            .chown(&socket_dir)
            .map_err(io_error("give the socket dir to the server user"))?;

        let server = ServerControl {
            install,
            run_as,
            log_path: root.path().join("server.log"),
            data_dir,
        };
        server.initdb(SUPERUSER, "trust", "C", false)?;

        let mut cluster = TestCluster {
            root: Some(root),
            socket_dir,
            port: 0,
            server,
            running: false,
        };
        cluster.start_on_free_port(&self.settings)?;
        Ok(cluster)
    }
}

/// A running, throwaway PostgreSQL cluster; stopped and deleted on `Drop`.
#[derive(Debug)]
pub struct TestCluster {
    root: Option<TempDir>,
    socket_dir: PathBuf,
    port: u16,
    server: ServerControl,
    running: bool,
}

impl TestCluster {
    /// A builder with the default settings.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            settings: vec![
                ("wal_level".into(), "logical".into()),
                ("max_wal_senders".into(), "10".into()),
                ("max_replication_slots".into(), "10".into()),
                ("max_connections".into(), "40".into()),
                ("shared_buffers".into(), "32MB".into()),
                ("fsync".into(), "off".into()),
            ],
            major: None,
        }
    }

    /// Starts a cluster with the default settings.
    pub fn start() -> Result<Self, Error> {
        Self::builder().start()
    }

    /// [`TestCluster::start`] from async code (off the runtime's threads); panics (the
    /// test fails) when the cluster cannot start.
    pub async fn started() -> TestCluster {
        tokio::task::spawn_blocking(TestCluster::start)
            .await
            .expect("the start did not panic")
            .unwrap_or_else(|e| panic!("starting a test cluster: {e}"))
    }

    fn start_on_free_port(&mut self, settings: &[(String, String)]) -> Result<(), Error> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port().map_err(io_error("find a free port"))?;
            self.write_settings(settings)?;
            let result = self.server.start();
            match result {
                Ok(_) => {
                    self.running = true;
                    tracing::debug!(port = self.port, data_dir = %self.data_dir().display(), "test cluster started");
                    return Ok(());
                }
                Err(error) => {
                    let log_tail = self.log_tail(30);
                    let start_error = Error::Start {
                        port: self.port,
                        reason: error.to_string(),
                        log_tail: log_tail.clone(),
                    };
                    if !log_tail.contains("could not bind") && !log_tail.contains("already in use")
                    {
                        return Err(start_error);
                    }
                    tracing::debug!(
                        port = self.port,
                        "port taken meanwhile; retrying with another"
                    );
                    last_error = Some(start_error);
                }
            }
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    /// Writes this cluster's own settings (port, socket) and the caller's.
    fn write_settings(&self, settings: &[(String, String)]) -> Result<(), Error> {
        let own = [
            ("port".to_string(), self.port.to_string()),
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            (
                "unix_socket_directories".to_string(),
                self.socket_dir.display().to_string(),
            ),
            (
                "log_line_prefix".to_string(),
                "%m [%p] %q%u@%d ".to_string(),
            ),
        ];
        let all: Vec<(String, String)> = own.into_iter().chain(settings.iter().cloned()).collect();
        self.server.write_settings(&all)?;
        Ok(())
    }

    /// A new cluster started from a `pg_basebackup` of this one taken now, the way a
    /// restored snapshot starts: its first start replays the copied WAL and logs `redo done
    /// at` and `invalid record length at` (the handoff line, see [`TestCluster::log_text`]).
    /// `settings` are written as for a new cluster. Blocking.
    pub fn restore_copy(&self, settings: &[(String, String)]) -> Result<TestCluster, Error> {
        self.copy(settings, false)
    }

    /// A standby of this cluster (a `pg_basebackup -R`: it replicates from this one and is
    /// read-only). Blocking.
    pub fn standby(&self) -> Result<TestCluster, Error> {
        self.copy(&[], true)
    }

    fn copy(&self, settings: &[(String, String)], standby: bool) -> Result<TestCluster, Error> {
        let run_as = self.server.run_as.clone();
        let root = tempfile::Builder::new()
            .prefix("pgseal-test-copy-")
            .tempdir()
            .map_err(io_error("create the copy's temp dir"))?;
        run_as
            .chown(root.path())
            .map_err(io_error("give the copy's temp dir to the server user"))?;
        let socket_dir = root.path().join("socket");
        fs::create_dir(&socket_dir).map_err(io_error("create the socket dir"))?;
        run_as
            .chown(&socket_dir)
            .map_err(io_error("give the socket dir to the server user"))?;
        let data_dir = root.path().join("data");
        pgseal_exec::ExternalCommand::new(self.server.install.program("pg_basebackup"))
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .args(standby.then_some("-R"))
            .arg(format!("--port={}", self.port))
            .run_as(run_as.clone())
            .run()?;
        let server = ServerControl {
            install: self.server.install.clone(),
            run_as,
            log_path: root.path().join("server.log"),
            data_dir,
        };
        let mut copy = TestCluster {
            root: Some(root),
            socket_dir,
            port: 0,
            server,
            running: false,
        };
        copy.start_on_free_port(settings)?;
        Ok(copy)
    }

    /// The TCP port the server listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.server.data_dir
    }

    /// The installation the server runs from.
    pub fn install(&self) -> &PgInstall {
        &self.server.install
    }

    /// A connection URL for `dbname` as the superuser, over TCP loopback.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A connection config for `dbname` as the superuser, over TCP loopback.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("pgseal-testkit");
        config
    }

    /// Makes login role `role` (not a superuser) and database `db` owned by it, as a team
    /// gives a tool a database of its own, and returns the URL that reaches it as that role
    /// over TCP loopback (names percent-encoded). For synchronous code: it runs its own
    /// runtime.
    pub fn owned_database(&self, role: &str, db: &str) -> Result<String, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("a runtime for the harness"))?;
        runtime.block_on(async {
            let sql = |what: &str| {
                let what = what.to_string();
                move |source| Error::Sql { what, source }
            };
            let admin = self.connect("postgres").await.map_err(|e| Error::Io {
                what: "connecting as the superuser".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let (role_q, db_q) = (
                pgseal_pg::sql::quote_ident(role),
                pgseal_pg::sql::quote_ident(db),
            );
            admin
                .batch_execute(&format!("CREATE ROLE {role_q} LOGIN"))
                .await
                .map_err(sql("CREATE ROLE"))?;
            admin
                .batch_execute(&format!("CREATE DATABASE {db_q} OWNER {role_q}"))
                .await
                .map_err(sql("CREATE DATABASE"))?;
            Ok::<_, Error>(())
        })?;
        let encode = |text: &str| -> String {
            text.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        Ok(format!(
            "postgres://{}@127.0.0.1:{}/{}",
            encode(role),
            self.port,
            encode(db)
        ))
    }

    /// Connects to `dbname` as the superuser.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client, ConnectError> {
        pgseal_pg::connect(&self.config(dbname)).await
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.server.log_path).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    /// Stops the server now (`Drop` does this too); its files stay until the value drops.
    pub fn stop(&mut self) -> Result<(), Error> {
        if self.running {
            self.server.stop(StopMode::Fast)?;
            self.running = false;
        }
        Ok(())
    }

    /// Copies the server log somewhere that outlives the temp dir and says where.
    fn keep_log(&self) {
        let dir = std::env::temp_dir().join("pgseal-test-logs");
        let kept = dir.join(format!("cluster-{}-{}.log", self.port, std::process::id()));
        let copied = fs::create_dir_all(&dir).and_then(|_| fs::copy(&self.server.log_path, &kept));
        match copied {
            Ok(_) => eprintln!(
                "pgseal-testkit: test failed; server log of port {} kept at {}\n--- log tail ---\n{}",
                self.port,
                kept.display(),
                self.log_tail(20)
            ),
            Err(e) => eprintln!("pgseal-testkit: could not keep the server log: {e}"),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_log();
        }
        if self.running {
            // Immediate: nothing here is worth a shutdown checkpoint.
            if let Err(e) = self.server.stop(StopMode::Immediate) {
                eprintln!(
                    "pgseal-testkit: could not stop the cluster on port {}: {e}",
                    self.port
                );
            }
        }
        if let Some(root) = self.root.take()
            && let Err(e) = root.close()
        {
            eprintln!("pgseal-testkit: could not remove the cluster's temp dir: {e}");
        }
    }
}

/// A loopback port nobody listens on right now (the kernel's choice).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
