//! Streams: what a migration moves is the **instance**, and a publication, a slot and a
//! subscription each belong to one database, so a migration owns one [`Stream`] per
//! database of its scope (the model is PostgreSQL's own `pg_createsubscriber`: one entry
//! per database in one list that every phase walks).
//!
//! A stream's publication, slot and subscription share its name. Slot names are
//! server-wide, so the name carries the database's oid (which a physical copy keeps):
//! `pgseal_<migration>_<oid>`. Every slot is created before the snapshot, and every
//! subscription's origin is advanced to the one handoff LSN: the end of the copy's WAL is
//! the same point in every database's history.
//!
//! The scope is fixed when the source is first prepared and recorded in the journal
//! (`Journal::record_streams`) before anything is created; a database created on the
//! source later is not in it, and cutover names it (see `cutover`).

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// One database's replication from the source to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// The database (the same name on both sides).
    pub database: String,
    /// Its publication, slot and subscription name.
    pub name: String,
}

impl Stream {
    /// The reverse publication, slot and subscription name (target → source, for
    /// rollback).
    pub fn reverse_name(&self) -> String {
        format!("{}_back", self.name)
    }

    /// The short-lived publication on the target that gives the reverse subscription its
    /// table list when it is made before the cutover's pause (every table the reverse
    /// publication has but pgseal's own change log): made and dropped in one step.
    pub fn reverse_list_name(&self) -> String {
        format!("{}_list", self.name)
    }
}

/// The longest part of a migration's name kept in its streams' names: a slot name has
/// at most 63 bytes, and `pgseal_` + `_` + an oid + `_back` take up to 23.
const NAME_PART: usize = 40;

/// A migration's name as a slot name may hold it: ASCII letters and digits lowercased,
/// anything else `_`.
fn cleaned(migration: &str) -> impl Iterator<Item = char> + '_ {
    migration.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    })
}

/// The name of migration `migration`'s stream for the database of oid `oid`.
pub fn stream_name(migration: &str, oid: u32) -> String {
    let part: String = cleaned(migration).take(NAME_PART).collect();
    format!("pgseal_{part}_{oid}")
}

/// The name a migration's one stream had before migrations covered several databases
/// (journals written by earlier versions keep it).
pub fn legacy_name(migration: &str) -> String {
    format!("pgseal_{}", cleaned(migration).collect::<String>())
}

/// A database of the source server as the scope sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseInfo {
    /// Its name.
    pub name: String,
    /// Its oid.
    pub oid: u32,
    /// `pg_database_size`, in bytes.
    pub bytes: i64,
    /// False for a template or a database that refuses connections (never migrated).
    pub migratable: bool,
}

/// Every database of the server `client` is connected to, by name.
pub async fn databases(client: &Client) -> Result<Vec<DatabaseInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT datname::text, oid, \
                    CASE WHEN has_database_privilege(oid, 'CONNECT') AND datallowconn \
                         THEN pg_database_size(oid) ELSE 0 END, \
                    datallowconn AND NOT datistemplate \
             FROM pg_database ORDER BY datname",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DatabaseInfo {
            name: r.get(0),
            oid: r.get(1),
            bytes: r.get(2),
            migratable: r.get(3),
        })
        .collect())
}

/// The streams of migration `migration` over `all` (the server's databases): every
/// migratable database, or those `wanted` names. `Err` names a wanted database that does
/// not exist or cannot be migrated.
pub fn plan(
    migration: &str,
    all: &[DatabaseInfo],
    wanted: Option<&[String]>,
) -> Result<Vec<Stream>, String> {
    let chosen: Vec<&DatabaseInfo> = match wanted {
        None => all.iter().filter(|d| d.migratable).collect(),
        Some(names) => {
            let mut chosen = Vec::new();
            for name in names {
                match all.iter().find(|d| &d.name == name) {
                    None => {
                        return Err(format!(
                            "--database {name}: no such database on the source (it has: {})",
                            all.iter()
                                .filter(|d| d.migratable)
                                .map(|d| d.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    Some(d) if !d.migratable => {
                        return Err(format!(
                            "--database {name}: a template or a database that refuses connections cannot be migrated"
                        ));
                    }
                    Some(d) if !chosen.iter().any(|c: &&DatabaseInfo| c.name == d.name) => {
                        chosen.push(d)
                    }
                    Some(_) => {}
                }
            }
            chosen
        }
    };
    if chosen.is_empty() {
        return Err("the source has no database to migrate".into());
    }
    Ok(chosen
        .into_iter()
        .map(|d| Stream {
            database: d.name.clone(),
            name: stream_name(migration, d.oid),
        })
        .collect())
}

/// The migratable databases of `all` that no stream carries.
pub fn outside<'a>(all: &'a [DatabaseInfo], streams: &[Stream]) -> Vec<&'a DatabaseInfo> {
    all.iter()
        .filter(|d| d.migratable && !streams.iter().any(|s| s.database == d.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str, oid: u32, migratable: bool) -> DatabaseInfo {
        DatabaseInfo {
            name: name.into(),
            oid,
            bytes: 0,
            migratable,
        }
    }

    #[test]
    fn the_default_scope_is_every_migratable_database_and_narrowing_is_checked() {
        let all = [
            db("billing", 16390, true),
            db("postgres", 5, true),
            db("template0", 4, false),
            db("template1", 1, false),
        ];
        let every = plan("m1", &all, None).unwrap();
        assert_eq!(
            every.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["pgseal_m1_16390", "pgseal_m1_5"]
        );
        let one = plan("m1", &all, Some(&["postgres".into(), "postgres".into()])).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(outside(&all, &one), [&all[0]]);
        assert!(
            plan("m1", &all, Some(&["nope".into()]))
                .unwrap_err()
                .contains("billing, postgres")
        );
        assert!(
            plan("m1", &all, Some(&["template1".into()]))
                .unwrap_err()
                .contains("template")
        );
    }

    #[test]
    fn names_fit_a_slot_name_with_the_reverse_suffix() {
        let long = "x".repeat(200);
        let s = Stream {
            database: "d".into(),
            name: stream_name(&long, u32::MAX),
        };
        assert!(s.reverse_name().len() <= 63, "{}", s.reverse_name());
        assert_eq!(stream_name("My-Mig", 7), "pgseal_my_mig_7");
    }
}
