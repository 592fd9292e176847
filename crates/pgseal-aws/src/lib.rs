//! The AWS platform of pgseal: RDS for PostgreSQL and Aurora PostgreSQL through the AWS
//! SDK for Rust, implementing [`pgseal_platform::Platform`] so the migration engine runs
//! the same steps it runs locally.
//!
//! | engine asks for | RDS | Aurora |
//! |---|---|---|
//! | snapshot under a key | `CreateDBSnapshot`, `CopyDBSnapshot(KmsKeyId)` | the cluster forms |
//! | restore | `RestoreDBInstanceFromDBSnapshot` with the source's class, groups and the `postgresql` log export | `RestoreDBClusterFromSnapshot(KmsKeyId)` + a writer |
//! | handoff LSN | `invalid record length at` in CloudWatch Logs (log files as fallback) | `aurora_volume_logical_start_lsn()` |
//! | `wal_level = logical` | a custom parameter group with `rds.logical_replication = 1` | its cluster form |
//! | blue/green under a key ([`bluegreen`]) | `CreateBlueGreenDeployment` with a `TargetKmsKeyId` for the instance and each read replica | the same for the cluster |
//!
//! Cutover keeps applications' endpoints by renaming ([`AwsPlatform::rename`]): the source
//! becomes `<id>-pre-pgseal` and the target takes `<id>`. Every wait reports progress and
//! has a timeout; running the command again resumes it.

pub mod bluegreen;
pub mod error;
pub mod handoff;
pub mod instances;
pub mod kms;
pub mod params;
pub mod platform;
pub mod settings;
pub mod snapshots;
pub mod wait;

pub use error::AwsError;
pub use kms::{DEFAULT_KEY, KeyInfo};
pub use platform::{AwsPlatform, Described};
pub use settings::{AwsSettings, Flavor, Routes, parse_route, parse_source};

/// The suffix the source gets when the target takes its name at cutover.
pub const RETIRED_SUFFIX: &str = "-pre-pgseal";
