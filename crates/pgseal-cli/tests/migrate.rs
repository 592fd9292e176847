//! `pgseal migrate start|resume|abort|status|list` as a user runs them: real local
//! instances, a real encrypted target, the ledger workload writing throughout, and the
//! process killed (SIGABRT at a named failpoint) between every pair of steps.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_crash_after_every_step_then_resume_converges_exactly_under_live_writes() {
    crash_after_every_step_then_resume(Kept::Sqlite);
}

/// The same test, the journal kept in PostgreSQL.
#[test]
fn with_the_journal_in_postgresql_a_crash_after_every_step_then_resume_converges() {
    crash_after_every_step_then_resume(Kept::Postgres);
}

fn crash_after_every_step_then_resume(kept: Kept) {
    let h = Home::with_source_kept(kept);
    // Three databases: every stream must survive every crash.
    let others = ["billing", "app"];
    for db in others {
        h.sql("src", "postgres")
            .exec(&format!("CREATE DATABASE {db}"));
        h.sql("src", db).exec("CREATE TABLE t (id int PRIMARY KEY)");
    }
    let mut written = 0;
    let mut write_others = || {
        written += 1;
        for db in others {
            h.sql("src", db)
                .exec(&format!("INSERT INTO t VALUES ({written})"));
        }
    };
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 20);
    std::thread::sleep(Duration::from_secs(1));

    // Step by step: each run is killed right after its step's work, before the journal
    // records it done; the next run must redo or recognise that work.
    let first = h.run_env(
        ("PGSEAL_FAILPOINT", "after:preflight"),
        &["migrate", "start", "--source", "src", "--name", "m1"],
    );
    assert_crashed(&first, "after:preflight");
    for step in &STEPS[1..] {
        let point = format!("after:{step}");
        write_others();
        let out = h.run_env(("PGSEAL_FAILPOINT", &point), &["migrate", "resume", "m1"]);
        assert_crashed(&out, &point);
        let status = h.json(&["migrate", "status", "m1"]);
        assert_eq!(status["migration"]["phase"], "running");
    }
    // The journal's view: every step before `replicating` is done exactly once.
    let status = h.json(&["migrate", "status", "m1"]);
    let runs = status["steps"].as_array().unwrap();
    for step in &STEPS[..9] {
        let done = runs
            .iter()
            .filter(|r| r["step"] == *step && r["outcome"] == "done")
            .count();
        assert_eq!(done, 1, "{step}: {status}");
    }

    let resumed = h.ok(&["migrate", "resume", "m1"]);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("is replicating"));
    write_others();
    let run = writes.finish();
    for db in others {
        let tgt = h.sql("src-enc", db);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tgt.count("SELECT count(*) FROM t") != i64::from(written) {
            assert!(Instant::now() < deadline, "{db} never caught up");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            tgt.count("SELECT count(DISTINCT id) FROM t"),
            i64::from(written)
        );
    }
    assert!(run["acknowledged"].as_u64().unwrap() > 1000, "{run}");

    let on_target = wait_caught_up(&h, "src-enc", &ledger);
    let on_source = h.verify(&["--instance", "src"], &ledger);
    assert_eq!(on_source["missing"], 0, "{on_source}");
    assert_eq!(on_source["duplicated"], 0, "{on_source}");
    assert_eq!(on_target["acknowledged"], run["acknowledged"]);
    assert_eq!(
        h.sql("src", "postgres").ledger_digest(),
        h.sql("src-enc", "postgres").ledger_digest(),
        "table contents differ"
    );

    // The target is encrypted under the managed key, at the handoff LSN journaled.
    let target = h.json(&["instance", "describe", "src-enc"]);
    assert_eq!(target["encrypted"], true);
    let status = h.json(&["migrate", "status", "m1"]);
    assert_eq!(status["migration"]["phase"], "replicating");
    assert_eq!(status["handoff"]["lsn"], target["restore"]["handoff_lsn"]);
    assert_eq!(
        status["replication"]["streams"][0]["subscription"]["apply_errors"], 0,
        "{status}"
    );

    // `list` shows it; abort removes everything, source keeps its data.
    let list = h.json(&["migrate", "list"]);
    assert_eq!(list[0]["phase"], "replicating");
    h.ok(&["migrate", "abort", "m1"]);
    for db in ["postgres", "billing", "app"] {
        assert_eq!(h.sql("src", db).pgseal_objects(), 0, "{db}");
    }
    let instances = h.json(&["instance", "list"]);
    assert_eq!(instances.as_array().unwrap().len(), 1);
    assert_eq!(h.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn abort_after_any_step_leaves_no_slot_publication_target_or_snapshot() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec("CREATE TABLE loose (v text); INSERT INTO loose VALUES ('a')");
    src.exec("CREATE DATABASE billing");
    h.sql("src", "billing")
        .exec("CREATE TABLE loose (v text); INSERT INTO loose VALUES ('a')");
    for (i, step) in STEPS.iter().enumerate() {
        let name = format!("a{i}");
        let point = format!("after:{step}");
        let out = h.run_env(
            ("PGSEAL_FAILPOINT", &point),
            &[
                "migrate",
                "start",
                "--source",
                "src",
                "--name",
                &name,
                "--target",
                &format!("t{i}"),
                "--replica-identity-full",
            ],
        );
        assert_crashed(&out, &point);
        let out = h.ok(&["migrate", "abort", &name]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("aborted"), "{text}");
        for db in ["postgres", "billing"] {
            let sql = h.sql("src", db);
            assert_eq!(sql.pgseal_objects(), 0, "{db} after {step}");
            assert_eq!(
                sql.text("SELECT relreplident::text FROM pg_class WHERE relname = 'loose'"),
                "d",
                "{db}: replica identity restored after {step}"
            );
        }
        assert_eq!(
            h.json(&["instance", "list"]).as_array().unwrap().len(),
            1,
            "target left after {step}"
        );
        assert_eq!(
            h.json(&["snapshot", "list"]).as_array().unwrap().len(),
            0,
            "snapshot left after {step}"
        );
        let again = h.ok(&["migrate", "abort", &name]);
        assert!(String::from_utf8_lossy(&again.stdout).contains("aborted"));
        let resumed = h.run(&["migrate", "resume", &name]);
        assert_eq!(
            resumed.status.code(),
            Some(3),
            "an aborted migration stays aborted"
        );
    }
}

