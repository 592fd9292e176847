//! Schema fingerprints: logical replication carries rows, not DDL, so a column added on the
//! publisher stops the apply worker until the subscriber gets the same change. Comparing
//! both sides' definitions from the catalogs shows such drift, with the statements that
//! make the target's definitions the source's: each column's type with its modifier,
//! collation, default, `NOT NULL`, identity and generation expression; each constraint;
//! each index that backs no constraint.
//!
//! A statement that cannot reproduce the source's rows says so in [`Drift::caution`]: a
//! column added with a default that is not immutable (`now()`, `random()`, a sequence, an
//! identity) gives the target's existing rows values the source's rows do not have.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::replication::{qualified, quote_ident};

/// One column of one table, as its definition reads in the catalogs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `schema.table`.
    pub table: String,
    /// The column's name.
    pub name: String,
    /// Its type as `format_type` prints it (`numeric(10,2)`, `text[]`, ...).
    pub data_type: String,
    /// Its collation (quoted, schema-qualified) when not its type's default.
    pub collation: Option<String>,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Its default expression (`pg_get_expr`), for a column that is not generated.
    pub default: Option<String>,
    /// True when the default calls a function that is not immutable (`now()`,
    /// `random()`, `nextval`, found by name in the expression: PostgreSQL records no
    /// dependency on built-in functions) or reads the clock or the session
    /// (`CURRENT_TIMESTAMP`, `CURRENT_USER`): rows given it on one server differ from the
    /// other's.
    pub default_varies: bool,
    /// `ALWAYS` or `BY DEFAULT` for an identity column.
    pub identity: Option<String>,
    /// The expression of a stored generated column.
    pub generated: Option<String>,
}

impl Column {
    /// Its type with its collation, as `ADD COLUMN` and `ALTER COLUMN ... TYPE` take them.
    pub fn typed(&self) -> String {
        match &self.collation {
            Some(c) => format!("{} COLLATE {c}", self.data_type),
            None => self.data_type.clone(),
        }
    }

    /// The column's definition as `ADD COLUMN` takes it, after the name.
    pub fn definition(&self) -> String {
        let mut def = self.typed();
        if let Some(g) = &self.generated {
            def.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
        } else if let Some(d) = &self.default {
            def.push_str(&format!(" DEFAULT {d}"));
        }
        if self.not_null {
            def.push_str(" NOT NULL");
        }
        if let Some(i) = &self.identity {
            def.push_str(&format!(" GENERATED {i} AS IDENTITY"));
        }
        def
    }
}

/// A constraint or an index of a table (indexes that back a constraint are the
/// constraint's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableObject {
    /// `schema.table`.
    pub table: String,
    /// `constraint` or `index`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `pg_get_constraintdef` or `pg_get_indexdef`.
    pub definition: String,
}

/// A table's definition: its columns, constraints and indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Definitions {
    /// Columns, in table then column order.
    pub columns: Vec<Column>,
    /// Constraints and indexes, in table, kind, name order.
    pub objects: Vec<TableObject>,
}

/// The definitions of `tables` (`schema.table`).
pub async fn definitions(
    client: &Client,
    tables: &[String],
) -> Result<Definitions, tokio_postgres::Error> {
    Ok(Definitions {
        columns: columns(client, tables).await?,
        objects: objects(client, tables).await?,
    })
}

/// The columns of `tables` (`schema.table`), in table then column order.
pub async fn columns(
    client: &Client,
    tables: &[String],
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let query = format!(
        "SELECT n.nspname || '.' || c.relname, a.attname::text, \
                    format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                         THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END, \
                    a.attnotnull, \
                    CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                    {varies}, \
                    CASE a.attidentity WHEN 'a' THEN 'ALWAYS' WHEN 'd' THEN 'BY DEFAULT' END, \
                    CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND n.nspname || '.' || c.relname = ANY($1) \
             ORDER BY 1, a.attnum",
        varies = varies_sql("pg_get_expr(d.adbin, d.adrelid)")
    );
    // Without JIT: PostgreSQL 15 built with LLVM (Debian's) compiled this query for
    // 0.41 s of its 0.46 s on a source of 2,000 tables (0.05 s without), in every status.
    // The query's own error first: in a transaction it aborted, `RESET` fails too.
    client.batch_execute("SET jit = off").await?;
    let rows = client.query(&query, &[&tables]).await;
    let reset = client.batch_execute("RESET jit").await;
    let rows = rows?;
    reset?;
    Ok(rows
        .iter()
        .map(|r| Column {
            table: r.get(0),
            name: r.get(1),
            data_type: r.get(2),
            collation: r.get(3),
            not_null: r.get(4),
            default: r.get(5),
            default_varies: r.get(6),
            identity: r.get(7),
            generated: r.get(8),
        })
        .collect())
}

