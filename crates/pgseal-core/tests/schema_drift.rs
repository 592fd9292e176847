//! Schema drift against real servers: the statements drift suggests make the target's
//! definition the source's own, as the source's `pg_dump --schema-only` prints it, and keep
//! the existing rows equal; a default the target cannot reproduce is named.

use pgseal_pg::schema::{self, Drift};
use pgseal_testkit::TestCluster;

/// `pg_dump --schema-only` of `tables` on `cluster`, without comments, settings and
/// psql meta-commands (which differ between any two dumps).
fn dump(cluster: &TestCluster, tables: &[&str]) -> String {
    let mut cmd = std::process::Command::new(cluster.install().program("pg_dump"));
    cmd.args([
        "--schema-only",
        "--no-owner",
        "-d",
        &cluster.url("postgres"),
    ]);
    for t in tables {
        cmd.arg(format!("--table={t}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.starts_with('\\')
                && !l.starts_with("SET ")
                && !l.starts_with("SELECT pg_catalog.set_config")
        })
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn drift_of(source: &TestCluster, target: &TestCluster, tables: &[String]) -> Vec<Drift> {
    let s = source.connect("postgres").await.unwrap();
    let t = target.connect("postgres").await.unwrap();
    let src = schema::definitions(&s, tables).await.unwrap();
    let dst = schema::definitions(&t, tables).await.unwrap();
    schema::drift(&src, &dst, "pgseal_m1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_statements_reproduce_the_source_definition_as_pg_dump_prints_it() {
    let (source, target) = tokio::task::spawn_blocking(|| {
        (TestCluster::start().unwrap(), TestCluster::start().unwrap())
    })
    .await
    .unwrap();
    let common = "CREATE TABLE t (id int PRIMARY KEY, note text); \
                  INSERT INTO t VALUES (1, 'a'), (2, 'b'); \
                  CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1)";
    let s = source.connect("postgres").await.unwrap();
    let t = target.connect("postgres").await.unwrap();
    s.batch_execute(common).await.unwrap();
    t.batch_execute(common).await.unwrap();
    // What a migration's source may go through while the target replicates.
    s.batch_execute(
        "ALTER TABLE t ADD COLUMN flag int NOT NULL DEFAULT 7; \
         ALTER TABLE t ADD COLUMN amount numeric(12,2) DEFAULT 1.50; \
         ALTER TABLE t ADD COLUMN label text COLLATE \"C\"; \
         ALTER TABLE t ADD COLUMN doubled int GENERATED ALWAYS AS (id * 2) STORED; \
         ALTER TABLE t ALTER COLUMN note SET NOT NULL; \
         ALTER TABLE t ADD CONSTRAINT flag_positive CHECK (flag > 0); \
         ALTER TABLE t ADD CONSTRAINT t_note_key UNIQUE (note); \
         CREATE INDEX t_label ON t (label DESC); \
         ALTER TABLE u ADD COLUMN stamp timestamptz DEFAULT now(); \
         CREATE TABLE v (id int PRIMARY KEY)",
    )
    .await
    .unwrap();
    // And one the target has that the source dropped.
    t.batch_execute("CREATE INDEX t_old ON t (note)")
        .await
        .unwrap();

    let tables: Vec<String> = ["public.t", "public.u", "public.v"]
        .map(String::from)
        .to_vec();
    let found = drift_of(&source, &target, &tables).await;
    let text = |d: &Drift| format!("{}: {} => {}", d.table, d.detail, d.statement);
    let listed: Vec<String> = found.iter().map(text).collect();
    assert!(
        listed.contains(&r#"public.t: column flag missing on the target => ALTER TABLE "public"."t" ADD COLUMN "flag" integer DEFAULT 7 NOT NULL;"#.to_string()),
        "{listed:#?}"
    );
    // The default that is not immutable is named; the table missing says how its rows come.
    let stamp = found.iter().find(|d| d.detail.contains("stamp")).unwrap();
    assert!(
        stamp
            .caution
            .as_deref()
            .is_some_and(|c| c.contains("not immutable")),
        "{stamp:?}"
    );
    let v = found.iter().find(|d| d.table == "public.v").unwrap();
    assert!(
        v.statement.contains(
            r#"ALTER SUBSCRIPTION "pgseal_m1" REFRESH PUBLICATION WITH (copy_data = true)"#
        ),
        "{v:?}"
    );
    assert!(
        found
            .iter()
            .all(|d| d.table == "public.u" || d.caution.is_none()),
        "{listed:#?}"
    );

    // Run on the target, what drift says makes t the source's own, as pg_dump prints it,
    // and the existing rows equal.
    for d in found.iter().filter(|d| d.table == "public.t") {
        t.batch_execute(&d.statement)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", d.statement));
    }
    assert_eq!(dump(&source, &["public.t"]), dump(&target, &["public.t"]));
    let rows = async |c: &tokio_postgres::Client| -> Vec<String> {
        c.query("SELECT t::text FROM t ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(rows(&s).await, rows(&t).await);
    assert_eq!(rows(&s).await[0], "(1,a,7,1.50,,2)");
    let left = drift_of(&source, &target, &["public.t".to_string()]).await;
    assert!(left.is_empty(), "{left:#?}");
}
