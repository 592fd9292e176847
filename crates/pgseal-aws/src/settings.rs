//! What the AWS platform is told: which API endpoint and region, how long to wait, and how
//! to reach instances' SQL endpoints (`--connect-via`, `--peer-via`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::AwsError;

/// Which kind of AWS database a migration's source (and so its target) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// An RDS for PostgreSQL DB instance (`rds:ID`).
    Rds,
    /// An Aurora PostgreSQL DB cluster (`aurora:ID`).
    Aurora,
}

impl Flavor {
    /// The source prefix that names this flavor.
    pub fn prefix(self) -> &'static str {
        match self {
            Flavor::Rds => "rds:",
            Flavor::Aurora => "aurora:",
        }
    }
}

/// Parses `rds:ID` or `aurora:ID`; `None` when `source` names no AWS database.
pub fn parse_source(source: &str) -> Option<(Flavor, &str)> {
    [Flavor::Rds, Flavor::Aurora]
        .into_iter()
        .find_map(|f| source.strip_prefix(f.prefix()).map(|id| (f, id)))
}

/// Checks an RDS identifier: 1–63 letters, digits or hyphens, starting with a letter, no
/// two hyphens in a row, not ending with one (the RDS rule).
pub fn check_identifier(id: &str) -> Result<(), AwsError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AwsError::InvalidInput(format!(
            "{id:?} is not an RDS identifier: 1-63 letters, digits or hyphens, starting with a letter, without two hyphens in a row or a trailing one"
        )))
    }
}

/// Parses `ID=HOST:PORT` (one `--connect-via` or `--peer-via`).
pub fn parse_route(text: &str) -> Result<(String, String), AwsError> {
    let bad = || {
        AwsError::InvalidInput(format!(
            "{text:?} is not ID=HOST:PORT (e.g. prod=127.0.0.1:15432)"
        ))
    };
    let (id, address) = text.split_once('=').ok_or_else(bad)?;
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if id.is_empty() || host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((id.to_string(), address.to_string()))
}

/// Where pgseal and the instances find an instance's SQL endpoint, when not at the address
/// AWS gives. Keys are the names a migration knows (the source's and the target's
/// identifiers as given at start), whatever they are renamed to later.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Routes {
    /// How pgseal itself reaches an instance (a tunnel or bastion): name → `HOST:PORT`.
    pub connect_via: BTreeMap<String, String>,
    /// How the other instance of the migration reaches it for replication: name →
    /// `HOST:PORT` (by default, the instance's endpoint address).
    pub peer_via: BTreeMap<String, String>,
}

/// Everything the AWS platform is configured with.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The source's flavor; the target is of the same.
    pub flavor: Flavor,
    /// The region (otherwise the standard chain: `AWS_REGION`, the profile).
    pub region: Option<String>,
    /// An AWS-compatible endpoint (otherwise `AWS_ENDPOINT_URL`, or AWS itself).
    pub endpoint_url: Option<String>,
    /// At most this many attempts per API call (the SDK's standard retry otherwise).
    pub max_attempts: Option<u32>,
    /// How long any one wait (snapshot, restore, rename, reboot) may take.
    pub wait_timeout: Duration,
    /// How often a wait asks for the resource's status.
    pub poll_interval: Duration,
    /// How long to wait for the restored instance's first start to reach its logs.
    pub handoff_timeout: Duration,
    /// Address overrides.
    pub routes: Routes,
}

impl AwsSettings {
    /// Defaults for `flavor`: the standard chain for region and endpoint, one hour per
    /// wait, polled every 15 s, 15 minutes for the handoff log line.
    pub fn new(flavor: Flavor) -> Self {
        AwsSettings {
            flavor,
            region: None,
            endpoint_url: None,
            max_attempts: None,
            wait_timeout: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(15),
            handoff_timeout: Duration::from_secs(900),
            routes: Routes::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_routes_and_identifiers_parse() {
        assert_eq!(parse_source("rds:prod"), Some((Flavor::Rds, "prod")));
        assert_eq!(parse_source("aurora:c1"), Some((Flavor::Aurora, "c1")));
        assert_eq!(parse_source("prod"), None);
        assert_eq!(
            parse_route("prod=127.0.0.1:15432").unwrap(),
            ("prod".into(), "127.0.0.1:15432".into())
        );
        for bad in ["prod", "prod=host", "=h:1", "prod=h:99999"] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        assert!(check_identifier("prod-enc").is_ok());
        for bad in ["", "1db", "a--b", "a-", "a_b"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
