//! Local instances on real servers: lifecycle, parameters, encryption at rest, bad input.

mod common;

use std::collections::BTreeMap;

use common::{Fixture, files_containing, sql};
use pgseal_local::instance::{LocalError, ResizeHow};

#[test]
fn plain_instance_lifecycle_and_parameters() {
    let f = Fixture::new();
    let info = f.instances.create(&f.spec("orders", None), None).unwrap();
    assert_eq!(info.status, "available");
    assert!(!info.encrypted);
    sql(
        &info,
        "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1), (2), (3)",
    );

    // Reload-able parameter: in effect at once.
    let mut p = BTreeMap::new();
    p.insert("work_mem".to_string(), "12MB".to_string());
    let change = f.instances.set_params("orders", &p, false, None).unwrap();
    assert_eq!(change.applied, ["work_mem"]);
    assert_eq!(sql(&info, "SHOW work_mem"), ["12MB"]);

    // A static parameter needs a restart: reported, not done, until asked.
    let mut p = BTreeMap::new();
    p.insert("wal_level".to_string(), "logical".to_string());
    let change = f.instances.set_params("orders", &p, false, None).unwrap();
    assert_eq!(change.pending_restart, ["wal_level"]);
    assert!(!change.restarted);
    assert_eq!(sql(&info, "SHOW wal_level"), ["replica"]);
    let change = f.instances.set_params("orders", &p, true, None).unwrap();
    assert!(change.restarted);
    assert_eq!(sql(&info, "SHOW wal_level"), ["logical"]);

    assert_eq!(f.instances.stop("orders").unwrap().status, "stopped");
    assert_eq!(
        f.instances.start("orders", None).unwrap().status,
        "available"
    );
    assert_eq!(
        sql(&info, "SELECT count(*) FROM t"),
        ["3"],
        "data survives stop/start"
    );
    assert_eq!(
        sql(&info, "SHOW work_mem"),
        ["12MB"],
        "parameters survive a restart"
    );

    let listed = f.instances.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].params.get("wal_level").map(String::as_str),
        Some("logical")
    );

    f.instances.delete("orders").unwrap();
    assert!(!f.home().join("instances/orders").exists());
    assert!(matches!(
        f.instances.describe("orders"),
        Err(LocalError::NotFound(_))
    ));
}

