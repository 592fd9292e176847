//! `pgseal migrate` on the AWS platform, end to end: moto is the control plane (RDS, KMS,
//! CloudWatch Logs) and local PostgreSQL clusters are the data plane, joined by
//! `--connect-via` / `--peer-via`. moto runs no PostgreSQL, so the test plays RDS's part
//! in between: after pgseal has snapshotted the source (the process is stopped at the
//! `before:restore` failpoint), it makes the "restored" server as a base backup of the
//! source and puts that server's first-start facts into moto's CloudWatch Logs, as the
//! lines RDS logs.
#![cfg(feature = "aws")]

use std::process::{Command, Output};
use std::time::Duration;

mod common;

use pgseal_testkit::moto::seed::Seed;
use pgseal_testkit::{MotoServer, TestCluster};

struct Aws {
    moto: MotoServer,
    home: tempfile::TempDir,
}

impl Aws {
    fn new() -> Aws {
        Aws::on(MotoServer::start().unwrap())
    }

    fn on(moto: MotoServer) -> Aws {
        Aws {
            moto,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgseal"));
        c.env("PGSEAL_HOME", self.home.path().join("home"))
            .env("PGSEAL_PASSPHRASE", "cli aws test passphrase")
            .env("PGSEAL_AWS_POLL_MS", "100")
            .env("PGSEAL_AWS_HANDOFF_SECONDS", "20")
            .env_remove("PGSEAL_FAILPOINT")
            .env_remove("PGPASSWORD")
            .envs(self.moto.env())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = common::succeeded(self.run(args), args);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `args` with the target reached through `route` (pgseal and the source's
    /// server alike), which must succeed.
    fn ok_via(&self, args: &[&str], route: &str) {
        let out = self
            .command(args)
            .env("PGSEAL_CONNECT_VIA", route)
            .env("PGSEAL_PEER_VIA", route)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    fn ledger(&self) -> String {
        self.home.path().join("ledger").display().to_string()
    }

    /// Verifies the ledger at `url`: `acknowledged` transactions, each there once, and
    /// nothing else.
    fn assert_all_landed(&self, url: &str, acknowledged: u64) {
        let v = self.verify(url);
        pgseal_testkit::assert_ledger_whole(&v, Some(acknowledged), url);
    }

    /// `workload run` on the ledger at `url`: `rate` transactions a second from `clients`
    /// clients for `seconds`, summed up as JSON.
    fn workload(&self, url: &str, rate: u32, clients: u32, seconds: u32) -> Command {
        self.command(&[
            "workload",
            "run",
            "--url",
            url,
            "--ledger",
            &self.ledger(),
            "--rate",
            &rate.to_string(),
            "--clients",
            &clients.to_string(),
            "--duration",
            &seconds.to_string(),
            "--json",
        ])
    }

    /// The same started in the background, its output piped (see [`WaitRef`]).
    fn spawn_workload(
        &self,
        url: &str,
        rate: u32,
        clients: u32,
        seconds: u32,
    ) -> std::process::Child {
        self.workload(url, rate, clients, seconds)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn verify(&self, url: &str) -> serde_json::Value {
        let out = self
            .command(&[
                "workload",
                "verify",
                "--url",
                url,
                "--ledger",
                &self.ledger(),
                "--json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("verify: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs `sql` on `cluster`'s `postgres` database.
fn exec(rt: &tokio::runtime::Runtime, cluster: &TestCluster, sql: &str) {
    rt.block_on(async {
        cluster
            .connect("postgres")
            .await
            .unwrap()
            .batch_execute(sql)
            .await
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn route(id: &str, cluster: &TestCluster) -> String {
    format!("{id}=127.0.0.1:{}", cluster.port())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Plays RDS's part in a restore that moto cannot: `target_id`'s server, a copy of
/// `source` taken now, whose first start logs where its WAL ends, in moto's CloudWatch
/// Logs as RDS logs it. Returns the server and its `redo done at` line.
fn rds_restores(
    rt: &tokio::runtime::Runtime,
    seed: &Seed,
    source: &TestCluster,
    target_id: &str,
) -> (TestCluster, String) {
    let target = source
        .restore_copy(&[
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "10".into()),
            ("max_wal_senders".into(), "10".into()),
            ("fsync".into(), "off".into()),
        ])
        .unwrap();
    // What RDS logs at the first start of a restored crash copy: `redo starts at`,
    // `invalid record length at END` and `redo done at`. A copy recovered from a backup label may end its
    // recovery without the second line, so the test writes it from the copy's own end
    // of WAL (pg_last_wal_replay_lsn), checked against the real line when there is one.
    let log = target.log_text();
    let end: String = rt.block_on(async {
        let c = target.connect("postgres").await.unwrap();
        pgseal_testkit::scalar(&c, "SELECT pg_last_wal_replay_lsn()::text").await
    });
    let redo = log
        .lines()
        .find(|l| l.contains("redo done at"))
        .unwrap_or_else(|| panic!("no redo line: {log}"))
        .to_string();
    if let Some(real) = log.lines().find(|l| l.contains("invalid record length at")) {
        assert!(real.contains(&format!("at {end}:")), "{real} vs {end}");
    }
    let end_line = format!("LOG:  invalid record length at {end}: wanted 24, got 0");
    let starts = log
        .lines()
        .find(|l| l.contains("redo starts at"))
        .unwrap_or_else(|| panic!("no redo starts line: {log}"))
        .to_string();
    // In the order PostgreSQL logs a crash start: the end line before `redo done at`.
    rt.block_on(seed.log_lines(
        &format!("/aws/rds/instance/{target_id}/postgresql"),
        &[starts.as_str(), end_line.as_str(), redo.as_str()],
    ));
    (target, redo)
}

/// What [`cut_over`] leaves: the two servers, the workload's summary, the routes.
struct CutOver {
    source: TestCluster,
    target: TestCluster,
    run: serde_json::Value,
    via: String,
}

/// Migrates `rds:shop` (data plane: a local cluster) under the ledger workload, cuts over
/// by rename and checks every acknowledged transaction is on the target once.
fn cut_over(aws: &Aws, rt: &tokio::runtime::Runtime, seed: &Seed) -> CutOver {
    let key_arn = rt.block_on(seed.key("alias/pgseal-e2e"));
    rt.block_on(seed.rds_instance("shop", None));
    let source = TestCluster::start().unwrap();
    let source_url = source.url("postgres");

    // Bad input first: an unknown key is refused before anything is made.
    let out = aws.run(&[
        "migrate",
        "start",
        "--source",
        "rds:shop",
        "--key",
        "alias/no-such-key",
        "--name",
        "bad",
        "--connect-via",
        &route("shop", &source),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("alias/no-such-key"),
        "{}",
        stderr(&out)
    );
    assert!(rt.block_on(seed.snapshots()).is_empty());
    // The plan reads the source through the route and finds nothing blocking.
    let plan = aws.ok(&[
        "migrate",
        "plan",
        "--source",
        "rds:shop",
        "--key",
        "alias/pgseal-e2e",
        "--connect-via",
        &route("shop", &source),
    ]);
    assert!(plan.contains("Ready"), "{plan}");
    // An unknown source too.
    let out = aws.run(&["migrate", "start", "--source", "rds:nope", "--name", "bad"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));

    let mut writes = aws.spawn_workload(&source_url, 150, 3, 12);
    std::thread::sleep(Duration::from_secs(2));

    // Publication, slot, snapshot and its encrypted copy; stopped before the restore.
    let start = [
        "migrate",
        "start",
        "--source",
        "rds:shop",
        "--key",
        "alias/pgseal-e2e",
        "--name",
        "e2e",
        "--connect-via",
        &route("shop", &source),
        "--peer-via",
        &route("shop", &source),
    ];
    let out = aws
        .command(&start)
        .env("PGSEAL_FAILPOINT", "before:restore")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("before:restore"), "{}", stderr(&out));
    assert_eq!(rt.block_on(seed.snapshots()), ["pgseal-e2e"]);

    // RDS's part: the restored server, from a copy of the source taken after the slot,
    // under the writes; its first start logs where its WAL ends.
    let (target, redo) = rds_restores(rt, seed, &source, "shop-enc");

    let target_route = route("shop-enc", &target);
    aws.ok_via(&["migrate", "resume", "e2e"], &target_route);

    let run: serde_json::Value =
        serde_json::from_slice(&writes.wait_with_output_ref().stdout).unwrap();
    assert!(run["acknowledged"].as_u64().unwrap() > 300, "{run}");
    let target_url = target.url("postgres");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = aws.verify(&target_url);
        if v["missing"] == 0 && v["duplicated"] == 0 && v["unexpected"] == 0 {
            assert_eq!(v["acknowledged"], run["acknowledged"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never caught up: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The target is encrypted under the key, checked again at cutover; cutover renames.
    aws.ok_via(&["migrate", "cutover", "e2e"], &target_route);
    let shop = rt.block_on(seed.instance("shop")).unwrap();
    assert_eq!(shop.storage_encrypted(), Some(true));
    assert_eq!(shop.kms_key_id(), Some(key_arn.as_str()));
    let old = rt.block_on(seed.instance("shop-pre-pgseal")).unwrap();
    assert_ne!(old.storage_encrypted(), Some(true));
    assert!(rt.block_on(seed.instance("shop-enc")).is_none());
    let status = aws.json(&["migrate", "status", "e2e"]);
    assert_eq!(status["migration"]["phase"], "cut_over", "{status}");
    // The guard had its `redo done at`, logged after the end line as PostgreSQL does.
    let redo_line = redo.split("redo done at ").nth(1).unwrap_or_default();
    let redo_lsn = status["handoff"]["redo_done_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no redo_done_at: {status}"));
    assert!(redo_line.starts_with(redo_lsn), "{redo_lsn} vs {redo_line}");

    // Every acknowledged transaction is on the target exactly once.
    aws.assert_all_landed(&target_url, run["acknowledged"].as_u64().unwrap());
    CutOver {
        source,
        target,
        run,
        via: target_route,
    }
}

#[test]
fn an_rds_migration_under_live_writes_cuts_over_by_rename_with_nothing_lost() {
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    let CutOver {
        source,
        target,
        via,
        ..
    } = cut_over(&aws, &rt, &seed);

    // Cleanup removes the replication objects on both sides and stops the old source;
    // the renames stay known.
    aws.ok_via(&["migrate", "cleanup", "e2e", "--retire-source"], &via);
    let left: i64 = rt.block_on(async {
        let s = source.connect("template1").await.unwrap();
        let t = target.connect("postgres").await.unwrap();
        let on_source: i64 = pgseal_testkit::scalar(&s, "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)").await;
        let on_target: i64 = pgseal_testkit::scalar(&t, "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_subscription)").await;
        on_source + on_target
    });
    assert_eq!(left, 0);
    assert!(rt.block_on(seed.snapshots()).is_empty());
    let old = rt.block_on(seed.instance("shop-pre-pgseal")).unwrap();
    assert_eq!(old.db_instance_status(), Some("stopped"));
    assert_eq!(
        rt.block_on(seed.instance("shop"))
            .unwrap()
            .db_instance_status(),
        Some("available")
    );
}

#[test]
fn an_rds_rollback_renames_back_and_keeps_what_was_written_on_the_target() {
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    let CutOver {
        source,
        target,
        run,
        via,
    } = cut_over(&aws, &rt, &seed);
    // Applications write to the target after the cutover (the same ledger, appended).
    let after = aws
        .workload(&target.url("postgres"), 100, 2, 3)
        .output()
        .unwrap();
    assert!(after.status.success(), "{}", stderr(&after));
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert!(after["acknowledged"].as_u64().unwrap() > 100, "{after}");

    aws.ok_via(&["migrate", "rollback", "e2e"], &via);
    // The names are back: applications reach the source under its own name again.
    assert_ne!(
        rt.block_on(seed.instance("shop"))
            .unwrap()
            .storage_encrypted(),
        Some(true)
    );
    assert_eq!(
        rt.block_on(seed.instance("shop-enc"))
            .unwrap()
            .storage_encrypted(),
        Some(true)
    );
    assert!(rt.block_on(seed.instance("shop-pre-pgseal")).is_none());
    // Everything acknowledged before and after the cutover is on the source, once.
    aws.assert_all_landed(
        &source.url("postgres"),
        run["acknowledged"].as_u64().unwrap() + after["acknowledged"].as_u64().unwrap(),
    );
    // Cleanup after a rollback deletes the abandoned encrypted target.
    aws.ok_via(&["migrate", "cleanup", "e2e"], &via);
    assert!(rt.block_on(seed.instance("shop-enc")).is_none());
    assert!(rt.block_on(seed.instance("shop")).is_some());
}

#[test]
fn an_aurora_target_that_is_not_encrypted_is_refused_before_any_cutover() {
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    rt.block_on(seed.key("alias/aurora-e2e"));
    rt.block_on(seed.aurora_cluster("orders"));
    let source = TestCluster::start().unwrap();

    let out = aws.run(&[
        "migrate",
        "start",
        "--source",
        "aurora:orders",
        "--key",
        "alias/aurora-e2e",
        "--name",
        "aur",
        "--connect-via",
        &route("orders", &source),
    ]);
    // moto restores the cluster with StorageEncrypted=false despite KmsKeyId.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("NOT encrypted"), "{}", stderr(&out));
    let out = aws.run(&["migrate", "cutover", "aur", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(3), "{text}{}", stderr(&out));
    assert!(text.contains("NOT encrypted"), "{text}");
    // Abort removes the cluster, its writer and the snapshot.
    aws.ok(&["migrate", "abort", "aur"]);
    assert!(rt.block_on(seed.instance("orders-enc-writer")).is_none());
}

/// How many `CreateBlueGreenDeployment` requests the patched moto recorded, and the
/// (blue ARN, key) pairs of the last one.
fn blue_green_requests(record: &std::path::Path) -> (usize, Vec<(String, String)>) {
    let all = pgseal_testkit::moto::blue_green_requests(record);
    let last = all
        .last()
        .map(|(_, pairs)| pairs.clone())
        .unwrap_or_default();
    (all.len(), last)
}

#[test]
fn a_blue_green_start_puts_green_under_the_key_adopts_its_deployment_after_a_kill_and_abort_deletes_it()
 {
    // moto patched to model TargetKmsKeyId, which moto 5.2.5 ignores (see the testkit's
    // moto/bluegreen_target_key.py); it records what pgseal sent.
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let aws = Aws::on(MotoServer::start_with_blue_green_target_keys(&record).unwrap());
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    let key_arn = rt.block_on(seed.key("alias/bg-e2e"));
    let shop = rt.block_on(seed.rds_instance("shop", None));
    let replica = rt.block_on(seed.rds_read_replica("shop-r1", "shop"));
    let source = TestCluster::start().unwrap();
    let via = route("shop", &source);

    // The plan lists the strategy and says it is chosen only when asked for.
    let plan = aws.json(&[
        "migrate",
        "plan",
        "--source",
        "rds:shop",
        "--key",
        "alias/bg-e2e",
        "--connect-via",
        &via,
    ]);
    let choices = plan["strategies"].as_array().expect("strategies");
    let bg = choices
        .iter()
        .find(|c| c["strategy"] == "blue-green")
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(bg["possible"], true, "{plan}");
    assert_eq!(plan["recommended"], "snapshot", "{plan}");

    // Killed once the deployment was asked for, before the journal knew it.
    let start = bg_start("rds:shop", &via);
    let out = aws
        .command(&start)
        .env("PGSEAL_FAILPOINT", "after:create_deployment")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("after:create_deployment"),
        "{}",
        stderr(&out)
    );
    let (requests, sent) = blue_green_requests(&record);
    assert_eq!(requests, 1);
    // One configuration for the instance and one for its read replica, each under the key.
    assert_eq!(
        sent,
        [
            (shop.db_instance_arn().unwrap().to_string(), key_arn.clone()),
            (
                replica.db_instance_arn().unwrap().to_string(),
                key_arn.clone()
            ),
        ]
    );

    // Resume finds the deployment by its name and tag: no second request.
    aws.ok(&["migrate", "resume", "bg"]);
    assert_eq!(blue_green_requests(&record).0, 1);
    let status = aws.json(&["migrate", "status", "bg"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    let done = |step: &str| {
        status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step && s["outcome"] == "done")
            .unwrap_or_else(|| panic!("{step} not done: {status}"))["outputs"]
            .clone()
    };
    assert_eq!(done("create_deployment")["adopted"], true, "{status}");
    let checked = done("green_ready")["green"].clone();
    assert_eq!(checked.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(checked[0]["problem"], serde_json::Value::Null, "{status}");
    assert_eq!(checked[0]["key_id"], key_arn.as_str(), "{status}");

    // Green is encrypted under the key's ARN, as RDS describes it.
    let bgd = rt
        .block_on(seed.rds.describe_blue_green_deployments().send())
        .unwrap();
    let green_arn = bgd.blue_green_deployments()[0]
        .target()
        .unwrap()
        .to_string();
    let green_id = green_arn.rsplit(':').next().unwrap().to_string();
    let green = rt.block_on(seed.instance(&green_id)).unwrap();
    assert_eq!(green.storage_encrypted(), Some(true));
    assert_eq!(green.kms_key_id(), Some(key_arn.as_str()));

    // No switchover before green was compared with blue.
    let out = aws.run(&["migrate", "cutover", "bg"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("never compared"), "{}", stderr(&out));
    assert!(rt.block_on(seed.instance("shop-old1")).is_none());

    // Abort deletes the deployment and green; blue and its replica stay.
    aws.ok(&["migrate", "abort", "bg"]);
    let left = rt
        .block_on(seed.rds.describe_blue_green_deployments().send())
        .unwrap();
    assert!(left.blue_green_deployments().is_empty());
    assert!(rt.block_on(seed.instance(&green_id)).is_none());
    assert!(rt.block_on(seed.instance("shop")).is_some());
    assert!(rt.block_on(seed.instance("shop-r1")).is_some());
}

/// Plays AWS's part of a blue/green deployment on the data plane: `green` made a real
/// logical replica of `blue` (the schema copied with pg_dump, then a publication of every
/// table and a subscription copying and streaming them), as blue/green replicates on RDS
/// for PostgreSQL. Waits until every table is copied.
fn replicate_into_green(rt: &tokio::runtime::Runtime, blue: &TestCluster, green: &TestCluster) {
    let schema = Command::new(blue.install().program("pg_dump"))
        .args(["--schema-only", "--no-owner", "-d", &blue.url("postgres")])
        .output()
        .unwrap();
    assert!(schema.status.success(), "{}", stderr(&schema));
    rt.block_on(async {
        let b = blue.connect("postgres").await.unwrap();
        let g = green.connect("postgres").await.unwrap();
        // pg_dump's psql meta-commands (`\\restrict`) are not SQL.
        let sql: String = String::from_utf8(schema.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .map(|l| format!("{l}\n"))
            .collect();
        g.batch_execute(&sql).await.unwrap();
        b.batch_execute("CREATE PUBLICATION aws_bg FOR ALL TABLES")
            .await
            .unwrap();
        g.batch_execute(&format!(
            "CREATE SUBSCRIPTION aws_bg CONNECTION '{}' PUBLICATION aws_bg",
            blue.url("postgres").replace("postgresql://", "postgres://")
        ))
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pending: i64 = pgseal_testkit::scalar(
                &g,
                "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
            )
            .await;
            if pending == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "green never copied");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn an_rds_blue_green_at_the_same_version_replicates_physically_without_a_reboot_survives_kills_and_loses_nothing()
 {
    blue_green_end_to_end(Deployment::RdsSameVersion);
}

#[test]
fn an_rds_blue_green_with_an_upgrade_to_17_replicates_logically_and_loses_nothing() {
    blue_green_end_to_end(Deployment::RdsUpgrade);
}

#[test]
fn an_aurora_blue_green_migration_puts_the_green_cluster_under_the_key_and_loses_nothing() {
    blue_green_end_to_end(Deployment::Aurora);
}

/// Which blue/green deployment a test makes, and so how AWS replicates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// RDS for PostgreSQL at the same major version: physical replication.
    RdsSameVersion,
    /// RDS for PostgreSQL upgraded to 17 in the deployment: logical replication.
    RdsUpgrade,
    /// Aurora PostgreSQL: logical replication.
    Aurora,
}

impl Deployment {
    fn physical(self) -> bool {
        self == Deployment::RdsSameVersion
    }
}

/// `pgbench -i` of `url`'s database, then TPC-B at 50 tx/s for `seconds`, in the
/// background.
fn pgbench_on(blue: &TestCluster, url: &str, seconds: u32) -> std::process::Child {
    let program = blue.install().program("pgbench");
    let init = Command::new(&program)
        .args(["-i", "-q", url])
        .output()
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    Command::new(program)
        .args(["-n", "-c", "2", "-j", "1", "-R", "50", "-T"])
        .arg(seconds.to_string())
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A blue/green migration of `shop` (an RDS instance with a read replica, or an Aurora
/// cluster) from start to cleanup under the ledger workload and pgbench on blue; on RDS,
/// pgseal is also killed before and after the switchover request.
///
/// The stand-in plays AWS's data plane: for physical replication green is a real hot
/// standby of blue (`pg_basebackup -R`, streaming), promoted at the switchover as AWS
/// promotes it; for logical replication green subscribes to a publication of every table
/// of blue (on PostgreSQL 17 for the upgrade). It cannot model AWS's own switchover
/// guardrails (its replica-lag and long-transaction checks): pgseal's checks before the
/// request are what the test proves.
fn blue_green_end_to_end(deployment: Deployment) {
    let aurora = deployment == Deployment::Aurora;
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let aws = Aws::on(MotoServer::start_with_blue_green_target_keys(&record).unwrap());
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    let key_arn = rt.block_on(seed.key("alias/bg-e2e"));
    if aurora {
        rt.block_on(seed.aurora_cluster("shop"));
    } else {
        rt.block_on(seed.rds_instance("shop", None));
        rt.block_on(seed.rds_read_replica("shop-r1", "shop"));
    }
    let source = if aurora { "aurora:shop" } else { "rds:shop" };
    // Physical replication needs no logical decoding: blue runs without it, and pgseal
    // must not turn it on (that would take a reboot).
    let blue = if deployment.physical() {
        TestCluster::builder()
            .setting("wal_level", "replica")
            .start()
            .unwrap()
    } else {
        TestCluster::start().unwrap()
    };

    let mut writes = aws.spawn_workload(&blue.url("postgres"), 100, 3, 8);
    let bench_url = blue.url("postgres");
    let bench = pgbench_on(&blue, &bench_url, 8);
    if !deployment.physical() {
        // Logical replication cannot update a table without a key: the DBA gives
        // pgbench's history one, as the plan's limits say.
        exec(
            &rt,
            &blue,
            "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY",
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let via = route("shop", &blue);
    let mut start: Vec<&str> = bg_start(source, &via).to_vec();
    if deployment == Deployment::RdsUpgrade {
        start.extend(["--engine-version", "17"]);
    }

    // The plan names the method and what follows from it.
    let mut plan_args = vec!["migrate", "plan"];
    plan_args.extend(&start[2..]);
    let text = aws.ok(&plan_args);
    assert!(
        text.contains(&format!(
            "blue/green: {} replication",
            if deployment.physical() {
                "physical"
            } else {
                "logical"
            }
        )),
        "{text}"
    );
    let plan = aws.json(&plan_args);
    let bg = &plan["blue_green"];
    let method = if deployment.physical() {
        "physical"
    } else {
        "logical"
    };
    assert_eq!(bg["method"], method, "{plan}");
    assert_eq!(
        bg["needs_logical_replication"],
        !deployment.physical(),
        "{plan}"
    );
    assert_eq!(bg["reboot"], false, "{plan}");
    let limits = bg["limits"].as_array().expect("limits");
    assert!(
        limits
            .iter()
            .any(|l| l["limit"].as_str().unwrap().contains("read-only"))
            == deployment.physical(),
        "{plan}"
    );
    assert!(
        limits.iter().any(|l| l["limit"]
            .as_str()
            .unwrap()
            .contains("DDL is not replicated"))
            != deployment.physical(),
        "{plan}"
    );

    let started = aws.json(&start);
    let bgd = rt
        .block_on(seed.rds.describe_blue_green_deployments().send())
        .unwrap();
    let green_id = bgd.blue_green_deployments()[0]
        .target()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    // What pgseal asked AWS for: the upgrade only where asked, beside the key.
    let sent: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let upgrade = (deployment == Deployment::RdsUpgrade).then_some("17");
    assert_eq!(sent["target_engine_version"].as_str(), upgrade, "{sent}");
    // The method as planned, and as read back from the deployment AWS made.
    let step = |name: &str| {
        started["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .rev()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} step: {started}"))
    };
    assert_eq!(
        step("create_deployment")["outputs"]["plan"]["method"],
        method,
        "{started}"
    );
    assert_eq!(
        step("green_ready")["outputs"]["deployment"]["method"],
        method,
        "{started}"
    );
    if deployment.physical() {
        // No parameter change and no reboot: blue still runs without logical decoding.
        assert_eq!(
            step("create_deployment")["outputs"]["restarted"],
            false,
            "{started}"
        );
        let level: String = rt.block_on(async {
            pgseal_testkit::scalar(&blue.connect("postgres").await.unwrap(), "SHOW wal_level").await
        });
        assert_eq!(level, "replica");
    }
    let green = match deployment {
        Deployment::RdsSameVersion => blue.standby().unwrap(),
        Deployment::RdsUpgrade => {
            let green = TestCluster::builder().major(17).start().unwrap();
            replicate_into_green(&rt, &blue, &green);
            green
        }
        Deployment::Aurora => {
            let green = TestCluster::start().unwrap();
            replicate_into_green(&rt, &blue, &green);
            green
        }
    };
    let via_green = route(&green_id, &green);
    let with_green = |args: &[&str]| {
        aws.command(args)
            .env("PGSEAL_CONNECT_VIA", &via_green)
            .output()
            .unwrap()
    };

    // Green compared with blue while the ledger and pgbench write: clean.
    let out = with_green(&["migrate", "validate", "bg", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], true, "{v}");
    assert!(v["rows"].as_u64().unwrap() > 100, "{v}");

    if deployment.physical() {
        // A hot standby is read-only, so no row can go missing on it by hand; what can go
        // wrong is green not following. Its replay paused while blue writes: validation
        // says so instead of waiting or calling anything clean, and the cutover refuses.
        exec(&rt, &green, "SELECT pg_wal_replay_pause()");
        exec(
            &rt,
            &blue,
            "CREATE TABLE written_while_paused (id int PRIMARY KEY); INSERT INTO written_while_paused VALUES (1)",
        );
        let out = with_green(&["migrate", "validate", "bg", "--json"]);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains("replay of blue's WAL is paused"),
            "{}",
            stderr(&out)
        );
        let out = with_green(&["migrate", "cutover", "bg", "--dry-run"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
        assert!(
            text.contains("the last validation of green did not finish"),
            "{text}"
        );
        exec(&rt, &green, "SELECT pg_wal_replay_resume()");
    } else {
        // A row green lost is found, and the cutover refused with nothing switched.
        let lost: i64 = rt.block_on(async {
            let g = green.connect("postgres").await.unwrap();
            pgseal_testkit::scalar(&g, "DELETE FROM pgseal_ledger_events WHERE txid = (SELECT min(txid) FROM pgseal_ledger_events) RETURNING txid").await
        });
        let out = with_green(&["migrate", "validate", "bg", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["clean"], false, "{v}");
        assert_eq!(v["mismatched_rows"], 1, "{v}");
        let out = with_green(&["migrate", "cutover", "bg"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains("mismatched"), "{}", stderr(&out));
        assert!(rt.block_on(seed.instance("shop-old1")).is_none());
        // Put back (as a repair would) and compared again.
        rt.block_on(async {
            let b = blue.connect("postgres").await.unwrap();
            let row: String = b
                .query_one(
                    "SELECT row_to_json(e)::text FROM pgseal_ledger_events e WHERE txid = $1",
                    &[&lost],
                )
                .await
                .unwrap()
                .get(0);
            let g = green.connect("postgres").await.unwrap();
            g.execute(
                "INSERT INTO pgseal_ledger_events \
                 SELECT * FROM json_populate_record(NULL::pgseal_ledger_events, $1::text::json)",
                &[&row],
            )
            .await
            .unwrap();
        });
    }
    let run: serde_json::Value =
        serde_json::from_slice(&writes.wait_with_output_ref().stdout).unwrap();
    let processed = common::pgbench_processed(bench);
    let out = with_green(&["migrate", "validate", "bg", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], true, "{v}");

    // DDL on blue: physical replication carries it, so the cutover goes ahead; logical
    // replication does not, so the cutover is refused until green has it too (done by
    // hand, as the message says).
    let ddl = "ALTER TABLE pgseal_ledger_accounts ADD COLUMN region text DEFAULT 'eu'";
    exec(&rt, &blue, ddl);
    if !deployment.physical() {
        let out = with_green(&["migrate", "cutover", "bg", "--dry-run"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
        assert!(
            text.contains("DDL ran on blue since green was made") && text.contains("region"),
            "{text}"
        );
        exec(
            &rt,
            &green,
            &format!("SET default_transaction_read_only = off; {ddl}"),
        );
    }
    let out = with_green(&["migrate", "cutover", "bg", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The switchover: AWS blocks blue's writes and moves the names (the writers have
    // ended, as writes on blue would be refused now).
    if !aurora {
        // Killed before the request: resume finds the deployment still available.
        let out = aws
            .command(&["migrate", "cutover", "bg"])
            .env("PGSEAL_CONNECT_VIA", &via_green)
            .env("PGSEAL_FAILPOINT", "cutover:switchover_requested")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let status = aws.json(&["migrate", "status", "bg"]);
        assert_eq!(status["migration"]["phase"], "cutting_over", "{status}");
        aws.ok(&["migrate", "resume", "bg"]);
        let status = aws.json(&["migrate", "status", "bg"]);
        assert_eq!(status["migration"]["phase"], "replicating", "{status}");
        assert!(rt.block_on(seed.instance("shop-old1")).is_none());
        // Killed once AWS had switched, before the journal knew: resume finds it done.
        let out = aws
            .command(&["migrate", "cutover", "bg"])
            .env("PGSEAL_CONNECT_VIA", &via_green)
            .env("PGSEAL_FAILPOINT", "cutover:switched_over")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(rt.block_on(seed.instance("shop-old1")).is_some());
        aws.ok(&["migrate", "resume", "bg"]);
    } else {
        let out = with_green(&["migrate", "cutover", "bg", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["phases"][0]["phase"], "switchover", "{report}");
    }
    if deployment.physical() {
        // AWS promotes green at the switchover; the stand-in does the same once green has
        // replayed everything blue wrote.
        rt.block_on(async {
            let b = blue.connect("postgres").await.unwrap();
            let g = green.connect("postgres").await.unwrap();
            let lsn: String = pgseal_testkit::scalar(&b, "SELECT pg_current_wal_lsn()::text").await;
            loop {
                let caught: bool = pgseal_testkit::scalar(
                    &g,
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                )
                .await;
                if caught {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            g.batch_execute("SELECT pg_promote()").await.unwrap();
            // DDL and the table written while replay was paused came with the WAL.
            let region: i64 = pgseal_testkit::scalar(
                &g,
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'region'",
            )
            .await;
            assert_eq!(region, 1);
            let paused: i64 =
                pgseal_testkit::scalar(&g, "SELECT count(*) FROM written_while_paused").await;
            assert_eq!(paused, 1);
        });
    }
    let status = aws.json(&["migrate", "status", "bg"]);
    assert_eq!(status["migration"]["phase"], "cut_over", "{status}");
    // The name applications use is green now, encrypted under the key; blue is kept.
    let (encrypted, key) = if aurora {
        let c = rt
            .block_on(
                seed.rds
                    .describe_db_clusters()
                    .db_cluster_identifier("shop")
                    .send(),
            )
            .unwrap();
        let c = &c.db_clusters()[0];
        (c.storage_encrypted(), c.kms_key_id().map(str::to_string))
    } else {
        let i = rt.block_on(seed.instance("shop")).unwrap();
        (i.storage_encrypted(), i.kms_key_id().map(str::to_string))
    };
    assert_eq!(encrypted, Some(true));
    assert_eq!(key.as_deref(), Some(key_arn.as_str()));
    // Every acknowledged transaction is on green once, and pgbench's own count.
    aws.assert_all_landed(
        &green.url("postgres"),
        run["acknowledged"].as_u64().unwrap(),
    );
    let history: i64 = rt.block_on(async {
        pgseal_testkit::scalar(
            &green.connect("postgres").await.unwrap(),
            "SELECT count(*) FROM pgbench_history",
        )
        .await
    });
    assert_eq!(history, processed, "pgbench's transactions on green");

    // There is no way back after the platform's switchover.
    let out = aws.run(&["migrate", "rollback", "bg"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no way back"), "{}", stderr(&out));

    // Cleanup deletes the deployment and stops the old blue.
    aws.ok(&["migrate", "cleanup", "bg", "--retire-source"]);
    let left = rt
        .block_on(seed.rds.describe_blue_green_deployments().send())
        .unwrap();
    assert!(left.blue_green_deployments().is_empty());
    let old_status = if aurora {
        let c = rt
            .block_on(
                seed.rds
                    .describe_db_clusters()
                    .db_cluster_identifier("shop-old1")
                    .send(),
            )
            .unwrap();
        c.db_clusters()[0].status().map(str::to_string)
    } else {
        let i = rt.block_on(seed.instance("shop-old1")).unwrap();
        i.db_instance_status().map(str::to_string)
    };
    assert_eq!(old_status.as_deref(), Some("stopped"));
    let status = aws.json(&["migrate", "status", "bg"]);
    assert_eq!(status["migration"]["phase"], "cleaned_up", "{status}");
}

#[test]
fn against_stock_moto_a_blue_green_green_that_is_not_encrypted_is_refused_and_nothing_is_switched()
{
    // Stock moto 5.2.5: green copies blue's (absent) encryption, whatever the request says.
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    rt.block_on(seed.key("alias/bg-e2e"));
    rt.block_on(seed.rds_instance("shop", None));
    let source = TestCluster::start().unwrap();
    let out = aws.run(&bg_start("rds:shop", &route("shop", &source)));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("green is not encrypted under alias/bg-e2e"),
        "{text}"
    );
    assert!(text.contains("StorageEncrypted=false"), "{text}");
    assert!(text.contains("nothing was switched"), "{text}");
    let status = aws.json(&["migrate", "status", "bg"]);
    assert_eq!(status["migration"]["phase"], "failed", "{status}");
    assert!(rt.block_on(seed.instance("shop-old1")).is_none());
    // A local source cannot take this strategy: refused before anything is made.
    let out = aws.run(&[
        "migrate",
        "plan",
        "--source",
        &source.url("postgres"),
        "--strategy",
        "blue-green",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("blue/green deployments are RDS and Aurora's own"),
        "{plan}"
    );
    aws.ok(&["migrate", "abort", "bg"]);
    let left = rt
        .block_on(seed.rds.describe_blue_green_deployments().send())
        .unwrap();
    assert!(left.blue_green_deployments().is_empty());

    // What AWS documents blue/green cannot take, read from the account: a cascading read
    // replica and an RDS Proxy in front of the source (made with boto3, which has EC2's
    // subnets at hand).
    boto3(
        &aws.moto,
        "rds = boto3.client('rds', **kw); ec2 = boto3.client('ec2', **kw)\n\
         vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f'10.0.{i}.0/24')['Subnet']['SubnetId'] for i in (1, 2)]\n\
         rds.create_db_instance_read_replica(DBInstanceIdentifier='shop-r1', SourceDBInstanceIdentifier='shop')\n\
         rds.create_db_instance_read_replica(DBInstanceIdentifier='shop-r2', SourceDBInstanceIdentifier='shop-r1')\n\
         rds.create_db_proxy(DBProxyName='px', EngineFamily='POSTGRESQL', Auth=[{'AuthScheme': 'SECRETS'}], RoleArn='arn:aws:iam::123456789012:role/px', VpcSubnetIds=subnets)\n\
         rds.register_db_proxy_targets(DBProxyName='px', DBInstanceIdentifiers=['shop'])\n",
    );
    let out = aws.run(&[
        "migrate",
        "plan",
        "--source",
        "rds:shop",
        "--key",
        "alias/bg-e2e",
        "--strategy",
        "blue-green",
        "--connect-via",
        &route("shop", &source),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("RDS Proxy px in front of shop"), "{plan}");
    assert!(
        plan.contains("cascading read replica shop-r1 -> shop-r2"),
        "{plan}"
    );
}

/// Runs a boto3 `script` against `moto` (with `kw` holding the endpoint and test
/// credentials), in moto's own Python environment.
fn boto3(moto: &MotoServer, script: &str) {
    let python = pgseal_testkit::moto::moto_program()
        .expect("moto installed")
        .with_file_name("python");
    let out = Command::new(python)
        .arg("-c")
        .arg(format!(
            "import boto3\nkw = dict(endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{script}",
            moto.url()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3: {}", stderr(&out));
}

/// Waits for a child that was spawned with piped output.
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> Output;
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> Output {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        use std::io::Read;
        if let Some(mut s) = self.stdout.take() {
            s.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut s) = self.stderr.take() {
            s.read_to_end(&mut stderr).unwrap();
        }
        let status = self.wait().unwrap();
        assert!(
            status.success(),
            "workload: {}",
            String::from_utf8_lossy(&stderr)
        );
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// `migrate start` of blue/green migration `bg` of `source` under `alias/bg-e2e`,
/// reaching blue through `via`.
fn bg_start<'a>(source: &'a str, via: &'a str) -> [&'a str; 12] {
    [
        "migrate",
        "start",
        "--source",
        source,
        "--key",
        "alias/bg-e2e",
        "--name",
        "bg",
        "--strategy",
        "blue-green",
        "--connect-via",
        via,
    ]
}

/// A fleet on AWS: three RDS instances and one Aurora cluster in one inventory, each
/// planned through its own route to its data plane; a key that does not exist is a
/// blocker of its source alone.
#[test]
fn a_fleet_of_three_rds_instances_and_an_aurora_cluster_is_planned_in_one_table() {
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    rt.block_on(seed.key("alias/fleet-e2e"));
    let mut clusters = Vec::new();
    let mut text = String::from("[defaults]\nkey = \"alias/fleet-e2e\"\n");
    for (i, id) in ["shop", "billing", "audit", "orders"]
        .into_iter()
        .enumerate()
    {
        let (kind, wave) = if id == "orders" {
            rt.block_on(seed.aurora_cluster(id));
            ("aurora", 2)
        } else {
            rt.block_on(seed.rds_instance(id, None));
            ("rds", 1)
        };
        let cluster = TestCluster::start().unwrap();
        // Each data plane a different size, so that the rows differ.
        exec(
            &rt,
            &cluster,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {}) g",
                (i + 1) * 20_000
            ),
        );
        let key = if id == "audit" {
            "key = \"alias/no-such-key\"\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "\n[[source]]\nname = \"{id}\"\nsource = \"{kind}:{id}\"\nwave = {wave}\n{key}options = {{ connect_via = [\"{}\"] }}\n",
            route(id, &cluster)
        ));
        clusters.push(cluster);
    }
    let file = aws.home.path().join("fleet.toml");
    std::fs::write(&file, &text).unwrap();
    let file = file.display().to_string();
    let out = aws.run(&["fleet", "plan", &file, "--parallel", "2", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = plan["sources"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{plan}");
    let mut sizes = Vec::new();
    for r in rows {
        assert_eq!(r["planned"], true, "{r}");
        assert!(r["server_version"].as_str().is_some(), "{r}");
        sizes.push(r["source_bytes"].as_u64().unwrap());
        let blockers = r["blockers"].as_array().unwrap();
        if r["name"] == "audit" {
            assert!(
                blockers
                    .iter()
                    .any(|b| b.as_str().unwrap().contains("alias/no-such-key")),
                "{r}"
            );
        } else {
            assert!(blockers.is_empty(), "{r}");
        }
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    assert_eq!(rows[3]["source"], "aurora:orders");
    assert_eq!(rows[3]["wave"], 2);
    // Planning made nothing.
    assert!(rt.block_on(seed.snapshots()).is_empty());
    assert!(rt.block_on(seed.instance("shop-enc")).is_none());
    let text = String::from_utf8_lossy(&aws.run(&["fleet", "plan", &file]).stdout).to_string();
    assert!(text.contains("audit: BLOCKER"), "{text}");
}

/// A fleet on AWS started two at a time: each RDS migration stops before its restore
/// (moto restores nothing), the test plays RDS's part for each, and the same `fleet start`
/// resumes them to replicating; the Aurora source, whose target moto leaves unencrypted,
/// fails alone, both times, without holding the others up.
#[test]
fn a_fleet_on_aws_starts_two_at_a_time_resumes_after_the_restores_and_fails_one_alone() {
    let aws = Aws::new();
    let rt = runtime();
    let seed = rt.block_on(Seed::new(&aws.moto));
    rt.block_on(seed.key("alias/fleet-e2e"));
    rt.block_on(seed.aurora_cluster("orders"));
    let mut text = String::from("[defaults]\nkey = \"alias/fleet-e2e\"\n");
    let mut sources = Vec::new();
    for (i, id) in ["shop", "billing", "audit", "orders"]
        .into_iter()
        .enumerate()
    {
        let cluster = TestCluster::start().unwrap();
        exec(
            &rt,
            &cluster,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, {}) g",
                (i + 1) * 1000
            ),
        );
        let kind = if id == "orders" {
            "aurora"
        } else {
            rt.block_on(seed.rds_instance(id, None));
            "rds"
        };
        let via = route(id, &cluster);
        text.push_str(&format!(
            "\n[[source]]\nname = \"{id}\"\nsource = \"{kind}:{id}\"\noptions = {{ connect_via = [\"{via}\"], peer_via = [\"{via}\"] }}\n"
        ));
        sources.push((id, cluster));
    }
    let file = aws.home.path().join("fleet.toml");
    std::fs::write(&file, &text).unwrap();
    let file = file.display().to_string();
    let outcome = |out: &Output| -> Vec<(String, String, String)> {
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(out)));
        v["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["migration"].as_str().unwrap().to_string(),
                    m["action"].as_str().unwrap().to_string(),
                    m["detail"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    // Each stops before its restore (the failpoint reaches every migration the fleet
    // runs).
    let first = aws
        .command(&["fleet", "start", &file, "--parallel", "2", "--json"])
        .env("PGSEAL_FAILPOINT", "before:restore")
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    for (name, action, detail) in outcome(&first) {
        assert_eq!(action, "failed", "{name}: {detail}");
        assert!(detail.contains("before:restore"), "{name}: {detail}");
    }
    let mut snapshots = rt.block_on(seed.snapshots());
    snapshots.sort();
    assert!(
        ["pgseal-audit", "pgseal-billing", "pgseal-shop"]
            .iter()
            .all(|s| snapshots.iter().any(|have| have == s)),
        "{snapshots:?}"
    );

    // RDS restores each; the same command again resumes them.
    let mut targets = Vec::new();
    for (id, cluster) in sources.iter().filter(|(id, _)| *id != "orders") {
        let (target, _) = rds_restores(&rt, &seed, cluster, &format!("{id}-enc"));
        targets.push((*id, target));
    }
    let routes: Vec<String> = targets
        .iter()
        .map(|(id, t)| route(&format!("{id}-enc"), t))
        .collect();
    let again = aws
        .command(&["fleet", "start", &file, "--parallel", "2", "--json"])
        .env("PGSEAL_CONNECT_VIA", routes.join(","))
        .env("PGSEAL_PEER_VIA", routes.join(","))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    for (name, action, detail) in outcome(&again) {
        if name == "orders" {
            assert_eq!(action, "failed", "{name}: {detail}");
            assert!(detail.contains("NOT encrypted"), "{name}: {detail}");
        } else {
            assert_eq!(
                (action.as_str(), detail.as_str()),
                ("resumed", "replicating")
            );
        }
    }
    // Each target holds its source's rows.
    for ((id, source), (_, target)) in sources.iter().zip(&targets) {
        let count = |c: &TestCluster| -> i64 {
            rt.block_on(async {
                let client = c.connect("postgres").await.unwrap();
                pgseal_testkit::scalar(&client, "SELECT count(*) FROM public.t").await
            })
        };
        assert_eq!(count(source), count(target), "{id}");
    }
    let status = aws.json(&["fleet", "status", &file]);
    let phases: Vec<&str> = status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases[..3], ["replicating"; 3], "{status}");
}
