//! `pgseal migrate verify`, and what `validate` and `cutover` make of it, on real servers:
//! a difference planted on the target in each category while it replicates is named with
//! both sides' definitions, validation is not clean and the cutover refuses; repaired,
//! everything passes. A table the subscription has not copied yet is `copying`, never
//! mismatched.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The application's schema: a table with an index, a default, a grant, a policy and a
/// comment; a materialized view over it; a sequence; a large object; a role with a
/// membership. Made by the application's own role, names quoted.
const SCHEMA: &str = r#"
SET ROLE app;
CREATE SCHEMA "Shop. ünï";
SET search_path = "Shop. ünï";
CREATE SEQUENCE "invoice no" START 1000;
CREATE TABLE "Orders" (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new',
                       invoice bigint DEFAULT nextval('"invoice no"'));
CREATE INDEX "orders by status" ON "Orders" (status);
ALTER TABLE "Orders" ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON "Orders" FOR SELECT TO reporting USING (status = 'paid');
GRANT USAGE ON SCHEMA "Shop. ünï" TO reporting;
GRANT SELECT ON "Orders" TO reporting;
COMMENT ON TABLE "Orders" IS 'one row per order';
INSERT INTO "Orders" (id, status) SELECT g, CASE WHEN g % 2 = 0 THEN 'paid' ELSE 'new' END FROM generate_series(1, 100) g;
CREATE MATERIALIZED VIEW by_status AS SELECT status, count(*) AS n FROM "Orders" GROUP BY status;
SELECT lo_from_bytea(4242, 'invoice pdf');
RESET ROLE;
"#;

/// One difference per category, planted on the target behind replication's back.
const PLANTED: &str = r#"
SET search_path = "Shop. ünï";
DROP INDEX "orders by status";
ALTER TABLE "Orders" ALTER COLUMN status SET DEFAULT 'paid';
REVOKE SELECT ON "Orders" FROM reporting;
ALTER POLICY readers ON "Orders" USING (true);
COMMENT ON TABLE "Orders" IS 'changed on the target';
ALTER SEQUENCE "invoice no" INCREMENT 5;
UPDATE "Orders" SET status = 'new' WHERE id = 2;
REFRESH MATERIALIZED VIEW by_status;
UPDATE "Orders" SET status = 'paid' WHERE id = 2;
SELECT lo_put(4242, 0, 'X');
REVOKE reporting FROM analyst;
ALTER DATABASE postgres SET work_mem = '7MB';
"#;

/// Each planted catalog difference undone on the target.
const REPAIRED: &str = r#"
SET search_path = "Shop. ünï";
CREATE INDEX "orders by status" ON "Orders" (status);
ALTER TABLE "Orders" ALTER COLUMN status SET DEFAULT 'new';
GRANT SELECT ON "Orders" TO reporting;
ALTER POLICY readers ON "Orders" USING (status = 'paid');
COMMENT ON TABLE "Orders" IS 'one row per order';
ALTER SEQUENCE "invoice no" INCREMENT 1;
REFRESH MATERIALIZED VIEW by_status;
"#;

