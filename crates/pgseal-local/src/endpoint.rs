//! Endpoints: a PgBouncer (Debian's package, transaction pooling) in front of an instance,
//! the address applications use. At cutover the endpoint is paused, pointed at the new
//! instance and resumed: clients keep their connections and see a pause, not an error.
//!
//! Layout under `PGSEAL_HOME/endpoints/NAME/`:
//! - `endpoint.json`: the record (name, instance behind it, port);
//! - `pgbouncer.ini`: the configuration, rewritten atomically when the backend changes;
//! - `run/` (0700, the server user): the unix socket `.s.PGSQL.PORT`, pid file and log.
//!
//! The endpoint listens on its unix socket only, with trust authentication, like the
//! instances' own sockets: only root and the server's OS user can reach it. PgBouncer
//! reaches the instance over the instance's socket as the master user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgseal_exec::ExternalCommand;
use serde::{Deserialize, Serialize};

use crate::instance::{LocalError, LocalInstances, MASTER_USER, check_name};

/// The port an endpoint's socket is named after unless another is asked for.
pub const DEFAULT_ENDPOINT_PORT: u16 = 6432;

const RECORD_FILE: &str = "endpoint.json";

/// An endpoint's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    /// The endpoint's name.
    pub name: String,
    /// The instance it sends connections to (every database not in `routes`).
    pub instance: String,
    /// Databases sent to another instance than `instance` (`database -> instance`): after
    /// a cutover, the databases outside the migration, which stay on the source.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub routes: std::collections::BTreeMap<String, String>,
    /// The port its socket is named after (`.s.PGSQL.PORT`).
    pub port: u16,
    /// When it was created (RFC 3339).
    pub created: String,
}

/// An endpoint as `describe` and `list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointInfo {
    /// The record.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// True while its PgBouncer runs.
    pub running: bool,
    /// The directory of its unix socket.
    pub socket_dir: PathBuf,
    /// A URL applications use (`postgres://postgres@%2F...:PORT/DB`), for database `postgres`.
    pub url: String,
    /// Its PgBouncer log.
    pub log_path: PathBuf,
}

impl EndpointInfo {
    /// A connection through the endpoint to database `dbname` as the master user.
    pub fn sql_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.record.port)
            .user(MASTER_USER)
            .dbname(dbname);
        config
    }

    /// A connection to the endpoint's admin console (database `pgbouncer`).
    fn admin_config(&self) -> tokio_postgres::Config {
        self.sql_config("pgbouncer")
    }
}

