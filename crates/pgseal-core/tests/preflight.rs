//! Preflight against real servers: a clean source, and a source with every problem at once.

use std::time::Duration;

use pgseal_core::preflight::{PreflightInput, Severity, preflight};
use pgseal_testkit::TestCluster;

fn input() -> PreflightInput {
    PreflightInput {
        migration: "m1".into(),
        managed_source: None,
        allow_restart: false,
        replica_identity_full: false,
        long_transaction_seconds: 1,
        free_bytes: None,
        key_problem: None,
        target_problem: None,
        databases: None,
        tables: None,
        target_version: Default::default(),
    }
}

/// A cluster started with `settings` besides the defaults.
async fn started_with(settings: &'static [(&'static str, &'static str)]) -> TestCluster {
    tokio::task::spawn_blocking(move || {
        settings
            .iter()
            .fold(TestCluster::builder(), |b, (k, v)| b.setting(*k, *v))
            .start()
    })
    .await
    .unwrap()
    .unwrap()
}

/// A session on each database of `db`, as the engine gives preflight.
fn sessions(db: &TestCluster) -> impl AsyncFn(&str) -> Result<tokio_postgres::Client, String> {
    async |name: &str| db.connect(name).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_source_has_no_findings() {
    // Clean includes PostgreSQL's own cap on the WAL slots may hold.
    let db = started_with(&[("max_slot_wal_keep_size", "1GB")]).await;
    let c = db.connect("postgres").await.unwrap();
    c.batch_execute("CREATE TABLE t (id int primary key, v text); CREATE TABLE f (v text); ALTER TABLE f REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let report = preflight(&c, sessions(&db), &input()).await.unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.ready());
    assert_eq!(report.tables, 2);
    // Without the cap (the default), a source pgseal does not manage gets a warning that
    // says how to set it.
    let plain = TestCluster::started().await;
    let p = plain.connect("postgres").await.unwrap();
    let uncapped = preflight(&p, sessions(&plain), &input()).await.unwrap();
    let ids: Vec<&str> = uncapped.findings.iter().map(|f| f.id).collect();
    assert_eq!(ids, ["max_slot_wal_keep_size"], "{:#?}", uncapped.findings);
    assert!(uncapped.ready(), "a warning, not a blocker");
    assert!(report.source_bytes > 1 << 20);
    // The whole instance: every database that accepts connections, not the templates.
    let carried = report.carried();
    assert_eq!(carried, ["postgres"]);
    assert!(
        report
            .databases
            .iter()
            .any(|d| d.name == "template1" && !d.carried)
    );
    // A standby is read-only: refused before anything is made, with the fix.
    let standby = tokio::task::spawn_blocking(move || {
        let s = db.standby();
        (db, s)
    })
    .await
    .unwrap()
    .1
    .unwrap();
    let s = standby.connect("postgres").await.unwrap();
    let refused = preflight(&s, sessions(&standby), &input()).await.unwrap();
    let found = refused.findings.iter().find(|f| f.id == "standby");
    assert!(
        found.is_some_and(|f| f.severity == Severity::Blocker && f.fix.contains("primary")),
        "{:#?}",
        refused.findings
    );
    assert!(!refused.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_is_every_database_checked_in_each_and_narrowing_is_explicit() {
    let db = TestCluster::started().await;
    let c = db.connect("postgres").await.unwrap();
    for name in ["billing", "app"] {
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }
    let billing = db.connect("billing").await.unwrap();
    billing
        .batch_execute("CREATE TABLE invoices (id int primary key); CREATE TABLE loose (v text); CREATE UNLOGGED TABLE cache (v text)")
        .await
        .unwrap();
    let report = preflight(&c, sessions(&db), &input()).await.unwrap();
    let carried = report.carried();
    assert_eq!(carried, ["app", "billing", "postgres"]);
    // A problem in a database other than the one connected to is found and named.
    let identity = report
        .findings
        .iter()
        .find(|f| f.id == "replica_identity")
        .expect("billing's key-less table is found");
    assert!(
        identity.detail.starts_with("billing: "),
        "{}",
        identity.detail
    );
    assert!(identity.detail.contains("public.loose"));
    let billing_scope = report
        .databases
        .iter()
        .find(|d| d.name == "billing")
        .unwrap();
    assert_eq!(billing_scope.tables, 2);
    assert_eq!(billing_scope.not_carried, ["public.cache (unlogged)"]);

    // Narrowed: only app; billing is listed as not carried.
    let mut narrowed = input();
    narrowed.databases = Some(vec!["app".into()]);
    let report = preflight(&c, sessions(&db), &narrowed).await.unwrap();
    assert!(report.ready(), "{:#?}", report.findings);
    let billing_scope = report
        .databases
        .iter()
        .find(|d| d.name == "billing")
        .unwrap();
    assert!(!billing_scope.carried);
    // A database that does not exist blocks, naming the ones that do.
    narrowed.databases = Some(vec!["nope".into()]);
    let report = preflight(&c, sessions(&db), &narrowed).await.unwrap();
    let scope = report.findings.iter().find(|f| f.id == "scope").unwrap();
    assert!(
        scope.detail.contains("app, billing, postgres"),
        "{}",
        scope.detail
    );
    assert!(!report.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_reported_at_once_and_nothing_is_changed() {
    let db = started_with(&[
        ("wal_level", "replica"),
        ("max_replication_slots", "2"),
        ("max_prepared_transactions", "2"),
    ])
    .await;
    let c = db.connect("postgres").await.unwrap();
    c.batch_execute(
        "CREATE TABLE keyed (id int primary key); CREATE TABLE loose (v text); \
         CREATE UNLOGGED TABLE scratch (v text); SELECT lo_create(0); \
         DO $$ DECLARE n text := 'pgseal_m1_' || (SELECT oid FROM pg_database WHERE datname = 'postgres'); \
         BEGIN PERFORM pg_create_physical_replication_slot(n); EXECUTE format('CREATE PUBLICATION %I FOR TABLE keyed', n); END $$",
    )
    .await
    .unwrap();
    c.batch_execute("BEGIN; INSERT INTO keyed VALUES (1); PREPARE TRANSACTION 'pgseal-test-gid'")
        .await
        .unwrap();
    // A transaction held open past the threshold.
    let holder = db.connect("postgres").await.unwrap();
    holder
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let before = c
        .query_one("SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication), (SELECT relreplident::text FROM pg_class WHERE relname = 'loose')", &[])
        .await
        .unwrap();
    let mut inp = input();
    inp.free_bytes = Some(1 << 20);
    inp.key_problem = Some("KMS key k is disabled".into());
    inp.target_problem = Some("instance orders-enc already exists".into());
    let report = preflight(&c, sessions(&db), &inp).await.unwrap();
    let ids: Vec<&str> = report.findings.iter().map(|f| f.id).collect();
    for expected in [
        "wal_level",
        "max_replication_slots",
        "replica_identity",
        "unlogged_tables",
        "long_transactions",
        "prepared_transactions",
        "name_clash",
        "disk_space",
        "key",
        "target",
    ] {
        assert!(
            ids.contains(&expected),
            "{expected} not reported: {:#?}",
            report.findings
        );
    }
    assert!(!report.ready());
    let find = |id: &str| report.findings.iter().find(|f| f.id == id).unwrap();
    assert!(find("replica_identity").detail.contains("public.loose"));
    assert!(!find("replica_identity").detail.contains("keyed"));
    assert!(find("unlogged_tables").detail.contains("public.scratch"));
    assert!(
        find("prepared_transactions")
            .detail
            .contains("gid 'pgseal-test-gid' (database postgres"),
        "{}",
        find("prepared_transactions").detail
    );
    assert!(
        find("prepared_transactions")
            .fix
            .contains("COMMIT PREPARED")
    );
    assert_eq!(find("unlogged_tables").severity, Severity::Warning);
    // Large objects are no warning: pgseal carries them, and plan says how.
    let carried: Vec<&String> = report
        .databases
        .iter()
        .flat_map(|d| &d.carried_by_pgseal)
        .collect();
    assert!(
        carried.len() == 1 && carried[0].starts_with("1 large object(s)"),
        "{carried:?}"
    );
    assert_eq!(
        ids.iter().filter(|i| **i == "name_clash").count(),
        2,
        "slot and publication"
    );
    assert!(
        report.findings.iter().all(|f| !f.fix.is_empty()),
        "every finding has a fix"
    );
    // Blockers come first.
    let first_warning = report
        .findings
        .iter()
        .position(|f| f.severity == Severity::Warning)
        .unwrap();
    assert!(
        report.findings[first_warning..]
            .iter()
            .all(|f| f.severity == Severity::Warning)
    );

    let after = c
        .query_one("SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication), (SELECT relreplident::text FROM pg_class WHERE relname = 'loose')", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            before.get::<_, i64>(0),
            before.get::<_, i64>(1),
            before.get::<_, String>(2)
        ),
        (
            after.get::<_, i64>(0),
            after.get::<_, i64>(1),
            after.get::<_, String>(2)
        ),
        "preflight changes nothing"
    );

    // Opting in turns those blockers into warnings.
    let mut opted = input();
    opted.replica_identity_full = true;
    opted.managed_source = Some("orders".into());
    opted.allow_restart = true;
    let report = preflight(&c, sessions(&db), &opted).await.unwrap();
    let sev = |id: &str| {
        report
            .findings
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.severity)
    };
    assert_eq!(sev("replica_identity"), Some(Severity::Warning));
    assert_eq!(sev("wal_level"), Some(Severity::Warning));
    drop(holder);
    c.batch_execute("ROLLBACK PREPARED 'pgseal-test-gid'")
        .await
        .unwrap();
}

/// A blue/green input with the platform's plan for `method`.
fn blue_green(method: pgseal_platform::ReplicationMethod) -> PreflightInput {
    let mut input = input();
    input.target_version = pgseal_core::preflight::TargetVersion {
        strategy: pgseal_core::steps::StrategyKind::BlueGreen,
        blue_green_plan: Some(pgseal_platform::BlueGreenPlan {
            method,
            why: "the platform's rule".into(),
            source_version: "15.4".into(),
        }),
        ..Default::default()
    };
    input
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_plan_follows_its_method_and_marks_the_limits_this_source_meets() {
    use pgseal_platform::ReplicationMethod::{Logical, Physical};
    // A source without logical decoding, with a table without a key, an unlogged table,
    // a large object and a publication of its own.
    let db = started_with(&[("wal_level", "replica"), ("max_slot_wal_keep_size", "1GB")]).await;
    let c = db.connect("postgres").await.unwrap();
    c.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE loose (v text); \
         CREATE UNLOGGED TABLE cache (v text); SELECT lo_from_bytea(0, 'scan'); \
         CREATE PUBLICATION reporting FOR TABLE orders",
    )
    .await
    .unwrap();
    let ids = |r: &pgseal_core::preflight::PreflightReport| -> Vec<(&'static str, Severity)> {
        r.findings.iter().map(|f| (f.id, f.severity)).collect()
    };
    let met = |r: &pgseal_core::preflight::PreflightReport, words: &str| -> bool {
        let bg = r.blue_green.as_ref().expect("a blue/green section");
        bg.limits
            .iter()
            .find(|l| l.limit.contains(words))
            .unwrap_or_else(|| panic!("no limit with {words:?}: {:#?}", bg.limits))
            .met
    };

    // Physical: no logical decoding needed (no wal_level blocker, no reboot), no replica
    // identity needed, DDL and large objects carried; its own publication is refused as
    // AWS refuses it.
    let physical = preflight(&c, sessions(&db), &blue_green(Physical))
        .await
        .unwrap();
    let found = ids(&physical);
    assert!(!found.iter().any(|(id, _)| *id == "wal_level"), "{found:?}");
    assert!(
        !found.iter().any(|(id, _)| *id == "replica_identity"),
        "{found:?}"
    );
    assert!(
        !found
            .iter()
            .any(|(id, _)| *id == "blue_green_large_objects"),
        "{found:?}"
    );
    assert!(
        found.contains(&("blue_green_replication", Severity::Blocker)),
        "{found:?}"
    );
    let bg = physical.blue_green.as_ref().unwrap();
    assert!(!bg.needs_logical_replication && !bg.reboot, "{bg:?}");
    assert!(bg.ddl.starts_with("carried"), "{bg:?}");
    assert!(met(&physical, "publisher"));
    assert!(met(&physical, "unlogged"));

    // Logical: logical decoding needed (wal_level blocks: this source is not managed),
    // the key-less table and the large object refuse, DDL is not carried.
    let logical = preflight(&c, sessions(&db), &blue_green(Logical))
        .await
        .unwrap();
    let found = ids(&logical);
    for id in [
        "wal_level",
        "replica_identity",
        "blue_green_large_objects",
        "blue_green_replication",
    ] {
        assert!(found.contains(&(id, Severity::Blocker)), "{id}: {found:?}");
    }
    let bg = logical.blue_green.as_ref().unwrap();
    assert!(bg.needs_logical_replication && bg.reboot, "{bg:?}");
    assert!(bg.ddl.starts_with("not carried"), "{bg:?}");
    assert!(met(&logical, "large objects"));
    assert!(met(&logical, "without a primary key"));
    assert!(met(&logical, "unlogged"));
    // Nothing was changed on the source.
    let level: String = pgseal_testkit::scalar(&c, "SHOW wal_level").await;
    assert_eq!(level, "replica");
}
