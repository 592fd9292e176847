//! Endpoints: a PgBouncer (Debian's package, transaction pooling) in front of an instance,
//! the address applications use. At cutover the endpoint is paused, pointed at the new
//! instance and resumed: clients keep their connections and see a pause, not an error.
//!
//! Layout under `PGSEAL_HOME/endpoints/NAME/`:
//! - `endpoint.json`: the record (name, instance behind it, port);
//! - `pgbouncer.ini`: the configuration, rewritten atomically when the backend changes;
//! - `hba.conf`, `userlist.txt`: who may connect how (see [`config`]); no password;
//! - `server.crt`, `ca.crt` with `--tls`: public certificates (the key is in memory only,
//!   see [`tls`]);
//! - `run/` (0700, the server user): the unix socket `.s.PGSQL.PORT`, pid file and log.
//!
//! An endpoint always listens on its unix socket, trusted like the instances' own sockets
//! (only root and the server's OS user can reach it). With `--listen HOST:PORT` it also
//! listens on TCP, where clients log in as the instance's own roles with SCRAM-SHA-256
//! (see [`lookup`]), over TLS with `--tls`. PgBouncer reaches the instance over the
//! instance's socket as the client's role.

pub mod check;
pub mod config;
pub mod lookup;
pub mod pgbouncer;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgseal_exec::ExternalCommand;
use serde::{Deserialize, Serialize};

use crate::instance::{LocalError, LocalInstances, MASTER_USER, check_name, io_error};

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
    /// The port its socket is named after (`.s.PGSQL.PORT`), and its TCP port.
    pub port: u16,
    /// Its TCP listener, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpListener>,
    /// When it was created (RFC 3339).
    pub created: String,
}

/// An endpoint's TCP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// The address it listens on (`127.0.0.1`, `0.0.0.0`, a host name).
    pub host: String,
    /// Its TLS files; none: TCP without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::TlsFiles>,
}

/// How an endpoint's TCP listener gets its certificate.
#[derive(Debug, Clone, Default)]
pub enum TlsChoice {
    /// No TLS.
    #[default]
    None,
    /// A certificate pgseal generates, under a CA of the endpoint's own.
    Generate,
    /// A certificate and key the user gives (PEM files).
    Given {
        /// The certificate (chain).
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
}

/// What `create_endpoint` makes, besides the unix socket.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// The port (the socket's name; also the TCP port).
    pub port: Option<u16>,
    /// `HOST:PORT` to listen on over TCP.
    pub listen: Option<String>,
    /// TLS for the TCP listener.
    pub tls: TlsChoice,
}

