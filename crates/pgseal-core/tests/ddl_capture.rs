//! The DDL capture's parts on a real server (pgseal_pg::ddl): how many statements a query
//! string holds, what a DROP removed, temporary objects left out, the full load's hold
//! (refusing DDL with the reason, letting temporary tables and pgseal's own sessions
//! through) and nothing left after removal.

use pgseal_pg::ddl;
use pgseal_testkit::TestCluster;
use tokio_postgres::Client;

async fn count_statements(client: &Client, q: &str) -> i32 {
    client
        .query_one("SELECT pgseal_ddl.statement_count($1)", &[&q])
        .await
        .unwrap()
        .get(0)
}

/// Statements captured, as (command tag, objects, whether it has a verdict).
async fn captured(client: &Client) -> Vec<(String, Option<String>, bool)> {
    ddl::captured(client)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.command_tag, c.object_identity, c.verdict.is_some()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_counts_statements_names_drops_and_holds_ddl_during_a_copy() {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start().unwrap())
        .await
        .unwrap();
    let db = cluster.connect("postgres").await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE unused (id int); \
         CREATE TABLE other (id int)",
    )
    .await
    .unwrap();
    assert!(ddl::install_capture(&db).await.unwrap());
    assert!(ddl::install_capture(&db).await.unwrap(), "idempotent");

    // Quotes, escapes, dollar bodies and comments hide semicolons.
    for (q, n) in [
        ("CREATE TABLE a (id int)", 1),
        ("CREATE TABLE a (id int); CREATE TABLE b (id int);", 2),
        ("COMMENT ON TABLE t IS 'one; two'", 1),
        ("COMMENT ON TABLE t IS 'it''s; still one'", 1),
        (r"COMMENT ON TABLE t IS E'a \'; b'", 1),
        (r"COMMENT ON TABLE t IS E'a \\'; SELECT 1", 2),
        (r"COMMENT ON TABLE t IS e'it''s \'; x'", 1),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$",
            1,
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b$ SELECT ';'; $b$; ",
            1,
        ),
        ("-- a; comment\nCREATE TABLE a (id int) /* b; c */", 1),
        ("ALTER TABLE \"x;y\" ADD COLUMN z int", 1),
    ] {
        assert_eq!(count_statements(&db, q).await, n, "{q}");
    }

    // A DROP names what it removed; a temporary table's life is not carried.
    db.batch_execute("DROP TABLE unused").await.unwrap();
    db.batch_execute("CREATE TEMP TABLE scratch (id int)")
        .await
        .unwrap();
    db.batch_execute("DROP TABLE scratch").await.unwrap();
    db.batch_execute("ALTER TABLE t ADD COLUMN note text DEFAULT 'x'")
        .await
        .unwrap();
    assert_eq!(
        captured(&db).await,
        [
            ("DROP TABLE".into(), Some("public.unused".into()), false),
            ("ALTER TABLE".into(), Some("public.t".into()), false),
        ]
    );

    // A temporary table dropped with a real one: captured, with why it is not replayed.
    db.batch_execute("CREATE TEMP TABLE scratch3 (id int); CREATE TABLE doomed (id int)")
        .await
        .unwrap();
    db.batch_execute("DROP TABLE scratch3, doomed")
        .await
        .unwrap();
    let all = ddl::captured(&db).await.unwrap();
    let last = all.last().unwrap();
    assert_eq!(
        (last.command_tag.as_str(), last.object_identity.as_deref()),
        ("DROP TABLE", Some("pg_temp.scratch3, public.doomed"))
    );
    assert!(
        last.verdict
            .as_deref()
            .unwrap_or_default()
            .contains("temporary"),
        "{last:?}"
    );
    // What a validation must compare again: the changed table, not the dropped one.
    assert_eq!(ddl::touched_tables(&db, 0).await.unwrap(), ["public.t"]);
    assert!(ddl::touched_tables(&db, 2).await.unwrap().is_empty());

    // The hold: DDL refused with the migration's name and what to do, temporary tables
    // and pgseal's own sessions let through; nothing captured meanwhile.
    assert!(ddl::install_hold(&db, "f1").await.unwrap());
    assert!(ddl::held(&db).await.unwrap());
    let refused = db
        .batch_execute("ALTER TABLE t ADD COLUMN flag int")
        .await
        .unwrap_err();
    let db_error = refused.as_db_error().expect("a server error");
    assert!(
        db_error
            .message()
            .contains("ALTER TABLE is held in this database while migration f1 copies its tables"),
        "{db_error:?}"
    );
    assert!(
        db_error
            .hint()
            .unwrap_or_default()
            .contains("pgseal migrate status f1"),
        "{db_error:?}"
    );
    assert!(db.batch_execute("DROP TABLE other").await.is_err());
    db.batch_execute("CREATE TEMPORARY TABLE scratch2 (id int)")
        .await
        .unwrap();
    let mut config = cluster.config("postgres");
    config.application_name("pgseal");
    let (own, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    own.batch_execute("ALTER TABLE t ADD COLUMN by_pgseal int")
        .await
        .unwrap();
    assert_eq!(captured(&db).await.len(), 5, "pgseal's own DDL is captured");
    assert!(ddl::lift_hold(&db).await.unwrap());
    assert!(!ddl::lift_hold(&db).await.unwrap(), "lifted once");
    db.batch_execute("ALTER TABLE t ADD COLUMN flag int")
        .await
        .unwrap();
    assert_eq!(captured(&db).await.len(), 6);

    // A partitioned table's change is its leaf partitions' (what a publication lists).
    let before = ddl::last_id(&db).await.unwrap();
    db.batch_execute("CREATE TABLE ev (id int, d int) PARTITION BY RANGE (d)")
        .await
        .unwrap();
    db.batch_execute("CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM (0) TO (10)")
        .await
        .unwrap();
    db.batch_execute("ALTER TABLE ev ADD COLUMN note text")
        .await
        .unwrap();
    assert_eq!(
        ddl::touched_tables(&db, before).await.unwrap(),
        ["public.ev_1"]
    );

    // Several DDL statements in one string (an application's idempotent setup) are
    // captured once and replayed whole; with other statements among them, not replayed.
    let before = ddl::last_id(&db).await.unwrap();
    db.batch_execute("CREATE TABLE IF NOT EXISTS t (id int); ALTER TABLE t REPLICA IDENTITY FULL")
        .await
        .unwrap();
    db.batch_execute("CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (1)")
        .await
        .unwrap();
    let since: Vec<(String, bool)> = ddl::captured(&db)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.id > before)
        .map(|c| (c.command_tag, c.verdict.is_some()))
        .collect();
    assert_eq!(
        since,
        [
            ("ALTER TABLE".to_string(), false),
            ("CREATE TABLE".to_string(), true)
        ]
    );
    let heads: Vec<String> = db
        .query_one(
            "SELECT pgseal_ddl.statement_heads($1)",
            &[&"/* x; */ create table a (); -- y;\n INSERT INTO a DEFAULT VALUES; ('x');"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(heads, ["CREATE", "INSERT", "?"]);

    // Held again, then removed: no event trigger, no schema.
    ddl::install_hold(&db, "f1").await.unwrap();
    assert!(ddl::remove(&db).await.unwrap());
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_event_trigger) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgseal_ddl')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert!(!ddl::remove(&db).await.unwrap(), "nothing left to remove");
    db.batch_execute("DROP TABLE other").await.unwrap();
}
