//! Opening connections to PostgreSQL.

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use crate::tls::{TlsError, TlsMode, TlsPolicy};

/// A connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {source}")]
pub struct ConnectError {
    /// The server, as [`describe_target`] names it (no password).
    pub target: String,
    /// Why.
    #[source]
    pub source: ConnectFailure,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The driver's (or the server's) error.
    #[error(transparent)]
    Driver(#[from] tokio_postgres::Error),
    /// The TLS settings (`PGSSLMODE`, `PGSSLROOTCERT`) cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Names the server a config points at, for messages: `user@host:port/dbname`. Never
/// includes the password.
pub fn describe_target(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        host,
        port,
        config.get_dbname().unwrap_or("?")
    )
}

/// Parses a PostgreSQL URL. When the URL holds no password, `PGPASSWORD` from this
/// process's environment supplies it (so it never has to go on a command line); the flag
/// says whether the URL itself carried one, which callers should warn about.
pub fn config_from_url(url: &str) -> Result<(Config, bool), tokio_postgres::Error> {
    let mut config: Config = url.parse()?;
    let in_url = config.get_password().is_some();
    if !in_url && let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    Ok((config, in_url))
}

/// A libpq connection string (`host=... port=... user=... dbname=... password=...`) for
/// `config`, as a server-side client (a subscription) takes it. It holds the password when
/// the config does: never log it.
pub fn conninfo(config: &Config) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => parts.push(format!("host={}", quote(h))),
        Some(Host::Unix(p)) => parts.push(format!("host={}", quote(&p.display().to_string()))),
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(db)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    // Over TCP, when pgseal's own sessions insist on TLS, so does the server-side client
    // (`sslmode=require`: it runs on the subscriber's machine, which may not have the CA
    // file pgseal was given, so the certificate is not checked there).
    let insists = ssl_mode(config)
        .is_some_and(|mode| matches!(mode.as_str(), "require" | "verify-ca" | "verify-full"));
    let tcp = matches!(config.get_hosts().first(), Some(Host::Tcp(_)));
    if insists && tcp {
        parts.push("sslmode=require".to_string());
    }
    if tcp {
        // A peer that vanishes is noticed in seconds, as by pgseal's own sessions
        // ([`with_link_bounds`]); a peer that answers TCP but sends nothing is
        // `wal_receiver_timeout`'s to notice.
        parts.push(format!(
            "connect_timeout={} keepalives_idle={} keepalives_interval={} keepalives_count={}",
            CONNECT_TIMEOUT.as_secs(),
            KEEPALIVES_IDLE.as_secs(),
            KEEPALIVES_INTERVAL.as_secs(),
            KEEPALIVES_RETRIES
        ));
    }
    parts.join(" ")
}

/// How long opening a connection may take before it fails (libpq's `connect_timeout`, and
/// `PGCONNECT_TIMEOUT` for the client programs pgseal runs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may be idle before TCP asks the peer whether it is still there
/// (the kernel's default is two hours).
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
/// How often TCP asks again while the peer does not answer.
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
/// How many unanswered questions end the connection: a peer gone from the network is
/// noticed within `KEEPALIVES_IDLE + KEEPALIVES_RETRIES × KEEPALIVES_INTERVAL` (25 s) of
/// silence, also while a query waits for its answer.
pub const KEEPALIVES_RETRIES: u32 = 3;

/// `config` with the bounds every pgseal session has on its link, where the URL set none:
/// a connection attempt fails after [`CONNECT_TIMEOUT`], and TCP keepalives
/// ([`KEEPALIVES_IDLE`], [`KEEPALIVES_INTERVAL`], [`KEEPALIVES_RETRIES`]) end a
/// connection whose peer left the network instead of waiting for ever. A peer that keeps
/// the connection up but says nothing is bounded by the waits of the work itself.
pub fn with_link_bounds(config: &mut Config) -> &mut Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // tokio-postgres' default is libpq's: two hours idle.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVES_RETRIES);
    }
    config.keepalives(true)
}

/// The `sslmode` pgseal's sessions to `config` follow when it is not libpq's default:
/// `PGSSLMODE` from this process's environment, else `require` when the URL said so.
fn ssl_mode(config: &Config) -> Option<String> {
    match std::env::var("PGSSLMODE") {
        Ok(mode) if !mode.is_empty() => Some(mode),
        _ if config.get_ssl_mode() == SslMode::Require => Some("require".to_string()),
        _ => None,
    }
}

/// [`ssl_mode`] and `PGSSLROOTCERT`, as libpq's environment names them.
fn tls_env(config: &Config) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Some(mode) = ssl_mode(config) {
        env.push(("PGSSLMODE", mode));
    }
    if let Ok(root) = std::env::var("PGSSLROOTCERT") {
        env.push(("PGSSLROOTCERT", root));
    }
    env
}

