//! Endpoints real applications can use: TCP with the instance's own roles and passwords
//! (SCRAM-SHA-256 through PgBouncer's auth_query), TLS with a certificate pgseal makes,
//! and prepared statements as PgBouncer 1.18 allows them — across cutover and rollback,
//! judged by pgbench's own counts and by the clients' own.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

const APP_PASSWORD: &str = "app-pw-7f3e91c2";

/// psql over TCP with `conninfo`; returns (success, stderr).
fn psql_tcp(conninfo: &str, password: &str) -> (bool, String) {
    let out = Command::new(bin("psql"))
        .args(["-Atc", "SELECT current_user", conninfo])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// TPC-B over TCP with TLS and a password through the endpoint.
fn pgbench_tcp(port: &str, ca: &str, db: &str, seconds: u32) -> Child {
    Command::new(bin("pgbench"))
        .args(["-n", "-c", "2", "-j", "1", "-h", "127.0.0.1", "-p", port])
        .args(["-U", "app", "-R", "60", "-T", &seconds.to_string(), db])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Clients that use tokio-postgres the way docs/endpoints.md recommends behind PgBouncer
/// 1.18: typed, unnamed statements (`execute_typed`), never `prepare`. Returns the
/// handle (rows written, errors seen) once `stop` is set.
fn typed_clients(
    socket_dir: String,
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(i64, Vec<String>)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for c in 0..4i32 {
                let (dir, stop) = (socket_dir.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut config = tokio_postgres::Config::new();
                    config.host_path(&dir).port(port).user("app").dbname("shop");
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
                    tokio::spawn(conn);
                    let (mut written, mut errors) = (0i64, Vec::new());
                    let mut n = 0i32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match client
                            .execute_typed(
                                "INSERT INTO typed_events (client, n) VALUES ($1, $2)",
                                &[
                                    (&c, tokio_postgres::types::Type::INT4),
                                    (&n, tokio_postgres::types::Type::INT4),
                                ],
                            )
                            .await
                        {
                            Ok(_) => written += 1,
                            Err(e) => errors.push(e.to_string()),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (written, errors)
                }));
            }
            let mut total = (0, Vec::new());
            for t in tasks {
                let (w, e) = t.await.unwrap();
                total.0 += w;
                total.1.extend(e);
            }
            total
        })
    })
}

/// A driver that prepares named statements, as JDBC, pgx and psycopg 3 do by default: the
/// statement is prepared on one server connection and run on another.
fn named_statement_failure(socket_dir: &str, port: u16) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let connect = || async {
            let mut config = tokio_postgres::Config::new();
            config
                .host_path(socket_dir)
                .port(port)
                .user("app")
                .dbname("shop");
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        };
        let (preparer, holder) = (connect().await, connect().await);
        let statement = preparer.prepare("SELECT count(*) FROM typed_events").await;
        let statement = statement.unwrap();
        // Another client's open transaction holds the server connection it was prepared on.
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let failed = preparer.query(&statement, &[]).await.unwrap_err();
        holder.batch_execute("COMMIT").await.unwrap();
        failed.as_db_error().unwrap().message().to_string()
    })
}

