//! The instance is the unit of a migration: every database is replicated, fenced, drained,
//! switched and rolled back, judged by writers pgseal did not write (pgbench's own counts
//! and TPC-B's balance invariant) as well as by the ledger; narrowing is explicit and what
//! stays outside is kept on the source or refused by name; prepared transactions and
//! background workers are handled.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_databases_under_pgbench_and_the_ledger_cut_over_and_roll_back_with_nothing_lost() {
    let h = Home::new();
    // Asynchronous commit: the drain must prove a flushed position, not the write one.
    h.source("src", &["wal_level=logical", "synchronous_commit=off"]);
    let src = h.sql("src", "postgres");
    for db in ["billing", "app"] {
        src.exec(&format!("CREATE DATABASE {db}"));
        pgbench_init(&h, "src", db);
    }
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 60);
    let bench_billing = pgbench(&h, "src-ep", "billing", 60, 22);
    let bench_app = pgbench(&h, "src-ep", "app", 60, 22);
    // pgbench_history has no primary key.
    let plan = h.json(&[
        "migrate",
        "plan",
        "--source",
        "src",
        "--name",
        "w1",
        "--replica-identity-full",
    ]);
    let carried: Vec<&str> = plan["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["carried"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(carried, ["app", "billing", "postgres"], "{plan}");
    h.start("w1", &["--replica-identity-full"]);
    let status = h.json(&["migrate", "status", "w1"]);
    let streams = status["replication"]["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3, "{status}");
    for s in streams {
        assert_eq!(s["slot"]["active"], true, "{s}");
        assert_eq!(s["subscription"]["apply_errors"], 0, "{s}");
    }
    std::thread::sleep(Duration::from_secs(4));
    let validated = h.json(&["migrate", "validate", "w1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    let databases: std::collections::BTreeSet<&str> = validated["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["database"].as_str().unwrap())
        .collect();
    assert_eq!(databases.len(), 3, "every database validated: {validated}");

    let cut = h.json(&["migrate", "cutover", "w1"]);
    assert_eq!(cut["databases"].as_array().unwrap().len(), 3, "{cut}");
    assert!(cut["rollback_ready"] == true, "{cut}");
    let pause = cut["write_pause_ms"].as_u64().unwrap();
    assert!(pause < 5000, "{cut}");
    let admin = h.sql("src", "template1");
    assert_eq!(
        admin.count("SELECT count(*) FROM pg_database WHERE NOT datallowconn AND datname IN ('postgres', 'billing', 'app')"),
        3,
        "every database fenced"
    );

    // pgbench's own counts, on the target that now holds every write.
    let billing_processed = pgbench_processed(bench_billing);
    let app_processed = pgbench_processed(bench_app);
    for (db, processed) in [("billing", billing_processed), ("app", app_processed)] {
        let (history, balanced) = tpcb(&h.sql("src-enc", db));
        assert_eq!(history, processed, "{db}: pgbench's count vs the target");
        assert!(balanced, "{db}: TPC-B balances on the target");
    }

    // Writes on the target in every database, then rollback: all of them on the source.
    let bench_billing = pgbench(&h, "src-ep", "billing", 60, 8);
    let bench_app = pgbench(&h, "src-ep", "app", 60, 8);
    std::thread::sleep(Duration::from_secs(4));
    let back = h.json(&["migrate", "rollback", "w1"]);
    assert_eq!(back["databases"].as_array().unwrap().len(), 3, "{back}");
    // The rollback's pause part by part, as the cutover's: the parts add up to it.
    let parts = back["phases"].as_array().unwrap();
    let named: Vec<&str> = parts.iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(
        named,
        [
            "pause",
            "fence",
            "drain",
            "sequences",
            "reverse",
            "carried",
            "switch",
            "resume",
            "first_write"
        ],
        "{back}"
    );
    let summed: f64 = parts.iter().map(|p| p["ms"].as_f64().unwrap()).sum();
    let pause = back["write_pause_ms"].as_f64().unwrap();
    assert!((summed - pause).abs() < 5.0, "{summed} vs {pause}: {back}");
    // The report shows it beside the cutover's.
    let report = h.json(&["migrate", "report", "w1"]);
    assert_eq!(report["rollback"]["phases"], back["phases"], "{report}");
    let billing_after = pgbench_processed(bench_billing);
    let app_after = pgbench_processed(bench_app);
    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src", &ledger, &run);
    for (db, processed) in [
        ("billing", billing_processed + billing_after),
        ("app", app_processed + app_after),
    ] {
        let (history, balanced) = tpcb(&h.sql("src", db));
        assert_eq!(history, processed, "{db}: pgbench's count vs the source");
        assert!(balanced, "{db}: TPC-B balances on the source");
    }
    h.ok(&["migrate", "cleanup", "w1"]);
    for db in ["postgres", "billing", "app"] {
        assert_eq!(h.sql("src", db).pgseal_everything(), 0, "{db}");
    }
    h.ok(&["endpoint", "delete", "src-ep"]);
}

#[test]
fn a_narrowed_migration_keeps_the_rest_on_the_source_or_names_it_before_anything_moves() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec("CREATE DATABASE app");
    src.exec("CREATE DATABASE billing");
    h.sql("src", "app").exec(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); \
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1)",
    );
    h.sql("src", "billing")
        .exec("CREATE TABLE invoices (id int PRIMARY KEY); INSERT INTO invoices VALUES (1)");
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let plan = String::from_utf8_lossy(
        &h.ok(&["migrate", "plan", "--source", "src", "--database", "app"])
            .stdout,
    )
    .to_string();
    assert!(plan.contains("billing") && plan.contains("no"), "{plan}");
    // --tables narrows one database only.
    let out = h.run(&[
        "migrate", "start", "--source", "src", "--name", "n1", "--tables", "public.a",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    h.start("n1", &["--database", "app", "--tables", "public.a"]);

    // A switch that moves the whole instance names everything that would go stale.
    let (text, _) = h.exits(
        3,
        &[
            "migrate",
            "cutover",
            "n1",
            "--on-switch",
            "true",
            "--dry-run",
        ],
    );
    for name in [
        "--leave-stale billing",
        "--leave-stale postgres",
        "--leave-stale app/public.b",
    ] {
        assert!(text.contains(name), "{name} not named: {text}");
    }
    let accepted = h.json(&[
        "migrate",
        "cutover",
        "n1",
        "--on-switch",
        "true",
        "--dry-run",
        "--leave-stale",
        "billing",
        "--leave-stale",
        "postgres",
        "--leave-stale",
        "app/public.b",
    ]);
    assert_eq!(
        accepted["failed_checks"].as_array().unwrap().len(),
        0,
        "{accepted}"
    );
    // The endpoint keeps billing and postgres on the source; the table outside --tables
    // cannot be routed, so it is still refused until accepted.
    let out = h.run(&["migrate", "cutover", "n1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("app/public.b"));
    let cut = h.json(&["migrate", "cutover", "n1", "--leave-stale", "app/public.b"]);
    assert_eq!(
        cut["left_stale"],
        serde_json::json!(["app/public.b"]),
        "{cut}"
    );
    assert_eq!(
        cut["kept_on_source"],
        serde_json::json!(["billing", "postgres"]),
        "{cut}"
    );
    let journaled = h.json(&["migrate", "status", "n1"]);
    let cutover_run = journaled["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == "cutover" && r["outcome"] == "done")
        .unwrap()
        .clone();
    assert_eq!(cutover_run["outputs"]["left_stale"], cut["left_stale"]);

    // Through the endpoint: app goes to the target, billing still to the source.
    let ep = h.json(&["endpoint", "describe", "src-ep"]);
    assert_eq!(ep["instance"], "src-enc", "{ep}");
    assert_eq!(ep["routes"]["billing"], "src", "{ep}");
    let (dir, port) = socket(&h, &["endpoint", "describe", "src-ep"]);
    let psql = |db: &str, sql: &str| {
        let out = Command::new(bin("psql"))
            .args([
                "-h", &dir, "-p", &port, "-U", "postgres", "-d", db, "-Atc", sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql("billing", "INSERT INTO invoices VALUES (2)");
    psql("app", "INSERT INTO a VALUES (2)");
    assert_eq!(
        h.sql("src", "billing")
            .count("SELECT count(*) FROM invoices"),
        2,
        "billing stays on the source"
    );
    assert_eq!(
        h.sql("src-enc", "app").count("SELECT count(*) FROM a"),
        2,
        "app is on the target"
    );
    h.ok(&["endpoint", "delete", "src-ep"]);
    h.sql("src", "postgres")
        .exec("ALTER DATABASE app ALLOW_CONNECTIONS true");
}

#[test]
fn prepared_transactions_block_the_plan_bound_the_slot_wait_and_are_applied_exactly_once() {
    let h = Home::new();
    h.source("src", &["wal_level=logical", "max_prepared_transactions=5"]);
    let src = h.sql("src", "postgres");
    src.exec("CREATE TABLE t (id int PRIMARY KEY)");
    src.exec("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'before-start'");
    let (text, _) = h.exits(3, &["migrate", "plan", "--source", "src"]);
    assert!(text.contains("'before-start'"), "{text}");
    assert!(text.contains("COMMIT PREPARED"), "{text}");
    let out = h.run(&["migrate", "start", "--source", "src", "--name", "p1"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(src.pgseal_objects(), 0);
    src.exec("COMMIT PREPARED 'before-start'");

    // A transaction younger than the long-transaction threshold passes preflight, but the
    // slot waits for it: said, bounded, and nothing is left behind.
    let holder = h.sql("src", "postgres");
    holder.exec("BEGIN; INSERT INTO t VALUES (2)");
    let started = Instant::now();
    let (_, stderr) = h.exits(
        3,
        &[
            "migrate",
            "start",
            "--source",
            "src",
            "--name",
            "p1",
            "--slot-wait",
            "4",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr.contains("waits for pid"), "{stderr}");
    assert!(stderr.contains("--slot-wait"), "{stderr}");
    assert_eq!(src.pgseal_objects(), 0, "{stderr}");
    assert_eq!(
        h.json(&["migrate", "list"]).as_array().unwrap().len(),
        0,
        "forgotten: start again"
    );
    holder.exec("COMMIT");

    // A transaction prepared after the slot and before the snapshot: the copy holds it as
    // an orphan, housekeeping rolls it back, its COMMIT PREPARED arrives by replication.
    let out = h.run_env(
        ("PGSEAL_FAILPOINT", "before:snapshot"),
        &["migrate", "start", "--source", "src", "--name", "p1"],
    );
    assert_crashed(&out, "before:snapshot");
    src.exec("BEGIN; INSERT INTO t VALUES (3); PREPARE TRANSACTION 'in-the-copy'");
    h.ok(&["migrate", "resume", "p1"]);
    let tgt = h.sql("src-enc", "postgres");
    assert_eq!(tgt.count("SELECT count(*) FROM pg_prepared_xacts"), 0);
    src.exec("COMMIT PREPARED 'in-the-copy'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tgt.count("SELECT count(*) FROM t WHERE id = 3") == 0 {
        assert!(Instant::now() < deadline, "the prepared row never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(tgt.count("SELECT count(*) FROM t"), 3);
    assert_eq!(
        h.json(&["migrate", "validate", "p1"])["clean"],
        true,
        "source and target equal"
    );
}

#[test]
fn a_background_worker_writing_into_a_migrated_database_is_ended_by_the_fence_and_nothing_it_wrote_is_lost()
 {
    let upstream = pgseal_testkit::TestCluster::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream.connect("postgres")).unwrap();
    rt.block_on(up.batch_execute(
        "CREATE TABLE feed (id int PRIMARY KEY); CREATE PUBLICATION feed FOR TABLE feed; \
         INSERT INTO feed SELECT generate_series(1, 200)",
    ))
    .unwrap();
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    // The source is itself a subscriber: its apply worker (a background worker) writes
    // into the database being migrated.
    src.exec("CREATE TABLE feed (id int PRIMARY KEY)");
    src.exec(&format!(
        "CREATE SUBSCRIPTION upstream CONNECTION 'host={} port={} user=postgres dbname=postgres' PUBLICATION feed",
        upstream.socket_dir().display(),
        upstream.port()
    ));
    let wait_rows = |sql: &Sql, n: i64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sql.count("SELECT count(*) FROM feed") != n {
            assert!(Instant::now() < deadline, "feed never reached {n}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_rows(&src, 200);
    h.start("b1", &[]);
    rt.block_on(up.batch_execute("INSERT INTO feed SELECT generate_series(201, 300)"))
        .unwrap();
    wait_rows(&src, 300);
    let tgt = h.sql("src-enc", "postgres");
    wait_rows(&tgt, 300);
    let cut = h.json(&["migrate", "cutover", "b1"]);
    let ended = cut["workers_ended"].as_array().unwrap();
    assert!(
        ended.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("logical replication worker")),
        "{cut}"
    );
    // Everything the worker wrote before the fence is on the target, and the copy of its
    // subscription on the target is disabled (it must not pull the same rows again).
    assert_eq!(tgt.count("SELECT count(*) FROM feed"), 300);
    assert_eq!(
        tgt.text("SELECT subenabled::text FROM pg_subscription WHERE subname = 'upstream'"),
        "false"
    );
    h.sql("src", "template1")
        .exec("ALTER DATABASE postgres ALLOW_CONNECTIONS true");
    h.sql("src", "postgres")
        .exec("ALTER SUBSCRIPTION upstream DISABLE");
}

/// A CA, and a server certificate it signed for `localhost` only (not `127.0.0.1`), in
/// `dir`; the key is the server's user's. Returns the CA's path. With `named` false both
/// keep rcgen's default subject, so the CA's subject is the server certificate's issuer
/// *and* subject: rustls (pgseal's own sessions) still builds the chain, OpenSSL (libpq,
/// so pg_basebackup) takes the server certificate for self-signed and refuses it.
fn server_certificate(dir: &std::path::Path, named: bool) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if named {
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgseal test CA");
    }
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    if named {
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    // Only TLS over TCP, for SQL and for replication (pg_basebackup) alike.
    std::fs::write(
        dir.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let owned = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir.join("server.key"))
        .status()
        .unwrap();
    assert!(owned.success());
    dir.join("ca.crt")
}

#[test]
fn a_snapshot_by_url_of_a_tls_only_server_follows_the_tls_settings() {
    let certs = tempfile::tempdir().unwrap();
    let ca = server_certificate(certs.path(), true);
    let path = |f: &str| certs.path().join(f).display().to_string();
    let db = pgseal_testkit::TestCluster::builder()
        .setting("ssl", "on")
        .setting("ssl_cert_file", path("server.crt"))
        .setting("ssl_key_file", path("server.key"))
        .setting("hba_file", path("pg_hba.conf"))
        .setting("log_connections", "on")
        .start()
        .unwrap();
    let h = Home::new();
    let url = db.url("postgres");
    assert!(url.contains("127.0.0.1"), "{url}");
    let snapshot = |name: &str, mode: &str, root: &std::path::Path| {
        h.command(&["snapshot", "create", "--source-url", &url, "--name", name])
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", root)
            .output()
            .unwrap()
    };

    // verify-ca against the CA: the copy is taken, and pg_basebackup's own connection was
    // TLS (the server logs each connection's TLS).
    let out = snapshot("s1", "verify-ca", &ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = db.log_text();
    let base = log
        .lines()
        .find(|l| l.contains("replication connection authorized") && l.contains("pg_basebackup"))
        .unwrap_or_else(|| panic!("no pg_basebackup connection in the log: {log}"));
    assert!(base.contains("SSL enabled"), "{base}");

    // verify-full: 127.0.0.1 is not a name on the certificate.
    let out = snapshot("s2", "verify-full", &ca);
    assert!(!out.status.success());
    // A wrong CA under verify-ca.
    let other = tempfile::tempdir().unwrap();
    let wrong = server_certificate(other.path(), true);
    let out = snapshot("s3", "verify-ca", &wrong);
    assert!(!out.status.success());
    let listed = h.json(&["snapshot", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // pg_basebackup checks the certificate itself: a chain pgseal's own session accepts
    // and libpq does not build is refused by pg_basebackup, under verify-ca. (Before,
    // pg_basebackup ran under libpq's default `prefer`, which checks nothing, and this
    // snapshot was taken.)
    let unnamed = tempfile::tempdir().unwrap();
    let unnamed_ca = server_certificate(unnamed.path(), false);
    let db_unnamed = pgseal_testkit::TestCluster::builder()
        .setting("ssl", "on")
        .setting(
            "ssl_cert_file",
            unnamed.path().join("server.crt").display().to_string(),
        )
        .setting(
            "ssl_key_file",
            unnamed.path().join("server.key").display().to_string(),
        )
        .setting(
            "hba_file",
            unnamed.path().join("pg_hba.conf").display().to_string(),
        )
        .start()
        .unwrap();
    let out = h
        .command(&[
            "snapshot",
            "create",
            "--source-url",
            &db_unnamed.url("postgres"),
            "--name",
            "s5",
        ])
        .env("PGSSLMODE", "verify-ca")
        .env("PGSSLROOTCERT", &unnamed_ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pg_basebackup") && stderr.contains("certificate verify failed"),
        "{stderr}"
    );
    assert_eq!(h.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);

    // A server without TLS is refused under require.
    let plain = pgseal_testkit::TestCluster::start().unwrap();
    let out = h
        .command(&[
            "snapshot",
            "create",
            "--source-url",
            &plain.url("postgres"),
            "--name",
            "s4",
        ])
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(h.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
}
