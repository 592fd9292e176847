//! What logical replication does not carry and pgseal does, on real servers: large objects
//! (copied object by object, only what changed since the last sync) and roles,
//! memberships and database properties (compared and made equal).

use pgseal_pg::{globals, large_objects};
use pgseal_testkit::TestCluster;
use tokio_postgres::Client;

async fn clusters() -> (TestCluster, TestCluster) {
    tokio::task::spawn_blocking(|| (TestCluster::start().unwrap(), TestCluster::start().unwrap()))
        .await
        .unwrap()
}

async fn pinned(cluster: &TestCluster, db: &str) -> Client {
    pgseal_pg::connect_pinned(&cluster.config(db))
        .await
        .unwrap()
}

async fn inventory(client: &Client) -> Vec<(u32, String, i64, String)> {
    large_objects::inventory(client)
        .await
        .unwrap()
        .into_iter()
        .map(|(oid, o)| (oid, o.metadata.owner, o.bytes, o.md5))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_copied_whole_and_then_only_what_changed() {
    let (a, b) = clusters().await;
    let (src, dst) = (pinned(&a, "postgres").await, pinned(&b, "postgres").await);
    for c in [&src, &dst] {
        c.batch_execute("CREATE ROLE app; CREATE ROLE reader")
            .await
            .unwrap();
    }
    // A small object, a sparse one (a hole before its only bytes), one of 3 MiB read in
    // pieces, one owned by the application and readable by another role, with a comment.
    src.batch_execute(
        "SELECT lo_from_bytea(1001, 'hello'); \
         SELECT lo_create(1002); SELECT lo_put(1002, 100000, 'tail'); \
         SELECT lo_from_bytea(1003, decode(repeat('ab', 3 * 1024 * 1024 / 2), 'hex')); \
         SELECT lo_from_bytea(1004, 'owned'); ALTER LARGE OBJECT 1004 OWNER TO app; \
         GRANT SELECT ON LARGE OBJECT 1004 TO reader; COMMENT ON LARGE OBJECT 1004 IS 'invoice'",
    )
    .await
    .unwrap();
    // The other side has one of them stale and one the source does not have.
    dst.batch_execute("SELECT lo_from_bytea(1001, 'stale'); SELECT lo_from_bytea(2000, 'gone')")
        .await
        .unwrap();
    let (report, marks) = large_objects::sync(&src, &dst).await.unwrap();
    assert_eq!((report.copied, report.unlinked), (4, 1), "{report:?}");
    assert_eq!(inventory(&src).await, inventory(&dst).await);
    let both = large_objects::compare(
        &large_objects::inventory(&src).await.unwrap(),
        &large_objects::inventory(&dst).await.unwrap(),
    );
    assert!(both.is_empty(), "{both:?}");

    // Written since: one changed in place, one made, one unlinked, one given to another
    // owner; only those are carried.
    src.batch_execute(
        "SELECT lo_put(1003, 10, 'x'); SELECT lo_from_bytea(1005, 'new'); \
         SELECT lo_unlink(1001); ALTER LARGE OBJECT 1002 OWNER TO reader",
    )
    .await
    .unwrap();
    let (report, marks) = large_objects::sync_changed(&src, &dst, &marks)
        .await
        .unwrap();
    assert_eq!(
        (report.copied, report.unlinked, report.metadata),
        (2, 1, 1),
        "{report:?}"
    );
    assert_eq!(inventory(&src).await, inventory(&dst).await);
    let (again, _) = large_objects::sync_changed(&src, &dst, &marks)
        .await
        .unwrap();
    assert!(again.is_empty(), "nothing changed since: {again:?}");
    // A difference planted on the other side is named.
    dst.batch_execute("SELECT lo_put(1005, 0, 'N')")
        .await
        .unwrap();
    let found = large_objects::compare(
        &large_objects::inventory(&src).await.unwrap(),
        &large_objects::inventory(&dst).await.unwrap(),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].oid, found[0].what.as_str()),
        (1005, "contents differ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_memberships_and_database_properties_are_made_equal() {
    let (a, b) = clusters().await;
    let (src, dst) = (pinned(&a, "postgres").await, pinned(&b, "postgres").await);
    for c in [&src, &dst] {
        c.batch_execute("CREATE DATABASE shop").await.unwrap();
    }
    src.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app secret' CONNECTION LIMIT 7; CREATE ROLE readers; \
         GRANT readers TO app WITH ADMIN OPTION; ALTER ROLE app SET statement_timeout = '5s'; \
         COMMENT ON ROLE app IS 'the application'; \
         ALTER DATABASE shop OWNER TO app; ALTER DATABASE shop SET search_path = shop, public; \
         ALTER ROLE readers IN DATABASE shop SET work_mem = '8MB'; \
         REVOKE CONNECT ON DATABASE shop FROM PUBLIC; GRANT CONNECT ON DATABASE shop TO readers; \
         COMMENT ON DATABASE shop IS 'orders'",
    )
    .await
    .unwrap();
    dst.batch_execute("CREATE ROLE leftover; CREATE ROLE app NOLOGIN")
        .await
        .unwrap();
    let dbs = vec!["shop".to_string()];
    let carried = globals::sync(&src, &dst, &dbs, &globals::DiffOptions::default())
        .await
        .unwrap();
    assert!(carried.len() >= 10, "{carried:#?}");
    let want = globals::read(&src, &dbs).await.unwrap();
    let have = globals::read(&dst, &dbs).await.unwrap();
    let left = globals::diff(&want, &have, &globals::DiffOptions::default());
    assert!(left.is_empty(), "{left:#?}");
    // The password arrived as its verifier: the same password logs in on the other side.
    assert_eq!(have.roles["app"].password, want.roles["app"].password);
    assert!(
        have.roles["app"]
            .password
            .as_deref()
            .unwrap()
            .starts_with("SCRAM-SHA-256$")
    );
    assert!(!have.roles.contains_key("leftover"));
    let search_path: String = dst
        .query_one(
            "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting \
             WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = 'shop') AND setrole = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(search_path, "search_path=shop, public");
}
