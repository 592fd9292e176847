//! The full-load strategy on real servers: an empty encrypted PostgreSQL 17 (or 15)
//! target, roles and schema copied, every table copied by parallel `COPY` under its slot's
//! snapshot (large ones split into ranges) and streamed on, judged by the ledger and by
//! pgbench's own counts; a table without a primary key, a sequence owned by no column, a
//! partitioned table, generated columns and arrays of the user's own types carried; crashes
//! during the copy resumed; an abort during the copy leaving nothing behind; bad input
//! refused before anything is made; rollback from 17 back to 15.

mod common;

use std::time::Duration;

use common::*;

/// The schema a user's application might have besides pgbench's: a key-less table, a
/// sequence no column owns, a partitioned table, and a role that owns a table.
fn app_schema(src: &Sql) {
    src.exec(
        "CREATE ROLE app_owner LOGIN; \
         CREATE TABLE notes (author text, body text); \
         INSERT INTO notes SELECT 'a' || g, 'note ' || g FROM generate_series(1, 300) g; \
         CREATE SEQUENCE invoice_numbers START 1000; \
         SELECT setval('invoice_numbers', 4242); \
         CREATE TABLE events (id bigint, day int, what text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day); \
         CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (50); \
         CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (50) TO (100); \
         INSERT INTO events SELECT g, g % 100, 'e' || g FROM generate_series(1, 2000) g; \
         CREATE INDEX events_what ON events (what); \
         CREATE TABLE \"odd name\" (\"the key\" int PRIMARY KEY, v text); \
         CREATE INDEX \"odd index\" ON \"odd name\" (v); \
         INSERT INTO \"odd name\" SELECT g, 'v' || g FROM generate_series(1, 100) g; \
         ALTER TABLE notes OWNER TO app_owner",
    );
}

/// A home whose source `src` has a database `app` filled by pgbench, and a session on the
/// source's `postgres` database.
fn source_with_pgbench_app() -> (Home, Sql) {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    src.exec("CREATE DATABASE app");
    pgbench_init(&h, "src", "app");
    (h, src)
}

/// `migrate start` of a full load of instance `src` named `name`, with `extra` arguments.
fn start_full_load<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "migrate",
        "start",
        "--source",
        "src",
        "--name",
        name,
        "--strategy",
        "full-load",
        "--replica-identity-full",
    ];
    args.extend_from_slice(extra);
    args
}

fn server_major(sql: &Sql) -> i64 {
    sql.count("SELECT current_setting('server_version_num')::bigint / 10000")
}