/// The libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, and
/// the TLS settings `PGSSLMODE`/`PGSSLROOTCERT` pgseal's own connections use) by which a
/// child program (`pg_dump`, `psql`) reaches the server `config` names: passwords go to
/// children through their environment, never their arguments. Holds the password when
/// the config does: never log it.
pub fn libpq_env(config: &Config) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
        Some(Host::Unix(p)) => env.push(("PGHOST", p.display().to_string())),
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        env.push(("PGPORT", port.to_string()));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.to_string()));
    }
    if let Some(db) = config.get_dbname() {
        env.push(("PGDATABASE", db.to_string()));
    }
    if let Some(password) = config.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
    }
    env.extend(tls_env(config));
    env.push(("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string()));
    env
}

/// Connects and drives the connection on the current tokio runtime, with TLS as
/// `PGSSLMODE`/`PGSSLROOTCERT` say (libpq's meanings; by default TLS when the server offers
/// it). The connection task ends when the returned client is dropped.
pub async fn connect(config: &Config) -> Result<Client, ConnectError> {
    let policy = TlsPolicy::from_env().map_err(|e| ConnectError {
        target: describe_target(config),
        source: e.into(),
    })?;
    connect_with(config, &policy).await
}

/// [`connect`] with an explicit TLS policy. The stricter of the policy and the config's own
/// `sslmode` (a URL's `?sslmode=require`) wins.
pub async fn connect_with(config: &Config, policy: &TlsPolicy) -> Result<Client, ConnectError> {
    let target = describe_target(config);
    let failed = |source: ConnectFailure| ConnectError {
        target: target.clone(),
        source,
    };
    let mut config = config.clone();
    // PostgreSQL has no TLS on unix sockets.
    let unix = matches!(config.get_hosts().first(), Some(Host::Unix(_)));
    let mode = match (policy.mode, config.get_ssl_mode()) {
        _ if unix => SslMode::Disable,
        (TlsMode::Disable, _) => SslMode::Disable,
        (TlsMode::Prefer, mode) => mode,
        (_, _) => SslMode::Require,
    };
    config.ssl_mode(mode);
    with_link_bounds(&mut config);
    let client = if mode == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(|e| failed(e.into()))?;
        spawn_connection(target.clone(), connection);
        client
    } else {
        let connector = policy.connector().map_err(|e| failed(e.into()))?;
        let (client, connection) = config
            .connect(connector)
            .await
            .map_err(|e| failed(e.into()))?;
        spawn_connection(target.clone(), connection);
        client
    };
    Ok(client)
}

/// The settings every session pgseal opens for its own work pins first, whatever the
/// server, the database or the role default to (`ALTER DATABASE ... SET`, which any
/// database owner may run): names resolve in `pg_catalog` only, temporary objects last,
/// so no object of another user's can stand in for a built-in one; string literals take
/// backslashes as they are; catalog functions print every name schema-qualified, so the
/// same definition reads the same on both sides of a migration.
pub const PINNED_SETTINGS: &str =
    "SET search_path = pg_catalog, pg_temp; SET standard_conforming_strings = on";

/// [`connect`], then [`PINNED_SETTINGS`]: the session pgseal does its own work in on a
/// server (not through a pooler, where settings would outlive the transaction).
pub async fn connect_pinned(config: &Config) -> Result<Client, ConnectError> {
    let client = connect(config).await?;
    client
        .batch_execute(PINNED_SETTINGS)
        .await
        .map_err(|e| ConnectError {
            target: describe_target(config),
            source: e.into(),
        })?;
    Ok(client)
}

/// Drives a connection until its client is dropped.
fn spawn_connection<S, T>(target: String, connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%target, %error, "connection closed with an error");
        }
    });
}

/// Sets `role`'s password from a SCRAM-SHA-256 verifier computed here, so the plaintext
/// never reaches the server (nor its logs, whatever `log_statement` says).
pub async fn set_scram_password(
    client: &tokio_postgres::Client,
    role: &str,
    password: &[u8],
) -> Result<(), tokio_postgres::Error> {
    let verifier = postgres_protocol::password::scram_sha_256(password);
    let role = role.replace('"', "\"\"");
    // A verifier is base64 and '$'/':' only: no quote can occur in it.
    client
        .batch_execute(&format!("ALTER ROLE \"{role}\" PASSWORD '{verifier}'"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_description_never_shows_the_password() {
        let config: Config = "postgres://alice:s3cret@db.example:6543/app"
            .parse()
            .unwrap();
        let text = describe_target(&config);
        assert_eq!(text, "alice@db.example:6543/app");
        assert!(!text.contains("s3cret"));
    }
}

#[cfg(test)]
mod conninfo_tests {
    use super::*;

    #[test]
    fn conninfo_quotes_every_value() {
        let mut config = Config::new();
        config
            .host("db.internal")
            .port(5433)
            .user("app")
            .dbname("it's")
            .password(r"p\w'd");
        assert_eq!(
            conninfo(&config),
            r"host='db.internal' port=5433 user='app' dbname='it\'s' password='p\\w\'d' connect_timeout=10 keepalives_idle=10 keepalives_interval=5 keepalives_count=3"
        );
    }
    #[test]
    fn a_subscription_insists_on_tls_over_tcp_when_the_url_does() {
        let mut config: Config = "postgres://app@db.internal:5433/shop?sslmode=require"
            .parse()
            .unwrap();
        assert!(
            conninfo(&config).contains(" sslmode=require"),
            "{}",
            conninfo(&config)
        );
        config.ssl_mode(SslMode::Prefer);
        assert!(!conninfo(&config).contains("sslmode"));
        let socket: Config = "host=/run/postgresql user=app sslmode=require"
            .parse()
            .unwrap();
        assert!(
            !conninfo(&socket).contains("sslmode"),
            "no TLS over a unix socket"
        );
    }

    #[test]
    fn every_session_has_bounds_on_its_link_unless_the_url_set_its_own() {
        let mut config: Config = "postgres://app@db.internal/shop".parse().unwrap();
        with_link_bounds(&mut config);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        assert!(config.get_keepalives());
        let mut own: Config =
            "postgres://app@db.internal/shop?connect_timeout=3&keepalives_idle=60"
                .parse()
                .unwrap();
        with_link_bounds(&mut own);
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(60));
        // Over a socket, libpq's conninfo gets no TCP settings.
        let socket: Config = "host=/run/postgresql user=app".parse().unwrap();
        assert!(!conninfo(&socket).contains("keepalives"));
    }
}
