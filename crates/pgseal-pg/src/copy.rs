//! A table's rows copied from one server to another by `COPY`, streamed straight through:
//! `COPY ... TO STDOUT` on one session piped into `COPY ... FROM STDIN` on the other, in
//! the chunks the source sends, with nothing written to local disk and no row parsed on
//! the way.
//!
//! The caller picks what the rows are read under: a session in a `REPEATABLE READ`
//! transaction set to an exported snapshot (`SET TRANSACTION SNAPSHOT`) reads exactly the
//! rows committed before that snapshot, which is what a full load started from a slot's
//! snapshot needs. A copy that fails part way aborts the target's `COPY` (the session
//! sends `CopyFail`), so nothing of it is committed there.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::Client;

use crate::sql::quote_ident;

/// How the rows travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: every type, any two versions.
    Text,
    /// The binary format: no text conversion on either side; both sides' column types
    /// must have the same binary representation (PostgreSQL's built-in types do across
    /// versions), and every type a binary send and receive function.
    Binary,
}

impl CopyFormat {
    /// `text` or `binary`, as `COPY`'s `FORMAT` option names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyFormat::Text => "text",
            CopyFormat::Binary => "binary",
        }
    }

    fn option(self) -> &'static str {
        match self {
            CopyFormat::Text => "",
            CopyFormat::Binary => " (FORMAT binary)",
        }
    }

    /// The target's options: with `freeze`, rows are written frozen (PostgreSQL allows it
    /// only into a table created or truncated in the same transaction).
    fn target_option(self, freeze: bool) -> &'static str {
        match (self, freeze) {
            (format, false) => format.option(),
            (CopyFormat::Text, true) => " (FREEZE)",
            (CopyFormat::Binary, true) => " (FORMAT binary, FREEZE)",
        }
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Rows, as the target's `COPY` counted them.
    pub rows: u64,
    /// Bytes of `COPY` data that crossed (the format's, not the tables' on-disk size).
    pub bytes: u64,
}

/// The pages of a table a copy reads: `(first, end)`, `end` excluded; `None` for no end
/// (every page from `first` on, including any the table grew by).
pub type Pages = (u32, Option<u32>);

/// One copy: which table, which columns, which of its pages, how.
#[derive(Debug, Clone, Copy)]
pub struct CopySpec<'a> {
    /// The schema, unquoted.
    pub schema: &'a str,
    /// The table, unquoted.
    pub table: &'a str,
    /// The columns in the order both sides list them; all of them (in each side's order)
    /// when empty. A generated column is never listed (PostgreSQL computes it).
    pub columns: &'a [String],
    /// Only the rows in these pages of the source (a range of `ctid`, read by a TID range
    /// scan on PostgreSQL 14 or newer); `None` for the whole table.
    pub pages: Option<Pages>,
    /// How the rows travel.
    pub format: CopyFormat,
    /// `COPY ... FREEZE` on the target: the caller truncated (or created) the table in the
    /// transaction the copy runs in.
    pub freeze: bool,
}

