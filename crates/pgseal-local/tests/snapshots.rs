//! Snapshots on real servers: plain and sealed, copies, restores, the RDS rules, damage.

mod common;

use common::{Fixture, files_containing, sql};
use pgseal_local::instance::LocalError;
use pgseal_local::snapshot::{SnapshotFrom, SnapshotRecord, SnapshotSource};

const MARKER: &str = "PGSEAL-SNAPSHOT-MARKER-5d20";

fn no_progress(_: u64, _: Option<u64>) {}

/// Takes a snapshot of a local instance.
fn take(
    f: &Fixture,
    instance: &str,
    name: &str,
    key: Option<&str>,
) -> Result<SnapshotRecord, LocalError> {
    f.instances.create_snapshot(
        &SnapshotFrom::Instance(instance.into()),
        name,
        key,
        Some(&f.kms),
        &no_progress,
    )
}

/// A plain source instance with marker rows.
fn source(f: &Fixture) -> pgseal_local::instance::InstanceInfo {
    let mut spec = f.spec("source", None);
    spec.params.insert("wal_level".into(), "logical".into());
    let info = f.instances.create(&spec, None).unwrap();
    sql(
        &info,
        &format!(
            "CREATE TABLE rows (id int primary key, v text); \
         INSERT INTO rows SELECT g, '{MARKER}' || g FROM generate_series(1, 5000) g; \
         CREATE PUBLICATION pub_all FOR ALL TABLES"
        ),
    );
    info
}

#[test]
fn plain_snapshot_restores_to_a_plain_instance_with_the_same_data_and_a_handoff_lsn() {
    let f = Fixture::new();
    let src = source(&f);
    let snap = take(&f, "source", "snap-plain", None).unwrap();
    assert!(snap.encryption.is_none());
    assert_eq!(
        snap.source,
        SnapshotSource::Instance {
            name: "source".into()
        }
    );
    assert!(snap.start_lsn <= snap.end_lsn);
    assert!(snap.backup_bytes > 1 << 20);
    assert_eq!(
        snap.params.get("wal_level").map(String::as_str),
        Some("logical")
    );
    // The backup's temporary slot is gone with its session.
    assert_eq!(
        sql(&src, "SELECT count(*) FROM pg_replication_slots"),
        ["0"]
    );

    // Writes after the snapshot are not in the restored copy.
    sql(&src, "INSERT INTO rows VALUES (9999, 'after')");
    let mut spec = f.spec("restored", None);
    spec.storage_bytes = 1 << 30;
    let restored = f
        .instances
        .restore_snapshot("snap-plain", &spec, None, &no_progress)
        .unwrap();
    assert!(!restored.encrypted);
    assert_eq!(restored.source_snapshot.as_deref(), Some("snap-plain"));
    assert_eq!(sql(&restored, "SELECT count(*) FROM rows"), ["5000"]);
    assert_eq!(
        sql(&restored, "SHOW wal_level"),
        ["logical"],
        "parameters travel with the snapshot"
    );
    // The copy brings the source's publication along: the platform reports, the engine decides.
    assert_eq!(sql(&restored, "SELECT count(*) FROM pg_publication"), ["1"]);

    let facts = restored.restore.expect("restore facts recorded");
    assert_eq!(facts.backup_end_lsn, snap.end_lsn);
    assert!(facts.handoff_lsn >= snap.end_lsn, "{facts:?}");
    assert!(
        facts.redo_done_at.is_none_or(|r| r < facts.handoff_lsn),
        "{facts:?}"
    );
    assert_eq!(facts.replay_lsn, Some(facts.handoff_lsn));
    // The record keeps the facts across restarts (pg_last_wal_replay_lsn() would not).
    f.instances.reboot("restored", None).unwrap();
    assert_eq!(
        f.instances
            .describe("restored")
            .unwrap()
            .restore
            .unwrap()
            .handoff_lsn,
        facts.handoff_lsn
    );
}

