//! Schema fingerprints: logical replication carries rows, not DDL, so a column added on the
//! publisher stops the apply worker until the subscriber gets the same change. Comparing
//! the column lists of both sides shows such drift, with the statements that repair it.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::replication::{qualified, quote_ident};

/// One column of one table: what the fingerprint is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `schema.table`.
    pub table: String,
    /// The column's name.
    pub name: String,
    /// Its type as `format_type` prints it (`numeric(10,2)`, `text[]`, ...).
    pub data_type: String,
}

/// The columns of `tables` (`schema.table`), in table then column order.
pub async fn columns(
    client: &Client,
    tables: &[String],
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, a.attname::text, \
                    format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND n.nspname || '.' || c.relname = ANY($1) \
             ORDER BY 1, a.attnum",
            &[&tables],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            table: r.get(0),
            name: r.get(1),
            data_type: r.get(2),
        })
        .collect())
}

/// A short, stable digest of a column list (FNV-1a, 64 bits, hex): equal lists have equal
/// fingerprints; it is for display and quick comparison, [`drift`] says what differs.
pub fn fingerprint(columns: &[Column]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for c in columns {
        for part in [&c.table, &c.name, &c.data_type] {
            for byte in part.bytes().chain([0u8]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{hash:016x}")
}

/// One difference between the source's and the target's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// `schema.table`.
    pub table: String,
    /// What differs.
    pub detail: String,
    /// The statement to run on the target to match the source.
    pub statement: String,
}

/// What differs between the source's columns and the target's, with the statement that
/// makes the target match. Empty when they agree.
pub fn drift(source: &[Column], target: &[Column]) -> Vec<Drift> {
    let by_table = |cols: &[Column]| {
        let mut map: BTreeMap<String, Vec<Column>> = BTreeMap::new();
        for c in cols {
            map.entry(c.table.clone()).or_default().push(c.clone());
        }
        map
    };
    let (src, dst) = (by_table(source), by_table(target));
    let mut out = Vec::new();
    for (table, src_cols) in &src {
        let Some(dst_cols) = dst.get(table) else {
            out.push(Drift {
                table: table.clone(),
                detail: "table missing on the target".to_string(),
                statement: format!(
                    "-- create it from the source's definition: pg_dump --schema-only --table={table} | psql TARGET"
                ),
            });
            continue;
        };
        for c in src_cols {
            match dst_cols.iter().find(|d| d.name == c.name) {
                None => out.push(Drift {
                    table: table.clone(),
                    detail: format!("column {} {} missing on the target", c.name, c.data_type),
                    statement: format!(
                        "ALTER TABLE {} ADD COLUMN {} {};",
                        qualified(table),
                        quote_ident(&c.name),
                        c.data_type
                    ),
                }),
                Some(d) if d.data_type != c.data_type => out.push(Drift {
                    table: table.clone(),
                    detail: format!(
                        "column {} is {} on the source, {} on the target",
                        c.name, c.data_type, d.data_type
                    ),
                    statement: format!(
                        "ALTER TABLE {} ALTER COLUMN {} TYPE {};",
                        qualified(table),
                        quote_ident(&c.name),
                        c.data_type
                    ),
                }),
                Some(_) => {}
            }
        }
        for d in dst_cols {
            if !src_cols.iter().any(|c| c.name == d.name) {
                out.push(Drift {
                    table: table.clone(),
                    detail: format!("column {} exists only on the target", d.name),
                    statement: format!(
                        "ALTER TABLE {} DROP COLUMN {};",
                        qualified(table),
                        quote_ident(&d.name)
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(table: &str, name: &str, data_type: &str) -> Column {
        Column {
            table: table.into(),
            name: name.into(),
            data_type: data_type.into(),
        }
    }

    #[test]
    fn drift_names_each_difference_with_the_statement_that_repairs_it() {
        let source = [
            col("public.a", "id", "bigint"),
            col("public.a", "note", "text"),
            col("public.a", "amount", "numeric(12,2)"),
            col("public.b", "id", "integer"),
        ];
        let target = [
            col("public.a", "id", "bigint"),
            col("public.a", "amount", "numeric(10,2)"),
            col("public.a", "old", "text"),
        ];
        let found = drift(&source, &target);
        let statements: Vec<&str> = found.iter().map(|d| d.statement.as_str()).collect();
        assert_eq!(
            statements[..3],
            [
                r#"ALTER TABLE "public"."a" ADD COLUMN "note" text;"#,
                r#"ALTER TABLE "public"."a" ALTER COLUMN "amount" TYPE numeric(12,2);"#,
                r#"ALTER TABLE "public"."a" DROP COLUMN "old";"#,
            ]
        );
        assert_eq!(found[3].detail, "table missing on the target");
        assert_eq!(found.len(), 4);
        assert!(drift(&source, &source).is_empty());
        assert_eq!(fingerprint(&source), fingerprint(&source.clone()));
        assert_ne!(fingerprint(&source), fingerprint(&target));
    }
}
