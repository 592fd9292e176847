//! `pgseal journal copy`: moves every migration of one journal into another (an SQLite
//! file into the PostgreSQL database a team will share), rows as they are, in one
//! transaction on the receiving side.

use serde::Serialize;

use super::store::{Row, Statement};
use super::{Hold, Journal, JournalError};

/// The columns of each table, in the order rows are read and written (ids and `rowid`s are
/// the receiver's own; rows keep their order, which is what those ids mean).
const TABLES: &[(&str, &str, &str)] = &[
    (
        "migration",
        "name, spec, phase, error, created_ms, updated_ms",
        "created_ms, name",
    ),
    (
        "step_run",
        "migration, step, started_ms, finished_ms, outcome, outputs, error, runner",
        "id",
    ),
    (
        "resource",
        "migration, kind, database, name, added_ms",
        "added_ms, rowid",
    ),
    (
        "stream",
        "migration, position, database, name",
        "migration, position",
    ),
    (
        "sample",
        "migration, at_ms, database, source_lsn, confirmed_lsn, lag_bytes, lag_seconds, retained_bytes",
        "migration, at_ms, database",
    ),
    ("fact", "migration, kind, recorded_ms, body", "rowid"),
];

/// What a copy moved.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Copied {
    /// The migrations, by name.
    pub migrations: Vec<String>,
    /// Rows per table, in [`TABLES`] order.
    pub rows: Vec<(String, usize)>,
}

/// Copies every migration of `from` into `to`. Refused, with nothing written, when `to`
/// holds a migration of the same name, or while another process drives one of them.
pub fn copy(from: &Journal, to: &Journal) -> Result<Copied, JournalError> {
    let migrations: Vec<String> = from.list()?.into_iter().map(|m| m.spec.name).collect();
    // Nobody changes them while they move.
    let _held: Vec<Hold> = migrations
        .iter()
        .map(|name| from.hold(name))
        .collect::<Result<_, _>>()?;
    for name in &migrations {
        match to.migration(name) {
            Ok(_) => return Err(JournalError::Exists(name.clone())),
            Err(JournalError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut rows: Vec<(String, Vec<Row>)> = Vec::new();
    for (table, columns, order) in TABLES {
        let read = from
            .store
            .query(
                &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
                &[],
            )
            .map_err(from.wrap())?;
        rows.push((table.to_string(), read));
    }
    let inserts: Vec<String> = TABLES
        .iter()
        .map(|(table, columns, _)| {
            let placeholders: Vec<String> = (1..=columns.split(',').count())
                .map(|i| format!("?{i}"))
                .collect();
            format!(
                "INSERT INTO {table} ({columns}) VALUES ({})",
                placeholders.join(", ")
            )
        })
        .collect();
    let statements: Vec<Statement<'_>> = inserts
        .iter()
        .zip(&rows)
        .flat_map(|(insert, (_, read))| {
            read.iter().map(move |row| (insert.as_str(), row.0.clone()))
        })
        .collect();
    to.transaction(&statements)?;
    tracing::info!(
        migrations = migrations.len(),
        rows = statements.len(),
        from = from.location(),
        to = to.location(),
        "journal copied"
    );
    Ok(Copied {
        migrations,
        rows: rows.into_iter().map(|(t, r)| (t, r.len())).collect(),
    })
}
