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
    fn option(self) -> &'static str {
        match self {
            CopyFormat::Text => "",
            CopyFormat::Binary => " (FORMAT binary)",
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

/// The table `schema.table` (unquoted names, quoted here) and its `columns` in that
/// order (all of them when empty) as `COPY` names them.
fn target_of(schema: &str, table: &str, columns: &[String]) -> String {
    let mut text = format!("{}.{}", quote_ident(schema), quote_ident(table));
    if !columns.is_empty() {
        let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        text.push_str(&format!(" ({})", list.join(", ")));
    }
    text
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
    let what = target_of(schema, table, columns);
    let with = format.option();
    let rows_out = from
        .copy_out(&format!("COPY {what} TO STDOUT{with}"))
        .await?;
    let sink = to.copy_in(&format!("COPY {what} FROM STDIN{with}")).await?;
    futures_util::pin_mut!(rows_out);
    futures_util::pin_mut!(sink);
    let mut bytes = 0u64;
    let mut counted = rows_out.inspect_ok(|chunk| bytes += chunk.len() as u64);
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
        assert_eq!(CopyFormat::Text.option(), "");
    }
}
