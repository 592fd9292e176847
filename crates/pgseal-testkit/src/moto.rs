//! A real AWS-compatible endpoint for tests: the `moto` server (PyPI `moto[server]`, put
//! into `.tools/moto` by `scripts/setup`), started on a free loopback port and killed on
//! `Drop`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key tests use (moto accepts any).
pub const ACCESS_KEY: &str = "testing";
/// The region tests use.
pub const REGION: &str = "us-east-1";

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// Where the `moto_server` program is: `PGSEAL_MOTO_SERVER`, the set-up script's virtual
/// environment, or `PATH`.
pub fn moto_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGSEAL_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/moto/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    pgseal_exec::find_program("moto_server")
}

/// What a server started by [`MotoServer::start_with_blue_green_target_keys`] recorded:
/// per `CreateBlueGreenDeployment` request, the blue source and its `(SourceArn,
/// TargetKmsKeyId)` configurations, in the order received.
pub fn blue_green_requests(record: &std::path::Path) -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let pairs = v["configurations"]
                .as_array()
                .map(|a| a.iter().map(|p| (text(&p[0]), text(&p[1]))).collect())
                .unwrap_or_default();
            (text(&v["source"]), pairs)
        })
        .collect()
}

fn not_installed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "moto_server not found: run `bash scripts/setup` (it installs moto[server] into .tools/moto)",
    )
}

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> std::io::Result<MotoServer> {
        let program = moto_program().ok_or_else(not_installed)?;
        MotoServer::spawn(Command::new(program))
    }

    /// Starts moto patched to model what moto 5.2.5 lacks of `CreateBlueGreenDeployment`:
    /// each blue resource's green encrypted under its `TargetKmsKeyId`
    /// (`moto/bluegreen_target_key.py` beside this crate says exactly what it changes).
    /// Each request's configurations are appended as JSON lines to `record`.
    pub fn start_with_blue_green_target_keys(
        record: &std::path::Path,
    ) -> std::io::Result<MotoServer> {
        let program = moto_program().ok_or_else(not_installed)?;
        // The server's own interpreter: `moto_server` sits beside it in the environment.
        let python = program.with_file_name("python");
        if !python.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no python beside {}", program.display()),
            ));
        }
        let patch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto/bluegreen_target_key.py");
        let mut command = Command::new(python);
        command
            .arg(patch)
            .env("PGSEAL_MOTO_BLUEGREEN_RECORD", record);
        MotoServer::spawn(command)
    }

    fn spawn(mut command: Command) -> std::io::Result<MotoServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = MotoServer { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "moto_server exited at start ({status})"
                )));
            }
            if started.elapsed() > Duration::from_secs(30) {
                server.child.kill().ok();
                return Err(std::io::Error::other(
                    "moto_server did not listen within 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a process that talks to this server with the AWS SDK: static test
    /// credentials, the region and the endpoint, and one attempt per call (moto answers
    /// some errors with HTTP 500, which the SDK would otherwise retry).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_MAX_ATTEMPTS", "1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("PGSEAL_AWS_MAX_ATTEMPTS", "1".to_string()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Puts the things a test needs into a moto server with the AWS SDK, as an operator's
/// tooling would have made them: instances, clusters, keys, log lines.
#[cfg(feature = "aws")]
pub mod seed {
    use aws_sdk_rds::types::DbInstance;

    use super::{ACCESS_KEY, MotoServer, REGION};

    /// SDK clients bound to one moto server.
    #[derive(Debug, Clone)]
    pub struct Seed {
        /// RDS.
        pub rds: aws_sdk_rds::Client,
        /// KMS.
        pub kms: aws_sdk_kms::Client,
        /// CloudWatch Logs.
        pub logs: aws_sdk_cloudwatchlogs::Client,
    }

    /// The master password of every seeded instance (moto runs no server).
    pub const MASTER_PASSWORD: &str = "moto-master-pw";

    impl Seed {
        /// Clients for `moto`, with static test credentials and one attempt per call.
        pub async fn new(moto: &MotoServer) -> Seed {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(REGION))
                .endpoint_url(moto.url())
                .credentials_provider(aws_sdk_rds::config::Credentials::new(
                    ACCESS_KEY,
                    ACCESS_KEY,
                    None,
                    None,
                    "pgseal-testkit",
                ))
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
                .load()
                .await;
            Seed {
                rds: aws_sdk_rds::Client::new(&config),
                kms: aws_sdk_kms::Client::new(&config),
                logs: aws_sdk_cloudwatchlogs::Client::new(&config),
            }
        }

        /// A customer managed key with `alias` (`alias/NAME`); returns its ARN.
        pub async fn key(&self, alias: &str) -> String {
            let meta = self
                .kms
                .create_key()
                .description(format!("pgseal test key {alias}"))
                .send()
                .await
                .expect("CreateKey")
                .key_metadata
                .expect("key metadata");
            self.kms
                .create_alias()
                .alias_name(alias)
                .target_key_id(meta.key_id())
                .send()
                .await
                .expect("CreateAlias");
            meta.arn().expect("key ARN").to_string()
        }

        /// An RDS for PostgreSQL 15 instance `id` on the default parameter group,
        /// encrypted under `key` when given.
        pub async fn rds_instance(&self, id: &str, key: Option<&str>) -> DbInstance {
            self.rds
                .create_db_instance()
                .db_instance_identifier(id)
                .engine("postgres")
                .engine_version("15.4")
                .db_instance_class("db.t3.micro")
                .master_username("postgres")
                .master_user_password(MASTER_PASSWORD)
                .allocated_storage(20)
                .set_storage_encrypted(key.map(|_| true))
                .set_kms_key_id(key.map(str::to_string))
                .send()
                .await
                .expect("CreateDBInstance")
                .db_instance
                .expect("instance")
        }

        /// A read replica `id` of RDS instance `source`.
        pub async fn rds_read_replica(&self, id: &str, source: &str) -> DbInstance {
            self.rds
                .create_db_instance_read_replica()
                .db_instance_identifier(id)
                .source_db_instance_identifier(source)
                .send()
                .await
                .expect("CreateDBInstanceReadReplica")
                .db_instance
                .expect("replica")
        }

        /// An Aurora PostgreSQL cluster `id` with a writer `<id>-1`.
        pub async fn aurora_cluster(&self, id: &str) {
            self.rds
                .create_db_cluster()
                .db_cluster_identifier(id)
                .engine("aurora-postgresql")
                .engine_version("15.4")
                .master_username("postgres")
                .master_user_password(MASTER_PASSWORD)
                .send()
                .await
                .expect("CreateDBCluster");
            self.rds
                .create_db_instance()
                .db_instance_identifier(format!("{id}-1"))
                .db_cluster_identifier(id)
                .engine("aurora-postgresql")
                .db_instance_class("db.r6g.large")
                .send()
                .await
                .expect("CreateDBInstance (writer)");
        }

        /// RDS instance `id`, if it exists.
        pub async fn instance(&self, id: &str) -> Option<DbInstance> {
            self.rds
                .describe_db_instances()
                .db_instance_identifier(id)
                .send()
                .await
                .ok()?
                .db_instances()
                .first()
                .cloned()
        }

        /// The identifiers of every manual RDS snapshot (moto also makes automated ones).
        pub async fn snapshots(&self) -> Vec<String> {
            self.rds
                .describe_db_snapshots()
                .snapshot_type("manual")
                .send()
                .await
                .expect("DescribeDBSnapshots")
                .db_snapshots()
                .iter()
                .filter_map(|s| s.db_snapshot_identifier().map(str::to_string))
                .collect()
        }

        /// Puts `lines` into log group `group` as RDS exports a server log.
        pub async fn log_lines(&self, group: &str, lines: &[&str]) {
            self.logs
                .create_log_group()
                .log_group_name(group)
                .send()
                .await
                .ok();
            self.logs
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name("postgresql.log")
                .send()
                .await
                .ok();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis() as i64;
            let events: Vec<_> = lines
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                        .timestamp(now + i as i64)
                        .message(*line)
                        .build()
                        .expect("a log event")
                })
                .collect();
            self.logs
                .put_log_events()
                .log_group_name(group)
                .log_stream_name("postgresql.log")
                .set_log_events(Some(events))
                .send()
                .await
                .expect("PutLogEvents");
        }
    }
}