/// SQL that is true when default expression `expr` (text; NULL for none) calls a function
/// that is not immutable (`now()`, `random()`, `nextval`, found by name: PostgreSQL records
/// no dependency on built-in functions) or reads the clock or the session
/// (`CURRENT_TIMESTAMP`, `CURRENT_USER`).
pub fn varies_sql(expr: &str) -> String {
    format!(
        "(coalesce((SELECT bool_or(p.provolatile <> 'i') FROM pg_proc p \
                    WHERE p.proname IN (SELECT lower(m[1]) FROM regexp_matches({expr}, \
                      '([A-Za-z_][A-Za-z0-9_$]*)\\s*\\(', 'g') AS m)), false) \
          OR coalesce({expr} ~* '\\m(current_timestamp|current_date|current_time|localtime|localtimestamp|current_user|session_user|current_role|current_catalog|current_schema|user)\\M', false))"
    )
}

/// The constraints of `tables`, and their indexes that back no constraint.
pub async fn objects(
    client: &Client,
    tables: &[String],
) -> Result<Vec<TableObject>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT * FROM ( \
               SELECT n.nspname || '.' || c.relname AS tbl, 'constraint' AS kind, \
                      con.conname::text AS name, pg_get_constraintdef(con.oid) AS def \
               FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname || '.' || c.relname = ANY($1) \
               UNION ALL \
               SELECT n.nspname || '.' || c.relname, 'index', i.relname::text, \
                      pg_get_indexdef(i.oid) \
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
               JOIN pg_class c ON c.oid = x.indrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname || '.' || c.relname = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid \
                                 AND k.conrelid = x.indrelid) \
             ) o ORDER BY 1, 2, 3",
            &[&tables],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableObject {
            table: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            definition: r.get(3),
        })
        .collect())
}

