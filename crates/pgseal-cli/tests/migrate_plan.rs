//! `pgseal migrate plan` as a user runs it, against a real server by URL.

use std::process::Command;

#[test]
fn plan_reports_blockers_with_fixes_exits_3_and_changes_nothing() {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(db.connect("postgres")).unwrap();
    runtime
        .block_on(
            client.batch_execute(
                "CREATE TABLE loose (v text); SELECT lo_from_bytea(0, 'an invoice')",
            ),
        )
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let plan = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgseal"))
            .env("PGSEAL_HOME", home.path().join("home"))
            .env("PGSEAL_PASSPHRASE", "plan test passphrase")
            .args([
                "migrate",
                "plan",
                "--source",
                &db.url("postgres"),
                "--target",
                "loose-enc",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = plan(&[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "replica_identity")
        .unwrap();
    assert_eq!(finding["severity"], "blocker");
    assert!(finding["detail"].as_str().unwrap().contains("public.loose"));
    assert!(
        finding["fix"]
            .as_str()
            .unwrap()
            .contains("--replica-identity-full")
    );

    let out = plan(&["--replica-identity-full"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // What pgseal carries besides replication is a fact, not a warning; what DDL stops
    // the apply is listed.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let carried = report["databases"][0]["carried_by_pgseal"].to_string();
    assert!(carried.contains("1 large object(s)"), "{report}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["id"] != "large_objects"),
        "{report}"
    );
    let stops = report["ddl_stops"].to_string();
    assert!(
        stops.contains("inside a function or a DO block"),
        "{report}"
    );
    let text = Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .env("PGSEAL_HOME", home.path().join("home"))
        .env("PGSEAL_PASSPHRASE", "plan test passphrase")
        .args(["migrate", "plan", "--source", &db.url("postgres")])
        .args(["--target", "loose-enc", "--replica-identity-full"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("postgres: 1 large object(s)")
            && text.contains("where the target's apply stops until you decide"),
        "{text}"
    );

    // Read-only: no slot, no publication, replica identity untouched, no key made.
    let row = runtime
        .block_on(client.query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication), (SELECT relreplident::text FROM pg_class WHERE relname = 'loose')",
            &[],
        ))
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ),
        (0, 0, "d".to_string())
    );
    let keys =
        std::fs::read_to_string(home.path().join("home/kms/keystore.json")).unwrap_or_default();
    assert!(
        !keys.contains("pgseal/default"),
        "plan must not create the managed key"
    );
}