#[test]
fn sealed_snapshots_keep_plaintext_off_disk_and_restore_onto_encrypted_storage() {
    let f = Fixture::new();
    source(&f);
    let key = f.kms.create_key(Some("snap-key"), "").unwrap().key_id;

    // Sealed while streaming: the marker is nowhere in the snapshot directory.
    let sealed = take(&f, "source", "snap-sealed", Some("snap-key")).unwrap();
    assert_eq!(
        sealed.encryption.as_ref().map(|e| e.key_id.as_str()),
        Some(key.0.as_str())
    );
    assert!(
        files_containing(&f.home().join("snapshots/snap-sealed"), MARKER.as_bytes()).is_empty()
    );

    // A plain snapshot cannot be restored onto encrypted storage...
    take(&f, "source", "snap-plain", None).unwrap();
    let mut spec = f.spec("enc", Some("snap-key"));
    spec.storage_bytes = 1 << 30;
    let err = f
        .instances
        .restore_snapshot("snap-plain", &spec, Some(&f.kms), &no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("encrypted copy"), "{err}");
    // ...except through an encrypted copy.
    let copy = f
        .instances
        .copy_snapshot(
            "snap-plain",
            "snap-copy",
            Some("snap-key"),
            Some(&f.kms),
            &no_progress,
        )
        .unwrap();
    assert_eq!(
        copy.source,
        SnapshotSource::Copy {
            of: "snap-plain".into()
        }
    );
    assert_eq!(
        copy.end_lsn,
        f.instances.snapshot("snap-plain").unwrap().end_lsn
    );
    assert!(files_containing(&f.home().join("snapshots/snap-copy"), MARKER.as_bytes()).is_empty());

    spec.encryption_key = None;
    let restored = f
        .instances
        .restore_snapshot("snap-copy", &spec, Some(&f.kms), &no_progress)
        .unwrap();
    assert!(
        restored.encrypted,
        "an encrypted snapshot restores encrypted"
    );
    assert_eq!(
        restored.key_id.as_deref(),
        Some(key.0.as_str()),
        "under the snapshot's key"
    );
    assert_eq!(sql(&restored, "SELECT count(*) FROM rows"), ["5000"]);
    f.instances.stop("enc").unwrap();
    assert!(files_containing(&f.home().join("instances/enc"), MARKER.as_bytes()).is_empty());

    // A snapshot of the encrypted instance is sealed under its key, and only that key.
    f.instances.start("enc", Some(&f.kms)).unwrap();
    f.kms.create_key(Some("other"), "").unwrap();
    let err = take(&f, "enc", "snap-other", Some("other")).unwrap_err();
    assert!(err.to_string().contains("under its key"), "{err}");
    assert!(!f.home().join("snapshots/snap-other").exists());
    let of_enc = take(&f, "enc", "snap-of-enc", None).unwrap();
    assert_eq!(of_enc.encryption.unwrap().key_id, key.0);

    // Re-keying goes through a copy.
    let rekeyed = f
        .instances
        .copy_snapshot(
            "snap-of-enc",
            "snap-rekeyed",
            Some("other"),
            Some(&f.kms),
            &no_progress,
        )
        .unwrap();
    assert_ne!(rekeyed.encryption.unwrap().key_id, key.0);
}

#[test]
fn a_damaged_sealed_snapshot_fails_the_restore_and_leaves_no_instance() {
    let f = Fixture::new();
    source(&f);
    f.kms.create_key(Some("k"), "").unwrap();
    take(&f, "source", "snap", Some("k")).unwrap();
    let path = f.home().join("snapshots/snap/snapshot.tar.sealed");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let mut spec = f.spec("from-damaged", None);
    spec.storage_bytes = 1 << 30;
    let err = f
        .instances
        .restore_snapshot("snap", &spec, Some(&f.kms), &no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    assert!(
        !f.home().join("instances/from-damaged").exists(),
        "no half-made instance"
    );
    assert!(!pgseal_local::volume::is_mount_point(
        &f.home().join("instances/from-damaged/mnt")
    ));

    // Truncated: the same.
    std::fs::write(&path, &bytes[..bytes.len() - 5000]).unwrap();
    let err = f
        .instances
        .restore_snapshot("snap", &spec, Some(&f.kms), &no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    assert!(!f.home().join("instances/from-damaged").exists());
}

#[test]
fn an_external_server_by_url_can_be_snapshotted_and_restored() {
    let f = Fixture::new();
    let external = pgseal_testkit::TestCluster::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = external.connect("postgres").await.unwrap();
        c.batch_execute(
            "CREATE TABLE ext (id int); INSERT INTO ext SELECT generate_series(1, 1234)",
        )
        .await
        .unwrap();
    });
    let snap = f
        .instances
        .create_snapshot(
            &SnapshotFrom::Url(external.url("postgres")),
            "snap-ext",
            None,
            None,
            &no_progress,
        )
        .unwrap();
    assert!(matches!(snap.source, SnapshotSource::External { .. }));
    let mut spec = f.spec("from-ext", None);
    spec.storage_bytes = 1 << 30;
    let restored = f
        .instances
        .restore_snapshot("snap-ext", &spec, None, &no_progress)
        .unwrap();
    assert_eq!(sql(&restored, "SELECT count(*) FROM ext"), ["1234"]);
}

