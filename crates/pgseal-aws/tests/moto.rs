//! The AWS platform against a real AWS-compatible endpoint: a moto server started per test
//! on a free loopback port. Each call sequence is the one RDS and Aurora need; every
//! assertion reads the result back from moto.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgseal_aws::{AwsPlatform, AwsSettings, Flavor};
use pgseal_platform::{ErrorKind, InstanceStatus, NewInstance, Platform, ReplicationMethod};
use pgseal_testkit::MotoServer;
use pgseal_testkit::moto::seed::Seed;

/// The platform on `moto`, polling fast, one attempt per call.
async fn platform(moto: &MotoServer, flavor: Flavor) -> AwsPlatform {
    // Each test runs in its own process (nextest), so setting the SDK's credentials in
    // the environment is safe.
    for (name, value) in moto.env() {
        unsafe { std::env::set_var(name, value) };
    }
    let mut settings = AwsSettings::new(flavor);
    settings.endpoint_url = Some(moto.url());
    settings.max_attempts = Some(1);
    settings.poll_interval = Duration::from_millis(100);
    settings.wait_timeout = Duration::from_secs(60);
    settings.handoff_timeout = Duration::from_secs(2);
    AwsPlatform::new(settings).await.unwrap()
}

fn target(name: &str) -> NewInstance {
    NewInstance {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_rds_sequence_encrypts_under_an_alias_and_an_arn_restores_encrypted_and_renames() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    let arn = seed.key("alias/pgseal-test").await;
    let source = seed.rds_instance("src", None).await;
    let aws = platform(&moto, Flavor::Rds).await;

    // Snapshot under the alias: the plain snapshot is copied, then removed.
    let snap = aws
        .create_snapshot("rds:src", "pgseal-m1", Some("alias/pgseal-test"))
        .await
        .unwrap();
    assert!(snap.encrypted);
    assert_eq!(snap.key_id.as_deref(), Some(arn.as_str()));
    assert_eq!(seed.snapshots().await, vec!["pgseal-m1".to_string()]);
    // Under the ARN too.
    let copy = aws
        .copy_snapshot_encrypted("pgseal-m1", "pgseal-m1-arn", &arn)
        .await
        .unwrap();
    assert_eq!(copy.key_id.as_deref(), Some(arn.as_str()));

    // The restore inherits the encryption, the source's class and groups, exports the
    // PostgreSQL log and is tagged with its snapshot.
    let restored = aws
        .restore_snapshot("pgseal-m1", &target("src-enc"))
        .await
        .unwrap();
    assert_eq!(restored.status, InstanceStatus::Available);
    assert!(restored.encrypted);
    assert_eq!(restored.key_id.as_deref(), Some(arn.as_str()));
    assert_eq!(restored.source_snapshot.as_deref(), Some("pgseal-m1"));
    // A restore resumed after pgseal was killed waits for the instance AWS is making;
    // it neither restores twice nor takes over an instance it did not make.
    let again = aws
        .restore_snapshot("pgseal-m1", &target("src-enc"))
        .await
        .unwrap();
    assert_eq!(again.key_id, restored.key_id);
    let waited = aws.wait_available("src-enc").await.unwrap();
    assert_eq!(waited.status, InstanceStatus::Available);
    let foreign = aws
        .restore_snapshot("pgseal-m1-arn", &target("src-enc"))
        .await
        .unwrap_err();
    assert_eq!(foreign.kind, ErrorKind::Precondition, "{foreign}");
    let raw = seed.instance("src-enc").await.unwrap();
    assert_eq!(raw.db_instance_class(), source.db_instance_class());
    assert_eq!(raw.enabled_cloudwatch_logs_exports(), ["postgresql"]);
    assert_eq!(
        raw.db_parameter_groups()[0].db_parameter_group_name(),
        source.db_parameter_groups()[0].db_parameter_group_name()
    );

    // The handoff LSN comes from the first start's lines in CloudWatch Logs, in the order
    // PostgreSQL 15 logs them (the end line before `redo done at`), followed by a later
    // crash start's lines, which must not be taken for the first one's.
    seed.log_lines(
        "/aws/rds/instance/src-enc/postgresql",
        &[
            "2026-11-24 01:00:00 UTC::@:[412]:LOG:  redo starts at 0/5000028",
            "2026-11-24 01:00:00 UTC::@:[412]:LOG:  invalid record length at 0/5000098: wanted 24, got 0",
            "2026-11-24 01:00:00 UTC::@:[412]:LOG:  redo done at 0/5000060 system usage: CPU: user: 0.00 s",
            "2026-11-24 02:00:00 UTC::@:[977]:LOG:  redo starts at 0/7000028",
            "2026-11-24 02:00:00 UTC::@:[977]:LOG:  invalid record length at 0/7000200: wanted 24, got 0",
            "2026-11-24 02:00:00 UTC::@:[977]:LOG:  redo done at 0/7000100 system usage: CPU: user: 0.00 s",
        ],
    )
    .await;
    let handoff = aws.handoff("src-enc").await.unwrap();
    assert_eq!(handoff.lsn.to_string(), "0/5000098");
    assert_eq!(handoff.redo_done_at.unwrap().to_string(), "0/5000060");

    // Cutover by renames: the target takes the source's name; the engine's names follow.
    aws.rename("rds:src", "src-pre-pgseal").await.unwrap();
    aws.rename("src-enc", "src").await.unwrap();
    assert_eq!(
        seed.instance("src").await.unwrap().storage_encrypted(),
        Some(true)
    );
    assert_ne!(
        seed.instance("src-pre-pgseal")
            .await
            .unwrap()
            .storage_encrypted(),
        Some(true)
    );
    assert!(seed.instance("src-enc").await.is_none());
    assert!(!aws.describe_instance("rds:src").await.unwrap().encrypted);
    assert!(aws.describe_instance("src-enc").await.unwrap().encrypted);
    // Renaming again is a no-op; a new platform told the renames sees the same.
    aws.rename("src-enc", "src").await.unwrap();
    let fresh = platform(&moto, Flavor::Rds).await;
    fresh.set_renamed("rds:src", "src-pre-pgseal");
    fresh.set_renamed("src-enc", "src");
    assert!(fresh.describe_instance("src-enc").await.unwrap().encrypted);

    // Deleting the snapshot and the (renamed) target.
    aws.delete_snapshot("pgseal-m1-arn").await.unwrap();
    aws.delete_instance("src-enc").await.unwrap();
    assert!(seed.instance("src").await.is_none());
    let gone = aws.describe_instance("src-enc").await.unwrap_err();
    assert_eq!(gone.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn a_key_change_goes_from_the_aws_managed_key_to_a_customer_key() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    let customer = seed.key("alias/customer").await;
    seed.rds_instance("prod", Some("alias/aws/rds")).await;
    let aws = platform(&moto, Flavor::Rds).await;
    let managed = aws.check_key("alias/aws/rds").await.unwrap();

    let source = aws.describe_instance("rds:prod").await.unwrap();
    assert!(source.encrypted);
    // The engine's path for an encrypted source: snapshot under its key, copy under the new.
    let own = aws
        .create_snapshot("rds:prod", "pgseal-k-src", None)
        .await
        .unwrap();
    assert!(own.encrypted);
    assert_ne!(own.key_id.as_deref(), Some(customer.as_str()));
    let copy = aws
        .copy_snapshot_encrypted("pgseal-k-src", "pgseal-k", "alias/customer")
        .await
        .unwrap();
    assert_eq!(copy.key_id.as_deref(), Some(customer.as_str()));
    let restored = aws
        .restore_snapshot("pgseal-k", &target("prod-enc"))
        .await
        .unwrap();
    assert!(restored.encrypted);
    assert_eq!(restored.key_id.as_deref(), Some(customer.as_str()));
    assert_ne!(managed.arn, customer);
}

#[tokio::test]
async fn an_unknown_key_is_a_clear_error_at_once_and_nothing_is_created() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    seed.rds_instance("src", None).await;
    let aws = platform(&moto, Flavor::Rds).await;
    let started = Instant::now();
    let e = aws
        .create_snapshot("rds:src", "pgseal-x", Some("alias/no-such-key"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Key, "{e}");
    assert!(e.to_string().contains("alias/no-such-key"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(seed.snapshots().await.is_empty());
}

#[tokio::test]
async fn logical_replication_on_a_default_parameter_group_goes_through_a_custom_copy() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    seed.rds_instance("src", None).await;
    let aws = platform(&moto, Flavor::Rds).await;
    let params = BTreeMap::from([("wal_level".to_string(), "logical".to_string())]);

    let changed = aws.set_params("rds:src", &params, true).await.unwrap();
    assert!(changed.restarted);
    assert_eq!(changed.applied, ["rds.logical_replication"]);
    let raw = seed.instance("src").await.unwrap();
    let group = raw.db_parameter_groups()[0]
        .db_parameter_group_name()
        .unwrap();
    assert_eq!(group, "pgseal-src");
    let value = seed
        .rds
        .describe_db_parameters()
        .db_parameter_group_name("pgseal-src")
        .send()
        .await
        .unwrap()
        .parameters()
        .iter()
        .find(|p| p.parameter_name() == Some("rds.logical_replication"))
        .and_then(|p| p.parameter_value().map(str::to_string));
    assert_eq!(value.as_deref(), Some("1"));
    // Once the custom group is attached it is changed in place; without restart the
    // change waits for one.
    let again = aws.set_params("rds:src", &params, false).await.unwrap();
    assert_eq!(again.pending_restart, ["rds.logical_replication"]);
    assert!(!again.restarted);
}

#[tokio::test]
async fn the_handoff_wait_ends_with_a_clear_error_when_no_log_line_arrives() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    seed.rds_instance("lonely", None).await;
    let aws = platform(&moto, Flavor::Rds).await;
    let e = aws.handoff("lonely").await.unwrap_err();
    let text = e.to_string();
    assert_eq!(e.kind, ErrorKind::Precondition, "{text}");
    assert!(text.contains("invalid record length"), "{text}");
    assert!(
        text.contains("/aws/rds/instance/lonely/postgresql"),
        "{text}"
    );
    // moto has no DownloadDBLogFilePortion: the fallback's failure is named too.
    assert!(text.contains("DownloadDBLogFilePortion"), "{text}");
}

#[tokio::test]
async fn aurora_snapshots_plain_and_restores_a_cluster_with_a_writer_under_the_key() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    let arn = seed.key("alias/aurora-key").await;
    seed.aurora_cluster("aur").await;
    let aws = platform(&moto, Flavor::Aurora).await;

    // A plain cluster snapshot cannot be copied under a key: it carries the key for the
    // restore instead, also when described again (a resumed migration).
    let snap = aws
        .create_snapshot("aurora:aur", "pgseal-a", Some("alias/aurora-key"))
        .await
        .unwrap();
    assert!(!snap.encrypted);
    assert_eq!(snap.restore_key.as_deref(), Some(arn.as_str()));
    let again = aws.describe_snapshot("pgseal-a").await.unwrap();
    assert_eq!(again.restore_key.as_deref(), Some(arn.as_str()));
    let restored = aws
        .restore_snapshot(
            "pgseal-a",
            &NewInstance {
                encryption_key: snap.restore_key.clone(),
                ..target("aur-enc")
            },
        )
        .await
        .unwrap();
    assert_eq!(restored.status, InstanceStatus::Available);
    assert!(seed.instance("aur-enc-writer").await.is_some());
    // moto leaves a cluster restored with KmsKeyId unencrypted: the platform reports
    // exactly that, and the engine refuses such a target (the CLI test shows it).
    assert!(!restored.encrypted);
    aws.delete_instance("aur-enc").await.unwrap();
    assert!(seed.instance("aur-enc-writer").await.is_none());
}

/// The green twins' encryption problems under `key` (none when all are under it).
async fn green_problems(
    aws: &AwsPlatform,
    bg: &pgseal_platform::BlueGreen,
    key: &str,
) -> Vec<String> {
    aws.deployment_green(bg, key)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|g| g.problem)
        .collect()
}

