//! The files PgBouncer reads for an endpoint, rendered from what they must say:
//! `pgbouncer.ini`, `hba.conf` (who may connect how) and `userlist.txt` (the users PgBouncer
//! knows without asking the server; no password is in it).
//!
//! Who may connect how:
//! - over the unix socket (0700, only root and the server's OS user reach it): any role,
//!   trusted, as the instances' own sockets are;
//! - over TCP (with `--listen`): any login role but superusers and the lookup role, with
//!   SCRAM-SHA-256 against the instance's own verifier (see [`super::lookup`]); with TLS,
//!   only over TLS.

use std::path::Path;

use super::lookup;
use super::tls::TlsFiles;
use crate::instance::MASTER_USER;

/// Where one database (or `*`, every other one) is served from.
pub struct Backend {
    /// The database name as PgBouncer takes it (see [`pgbouncer_name`]), or `*`.
    pub database: String,
    /// The instance's socket directory.
    pub socket_dir: String,
    /// The instance's port.
    pub port: u16,
}

/// Everything an endpoint's configuration depends on.
pub struct Settings<'a> {
    /// The backends, the `*` one last.
    pub backends: Vec<Backend>,
    /// The port (socket name and TCP port).
    pub port: u16,
    /// The TCP address to listen on, if any.
    pub listen_host: Option<&'a str>,
    /// TLS for TCP clients.
    pub tls: Option<&'a TlsFiles>,
    /// The endpoint's directory (hba.conf, userlist.txt).
    pub dir: &'a Path,
    /// The run directory (socket, pid file, log).
    pub run: &'a Path,
    /// True when this PgBouncer keeps prepared statements (1.21+).
    pub prepared_statements: bool,
}

/// A database name as PgBouncer's configuration takes it as a `[databases]` entry of its
/// own: PgBouncer 1.18 reads letters, digits, `_`, `-` and `.` there and nothing else (a
/// quoted name is a syntax error, and the whole file is refused); `None` for any other
/// name. Such a database still goes through the `*` entry.
pub fn pgbouncer_name(db: &str) -> Option<String> {
    (!db.is_empty()
        && db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    .then(|| db.to_string())
}

/// `pgbouncer.ini`. Connections go to the server as the client's own role (over the
/// instance's trusted unix socket).
pub fn pgbouncer_ini(s: &Settings) -> String {
    let mut databases = String::new();
    for b in &s.backends {
        let dbname = if b.database == "*" {
            String::new()
        } else {
            format!(" dbname={}", b.database)
        };
        databases.push_str(&format!(
            "{} = host={} port={}{dbname}\n",
            b.database, b.socket_dir, b.port
        ));
    }
    let run = s.run.display();
    let mut extra = String::new();
    if s.listen_host.is_some() {
        extra.push_str(&format!(
            "auth_user = {}\nauth_query = {}\n",
            lookup::LOOKUP_ROLE,
            lookup::auth_query()
        ));
    }
    if let Some(tls) = s.tls {
        extra.push_str(&format!(
            "client_tls_sslmode = prefer\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
    }
    if s.prepared_statements {
        extra.push_str(&format!(
            "max_prepared_statements = {}\n",
            super::pgbouncer::MAX_PREPARED_STATEMENTS
        ));
    }
    format!(
        "; written by pgseal: edits are overwritten\n\
         [databases]\n\
         {databases}\
         \n\
         [pgbouncer]\n\
         listen_addr = {listen}\n\
         listen_port = {port}\n\
         unix_socket_dir = {run}\n\
         unix_socket_mode = 0700\n\
         auth_type = hba\n\
         auth_hba_file = {hba}\n\
         auth_file = {users}\n\
         {extra}\
         admin_users = {MASTER_USER}\n\
         pool_mode = transaction\n\
         max_client_conn = 500\n\
         default_pool_size = 20\n\
         server_lifetime = 3600\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         logfile = {run}/pgbouncer.log\n\
         pidfile = {run}/pgbouncer.pid\n",
        listen = s.listen_host.unwrap_or(""),
        port = s.port,
        hba = s.dir.join("hba.conf").display(),
        users = s.dir.join("userlist.txt").display(),
    )
}

/// `hba.conf`: see the module documentation.
pub fn hba(tcp: bool, tls: bool) -> String {
    let mut lines = vec!["# written by pgseal: edits are overwritten".to_string()];
    lines.push("local all all trust".into());
    if tcp {
        for net in ["0.0.0.0/0", "::/0"] {
            for role in [MASTER_USER, lookup::LOOKUP_ROLE] {
                lines.push(format!("host all {role} {net} reject"));
            }
            if tls {
                lines.push(format!("hostssl all all {net} scram-sha-256"));
                lines.push(format!("hostnossl all all {net} reject"));
            } else {
                lines.push(format!("host all all {net} scram-sha-256"));
            }
        }
    }
    lines.join("\n") + "\n"
}

/// `userlist.txt`: the roles PgBouncer knows without `auth_query` — the master user (the
/// admin console and the unix socket) and the lookup role. No password: both are only
/// trusted over the unix socket, and refused over TCP by [`hba`].
pub fn userlist(tcp: bool) -> String {
    let mut text = format!("\"{MASTER_USER}\" \"\"\n");
    if tcp {
        text.push_str(&format!("\"{}\" \"\"\n", lookup::LOOKUP_ROLE));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_with_tls_refuses_plain_tcp_and_superusers() {
        let text = hba(true, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"local all all trust"));
        let reject_master = lines
            .iter()
            .position(|l| *l == "host all postgres 0.0.0.0/0 reject")
            .unwrap();
        let scram = lines
            .iter()
            .position(|l| *l == "hostssl all all 0.0.0.0/0 scram-sha-256")
            .unwrap();
        assert!(reject_master < scram, "the first matching line wins");
        assert!(lines.contains(&"hostnossl all all ::/0 reject"));
        let trusted: Vec<&&str> = lines.iter().filter(|l| l.ends_with(" trust")).collect();
        assert_eq!(trusted, [&"local all all trust"], "TCP is never trusted");
        assert_eq!(hba(false, false).lines().count(), 2);
    }

    #[test]
    fn the_configuration_names_every_backend_and_no_forced_user() {
        let dir = Path::new("/h/endpoints/ep");
        let run = dir.join("run");
        let ini = pgbouncer_ini(&Settings {
            backends: vec![
                Backend {
                    database: pgbouncer_name("my-db.v2").unwrap(),
                    socket_dir: "/s2".into(),
                    port: 5433,
                },
                Backend {
                    database: "*".into(),
                    socket_dir: "/s1".into(),
                    port: 5432,
                },
            ],
            port: 6432,
            listen_host: Some("127.0.0.1"),
            tls: None,
            dir,
            run: &run,
            prepared_statements: true,
        });
        assert!(ini.contains("my-db.v2 = host=/s2 port=5433 dbname=my-db.v2\n"));
        // A name PgBouncer 1.18 cannot take as an entry of its own.
        assert_eq!(pgbouncer_name("my db"), None);
        assert_eq!(pgbouncer_name("\"x\""), None);
        assert!(ini.contains("* = host=/s1 port=5432\n"));
        assert!(!ini.contains("user="), "{ini}");
        assert!(ini.contains("listen_addr = 127.0.0.1\n"));
        assert!(
            ini.contains("auth_query = SELECT usename, passwd FROM pgseal_endpoint.lookup($1)")
        );
        assert!(ini.contains("max_prepared_statements = 200\n"));
        assert!(!ini.contains("client_tls"));
        assert!(!userlist(true).contains("SCRAM"));
    }
}