#[test]
fn a_slot_created_after_the_snapshot_is_caught_and_the_subscription_stays_disabled() {
    let h = Home::with_source();
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 8);
    std::thread::sleep(Duration::from_secs(1));
    let out = h.run_env(
        ("PGSEAL_TEST_HOOK", "late-slot"),
        &["migrate", "start", "--source", "src", "--name", "late"],
    );
    writes.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("past the handoff LSN"), "{stderr}");
    assert!(stderr.contains("would be lost"), "{stderr}");

    let status = h.json(&["migrate", "status", "late"]);
    assert_eq!(status["migration"]["phase"], "failed");
    let sub = &status["replication"]["streams"][0]["subscription"];
    assert_eq!(sub["enabled"], false, "{status}");
    let handoff: String = status["handoff"]["lsn"].as_str().unwrap().into();
    let confirmed: String = status["replication"]["streams"][0]["slot"]["confirmed_flush_lsn"]
        .as_str()
        .unwrap()
        .into();
    assert!(lsn(&confirmed) > lsn(&handoff), "{confirmed} vs {handoff}");

    // Resuming runs into the same guard; abort cleans up.
    assert_eq!(h.run(&["migrate", "resume", "late"]).status.code(), Some(3));
    h.ok(&["migrate", "abort", "late"]);
    assert_eq!(h.sql("src", "postgres").pgseal_objects(), 0);
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_the_source_is_untouched() {
    let h = Home::new();
    h.source("plainwal", &[]);
    let src = h.sql("plainwal", "postgres");
    let start = |extra: &[&str]| {
        let mut args = vec!["migrate", "start", "--source", "plainwal", "--name", "bad"];
        args.extend(extra);
        h.run(&args)
    };
    let untouched = || {
        assert_eq!(src.pgseal_objects(), 0);
        assert_eq!(h.json(&["instance", "list"]).as_array().unwrap().len(), 1);
        assert_eq!(h.json(&["migrate", "list"]).as_array().unwrap().len(), 0);
    };

    // No such source.
    let out = h.run(&["migrate", "start", "--source", "nosuch", "--name", "bad"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    untouched();

    // wal_level=replica without --allow-restart.
    let out = start(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("wal_level is replica"), "{stderr}");
    assert!(stderr.contains("--allow-restart"), "{stderr}");
    untouched();

    // A table without a primary key.
    src.exec("CREATE TABLE loose (v text)");
    let out = start(&["--allow-restart"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("public.loose"), "{stderr}");
    assert!(stderr.contains("--replica-identity-full"), "{stderr}");
    untouched();
    assert_eq!(src.text("SHOW wal_level"), "replica");

    // A disabled key.
    h.ok(&["key", "create", "--alias", "off"]);
    h.ok(&["key", "disable", "alias/off"]);
    let out = start(&[
        "--allow-restart",
        "--replica-identity-full",
        "--key",
        "alias/off",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("disabled"), "{stderr}");
    untouched();

    // Unreachable server and wrong password, by URL (plan: the read-only check).
    let (_, stderr) = h.exits(
        1,
        &[
            "migrate",
            "plan",
            "--source",
            &format!("postgres://postgres@127.0.0.1:{}/postgres", free_port()),
            "--target",
            "x",
        ],
    );
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    let url = h.json(&["instance", "url", "plainwal"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let out = h
        .command(&["migrate", "plan", "--source", &url, "--target", "x"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    // With the fixes given, the same name starts (preflight's refusals left no record);
    // the restart for wal_level is done by pgseal.
    let out = start(&["--allow-restart", "--replica-identity-full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = h.sql("plainwal", "postgres");
    assert_eq!(src.text("SHOW wal_level"), "logical");
    assert_eq!(
        src.text("SELECT relreplident::text FROM pg_class WHERE relname = 'loose'"),
        "f"
    );
}

#[test]
fn status_measures_lag_by_applied_position_shows_drift_and_guards_retention() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec("CREATE TABLE items (id bigint PRIMARY KEY, v text)");
    src.exec("CREATE DATABASE other");
    // Narrowed to postgres: `other` is outside the migration.
    h.start("s1", &["--database", "postgres"]);

    // 1. WAL written in another database is not lag of ours once decoded past.
    let other = h.sql("src", "other");
    other.exec(
        "CREATE TABLE bulk AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 150000) g",
    );
    let written = src.count("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (lag, naive) = loop {
        let status = h.json(&["migrate", "status", "s1"]);
        let rep = &status["replication"];
        let lag = rep["lag_bytes"].as_u64().unwrap();
        // What "source position minus last applied transaction" would say: the trap.
        let naive = lsn(rep["source_lsn"].as_str().unwrap())
            - lsn(rep["streams"][0]["subscription"]["applied_lsn"]
                .as_str()
                .unwrap());
        if lag < 1 << 20 || Instant::now() > deadline {
            break (lag, naive);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        lag < 1 << 20,
        "lag {lag} B after 30 MB of another database's WAL (position {written})"
    );
    assert!(
        naive > 20 << 20,
        "the other database wrote too little: {naive} B"
    );

    // 2. Our own writes are applied and the lag returns to ~0.
    src.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 1000) g");
    let tgt = h.sql("src-enc", "postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tgt.count("SELECT count(*) FROM items") != 1000 {
        assert!(Instant::now() < deadline, "rows never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 3. DDL the capture did not see (run as replication would, which fires no event
    // trigger) is drift, with the statement for the target. Captured DDL: tests/ddl.rs.
    src.exec(
        "SET session_replication_role = replica; ALTER TABLE items ADD COLUMN note text; \
         SET session_replication_role = origin",
    );
    let status = h.json(&["migrate", "status", "s1"]);
    let drift = status["replication"]["streams"][0]["schema"]["drift"]
        .as_array()
        .unwrap();
    assert_eq!(drift.len(), 1, "{status}");
    let statement = drift[0]["statement"].as_str().unwrap();
    assert_eq!(
        statement,
        r#"ALTER TABLE "public"."items" ADD COLUMN "note" text;"#
    );
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "status", "s1"]).stdout).to_string();
    assert!(text.contains("DRIFT") && text.contains(statement), "{text}");
    tgt.exec(statement);
    let status = h.json(&["migrate", "status", "s1"]);
    assert_eq!(
        status["replication"]["streams"][0]["schema"]["drift"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        status["replication"]["streams"][0]["schema"]["source_fingerprint"],
        status["replication"]["streams"][0]["schema"]["target_fingerprint"]
    );

    // 4. The retention guard: with the target down, the slot holds the source's WAL; over
    //    the limit, status aborts the migration.
    h.ok(&["instance", "stop", "src-enc"]);
    src.exec("INSERT INTO items SELECT g, 'w' FROM generate_series(1001, 5000) g");
    let (_, stderr) = h.exits(3, &["migrate", "status", "s1", "--max-slot-retention", "1"]);
    assert!(stderr.contains("aborting migration s1"), "{stderr}");
    assert_eq!(src.pgseal_objects(), 0);
    let list = h.json(&["migrate", "list"]);
    assert_eq!(list[0]["phase"], "aborted");
}

#[test]
fn a_server_reached_by_url_migrates_under_live_writes_and_aborts_clean() {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let h = Home::new();
    let url = db.url("postgres");
    let ledger = h.ledger();
    let writes = h.workload(&["--url", &url], &ledger, 10);
    std::thread::sleep(Duration::from_secs(1));

    // The journal keeps the URL: one with a password is refused.
    let with_password = url.replace("postgres@", "postgres:secret@");
    let out = h.run(&[
        "migrate",
        "start",
        "--source",
        &with_password,
        "--target",
        "ext-enc",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGPASSWORD"));

    h.ok(&[
        "migrate", "start", "--source", &url, "--target", "ext-enc", "--name", "ext",
    ]);
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "ext-enc", &ledger);
    assert_eq!(on_target["acknowledged"], run["acknowledged"]);
    let on_source = h.verify(&["--url", &url], &ledger);
    assert_eq!(
        (
            on_source["missing"].as_u64(),
            on_source["duplicated"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        h.json(&["instance", "describe", "ext-enc"])["encrypted"],
        true
    );

    h.ok(&["migrate", "abort", "ext"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(db.connect("postgres")).unwrap();
    let left: i64 = runtime
        .block_on(client.query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        ))
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A second role writing directly to the source, one insert per transaction, recording
/// each acknowledged id; it stops when its session is ended and reconnecting fails.
fn direct_writer(
    socket: String,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<i64>, String)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut config = tokio_postgres::Config::new();
            config
                .host_path(&socket)
                .port(port)
                .user("writer2")
                .dbname("postgres");
            let mut acked = Vec::new();
            let mut last_error = String::new();
            let mut id = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let client = match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        client
                    }
                    Err(e) => {
                        last_error = format!("{e:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                loop {
                    id += 1;
                    match client
                        .execute("INSERT INTO side_writes (id) VALUES ($1)", &[&id])
                        .await
                    {
                        Ok(_) => acked.push(id),
                        Err(e) => {
                            last_error = format!("{e:?}");
                            break;
                        }
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (acked, last_error)
        })
    })
}

#[test]
fn cutover_through_an_endpoint_under_load_loses_nothing_fences_every_role_and_syncs_sequences() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec(
        "CREATE ROLE writer2 LOGIN; \
         CREATE TABLE side_writes (id bigint PRIMARY KEY); GRANT INSERT ON side_writes TO writer2; \
         CREATE SEQUENCE free_seq; SELECT setval('free_seq', 41); SELECT nextval('free_seq'); \
         CREATE TABLE owned (id bigserial PRIMARY KEY); INSERT INTO owned DEFAULT VALUES;",
    );
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 25);
    h.start("c1", &[]);
    let info = h.json(&["instance", "describe", "src"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let side = direct_writer(
        info["socket_dir"].as_str().unwrap().to_string(),
        info["port"].as_u64().unwrap() as u16,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(3));

    let validated = h.json(&["migrate", "validate", "c1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    std::thread::sleep(Duration::from_secs(2));
    let dry = h.json(&["migrate", "cutover", "c1", "--dry-run"]);
    assert_eq!(dry["failed_checks"].as_array().unwrap().len(), 0, "{dry}");
    let report = h.json(&["migrate", "cutover", "c1"]);
    // The final check re-verified only what changed since the validation began.
    let check = &report["final_check"];
    assert_eq!(check["mismatched_rows"], 0, "{report}");
    assert!(check["rows"].as_i64().unwrap() > 0, "{report}");
    assert!(
        check["rows"].as_i64().unwrap() < validated["rows"].as_i64().unwrap(),
        "{report}"
    );
    // The change log is gone from the target before it takes writes.
    assert_eq!(
        h.sql("src-enc", "postgres")
            .count("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgseal_validate'"),
        0
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (side_acked, side_error) = side.join().unwrap();
    let run = writes.finish();

    // The workload went through the endpoint the whole time: a pause, no error.
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src-enc", &ledger, &run);
    // The other role was fenced: its session ended, reconnecting refused, and every write
    // it had acknowledged is on the target.
    assert!(!side_acked.is_empty());
    assert!(
        side_error.contains("not currently accepting connections")
            || side_error.contains("terminat"),
        "{side_error}"
    );
    let tgt = h.sql("src-enc", "postgres");
    let max_acked = *side_acked.iter().max().unwrap();
    assert_eq!(
        tgt.count(&format!(
            "SELECT count(*) FROM side_writes WHERE id <= {max_acked}"
        )),
        side_acked.len() as i64
    );
    // Every sequence, owned or not, from the source's last_value.
    assert_eq!(tgt.count("SELECT last_value FROM free_seq"), 42);
    assert_eq!(tgt.count("SELECT nextval('free_seq')"), 43);
    assert_eq!(tgt.count("SELECT nextval('owned_id_seq')"), 2);
    assert!(
        report["sequences"].as_array().unwrap().len() >= 2,
        "{report}"
    );
    let pause = report["write_pause_ms"].as_u64().unwrap();
    assert!(pause > 0 && pause < 5000, "{report}");
    let drained = lsn(report["drained_lsn"].as_str().unwrap());
    assert!(drained >= lsn(report["fence_lsn"].as_str().unwrap()));

    // The endpoint points at the target, the source stays fenced, the journal says so.
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        "src-enc"
    );
    let admin = h.sql("src", "template1");
    assert_eq!(
        admin.text("SELECT datallowconn::text FROM pg_database WHERE datname = 'postgres'"),
        "false"
    );
    let status = h.json(&["migrate", "status", "c1"]);
    assert_eq!(status["migration"]["phase"], "cut_over");
    // Abort would delete the instance applications now use: refused.
    assert_eq!(h.run(&["migrate", "abort", "c1"]).status.code(), Some(3));
    h.ok(&["endpoint", "delete", "src-ep"]);
    // Let the test's cleanup remove the instances: lift the fence first.
    admin.exec("ALTER DATABASE postgres ALLOW_CONNECTIONS true");
}

#[test]
fn a_crash_at_each_cutover_failpoint_then_resume_converges_with_nothing_lost() {
    crash_at_each_cutover_failpoint(Kept::Sqlite);
}

/// The same test, the journal kept in PostgreSQL.
#[test]
fn with_the_journal_in_postgresql_a_crash_at_each_cutover_failpoint_then_resume_converges() {
    crash_at_each_cutover_failpoint(Kept::Postgres);
}

fn crash_at_each_cutover_failpoint(kept: Kept) {
    let h = Home::with_source_kept(kept);
    // Two more databases, written between the rounds: all three are fenced and drained.
    let others = ["app", "billing"];
    for db in others {
        h.sql("src", "postgres")
            .exec(&format!("CREATE DATABASE {db}"));
        h.sql("src", db).exec("CREATE TABLE t (id int PRIMARY KEY)");
    }
    let mut written = 0;
    let mut write_billing = || {
        written += 1;
        for db in others {
            h.sql("src", db)
                .exec(&format!("INSERT INTO t VALUES ({written})"));
        }
    };
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 25);
    h.start("c2", &[]);
    let admin = h.sql("src", "template1");
    let allowed = || {
        admin.text(
            "SELECT string_agg(datallowconn::text, ',' ORDER BY datname) FROM pg_database \
             WHERE datname IN ('app', 'billing', 'postgres')",
        )
    };

    // Killed before the switch (reverse slots and subscriptions made before the pause;
    // fenced; drained and sequences set): resume undoes it, reverse objects included (the
    // next cutover makes them again).
    for point in [
        "cutover:reverse_publication",
        "cutover:reverse_prepared",
        "cutover:reverse_subscribed",
        "cutover:fenced",
        "cutover:drained",
    ] {
        write_billing();
        std::thread::sleep(Duration::from_secs(2));
        let out = h.run_env(("PGSEAL_FAILPOINT", point), &["migrate", "cutover", "c2"]);
        assert_crashed(&out, point);
        assert_eq!(
            h.json(&["migrate", "status", "c2"])["migration"]["phase"],
            "cutting_over"
        );
        let fenced = if point.starts_with("cutover:reverse_") {
            "true,true,true"
        } else {
            "false,false,false"
        };
        assert_eq!(
            allowed(),
            fenced,
            "{point}: the fences hold after the crash"
        );
        let text = String::from_utf8_lossy(&h.ok(&["migrate", "resume", "c2"]).stdout).to_string();
        assert!(text.contains("undone"), "{point}: {text}");
        assert_eq!(allowed(), "true,true,true", "{point}");
        // Nothing of the reverse replication left on either side, and the forward apply
        // commits asynchronously again (the cutover made it flush each commit just before
        // its pause).
        for (instance, query, left) in [
            (
                "src-enc",
                "SELECT count(*) FROM pg_replication_slots",
                "a reverse slot on the target",
            ),
            (
                "src-enc",
                "SELECT count(*) FROM pg_publication",
                "a reverse publication on the target",
            ),
            (
                "src",
                "SELECT count(*) FROM pg_subscription",
                "a reverse subscription on the source",
            ),
            (
                "src-enc",
                "SELECT count(*) FROM pg_subscription WHERE subsynccommit <> 'off'",
                "a forward subscription whose synchronous_commit is not back to off",
            ),
        ] {
            assert_eq!(
                h.sql(instance, "postgres").count(query),
                0,
                "{point}: {left}"
            );
        }
        assert_eq!(
            h.json(&["migrate", "status", "c2"])["migration"]["phase"],
            "replicating"
        );
        assert_eq!(
            h.json(&["endpoint", "describe", "src-ep"])["instance"],
            "src"
        );
    }
    // A reverse slot some earlier attempt left behind (an orphaned backend can finish
    // creating one after recovery ran): the cutover makes a new one, never reuses it.
    let slot = h
        .sql("src", "postgres")
        .text("SELECT slot_name::text FROM pg_replication_slots WHERE database = 'postgres'");
    let target = h.sql("src-enc", "postgres");
    target.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}_back', 'pgoutput')"
    ));
    // Killed after the switch: resume finishes forward.
    write_billing();
    std::thread::sleep(Duration::from_secs(2));
    let before = target.text("SELECT pg_current_wal_lsn()::text");
    crash_then_resume(
        &h,
        "cutover:switched",
        &["migrate", "cutover", "c2"],
        "now cut over",
        "cut_over",
        "src-enc",
    );
    assert_eq!(
        target.text(&format!(
            "SELECT (restart_lsn >= '{before}')::text FROM pg_replication_slots WHERE slot_name = '{slot}_back'"
        )),
        "true",
        "the reverse slot was made at this cutover"
    );

    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src-enc", &ledger, &run);
    for db in others {
        assert_eq!(
            h.sql("src-enc", db)
                .count("SELECT count(DISTINCT id) FROM t"),
            i64::from(written),
            "every row of {db} on the target"
        );
    }
    h.ok(&["endpoint", "delete", "src-ep"]);
    for db in ["postgres", "app", "billing"] {
        admin.exec(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    }
}

#[test]
fn rollback_after_cutover_keeps_rows_written_on_the_target_and_cleanup_leaves_nothing() {
    start_validate_cutover_rollback_cleanup_report(Kept::Sqlite);
}

/// One whole migration with the journal kept in PostgreSQL: the same test.
#[test]
fn with_the_journal_in_postgresql_a_migration_validates_cuts_over_rolls_back_and_cleans_up() {
    start_validate_cutover_rollback_cleanup_report(Kept::Postgres);
}

fn start_validate_cutover_rollback_cleanup_report(kept: Kept) {
    let h = Home::with_source_kept(kept);
    h.sql("src", "postgres")
        .exec("CREATE SEQUENCE invoice_no; SELECT nextval('invoice_no')");
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 18);
    h.start("r1", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let validated = h.json(&["migrate", "validate", "r1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    // A table made after the reverse subscriptions (which the cutover makes before its
    // pause) and before the pause: the pause finds their table list out of date and makes
    // them again, or the rollback would not carry the rows written into it.
    let cutover = h
        .command(&["migrate", "cutover", "r1", "--json"])
        .env("PGSEAL_TEST_HOOK", "wait-before-pause")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let src = h.sql("src", "postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.count("SELECT count(*) FROM pg_subscription") == 0 {
        assert!(
            Instant::now() < deadline,
            "no reverse subscription was made"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    src.exec("CREATE TABLE \"late \"\"one\"\"\" (id int PRIMARY KEY)");
    let target = h.sql("src-enc", "postgres");
    while target.count("SELECT count(*) FROM pg_class WHERE relname = 'late \"one\"'") == 0 {
        assert!(Instant::now() < deadline, "the new table was not replayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cutover.wait_with_output().unwrap();
    let cut: serde_json::Value =
        serde_json::from_slice(&succeeded(out, &["migrate", "cutover", "r1"]).stdout).unwrap();
    assert_eq!(cut["rollback_ready"], true, "{cut}");
    // Writes land on the target now, including a sequence advanced there and a row in the
    // late table.
    std::thread::sleep(Duration::from_secs(3));
    target.exec("SELECT nextval('invoice_no') FROM generate_series(1, 10)");
    target.exec("INSERT INTO \"late \"\"one\"\"\" VALUES (7)");
    let back = h.json(&["migrate", "rollback", "r1"]);
    assert!(back["write_pause_ms"].as_u64().unwrap() < 5000, "{back}");
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        "src"
    );
    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");

    // Everything acknowledged, before, during and after both switches, is on the source.
    assert_all_landed(&h, "src", &ledger, &run);
    // (The fences ended the session opened before the cutover.)
    let src = h.sql("src", "postgres");
    assert_eq!(src.count("SELECT last_value FROM invoice_no"), 11);
    assert_eq!(
        src.count("SELECT count(*) FROM \"late \"\"one\"\"\" WHERE id = 7"),
        1
    );
    assert_eq!(
        h.json(&["migrate", "status", "r1"])["migration"]["phase"],
        "rolled_back"
    );

    // Cleanup: the abandoned target goes, and no pgseal object stays on the source.
    h.ok(&["migrate", "cleanup", "r1"]);
    assert_eq!(src.pgseal_everything(), 0);
    assert_eq!(h.json(&["instance", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(h.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
    h.ok(&["endpoint", "delete", "src-ep"]);

    // The report tells the whole story from the journal: each step once done, by the
    // runner this process was, the validation, the cutover and the rollback.
    let report = h.json(&["migrate", "report", "r1"]);
    assert_eq!(report["migration"]["phase"], "cleaned_up", "{report}");
    assert_eq!(report["validation"]["clean"], true, "{report}");
    assert!(
        report["cutover"].is_object() && report["rollback"].is_object(),
        "{report}"
    );
    let page = String::from_utf8(h.ok(&["migrate", "report", "r1"]).stdout).unwrap();
    let page = std::fs::read_to_string(page.trim()).unwrap();
    assert!(page.contains("<h2>Rollback</h2>"), "{page}");
    let status = h.json(&["migrate", "status", "r1"]);
    let runs = status["steps"].as_array().unwrap();
    assert!(
        runs.iter()
            .all(|r| r["runner"].as_str().is_some_and(|r| r.contains(':'))),
        "{status}"
    );
    if kept == Kept::Postgres {
        // Nothing of it in the home: the journal is the team's database.
        assert!(!h.path("home").join("journal.sqlite").exists());
    }
}

#[test]
fn cleanup_after_cutover_leaves_no_slot_publication_or_subscription_on_either_side() {
    let h = Home::with_source();
    h.start("k1", &["--max-slot-retention", "1GiB"]);
    assert_eq!(
        h.sql("src", "template1")
            .text("SHOW max_slot_wal_keep_size"),
        "1GB"
    );
    // The hook gets a clean environment: none of pgseal's secrets.
    let seen = h.path("hook-env");
    let hook = format!("test -n \"$PGSEAL_NEW_URL\" && env > {}", seen.display());
    let out = h
        .command(&["migrate", "cutover", "k1", "--on-switch", &hook, "--json"])
        .env("PGPASSWORD", "source password")
        .env("AWS_SECRET_ACCESS_KEY", "cloud secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(&seen).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .collect();
    assert!(
        names.contains(&"PGSEAL_NEW_URL") && names.contains(&"PATH"),
        "{env}"
    );
    for secret in [
        "PGSEAL_PASSPHRASE",
        "PGPASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "PGSEAL_HOME",
    ] {
        assert!(!names.contains(&secret), "the hook got {secret}: {env}");
    }
    // Nothing to resume once cut over: it says so, and the phase stays.
    let out = h.ok(&["migrate", "resume", "k1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is cut_over: there is nothing to resume"),
        "{text}"
    );
    assert!(!text.contains("replicating"), "{text}");
    assert_eq!(
        h.json(&["migrate", "status", "k1"])["migration"]["phase"],
        "cut_over"
    );
    let out = h.json(&["migrate", "cleanup", "k1", "--retire-source"]);
    assert!(out["removed"].as_array().unwrap().len() >= 4, "{out}");
    assert_eq!(h.sql("src-enc", "postgres").pgseal_everything(), 0);
    assert_eq!(
        h.json(&["instance", "describe", "src"])["status"],
        "stopped"
    );
    assert_eq!(h.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
    // The source's catalogs, read from its files after a restart with the fence lifted.
    h.ok(&["instance", "start", "src"]);
    let admin = h.sql("src", "template1");
    admin.exec("ALTER DATABASE postgres ALLOW_CONNECTIONS true");
    assert_eq!(h.sql("src", "postgres").pgseal_everything(), 0);
    assert_eq!(
        admin.text("SHOW max_slot_wal_keep_size"),
        "-1",
        "the old limit is back"
    );
    assert_eq!(
        h.json(&["migrate", "status", "k1"])["migration"]["phase"],
        "cleaned_up"
    );
}

#[test]
fn validate_is_clean_on_equal_data_of_every_type_and_names_each_planted_difference() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, v text); \
         INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 60000) g; \
         CREATE TABLE kinds (a text, b int, f float8, n numeric, ts timestamptz, arr int[], \
             j json, jb jsonb, bin bytea, big text, PRIMARY KEY (a, b)); \
         INSERT INTO kinds VALUES \
           ('x', 1, -0.0, 1.50, '2026-01-01 12:00+02', '{1,2,NULL}', '{\"k\": [1, 2]}', '{\"k\": 1}', '\\x00ff', repeat('toast', 100000)), \
           ('x', 2, 1e308, 0.1, NULL, NULL, NULL, NULL, NULL, NULL), \
           ('y', 1, 'NaN', -12345678901234567890.12345, 'infinity', '{}', '[]', '[]', '', ''); \
         INSERT INTO kinds (a, b, jb) VALUES ('z', 1, '{\"n\": 1}'); \
         CREATE TABLE pipes (a text, b text, PRIMARY KEY (a, b)); \
         INSERT INTO pipes VALUES ('a|b', 'c'), ('a', 'b|c'); \
         CREATE TABLE loose (v text); INSERT INTO loose VALUES ('a'), ('a'), ('b'); \
         ALTER TABLE loose REPLICA IDENTITY FULL",
    );
    h.start("v1", &[]);
    let clean = h.json(&["migrate", "validate", "v1"]);
    assert_eq!(clean["clean"], true, "{clean}");
    assert_eq!(clean["mismatched_rows"], 0);
    let items = clean["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.items")
        .unwrap();
    assert_eq!(items["rows"], 60000);
    assert_eq!(items["state"], "validated");

    // Behind replication's back on the target: one row changed, one deleted, one added;
    // a composite-key row changed; a key-less row duplicated.
    h.sql("src-enc", "postgres").exec(
        "SET session_replication_role = replica; \
         UPDATE items SET v = 'changed' WHERE id = 777; DELETE FROM items WHERE id = 4242; \
         INSERT INTO items VALUES (999999, 'extra'); \
         UPDATE kinds SET n = 1.5000 WHERE a = 'x' AND b = 1; \
         UPDATE kinds SET jb = '{\"n\": 1.00}' WHERE a = 'z'; \
         DELETE FROM pipes WHERE a = 'a'; \
         INSERT INTO loose VALUES ('b')",
    );
    let out = h.run(&["migrate", "validate", "v1", "--json"]);
    assert_eq!(out.status.code(), Some(11));
    let dirty: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = |name: &str| {
        dirty["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .unwrap()
            .clone()
    };
    let items = table("public.items");
    assert_eq!(items["state"], "mismatched");
    assert_eq!(items["missing"], serde_json::json!(["4242"]));
    assert_eq!(items["extra"], serde_json::json!(["999999"]));
    assert_eq!(items["different"], serde_json::json!(["777"]));
    let detail = items["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"] == "777")
        .unwrap();
    assert_eq!(detail["kind"], "different");
    assert_eq!(detail["source"], "(777,v777)");
    assert_eq!(detail["target"], "(777,changed)");
    let kinds = table("public.kinds");
    assert_eq!(
        kinds["different"],
        serde_json::json!(["(x,1)", "(z,1)"]),
        "numeric 1.50 vs 1.5000, jsonb 1 vs 1.00 (equal as jsonb, hashed alike as jsonb)"
    );
    // ('a|b','c') and ('a','b|c') are two keys, not one `a|b|c`.
    let pipes = table("public.pipes");
    assert_eq!(pipes["missing"], serde_json::json!(["(a,b|c)"]), "{pipes}");
    assert_eq!(pipes["mismatched_rows"], 1);
    let loose = table("public.loose");
    assert_eq!(loose["state"], "no_primary_key");
    assert_eq!(loose["mismatched_rows"], 1);
    assert_eq!(dirty["mismatched_rows"], 7);

    // The journal keeps counts and identifier keys, never a row's text; the text keys of
    // kinds and pipes are withheld from it.
    let mut journal = Vec::new();
    for file in ["journal.sqlite", "journal.sqlite-wal"] {
        journal.extend(std::fs::read(h.path("home").join(file)).unwrap_or_default());
    }
    let journal = String::from_utf8_lossy(&journal);
    assert!(journal.contains("999999"), "the identifier keys are kept");
    for row_value in ["(777,changed)", "(777,v777)", "a,b|c", "(x,1)", "toast"] {
        assert!(
            !journal.contains(row_value),
            "{row_value} is in the journal"
        );
    }
    h.assert_private();
    let text = String::from_utf8_lossy(&h.run(&["migrate", "validate", "v1"]).stdout).to_string();
    assert!(
        text.contains("4242") && text.contains("NOT clean"),
        "{text}"
    );

    // Cutover refuses while the last validation found mismatches.
    let out = h.run(&["migrate", "cutover", "v1", "--dry-run"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mismatched row"));
}

#[test]
fn validate_under_the_ledger_workload_reports_no_false_mismatch() {
    let h = Home::with_source();
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 20);
    std::thread::sleep(Duration::from_secs(1));
    h.start("w1", &[]);
    for _ in 0..3 {
        let report = h.json(&["migrate", "validate", "w1"]);
        assert_eq!(report["mismatched_rows"], 0, "{report}");
        assert_eq!(report["clean"], true, "{report}");
        assert!(report["rows"].as_i64().unwrap() > 0);
    }
    writes.finish();
}

/// Lifts the source's synchronous standby requirement on drop: the writers waiting for
/// the standby's acknowledgement go on.
struct ReleaseWaiters<'a>(&'a Home);

impl Drop for ReleaseWaiters<'_> {
    fn drop(&mut self) {
        let src = self.0.sql("src", "postgres");
        src.exec("ALTER SYSTEM RESET synchronous_standby_names");
        src.exec("SELECT pg_reload_conf()");
    }
}

/// A commit the target applies before the source shows it: PostgreSQL flushes (and sends)
/// a commit before its backend leaves the proc array. A synchronous standby that never
/// answers holds a committed writer in that gap for as long as the test likes (pgseal's
/// own barriers commit `synchronous_commit = local` and do not wait for it).
#[test]
fn a_commit_the_target_shows_before_the_source_does_is_never_called_a_mismatch() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec(
        "CREATE TABLE k (id int PRIMARY KEY); CREATE TABLE nk (v int); \
         ALTER TABLE nk REPLICA IDENTITY FULL",
    );
    h.start("vr", &[]);
    assert_eq!(h.json(&["migrate", "validate", "vr"])["clean"], true);
    // ALTER SYSTEM runs alone (not in a transaction block).
    src.exec("ALTER SYSTEM SET synchronous_standby_names = 'pgseal_test_never_acks'");
    src.exec("SELECT pg_reload_conf()");
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            h.sql("src", "postgres")
                .exec("BEGIN; INSERT INTO k VALUES (1); INSERT INTO nk VALUES (1); COMMIT")
        });
        // Dropped first when an assertion below fails, so the writer ends and the scope's
        // join does not wait for it forever.
        let _release = ReleaseWaiters(&h);
        let target = h.sql("src-enc", "postgres");
        let started = Instant::now();
        while target.count("SELECT (SELECT count(*) FROM k) + (SELECT count(*) FROM nk)") < 2 {
            assert!(started.elapsed() < Duration::from_secs(30), "never applied");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            src.count("SELECT count(*) FROM k"),
            0,
            "the source shows it already"
        );
        // A keyed and a key-less table differ while the writer waits: neither difference
        // can be settled (the lock waits for the writer), and neither is a mismatch.
        let out = h.run(&["migrate", "validate", "vr", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(report["mismatched_rows"], 0, "{report}");
        assert_eq!(report["clean"], false, "{report}");
        // The standby requirement gone, the writer's commit is released and shown.
        drop(_release);
        writer.join().unwrap();
    });
    assert_eq!(src.count("SELECT count(*) FROM k"), 1);
    let report = h.json(&["migrate", "validate", "vr"]);
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["mismatched_rows"], 0, "{report}");
}

#[test]
fn the_cutover_final_check_catches_a_row_changed_after_the_last_validation() {
    let h = Home::with_source();
    h.sql("src", "postgres").exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, v text); \
         INSERT INTO items SELECT g, 'v' FROM generate_series(1, 5000) g; \
         CREATE TABLE loose (v text); ALTER TABLE loose REPLICA IDENTITY FULL; \
         INSERT INTO loose VALUES ('a')",
    );
    h.start("f1", &[]);
    assert_eq!(h.json(&["migrate", "validate", "f1"])["clean"], true);
    // After the clean pass: a row changed on the target behind replication's back.
    h.sql("src-enc", "postgres").exec(
        "SET session_replication_role = replica; UPDATE items SET v = 'sneaky' WHERE id = 321; \
         INSERT INTO loose VALUES ('b')",
    );
    let (_, stderr) = h.exits(3, &["migrate", "cutover", "f1"]);
    assert!(
        stderr.contains("final check") && stderr.contains("public.items: 321"),
        "{stderr}"
    );
    // The key-less table's difference is counted; its row hashes are not listed (the
    // message is journaled).
    assert!(
        stderr.contains("1 more whose keys are not identifiers"),
        "{stderr}"
    );
    assert!(!stderr.contains("row hash"), "{stderr}");
    // Refused before the switch: the fence is lifted and the source still serves.
    assert_eq!(
        h.json(&["migrate", "status", "f1"])["migration"]["phase"],
        "replicating"
    );
    let src = h.sql("src", "postgres");
    src.exec("INSERT INTO items VALUES (5001, 'after')");

    // Models a cutover that failed after dropping the change log (its pause drops it
    // before the switch): the next cutover must not run a final check that compares
    // nothing. It refuses before fencing anything, and a new validation restores it.
    let target = h.sql("src-enc", "postgres");
    target.exec(
        "SET session_replication_role = replica; UPDATE items SET v = 'v' WHERE id = 321; \
         DELETE FROM loose WHERE v = 'b'; DROP SCHEMA pgseal_validate CASCADE",
    );
    let (stdout, _) = h.exits(3, &["migrate", "cutover", "f1", "--dry-run"]);
    assert!(
        stdout.contains("change log the final check reads is gone"),
        "{stdout}"
    );
    assert_eq!(
        src.count(
            "SELECT count(*) FROM pg_database WHERE NOT datallowconn AND datname = 'postgres'"
        ),
        0
    );
    assert_eq!(h.json(&["migrate", "validate", "f1"])["clean"], true);
    h.ok(&["migrate", "cutover", "f1", "--dry-run"]);
}

#[test]
fn a_crash_during_rollback_then_resume_undoes_it_or_finishes_it_with_nothing_lost() {
    let h = Home::with_source();
    // A second database, written on the target between the rounds.
    h.sql("src", "postgres").exec("CREATE DATABASE billing");
    h.sql("src", "billing")
        .exec("CREATE TABLE t (id int PRIMARY KEY)");
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 25);
    h.start("rb", &[]);
    std::thread::sleep(Duration::from_secs(1));
    h.json(&["migrate", "cutover", "rb"]);
    std::thread::sleep(Duration::from_secs(2));
    h.sql("src-enc", "billing")
        .exec("INSERT INTO t SELECT generate_series(1, 10)");

    // Killed right after pausing the endpoint, before anything else changed: resume
    // resumes the endpoint in front of the target (before the fix, it said there was
    // nothing to resume and left the endpoint paused).
    crash_then_resume(
        &h,
        "rollback:paused",
        &["migrate", "rollback", "rb"],
        "rollback of rb was undone",
        "cut_over",
        "src-enc",
    );
    // Killed with the target fenced, before switching back: resume lets the target serve.
    crash_then_resume(
        &h,
        "rollback:fenced",
        &["migrate", "rollback", "rb"],
        "rollback of rb was undone",
        "cut_over",
        "src-enc",
    );
    let allowed = |instance: &str| {
        h.sql(instance, "template1").text(
            "SELECT string_agg(datallowconn::text, ',' ORDER BY datname) FROM pg_database \
             WHERE datname IN ('billing', 'postgres')",
        )
    };
    assert_eq!(
        (allowed("src"), allowed("src-enc")),
        ("false,false".into(), "true,true".into())
    );
    h.sql("src-enc", "billing")
        .exec("INSERT INTO t SELECT generate_series(11, 20)");
    std::thread::sleep(Duration::from_secs(2));

    // Killed after switching back: resume finishes it.
    crash_then_resume(
        &h,
        "rollback:switched",
        &["migrate", "rollback", "rb"],
        "now rolled back",
        "rolled_back",
        "src",
    );

    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src", &ledger, &run);
    assert_eq!(
        h.sql("src", "billing")
            .count("SELECT count(DISTINCT id) FROM t"),
        20,
        "every row written on the target's second database is back on the source"
    );
    h.ok(&["migrate", "cleanup", "rb"]);
    h.ok(&["endpoint", "delete", "src-ep"]);
}

#[test]
fn a_cutover_whose_undo_fails_stays_cutting_over_with_the_fence_shown_and_resume_lifts_it() {
    let h = Home::with_source();
    h.start("u1", &[]);
    let out = h.run_env(
        ("PGSEAL_TEST_HOOK", "fail-after-fence,undo-fails"),
        &["migrate", "cutover", "u1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("undoing it failed too") && stderr.contains("pgseal migrate resume u1"),
        "{stderr}"
    );
    let status = h.json(&["migrate", "status", "u1"]);
    assert_eq!(status["migration"]["phase"], "cutting_over", "{status}");
    assert_eq!(
        status["replication"]["streams"][0]["source_allows_connections"], false,
        "{status}"
    );
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "resume", "u1"]).stdout).to_string();
    assert!(text.contains("undone"), "{text}");
    let status = h.json(&["migrate", "status", "u1"]);
    assert_eq!(status["migration"]["phase"], "replicating");
    assert_eq!(
        status["replication"]["streams"][0]["source_allows_connections"], true,
        "{status}"
    );
    h.sql("src", "postgres")
        .exec("CREATE TABLE after_undo (id int)");
}

#[test]
fn postgresql_itself_caps_the_slots_wal_on_a_managed_source_and_the_old_limit_comes_back() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    assert_eq!(src.text("SHOW max_slot_wal_keep_size"), "-1");
    h.start("g1", &["--max-slot-retention", "32MiB"]);
    assert_eq!(src.text("SHOW max_slot_wal_keep_size"), "32MB");
    // With the target down and no `status` running, the server invalidates the slot once
    // it holds more than the limit, instead of filling the disk.
    h.ok(&["instance", "stop", "src-enc"]);
    src.exec("CREATE TABLE filler (x text)");
    let lost =
        || src.text("SELECT coalesce(string_agg(wal_status, ','), '') FROM pg_replication_slots");
    let started = Instant::now();
    while lost() != "lost" {
        assert!(started.elapsed() < Duration::from_secs(60), "{}", lost());
        src.exec(
            "INSERT INTO filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal(); CHECKPOINT",
        );
    }
    let status = h.json(&["migrate", "status", "g1"]);
    assert_eq!(status["migration"]["phase"], "failed", "{status}");
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("invalidated") && warnings.contains("pgseal migrate abort g1"),
        "{warnings}"
    );
    h.ok(&["migrate", "abort", "g1"]);
    assert_eq!(src.text("SHOW max_slot_wal_keep_size"), "-1");
    assert_eq!(src.pgseal_objects(), 0);
}

#[test]
fn cutover_trusts_an_apply_worker_that_failed_once_and_runs_again_not_one_that_keeps_failing() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec("CREATE TABLE items (id int PRIMARY KEY)");
    h.start("w1", &[]);
    let errors = || {
        h.json(&["migrate", "status", "w1"])["replication"]["streams"][0]["subscription"]
            ["apply_errors"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(errors(), 0);

    // A source restart breaks the apply worker's connection: that counts as an error, for
    // good (the count never goes down). Before the fix, cutover was refused from then on.
    h.ok(&["instance", "stop", "src"]);
    h.ok(&["instance", "start", "src"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while errors() == 0 {
        assert!(Instant::now() < deadline, "the restart counted no error");
        std::thread::sleep(Duration::from_millis(200));
    }
    h.sql("src", "postgres")
        .exec("INSERT INTO items VALUES (1)");
    let out = h.run(&["migrate", "cutover", "w1", "--dry-run"]);
    assert_exit(&out, 0);

    // A change the target cannot apply: its worker fails at once, each time it restarts.
    h.sql("src-enc", "postgres")
        .exec("INSERT INTO items VALUES (2)");
    h.sql("src", "postgres")
        .exec("INSERT INTO items VALUES (2)");
    let before = errors();
    let deadline = Instant::now() + Duration::from_secs(30);
    while errors() == before {
        assert!(Instant::now() < deadline, "the conflict counted no error");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (stdout, _) = h.exits(3, &["migrate", "cutover", "w1", "--dry-run"]);
    assert!(stdout.contains("apply worker"), "{stdout}");
    h.ok(&["migrate", "abort", "w1"]);
}

#[test]
fn a_detached_follower_writes_its_pid_is_started_once_and_leaves_with_its_migration() {
    let h = Home::with_source();
    h.start("fd", &["--no-follow"]);
    let first = h.json(&["migrate", "follow", "fd", "--detach", "--interval", "0.5"]);
    assert_eq!(first["started"], true, "{first}");
    let pid = first["pid"].as_u64().unwrap();
    let pid_file = std::fs::read_to_string(first["pid_file"].as_str().unwrap()).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    let alive =
        |pid: u64| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    assert!(alive(pid));
    // Detached from this terminal: its own process group.
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
            .unwrap()
            .as_raw() as u64,
        pid
    );
    // Once it runs (its first heartbeat written), a second --detach starts none and
    // names it.
    let heartbeat = h.path("home").join("migrations").join("fd.follow.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&heartbeat).is_ok_and(|t| t.contains(&pid.to_string())) {
        assert!(Instant::now() < deadline, "no heartbeat from the follower");
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = h.json(&["migrate", "follow", "fd", "--detach"]);
    assert_eq!(again["started"], false, "{again}");
    assert_eq!(again["pid"].as_u64(), Some(pid), "{again}");
    // The migration gone, its follower leaves by itself.
    h.ok(&["migrate", "abort", "fd"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the follower outlived its migration"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A migration that does not exist is refused before anything starts.
    h.exits(3, &["migrate", "follow", "nope", "--detach"]);
}

#[test]
fn the_follower_aborts_a_migration_whose_slot_holds_more_wal_than_its_limit() {
    follower_aborts_over_the_limit(Kept::Sqlite);
}

/// The same, the journal kept in PostgreSQL: the follower's passes take the lease, and
/// its abort holds it.
#[test]
fn with_the_journal_in_postgresql_the_follower_aborts_a_migration_over_its_limit() {
    follower_aborts_over_the_limit(Kept::Postgres);
}

fn follower_aborts_over_the_limit(kept: Kept) {
    let h = Home::with_source_kept(kept);
    let src = h.sql("src", "postgres");
    src.exec("CREATE TABLE filler (id serial PRIMARY KEY, x text)");
    // The follower start leaves running (every 2 s), and a limit of 40 MiB (a start
    // itself holds about 27 MiB until the target confirms).
    h.start("r1", &["--max-slot-retention", "40MiB"]);
    // The target stops confirming: its subscription disabled, the slot holds what the
    // source writes (no checkpoint, so PostgreSQL's own cap does not step in first).
    let dst = h.sql("src-enc", "postgres");
    let sub = dst.text("SELECT subname FROM pg_subscription");
    dst.exec(&format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    src.exec(
        "INSERT INTO filler (x) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 60000) g",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = h.json(&["migrate", "list"]);
        if list[0]["phase"] == "aborted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never aborted it: {list}\n{}",
            std::fs::read_to_string(h.path("home").join("migrations").join("r1.follow.log"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log =
        std::fs::read_to_string(h.path("home").join("migrations").join("r1.follow.log")).unwrap();
    assert!(log.contains("to protect the source's disk"), "{log}");
    assert_eq!(src.pgseal_objects(), 0);
}

#[test]
fn a_journal_copied_into_postgresql_drives_the_same_migration_and_is_copied_once() {
    let h = Home::with_source();
    h.start("c1", &["--no-follow"]);
    let shared = SharedJournal::start();
    // A password in the URL (the server trusts loopback, so it is not checked): never shown.
    let url = shared
        .url
        .replace("pgseal%20runner@", "pgseal%20runner:s3cr3t@");
    let shared_run = |args: &[&str]| {
        h.command(args)
            .env("PGSEAL_JOURNAL", &url)
            .output()
            .unwrap()
    };
    // Not a journal pgseal keeps: refused before anything is read.
    let (_, refused) = h.exits(3, &["journal", "copy", "--to", "mysql://x/y"]);
    assert!(refused.contains("a journal is a postgres://"), "{refused}");
    let copied = succeeded(
        shared_run(&["journal", "copy", "--json"]),
        &["journal", "copy"],
    );
    let copied: serde_json::Value = serde_json::from_slice(&copied.stdout).unwrap();
    assert_eq!(copied["migrations"], serde_json::json!(["c1"]), "{copied}");
    // The shared journal has it all: its phase, each step once done, its resources; it
    // drives it from now on.
    let status = succeeded(
        shared_run(&["migrate", "status", "c1", "--json"]),
        &["status"],
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    let local = h.json(&["migrate", "status", "c1"]);
    assert_eq!(status["steps"], local["steps"]);
    // Copied once: a second copy writes nothing and says why (exit 3), without the password.
    let again = shared_run(&["journal", "copy"]);
    assert_exit(&again, 3);
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(
        text.contains("'c1' exists already") && !text.contains("s3cr3t"),
        "{text}"
    );
    let aborted = shared_run(&["migrate", "abort", "c1"]);
    succeeded(aborted, &["migrate", "abort", "c1"]);
    assert_eq!(h.sql("src", "postgres").pgseal_objects(), 0);
}
