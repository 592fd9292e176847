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

/// A session on `db` as `role` (trust authentication), as an application opens one.
async fn session_as(cluster: &TestCluster, db: &str, role: &str) -> Client {
    let mut config = cluster.config(db);
    config.user(role);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The last captured statement's tag, verdict, role and replacement text.
async fn last(db: &Client) -> (String, Option<String>, Option<String>, Option<String>) {
    let r = db
        .query_one(
            "SELECT command_tag, verdict, role, replay FROM pgseal_ddl.statements ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_serves_every_role_and_carries_only_schema_changes() {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start().unwrap())
        .await
        .unwrap();
    let admin = cluster.connect("postgres").await.unwrap();
    for statement in [
        "CREATE ROLE app LOGIN",
        "CREATE DATABASE shop OWNER app",
        "ALTER DATABASE shop SET standard_conforming_strings = off",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    // pgseal installs the capture from its own session, whatever the database says.
    let pinned = pgseal_pg::connect_pinned(&cluster.config("shop"))
        .await
        .unwrap();
    assert!(ddl::install_capture(&pinned).await.unwrap());
    let app = session_as(&cluster, "shop", "app").await;

    // The application's own migrations, as its own role, with backslashes in strings.
    app.batch_execute(
        "CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text); \
         CREATE TABLE lines (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, order_id bigint)",
    )
    .await
    .unwrap();
    app.batch_execute(
        "ALTER TABLE lines ADD CONSTRAINT fk FOREIGN KEY (order_id) REFERENCES orders (id) \
         DEFERRABLE INITIALLY DEFERRED",
    )
    .await
    .unwrap();
    assert_eq!(
        last(&pinned).await,
        ("ALTER TABLE".into(), None, Some("app".into()), None),
        "a key added to an empty table with an identity column"
    );
    // Django's first migration: a table made, rows seeded, then its keys, in one
    // transaction (the rows reach the other side with the new table's copy).
    for statement in [
        "BEGIN",
        "CREATE TABLE seeded (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, parent bigint)",
        "INSERT INTO seeded (parent) VALUES (NULL), (NULL)",
        "ALTER TABLE seeded ADD CONSTRAINT up FOREIGN KEY (parent) REFERENCES seeded (id) DEFERRABLE INITIALLY DEFERRED",
        "COMMIT",
    ] {
        app.batch_execute(statement).await.unwrap();
    }
    assert_eq!(
        last(&pinned).await.1,
        None,
        "keys of a table made in the same transaction"
    );
    app.batch_execute("COMMENT ON TABLE orders IS 'it\\'s'")
        .await
        .unwrap();
    app.batch_execute(
        "INSERT INTO orders (note) VALUES ('a'), ('b'); \
         CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM orders; \
         CREATE UNIQUE INDEX ON totals (n)",
    )
    .await
    .unwrap();
    let before = ddl::last_id(&pinned).await.unwrap();
    // A refresh, as a dashboard job runs it: the refresh is carried, its inner
    // temporary tables are not; physical maintenance is not carried either.
    app.batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY totals")
        .await
        .unwrap();
    for statement in [
        "REINDEX TABLE orders",
        "REINDEX TABLE CONCURRENTLY orders",
        "CLUSTER orders USING orders_pkey",
        "VACUUM (ANALYZE) orders",
    ] {
        app.batch_execute(statement).await.unwrap();
    }
    let since: Vec<(String, Option<String>)> = ddl::captured(&pinned)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.id > before)
        .map(|c| (c.command_tag, c.verdict))
        .collect();
    assert_eq!(since, [("REFRESH MATERIALIZED VIEW".to_string(), None)]);

    // Privileges on carried objects replay (with the roles they name); a type change
    // with USING replays the expression; a table from a query is made empty (its rows
    // come with the subscription's copy).
    admin.batch_execute("CREATE ROLE reader").await.unwrap();
    app.batch_execute("GRANT SELECT ON orders TO reader")
        .await
        .unwrap();
    let reader: String = pinned
        .query_one(
            "SELECT r::text FROM pgseal_ddl.statements s, jsonb_array_elements(s.roles) r \
             WHERE s.id = (SELECT max(id) FROM pgseal_ddl.statements) AND r->>'name' = 'reader'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reader.contains(r#""login": false"#), "{reader}");
    assert_eq!(last(&pinned).await.1, None, "GRANT");
    app.batch_execute(
        "ALTER TABLE orders ALTER COLUMN note TYPE varchar(20) USING note::varchar(20)",
    )
    .await
    .unwrap();
    assert_eq!(last(&pinned).await.1, None, "ALTER ... TYPE ... USING");
    app.batch_execute("CREATE TABLE copied AS SELECT id, note FROM orders")
        .await
        .unwrap();
    let (tag, verdict, _, replay) = last(&pinned).await;
    assert_eq!((tag.as_str(), verdict), ("CREATE TABLE AS", None));
    assert_eq!(
        replay.as_deref(),
        Some("CREATE TABLE public.copied (id bigint, note character varying(20))")
    );
    // Alembic's revision: a type rewritten, then a constraint, on a table with a column
    // whose default is now() (rewriting touches every column's catalog row); Django's
    // column named "password": nothing to stop.
    for statement in [
        "BEGIN",
        "ALTER TABLE orders ALTER COLUMN note TYPE text USING note || ''",
        "ALTER TABLE orders ADD CONSTRAINT note_set CHECK (note IS NOT NULL)",
        "COMMIT",
        "CREATE TABLE auth_user (id int, \"password\" varchar(128) NOT NULL)",
    ] {
        app.batch_execute(statement).await.unwrap();
        if statement != "BEGIN" && statement != "COMMIT" {
            assert_eq!(last(&pinned).await.1, None, "{statement}");
        }
    }
    // A column computed on each side differently, on a table with rows: stopped.
    app.batch_execute("ALTER TABLE orders ADD COLUMN made timestamptz DEFAULT now()")
        .await
        .unwrap();
    assert!(last(&pinned).await.1.is_some(), "volatile default on rows");

    // A password in a string with DDL is never kept in clear.
    let owner = session_as(&cluster, "shop", "postgres").await;
    owner
        .batch_execute("CREATE TABLE pw_t (id int); CREATE ROLE pw_role LOGIN PASSWORD 'hunter2'")
        .await
        .unwrap();
    let kept: String = pgseal_testkit::scalar(
        &pinned,
        "SELECT string_agg(statement || coalesce(verdict, ''), ' ') FROM pgseal_ddl.statements",
    )
    .await;
    assert!(!kept.contains("hunter2"), "{kept}");
    assert!(kept.contains("PASSWORD '***'"), "{kept}");

    // The application cannot read the capture, write into it or read role secrets.
    for attempt in [
        "SELECT count(*) FROM pgseal_ddl.statements",
        "INSERT INTO pgseal_ddl.statements (command_tag, search_path, statement) VALUES ('x', '', 'x')",
        "SELECT pgseal_ddl.roles()",
    ] {
        let refused = app.batch_execute(attempt).await.unwrap_err();
        assert!(
            refused
                .as_db_error()
                .is_some_and(|e| e.message().contains("permission denied")),
            "{attempt}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_as_the_role_that_ran_it_and_makes_the_roles_it_needs() {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start().unwrap())
        .await
        .unwrap();
    let admin = cluster.connect("postgres").await.unwrap();
    for statement in [
        "CREATE ROLE admin2 LOGIN",
        "CREATE DATABASE tgt",
        "GRANT CREATE ON DATABASE tgt TO admin2",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let target = pgseal_pg::connect_pinned(&cluster.config("tgt"))
        .await
        .unwrap();
    assert!(ddl::install_capture(&target).await.unwrap());
    assert!(ddl::install_replay(&target).await.unwrap());
    target
        .batch_execute("CREATE SCHEMA admin2 AUTHORIZATION admin2")
        .await
        .unwrap();
    // What arrives from a source where admin2 made a table in its own schema (through
    // "$user") and granted it to a role made there since the copy.
    let roles = r#"[
        {"name": "admin2", "superuser": false, "inherit": true, "createrole": false,
         "createdb": false, "login": true, "replication": false, "bypassrls": false,
         "connlimit": -1, "valid_until": null, "password": null, "member_of": []},
        {"name": "auditor", "superuser": false, "inherit": true, "createrole": false,
         "createdb": false, "login": false, "replication": false, "bypassrls": false,
         "connlimit": 3, "valid_until": null, "password": null,
         "member_of": [{"role": "admin2", "admin": false}]}
    ]"#;
    for (statement, identity) in [
        ("CREATE TABLE t_admin (id int)", "admin2.t_admin"),
        ("GRANT SELECT ON t_admin TO auditor", ""),
        (
            "CREATE INDEX CONCURRENTLY t_admin_id ON t_admin (id)",
            "admin2.t_admin_id",
        ),
    ] {
        target
            .execute(
                "INSERT INTO pgseal_ddl.statements (command_tag, object_identity, search_path, \
                     statement, role, conforming_strings, roles) \
                 VALUES ('X', nullif($2, ''), '\"$user\", public', $1, 'admin2', true, $3::text::jsonb)",
                &[&statement, &identity, &roles],
            )
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let row = target
        .query_one(
            "SELECT pg_get_userbyid(c.relowner)::text, n.nspname::text, \
                    has_table_privilege('auditor', c.oid, 'SELECT'), \
                    pg_has_role('auditor', 'admin2', 'MEMBER'), \
                    (SELECT rolconnlimit FROM pg_roles WHERE rolname = 'auditor'), \
                    (SELECT count(*) FROM pg_indexes WHERE indexname = 't_admin_id'), current_user::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 't_admin'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2),
            row.get::<_, bool>(3),
            row.get::<_, i32>(4),
            row.get::<_, i64>(5),
            row.get::<_, String>(6)
        ),
        (
            "admin2".to_string(),
            "admin2".to_string(),
            true,
            true,
            3,
            1,
            "postgres".to_string()
        )
    );
}
