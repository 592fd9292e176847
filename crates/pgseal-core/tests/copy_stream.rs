//! Rows streamed from one real server to another by `COPY` (pgseal_pg::copy), in text and
//! in binary: hostile names, every awkward value (tabs, newlines, backslashes, quotes,
//! NULLs, bytes, JSON, arrays, numerics), the same rows on both sides by PostgreSQL's own
//! comparison; read under an exported snapshot, only the rows committed before it arrive;
//! a copy that fails part way leaves nothing on the target.

use pgseal_pg::copy::{CopyFormat, copy_table};
use pgseal_testkit::TestCluster;
use tokio_postgres::Client;

async fn clusters() -> (TestCluster, TestCluster) {
    tokio::task::spawn_blocking(|| (TestCluster::start().unwrap(), TestCluster::start().unwrap()))
        .await
        .unwrap()
}

async fn pinned(cluster: &TestCluster) -> Client {
    pgseal_pg::connect_pinned(&cluster.config("postgres"))
        .await
        .unwrap()
}

/// A session on `cluster` in a `REPEATABLE READ` transaction set to `snapshot`.
async fn reading_under(cluster: &TestCluster, snapshot: &str) -> Client {
    let reader = pinned(cluster).await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            pgseal_pg::sql::quote_literal(snapshot)
        ))
        .await
        .unwrap();
    reader
}

const SCHEMA: &str = "Sales Dept";
const TABLE: &str = "orders.2024 \"ü\"";

const MAKE: &str = r#"CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."orders.2024 ""ü""" (
  id bigint PRIMARY KEY,
  "Note ""quoted""" text,
  payload bytea,
  doc jsonb,
  amount numeric(20, 6),
  tags text[],
  at timestamptz
)"#;