/// Splits `HOST:PORT` (`[::1]:6432` for IPv6).
pub fn parse_listen(text: &str) -> Result<(String, u16), LocalError> {
    let bad = || {
        LocalError::InvalidInput(format!(
            "--listen {text:?}: expected HOST:PORT, such as 127.0.0.1:6432, 0.0.0.0:6432 or [::1]:6432"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
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
    /// The URL for TCP clients, without a user or password (add `ROLE@` or set `PGUSER`),
    /// with the TLS settings a client needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_url: Option<String>,
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

/// The URL for TCP clients (see [`EndpointInfo::tcp_url`]).
fn tcp_url(tcp: &TcpListener, port: u16) -> String {
    let host = match tcp.host.as_str() {
        "0.0.0.0" | "*" => "127.0.0.1".to_string(),
        "::" => "[::1]".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    let tls = match &tcp.tls {
        Some(files) => match &files.ca_cert {
            Some(ca) => format!("?sslmode=verify-full&sslrootcert={}", url_path(ca)),
            None => "?sslmode=verify-full".to_string(),
        },
        None => String::new(),
    };
    format!("postgres://{host}:{port}/postgres{tls}")
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
        let tcp_url = record.tcp.as_ref().map(|tcp| tcp_url(tcp, record.port));
        EndpointInfo {
            tcp_url,
            running: pid_alive(&socket_dir),
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

    /// Creates an endpoint in front of `instance` and starts its PgBouncer. With a TCP
    /// listener, installs the role lookup on the instance first (see [`lookup`]). Every
    /// input is checked before anything is made; a failure part-way removes what was made.
    pub fn create_endpoint(
        &self,
        name: &str,
        instance: &str,
        options: &EndpointOptions,
    ) -> Result<EndpointInfo, LocalError> {
        check_name(name)?;
        let bouncer = pgbouncer::PgBouncer::find()?;
        let listen = options.listen.as_deref().map(parse_listen).transpose()?;
        let port = match (&listen, options.port) {
            (Some((_, l)), Some(p)) if *l != p => {
                return Err(LocalError::InvalidInput(format!(
                    "--port {p} and --listen port {l} differ: an endpoint's socket and TCP listener share one port"
                )));
            }
            (Some((_, l)), _) => *l,
            (None, p) => p.unwrap_or(DEFAULT_ENDPOINT_PORT),
        };
        if listen.is_none() && !matches!(options.tls, TlsChoice::None) {
            return Err(LocalError::InvalidInput(
                "--tls needs --listen HOST:PORT: the unix socket does not use TLS".into(),
            ));
        }
        let pem = match (&options.tls, &listen) {
            (TlsChoice::Generate, Some((host, _))) => {
                Some(tls::generate(name, &tls::names_for(host))?)
            }
            (TlsChoice::Given { cert, key }, _) => Some(tls::given(cert, key)?),
            _ => None,
        };
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
        if let Some((host, port)) = &listen {
            check_port_free(host, *port)?;
            self.install_lookup(instance)?;
        }
        Self::make_passable_dir(&self.endpoints_dir())?;
        pgseal_crashsafe::create_dir_durable(&dir, 0o711)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        let mut tls_files = None;
        let made = (|| {
            let run = dir.join("run");
            pgseal_pg::server::create_owned_dir(&run, self.run_as())
                .map_err(io_error(format!("cannot create {}", run.display())))?;
            tls_files = pem
                .as_ref()
                .map(|pem| tls::install(pem, &dir, self.run_as()))
                .transpose()?;
            let record = EndpointRecord {
                name: name.to_string(),
                instance: instance.to_string(),
                routes: Default::default(),
                port,
                tcp: listen.as_ref().map(|(host, _)| TcpListener {
                    host: host.clone(),
                    tls: tls_files.clone(),
                }),
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            };
            self.write_endpoint_config(&record, &bouncer)?;
            self.write_endpoint_record(&record)?;
            let info = self.endpoint_info(record);
            ExternalCommand::new(&bouncer.program)
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
            if let Some(files) = &tls_files {
                tls::remove_key(files);
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Installs the role lookup (role and function, see [`lookup`]) on every database of
    /// `instance` that accepts connections.
    fn install_lookup(&self, instance: &str) -> Result<(), LocalError> {
        let record = self.record(instance)?;
        let databases = self.with_client(&record, |client| async move {
            client.batch_execute(lookup::CREATE_ROLE).await?;
            lookup::databases(&client).await
        })?;
        for db in databases {
            self.with_database(&record, &db, |client| async move {
                client.batch_execute(lookup::CREATE_FUNCTION).await
            })?;
        }
        tracing::info!(instance, "endpoint role lookup installed");
        Ok(())
    }

    /// Stops an endpoint's PgBouncer and removes it (with its key, from memory).
    pub fn delete_endpoint(&self, name: &str) -> Result<(), LocalError> {
        let info = self.endpoint(name)?;
        self.stop_endpoint_process(name)?;
        if let Some(files) = info.record.tcp.as_ref().and_then(|t| t.tls.as_ref()) {
            tls::remove_key(files);
        }
        let dir = self.endpoint_dir(name);
        std::fs::remove_dir_all(&dir).map_err(io_error(format!("cannot remove {}", dir.display())))
    }

    /// Points an endpoint at another instance, but for the databases in `routes`, which
    /// go where it says: rewrites its configuration and has PgBouncer reload it. New
    /// server connections go to the new instance; with the endpoint paused, no
    /// transaction sees the change. ([`prepare_point`](Self::prepare_point) then
    /// [`apply_point`](Self::apply_point), at once.)
    pub async fn point_endpoint(
        &self,
        name: &str,
        instance: &str,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Result<EndpointInfo, LocalError> {
        let prepared = self.prepare_point(name, instance, routes)?;
        self.apply_point(prepared).await
    }

    /// The first half of [`point_endpoint`](Self::point_endpoint), for a switch whose
    /// pause should hold only the second: the instances looked up, the endpoint's new
    /// configuration and record written and made durable beside the files they replace.
    /// Dropped unapplied, nothing changes.
    pub fn prepare_point(
        &self,
        name: &str,
        instance: &str,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Result<PreparedPoint, LocalError> {
        let mut info = self.endpoint(name)?;
        self.describe(instance)?;
        for other in routes.values() {
            self.describe(other)?;
        }
        info.record.instance = instance.to_string();
        info.record.routes = routes;
        let mut files = self.stage_endpoint_config(&info.record, &pgbouncer::PgBouncer::find()?)?;
        files.push(self.stage_endpoint_record(&info.record)?);
        Ok(PreparedPoint { info, files })
    }

    /// The second half of [`point_endpoint`](Self::point_endpoint): the prepared files
    /// put in place (renames and one directory fsync) and PgBouncer's `RELOAD`.
    pub async fn apply_point(&self, prepared: PreparedPoint) -> Result<EndpointInfo, LocalError> {
        let PreparedPoint { info, files } = prepared;
        let dir = self.endpoint_dir(&info.record.name);
        pgseal_crashsafe::put_all(files).map_err(io_error(format!(
            "cannot put the endpoint's files in {}",
            dir.display()
        )))?;
        admin(&info, "RELOAD").await?;
        Ok(info)
    }

    fn write_endpoint_record(&self, record: &EndpointRecord) -> Result<(), LocalError> {
        let staged = self.stage_endpoint_record(record)?;
        let dir = self.endpoint_dir(&record.name);
        pgseal_crashsafe::put_all(vec![staged]).map_err(io_error(format!(
            "cannot write the endpoint's record in {}",
            dir.display()
        )))
    }

    fn stage_endpoint_record(
        &self,
        record: &EndpointRecord,
    ) -> Result<pgseal_crashsafe::Staged, LocalError> {
        let path = self.endpoint_dir(&record.name).join(RECORD_FILE);
        let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        stage(&path, &bytes).map_err(io_error(format!("cannot write {}", path.display())))
    }

    fn write_endpoint_config(
        &self,
        record: &EndpointRecord,
        bouncer: &pgbouncer::PgBouncer,
    ) -> Result<(), LocalError> {
        let staged = self.stage_endpoint_config(record, bouncer)?;
        pgseal_crashsafe::put_all(staged)
            .map_err(io_error("cannot put the endpoint's configuration in place"))
    }

    /// The endpoint's configuration files for `record`, staged beside the ones they
    /// replace and handed to the server's user (PgBouncer reads them).
    fn stage_endpoint_config(
        &self,
        record: &EndpointRecord,
        bouncer: &pgbouncer::PgBouncer,
    ) -> Result<Vec<pgseal_crashsafe::Staged>, LocalError> {
        let dir = self.endpoint_dir(&record.name);
        let run = dir.join("run");
        let mut backends = Vec::new();
        for (db, instance) in &record.routes {
            let other = self.describe(instance)?;
            let database = config::pgbouncer_name(db)
                .ok_or_else(|| LocalError::InvalidInput(routing_refused(db)))?;
            backends.push(config::Backend {
                database,
                socket_dir: other.socket_dir.display().to_string(),
                port: other.port,
            });
        }
        let target = self.describe(&record.instance)?;
        backends.push(config::Backend {
            database: "*".into(),
            socket_dir: target.socket_dir.display().to_string(),
            port: target.port,
        });
        let tcp = record.tcp.as_ref();
        let tls = tcp.and_then(|t| t.tls.as_ref());
        let settings = config::Settings {
            backends,
            port: record.port,
            listen_host: tcp.map(|t| t.host.as_str()),
            tls,
            dir: &dir,
            run: &run,
            prepared_statements: bouncer.prepared_statements,
        };
        let mut staged = Vec::new();
        for (file, text) in [
            ("userlist.txt", config::userlist(tcp.is_some())),
            ("hba.conf", config::hba(tcp.is_some(), tls.is_some())),
            ("pgbouncer.ini", config::pgbouncer_ini(&settings)),
        ] {
            // Read by PgBouncer (the server's user) only.
            let file_staged = stage(&dir.join(file), text.as_bytes())
                .map_err(io_error(format!("cannot write the endpoint's {file}")))?;
            self.run_as()
                .chown(file_staged.staged_path())
                .map_err(io_error(format!(
                    "cannot hand the endpoint's {file} to the server's user"
                )))?;
            staged.push(file_staged);
        }
        Ok(staged)
    }

    fn stop_endpoint_process(&self, name: &str) -> Result<(), LocalError> {
        let Some(pid) = endpoint_pid(&self.endpoint_dir(name).join("run")) else {
            return Ok(());
        };
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

/// An endpoint's new configuration, written and durable beside the files it replaces:
/// [`LocalInstances::apply_point`] puts it in place.
#[derive(Debug)]
pub struct PreparedPoint {
    info: EndpointInfo,
    files: Vec<pgseal_crashsafe::Staged>,
}

/// `bytes` staged (complete and durable) beside `path`, owner-only.
fn stage(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<pgseal_crashsafe::Staged> {
    use std::io::Write;
    let mut file = pgseal_crashsafe::PendingFile::create(path, 0o600, true)?;
    file.write_all(bytes)?;
    file.stage()
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

/// Refuses a TCP port something already listens on (PgBouncer would only say so in its
/// log).
fn check_port_free(host: &str, port: u16) -> Result<(), LocalError> {
    let bind = match host {
        "*" => "0.0.0.0",
        h => h,
    };
    match std::net::TcpListener::bind((bind, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(LocalError::InvalidInput(
            format!("--listen {host}:{port}: the port is in use; pick another"),
        )),
        Err(e) => Err(LocalError::InvalidInput(format!(
            "--listen {host}:{port}: cannot listen there ({e})"
        ))),
    }
}

/// Why database `db` cannot be routed apart from the others through an endpoint, or
/// `None` when it can.
pub fn unroutable(db: &str) -> Option<String> {
    config::pgbouncer_name(db)
        .is_none()
        .then(|| routing_refused(db))
}

fn routing_refused(db: &str) -> String {
    format!(
        "database {db:?} cannot have an entry of its own in an endpoint (PgBouncer 1.18 takes names of letters, digits, '_', '-' and '.' only), so the endpoint cannot keep it on the source apart from the others"
    )
}

/// The endpoint's PgBouncer: the running `pgbouncer` started with this endpoint's own
/// `pgbouncer.ini`. The PID file in its run directory (`run/pgbouncer.pid`) says where to
/// look first, but the file lives where the server's user may write (PgBouncer writes
/// it), so what it says is checked against the process itself before any signal; a
/// planted PID (another process, or -1, which `kill` would send to every process) is
/// passed over, and the process is looked for among all of them.
fn endpoint_pid(run: &Path) -> Option<nix::unistd::Pid> {
    let ini = run.parent()?.join("pgbouncer.ini");
    let hinted: Option<i32> = std::fs::read_to_string(run.join("pgbouncer.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    if let Some(pid) = hinted.filter(|&p| runs_config(p, &ini)) {
        return Some(nix::unistd::Pid::from_raw(pid));
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| runs_config(pid, &ini))
        .map(nix::unistd::Pid::from_raw)
}

/// Whether process `pid` (a positive one, not init) is a `pgbouncer` given `ini`.
fn runs_config(pid: i32, ini: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if pid <= 1 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let is_pgbouncer = args.next().is_some_and(|program| {
        Path::new(std::ffi::OsStr::from_bytes(program))
            .file_name()
            .is_some_and(|f| f == "pgbouncer")
    });
    is_pgbouncer && args.any(|a| a == ini.as_os_str().as_bytes())
}

fn pid_alive(run: &Path) -> bool {
    endpoint_pid(run).is_some()
}
