//! A schema whose every name is hostile (quotes, backslashes, dollar quotes, dots,
//! spaces, unicode, keywords, 63-byte names) as databases, schemas, tables, columns and
//! keys goes through plan, start, status, validate, verify, cutover, rollback and cleanup
//! under writes, with nothing lost.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The second database's name: a space, a quote, a dot, unicode.
const DB: &str = "Ünï \"db\" 's.x";

/// Schemas, tables, columns and keys, each named as an application's users might.
const SCHEMA: &str = r#"
CREATE SCHEMA "my.app";
CREATE SCHEMA "$f$ sch";
CREATE TABLE "my.app"."Or""ders" ("id""x" text PRIMARY KEY, "$f$" int, "a b" text);
CREATE TABLE "$f$ sch"."select" ("from" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "ü" text);
CREATE TABLE "my.app"."t_abcdefghijklmnopqrstuvwxyz_abcdefghijklmnopqrstuvwxyz_0123456" (k int PRIMARY KEY);
CREATE TABLE "my.app"."no key" (v text);
"#;

/// Keys that would break SQL pasted without quoting.
const KEYS: [&str; 5] = [
    r"a\') OR (SELECT 1) > 0 --",
    "$$x$$",
    "it's",
    "\"quoted\"",
    "ü.漢 🙂",
];

/// Writes `n` rows into every table of database `db` on `instance`, keys from `tag`.
fn write(h: &Home, instance: &str, db: &str, tag: &str, n: usize) {
    let sql = h.sql(instance, db);
    for i in 0..n {
        let key = format!("{tag}{i} {}", KEYS[i % KEYS.len()]);
        sql.runtime
            .block_on(sql.client.execute(
                r#"INSERT INTO "my.app"."Or""ders" ("id""x", "$f$", "a b") VALUES ($1, $2, $1)"#,
                &[&key, &(i as i32)],
            ))
            .unwrap();
        sql.runtime
            .block_on(sql.client.execute(
                r#"INSERT INTO "$f$ sch"."select" ("ü") VALUES ($1)"#,
                &[&key],
            ))
            .unwrap();
        sql.runtime
            .block_on(
                sql.client
                    .execute(r#"INSERT INTO "my.app"."no key" (v) VALUES ($1)"#, &[&key]),
            )
            .unwrap();
    }
}

/// Rows in the hostile tables of `db` on `instance`.
fn rows(h: &Home, instance: &str, db: &str) -> i64 {
    h.sql(instance, db).count(
        r#"SELECT (SELECT count(*) FROM "my.app"."Or""ders") + (SELECT count(*) FROM "$f$ sch"."select")
                + (SELECT count(*) FROM "my.app"."no key")"#,
    )
}

#[test]
fn hostile_names_go_through_a_whole_migration_and_back_with_nothing_lost() {
    let h = Home::with_source();
    let admin = h.sql("src", "postgres");
    admin.exec(&format!(
        "CREATE DATABASE {}",
        pgseal_pg::sql::quote_ident(DB)
    ));
    for db in ["postgres", DB] {
        h.sql("src", db).exec(SCHEMA);
        write(&h, "src", db, "before ", 20);
    }

    let plan = h.run(&[
        "migrate",
        "plan",
        "--source",
        "src",
        "--replica-identity-full",
    ]);
    assert!(
        plan.status.success(),
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    h.start("hn", &["--replica-identity-full"]);
    write(&h, "src", DB, "during ", 20);
    // An application keeps writing while the migration replicates and validates.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, sql) = (stop.clone(), h.sql("src", DB));
        std::thread::spawn(move || {
            let mut written = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("live {written} {}", KEYS[written as usize % KEYS.len()]);
                sql.runtime
                    .block_on(sql.client.execute(
                        r#"INSERT INTO "my.app"."Or""ders" ("id""x", "$f$") VALUES ($1, 1)"#,
                        &[&key],
                    ))
                    .unwrap();
                written += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            written
        })
    };
    // A table with a hostile name made during the migration: subscribed and copied.
    h.sql("src", DB)
        .exec(r#"CREATE TABLE "my.app"."new ""t"" 🙂" (k text PRIMARY KEY)"#);
    h.sql("src", DB)
        .exec(r#"INSERT INTO "my.app"."new ""t"" 🙂" VALUES ('a''b'), ('c\d')"#);
    let status = h.json(&["migrate", "status", "hn"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .sql("src-enc", DB)
        .count(r#"SELECT count(*) FROM "my.app"."new ""t"" 🙂""#)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            h.json(&["migrate", "status", "hn"])
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let out = h.run(&["migrate", "validate", "hn", "--json"]);
    let validated: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(validated["clean"], true, "{validated}");
    let tables: Vec<&str> = validated["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&r#""my.app"."Or""ders""#)
            && tables.contains(&r#""my.app"."new ""t"" 🙂""#),
        "{tables:?}"
    );
    // Names holding escapes reach the terminal escaped.
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "verify", "hn"]).stdout).to_string();
    assert!(!text.contains('\u{1b}') && text.contains("clean"), "{text}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let live = writer.join().unwrap();
    assert!(live > 50, "{live}");
    let on_source: Vec<i64> = ["postgres", DB]
        .iter()
        .map(|db| rows(&h, "src", db))
        .collect();
    h.ok(&["migrate", "cutover", "hn"]);
    for (db, n) in ["postgres", DB].iter().zip(&on_source) {
        assert_eq!(rows(&h, "src-enc", db), *n, "{db} on the target");
    }
    write(&h, "src-enc", DB, "after ", 10);
    let on_target = rows(&h, "src-enc", DB);
    assert_eq!(on_target, 3 * (20 + 20 + 10) + live);
    h.ok(&["migrate", "rollback", "hn"]);
    assert_eq!(
        rows(&h, "src", DB),
        on_target,
        "what the target took came back"
    );
    h.ok(&["migrate", "cleanup", "hn"]);
    // After a rollback, cleanup removes the target and everything pgseal made.
    for db in ["postgres", DB] {
        assert_eq!(h.sql("src", db).pgseal_everything(), 0, "{db}");
    }
}