/// A short, stable digest of a table's definitions (FNV-1a, 64 bits, hex): equal
/// definitions have equal fingerprints; it is for display and quick comparison, [`drift`]
/// says what differs.
pub fn fingerprint(definitions: &Definitions) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |part: &str| {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for c in &definitions.columns {
        add(&c.table);
        add(&c.name);
        add(&c.definition());
    }
    for o in &definitions.objects {
        for part in [&o.table, &o.kind, &o.name, &o.definition] {
            add(part);
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
    /// Why running the statement would still leave the target's rows unlike the source's,
    /// and what to do instead, when it would.
    pub caution: Option<String>,
}

fn drift_of(table: &str, detail: String, statement: String) -> Drift {
    Drift {
        table: table.to_string(),
        detail,
        statement,
        caution: None,
    }
}

/// What differs between the source's definitions and the target's, with the statements
/// that make the target match. Empty when they agree. `subscription` names the target's
/// subscription, which must learn of a table made on the target.
pub fn drift(source: &Definitions, target: &Definitions, subscription: &str) -> Vec<Drift> {
    let by_table = |cols: &[Column]| {
        let mut map: BTreeMap<String, Vec<Column>> = BTreeMap::new();
        for c in cols {
            map.entry(c.table.clone()).or_default().push(c.clone());
        }
        map
    };
    let (src, dst) = (by_table(&source.columns), by_table(&target.columns));
    let mut out = Vec::new();
    for (table, src_cols) in &src {
        let t = qualified(table);
        let Some(dst_cols) = dst.get(table) else {
            out.push(drift_of(
                table,
                "table missing on the target".to_string(),
                format!(
                    "-- pg_dump --schema-only --table={t} SOURCE | psql TARGET; then on the target: ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true); -- copies its rows, then streams them",
                    quote_ident(subscription)
                ),
            ));
            continue;
        };
        for c in src_cols {
            let col = quote_ident(&c.name);
            let Some(d) = dst_cols.iter().find(|d| d.name == c.name) else {
                let mut found = drift_of(
                    table,
                    format!("column {} missing on the target", c.name),
                    format!("ALTER TABLE {t} ADD COLUMN {col} {};", c.definition()),
                );
                if c.default_varies || c.identity.is_some() {
                    found.caution = Some(format!(
                        "its {} gives each existing row a value computed on the target, not the source's: add the column without it (ALTER TABLE {t} ADD COLUMN {col} {};), copy the source's values into the existing rows, then set the default (or identity) as the source has it",
                        if c.identity.is_some() {
                            "identity"
                        } else {
                            "default is not immutable and"
                        },
                        c.typed(),
                    ));
                }
                out.push(found);
                continue;
            };
            out.extend(column_changes(table, &t, c, d));
        }
        for d in dst_cols {
            if !src_cols.iter().any(|c| c.name == d.name) {
                out.push(drift_of(
                    table,
                    format!("column {} exists only on the target", d.name),
                    format!("ALTER TABLE {t} DROP COLUMN {};", quote_ident(&d.name)),
                ));
            }
        }
    }
    out.extend(object_changes(source, target, &src));
    out
}

/// The changes that turn existing column `d` (target) into `c` (source).
fn column_changes(table: &str, t: &str, c: &Column, d: &Column) -> Vec<Drift> {
    let col = quote_ident(&c.name);
    let mut out = Vec::new();
    if c.typed() != d.typed() {
        out.push(drift_of(
            table,
            format!(
                "column {} is {} on the source, {} on the target",
                c.name,
                c.typed(),
                d.typed()
            ),
            format!("ALTER TABLE {t} ALTER COLUMN {col} TYPE {};", c.typed()),
        ));
    }
    if c.generated != d.generated {
        let mut found = drift_of(
            table,
            format!(
                "column {} is generated as {} on the source, {} on the target",
                c.name,
                c.generated.as_deref().unwrap_or("nothing"),
                d.generated.as_deref().unwrap_or("nothing")
            ),
            format!(
                "ALTER TABLE {t} DROP COLUMN {col}, ADD COLUMN {col} {};",
                c.definition()
            ),
        );
        found.caution = Some("a generation expression cannot be altered: the column is dropped and added again, recomputed from each row".into());
        out.push(found);
    } else if c.default != d.default {
        out.push(drift_of(
            table,
            format!(
                "column {}'s default is {} on the source, {} on the target",
                c.name,
                c.default.as_deref().unwrap_or("none"),
                d.default.as_deref().unwrap_or("none")
            ),
            match &c.default {
                Some(x) => format!("ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {x};"),
                None => format!("ALTER TABLE {t} ALTER COLUMN {col} DROP DEFAULT;"),
            },
        ));
    }
    if c.not_null != d.not_null {
        out.push(drift_of(
            table,
            format!(
                "column {} is {} on the source",
                c.name,
                if c.not_null { "NOT NULL" } else { "nullable" }
            ),
            format!(
                "ALTER TABLE {t} ALTER COLUMN {col} {} NOT NULL;",
                if c.not_null { "SET" } else { "DROP" }
            ),
        ));
    }
    if c.identity != d.identity {
        out.push(drift_of(
            table,
            format!(
                "column {}'s identity is {} on the source, {} on the target",
                c.name,
                c.identity.as_deref().unwrap_or("none"),
                d.identity.as_deref().unwrap_or("none")
            ),
            match (&c.identity, &d.identity) {
                (Some(i), None) => {
                    format!("ALTER TABLE {t} ALTER COLUMN {col} ADD GENERATED {i} AS IDENTITY;")
                }
                (Some(i), Some(_)) => {
                    format!("ALTER TABLE {t} ALTER COLUMN {col} SET GENERATED {i};")
                }
                (None, _) => format!("ALTER TABLE {t} ALTER COLUMN {col} DROP IDENTITY;"),
            },
        ));
    }
    out
}

/// The constraints and indexes that differ, for tables both sides have.
fn object_changes(
    source: &Definitions,
    target: &Definitions,
    src_tables: &BTreeMap<String, Vec<Column>>,
) -> Vec<Drift> {
    let on_target: BTreeMap<&str, ()> = target
        .columns
        .iter()
        .map(|c| (c.table.as_str(), ()))
        .collect();
    let key = |o: &TableObject| (o.table.clone(), o.kind.clone(), o.name.clone());
    let dst: BTreeMap<_, &TableObject> = target.objects.iter().map(|o| (key(o), o)).collect();
    let src: BTreeMap<_, &TableObject> = source.objects.iter().map(|o| (key(o), o)).collect();
    let add = |o: &TableObject| match o.kind.as_str() {
        "constraint" => format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {};",
            qualified(&o.table),
            quote_ident(&o.name),
            o.definition
        ),
        _ => format!("{};", o.definition),
    };
    let drop = |o: &TableObject| match o.kind.as_str() {
        "constraint" => format!(
            "ALTER TABLE {} DROP CONSTRAINT {};",
            qualified(&o.table),
            quote_ident(&o.name)
        ),
        _ => {
            let schema = o.table.split_once('.').map_or("public", |(s, _)| s);
            format!(
                "DROP INDEX {}.{};",
                quote_ident(schema),
                quote_ident(&o.name)
            )
        }
    };
    let mut out = Vec::new();
    for (k, o) in &src {
        // A table missing on the target is made whole from the source's dump.
        if !on_target.contains_key(o.table.as_str()) {
            continue;
        }
        match dst.get(k) {
            None => out.push(drift_of(
                &o.table,
                format!("{} {} missing on the target", o.kind, o.name),
                add(o),
            )),
            Some(d) if d.definition != o.definition => out.push(drift_of(
                &o.table,
                format!(
                    "{} {} is `{}` on the source, `{}` on the target",
                    o.kind, o.name, o.definition, d.definition
                ),
                format!("{} {}", drop(d), add(o)),
            )),
            Some(_) => {}
        }
    }
    for (k, d) in &dst {
        if src_tables.contains_key(&d.table) && !src.contains_key(k) {
            out.push(drift_of(
                &d.table,
                format!("{} {} exists only on the target", d.kind, d.name),
                drop(d),
            ));
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
            collation: None,
            not_null: false,
            default: None,
            default_varies: false,
            identity: None,
            generated: None,
        }
    }

    fn defs(columns: Vec<Column>) -> Definitions {
        Definitions {
            columns,
            objects: Vec::new(),
        }
    }

    #[test]
    fn drift_names_each_difference_with_the_statement_that_repairs_it() {
        let mut flag = col("public.a", "flag", "integer");
        flag.default = Some("7".into());
        flag.not_null = true;
        let mut stamp = col("public.a", "stamp", "timestamp with time zone");
        stamp.default = Some("now()".into());
        stamp.default_varies = true;
        let source = defs(vec![
            col("public.a", "id", "bigint"),
            col("public.a", "note", "text"),
            col("public.a", "amount", "numeric(12,2)"),
            flag,
            stamp,
            col("public.b", "id", "integer"),
        ]);
        let target = defs(vec![
            col("public.a", "id", "bigint"),
            col("public.a", "amount", "numeric(10,2)"),
            col("public.a", "old", "text"),
        ]);
        let found = drift(&source, &target, "pgseal_m1");
        let statements: Vec<&str> = found.iter().map(|d| d.statement.as_str()).collect();
        assert_eq!(
            statements[..5],
            [
                r#"ALTER TABLE "public"."a" ADD COLUMN "note" text;"#,
                r#"ALTER TABLE "public"."a" ALTER COLUMN "amount" TYPE numeric(12,2);"#,
                r#"ALTER TABLE "public"."a" ADD COLUMN "flag" integer DEFAULT 7 NOT NULL;"#,
                r#"ALTER TABLE "public"."a" ADD COLUMN "stamp" timestamp with time zone DEFAULT now();"#,
                r#"ALTER TABLE "public"."a" DROP COLUMN "old";"#,
            ]
        );
        assert!(found[2].caution.is_none());
        assert!(
            found[3]
                .caution
                .as_deref()
                .is_some_and(|c| c.contains("not immutable")),
            "{:?}",
            found[3]
        );
        assert_eq!(found[5].detail, "table missing on the target");
        assert!(found[5].statement.contains("REFRESH PUBLICATION"));
        assert_eq!(found.len(), 6);
        assert!(drift(&source, &source, "s").is_empty());
        assert_eq!(fingerprint(&source), fingerprint(&source.clone()));
        assert_ne!(fingerprint(&source), fingerprint(&target));
    }
}
