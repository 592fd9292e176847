//! The local platform driven only through the engine's `Platform` trait.

mod common;

use common::free_port;
use pgseal_crypto::{LocalKms, Passphrase};
use pgseal_local::instance::LocalInstances;
use pgseal_local::platform::LocalPlatform;
use pgseal_platform::{ErrorKind, InstanceStatus, NewInstance, Platform};

/// What a migration does with a platform, written against the trait alone.
async fn snapshot_to_encrypted_copy<P: Platform>(p: &P, key: &str) -> pgseal_platform::Handoff {
    let mut params = std::collections::BTreeMap::new();
    params.insert("wal_level".to_string(), "logical".to_string());
    let src = p
        .create_instance(&NewInstance {
            name: "src".into(),
            port: Some(free_port()),
            storage_bytes: Some(512 << 20),
            params,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(src.status, InstanceStatus::Available);
    assert!(!src.encrypted);

    let config = p.connection("src").await.unwrap();
    let client = pgseal_pg::connect(&config).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int primary key); INSERT INTO t SELECT generate_series(1, 777)",
        )
        .await
        .unwrap();

    let snap = p.create_snapshot("src", "snap", None).await.unwrap();
    assert!(!snap.encrypted);
    let copy = p
        .copy_snapshot_encrypted("snap", "snap-enc", key)
        .await
        .unwrap();
    assert!(copy.encrypted);

    // A plain snapshot onto encrypted storage is a precondition failure, not a crash.
    let refused = p
        .restore_snapshot(
            "snap",
            &NewInstance {
                name: "nope".into(),
                encryption_key: Some(key.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Precondition, "{refused}");

    let target = p
        .restore_snapshot(
            "snap-enc",
            &NewInstance {
                name: "target".into(),
                port: Some(free_port()),
                storage_bytes: Some(1 << 30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(target.encrypted);
    assert_eq!(target.key_id, copy.key_id);
    let handoff = p.handoff("target").await.unwrap();
    assert!(handoff.backup_end_lsn.is_some_and(|end| end <= handoff.lsn));

    let target_client = pgseal_pg::connect(&p.connection("target").await.unwrap())
        .await
        .unwrap();
    let n: i64 = pgseal_testkit::scalar(&target_client, "SELECT count(*) FROM t").await;
    assert_eq!(n, 777);

    // A table made and filled in a transaction still open (as the full load's copy has
    // it), written out by its files' paths as the server names them.
    target_client
        .batch_execute(
            "BEGIN; CREATE TABLE fresh AS SELECT g AS id, repeat('x', 500) AS pad \
             FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let row = target_client
        .query_one(
            "SELECT pg_relation_filepath('fresh'), pg_relation_size('fresh')",
            &[],
        )
        .await
        .unwrap();
    let (path, size): (String, i64) = (row.get(0), row.get(1));
    assert!(size > 8 << 20, "{size}");
    let written = p.write_out("target", &[path]).await.unwrap();
    assert_eq!(written, Some(size as u64));
    let refused = p
        .write_out("target", &["../../etc/passwd".into()])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("etc/passwd"), "{refused}");
    target_client.batch_execute("COMMIT").await.unwrap();

    assert_eq!(
        p.handoff("src").await.unwrap_err().kind,
        ErrorKind::Precondition,
        "src was never restored"
    );
    assert_eq!(
        p.describe_instance("missing").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    for name in ["target", "src"] {
        p.delete_instance(name).await.unwrap();
    }
    handoff
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_can_drive_a_whole_snapshot_flow_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let kms = LocalKms::open(&home.join("kms"), &Passphrase::new("platform trait test")).unwrap();
    let key = kms.create_key(Some("target-key"), "").unwrap().key_id.0;
    let platform = LocalPlatform::new(LocalInstances::open(&home).unwrap(), Some(kms));
    let handoff = snapshot_to_encrypted_copy(&platform, &key).await;
    assert!(handoff.redo_done_at.is_none_or(|r| r < handoff.lsn));
}
