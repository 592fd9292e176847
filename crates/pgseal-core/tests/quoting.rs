//! `pgseal_pg::sql`, the one place pgseal writes names and values into SQL text, fed
//! hostile names and values (quotes, backslashes, dollar quotes, dots, spaces, unicode,
//! escapes, keywords, 63-byte names) by a property test; a real server reads each back and
//! must get the very same name or value, with `standard_conforming_strings` on and off.

use pgseal_pg::sql::{qualified, quote_ident, quote_literal, split_qualified};
use pgseal_testkit::TestCluster;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Pieces hostile names and values are made of.
const ATOMS: &[&str] = &[
    "'",
    "\"",
    "\\",
    "$$",
    "$f$",
    ".",
    " ",
    "ü",
    "漢",
    "🙂",
    "--",
    ";",
    "\n",
    "\t",
    "select",
    "A",
    "z",
    "0",
    "%",
    "E'",
    "\u{1b}[31m",
    "\\'",
    "''",
    "\"\"",
    "*/",
    "/*",
    ")",
    "(",
];

/// A string of 1 to 12 atoms.
fn hostile() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(ATOMS), 1..12).prop_map(|a| a.concat())
}

/// At most 63 bytes (PostgreSQL's longest name), cut at a character boundary.
fn name_sized(mut s: String) -> String {
    while s.len() > 63 {
        s.pop();
    }
    s
}

#[test]
fn hostile_names_and_values_read_back_as_themselves() {
    let cluster = TestCluster::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(pgseal_pg::connect_pinned(&cluster.config("postgres")))
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    runner
        .run(&(hostile(), hostile(), hostile()), |(value, a, b)| {
            let (a, b) = (name_sized(a), name_sized(b));
            runtime.block_on(async {
                // A value as a literal, whatever standard_conforming_strings says.
                for conforming in ["on", "off"] {
                    client
                        .batch_execute(&format!("SET standard_conforming_strings = {conforming}"))
                        .await
                        .unwrap();
                    let same: bool = client
                        .query_one(&format!("SELECT {} = $1", quote_literal(&value)), &[&value])
                        .await
                        .unwrap_or_else(|e| panic!("{value:?} as {}: {e}", quote_literal(&value)))
                        .get(0);
                    prop_assert!(
                        same,
                        "{value:?} read back otherwise, conforming {conforming}"
                    );
                }
                // A name as an identifier: the column is named exactly that.
                let statement = client
                    .prepare(&format!("SELECT 1 AS {}", quote_ident(&a)))
                    .await
                    .unwrap_or_else(|e| panic!("{a:?}: {e}"));
                prop_assert_eq!(statement.columns()[0].name(), a.as_str());
                // A qualified name as PostgreSQL writes it splits into the two names.
                let written: String = client
                    .query_one("SELECT format('%I.%I', $1::text, $2::text)", &[&a, &b])
                    .await
                    .unwrap()
                    .get(0);
                prop_assert_eq!(split_qualified(&written), (a.clone(), b.clone()));
                // ... and quoted again, PostgreSQL parses it back to them.
                let parsed: Vec<String> = client
                    .query_one("SELECT parse_ident($1)::text[]", &[&qualified(&written)])
                    .await
                    .unwrap()
                    .get(0);
                prop_assert_eq!(parsed, vec![a.clone(), b.clone()]);
                Ok(())
            })
        })
        .unwrap();
}
