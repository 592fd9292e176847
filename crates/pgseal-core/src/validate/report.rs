//! What validation reports: per table and in all, as printed and as journaled.

use serde::Serialize;

/// How many keys of each kind the report lists per table.
pub(super) const LISTED: usize = 50;

/// A table's validation state, in the vocabulary DBAs know from AWS DMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// Every chunk equal.
    #[default]
    Validated,
    /// Some rows differ.
    Mismatched,
    /// Some chunks kept changing; the rest equal.
    Suspended,
    /// No primary key: compared as multisets of row hashes.
    NoPrimaryKey,
    /// The comparison itself failed.
    Error,
    /// Still being copied by the subscription (a table made on the source during the
    /// migration): not comparable yet, never counted as mismatched.
    Copying,
}

/// A differing row as both sides have it (its text), for the first few differences.
#[derive(Debug, Clone, Serialize)]
pub struct RowDetail {
    /// `missing`, `extra` or `different`.
    pub kind: &'static str,
    /// The key.
    pub key: String,
    /// The source's row, if it has one.
    pub source: Option<String>,
    /// The target's row, if it has one.
    pub target: Option<String>,
}

/// One table's result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TableReport {
    /// Its database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// Its state.
    pub state: TableState,
    /// Rows compared (source side).
    pub rows: i64,
    /// Chunks compared.
    pub chunks: usize,
    /// Seconds taken.
    pub seconds: f64,
    /// Keys on the source missing on the target (first few).
    pub missing: Vec<String>,
    /// Keys on the target not on the source (first few).
    pub extra: Vec<String>,
    /// Keys whose rows differ (first few).
    pub different: Vec<String>,
    /// Differing rows in all (missing + extra + different, or by hash without a key).
    pub mismatched_rows: i64,
    /// Chunks that kept changing.
    pub unstable_chunks: usize,
    /// The error, when the state is `error`.
    pub error: Option<String>,
    /// The first differing rows in full, from both sides.
    pub details: Vec<RowDetail>,
    /// The longest time this table was held in SHARE mode on the source (the locked
    /// re-check of a difference unlocked reads could not settle), in milliseconds.
    pub source_lock_ms: f64,
    /// True in the journal's copy when the keys were left out of it (they are not all
    /// identifiers, see [`ValidationReport::journaled`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_withheld: bool,
    /// Whether this table's key columns are all identifiers (integers, uuids).
    #[serde(skip)]
    pub keys_are_identifiers: bool,
}

impl TableReport {
    /// This table's result as the journal keeps it: no row text, and keys only when they
    /// are identifiers.
    pub(super) fn journaled(&self) -> TableReport {
        let mut kept = self.clone();
        kept.details.clear();
        if !self.keys_are_identifiers {
            kept.keys_withheld =
                !(kept.missing.is_empty() && kept.extra.is_empty() && kept.different.is_empty());
            kept.missing.clear();
            kept.extra.clear();
            kept.different.clear();
        }
        kept
    }
}

/// The whole validation.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Rows compared in all.
    pub rows: i64,
    /// Differing rows in all.
    pub mismatched_rows: i64,
    /// Seconds in all.
    pub seconds: f64,
    /// True when every table is validated (or, without a key, equal as a multiset).
    pub clean: bool,
    /// The longest time any table was held locked on the source, in milliseconds.
    pub source_lock_max_ms: f64,
    /// Per database, the target's change log position when this pass began: the
    /// cutover's final check re-verifies only rows changed after it.
    pub horizons: std::collections::BTreeMap<String, i64>,
    /// Per database, the last DDL statement captured on the source when this pass began:
    /// a cutover after later DDL (which rewrites rows no change log sees) wants a new pass.
    pub ddl_seen: std::collections::BTreeMap<String, i64>,
    /// Per database, the large objects of both sides compared (contents, owner,
    /// privileges, comment); absent in a pass over some tables only.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub large_objects: std::collections::BTreeMap<String, LargeObjectsCompared>,
    /// The catalog and the data no row comparison sees, compared (`pgseal migrate
    /// verify`); absent in a pass over some tables only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::VerifyReport>,
    /// A pass over some tables only: per database, whether it compared every table the
    /// DDL captured since the last validation made or changed (then it vouches for that
    /// DDL as a whole pass would).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ddl_vouched: std::collections::BTreeMap<String, bool>,
}

pub use crate::verify::LargeObjectsCompared;

impl ValidationReport {
    /// The report as the journal (a file on the host's disk, beside an encrypted target)
    /// keeps it: counts and states, no row text (`details` is only ever printed by the
    /// command that found it), and the differing keys only for tables whose key columns
    /// are all identifiers (integers, uuids). Other keys (text, e-mail addresses, ...) and
    /// the row hashes of key-less tables are left out; `keys_withheld` says so, and
    /// `pgseal migrate validate` shows them again on the terminal.
    pub fn journaled(&self) -> ValidationReport {
        ValidationReport {
            tables: self.tables.iter().map(TableReport::journaled).collect(),
            verify: self
                .verify
                .as_ref()
                .map(crate::verify::VerifyReport::journaled),
            ..self.clone()
        }
    }
}

/// What validation reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A table starts; `estimated_rows` from the planner's statistics.
    Table {
        /// `schema.table`.
        table: &'a str,
        /// About how many rows it has.
        estimated_rows: i64,
    },
    /// Rows compared so far in the current table.
    Rows(i64),
    /// A table is still being copied; validation waits for it.
    Copying {
        /// `database/schema.table`.
        table: &'a str,
        /// Seconds waited so far.
        waited: u64,
    },
    /// A table is done.
    Done(&'a TableReport),
}