#[test]
fn encrypted_instance_keeps_no_plaintext_on_disk_and_reopens_through_the_kms() {
    let f = Fixture::new();
    let key = f.kms.create_key(Some("orders-key"), "").unwrap().key_id;
    let plain = f.instances.create(&f.spec("plain", None), None).unwrap();
    let enc = f
        .instances
        .create(&f.spec("sealed", Some("orders-key")), Some(&f.kms))
        .unwrap();
    assert!(enc.encrypted);
    assert_eq!(enc.key_id.as_deref(), Some(key.0.as_str()));
    assert_eq!(enc.key_ref.as_deref(), Some("orders-key"));

    let marker = "PGSEAL-AT-REST-MARKER-a91c";
    for info in [&plain, &enc] {
        sql(
            info,
            &format!(
                "CREATE TABLE secrets (id int primary key, v text); \
             INSERT INTO secrets SELECT g, '{marker}' || g FROM generate_series(1, 2000) g; CHECKPOINT"
            ),
        );
    }
    f.instances.stop("plain").unwrap();
    let stopped = f.instances.stop("sealed").unwrap();
    assert_eq!(stopped.status, "stopped");
    assert!(
        !pgseal_local::volume::is_mount_point(&f.home().join("instances/sealed/mnt")),
        "volume unmounted on stop"
    );

    let in_plain = files_containing(&f.home().join("instances/plain"), marker.as_bytes());
    assert!(
        !in_plain.is_empty(),
        "the marker must be found in the plain instance's files"
    );
    let in_sealed = files_containing(&f.home().join("instances/sealed"), marker.as_bytes());
    assert!(
        in_sealed.is_empty(),
        "plaintext marker found on encrypted storage: {in_sealed:?}"
    );

    // Start again (as after a machine reboot): the volume key comes back through the KMS.
    let again = f.instances.start("sealed", Some(&f.kms)).unwrap();
    assert_eq!(again.status, "available");
    assert_eq!(
        sql(
            &again,
            &format!("SELECT count(*) FROM secrets WHERE v LIKE '{marker}%'")
        ),
        ["2000"]
    );

    // A disabled key keeps a stopped encrypted instance shut.
    f.instances.stop("sealed").unwrap();
    f.kms.disable_key("orders-key").unwrap();
    let err = f.instances.start("sealed", Some(&f.kms)).unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
    assert!(
        !pgseal_local::volume::is_mount_point(&f.home().join("instances/sealed/mnt")),
        "nothing opened"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let f = Fixture::new();
    assert!(matches!(
        f.instances.create(&f.spec("Bad_Name", None), None),
        Err(LocalError::BadName(_))
    ));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = f.spec("taken-port", None);
    spec.port = Some(listener.local_addr().unwrap().port());
    let err = f.instances.create(&spec, None).unwrap_err();
    assert!(matches!(err, LocalError::PortInUse { .. }), "{err}");
    assert!(err.is_precondition());

    let mut privileged = f.spec("low-port", None);
    privileged.port = Some(80);
    assert!(matches!(
        f.instances.create(&privileged, None),
        Err(LocalError::InvalidInput(_))
    ));

    f.kms.create_key(Some("off"), "").unwrap();
    f.kms.disable_key("off").unwrap();
    let err = f
        .instances
        .create(&f.spec("enc-off", Some("off")), Some(&f.kms))
        .unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
    let err = f
        .instances
        .create(&f.spec("enc-nokey", Some("nope")), Some(&f.kms))
        .unwrap_err();
    assert!(err.to_string().contains("no KMS key"), "{err}");

    let mut small = f.spec("small", None);
    small.storage_bytes = 1 << 20;
    assert!(matches!(
        f.instances.create(&small, None),
        Err(LocalError::InvalidInput(_))
    ));

    let mut reserved = f.spec("reserved", None);
    reserved.params.insert("port".into(), "1".into());
    assert!(matches!(
        f.instances.create(&reserved, None),
        Err(LocalError::InvalidInput(_))
    ));

    // None of it left an instance directory.
    let left: Vec<_> = std::fs::read_dir(f.home().join("instances"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // A real instance, then the same name again.
    f.instances.create(&f.spec("dup", None), None).unwrap();
    assert!(matches!(
        f.instances.create(&f.spec("dup", None), None),
        Err(LocalError::NameTaken(_))
    ));
}

#[test]
fn a_failed_start_during_create_removes_everything() {
    let f = Fixture::new();
    let mut spec = f.spec("broken", None);
    spec.params
        .insert("shared_buffers".into(), "not-a-size".into());
    let err = f.instances.create(&spec, None).unwrap_err();
    assert!(
        err.to_string().contains("shared_buffers"),
        "the log tail names the cause: {err}"
    );
    assert!(
        !f.home().join("instances/broken").exists(),
        "no half-made instance"
    );
}

#[test]
fn a_full_encrypted_volume_fails_writes_with_disk_full_and_can_be_grown() {
    let f = Fixture::new();
    f.kms.create_key(Some("k"), "").unwrap();
    let info = f
        .instances
        .create(&f.spec("full", Some("k")), Some(&f.kms))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fill = |rows: i64| {
        runtime.block_on(async {
            let mut config = tokio_postgres::Config::new();
            config.host_path(&info.socket_dir).port(info.port).user("postgres").dbname("postgres");
            let client = pgseal_pg::connect(&config).await.unwrap();
            // EXTERNAL: stored uncompressed, so the rows really take their size on disk.
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS big (v text); ALTER TABLE big ALTER v SET STORAGE EXTERNAL")
                .await
                .unwrap();
            client
                .execute("INSERT INTO big SELECT repeat(md5(g::text), 128) FROM generate_series(1, $1::bigint) g", &[&rows])
                .await
                .map(|_| ())
        })
    };
    // 256 MiB of storage: 150,000 rows of 4 KiB (600 MiB, and as much WAL) cannot fit.
    let err = fill(150_000).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DISK_FULL),
        "{err:?}"
    );

    let grown = f.instances.resize("full", 1 << 30, Some(&f.kms)).unwrap();
    assert_eq!(grown.instance.storage_bytes, 1 << 30);
    assert_eq!(grown.instance.status, "available");
    let expected = if pgseal_local::volume::can_grow_online() {
        ResizeHow::Online
    } else {
        ResizeHow::WithRestart
    };
    assert_eq!(grown.how, expected);
    fill(20_000).expect("writes succeed after the volume grew");
    let image = std::fs::metadata(f.home().join("instances/full/volume.img"))
        .unwrap()
        .len();
    assert_eq!(image, 1 << 30);
    assert!(
        matches!(
            f.instances.resize("full", 512 << 20, Some(&f.kms)),
            Err(LocalError::InvalidInput(_))
        ),
        "never shrinks"
    );
}