#[test]
fn tcp_clients_with_passwords_and_tls_cross_cutover_and_rollback_without_an_error() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"));
    src.exec("CREATE DATABASE shop OWNER app");
    h.sql("src", "shop").exec(
        "SET ROLE app; CREATE TABLE typed_events (id bigserial PRIMARY KEY, client int, n int)",
    );
    let (src_dir, src_port) = socket(&h, &["instance", "describe", "src"]);
    let init = Command::new(bin("pgbench"))
        .args([
            "-i", "-q", "-h", &src_dir, "-p", &src_port, "-U", "app", "shop",
        ])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ep = h.json(&[
        "endpoint",
        "create",
        "ep",
        "--instance",
        "src",
        "--listen",
        &listen,
        "--tls",
    ]);
    let ca = h.path("home/endpoints/ep/ca.crt").display().to_string();
    assert!(
        ep["tcp_url"]
            .as_str()
            .unwrap()
            .contains("sslmode=verify-full"),
        "{ep}"
    );
    let key = ep["record"]["tcp"]["tls"]["key"]
        .as_str()
        .or_else(|| ep["tcp"]["tls"]["key"].as_str())
        .unwrap()
        .to_string();
    assert!(key.starts_with("/dev/shm/"), "the key is in memory: {ep}");

    // No password, and no private key, in any file under PGSEAL_HOME.
    for entry in walk(&h.path("home")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(APP_PASSWORD), "{}", entry.display());
        assert!(!text.contains("PRIVATE KEY"), "{}", entry.display());
    }

    // Who gets in over TCP.
    let url = |user: &str, mode: &str| {
        format!(
            "host=127.0.0.1 port={port} user={user} dbname=shop sslmode={mode} sslrootcert={ca}"
        )
    };
    let (ok, err) = psql_tcp(&url("app", "verify-full"), APP_PASSWORD);
    assert!(ok, "verify-full with the endpoint's CA: {err}");
    let (ok, err) = psql_tcp(&url("app", "require"), APP_PASSWORD);
    assert!(ok, "sslmode=require: {err}");
    let (ok, err) = psql_tcp(&url("app", "require"), "wrong-password");
    assert!(!ok && err.contains("SASL authentication failed"), "{err}");
    let (ok, err) = psql_tcp(&url("app", "disable"), APP_PASSWORD);
    assert!(!ok, "plain TCP is refused under --tls: {err}");
    let (ok, _) = psql_tcp(&url("postgres", "require"), "");
    assert!(!ok, "superusers are refused over TCP");
    let (ok, _) = psql_tcp(&url("pgseal_endpoint", "require"), "");
    assert!(!ok, "the lookup role is refused over TCP");
    let wrong_host = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={port} user=app dbname=shop sslmode=verify-full sslrootcert={ca}"
    );
    let (ok, err) = psql_tcp(&wrong_host, APP_PASSWORD);
    assert!(!ok && err.contains("does not match host name"), "{err}");

    // A driver that prepares named statements fails behind PgBouncer 1.18, and `endpoint
    // check` finds it in the server's log.
    let (ep_dir, ep_port) = socket(&h, &["endpoint", "describe", "ep"]);
    let ep_port: u16 = ep_port.parse().unwrap();
    let message = named_statement_failure(&ep_dir, ep_port);
    assert!(message.contains("does not exist"), "{message}");
    let check = h.run(&["endpoint", "check", "ep", "--json"]);
    assert_eq!(check.status.code(), Some(11), "{check:?}");
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert!(report["failure_count"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["pgbouncer"]["prepared_statements"], false,
        "{report}"
    );

    // Writers: pgbench over TCP with TLS and a password; tokio-postgres with typed
    // statements over the socket; the ledger.
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "ep"], &ledger, 70);
    let bench = pgbench_tcp(&port, &ca, "shop", 45);
    let stop = Arc::new(AtomicBool::new(false));
    let typed = typed_clients(ep_dir.clone(), ep_port, stop.clone());

    h.start("t1", &["--replica-identity-full"]);
    std::thread::sleep(Duration::from_secs(4));
    let validated = h.json(&["migrate", "validate", "t1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    let cut = h.json(&["migrate", "cutover", "t1"]);
    assert_eq!(cut["rollback_ready"], true, "{cut}");
    // After the switch: new TCP logins authenticate against the target's roles.
    let (ok, err) = psql_tcp(&url("app", "verify-full"), APP_PASSWORD);
    assert!(ok, "login after cutover: {err}");
    let on_target = h
        .sql("src-enc", "shop")
        .count("SELECT count(*) FROM typed_events");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        h.sql("src-enc", "shop")
            .count("SELECT count(*) FROM typed_events")
            > on_target,
        "typed writes go on on the target"
    );
    let processed_before = pgbench_processed(bench);
    let (history, balanced) = tpcb(&h.sql("src-enc", "shop"));
    assert_eq!(history, processed_before, "pgbench's count on the target");
    assert!(balanced);

    let bench = pgbench_tcp(&port, &ca, "shop", 10);
    std::thread::sleep(Duration::from_secs(3));
    h.json(&["migrate", "rollback", "t1"]);
    let (ok, err) = psql_tcp(&url("app", "verify-full"), APP_PASSWORD);
    assert!(ok, "login after rollback: {err}");
    let processed_after = pgbench_processed(bench);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = typed.join().unwrap();
    assert!(errors.is_empty(), "typed statements failed: {errors:?}");
    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src", &ledger, &run);
    let back = h.sql("src", "shop");
    assert_eq!(back.count("SELECT count(*) FROM typed_events"), written);
    assert!(written > on_target);
    let (history, balanced) = tpcb(&back);
    assert_eq!(history, processed_before + processed_after);
    assert!(balanced);

    h.ok(&["migrate", "cleanup", "t1"]);
    assert_eq!(h.json(&["endpoint", "delete", "ep"])["deleted"], "ep");
    assert!(
        !std::path::Path::new(&key).exists(),
        "the key is gone with the endpoint"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}
