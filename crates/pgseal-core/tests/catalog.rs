//! The catalog fingerprint `migrate verify` compares, on real servers: two databases made
//! by the same script compare equal whatever their own `search_path`, and one difference
//! planted in each category is named, with both sides' definitions.

use pgseal_pg::catalog::{self, Category};
use pgseal_testkit::TestCluster;
use tokio_postgres::Client;

/// A schema with what production schemas use, every category `verify` compares, names
/// with quotes, spaces, dots and unicode; made by its own role.
const SCHEMA: &str = r#"
CREATE ROLE app; CREATE ROLE reporting;
CREATE SCHEMA "Shop. ünï" AUTHORIZATION app;
SET ROLE app;
SET search_path = "Shop. ünï";
CREATE TYPE status AS ENUM ('new', 'paid');
CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE >= 0);
CREATE TYPE pair AS (a int, b text);
CREATE TYPE span AS RANGE (subtype = int4);
CREATE SEQUENCE "invoice ""no""" START 1000 INCREMENT 2;
CREATE TABLE "Orders" (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  status status NOT NULL DEFAULT 'new',
  total amount NOT NULL,
  cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED,
  note text COLLATE "C",
  invoice bigint DEFAULT nextval('"invoice ""no"""'),
  CONSTRAINT positive CHECK (total > 0));
