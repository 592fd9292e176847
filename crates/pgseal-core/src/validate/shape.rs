//! How a table is read for comparison: its columns' row hash, its key, and the checksums, hashes and multisets of a range of it.

use pgseal_pg::replication::{self, qualified, quote_ident};
use pgseal_pg::sql::unquote_ident;
use tokio_postgres::Client;

use crate::error::{EngineError, sql};

/// Types hashed by their binary value (their hash is exact); every other column is hashed
/// as its text.
pub(super) const EXACT_TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "text",
    "varchar",
    "bpchar",
    "bool",
    "bytea",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "oid",
    "time",
    "char",
    "name",
];

/// Key column types whose values are identifiers pgseal may keep in its journal: numbers
/// and uuids a database hands out, not text a person typed (an e-mail address, a name).
pub(super) const IDENTIFIER_TYPES: &[&str] = &["smallint", "integer", "bigint", "uuid", "oid"];

/// A table's key columns (with their types) and row-hash expression.
pub(super) struct Shape {
    pub(super) table: String,
    pub(super) key: Vec<(String, String)>,
    pub(super) row_hash: String,
}

pub(super) async fn shape(client: &Client, table: &str) -> Result<Shape, EngineError> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified(table)],
        )
        .await
        .map_err(sql("source", "reading a table's columns"))?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| {
            let (name, typ): (String, String) = (r.get(0), r.get(1));
            if EXACT_TYPES.contains(&typ.as_str()) {
                quote_ident(&name)
            } else {
                format!("{}::text", quote_ident(&name))
            }
        })
        .collect();
    let key = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
            &[&qualified(table)],
        )
        .await
        .map_err(sql("source", "reading a primary key"))?
        .iter()
        .map(|r| (quote_ident(&r.get::<_, String>(0)), r.get::<_, String>(1)))
        .collect();
    Ok(Shape {
        table: qualified(table),
        key,
        // The whole-row value when every column hashes exactly (cheapest), else a ROW of
        // the columns with text where needed.
        row_hash: if parts.iter().all(|p| !p.ends_with("::text")) {
            "hash_record_extended(pgseal_row, 0)".to_string()
        } else {
            format!("hash_record_extended(ROW({}), 0)", parts.join(", "))
        },
    })
}

impl Shape {
    /// True for a single `smallint`, `integer` or `bigint` key.
    pub(super) fn is_integer_key(&self) -> bool {
        self.key.len() == 1 && ["smallint", "integer", "bigint"].contains(&self.key[0].1.as_str())
    }

    pub(super) fn key_tuple(&self) -> String {
        let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        format!("({})", cols.join(", "))
    }

    /// The key as one text, for reports and merging: the column's text for a one-column
    /// key, else the row's text (`(a,"b,c")`), which quotes what would be ambiguous.
    pub(super) fn key_text(&self) -> String {
        match self.key.as_slice() {
            [(c, _)] => format!("{c}::text"),
            _ => format!("{}::text", self.key_row()),
        }
    }

    /// The key columns as a row constructor.
    pub(super) fn key_row(&self) -> String {
        let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        format!("ROW({})", cols.join(", "))
    }

    /// A WHERE clause that picks the rows of `keys` (as [`Shape::key_text`] gives them)
    /// through the primary key's index.
    pub(super) fn keys_filter(&self, keys: &[String]) -> String {
        if keys.is_empty() {
            return "false".into();
        }
        if self.is_integer_key() {
            let numbers: Vec<String> = keys
                .iter()
                .map(|k| k.parse::<i64>().map_or("NULL".into(), |n| n.to_string()))
                .collect();
            return format!("{} IN ({})", self.key[0].0, numbers.join(", "));
        }
        let tuples: Vec<String> = keys
            .iter()
            .map(|k| match self.key.len() {
                1 => self.literal(std::slice::from_ref(k)),
                _ => self.literal(&record_fields(k)),
            })
            .collect();
        format!("{} IN ({})", self.key_tuple(), tuples.join(", "))
    }

    /// Each key column's value, typed, from a key object as the change log records it
    /// (`json` names the jsonb value in the query).
    pub(super) fn key_from_json(&self, json: &str) -> Vec<String> {
        self.key
            .iter()
            .map(|(c, t)| {
                format!(
                    "({json} ->> {})::{t}",
                    replication::quote_literal(&unquote_ident(c))
                )
            })
            .collect()
    }

    /// True when every key column is an identifier type (see [`IDENTIFIER_TYPES`]).
    pub(super) fn keys_are_identifiers(&self) -> bool {
        !self.key.is_empty()
            && self
                .key
                .iter()
                .all(|(_, t)| IDENTIFIER_TYPES.contains(&t.as_str()))
    }

    /// A key value (one text per column) as a typed row literal.
    pub(super) fn literal(&self, values: &[String]) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .zip(values)
            .map(|((_, t), v)| format!("{}::{t}", replication::quote_literal(v)))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The WHERE clause of the chunk `(lo, hi]`.
    pub(super) fn range(&self, lo: Option<&[String]>, hi: Option<&[String]>) -> String {
        let mut conds = vec!["true".to_string()];
        if let Some(lo) = lo {
            conds.push(format!("{} > {}", self.key_tuple(), self.literal(lo)));
        }
        if let Some(hi) = hi {
            conds.push(format!("{} <= {}", self.key_tuple(), self.literal(hi)));
        }
        conds.join(" AND ")
    }
}

/// The fields of a record's text (`(a,"b,c","d""e")`), as PostgreSQL's `record_out`
/// writes them: comma-separated, double-quoted when needed, `""` and `\` escaping inside
/// quotes. (A key's fields are never NULL.)
pub(super) fn record_fields(text: &str) -> Vec<String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text);
    let mut fields = vec![String::new()];
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// `(count, xor of row hashes)` of a chunk.
pub(super) async fn checksum(
    client: &Client,
    shape: &Shape,
    cond: &str,
    role: &'static str,
) -> Result<(i64, i64), EngineError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(bit_xor({}), 0) FROM {} pgseal_row WHERE {cond}",
                shape.row_hash, shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "checksumming a chunk"))?;
    Ok((row.get(0), row.get(1)))
}

/// `key text -> row hash` of a chunk.
pub(super) async fn hashes(
    client: &Client,
    shape: &Shape,
    cond: &str,
    role: &'static str,
) -> Result<std::collections::BTreeMap<String, i64>, EngineError> {
    let rows = client
        .query(
            &format!(
                "SELECT {}, {} FROM {} pgseal_row WHERE {cond}",
                shape.key_text(),
                shape.row_hash,
                shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "listing a chunk's rows"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `row hash -> count` of a table without a key.
pub(super) async fn multiset(
    client: &Client,
    shape: &Shape,
    role: &'static str,
) -> Result<std::collections::BTreeMap<i64, i64>, EngineError> {
    let rows = client
        .query(
            &format!(
                "SELECT {} AS h, count(*) FROM {} pgseal_row GROUP BY 1",
                shape.row_hash, shape.table
            ),
            &[],
        )
        .await
        .map_err(sql(role, "hashing a table"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