/// The table `schema.table` (unquoted names, quoted here) and its `columns` in that
/// order (all of them when empty) as `COPY` names them.
fn target_of(schema: &str, table: &str, columns: &[String]) -> String {
    let mut text = format!("{}.{}", quote_ident(schema), quote_ident(table));
    if !columns.is_empty() {
        text.push_str(&format!(" ({})", column_list(columns)));
    }
    text
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the source's `COPY ... TO STDOUT` reads for `spec`: the table itself, or a query of
/// its rows in a range of pages.
fn source_of(spec: &CopySpec<'_>) -> String {
    let Some((first, end)) = spec.pages else {
        return target_of(spec.schema, spec.table, spec.columns);
    };
    let columns = if spec.columns.is_empty() {
        "*".to_string()
    } else {
        column_list(spec.columns)
    };
    let mut filter = format!("ctid >= '({first},0)'::tid");
    if let Some(end) = end {
        filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
    }
    format!(
        "(SELECT {columns} FROM ONLY {}.{} WHERE {filter})",
        quote_ident(spec.schema),
        quote_ident(spec.table)
    )
}

/// Copies the rows of `schema.table` that `from` sees into the same table through `to`
/// (`columns` in that order on both sides; all of them, in each side's order, when
/// empty), in `format`. Both sessions are used as they are: the caller begins, sets the
/// snapshot and commits.
pub async fn copy_table(
    from: &Client,
    to: &Client,
    (schema, table): (&str, &str),
    columns: &[String],
    format: CopyFormat,
) -> Result<Copied, tokio_postgres::Error> {
    let spec = CopySpec {
        schema,
        table,
        columns,
        pages: None,
        format,
        freeze: false,
    };
    copy(from, to, &spec, None).await
}

/// Copies what `spec` names from `from` into the same table through `to`, adding the
/// bytes to `seen` as they pass (for progress). Both sessions are used as they are.
pub async fn copy(
    from: &Client,
    to: &Client,
    spec: &CopySpec<'_>,
    seen: Option<&AtomicU64>,
) -> Result<Copied, tokio_postgres::Error> {
    let out = format!("COPY {} TO STDOUT{}", source_of(spec), spec.format.option());
    let into = format!(
        "COPY {} FROM STDIN{}",
        target_of(spec.schema, spec.table, spec.columns),
        spec.format.target_option(spec.freeze)
    );
    // Both sides' statements at once: each is prepared, then started (two round trips
    // a side), which with many small tables is most of a table's time.
    let (rows_out, sink) =
        futures_util::future::try_join(from.copy_out(&out), to.copy_in(&into)).await?;
    futures_util::pin_mut!(rows_out);
    futures_util::pin_mut!(sink);
    let mut bytes = 0u64;
    let mut counted = rows_out.inspect_ok(|chunk| {
        bytes += chunk.len() as u64;
        if let Some(seen) = seen {
            seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    // On an error the sink is dropped unfinished: the target's COPY is aborted.
    sink.send_all(&mut counted).await?;
    let rows = sink.finish().await?;
    Ok(Copied { rows, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_by_postgresql_rules_and_columns_listed_in_order() {
        assert_eq!(target_of("public", "t", &[]), "\"public\".\"t\"");
        assert_eq!(
            target_of(
                "Sales Dept",
                "orders.2024 \"ü\"",
                &["id".into(), "Note \"x\"".into()]
            ),
            "\"Sales Dept\".\"orders.2024 \"\"ü\"\"\" (\"id\", \"Note \"\"x\"\"\")"
        );
        assert_eq!(CopyFormat::Binary.option(), " (FORMAT binary)");
        let columns = ["id".to_string(), "Note \"x\"".to_string()];
        let mut spec = CopySpec {
            schema: "Sales Dept",
            table: "t.1",
            columns: &columns,
            pages: Some((10, Some(20))),
            format: CopyFormat::Binary,
            freeze: true,
        };
        assert_eq!(
            spec.format.target_option(spec.freeze),
            " (FORMAT binary, FREEZE)"
        );
        assert_eq!(CopyFormat::Text.target_option(true), " (FREEZE)");
        assert_eq!(CopyFormat::Text.target_option(false), "");
        assert_eq!(
            source_of(&spec),
            "(SELECT \"id\", \"Note \"\"x\"\"\" FROM ONLY \"Sales Dept\".\"t.1\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid)"
        );
        spec.pages = Some((20, None));
        spec.columns = &[];
        assert_eq!(
            source_of(&spec),
            "(SELECT * FROM ONLY \"Sales Dept\".\"t.1\" WHERE ctid >= '(20,0)'::tid)"
        );
        spec.pages = None;
        assert_eq!(source_of(&spec), "\"Sales Dept\".\"t.1\"");
        assert_eq!(CopyFormat::Text.option(), "");
    }
}