CREATE INDEX "orders by status" ON "Orders" (status) WHERE status <> 'paid';
CREATE TABLE events (at date NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := 'x'; RETURN NEW; END $$;
CREATE TRIGGER "touch it" BEFORE UPDATE ON "Orders" FOR EACH ROW EXECUTE FUNCTION touch();
CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a + b;
CREATE AGGREGATE total_of(int) (sfunc = add, stype = int, initcond = '0');
CREATE PROCEDURE noop() LANGUAGE sql AS 'SELECT 1';
CREATE VIEW paid AS SELECT o.id, o.total FROM "Orders" o WHERE o.status = 'paid';
CREATE MATERIALIZED VIEW by_status AS SELECT status, count(*) AS n FROM "Orders" GROUP BY status;
CREATE RULE no_delete AS ON DELETE TO events DO INSTEAD NOTHING;
ALTER TABLE "Orders" ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON "Orders" FOR SELECT TO reporting USING (status = 'paid');
GRANT USAGE ON SCHEMA "Shop. ünï" TO reporting;
GRANT SELECT ON "Orders", paid TO reporting;
GRANT SELECT (kind) ON events TO reporting;
ALTER DEFAULT PRIVILEGES IN SCHEMA "Shop. ünï" GRANT SELECT ON TABLES TO reporting;
COMMENT ON TABLE "Orders" IS 'one row per order';
COMMENT ON COLUMN "Orders".note IS 'free text';
INSERT INTO "Orders" (status, total) VALUES ('new', 1), ('paid', 2), ('paid', 3);
REFRESH MATERIALIZED VIEW by_status;
SELECT nextval('"invoice ""no"""');
RESET ROLE;
"#;

async fn pinned(cluster: &TestCluster) -> Client {
    pgseal_pg::connect_pinned(&cluster.config("postgres"))
        .await
        .unwrap()
}

async fn fingerprint(client: &Client) -> catalog::Fingerprint {
    client.batch_execute(catalog::SESSION).await.unwrap();
    let mut f = catalog::read(client).await.unwrap();
    f.entries
        .extend(catalog::materialized_view_rows(client).await.unwrap());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_planted_difference_is_named_and_equal_schemas_compare_clean() {
    let (a, b) = tokio::task::spawn_blocking(|| {
        (TestCluster::start().unwrap(), TestCluster::start().unwrap())
    })
    .await
    .unwrap();
    let (src, dst) = (pinned(&a).await, pinned(&b).await);
    for c in [&src, &dst] {
        c.batch_execute(SCHEMA).await.unwrap();
    }
    // One side's database has its own search_path: names still read the same.
    dst.batch_execute(r#"ALTER DATABASE postgres SET search_path = "Shop. ünï", public"#)
        .await
        .unwrap();
    // Fresh pinned sessions (the script set its own search_path).
    let (src, dst) = (pinned(&a).await, pinned(&b).await);
    let source = fingerprint(&src).await;
    let (differences, normalised) = catalog::compare(&source, &fingerprint(&dst).await);
    assert!(differences.is_empty(), "{differences:#?}");
    assert!(normalised.is_empty());
    let categories: std::collections::BTreeSet<Category> =
        source.entries.keys().map(|(c, _)| *c).collect();
    for c in [
        Category::Schema,
        Category::Relation,
        Category::Column,
        Category::Constraint,
        Category::Index,
        Category::Trigger,
        Category::Rule,
        Category::Policy,
        Category::View,
        Category::Type,
        Category::Function,
        Category::Comment,
        Category::DefaultPrivileges,
        Category::Sequence,
        Category::MaterializedViewRows,
    ] {
        assert!(
            categories.contains(&c),
            "{c:?} not read: {:#?}",
            source.entries
        );
    }

    // One difference per category, on the target only.
    let planter = pinned(&b).await;
    planter.batch_execute(
        r#"SET search_path = "Shop. ünï";
        DROP INDEX "orders by status";
        ALTER TABLE "Orders" ALTER COLUMN status SET DEFAULT 'paid';
        REVOKE SELECT ON paid FROM reporting;
        ALTER POLICY readers ON "Orders" USING (true);
        COMMENT ON TABLE "Orders" IS 'changed';
        ALTER TABLE "Orders" DISABLE TRIGGER "touch it";
        ALTER SEQUENCE "invoice ""no""" INCREMENT 3;
        ALTER TYPE status ADD VALUE 'refunded';
        CREATE OR REPLACE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a - b;
        ALTER TABLE "Orders" DROP CONSTRAINT positive;
        DROP RULE no_delete ON events;
        ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA "Shop. ünï" REVOKE SELECT ON TABLES FROM reporting;
        CREATE OR REPLACE VIEW paid AS SELECT o.id, o.total FROM "Orders" o WHERE o.status <> 'new';
        UPDATE "Orders" SET status = 'new' WHERE id = 3;
        REFRESH MATERIALIZED VIEW by_status;
        UPDATE "Orders" SET status = 'paid' WHERE id = 3;
        CREATE TABLE extra (id int);"#,
    )
    .await
    .unwrap();
    let (differences, _) = catalog::compare(&source, &fingerprint(&dst).await);
    let named: Vec<String> = differences
        .iter()
        .map(|d| format!("{:?} {}", d.category, d.object))
        .collect();
    for expected in [
        r#"Index index "Shop. ünï"."orders by status""#,
        r#"Column column "Shop. ünï"."Orders".status"#,
        r#"Relation view "Shop. ünï".paid"#,
        r#"Policy policy readers on "Shop. ünï"."Orders""#,
        r#"Comment comment on table "Shop. ünï"."Orders""#,
        r#"Trigger trigger "touch it" on "Shop. ünï"."Orders""#,
        r#"Sequence sequence "Shop. ünï"."invoice ""no""""#,
        r#"Type type "Shop. ünï".status"#,
        r#"Function function "Shop. ünï".add(integer,integer)"#,
        r#"Constraint constraint positive on "Shop. ünï"."Orders""#,
        r#"Rule rule no_delete on "Shop. ünï".events"#,
        r#"DefaultPrivileges default privileges of app in schema "Shop. ünï" on tables"#,
        r#"View view "Shop. ünï".paid"#,
        r#"MaterializedViewRows materialized view "Shop. ünï".by_status"#,
        r#"Relation table "Shop. ünï".extra"#,
    ] {
        assert!(
            named.iter().any(|n| n == expected),
            "{expected} not named in {named:#?}"
        );
    }
    let index = differences
        .iter()
        .find(|d| d.category == Category::Index)
        .unwrap();
    assert!(
        index
            .source
            .as_deref()
            .unwrap()
            .starts_with("CREATE INDEX \"orders by status\" ON \"Shop. ünï\".\"Orders\""),
        "{index:?}"
    );
    assert_eq!(index.target, None);
    let default = differences
        .iter()
        .find(|d| d.category == Category::Column)
        .unwrap();
    assert!(
        default.source.as_deref().unwrap().contains("default 'new'")
            && default
                .target
                .as_deref()
                .unwrap()
                .contains("default 'paid'"),
        "{default:?}"
    );

    // Sequences: the target may be ahead, never behind.
    let positions = async |c: &Client| catalog::sequence_positions(c).await.unwrap();
    assert!(catalog::sequences_behind(&positions(&src).await, &positions(&dst).await).is_empty());
    src.batch_execute(r#"SELECT nextval('"Shop. ünï"."invoice ""no"""')"#)
        .await
        .unwrap();
    let behind = catalog::sequences_behind(&positions(&src).await, &positions(&dst).await);
    assert_eq!(behind.len(), 1, "{behind:?}");
    assert_eq!(behind[0].sequence, r#""Shop. ünï"."invoice ""no""""#);
    assert_eq!((behind[0].source, behind[0].target), (1008, Some(1006)));
}
