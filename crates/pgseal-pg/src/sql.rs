//! Names and values as SQL text, by PostgreSQL's own rules: the one place pgseal assembles
//! them. Every name or value that reaches SQL is a parameter, or quoted here, in a session
//! whose `search_path` and `standard_conforming_strings` are pinned (see
//! [`crate::connect_pinned`]); `tests/quoting.rs` of `pgseal-core` feeds these functions
//! hostile names and values and has a real server read them back.

/// Quotes an SQL identifier (`"..."`, doubling embedded quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal by PostgreSQL's own rules (`quote_literal`): `'...'` with
/// embedded quotes doubled, and as `E'...'` with backslashes doubled when there is one, so
/// the literal reads the same whatever `standard_conforming_strings` says.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// `schema.table` quoted as two identifiers (`public` when no schema is given).
pub fn qualified(table: &str) -> String {
    let (schema, name) = split_qualified(table);
    format!("{}.{}", quote_ident(&schema), quote_ident(&name))
}

/// `schema.table` split into its schema and table names: either as SQL writes it (a part
/// in double quotes is one name, dots and all: `"Shop. ünï"."Orders"`, as `format('%I.%I')`
/// gives it), or else as names are, split at the first dot (`public.NewTable`); `public`
/// when there is no schema.
pub fn split_qualified(table: &str) -> (String, String) {
    /// A double-quoted name at the start of `text`: the name and what follows it.
    fn quoted(text: &str) -> Option<(String, &str)> {
        let rest = text.strip_prefix('"')?;
        let mut name = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, n)| *n) == Some('"') {
                    name.push('"');
                    chars.next();
                    continue;
                }
                return Some((name, &rest[i + 1..]));
            }
            name.push(c);
        }
        None
    }
    let sql_name = |part: &str| -> Option<String> {
        match quoted(part) {
            Some((name, "")) => Some(name),
            Some(_) => None,
            None => (!part.is_empty() && !part.contains(['"', '.'])).then(|| part.to_string()),
        }
    };
    // As SQL writes it, when that reads as exactly two names with a quoted one.
    if table.contains('"') {
        let (schema, rest) = match quoted(table) {
            Some((schema, rest)) => (Some(schema), rest.strip_prefix('.')),
            None => match table.split_once('.') {
                Some((s, rest)) => (sql_name(s), Some(rest)),
                None => (None, None),
            },
        };
        if let (Some(schema), Some(name)) = (schema, rest.and_then(sql_name)) {
            return (schema, name);
        }
    }
    match table.split_once('.') {
        Some((schema, name)) => (schema.to_string(), name.to_string()),
        None => ("public".to_string(), table.to_string()),
    }
}

/// A column name as PostgreSQL quoted it (`quote_ident`) back to the name itself: `"id""x"`
/// is `id"x` (the change log's key object names it so).
pub fn unquote_ident(quoted: &str) -> String {
    match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => quoted.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_read_as_sql_writes_them_or_as_they_are() {
        assert_eq!(
            qualified(r#""Shop. ünï"."Orders""#),
            r#""Shop. ünï"."Orders""#
        );
        assert_eq!(qualified(r#"public."a.b""#), r#""public"."a.b""#);
        assert_eq!(qualified(r#""x""y".t"#), r#""x""y"."t""#);
        assert_eq!(qualified("public.NewTable"), r#""public"."NewTable""#);
        assert_eq!(qualified("orders"), r#""public"."orders""#);
        assert_eq!(qualified("s.t.u"), r#""s"."t.u""#);
        assert_eq!(
            split_qualified(r#""a"".b".c"#),
            (r#"a".b"#.to_string(), "c".to_string())
        );
    }

    #[test]
    fn unquoting_undoes_quoting() {
        assert_eq!(unquote_ident(r#""id""x""#), r#"id"x"#);
        assert_eq!(unquote_ident(r#""Key""#), "Key");
        assert_eq!(unquote_ident("plain"), "plain");
    }
}
