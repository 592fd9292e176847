//! DDL during a migration on real servers: captured on the source, replayed on the target
//! in order with the data, the unsafe kind stopped until the user decides, and nothing of
//! the capture left behind by cleanup or abort.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The capture's objects in a database: the event triggers and the schema.
fn capture_objects(sql: &Sql) -> i64 {
    sql.count(
        "SELECT (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgseal\\_ddl%') \
              + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgseal_ddl')",
    )
}

/// Polls `migrate status` (the follower subscribes tables made on the source) until
/// `done` holds for the target, for up to 60 s.
fn wait_for(h: &Home, name: &str, what: &str, done: impl Fn(&Sql) -> bool) {
    let tgt = h.sql("src-enc", "postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = h.json(&["migrate", "status", name]);
        if done(&tgt) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {status}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn ddl_under_pgbench_is_replayed_in_order_and_the_cutover_loses_nothing() {
    let h = Home::with_source();
    pgbench_init(&h, "src", "postgres");
    let src = h.sql("src", "postgres");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); \
         CREATE TABLE unused (id int PRIMARY KEY); \
         CREATE TABLE r (id int PRIMARY KEY, old_name text); INSERT INTO r VALUES (1, 'x')",
    );
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let bench = pgbench(&h, "src-ep", "postgres", 50, 20);
    h.start(
        "d1",
        &[
            "--replica-identity-full",
            // The follower is started below, by the kill test of its refresh.
            "--no-follow",
        ],
    );

    // Schema changes while pgbench writes, each with rows that depend on it.
    src.exec("ALTER TABLE t ADD COLUMN flag int NOT NULL DEFAULT 7");
    src.exec("INSERT INTO t VALUES (3, 'c', 9)");
    src.exec("CREATE TABLE newt (id int PRIMARY KEY, note text)");
    src.exec("INSERT INTO newt SELECT g, 'n' || g FROM generate_series(1, 500) g");
    src.exec("CREATE INDEX t_v ON t (v)");
    src.exec("ALTER TABLE r RENAME COLUMN old_name TO new_name");
    src.exec("INSERT INTO r VALUES (2, 'y')");
    // DDL and the rows that need it in one transaction, statement by statement.
    for statement in [
        "BEGIN",
        "ALTER TABLE r ADD COLUMN score int",
        "UPDATE r SET score = id * 10",
        "COMMIT",
    ] {
        src.exec(statement);
    }
    src.exec("DROP TABLE unused");
    // A session's temporary table is its own: not carried, nothing stops.
    src.exec("CREATE TEMP TABLE scratch (id int); DROP TABLE scratch");
    src.exec("INSERT INTO newt VALUES (501, 'late')");
    // The follower killed once the subscription learnt of the new table and before it
    // noted so: the next pass copies nothing twice (newt's key would stop the apply if it
    // did).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = h.run_env(
            ("PGSEAL_FAILPOINT", "ddl:refreshed"),
            &["migrate", "follow", "d1", "--once"],
        );
        if out.status.success() {
            assert!(Instant::now() < deadline, "newt was never subscribed");
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        assert_crashed(&out, "ddl:refreshed");
        break;
    }
    // `resume` after the kill leaves a follower running, which looks again: nothing
    // copied twice.
    let resumed = String::from_utf8_lossy(&h.ok(&["migrate", "resume", "d1"]).stdout).to_string();
    assert!(resumed.contains("a follower (pid"), "{resumed}");

    wait_for(&h, "d1", "the new table's rows", |tgt| {
        tgt.count("SELECT count(*) FROM pg_class WHERE relname = 'newt'") == 1
            && tgt.count("SELECT count(*) FROM newt") == 501
            && tgt.count("SELECT count(*) FROM r") == 2
    });
    let status = h.json(&["migrate", "status", "d1"]);
    let schema = &status["replication"]["streams"][0]["schema"];
    assert_eq!(
        schema["drift"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert_eq!(schema["source_fingerprint"], schema["target_fingerprint"]);
    let listed = h.json(&["migrate", "ddl", "d1"]);
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["command_tag"].as_str().unwrap(),
                e["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("ALTER TABLE", "applied"),
            ("CREATE TABLE", "applied"),
            ("CREATE INDEX", "applied"),
            ("ALTER TABLE", "applied"),
            ("ALTER TABLE", "applied"),
            ("DROP TABLE", "applied"),
        ],
        "{listed}"
    );
    let tgt = h.sql("src-enc", "postgres");
    assert_eq!(
        tgt.text("SELECT string_agg(id || ':' || flag, ',' ORDER BY id) FROM t"),
        "1:7,2:7,3:9"
    );
    assert_eq!(tgt.text("SELECT new_name FROM r WHERE id = 2"), "y");
    assert_eq!(
        tgt.text("SELECT string_agg(id || ':' || score, ',' ORDER BY id) FROM r"),
        "1:10,2:20"
    );
    assert_eq!(
        tgt.count("SELECT count(*) FROM pg_indexes WHERE indexname = 't_v'"),
        1
    );
    assert_eq!(
        tgt.count("SELECT count(*) FROM pg_class WHERE relname = 'unused'"),
        0
    );
    // The target replays; it captures nothing of its own.
    assert_eq!(
        tgt.text(
            "SELECT evtenabled::text FROM pg_event_trigger WHERE evtname = 'pgseal_ddl_capture'"
        ),
        "D"
    );

    let validated = h.json(&["migrate", "validate", "d1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    // DDL after the validation: the key column renamed under the validation's row log
    // (which named it) and a row written after it; the apply goes on, and the cutover
    // wants the table validated again.
    src.exec("ALTER TABLE t RENAME COLUMN id TO tid");
    src.exec("INSERT INTO t (tid, v, flag) VALUES (4, 'd', 1)");
    wait_for(&h, "d1", "the row after the rename", |tgt| {
        tgt.count("SELECT count(*) FROM t") == 4
    });
    // The cutover compares that table again first; a dry run says so, and another
    // table's validation does not vouch for it.
    let dry_run = || {
        let out = h.ok(&[
            "migrate",
            "cutover",
            "d1",
            "--endpoint",
            "src-ep",
            "--dry-run",
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let planned = "since the last validation: the cutover first compares again postgres/public.t";
    assert!(dry_run().contains(planned), "{}", dry_run());
    let validated = h.json(&["migrate", "validate", "d1", "--tables", "public.r"]);
    assert_eq!(validated["clean"], true, "{validated}");
    assert!(dry_run().contains(planned), "{}", dry_run());
    // DDL that changes no table, landing after the cutover compared the tables again and
    // before its own check (as an application's periodic refresh did once): nothing to
    // compare, so the cutover goes on.
    let wait = h.path("checking");
    let wait_env = wait.display().to_string();
    let cutting = h
        .command(&["migrate", "cutover", "d1", "--endpoint", "src-ep"])
        .env("PGSEAL_WAITPOINT", "cutover:checking")
        .env("PGSEAL_WAITPOINT_FILE", &wait_env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !wait.exists() {
        assert!(
            Instant::now() < deadline,
            "the cutover never reached its check"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    src.exec("CREATE FUNCTION after_the_check() RETURNS int LANGUAGE sql AS 'SELECT 1'");
    std::fs::remove_file(&wait).unwrap();
    let cut = cutting.wait_with_output().unwrap();
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let said = String::from_utf8_lossy(&cut.stderr);
    assert!(
        said.contains("postgres (statements 7..=7: public.t): comparing those tables again")
            && said.contains("compared again: 1 table(s)"),
        "{said}"
    );
    let processed = pgbench_processed(bench);
    // pgbench's own count is on the target, every balance matching its history.
    let (history, balanced) = tpcb(&tgt);
    assert_eq!(history, processed);
    assert!(balanced);

    // DDL on the new primary travels back with the reverse replication: a rollback finds
    // the source's schema and rows as the target's.
    tgt.exec("ALTER TABLE r ADD COLUMN back int NOT NULL DEFAULT 9");
    tgt.exec("INSERT INTO r (id, new_name, back) VALUES (3, 'z', 10)");
    let listed = h.json(&["migrate", "ddl", "d1"]);
    let last = listed.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["statement"],
        "ALTER TABLE r ADD COLUMN back int NOT NULL DEFAULT 9"
    );
    h.ok(&["migrate", "rollback", "d1", "--endpoint", "src-ep"]);
    let src = h.sql("src", "postgres");
    assert_eq!(
        src.text("SELECT string_agg(id || ':' || back, ',' ORDER BY id) FROM r"),
        "1:9,2:9,3:10"
    );
    h.ok(&["migrate", "cleanup", "d1"]);
    assert_eq!(capture_objects(&src), 0);
}

#[test]
fn a_cutover_then_cleanup_leaves_no_capture_on_either_side() {
    let h = Home::with_source();
    h.sql("src", "postgres")
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    h.start("d3", &[]);
    h.ok(&["migrate", "cutover", "d3", "--on-switch", "true"]);
    let tgt = h.sql("src-enc", "postgres");
    // The target captures now (for a rollback); cleanup ends that too.
    assert_eq!(capture_objects(&tgt), 3);
    h.ok(&["migrate", "cleanup", "d3"]);
    assert_eq!(capture_objects(&tgt), 0);
    // The source stays fenced after cleanup: opened again for the look.
    h.sql("src", "template1")
        .exec("ALTER DATABASE postgres ALLOW_CONNECTIONS true");
    assert_eq!(capture_objects(&h.sql("src", "postgres")), 0);
}

#[test]
fn a_default_the_target_cannot_reproduce_stops_the_apply_until_the_user_applies_it_by_hand() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    );
    h.start("d2", &[]);

    // The target down while a statement is captured: it is replayed once, when it is back.
    h.ok(&["instance", "stop", "src-enc"]);
    src.exec("ALTER TABLE t ADD COLUMN c2 int DEFAULT 5");
    src.exec("INSERT INTO t VALUES (3, 'c', 6)");
    h.ok(&["instance", "start", "src-enc"]);
    wait_for(
        &h,
        "d2",
        "the statement replayed after the restart",
        |tgt| tgt.count("SELECT count(*) FROM t") == 3,
    );
    let tgt = h.sql("src-enc", "postgres");
    assert_eq!(
        tgt.text("SELECT string_agg(id || ':' || c2, ',' ORDER BY id) FROM t"),
        "1:5,2:5,3:6"
    );
    assert_eq!(tgt.count("SELECT count(*) FROM pgseal_ddl.statements"), 1);

    // now() would give the target's rows other stamps than the source's: stopped.
    src.exec("ALTER TABLE t ADD COLUMN stamp timestamptz DEFAULT now()");
    src.exec("INSERT INTO t (id, v) VALUES (4, 'after')");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let listed = h.json(&["migrate", "ddl", "d2"]);
        if let Some(e) = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state"] == "stopped")
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        stopped["verdict"]
            .as_str()
            .unwrap()
            .contains("not immutable"),
        "{stopped}"
    );
    let id = stopped["id"].as_i64().unwrap().to_string();
    let status = h.run(&["migrate", "status", "d2"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains(&format!("--apply {id}")), "{text}");
    // Validation names the statement at once, instead of waiting on every table.
    let asked = Instant::now();
    let out = h.run(&["migrate", "validate", "d2"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains(&format!("--apply {id}")),
        "{said}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        tgt.count("SELECT count(*) FROM t"),
        3,
        "row 4 waits behind the statement"
    );

    // The documented manual step: the column without its default, the source's values,
    // then the default; then say so.
    tgt.exec("ALTER TABLE t ADD COLUMN stamp timestamptz");
    for (row, stamp) in [1, 2, 3].map(|i| {
        (
            i,
            src.text(&format!("SELECT stamp::text FROM t WHERE id = {i}")),
        )
    }) {
        tgt.exec(&format!("UPDATE t SET stamp = '{stamp}' WHERE id = {row}"));
    }
    tgt.exec("ALTER TABLE t ALTER COLUMN stamp SET DEFAULT now()");
    // Killed once the decision is recorded: it stands, and saying it again is harmless.
    let out = h.run_env(
        ("PGSEAL_FAILPOINT", "ddl:decided"),
        &["migrate", "ddl", "d2", "--apply", &id],
    );
    assert_crashed(&out, "ddl:decided");
    let decided = h.json(&["migrate", "ddl", "d2", "--apply", &id]);
    assert_eq!(decided["state"], "applied_by_hand", "{decided}");
    wait_for(&h, "d2", "the row behind the statement", |tgt| {
        tgt.count("SELECT count(*) FROM t") == 4
    });
    let validated = h.json(&["migrate", "validate", "d2"]);
    assert_eq!(validated["clean"], true, "{validated}");

    // DDL run inside a DO block, and a query string of two statements: captured once
    // each, with why they are not replayed.
    src.exec("DO $$ BEGIN EXECUTE 'CREATE TABLE in_do (id int)'; END $$");
    src.exec("CREATE TABLE two_a (id int); INSERT INTO two_a VALUES (1)");
    // A role made on the source since the copy, given a table: replayed, the role made
    // on the target first from what the statement carries.
    src.exec("CREATE ROLE late_owner");
    src.exec("ALTER TABLE t OWNER TO late_owner");
    let listed = h.json(&["migrate", "ddl", "d2"]);
    let stopped: Vec<(i64, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["id"].as_i64()?, e["verdict"].as_str()?)))
        .collect();
    assert_eq!(stopped.len(), 3, "{listed}");
    assert!(
        stopped[1].1.contains("inside another statement"),
        "{listed}"
    );
    assert!(stopped[2].1.contains("several statements"), "{listed}");
    // The table in the DO block gets no rows: left out. The string with an INSERT is done
    // by hand without it (its row arrives by replication).
    // Leaving out a table the source has is refused: made by hand, then --apply. The string
    // with an INSERT is done by hand without it (its row comes with the table's copy once
    // the subscription learns of it).
    let decide = |id: i64, how: &str| h.run(&["migrate", "ddl", "d2", how, &id.to_string()]);
    let refused = decide(stopped[1].0, "--skip");
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("would leave public.in_do missing"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    tgt.exec("CREATE TABLE in_do (id int); CREATE TABLE two_a (id int)");
    for (id, how) in [(stopped[1].0, "--apply"), (stopped[2].0, "--apply")] {
        assert!(decide(id, how).status.success());
    }
    wait_for(&h, "d2", "the row of the statement done by hand", |tgt| {
        tgt.count("SELECT count(*) FROM two_a") == 1
    });
    wait_for(&h, "d2", "the new owner", |tgt| {
        tgt.text("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 't'")
            == "late_owner"
    });

    // A statement that fails on the target (its table made there by hand first): the
    // apply stops on it, `status` names it and the way on; `--apply` goes past it.
    tgt.exec("CREATE TABLE clash (id int PRIMARY KEY)");
    src.exec("CREATE TABLE clash (id int PRIMARY KEY)");
    src.exec("INSERT INTO t (id, v) VALUES (5, 'behind')");
    let listed = h.json(&["migrate", "ddl", "d2"]);
    let clash = listed.as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = h.json(&["migrate", "status", "d2"]);
        if status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&format!("--apply {clash}")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(500));
    }
    h.ok(&["migrate", "ddl", "d2", "--apply", &clash]);
    wait_for(&h, "d2", "the row behind the failing statement", |tgt| {
        tgt.count("SELECT count(*) FROM t") == 5
    });

    // Abort leaves no capture on the source (the target goes with its instance).
    h.ok(&["migrate", "abort", "d2"]);
    assert_eq!(capture_objects(&src), 0);
}