#[tokio::test]
async fn blue_green_sends_a_target_key_for_the_instance_and_its_replica_adopts_its_own_deployment_and_switches_over()
 {
    // moto patched to model TargetKmsKeyId (moto 5.2.5 ignores it): see the patch's doc.
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let moto = MotoServer::start_with_blue_green_target_keys(&record).unwrap();
    let seed = Seed::new(&moto).await;
    let key = seed.key("alias/bg").await;
    let source = seed.rds_instance("shop", None).await;
    let replica = seed.rds_read_replica("shop-r1", "shop").await;
    let aws = platform(&moto, Flavor::Rds).await;

    let (bg, adopted) = aws
        .create_deployment("m1", "rds:shop", &key, None)
        .await
        .unwrap();
    assert!(!adopted);
    assert_eq!(bg.name, "pgseal-m1");
    // Exactly one configuration per blue resource, each under the key.
    let sent = pgseal_testkit::moto::blue_green_requests(&record);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, source.db_instance_arn().unwrap());
    assert_eq!(
        sent[0].1,
        [
            (source.db_instance_arn().unwrap().to_string(), key.clone()),
            (replica.db_instance_arn().unwrap().to_string(), key.clone()),
        ]
    );

    // A run killed after the create returned finds the deployment by its name and tag:
    // no second request, the same deployment.
    let (again, adopted) = aws
        .create_deployment("m1", "rds:shop", &key, None)
        .await
        .unwrap();
    assert!(adopted);
    assert_eq!(again.id, bg.id);
    assert_eq!(pgseal_testkit::moto::blue_green_requests(&record).len(), 1);

    let ready = aws.wait_deployment_available(&bg.id).await.unwrap();
    assert_eq!(ready.status, "AVAILABLE");
    // Same major version on RDS: AWS replicates physically, planned and read back alike.
    assert_eq!(
        aws.deployment_method(&ready).await.unwrap(),
        Some(ReplicationMethod::Physical)
    );
    assert_eq!(
        aws.plan_deployment("rds:shop", None).await.unwrap().method,
        ReplicationMethod::Physical
    );
    assert_eq!(
        aws.plan_deployment("rds:shop", Some(17))
            .await
            .unwrap()
            .method,
        ReplicationMethod::Logical
    );
    assert_eq!(
        green_problems(&aws, &ready, &key).await,
        Vec::<String>::new()
    );
    // Another key is named as a problem.
    let other = seed.key("alias/other").await;
    assert_eq!(green_problems(&aws, &ready, &other).await.len(), 1);

    // Switchover: green takes blue's name, blue is kept under `-old1`.
    let done = aws.switchover_deployment(&bg.id, 300).await.unwrap();
    assert_eq!(done.status, "SWITCHOVER_COMPLETED");
    let shop = seed.instance("shop").await.unwrap();
    assert_eq!(shop.storage_encrypted(), Some(true));
    assert_eq!(shop.kms_key_id(), Some(key.as_str()));
    assert_ne!(
        seed.instance("shop-old1")
            .await
            .unwrap()
            .storage_encrypted(),
        Some(true)
    );
    aws.delete_deployment(&bg.id, false).await.unwrap();
    assert!(aws.describe_deployment(&bg.id).await.unwrap().is_none());
    assert!(aws.find_deployment("m1").await.unwrap().is_none());
    // Deleting what is gone is no error.
    aws.delete_deployment(&bg.id, false).await.unwrap();
}

