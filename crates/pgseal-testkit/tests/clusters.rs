//! Real clusters: start, query, run side by side, clean up.

use pgseal_testkit::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_side_by_side_each_run_their_own_sql() {
    let (a, b) = tokio::task::spawn_blocking(|| {
        let a = TestCluster::start().expect("cluster a");
        let b = TestCluster::builder()
            .setting("max_connections", "25")
            .start()
            .expect("cluster b");
        (a, b)
    })
    .await
    .unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    let ca = a.connect("postgres").await.unwrap();
    let cb = b.connect("postgres").await.unwrap();
    ca.batch_execute(
        "CREATE TABLE only_on_a (id int primary key); INSERT INTO only_on_a VALUES (1), (2)",
    )
    .await
    .unwrap();
    cb.batch_execute(
        "CREATE TABLE only_on_b (id int primary key); INSERT INTO only_on_b VALUES (7)",
    )
    .await
    .unwrap();

    let n: i64 = pgseal_testkit::scalar(&ca, "SELECT count(*) FROM only_on_a").await;
    assert_eq!(n, 2);
    let missing = ca
        .query_one("SELECT to_regclass('only_on_b') IS NULL", &[])
        .await
        .unwrap();
    assert!(
        missing.get::<_, bool>(0),
        "cluster a must not see cluster b's table"
    );
    let v: i32 = pgseal_testkit::scalar(&cb, "SELECT id FROM only_on_b").await;
    assert_eq!(v, 7);

    // Settings passed in reach the server; the defaults make logical replication possible.
    let wal: String = pgseal_testkit::scalar(&ca, "SHOW wal_level").await;
    assert_eq!(wal, "logical");
    let maxc: String = pgseal_testkit::scalar(&cb, "SHOW max_connections").await;
    assert_eq!(maxc, "25");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_runs_as_postgres_when_tests_run_as_root() {
    let cluster = TestCluster::started().await;
    let client = cluster.connect("postgres").await.unwrap();
    // The data directory's owner is the OS user the server runs as.
    let owner_uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(cluster.data_dir()).unwrap());
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(owner_uid, 0, "server files must not belong to root");
    }
    let one: i32 = pgseal_testkit::scalar(&client, "SELECT 1").await;
    assert_eq!(one, 1);
}

#[test]
fn drop_stops_the_server_and_removes_its_files() {
    let cluster = TestCluster::start().unwrap();
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_path_buf();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(cluster);
    assert!(!data_dir.exists(), "data dir must be removed on drop");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing may listen on the port after drop"
    );
}

#[test]
fn a_bad_setting_fails_the_start_with_the_server_log() {
    let err = TestCluster::builder()
        .setting("shared_buffers", "not-a-size")
        .start()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("server did not start"), "{text}");
    assert!(
        text.contains("shared_buffers"),
        "the log tail must name the bad setting: {text}"
    );
}