/// Every row of the table as text, in key order, hashed by the server itself.
async fn fingerprint(client: &Client) -> (i64, String) {
    let row = client
        .query_one(
            r#"SELECT count(*), coalesce(md5(string_agg(t::text, E'\n' ORDER BY id)), '')
               FROM "Sales Dept"."orders.2024 ""ü""" t"#,
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stream_across_in_text_and_binary_under_a_snapshot_and_a_failed_copy_leaves_nothing() {
    let (a, b) = clusters().await;
    let (src, dst) = (pinned(&a).await, pinned(&b).await);
    for c in [&src, &dst] {
        c.batch_execute(MAKE).await.unwrap();
    }
    src.batch_execute(
        r#"INSERT INTO "Sales Dept"."orders.2024 ""ü""" VALUES
             (1, E'tab\there\nnewline \\ backslash ''quote'' "dq"', '\x00ff10', '{"a": [1, "x\ty"]}',
              12345678901234.123456, ARRAY['a,b', 'c"d', NULL, E'e\\f'], '2026-12-07 01:02:03.456789+00'),
             (2, NULL, NULL, NULL, NULL, NULL, NULL),
             (3, '', '\x', 'null', 0, '{}', 'infinity');
           INSERT INTO "Sales Dept"."orders.2024 ""ü"""
             SELECT g, repeat('r', g % 97), decode(md5(g::text), 'hex'), jsonb_build_object('g', g),
                    g / 7.0, ARRAY[g::text], '2026-01-01'::timestamptz + g * interval '1 minute'
             FROM generate_series(4, 20000) g"#,
    )
    .await
    .unwrap();
    let want = fingerprint(&src).await;
    assert_eq!(want.0, 20000);

    // Both formats carry the same rows.
    for format in [CopyFormat::Text, CopyFormat::Binary] {
        dst.batch_execute(r#"TRUNCATE "Sales Dept"."orders.2024 ""ü""""#)
            .await
            .unwrap();
        let copied = copy_table(&src, &dst, (SCHEMA, TABLE), &[], format)
            .await
            .unwrap();
        assert_eq!(copied.rows, 20000, "{format:?}");
        assert!(copied.bytes > 20000, "{format:?}: {copied:?}");
        assert_eq!(fingerprint(&dst).await, want, "{format:?}");
    }

    // Under an exported snapshot: rows committed after it stay out of the copy.
    let holder = pinned(&a).await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    src.batch_execute(
        r#"INSERT INTO "Sales Dept"."orders.2024 ""ü""" VALUES (20001, 'after the snapshot');
           DELETE FROM "Sales Dept"."orders.2024 ""ü""" WHERE id = 2"#,
    )
    .await
    .unwrap();
    let reader = reading_under(&a, &snapshot).await;
    dst.batch_execute(r#"TRUNCATE "Sales Dept"."orders.2024 ""ü""""#)
        .await
        .unwrap();
    let columns: Vec<String> = [
        "id",
        "Note \"quoted\"",
        "payload",
        "doc",
        "amount",
        "tags",
        "at",
    ]
    .map(String::from)
    .to_vec();
    let copied = copy_table(&reader, &dst, (SCHEMA, TABLE), &columns, CopyFormat::Binary)
        .await
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(copied.rows, 20000);
    assert_eq!(
        fingerprint(&dst).await,
        want,
        "the snapshot's rows, no later ones"
    );

    // A copy that fails part way (a row the target refuses) leaves nothing there.
    dst.batch_execute(
        r#"TRUNCATE "Sales Dept"."orders.2024 ""ü""";
           ALTER TABLE "Sales Dept"."orders.2024 ""ü""" ADD CHECK (id < 15000)"#,
    )
    .await
    .unwrap();
    let failed = copy_table(&src, &dst, (SCHEMA, TABLE), &[], CopyFormat::Text).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(fingerprint(&dst).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_made_with_its_snapshot_exported_meets_a_copy_under_that_snapshot_exactly() {
    use pgseal_pg::exported_slot::{ExportError, create_exported_slot};
    let (a, b) = clusters().await;
    let (src, dst) = (pinned(&a).await, pinned(&b).await);
    for c in [&src, &dst] {
        c.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
    }
    src.batch_execute(
        "INSERT INTO public.t SELECT g, 'before ' || g FROM generate_series(1, 1000) g; \
         CREATE PUBLICATION p FOR TABLE public.t",
    )
    .await
    .unwrap();
    let psql = a.install().program("psql");
    let held = create_exported_slot(&psql, &a.config("postgres"), "pgseal_export")
        .await
        .unwrap();
    // Committed after the slot's consistent point: not in the snapshot, in the slot.
    src.batch_execute(
        "INSERT INTO public.t SELECT g, 'after ' || g FROM generate_series(1001, 1010) g; \
         UPDATE public.t SET v = 'changed' WHERE id = 1",
    )
    .await
    .unwrap();
    let reader = reading_under(&a, &held.snapshot).await;
    let copied = copy_table(&reader, &dst, ("public", "t"), &[], CopyFormat::Binary)
        .await
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    held.release().await.unwrap();
    assert_eq!(copied.rows, 1000);
    let first: String = dst
        .query_one("SELECT v FROM public.t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, "before 1");
    // pgoutput's own messages: 'I'nserts and 'U'pdates the slot holds past its point.
    let row = src
        .query_one(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) = 73), \
                    count(*) FILTER (WHERE get_byte(data, 0) = 85) \
             FROM pg_logical_slot_peek_binary_changes('pgseal_export', NULL, NULL, \
                  'proto_version', '1', 'publication_names', 'p')",
            &[],
        )
        .await
        .unwrap();
    let (inserts, updates): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((inserts, updates), (10, 1));

    // The same name again is refused by the server, by name; a bad name before anything.
    let again = create_exported_slot(&psql, &a.config("postgres"), "pgseal_export").await;
    match again {
        Err(ExportError::Refused { answer, .. }) => {
            assert!(answer.contains("already exists"), "{answer}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        create_exported_slot(&psql, &a.config("postgres"), "Bad-Name").await,
        Err(ExportError::BadName(_))
    ));
}