#[tokio::test]
async fn against_stock_moto_the_unencrypted_green_is_named_and_abort_deletes_it_with_the_deployment()
 {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::new(&moto).await;
    let key = seed.key("alias/bg").await;
    seed.rds_instance("shop", None).await;
    let aws = platform(&moto, Flavor::Rds).await;
    let (bg, _) = aws
        .create_deployment("m1", "rds:shop", &key, None)
        .await
        .unwrap();
    let ready = aws.wait_deployment_available(&bg.id).await.unwrap();
    let problems = green_problems(&aws, &ready, &key).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("StorageEncrypted=false"),
        "{problems:?}"
    );
    let green = pgseal_aws::bluegreen::arn_id(ready.target.as_deref().unwrap()).to_string();
    assert!(seed.instance(&green).await.is_some());
    aws.delete_deployment(&bg.id, true).await.unwrap();
    assert!(seed.instance(&green).await.is_none());
    assert!(seed.instance("shop").await.is_some());
}

#[tokio::test]
async fn an_aurora_cluster_gets_its_green_cluster_under_the_key_and_a_foreign_deployment_is_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let moto = MotoServer::start_with_blue_green_target_keys(&record).unwrap();
    let seed = Seed::new(&moto).await;
    let key = seed.key("alias/bg").await;
    seed.aurora_cluster("orders").await;
    let aws = platform(&moto, Flavor::Aurora).await;
    let (bg, _) = aws
        .create_blue_green("m2", "aurora:orders", &key, None)
        .await
        .unwrap();
    let sent = pgseal_testkit::moto::blue_green_requests(&record);
    assert_eq!(
        sent[0].1.len(),
        1,
        "one configuration, for the cluster: {sent:?}"
    );
    assert!(sent[0].1[0].0.contains(":cluster:orders"), "{sent:?}");
    let ready = aws.wait_deployment_available(&bg.id).await.unwrap();
    // Aurora PostgreSQL replicates blue/green logically.
    assert_eq!(
        aws.deployment_method(&ready).await.unwrap(),
        Some(ReplicationMethod::Logical)
    );
    let greens = aws.deployment_green(&ready, &key).await.unwrap();
    assert_eq!(greens.len(), 1, "{greens:?}");
    assert_eq!(
        green_problems(&aws, &ready, &key).await,
        Vec::<String>::new()
    );

    // A deployment of pgseal's name that pgseal did not tag is not adopted.
    seed.aurora_cluster("other").await;
    let other = ready.source.replace(":cluster:orders", ":cluster:other");
    seed.rds
        .create_blue_green_deployment()
        .blue_green_deployment_name("pgseal-m3")
        .source(other)
        .send()
        .await
        .unwrap();
    let refused = aws
        .create_blue_green("m3", "aurora:orders", &key, None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("did not make it"), "{refused}");
    aws.delete_deployment(&bg.id, true).await.unwrap();
}