#[test]
fn full_load_onto_17_under_writes_cuts_over_and_rolls_back_with_nothing_lost() {
    let (h, _) = source_with_pgbench_app();
    let app = h.sql("src", "app");
    app_schema(&app);
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 60);
    let bench = pgbench(&h, "src-ep", "app", 60, 25);

    // The same migration for `plan` and `start`.
    let what = [
        "--source",
        "src",
        "--name",
        "f1",
        "--strategy",
        "full-load",
        "--engine-version",
        "17",
        "--replica-identity-full",
    ];
    let plan = h.json(&[&["migrate", "plan"][..], &what].concat());
    assert_eq!(plan["recommended"], "full-load", "{plan}");
    assert_eq!(plan["target_major"], 17, "{plan}");
    let snapshot = &plan["strategies"][0];
    assert_eq!(
        (
            snapshot["strategy"].as_str(),
            snapshot["possible"].as_bool()
        ),
        (Some("snapshot"), Some(false)),
        "{plan}"
    );
    let out = h.ok(&[&["migrate", "start"][..], &what].concat());
    let progress = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: the copy's progress comes as JSON lines, table by table.
    let copy_lines: Vec<serde_json::Value> = progress
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "copy")
        .collect();
    for table in [
        "public.pgbench_accounts",
        "public.notes",
        "public.events_low",
    ] {
        assert!(
            copy_lines
                .iter()
                .any(|l| l["table"] == table && l["state"] == "ready"),
            "{table} reported ready: {progress}"
        );
    }

    let target = h.json(&["instance", "describe", "src-enc"]);
    assert_eq!(target["encrypted"], true, "{target}");
    assert!(
        target["engine_version"]
            .as_str()
            .unwrap()
            .starts_with("17."),
        "{target}"
    );
    let dst_app = h.sql("src-enc", "app");
    assert_eq!(server_major(&dst_app), 17);
    // The role came along, owning its table; the sequence only at cutover.
    assert_eq!(
        dst_app.text("SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'"),
        "app_owner"
    );
    let status = h.json(&["migrate", "status", "f1"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    // A source this small is loaded onto a target at wal_level=logical from the start:
    // post-data had no restart to make.
    let post_data = find_in(&status["steps"], "step", "post_data");
    assert_eq!(
        post_data["outputs"]["target_restarted_for_wal_level"], false,
        "{post_data}"
    );
    assert_eq!(dst_app.text("SHOW wal_level"), "logical");
    for s in status["replication"]["streams"].as_array().unwrap() {
        assert_eq!(s["slot"]["active"], true, "{s}");
        assert_eq!(
            s["copy"].as_array().map(Vec::len),
            Some(0),
            "copy done: {s}"
        );
    }
    // The report has the copy's rate over time (pgbench's database has rows to copy) and
    // draws it.
    let report = h.json(&["migrate", "report", "f1"]);
    let rates = report["copy_rates"].as_array().unwrap();
    assert!(
        rates
            .iter()
            .any(|r| r[1] == "app" && r[2].as_f64().unwrap() > 0.0),
        "{rates:?}"
    );
    let out = h.ok(&["migrate", "report", "f1"]);
    let page = std::fs::read_to_string(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(
        page.contains("Initial copy: COPY data per second"),
        "the page draws the copy"
    );

    // DDL on 15 replayed on 17, with the rows that depend on it.
    app.exec("ALTER TABLE notes ADD COLUMN stars int NOT NULL DEFAULT 3");
    app.exec("INSERT INTO notes VALUES ('new', 'five stars', 5)");
    // Changes to every kind of table while it replicates.
    app.exec(
        "UPDATE notes SET body = 'changed' WHERE author = 'a1'; \
         DELETE FROM notes WHERE author = 'a2'; \
         INSERT INTO events VALUES (5000, 75, 'late'); \
         UPDATE events SET day = 10 WHERE id = 99; \
         SELECT setval('invoice_numbers', 5151)",
    );
    std::thread::sleep(Duration::from_secs(3));
    let validated = h.json(&["migrate", "validate", "f1"]);
    assert_eq!(validated["clean"], true, "{validated}");

    let cut = h.json(&["migrate", "cutover", "f1"]);
    assert_eq!(cut["databases"].as_array().unwrap().len(), 2, "{cut}");
    let processed = pgbench_processed(bench);
    let (history, balanced) = tpcb(&dst_app);
    assert_eq!(history, processed, "pgbench's count vs the 17 target");
    assert!(balanced, "TPC-B balances on the target");
    assert_eq!(
        dst_app.text(
            "SELECT count(*) || ' ' || (SELECT body FROM notes WHERE author = 'a1') FROM notes"
        ),
        "300 changed"
    );
    assert_eq!(
        dst_app.text("SELECT sum(stars) || ' ' || count(*) FILTER (WHERE stars = 3) FROM notes"),
        "902 299",
        "the column added on 15 with its default, and the row written after it"
    );
    assert_eq!(
        dst_app.count("SELECT count(*) FROM events_low WHERE id IN (99)")
            + dst_app.count("SELECT count(*) FROM events_high WHERE id = 5000"),
        2,
        "rows moved between partitions and added"
    );
    assert!(
        dst_app.count("SELECT last_value FROM invoice_numbers") >= 5151,
        "the unowned sequence was set"
    );

    // Writes on 17, then back to 15 by reverse replication: all of them on the source,
    // and DDL made on 17 too.
    dst_app.exec("ALTER TABLE notes ADD COLUMN reviewed bool NOT NULL DEFAULT false");
    dst_app.exec("INSERT INTO notes VALUES ('after', 'the cutover', 4, true)");
    let bench = pgbench(&h, "src-ep", "app", 60, 8);
    std::thread::sleep(Duration::from_secs(4));
    let back = h.json(&["migrate", "rollback", "f1"]);
    assert_eq!(back["databases"].as_array().unwrap().len(), 2, "{back}");
    let after = pgbench_processed(bench);
    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src", &ledger, &run);
    let (history, balanced) = tpcb(&h.sql("src", "app"));
    assert_eq!(
        history,
        processed + after,
        "pgbench's count vs the 15 source"
    );
    assert!(balanced);
    assert_eq!(
        h.sql("src", "app").text(
            "SELECT count(*) FILTER (WHERE NOT reviewed) || ' ' || string_agg(body, '') FILTER (WHERE reviewed) FROM notes"
        ),
        "300 the cutover"
    );
    h.ok(&["migrate", "cleanup", "f1"]);
    for db in ["postgres", "app"] {
        assert_eq!(h.sql("src", db).pgseal_everything(), 0, "{db}");
    }
    h.ok(&["endpoint", "delete", "src-ep"]);
}

#[test]
fn full_load_onto_the_same_version_survives_crashes_in_every_step_of_its_own() {
    let h = Home::with_source();
    pgbench_init_scale(&h, "src", "postgres", 2);
    // Post-data beyond the keys, so that building it twice would fail. Types of the
    // user's own (copied as text: their binary form names their OID) and a generated
    // column (PostgreSQL computes it on the target) beside pgbench's built-in ones (copied
    // as binary).
    h.sql("src", "postgres").exec(
        "CREATE INDEX accounts_by_branch ON pgbench_accounts (bid); \
         ALTER TABLE pgbench_accounts ADD CONSTRAINT accounts_branch_fk FOREIGN KEY (bid) REFERENCES pgbench_branches; \
         CREATE TABLE \"odd name\" (\"the key\" int PRIMARY KEY, v text); \
         CREATE INDEX \"odd index\" ON \"odd name\" (v); \
         CREATE TYPE \"mood.ü\" AS ENUM ('sad', 'o''k', 'happy'); \
         CREATE TABLE \"Mixed \"\"types\"\"\" (id int PRIMARY KEY, moods \"mood.ü\"[], \
             twice int GENERATED ALWAYS AS (id * 2) STORED, note text); \
         INSERT INTO \"Mixed \"\"types\"\"\" (id, moods, note) \
             SELECT g, ARRAY['sad', 'o''k']::\"mood.ü\"[], E'tab\\there ' || g FROM generate_series(1, 500) g; \
         CREATE MATERIALIZED VIEW \"branch totals\" AS \
             SELECT bid, count(*) AS accounts FROM pgbench_accounts GROUP BY bid; \
         CREATE STATISTICS \"odd stats\" ON \"the key\", v FROM \"odd name\"; \
         CREATE PUBLICATION \"user's pub\" FOR TABLE pgbench_branches; \
         COMMENT ON INDEX accounts_by_branch IS 'by branch'",
    );
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 40);
    // pgbench_accounts (about 26 MB at scale 2) in ranges copied by two workers.
    let start = start_full_load("f1", &["--jobs", "2", "--split-tables-larger-than", "4MiB"]);
    // Killed after each step's work but before it is journaled (the hardest case), as
    // the copy starts and once a table is copied; each time `resume` takes it on.
    let points = [
        "after:create_target",
        "after:schema",
        "after:subscription",
        "initial_copy:copying",
        "initial_copy:table_copied",
        "after:initial_copy",
        "after:post_data",
    ];
    // Loaded at wal_level=minimal, as a source of 256 MiB or more is, so that post-data
    // restarts the target at logical.
    let first = h
        .command(&start)
        .env("PGSEAL_FAILPOINT", points[0])
        .env("PGSEAL_TEST_HOOK", "minimal-wal")
        .output()
        .unwrap();
    assert_crashed(&first, points[0]);
    // DDL is held from before the slot until the copy and its indexes are done: it would
    // race the tables' copy. Temporary tables pass.
    let src = h.sql("src", "postgres");
    let held = "ALTER TABLE pgbench_branches ADD COLUMN region text NOT NULL DEFAULT 'eu'";
    for point in &points[1..] {
        let refused = src.refused(held);
        assert!(
            refused.contains("is held in this database while migration f1 copies its tables"),
            "{refused}"
        );
        let out = h.run_env(("PGSEAL_FAILPOINT", point), &["migrate", "resume", "f1"]);
        assert_crashed(&out, point);
    }
    src.exec("CREATE TEMP TABLE scratch (id int); DROP TABLE scratch");
    h.ok(&["migrate", "resume", "f1"]);
    // From then on DDL is carried, in order with the rows that depend on it.
    src.exec(held);
    src.exec("UPDATE pgbench_branches SET region = 'us' WHERE bid = 1");
    src.exec("CREATE TABLE added (id int PRIMARY KEY, note text)");
    src.exec("INSERT INTO added SELECT g, 'n' || g FROM generate_series(1, 300) g");
    src.exec("DROP INDEX \"odd index\"");
    let dst = h.sql("src-enc", "postgres");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dst.count("SELECT count(*) FROM pg_class WHERE relname = 'added'") == 0
        || dst.count("SELECT count(*) FROM added") < 300
    {
        let status = h.json(&["migrate", "status", "f1"]);
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        dst.text("SELECT string_agg(bid || region, ',' ORDER BY bid) FROM pgbench_branches"),
        "1us,2eu"
    );
    let listed = h.json(&["migrate", "ddl", "f1"]);
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["applied"; 3],
        "{listed}"
    );
    let status = h.json(&["migrate", "status", "f1"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    assert_eq!(server_major(&h.sql("src-enc", "postgres")), 15);
    // Loaded at minimal (the test hook), replicating at logical.
    assert_eq!(
        h.sql("src-enc", "postgres").text("SHOW wal_level"),
        "logical"
    );
    // The copy ran three times (two were cut short); the last one's figures stand, with
    // the large table in ranges and each table in the format its types allow.
    let copy = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["step"] == "initial_copy" && r["outputs"].is_object())
        .map(|r| r["outputs"].clone())
        .expect("the copy's outputs");
    let table = |name: &str| find_in(&copy["tables"], "table", name).clone();
    let accounts = table("public.pgbench_accounts");
    assert!(accounts["ranges"].as_u64().unwrap() >= 4, "{accounts}");
    assert_eq!(accounts["rows"], 200_000, "{accounts}");
    assert_eq!(accounts["format"], "binary", "{accounts}");
    let mixed = table("public.Mixed \"types\"");
    assert_eq!(
        (mixed["format"].as_str(), mixed["rows"].as_u64()),
        (Some("text"), Some(500)),
        "{mixed}"
    );
    assert_eq!(copy["jobs"], 2, "{copy}");
    let target = h.json(&["instance", "describe", "src-enc"]);
    assert_eq!(target["encrypted"], true, "{target}");
    wait_caught_up(&h, "src-enc", &ledger);
    let validated = h.json(&["migrate", "validate", "f1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    // Every index, constraint, statistics object and publication once: post-data was
    // not built twice (built in parallel, and again after the kill that followed it);
    // the materialized view refreshed, as pg_restore does.
    for catalog in [
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT count(*) FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT count(*) FROM pg_statistic_ext WHERE stxname = 'odd stats'",
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'user''s pub'",
        "SELECT count(*) FROM pg_description WHERE description = 'by branch'",
        "SELECT sum(accounts)::bigint FROM public.\"branch totals\"",
    ] {
        assert_eq!(
            h.sql("src-enc", "postgres").count(catalog),
            h.sql("src", "postgres").count(catalog),
            "{catalog}"
        );
    }
    h.ok(&["migrate", "cutover", "f1", "--on-switch", "true"]);
    let run = writes.finish();
    assert_all_landed(&h, "src-enc", &ledger, &run);
    assert_eq!(dst.count("SELECT count(*) FROM added"), 300);
    h.ok(&["migrate", "cleanup", "f1"]);
    assert_eq!(dst.pgseal_everything(), 0);
}

/// A table copied whole onto a target loading at `wal_level = minimal` has its files
/// written out from every core while its keys build, before its commit syncs them (the
/// hook takes every such table as large enough): the bytes are journaled, and a crash
/// between the write-out and the commit loses and doubles nothing once resumed.
#[test]
fn a_table_written_out_beside_its_keys_survives_a_crash_before_its_commit() {
    let h = Home::with_source();
    pgbench_init_scale(&h, "src", "postgres", 1);
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 10);
    let hooks = ("PGSEAL_TEST_HOOK", "minimal-wal,write-out");
    let point = "initial_copy:written_out";
    let start = start_full_load("wo", &[]);
    let out = h
        .command(&start)
        .env(hooks.0, hooks.1)
        .env("PGSEAL_FAILPOINT", point)
        .output()
        .unwrap();
    assert_crashed(&out, point);
    let resume = ["migrate", "resume", "wo"];
    succeeded(h.run_env(hooks, &resume), &resume);
    let status = h.json(&["migrate", "status", "wo"]);
    let copied = find_in(&status["steps"], "step", "initial_copy");
    let accounts = find_in(
        &copied["outputs"]["tables"],
        "table",
        "public.pgbench_accounts",
    );
    let dst = h.sql("src-enc", "postgres");
    let on_disk = dst.count(
        "SELECT pg_relation_size('pgbench_accounts') \
         + pg_relation_size('pgbench_accounts_pkey')",
    );
    assert_eq!(
        accounts["written_out_bytes"].as_i64(),
        Some(on_disk),
        "the table and its key written out: {accounts}"
    );
    assert!(
        accounts["written_out_seconds"].as_f64().unwrap() > 0.0,
        "{accounts}"
    );
    assert_eq!(dst.text("SHOW wal_level"), "logical");
    wait_caught_up(&h, "src-enc", &ledger);
    let validated = h.json(&["migrate", "validate", "wo"]);
    assert_eq!(validated["clean"], true, "{validated}");
    h.ok(&["migrate", "cutover", "wo", "--on-switch", "true"]);
    let run = writes.finish();
    assert_all_landed(&h, "src-enc", &ledger, &run);
    h.ok(&["migrate", "cleanup", "wo"]);
}

#[test]
fn aborting_during_the_initial_copy_leaves_no_slot_publication_or_subscription() {
    let (h, src) = source_with_pgbench_app();
    let start = start_full_load("f2", &[]);
    // Stopped before the copy, which makes the slot.
    let out = h.run_env(("PGSEAL_FAILPOINT", "after:subscription"), &start);
    assert_crashed(&out, "after:subscription");
    assert_eq!(
        src.count("SELECT count(*) FROM pg_replication_slots"),
        0,
        "no slot before the copy"
    );
    // Killed as the copy starts: its slot is made (no transaction may hold an id while
    // it is, so no lock is held here to slow the copy down), the copy cut short.
    let out = h.run_env(
        ("PGSEAL_FAILPOINT", "initial_copy:copying"),
        &["migrate", "resume", "f2"],
    );
    assert_crashed(&out, "initial_copy:copying");
    assert_eq!(
        src.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgseal\\_f2%'"),
        1,
        "the copy made the stream's slot"
    );
    let status = h.json(&["migrate", "status", "f2"]);
    let copying: Vec<&serde_json::Value> = status["replication"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["copy"].as_array().unwrap())
        .collect();
    assert!(
        copying
            .iter()
            .any(|t| t["table"] == "public.pgbench_accounts" && t["state"] == "waiting"),
        "status shows the copy: {status}"
    );
    h.ok(&["migrate", "abort", "f2"]);
    assert_eq!(
        src.count("SELECT count(*) FROM pg_replication_slots"),
        0,
        "no slot of any kind is left"
    );
    for db in ["postgres", "app"] {
        assert_eq!(h.sql("src", db).pgseal_everything(), 0, "{db}");
    }
    let list = h.json(&["instance", "list"]);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "the target is gone: {list}"
    );
}

#[test]
fn bad_versions_and_missing_extensions_are_refused_before_anything_is_made() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    let start = |extra: &[&str]| {
        let mut args = vec!["migrate", "start", "--source", "src", "--name", "bad"];
        args.extend(extra);
        h.run(&args)
    };
    let cases: [(&[&str], &str); 3] = [
        (
            &["--strategy", "full-load", "--engine-version", "13"],
            "choose 15 or newer",
        ),
        (
            &["--strategy", "full-load", "--engine-version", "16"],
            "scripts/setup",
        ),
        (&["--engine-version", "17"], "--strategy full-load"),
    ];
    for (args, fix) in cases {
        let out = start(args);
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(text.contains(fix), "{args:?} names its fix: {text}");
    }
    // adminpack ships with PostgreSQL 15 and was removed in 17.
    src.exec("CREATE EXTENSION adminpack");
    let out = start(&["--strategy", "full-load", "--engine-version", "17"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("adminpack"), "{text}");
    // Nothing was made: no slot, no publication, no target, no migration on record.
    assert_eq!(src.count("SELECT count(*) FROM pg_replication_slots"), 0);
    assert_eq!(src.pgseal_everything(), 0);
    assert_eq!(h.json(&["instance", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(h.json(&["migrate", "list"]).as_array().unwrap().len(), 0);

    // The same versions for a plain instance: 17 from the provisioned binaries, 16 refused.
    let port = free_port();
    let made = h.json(&[
        "instance",
        "create",
        "v17",
        "--engine-version",
        "17",
        "--port",
        &port,
        "--storage",
        "1GiB",
    ]);
    assert!(
        made["engine_version"].as_str().unwrap().starts_with("17."),
        "{made}"
    );
    assert_eq!(server_major(&h.sql("v17", "postgres")), 17);
    let out = h.run(&["instance", "create", "v16", "--engine-version", "16"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("PostgreSQL 16 is not installed"), "{text}");
}

#[test]
fn objects_in_a_tablespace_are_loaded_onto_the_targets_encrypted_default_and_plan_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::with_source();
    // A tablespace's directory the server's user owns, outside any data directory.
    let location = tempfile::Builder::new()
        .prefix("pgseal-test-tablespace-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(location.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let chown = std::process::Command::new("chown")
        .arg("postgres")
        .arg(location.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let src = h.sql("src", "postgres");
    src.exec(&format!(
        "CREATE TABLESPACE fast LOCATION '{}'",
        location.path().display()
    ));
    src.exec(
        "CREATE TABLE placed (id int PRIMARY KEY, v text) TABLESPACE fast; \
         CREATE INDEX placed_v ON placed (v) TABLESPACE fast; \
         INSERT INTO placed SELECT g, 'v' || g FROM generate_series(1, 100) g",
    );
    let plan = h.run(&[
        "migrate",
        "plan",
        "--source",
        "src",
        "--strategy",
        "full-load",
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let finding = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "tablespaces")
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        finding["detail"].as_str().unwrap().contains("fast"),
        "{finding}"
    );
    h.start("t1", &["--strategy", "full-load"]);
    let tgt = h.sql("src-enc", "postgres");
    assert_eq!(tgt.count("SELECT count(*) FROM placed"), 100);
    assert_eq!(
        tgt.count("SELECT count(*) FROM pg_class WHERE relname IN ('placed', 'placed_v') AND reltablespace = 0"),
        2,
        "in the target's default tablespace"
    );
    h.ok(&["migrate", "abort", "t1"]);
    // The tablespace's directory goes with the test: the table and the tablespace first.
    src.exec("DROP TABLE placed");
    src.exec("DROP TABLESPACE fast");
}

/// Waits until `seen` counts a session on `src` (or `child` exits first: false), polling
/// every 10 ms for at most 120 s.
fn wait_for_session(src: &Sql, seen: &str, child: &mut std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while src.count(seen) == 0 {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "never saw: {seen}");
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn full_load_killed_at_random_moments_of_its_copy_and_post_data_loses_and_doubles_nothing() {
    let h = Home::with_source();
    pgbench_init_scale(&h, "src", "postgres", 5);
    let src = h.sql("src", "postgres");
    // Post-data with work in it (an index and a foreign key over 500,000 rows).
    src.exec(
        "CREATE INDEX accounts_by_balance ON pgbench_accounts (abalance, bid); \
         ALTER TABLE pgbench_accounts ADD CONSTRAINT accounts_branch_fk FOREIGN KEY (bid) REFERENCES pgbench_branches",
    );
    let ledger = h.ledger();
    // (`wait_caught_up` below waits for the writes to end: they last as long as the kills.)
    let writes = h.workload(&["--instance", "src"], &ledger, 15);
    let (mut rng, seed) = pgseal_testkit::SeededRng::from_env_or_clock("PGSEAL_TEST_SEED");
    let start = start_full_load(
        "rk",
        &["--jobs", "2", "--split-tables-larger-than", "16MiB"],
    );
    let resume = ["migrate", "resume", "rk"];
    // pgseal's copy reading the source, and its post-data's pg_dump of the source.
    let copying = "SELECT count(*) FROM pg_stat_activity \
                   WHERE pid <> pg_backend_pid() AND query LIKE 'COPY %TO STDOUT%'";
    let post_data = "SELECT count(*) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND application_name = 'pg_dump'";
    // Two kills at a random moment of the copy's first 1.5 s (each resume copies that
    // database again, from a new slot), then one in the 1.5 s after post-data begins: its
    // pg_restore builds several entries at once (some are built when it dies), then the
    // target restarts. (From post-data's pg_dump to the end of `resume` took 2.2-2.4 s
    // here: a longer window could miss.)
    let rounds = [(copying, 1500), (copying, 1500), (post_data, 1500)];
    let mut kills = Vec::new();
    let began = std::time::Instant::now();
    for (i, (seen, window)) in rounds.iter().enumerate() {
        let args: &[&str] = if i == 0 { &start } else { &resume };
        // Loaded at wal_level=minimal, as a source of 256 MiB or more is: post-data
        // restarts the target, and a kill may land in the restart.
        let mut child = h
            .command(args)
            .env("PGSEAL_TEST_HOOK", "minimal-wal")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_for_session(&src, seen, &mut child),
            "round {i} (seed {seed}): pgseal ended before it began what the round kills"
        );
        let delay = rng.within(Duration::from_millis(*window));
        std::thread::sleep(delay);
        let copying_then = src.count(copying) > 0;
        let ran_on = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(format!(
            "round {i}: +{} ms{}{}",
            delay.as_millis(),
            if copying_then { ", copying" } else { "" },
            if ran_on { "" } else { " (it had ended)" }
        ));
        assert!(ran_on, "seed {seed}: {kills:?}");
    }
    eprintln!("seed {seed}: {kills:?} after {:?}", began.elapsed());
    h.ok(&resume);
    // One slot (the migration's), no other left by the killed copies.
    assert_eq!(
        src.count("SELECT count(*) FROM pg_replication_slots"),
        1,
        "seed {seed}"
    );
    let dst = h.sql("src-enc", "postgres");
    assert_eq!(dst.text("SHOW wal_level"), "logical", "seed {seed}");
    for catalog in [
        "SELECT count(*) FROM public.pgbench_accounts",
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT count(*) FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
    ] {
        assert_eq!(
            dst.count(catalog),
            src.count(catalog),
            "seed {seed}: {catalog}"
        );
    }
    wait_caught_up(&h, "src-enc", &ledger);
    let validated = h.json(&["migrate", "validate", "rk"]);
    assert_eq!(validated["clean"], true, "seed {seed}: {validated}");
    eprintln!("replicating and validated after {:?}", began.elapsed());
    h.ok(&["migrate", "cutover", "rk", "--on-switch", "true"]);
    let run = writes.finish();
    assert_all_landed(&h, "src-enc", &ledger, &run);
    h.ok(&["migrate", "cleanup", "rk"]);
    assert_eq!(dst.pgseal_everything(), 0, "seed {seed}");
    // No slot left on the source (its databases stay fenced after the cutover).
    assert_eq!(
        h.sql("src", "template1")
            .count("SELECT count(*) FROM pg_replication_slots"),
        0,
        "seed {seed}"
    );
}

#[test]
fn a_source_of_thousands_of_tables_loads_and_resumes_within_the_lock_table() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    // 6,500 tables (each with its TOAST table and index, and a key): made in one
    // transaction, their schema alone would need about 26,000 locks, past the lock table
    // of a server at the default max_locks_per_transaction.
    for batch in 0..13 {
        src.exec(&format!(
            "DO $$ BEGIN FOR i IN {}..{} LOOP \
               EXECUTE format('CREATE TABLE \"many %s\" (id int PRIMARY KEY, v text)', i); \
               EXECUTE format('INSERT INTO \"many %s\" VALUES (%s, ''row'')', i, i); \
             END LOOP; END $$",
            batch * 500 + 1,
            batch * 500 + 500
        ));
    }
    // What the pre-data's sessions side by side must keep in order (its thousands of
    // tables are built by several at once): a view on two of them, an inheriting table,
    // a privilege, and a default privilege granted after the tables were made (built
    // before them, it would grant on every table).
    src.exec(
        "CREATE ROLE reader; \
         CREATE TABLE \"child of many 1\" (extra text, PRIMARY KEY (id)) INHERITS (\"many 1\"); \
         INSERT INTO \"child of many 1\" VALUES (0, 'child', 'extra'); \
         CREATE VIEW \"many joined\" AS SELECT a.id FROM \"many 1\" a JOIN \"many 2\" b USING (id); \
         GRANT SELECT ON \"many 3\" TO reader; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reader",
    );
    let start = start_full_load("many", &["--jobs", "2"]);
    let began = std::time::Instant::now();
    // Killed once the copy runs: resume empties what it copied and copies it again.
    let out = h.run_env(("PGSEAL_FAILPOINT", "initial_copy:copying"), &start);
    assert_crashed(&out, "initial_copy:copying");
    eprintln!("killed after {:?}", began.elapsed());
    h.ok(&["migrate", "resume", "many"]);
    eprintln!("resumed after {:?}", began.elapsed());
    let dst = h.sql("src-enc", "postgres");
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'many %'";
    assert_eq!(dst.count(tables), 6500);
    let keys = "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conname LIKE 'many %'";
    assert_eq!(dst.count(keys), 6500);
    // One row in each, once (ANALYZE takes a transaction a table; its counts are exact
    // for tables this small).
    dst.exec("ANALYZE");
    let rows =
        "SELECT sum(reltuples)::bigint FROM pg_class WHERE relkind = 'r' AND relname LIKE 'many %'";
    assert_eq!(dst.count(rows), 6500);
    let granted = "SELECT string_agg(relname || ' ' || relacl::text, ', ' ORDER BY relname) \
                   FROM pg_class WHERE relacl IS NOT NULL AND relnamespace = 'public'::regnamespace";
    assert_eq!(dst.text(granted), src.text(granted));
    assert!(
        dst.text(granted).starts_with("many 3 "),
        "{}",
        dst.text(granted)
    );
    let defaults = "SELECT defaclacl::text FROM pg_default_acl";
    assert_eq!(dst.text(defaults), src.text(defaults));
    let inherits = "SELECT inhparent::regclass::text FROM pg_inherits \
                    WHERE inhrelid = '\"child of many 1\"'::regclass";
    assert_eq!(dst.text(inherits), "\"many 1\"");
    // The parent's row and its child's, once each.
    assert_eq!(dst.count("SELECT count(*) FROM \"many 1\""), 2);
    // Built by two sessions side by side, not again in one after a failure.
    let status = h.json(&["migrate", "status", "many"]);
    let schema = find_in(&status["steps"], "step", "schema");
    assert_eq!(
        schema["outputs"]["databases"][0]["pre_data_sessions"], 2,
        "{schema}"
    );
    assert_eq!(dst.count("SELECT count(*) FROM \"many joined\""), 0);
}

#[test]
fn a_pre_data_whose_sessions_side_by_side_fail_is_built_again_in_one() {
    let h = Home::with_source();
    let src = h.sql("src", "postgres");
    // Enough tables for the pre-data to be split over two sessions, and a view on two
    // of them (built after them).
    src.exec(
        "DO $$ BEGIN FOR i IN 1..100 LOOP \
           EXECUTE format('CREATE TABLE \"few %s\" (id int PRIMARY KEY)', i); \
         END LOOP; END $$; \
         INSERT INTO \"few 7\" VALUES (7); \
         CREATE VIEW both_sides AS SELECT * FROM \"few 7\" UNION ALL SELECT * FROM \"few 8\"",
    );
    let start = start_full_load("fb", &["--jobs", "2"]);
    let out = h.run_env(("PGSEAL_TEST_HOOK", "fail-parallel-pre-data"), &start);
    // It succeeds; the failure is said, and the database made again and built in one
    // session.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("building it again in one session"),
        "{stderr}"
    );
    let status = h.json(&["migrate", "status", "fb"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    let schema = find_in(&status["steps"], "step", "schema");
    assert_eq!(
        schema["outputs"]["databases"][0]["pre_data_sessions"], 1,
        "{schema}"
    );
    let dst = h.sql("src-enc", "postgres");
    assert_eq!(
        dst.count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'few %'"),
        100
    );
    assert_eq!(dst.count("SELECT count(*) FROM both_sides"), 1);
}

#[test]
fn plan_warns_when_pg_dump_would_outgrow_the_sources_lock_table() {
    let h = Home::new();
    // A lock table with room for about 10 × 20 = 200 locks.
    h.source(
        "locky",
        &["max_locks_per_transaction=10", "max_connections=20"],
    );
    let src = h.sql("locky", "postgres");
    for batch in 0..6 {
        src.exec(&format!(
            "DO $$ BEGIN FOR i IN {}..{} LOOP \
               EXECUTE format('CREATE TABLE \"t %s\" (id int PRIMARY KEY)', i); \
             END LOOP; END $$",
            batch * 25 + 1,
            batch * 25 + 25
        ));
    }
    let findings = |source: &str| {
        let out = h.run(&[
            "migrate",
            "plan",
            "--source",
            source,
            "--strategy",
            "full-load",
            "--json",
        ]);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["findings"].as_array().unwrap().clone()
    };
    let found = findings("locky");
    let warning = found
        .iter()
        .find(|f| f["id"] == "lock_table")
        .unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!(warning["severity"], "warning", "{warning}");
    assert!(
        warning["detail"]
            .as_str()
            .unwrap()
            .contains("all 150 tables")
            && warning["detail"]
                .as_str()
                .unwrap()
                .contains("room for about 200"),
        "{warning}"
    );
    assert!(
        warning["fix"]
            .as_str()
            .unwrap()
            .contains("raise max_locks_per_transaction to 64"),
        "{warning}"
    );
    // With room to spare, nothing is said.
    h.ok(&[
        "instance",
        "set-param",
        "locky",
        "max_locks_per_transaction=64",
        "--apply",
    ]);
    let found = findings("locky");
    assert!(!found.iter().any(|f| f["id"] == "lock_table"), "{found:?}");
}
