//! Hostile and unusual input: what a database's owner who is not a superuser can put in
//! front of pgseal, which runs as a superuser, must not change what pgseal executes.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A key that ends a literal quoted by doubling `'` alone when backslashes escape
/// (`standard_conforming_strings = off`), then reads a file of the host as a large object.
const INJECTION: &str = r"a\') OR (SELECT lo_import($$/etc/hostname$$)) > 0 --";

#[test]
fn text_keys_and_settings_of_a_database_owner_inject_nothing_into_validation() {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    for statement in ["CREATE ROLE owner LOGIN", "CREATE DATABASE inj OWNER owner"] {
        admin.exec(statement);
    }
    // The owner's table, keyed by text it chose, and its database's settings.
    let owner = h.sql_as("src", "inj", "owner");
    owner.exec("CREATE TABLE t (k text PRIMARY KEY, v int)");
    owner
        .runtime
        .block_on(owner.client.execute(
            "INSERT INTO t SELECT $1 || g, g FROM generate_series(1, 50) g",
            &[&INJECTION],
        ))
        .unwrap();
    // A key column whose name holds the dollar quote the change log's trigger body
    // could have been written between.
    owner.exec("CREATE TABLE dollar (\"k$f$x\" int PRIMARY KEY); INSERT INTO dollar VALUES (1)");
    // A table whose name holds a terminal's escape sequence.
    owner.exec("CREATE TABLE \"clear\x1b[2Jscreen\" (id int PRIMARY KEY); INSERT INTO \"clear\x1b[2Jscreen\" VALUES (1)");
    owner.exec("ALTER DATABASE inj SET standard_conforming_strings = off");
    h.start("h1", &[]);
    let tgt = h.sql("src-enc", "inj");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tgt.count("SELECT count(*) FROM t") < 50 {
        assert!(Instant::now() < deadline, "the rows never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A difference on the target makes validation read those rows again by their keys,
    // which it pastes into SQL.
    tgt.exec("SET session_replication_role = replica; UPDATE t SET v = -v WHERE v % 10 = 0");
    let out = h.run(&["migrate", "validate", "h1", "--json"]);
    assert_exit(&out, 11);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.t")
        .unwrap()
        .clone();
    assert_eq!(table["mismatched_rows"], 5, "{table}");
    let dollar = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.dollar")
        .unwrap();
    assert_eq!(dollar["state"], "validated", "{dollar}");
    assert!(
        table["different"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.as_str().unwrap().starts_with(INJECTION)),
        "{table}"
    );
    // Names are printed with their control characters escaped.
    let human = h.run(&["migrate", "validate", "h1"]);
    assert!(
        !human.stdout.contains(&0x1b),
        "a raw escape reached the terminal"
    );
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("clear\\u{1b}[2Jscreen"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
    // Nothing was read from the host, on either side.
    for side in [h.sql("src", "inj"), tgt] {
        assert_eq!(
            side.count("SELECT count(*) FROM pg_largeobject_metadata"),
            0
        );
    }
}

#[test]
fn names_that_would_be_paths_or_fail_later_are_refused_before_anything_is_made() {
    let h = Home::with_source();
    let outside = h.path("escaped");
    let decoy = h.path("decoy");
    std::fs::create_dir_all(&decoy).unwrap();
    std::fs::write(decoy.join("pgbouncer.pid"), "1\n").unwrap();
    let decoy = decoy.display().to_string();
    for args in [
        vec![
            "migrate",
            "start",
            "--source",
            "src",
            "--name",
            "../../../escaped",
        ],
        vec!["migrate", "start", "--source", "src", "--name", "Bad_Name2"],
        vec!["migrate", "start", "--source", "src", "--target", "../x"],
        vec!["migrate", "report", "../.."],
        vec!["migrate", "status", "a/b"],
        vec!["endpoint", "delete", &decoy],
        vec!["instance", "delete", "../src", "--yes"],
        vec!["snapshot", "delete", ".hidden"],
    ] {
        let out = h.run(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("is not a valid name"), "{args:?}: {said}");
    }
    assert!(!outside.exists());
    assert!(std::path::Path::new(&decoy).join("pgbouncer.pid").exists());
    // Nothing was made on the source.
    assert_eq!(h.sql("src", "postgres").pgseal_everything(), 0);
    assert!(h.json(&["migrate", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn settings_pgseal_owns_are_refused_whatever_their_case_and_values_hold_no_line_break() {
    let h = Home::new();
    for param in [
        "UNIX_SOCKET_DIRECTORIES=/tmp",
        "Unix_Socket_Permissions=0777",
        "hba_file=/tmp/hba",
        "log_directory=/tmp",
    ] {
        let out = h.run(&["instance", "create", "x", "--param", param]);
        assert!(!out.status.success(), "{param}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is managed by pgseal"),
            "{param}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = h.run(&[
        "instance",
        "create",
        "x",
        "--param",
        "work_mem=4MB'\nunix_socket_directories='/tmp",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control character"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.json(&["instance", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn a_planted_pid_file_signals_nothing_and_the_endpoints_own_pgbouncer_still_stops() {
    let h = Home::new();
    h.source("src", &[]);
    h.ok(&["endpoint", "create", "ep", "--instance", "src"]);
    // The run directory is the server's user's: it could write any PID there.
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pidfile = h.path("home/endpoints/ep/run/pgbouncer.pid");
    let real: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for planted in [bystander.id().to_string(), "-1".to_string()] {
        std::fs::write(&pidfile, format!("{planted}\n")).unwrap();
        assert_eq!(h.json(&["endpoint", "describe", "ep"])["running"], true);
    }
    h.ok(&["endpoint", "delete", "ep"]);
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{real}")).exists(),
        "the endpoint's PgBouncer still runs"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn a_home_the_user_made_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    let home = h.path("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o1777)).unwrap();
    h.source("src", &[]);
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "{mode:o}");
}

#[test]
fn tables_made_with_quoted_names_during_a_migration_get_their_rows() {
    let h = Home::with_source();
    h.start("q1", &[]);
    let src = h.sql("src", "postgres");
    for statement in [
        "CREATE TABLE public.\"NewTable\" (id int PRIMARY KEY)",
        "INSERT INTO public.\"NewTable\" VALUES (1), (2), (3)",
        "CREATE TABLE public.plain_new (id int PRIMARY KEY)",
        "INSERT INTO public.plain_new VALUES (1), (2), (3)",
        "CREATE SCHEMA \"My Schema\"",
        "CREATE TABLE \"My Schema\".\"odd \"\"name\"\"\" (id int PRIMARY KEY)",
        "INSERT INTO \"My Schema\".\"odd \"\"name\"\"\" VALUES (1), (2), (3)",
    ] {
        src.exec(statement);
    }
    let tgt = h.sql("src-enc", "postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = tgt.count(
            "SELECT (SELECT count(*) FROM pg_class WHERE relname IN ('NewTable', 'plain_new', 'odd \"name\"'))",
        );
        if rows == 3
            && tgt.count(
                "SELECT (SELECT count(*) FROM public.\"NewTable\") + (SELECT count(*) FROM public.plain_new) \
                      + (SELECT count(*) FROM \"My Schema\".\"odd \"\"name\"\"\")",
            ) == 9
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never subscribed: {}",
            h.json(&["migrate", "status", "q1"])
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_database_an_endpoint_cannot_route_apart_is_named_before_the_cutover_fences_anything() {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    for statement in ["CREATE DATABASE \"my db\"", "CREATE DATABASE shop"] {
        admin.exec(statement);
    }
    h.ok(&["endpoint", "create", "ep", "--instance", "src"]);
    h.start("r1", &["--database", "shop"]);
    // PgBouncer 1.18 cannot hold an entry named "my db": the endpoint cannot keep it on
    // the source, so the cutover names it instead of writing a configuration PgBouncer
    // would refuse after the fence.
    let (said, _) = h.exits(
        3,
        &["migrate", "cutover", "r1", "--endpoint", "ep", "--dry-run"],
    );
    assert!(
        said.contains("cannot have an entry of its own") && said.contains("--leave-stale my db"),
        "{said}"
    );
    assert_eq!(
        h.sql("src", "postgres").count(
            "SELECT count(*) FROM pg_database WHERE NOT datallowconn AND datname <> 'template0'"
        ),
        0
    );
    let accepted = h.run(&[
        "migrate",
        "cutover",
        "r1",
        "--endpoint",
        "ep",
        "--dry-run",
        "--leave-stale",
        "my db",
    ]);
    assert_exit(&accepted, 0);
}

#[test]
fn resume_never_reports_a_cutover_done_that_a_write_through_the_endpoint_disproves() {
    let h = Home::with_source();
    h.sql("src", "postgres")
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    h.ok(&["endpoint", "create", "ep", "--instance", "src"]);
    // A port of its own: stopped, the target must find it free again.
    let port = free_port();
    h.start("s1", &["--no-follow", "--target-port", &port]);
    // Killed after the switch; the target then goes away before `resume` finishes it.
    let out = h.run_env(
        ("PGSEAL_FAILPOINT", "cutover:switched"),
        &["migrate", "cutover", "s1", "--endpoint", "ep"],
    );
    assert_crashed(&out, "cutover:switched");
    h.ok(&["instance", "stop", "src-enc"]);
    let out = h.run(&["migrate", "resume", "s1"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        !said.contains("now cut over") && said.contains("a write through endpoint ep"),
        "{said}"
    );
    assert_eq!(
        h.json(&["migrate", "status", "s1"])["migration"]["phase"],
        "cutting_over",
        "still interrupted, so that resume tries again"
    );
    // The cause fixed, resume finishes and proves it.
    h.ok(&["instance", "start", "src-enc"]);
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "resume", "s1"]).stdout).to_string();
    assert!(text.contains("now cut over"), "{text}");
    let (dir, port) = socket(&h, &["endpoint", "describe", "ep"]);
    let out = std::process::Command::new(bin("psql"))
        .env_clear()
        .args([
            "-h", &dir, "-p", &port, "-U", "postgres", "-d", "postgres", "-qAtc",
        ])
        .arg("INSERT INTO t VALUES (2) RETURNING id")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[test]
fn abort_completes_on_a_source_made_read_only_since_the_start() {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    admin.exec("CREATE TABLE t (id int PRIMARY KEY)");
    h.start("ro", &["--no-follow"]);
    admin.exec("ALTER SYSTEM SET default_transaction_read_only = on");
    admin.exec("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    let fresh = h.sql("src", "postgres");
    assert!(
        fresh
            .refused("CREATE TABLE u (id int)")
            .contains("read-only")
    );
    let report = h.json(&["migrate", "abort", "ro"]);
    let removed = report["removed"].to_string();
    assert!(
        removed.contains("publication") && removed.contains("slot"),
        "{report}"
    );
    assert_eq!(h.sql("src", "postgres").pgseal_everything(), 0);
    assert_eq!(
        h.json(&["migrate", "status", "ro"])["migration"]["phase"],
        "aborted"
    );
    admin.exec("ALTER SYSTEM RESET default_transaction_read_only");
    admin.exec("SELECT pg_reload_conf()");
}
