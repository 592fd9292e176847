//! Real schema-migration tools from the registries, run by the application's own role
//! against the source while it replicates: Django 5.2's `manage.py migrate` (its
//! contenttypes and auth apps from scratch, and an app of three migrations) in one
//! database, Alembic with SQLAlchemy (four revisions: a foreign key and
//! `server_default=now()`, a NOT NULL column with a default, `CREATE INDEX CONCURRENTLY`,
//! a type change with USING, a rename, backfills in the same transaction, check and unique
//! constraints, a dropped column, an enum) in another; the fixtures are in tests/apps.
//! Nothing stops the replication, and after the cutover both sides' catalogs and rows
//! compare equal, `django_migrations` and `alembic_version` included.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn tool(name: &str) -> String {
    format!(
        "{}/../../.tools/apps/bin/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn fixture(path: &str) -> String {
    format!("{}/tests/apps/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` as role `app` on database `db` through the endpoint on `port`.
fn as_app(port: &str, db: &str, program: &str, args: &[&str]) {
    let out = through_endpoint(program, port, "app", "app password", db)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn orm_migrations_replicate(strategy: &[&str], target: &str) {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    for statement in [
        "CREATE ROLE app LOGIN PASSWORD 'app password'",
        "CREATE DATABASE dj OWNER app",
        "CREATE DATABASE al OWNER app",
    ] {
        admin.exec(statement);
    }
    let port = tcp_endpoint(&h, "src");
    let mut start = vec!["migrate", "start", "--source", "src", "--name", "orm"];
    start.extend(strategy);
    h.ok(&start);

    // The applications deploy while the migration replicates.
    as_app(
        &port,
        "dj",
        &tool("python"),
        &[&fixture("django/manage.py"), "migrate", "--no-input"],
    );
    as_app(
        &port,
        "al",
        &tool("alembic"),
        &["-c", &fixture("alembic/alembic.ini"), "upgrade", "head"],
    );

    // Every statement replayed, the new tables subscribed and their rows copied.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = h.json(&["migrate", "ddl", "orm"]);
        let all = listed.as_array().unwrap();
        let waiting: Vec<String> = all
            .iter()
            .filter(|e| e["state"] != "applied")
            .map(|e| format!("{} {} {}", e["database"], e["state"], e["statement"]))
            .collect();
        let status = h.json(&["migrate", "status", "orm"]);
        let copying = status["replication"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| !s["copy"].as_array().unwrap().is_empty());
        let (dj, al) = (h.sql(target, "dj"), h.sql(target, "al"));
        let landed = dj.count("SELECT count(*) FROM pg_class WHERE relname = 'django_migrations'")
            == 1
            && al.count("SELECT count(*) FROM pg_class WHERE relname = 'alembic_version'") == 1
            && dj.count("SELECT count(*) FROM django_migrations") > 10
            // Between the table's replayed CREATE and the end of its copy it is
            // there and empty: poll for its row, never read one that may not exist.
            && al.count("SELECT count(*) FROM alembic_version") == 1;
        if waiting.is_empty() && !copying && landed {
            assert!(all.len() > 20, "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not replayed: {waiting:#?}\n{status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let validated = h.json(&["migrate", "validate", "orm"]);
    assert_eq!(validated["clean"], true, "{validated}");
    h.ok(&["migrate", "cutover", "orm", "--endpoint", "ep"]);
    let source = h.sql("src", "template1");
    for db in ["dj", "al"] {
        source.exec(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
        let (a, b) = (h.sql("src", db), h.sql(target, db));
        let differences = dba_differences(&dba_view(&a), &dba_view(&b));
        assert!(differences.is_empty(), "{db}: {differences:#?}");
    }
    let versions = |instance: &str| {
        (
            h.sql(instance, "al")
                .text("SELECT version_num FROM alembic_version"),
            h.sql(instance, "dj").text(
                "SELECT string_agg(app || '.' || name, ',' ORDER BY id) FROM django_migrations",
            ),
        )
    };
    assert_eq!(versions("src"), versions(target));
    assert_eq!(versions(target).0, "0004");
}

#[test]
fn django_and_alembic_migrations_during_a_snapshot_migration_arrive_whole() {
    orm_migrations_replicate(&[], "src-enc");
}

#[test]
fn django_and_alembic_migrations_during_a_full_load_onto_17_arrive_whole() {
    orm_migrations_replicate(&FULL_LOAD_ONTO_17, "src-17");
}
