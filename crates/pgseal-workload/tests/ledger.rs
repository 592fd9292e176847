//! The ledger workload against a real server: clean runs verify clean, and every kind of
//! damage is found.

use std::sync::Arc;
use std::time::Duration;

use pgseal_testkit::TestCluster;
use pgseal_workload::{Ledger, RunOptions, read_ledger, run, verify};

async fn cluster() -> TestCluster {
    TestCluster::started().await
}

fn opts(seconds: u64) -> RunOptions {
    RunOptions {
        rate: 300.0,
        duration: Duration::from_secs(seconds),
        clients: 4,
        stop: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_verifies_clean_and_every_kind_of_damage_is_found() {
    let db = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let ledger = Arc::new(Ledger::open(&path).unwrap());
    let summary = run(&db.config("postgres"), ledger, &opts(3)).await.unwrap();
    assert!(summary.acknowledged > 600, "{summary:?}");
    assert!(
        summary.inserts > 0 && summary.updates > 0 && summary.deletes > 0,
        "{summary:?}"
    );
    assert_eq!(summary.client_errors, 0);

    let entries = read_ledger(&path).unwrap();
    assert_eq!(
        entries.len() as u64,
        summary.acknowledged + summary.uncertain
    );
    let v = verify(&db.config("postgres"), &entries).await.unwrap();
    assert!(v.is_clean(), "{v:?}");
    assert_eq!(v.acknowledged, summary.acknowledged);

    // Damage behind the workload's back, one kind at a time.
    let c = db.connect("postgres").await.unwrap();
    let insert = entries
        .iter()
        .find(|e| {
            e.kind == pgseal_workload::Kind::Insert
                && !entries
                    .iter()
                    .any(|d| d.kind == pgseal_workload::Kind::Delete && d.target == e.txid)
        })
        .unwrap();
    c.execute("INSERT INTO pgseal_ledger_nokey SELECT txid, note FROM pgseal_ledger_nokey WHERE txid = $1", &[&insert.txid]).await.unwrap();
    let v = verify(&db.config("postgres"), &entries).await.unwrap();
    assert_eq!(
        (v.missing, v.duplicated, v.unexpected),
        (0, 1, 0),
        "a key-less row applied twice: {v:?}"
    );
    assert_eq!(v.duplicated_ids, [insert.txid]);

    let update = entries
        .iter()
        .find(|e| e.kind == pgseal_workload::Kind::Update)
        .unwrap();
    c.execute(
        "UPDATE pgseal_ledger_accounts SET balance = balance + 1 WHERE id = $1",
        &[&update.target],
    )
    .await
    .unwrap();
    let v = verify(&db.config("postgres"), &entries).await.unwrap();
    assert_eq!(v.duplicated, 2, "an update applied twice: {v:?}");

    let lost = entries.last().unwrap().txid;
    c.execute("DELETE FROM pgseal_ledger_events WHERE txid = $1", &[&lost])
        .await
        .unwrap();
    c.execute(
        "INSERT INTO pgseal_ledger_events (txid, client, kind) VALUES (-42, 0, 'insert')",
        &[],
    )
    .await
    .unwrap();
    let v = verify(&db.config("postgres"), &entries).await.unwrap();
    assert_eq!(v.missing, 1, "{v:?}");
    assert_eq!(v.missing_ids, [lost]);
    assert_eq!((v.unexpected, v.unexpected_ids.clone()), (1, vec![-42]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_run_are_retried_and_nothing_is_lost() {
    let db = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let ledger = Arc::new(Ledger::open(&path).unwrap());
    let killer_config = db.config("postgres");
    let killer = tokio::spawn(async move {
        let c = pgseal_pg::connect(&killer_config).await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = 'postgres' AND backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap();
        }
    });
    let summary = run(&db.config("postgres"), ledger, &opts(4)).await.unwrap();
    killer.await.unwrap();
    assert!(
        summary.client_errors > 0,
        "the kills must have been felt: {summary:?}"
    );
    assert!(summary.acknowledged > 500, "{summary:?}");
    let v = verify(&db.config("postgres"), &read_ledger(&path).unwrap())
        .await
        .unwrap();
    assert!(v.is_clean(), "{v:?} after {summary:?}");
}

#[test]
fn a_cut_off_last_line_is_ignored_but_a_bad_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    std::fs::write(&path, "ok 1 insert 1\nuncertain 2 update 1\nok 3 ins").unwrap();
    assert_eq!(read_ledger(&path).unwrap().len(), 2);
    std::fs::write(&path, "ok 1 insert 1\ngarbage\nok 3 insert 3\n").unwrap();
    assert!(
        read_ledger(&path)
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systematic_error_stops_the_run_with_its_cause() {
    let db = cluster().await;
    let c = db.connect("postgres").await.unwrap();
    c.batch_execute(pgseal_workload::SCHEMA).await.unwrap();
    c.batch_execute("ALTER TABLE pgseal_ledger_nokey ADD CONSTRAINT never CHECK (txid < 0)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger")).unwrap());
    let started = std::time::Instant::now();
    let err = run(&db.config("postgres"), ledger, &opts(30))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("never"),
        "the cause is named: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it stops at once, not after 30 s"
    );
}