/// Percent-encodes a path for the host part of a URL.
fn url_path(path: &Path) -> String {
    path.display()
        .to_string()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

impl LocalInstances {
    fn endpoints_dir(&self) -> PathBuf {
        self.home().join("endpoints")
    }

    fn endpoint_dir(&self, name: &str) -> PathBuf {
        self.endpoints_dir().join(name)
    }

    fn endpoint_info(&self, record: EndpointRecord) -> EndpointInfo {
        let dir = self.endpoint_dir(&record.name);
        let socket_dir = dir.join("run");
        EndpointInfo {
            running: pid_alive(&socket_dir.join("pgbouncer.pid")),
            url: format!(
                "postgres://{MASTER_USER}@{}:{}/postgres",
                url_path(&socket_dir),
                record.port
            ),
            log_path: socket_dir.join("pgbouncer.log"),
            socket_dir,
            record,
        }
    }

    /// Reads one endpoint.
    pub fn endpoint(&self, name: &str) -> Result<EndpointInfo, LocalError> {
        let path = self.endpoint_dir(name).join(RECORD_FILE);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalError::InvalidInput(format!(
                "no endpoint named '{name}' (see `pgseal endpoint list`)"
            )),
            _ => LocalError::Io {
                what: format!("cannot read {}", path.display()),
                source: e,
            },
        })?;
        let record: EndpointRecord = serde_json::from_slice(&bytes)
            .map_err(|e| LocalError::InvalidInput(format!("{} is damaged: {e}", path.display())))?;
        Ok(self.endpoint_info(record))
    }

    /// Every endpoint, by name.
    pub fn endpoints(&self) -> Result<Vec<EndpointInfo>, LocalError> {
        let mut names = Vec::new();
        match std::fs::read_dir(self.endpoints_dir()) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if entry.path().join(RECORD_FILE).exists() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot list endpoints")(e)),
        }
        names.sort();
        names.iter().map(|n| self.endpoint(n)).collect()
    }

    /// Creates an endpoint in front of `instance` and starts its PgBouncer.
    pub fn create_endpoint(
        &self,
        name: &str,
        instance: &str,
        port: Option<u16>,
    ) -> Result<EndpointInfo, LocalError> {
        check_name(name)?;
        let pgbouncer = pgbouncer_program()?;
        let target = self.describe(instance)?;
        if target.status != "available" {
            return Err(LocalError::InvalidInput(format!(
                "instance '{instance}' is {}; start it first",
                target.status
            )));
        }
        let dir = self.endpoint_dir(name);
        if dir.exists() {
            return Err(LocalError::NameTaken(format!("endpoint {name}")));
        }
        Self::make_passable_dir(&self.endpoints_dir())?;
        std::fs::create_dir(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let made = (|| {
            Self::make_passable_dir(&dir)?;
            let run = dir.join("run");
            pgseal_pg::server::create_owned_dir(&run, self.run_as())
                .map_err(io_error(format!("cannot create {}", run.display())))?;
            let record = EndpointRecord {
                name: name.to_string(),
                instance: instance.to_string(),
                routes: Default::default(),
                port: port.unwrap_or(DEFAULT_ENDPOINT_PORT),
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            };
            self.write_endpoint_config(&record)?;
            self.write_endpoint_record(&record)?;
            let info = self.endpoint_info(record);
            ExternalCommand::new(&pgbouncer)
                .arg("-d")
                .arg(dir.join("pgbouncer.ini"))
                .run_as(self.run_as().clone())
                .run()
                .map_err(|e| LocalError::InvalidInput(format!("pgbouncer did not start: {e}")))?;
            self.wait_admin(&info, Duration::from_secs(10))?;
            self.endpoint(name)
        })();
        made.inspect_err(|_| {
            let _ = self.stop_endpoint_process(name);
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Stops an endpoint's PgBouncer and removes it.
    pub fn delete_endpoint(&self, name: &str) -> Result<(), LocalError> {
        self.endpoint(name)?;
        self.stop_endpoint_process(name)?;
        let dir = self.endpoint_dir(name);
        std::fs::remove_dir_all(&dir).map_err(io_error(format!("cannot remove {}", dir.display())))
    }

    /// Points an endpoint at another instance, but for the databases in `routes`, which
    /// go where it says: rewrites its configuration and has PgBouncer reload it. New
    /// server connections go to the new instance; with the endpoint paused, no
    /// transaction sees the change.
    pub async fn point_endpoint(
        &self,
        name: &str,
        instance: &str,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Result<EndpointInfo, LocalError> {
        let mut info = self.endpoint(name)?;
        self.describe(instance)?;
        for other in routes.values() {
            self.describe(other)?;
        }
        info.record.instance = instance.to_string();
        info.record.routes = routes;
        self.write_endpoint_config(&info.record)?;
        self.write_endpoint_record(&info.record)?;
        admin(&info, "RELOAD").await?;
        Ok(info)
    }

    fn write_endpoint_record(&self, record: &EndpointRecord) -> Result<(), LocalError> {
        let path = self.endpoint_dir(&record.name).join(RECORD_FILE);
        let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        pgseal_crashsafe::write_atomic(&path, &bytes, 0o600)
            .map_err(io_error(format!("cannot write {}", path.display())))
    }

    fn write_endpoint_config(&self, record: &EndpointRecord) -> Result<(), LocalError> {
        let target = self.describe(&record.instance)?;
        let dir = self.endpoint_dir(&record.name);
        let run = dir.join("run");
        let auth_file = dir.join("userlist.txt");
        // Trust still needs the user listed; no password is stored.
        pgseal_crashsafe::write_atomic(
            &auth_file,
            format!("\"{MASTER_USER}\" \"\"\n").as_bytes(),
            0o644,
        )
        .map_err(io_error("cannot write the endpoint's userlist"))?;
        let mut routes = String::new();
        for (db, instance) in &record.routes {
            let other = self.describe(instance)?;
            routes.push_str(&format!(
                "{} = host={} port={} user={MASTER_USER} dbname={}\n",
                pgbouncer_name(db),
                other.socket_dir.display(),
                other.port,
                pgbouncer_name(db)
            ));
        }
        let config = format!(
            "; written by pgseal: edits are overwritten\n\
             [databases]\n\
             {routes}\
             * = host={socket} port={port} user={MASTER_USER}\n\
             \n\
             [pgbouncer]\n\
             listen_addr =\n\
             listen_port = {listen}\n\
             unix_socket_dir = {run}\n\
             unix_socket_mode = 0700\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             admin_users = {MASTER_USER}\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             server_lifetime = 3600\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {run}/pgbouncer.log\n\
             pidfile = {run}/pgbouncer.pid\n",
            socket = target.socket_dir.display(),
            port = target.port,
            listen = record.port,
            run = run.display(),
            auth = auth_file.display(),
        );
        pgseal_crashsafe::write_atomic(&dir.join("pgbouncer.ini"), config.as_bytes(), 0o644)
            .map_err(io_error("cannot write pgbouncer.ini"))
    }

    fn stop_endpoint_process(&self, name: &str) -> Result<(), LocalError> {
        let pidfile = self.endpoint_dir(name).join("run/pgbouncer.pid");
        let Some(pid) = read_pid(&pidfile) else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::sys::signal::kill(pid, None).is_ok() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_admin(&self, info: &EndpointInfo, timeout: Duration) -> Result<(), LocalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("cannot start an async runtime"))?;
        let deadline = Instant::now() + timeout;
        loop {
            match runtime.block_on(admin(info, "SHOW VERSION")) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(LocalError::InvalidInput(format!(
                        "endpoint {} did not answer within {} s ({e}); see {}",
                        info.record.name,
                        timeout.as_secs(),
                        info.log_path.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// A database name as PgBouncer's configuration takes it (double-quoted when it is not a
/// plain word).
fn pgbouncer_name(db: &str) -> String {
    if db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        db.to_string()
    } else {
        format!("\"{}\"", db.replace('"', "\"\""))
    }
}

/// Runs a command on an endpoint's admin console and returns its rows.
async fn admin_rows(
    info: &EndpointInfo,
    command: &str,
) -> Result<Vec<tokio_postgres::SimpleQueryRow>, LocalError> {
    let config = info.admin_config();
    let sql_error = |source| LocalError::Sql {
        target: format!("endpoint '{}'", info.record.name),
        source,
    };
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(sql_error)?;
    let driver = tokio::spawn(connection);
    let messages = client.simple_query(command).await.map_err(sql_error)?;
    drop(client);
    let _ = driver.await;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect())
}

/// Runs a command on an endpoint's admin console (`PAUSE`, `RESUME`, `RELOAD`, `SHOW ...`)
/// and returns the rows of its answer as text.
pub async fn admin(info: &EndpointInfo, command: &str) -> Result<Vec<Vec<String>>, LocalError> {
    Ok(admin_rows(info, command)
        .await?
        .into_iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get(i).unwrap_or_default().to_string())
                .collect()
        })
        .collect())
}

/// How long the oldest client waiting in any of the endpoint's pools has waited: the
/// largest `maxwait` (seconds) + `maxwait_us` of `SHOW POOLS`, PgBouncer's own count.
pub async fn longest_client_wait(info: &EndpointInfo) -> Result<Duration, LocalError> {
    let rows = admin_rows(info, "SHOW POOLS").await?;
    let field = |row: &tokio_postgres::SimpleQueryRow, name: &str| -> u64 {
        row.try_get(name)
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(rows
        .iter()
        .map(|row| {
            Duration::from_secs(field(row, "maxwait"))
                + Duration::from_micros(field(row, "maxwait_us"))
        })
        .max()
        .unwrap_or_default())
}

fn pgbouncer_program() -> Result<PathBuf, LocalError> {
    pgseal_exec::find_program("pgbouncer")
        .or_else(|| {
            let p = PathBuf::from("/usr/sbin/pgbouncer");
            p.exists().then_some(p)
        })
        .ok_or_else(|| {
            LocalError::InvalidInput(
                "pgbouncer is not installed: run `bash scripts/setup` (or apt-get install pgbouncer)".into(),
            )
        })
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pid_alive(path: &Path) -> bool {
    read_pid(path)
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}
