//! The KMS key a target is encrypted under: checked before anything is changed.

use serde::Serialize;

use crate::error::{AwsError, Result, api};
use crate::platform::AwsPlatform;

/// The default key of an AWS migration: the AWS managed key for RDS.
pub const DEFAULT_KEY: &str = "alias/aws/rds";

/// What KMS says about a key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// The key's ARN (what RDS reports as `KmsKeyId` once encrypted).
    pub arn: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, ...
    pub state: String,
    /// `AWS` for AWS managed keys, `CUSTOMER` for customer managed ones.
    pub manager: String,
}

impl AwsPlatform {
    /// Describes `key` (id, ARN, alias name or alias ARN); fails with [`AwsError::Key`]
    /// unless it exists and is enabled.
    pub async fn check_key(&self, key: &str) -> Result<KeyInfo> {
        let out = self
            .kms
            .describe_key()
            .key_id(key)
            .send()
            .await
            .map_err(|e| match api("DescribeKey", e) {
                AwsError::Key(m) | AwsError::NotFound(m) => AwsError::Key(format!(
                    "KMS key {key} cannot be used: {m}; list keys with `aws kms list-aliases`"
                )),
                other => other,
            })?;
        let meta = out
            .key_metadata()
            .ok_or_else(|| AwsError::Key(format!("KMS returned no metadata for {key}")))?;
        let info = KeyInfo {
            arn: meta.arn().unwrap_or(meta.key_id()).to_string(),
            state: meta
                .key_state()
                .map_or_else(|| "unknown".to_string(), |s| s.as_str().to_string()),
            manager: meta
                .key_manager()
                .map_or_else(|| "unknown".to_string(), |m| m.as_str().to_string()),
        };
        if info.state != "Enabled" || !meta.enabled() {
            return Err(AwsError::Key(format!(
                "KMS key {key} ({}) is {}; enable it or choose another --key",
                info.arn, info.state
            )));
        }
        Ok(info)
    }
}