#[test]
fn bad_snapshot_requests_are_refused_before_anything_is_made() {
    let f = Fixture::new();
    source(&f);
    let err = take(&f, "nope", "s1", None).unwrap_err();
    assert!(matches!(err, LocalError::NotFound(_)), "{err}");
    let err = take(&f, "source", "s1", Some("no-such-key")).unwrap_err();
    assert!(err.to_string().contains("no KMS key"), "{err}");
    let err = f
        .instances
        .create_snapshot(
            &SnapshotFrom::Url("postgres://nobody@127.0.0.1:1/x".into()),
            "s1",
            None,
            None,
            &no_progress,
        )
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(f.instances.snapshots().unwrap().is_empty());
    assert!(!f.home().join("snapshots/s1").exists());

    f.instances.stop("source").unwrap();
    let err = take(&f, "source", "s1", None).unwrap_err();
    assert!(err.to_string().contains("start it first"), "{err}");

    // Too little storage for the snapshot.
    f.instances.start("source", None).unwrap();
    take(&f, "source", "s2", None).unwrap();
    let err = f
        .instances
        .restore_snapshot("s2", &f.spec("tiny", None), None, &no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn a_snapshot_that_runs_out_of_disk_leaves_nothing_behind() {
    let f = Fixture::new();
    let src = source(&f);
    sql(
        &src,
        "INSERT INTO rows SELECT g, repeat(md5(g::text), 20) FROM generate_series(10001, 160000) g",
    );
    // The snapshots directory on a 32 MiB file system: the ~60 MiB backup cannot fit.
    let snapshots = f.home().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let small =
        pgseal_local::volume::Volume::new(f.dir.path().join("small.img"), snapshots.clone());
    small.create(32 << 20).unwrap();
    small.mount().unwrap();
    struct Unmount(pgseal_local::volume::Volume);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = self.0.unmount();
        }
    }
    let _guard = Unmount(small);

    let err = take(&f, "source", "too-big", None).unwrap_err();
    assert!(
        format!("{err:#}").contains("No space left on device")
            || err.to_string().contains("No space left"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    assert!(left.is_empty(), "partial files left: {left:?}");
    // The source is untouched and serving; its backup slot went with the session.
    assert_eq!(
        sql(&src, "SELECT count(*) FROM pg_replication_slots"),
        ["0"]
    );
}

#[test]
fn a_snapshot_a_killed_process_left_half_written_is_taken_again_and_one_being_written_is_refused() {
    let f = Fixture::new();
    source(&f);
    f.kms.create_key(Some("snap-key"), "").unwrap();
    let snapshots = f.home().join("snapshots");
    // What a process killed mid-backup leaves: the directory and a data file not yet put
    // in place, no record. It is no snapshot.
    let dir = snapshots.join("snap-1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("snapshot.tar.sealed.partial"), b"half").unwrap();
    assert!(f.instances.snapshots().unwrap().is_empty());

    // While another process holds the name's claim, the name is refused and its files kept.
    let other = std::fs::File::create(snapshots.join(".snap-1.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let refused = take(&f, "source", "snap-1", Some("snap-key")).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("being written by another process"),
        "{refused}"
    );
    assert!(dir.join("snapshot.tar.sealed.partial").exists());

    // Once that process is gone, the leftover is removed and the snapshot taken.
    drop(held);
    let snap = take(&f, "source", "snap-1", Some("snap-key")).unwrap();
    assert!(snap.encryption.is_some());
    assert!(!dir.join("snapshot.tar.sealed.partial").exists());
    assert_eq!(f.instances.snapshots().unwrap().len(), 1);
    // A complete snapshot's name stays taken.
    let again = take(&f, "source", "snap-1", Some("snap-key")).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    f.instances.delete_snapshot("snap-1").unwrap();
    assert_eq!(std::fs::read_dir(&snapshots).unwrap().count(), 0);
}