fn named(verified: &serde_json::Value) -> Vec<String> {
    verified["databases"]["postgres"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["category"].as_str().unwrap(),
                d["object"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_difference_in_each_category_is_named_refuses_the_cutover_and_passes_once_repaired() {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    admin.exec(
        "CREATE ROLE app LOGIN; CREATE ROLE reporting; CREATE ROLE analyst LOGIN IN ROLE reporting; \
         GRANT CREATE ON DATABASE postgres TO app",
    );
    admin.exec(SCHEMA);
    // No follower: nothing carries roles or large objects, or refreshes the subscription,
    // behind the test's back.
    h.start("v1", &["--no-follow"]);
    h.sql_as("src", "postgres", "app")
        .exec(r#"INSERT INTO "Shop. ünï"."Orders" (id) VALUES (101)"#);
    let clean = h.json(&["migrate", "verify", "v1"]);
    assert_eq!(clean["clean"], true, "{clean}");
    // The source's sequence was used: the target's trails until the cutover sets it,
    // listed but not counted.
    let behind = &clean["databases"]["postgres"]["sequences_behind"];
    assert_eq!(
        behind[0]["sequence"], r#""Shop. ünï"."invoice no""#,
        "{clean}"
    );

    // A table made on the source and not yet subscribed: copying, never mismatched.
    let app = h.sql_as("src", "postgres", "app");
    app.exec(r#"CREATE TABLE "Shop. ünï".later (id int PRIMARY KEY)"#);
    app.exec(r#"INSERT INTO "Shop. ünï".later SELECT generate_series(1, 500)"#);
    let out = h.run(&[
        "migrate",
        "validate",
        "v1",
        "--json",
        "--wait-for-copies",
        "2",
    ]);
    let validated: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let later = validated["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"].as_str().unwrap().ends_with("later"))
        .unwrap_or_else(|| panic!("{validated}"));
    assert_eq!(later["state"], "copying", "{validated}");
    assert_eq!(later["mismatched_rows"], 0);
    assert_eq!(validated["mismatched_rows"], 0, "{validated}");
    assert_eq!(validated["clean"], false);
    assert!(
        validated["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["table"].as_str().unwrap().starts_with("pgseal_ddl")),
        "pgseal's own tables are not the user's: {validated}"
    );
    // One pass of the follower subscribes it; then it compares.
    h.ok(&["migrate", "follow", "v1", "--once"]);
    let validated = h.json(&["migrate", "validate", "v1"]);
    assert_eq!(validated["clean"], true, "{validated}");

    let tgt = h.sql("src-enc", "postgres");
    tgt.exec(PLANTED);
    let out = h.run(&["migrate", "verify", "v1", "--json"]);
    assert_exit(&out, 11);
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = named(&verified);
    for expected in [
        r#"index index "Shop. ünï"."orders by status""#,
        r#"column column "Shop. ünï"."Orders".status"#,
        r#"relation table "Shop. ünï"."Orders""#,
        r#"policy policy readers on "Shop. ünï"."Orders""#,
        r#"comment comment on table "Shop. ünï"."Orders""#,
        r#"sequence sequence "Shop. ünï"."invoice no""#,
        r#"materialized_view_rows materialized view "Shop. ünï".by_status"#,
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} not in {names:#?}"
        );
    }
    let differences = verified["databases"]["postgres"]["differences"]
        .as_array()
        .unwrap();
    let policy = differences
        .iter()
        .find(|d| d["category"] == "policy")
        .unwrap();
    assert!(
        policy["source"].as_str().unwrap().contains("'paid'")
            && policy["target"].as_str().unwrap().contains("using (true)"),
        "both sides' definitions: {policy}"
    );
    // What pgseal carries itself (large objects, roles, database settings) is carried
    // first, and named as such.
    let carried = verified["globals_carried"].to_string();
    assert!(
        carried.contains("reporting>analyst") && carried.contains("work_mem"),
        "{verified}"
    );
    assert_eq!(
        verified["databases"]["postgres"]["large_objects"]["carried"][0]["oid"], 4242,
        "{verified}"
    );
    assert_eq!(
        tgt.text("SELECT convert_from(lo_get(4242), 'UTF8')"),
        "invoice pdf"
    );
    // The text output shows both sides.
    let text = String::from_utf8_lossy(&h.run(&["migrate", "verify", "v1"]).stdout).to_string();
    assert!(
        text.contains("source: CREATE INDEX \"orders by status\"") && text.contains("NOT clean"),
        "{text}"
    );

    let validated = h.run(&["migrate", "validate", "v1", "--json"]);
    assert_eq!(validated.status.code(), Some(11));
    let validated: serde_json::Value = serde_json::from_slice(&validated.stdout).unwrap();
    assert_eq!(
        validated["mismatched_rows"], 0,
        "the rows are equal: {validated}"
    );
    assert_eq!(validated["verify"]["clean"], false);
    // The journal names the differences, without their definitions.
    let journaled = std::fs::read(h.path("home/journal.sqlite")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&journaled).contains("using (true)"),
        "a definition reached the journal"
    );

    let out = h.run(&["migrate", "cutover", "v1"]);
    let refused = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{refused}");
    assert!(
        refused.contains("orders by status") || refused.contains("not clean"),
        "{refused}"
    );

    tgt.exec(REPAIRED);
    // The source's view is older than its table (a row came since): refreshed there, the
    // refresh is replayed on the target.
    app.exec(r#"REFRESH MATERIALIZED VIEW "Shop. ünï".by_status"#);
    let verified = h.json(&["migrate", "verify", "v1"]);
    assert_eq!(verified["clean"], true, "{verified}");
    let validated = h.json(&["migrate", "validate", "v1"]);
    assert_eq!(validated["clean"], true, "{validated}");

    // A difference made after the last validation: the cutover itself refuses, before
    // anything pauses, naming it.
    tgt.exec(r#"COMMENT ON INDEX "Shop. ünï"."orders by status" IS 'only here'"#);
    let out = h.run(&["migrate", "cutover", "v1"]);
    let refused = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success()
            && refused
                .contains(r#"comment on index "Shop. ünï"."orders by status": only on the target"#),
        "{refused}"
    );
    tgt.exec(r#"COMMENT ON INDEX "Shop. ünï"."orders by status" IS NULL"#);
    let started = Instant::now();
    h.ok(&["migrate", "cutover", "v1"]);
    assert!(started.elapsed() < Duration::from_secs(120));
    let report = h.json(&["migrate", "status", "v1"]);
    assert_eq!(report["migration"]["phase"], "cut_over");
    // Once cut over, verify says why it does not compare, and where the cutover's is.
    let out = h.run(&["migrate", "verify", "v1"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("is cut_over") && said.contains("migrate report v1"),
        "{said}"
    );
    // The report shows what the last validation's verification compared.
    h.ok(&["migrate", "report", "v1"]);
    let page = std::fs::read_to_string(h.path("home/migrations/v1/report.html")).unwrap();
    assert!(
        page.contains("Catalog verification with it: ") && page.contains("no difference"),
        "{page}"
    );
}
