//! Sessions on either side of a migration: its streams as recorded, and connections to
//! the source (by URL or platform instance) and to any instance, pinned as
//! `pgseal_pg::connect_pinned` pins them. Every phase opens its sessions here.

use pgseal_platform::Platform;
use tokio_postgres::Client;

use crate::error::EngineError;
use crate::journal::{Journal, MigrationSpec};
use crate::stream::Stream;

/// Migration `name`'s streams as recorded; an error before the source was prepared.
pub fn streams_of(journal: &Journal, name: &str) -> Result<Vec<Stream>, EngineError> {
    let streams = journal.streams(name)?;
    if streams.is_empty() {
        return Err(EngineError::Precondition(format!(
            "migration {name} has no streams yet (its source was not prepared)"
        )));
    }
    Ok(streams)
}

/// The connection settings of a source given by URL (password from `PGPASSWORD`).
pub(crate) fn source_config(url: &str) -> Result<tokio_postgres::Config, EngineError> {
    pgseal_pg::config_from_url(url)
        .map(|(config, _)| config)
        .map_err(|e| EngineError::Precondition(format!("the source URL cannot be parsed: {e}")))
}

/// Connects to the migration's source: its URL, or the platform instance's database.
pub async fn connect_source<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
) -> Result<Client, EngineError> {
    connect_source_db(platform, spec, &spec.database).await
}

/// Connects to another database (`dbname`) of the migration's source server.
pub async fn connect_source_db<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    dbname: &str,
) -> Result<Client, EngineError> {
    let config = source_db_config(platform, spec, dbname).await?;
    pgseal_pg::connect_pinned(&config)
        .await
        .map_err(|source| EngineError::Connect {
            role: "source",
            source,
        })
}

/// How to reach database `dbname` of the migration's source: its URL (password from
/// `PGPASSWORD`), or the platform instance's master user.
pub async fn source_db_config<P: Platform>(
    platform: &P,
    spec: &MigrationSpec,
    dbname: &str,
) -> Result<tokio_postgres::Config, EngineError> {
    match spec.source_url() {
        Some(url) => {
            let mut config = source_config(url)?;
            config.dbname(dbname);
            Ok(config)
        }
        None => instance_config(platform, &spec.source, dbname, "source").await,
    }
}

/// A database of the same server outside `fenced`, for work PostgreSQL refuses from
/// inside a database itself (fencing it) or that must go on while they are fenced:
/// `postgres` when it is not fenced, else `template1` (a template is never migrated).
pub fn admin_database(fenced: &[&str]) -> &'static str {
    if fenced.contains(&"postgres") {
        "template1"
    } else {
        "postgres"
    }
}

/// Connects to `instance`'s database `dbname` as its master user.
pub async fn connect_to<P: Platform>(
    platform: &P,
    instance: &str,
    dbname: &str,
    role: &'static str,
) -> Result<Client, EngineError> {
    let config = instance_config(platform, instance, dbname, role).await?;
    pgseal_pg::connect_pinned(&config)
        .await
        .map_err(|source| EngineError::Connect { role, source })
}

/// How to reach `instance`'s database `dbname` as its master user (`role` names it in
/// errors).
pub async fn instance_config<P: Platform>(
    platform: &P,
    instance: &str,
    dbname: &str,
    role: &'static str,
) -> Result<tokio_postgres::Config, EngineError> {
    let mut config =
        platform
            .connection(instance)
            .await
            .map_err(|source| EngineError::Platform {
                what: format!("finding how to reach the {role} {instance}"),
                source,
            })?;
    config.dbname(dbname);
    Ok(config)
}
