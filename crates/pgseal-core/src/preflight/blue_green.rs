//! What a blue/green deployment of this source would be: the platform's replication
//! method, what follows from it (parameters, reboot, DDL), and the limits the platform
//! documents for that method, each marked where this source meets it.
//!
//! The method is the platform's rule ([`pgseal_platform::Platform::blue_green_plan`]):
//! RDS for PostgreSQL replicates physically at the same major version and logically with
//! a major version upgrade; Aurora PostgreSQL logically.

use pgseal_platform::{BlueGreenPlan, ReplicationMethod};
use serde::Serialize;

use super::{DatabaseScope, Finding, blocker};

/// One limit of the method, and whether this source meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    /// The limit, as the platform (or PostgreSQL, for what logical replication carries)
    /// states it.
    pub limit: String,
    /// True when this source meets it (the migration is concerned).
    pub met: bool,
    /// What in this source meets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A blue/green deployment of the source as `plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BlueGreenReport {
    /// How green is kept current.
    pub method: ReplicationMethod,
    /// Why that method.
    pub why: String,
    /// Whether the source needs logical decoding on (`rds.logical_replication = 1`).
    pub needs_logical_replication: bool,
    /// Whether starting would restart the source to turn it on.
    pub reboot: bool,
    /// What happens to DDL run on blue while green follows.
    pub ddl: String,
    /// The method's limits, each marked where this source meets it.
    pub limits: Vec<Limit>,
}

/// What one database of the scope holds that a method's limits ask about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Publications and subscriptions that are not pgseal's (the source replicates
    /// logically itself).
    pub replication: Vec<String>,
    /// Tables without a primary key or replica identity.
    pub keyless: Vec<String>,
    /// Large objects, per database.
    pub large_objects: Vec<String>,
}

/// The report for `plan`, and the findings the limits this source meets raise.
pub(crate) fn report(
    plan: &BlueGreenPlan,
    wal_level: &str,
    scope: &[DatabaseScope],
    seen: &Seen,
    findings: &mut Vec<Finding>,
) -> BlueGreenReport {
    let method = plan.method;
    let needs = method.needs_logical_wal();
    let large_objects = &seen.large_objects;
    let unlogged: Vec<String> = scope
        .iter()
        .flat_map(|d| {
            d.not_carried
                .iter()
                .filter(|o| o.contains("unlogged"))
                .map(move |o| format!("{}: {o}", d.name))
        })
        .collect();
    let mark = |limit: &str, found: &[String]| Limit {
        limit: limit.to_string(),
        met: !found.is_empty(),
        detail: (!found.is_empty()).then(|| super::list(found)),
    };
    let always = |limit: &str| Limit {
        limit: limit.to_string(),
        met: true,
        detail: None,
    };
    let publisher = mark(
        "blue can be neither a logical replication publisher nor a subscriber (AWS, both methods)",
        &seen.replication,
    );
    if publisher.met {
        findings.push(blocker(
            "blue_green_replication",
            format!(
                "the source publishes or subscribes by logical replication itself ({}), which AWS's blue/green does not support",
                super::list(&seen.replication)
            ),
            "drop those publications and subscriptions for the deployment, or use --strategy snapshot".into(),
        ));
    }
    let limits = match method {
        ReplicationMethod::Physical => vec![
            publisher,
            always("green is read-only until the switchover: no schema change on green (AWS)"),
            always("no manual major version upgrade of green once it exists (AWS)"),
            mark(
                "unlogged tables are not written to WAL: green has them empty (PostgreSQL)",
                &unlogged,
            ),
        ],
        ReplicationMethod::Logical => {
            let objects = mark(
                "large objects are not replicated (PostgreSQL logical replication)",
                large_objects,
            );
            if objects.met {
                findings.push(blocker(
                    "blue_green_large_objects",
                    format!(
                        "logical blue/green replication carries no large objects, so green would lack them: {}",
                        objects.detail.clone().unwrap_or_default()
                    ),
                    "use --strategy snapshot (pgseal carries large objects), or a deployment at the same major version on RDS (physical)".into(),
                ));
            }
            vec![
                publisher,
                always(
                    "DDL is not replicated: a schema change on blue must be made on green too (pgseal refuses the cutover while they differ)",
                ),
                objects,
                mark(
                    "unlogged tables are not replicated (on Aurora only with rds.logically_replicate_unlogged_tables = 1)",
                    &unlogged,
                ),
                mark(
                    "UPDATE and DELETE on a table without a primary key or replica identity fail on blue while it publishes",
                    &seen.keyless,
                ),
                always("sequence values are not replicated row by row"),
            ]
        }
    };
    BlueGreenReport {
        method,
        why: plan.why.clone(),
        needs_logical_replication: needs,
        reboot: needs && wal_level != "logical",
        ddl: if method.carries_ddl() {
            "carried: green replays blue's WAL, DDL included".into()
        } else {
            "not carried: pgseal compares both schemas and refuses the cutover while they differ"
                .into()
        },
        limits,
    }
}
