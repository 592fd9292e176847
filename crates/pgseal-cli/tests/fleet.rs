//! `pgseal fleet`: many local sources from one inventory file, under writes, in waves.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The six sources: two empty, two at pgbench scale 1, two at scale 3; the first three
/// in wave 1, the others in wave 2.
const SOURCES: [(&str, u32, u32); 6] = [
    ("s-empty-1", 0, 1),
    ("s-small-1", 1, 1),
    ("s-large-1", 3, 1),
    ("s-empty-2", 0, 2),
    ("s-small-2", 1, 2),
    ("s-large-2", 3, 2),
];

fn inventory(h: &Home, text: &str) -> String {
    let path = h.path("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Every step run of every migration as `(migration, started_ms, finished_ms)`; a run
/// the kill interrupted ends at `killed_ms`.
fn step_runs(h: &Home, names: &[&str], killed_ms: i64) -> Vec<(String, i64, i64)> {
    let mut runs = Vec::new();
    for name in names {
        let report = h.json(&["migrate", "report", name]);
        for s in report["steps"].as_array().unwrap() {
            let started = s["started_ms"].as_i64().unwrap();
            let finished = s["finished_ms"].as_i64().unwrap_or(killed_ms.max(started));
            if s["step"] != "validate" && s["step"] != "cutover" && s["step"] != "rollback" {
                runs.push((name.to_string(), started, finished));
            }
        }
    }
    runs
}

/// Serves `pgseal ARGS --serve` on a free port, scrapes `/metrics` once, stops it, and
/// returns what a Prometheus text-format parser read.
fn scrape(h: &Home, args: &[&str]) -> Vec<prometheus_parse::Sample> {
    use std::io::{BufRead, Read, Write};
    let mut server = h
        .command(args)
        .args(["--serve", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address: {first}"))
        .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: pgseal\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("version=0.0.4"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap()
        .samples
}

#[test]
fn six_sources_in_two_waves_start_two_at_a_time_survive_a_kill_and_lose_nothing() {
    let h = Home::new();
    let mut text = String::from(
        "# Six local sources, two waves.\n[defaults]\nkey = \"pgseal/default\"\noptions = { replica_identity_full = true }\n",
    );
    let mut writers = Vec::new();
    for (name, scale, wave) in SOURCES {
        h.source(name, &["wal_level=logical"]);
        if scale > 0 {
            pgbench_init_scale(&h, name, "postgres", scale);
        }
        let endpoint = format!("{name}-ep");
        h.ok(&["endpoint", "create", &endpoint, "--instance", name]);
        text.push_str(&format!(
            "\n[[source]]\nname = \"m-{name}\"\nsource = \"{name}\"\nwave = {wave}\nendpoint = \"{endpoint}\"\n"
        ));
        let ledger = h.path(&format!("{name}.ledger")).display().to_string();
        writers.push((name, ledger_through(&h, &endpoint, &ledger), ledger));
    }
    let file = inventory(&h, &text);
    let names: Vec<String> = SOURCES.iter().map(|s| format!("m-{}", s.0)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();

    // The plan: one row per source, every one ready, nothing made.
    let plan = h.json(&["fleet", "plan", &file, "--parallel", "2"]);
    assert_eq!(plan["ready"], true, "{plan}");
    let rows = plan["sources"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{plan}");
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| r["source_bytes"].as_u64().unwrap())
        .collect();
    assert!(
        sizes[2] > sizes[1] && sizes[1] > sizes[0],
        "three sizes: {sizes:?}"
    );
    for r in rows {
        assert_eq!(r["recommended"], "snapshot", "{r}");
        assert_eq!(r["databases"], serde_json::json!(["postgres"]), "{r}");
    }
    assert_eq!(h.json(&["migrate", "list"]), serde_json::json!([]));

    // Start two at a time; killed once the first migrations have begun.
    let mut fleet = h
        .command(&["fleet", "start", &file, "--parallel", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let begun = h.json(&["migrate", "list"]).as_array().unwrap().len();
        if begun >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet began no third migration"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fleet.kill().unwrap();
    fleet.wait().unwrap();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let list = h.json(&["migrate", "list"]);
    let unfinished = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["phase"] != "replicating")
        .count();
    assert!(unfinished >= 1, "the kill left one mid-way: {list}");

    // Run again: what stopped resumes, what replicates is left, the rest start.
    let again = h.json(&["fleet", "start", &file, "--parallel", "2"]);
    let did: Vec<&str> = again["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["action"].as_str().unwrap())
        .collect();
    assert!(did.contains(&"resumed"), "{again}");
    assert!(!did.contains(&"failed"), "{again}");
    let status = h.json(&["fleet", "status", &file]);
    for m in status["migrations"].as_array().unwrap() {
        assert_eq!(m["phase"], "replicating", "{status}");
    }
    // A scrape of the fleet's metrics while they replicate: a Prometheus text-format
    // parser reads it, and it holds each migration's phase and lag.
    let metrics = scrape(&h, &["fleet", "status", &file]);
    for name in &names {
        let of = |metric: &str| {
            metrics
                .iter()
                .find(|s| s.metric == metric && s.labels.get("migration") == Some(name))
                .unwrap_or_else(|| panic!("no {metric} of {name}: {metrics:?}"))
        };
        assert_eq!(
            of("pgseal_migration_phase").labels.get("phase"),
            Some("replicating")
        );
        assert_eq!(
            of("pgseal_stream_lag_bytes").labels.get("database"),
            Some("postgres")
        );
        assert!(
            of("pgseal_slot_retained_bytes")
                .labels
                .get("source")
                .is_some()
        );
    }
    // Never more than two at once: at each step's start, at most two migrations had a
    // step under way (the journal's clocks).
    let runs = step_runs(&h, &names, killed_ms);
    for (_, at, _) in &runs {
        let mut busy: Vec<&str> = runs
            .iter()
            .filter(|(_, s, f)| s <= at && at < f)
            .map(|(m, _, _)| m.as_str())
            .collect();
        busy.dedup();
        busy.sort();
        busy.dedup();
        assert!(busy.len() <= 2, "{busy:?} at {at}: {runs:?}");
    }

    // Validate all; wave 1 then wave 2 cut over.
    let validated = h.json(&["fleet", "validate", &file]);
    for m in validated["migrations"].as_array().unwrap() {
        assert_eq!(m["action"], "validated", "{validated}");
    }
    for wave in ["1", "2"] {
        let cut = h.json(&["fleet", "cutover", &file, "--wave", wave, "--parallel", "2"]);
        let migrations = cut["migrations"].as_array().unwrap();
        assert_eq!(migrations.len(), 3, "{cut}");
        for m in migrations {
            assert_eq!(m["action"], "cut over", "{cut}");
            assert!(m["output"]["write_pause_ms"].as_u64().is_some(), "{cut}");
        }
    }
    // One migration rolled back alone, as `pgseal migrate` does it.
    h.ok(&["migrate", "rollback", "m-s-small-2"]);

    // Every ledger: every acknowledged transaction once, where its endpoint now points.
    for (name, child, ledger) in writers {
        let run = stop_ledger(child);
        let on = if name == "s-small-2" {
            name.to_string()
        } else {
            format!("{name}-enc")
        };
        assert_all_landed(&h, &on, &ledger, &run);
    }

    // The report: a row per migration, each linking to its own page.
    let report = h.json(&["fleet", "report", &file]);
    let page = std::fs::read_to_string(report["report"].as_str().unwrap()).unwrap();
    for name in &names {
        assert!(
            page.contains(&format!("data-name=\"{name}\"")),
            "{name} has no row"
        );
        assert!(
            h.path("home")
                .join("migrations")
                .join(name)
                .join("report.html")
                .exists()
        );
    }
    assert_eq!(page.matches("class=\"migration\"").count(), 6);
    assert!(page.contains("rollback "), "the rolled-back pause is shown");
    assert_eq!(page.matches("handoff at ").count(), 6, "each handoff LSN");
    // Chromium renders it, not blank, with both plots laid out.
    let work = h.path("chromium");
    std::fs::create_dir_all(&work).unwrap();
    let url = format!("file://{}", report["report"].as_str().unwrap());
    let distinct = screenshot_colours(&work, &url, "1100,2000", &[]);
    assert!(distinct > 50, "a near-blank screenshot: {distinct} colours");
    let sizes = svg_sizes(&work, &page);
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(
        sizes.iter().all(|(w, h)| *w > 100.0 && *h > 50.0),
        "{sizes:?}"
    );

    // Cleanup, wave by wave: the rolled-back one too.
    for wave in ["1", "2"] {
        let done = h.json(&["fleet", "cleanup", &file, "--wave", wave]);
        for m in done["migrations"].as_array().unwrap() {
            assert_eq!(m["action"], "cleaned up", "{done}");
        }
    }
    // Nothing of pgseal's is left where the applications now write (the cut-over
    // sources stay fenced, as a cleanup leaves them).
    for (name, _, _) in SOURCES {
        let now = if name == "s-small-2" {
            name.to_string()
        } else {
            format!("{name}-enc")
        };
        assert_eq!(h.sql(&now, "postgres").pgseal_everything(), 0, "{now}");
    }
    let status = h.json(&["fleet", "status", &file]);
    for m in status["migrations"].as_array().unwrap() {
        assert_eq!(m["phase"], "cleaned_up", "{status}");
    }
}

#[test]
fn a_bad_inventory_is_refused_by_line_and_field_before_anything_starts() {
    let h = Home::with_source();
    let cases = [
        (
            "[[source]]\nname = \"a\"\nsource = \"src\"\n\n[[source]]\nname = \"b\"\nsource = \"src\"\n",
            ":5:",
            "`src` is already given at line 1",
        ),
        (
            "[[source]]\nname = \"a\"\nsource = \"src\"\nkee = \"k\"\n",
            ":4:",
            "unknown field `kee`",
        ),
        ("[[source]]\nname = \"a\"\nsource = \"src\n", ":3:", ""),
        (
            "[defaults]\noptions = { jobs = 0 }\n[[source]]\nname = \"a\"\nsource = \"src\"\n",
            ":3:",
            "field `jobs`",
        ),
        (
            "[[source]]\nname = \"a b\"\nsource = \"src\"\n",
            ":1:",
            "field `name`",
        ),
    ];
    for (text, line, says) in cases {
        let file = inventory(&h, text);
        for command in ["plan", "start"] {
            let (_, err) = h.exits(2, &["fleet", command, &file]);
            assert!(
                err.contains(&format!("{file}{line}")) && err.contains(says),
                "{command} {text:?}: {err}"
            );
        }
    }
    assert_eq!(
        h.json(&["migrate", "list"]),
        serde_json::json!([]),
        "nothing started"
    );
    let file = inventory(&h, "[[source]]\nname = \"a\"\nsource = \"src\"\nwave = 2\n");
    let (_, err) = h.exits(2, &["fleet", "cutover", &file, "--wave", "1"]);
    assert!(
        err.contains("wave 1 is not in") && err.contains("waves are 2"),
        "{err}"
    );
    // A source another migration holds is refused by name, and nothing starts.
    h.start("held", &["--no-follow"]);
    let file = inventory(&h, "[[source]]\nname = \"other\"\nsource = \"src\"\n");
    let (_, err) = h.exits(3, &["fleet", "start", &file]);
    assert!(err.contains("already in migration held"), "{err}");
    let list = h.json(&["migrate", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Its follower, run by hand, serves its metrics while it follows.
    let metrics = scrape(&h, &["migrate", "follow", "held"]);
    assert!(
        metrics.iter().any(|s| s.metric == "pgseal_migration_phase"
            && s.labels.get("migration") == Some("held")
            && s.labels.get("phase") == Some("replicating")),
        "{metrics:?}"
    );
    h.ok(&["migrate", "abort", "held"]);

    // A second fleet command on a file one is working on is refused, not raced.
    let file = inventory(&h, "[[source]]\nname = \"f1\"\nsource = \"src\"\n");
    let mut first = h
        .command(&["fleet", "start", &file])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.json(&["migrate", "list"]).as_array().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the first fleet start began nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, err) = h.exits(3, &["fleet", "start", &file]);
    assert!(err.contains("another pgseal fleet command"), "{err}");
    assert!(first.wait().unwrap().success());
    let status = h.json(&["fleet", "status", &file]);
    assert_eq!(status["migrations"][0]["phase"], "replicating", "{status}");
    // One migration's metrics, as `migrate status --serve` gives them.
    let metrics = scrape(&h, &["migrate", "status", "f1"]);
    let lag = metrics
        .iter()
        .find(|s| s.metric == "pgseal_stream_lag_bytes")
        .unwrap_or_else(|| panic!("no lag: {metrics:?}"));
    assert_eq!(lag.labels.get("migration"), Some("f1"));
    assert!(
        metrics
            .iter()
            .all(|s| s.labels.get("migration") == Some("f1")),
        "{metrics:?}"
    );
    // Planning the same source under another name: held, a blocker; and the starts of
    // `held` (aborted since) and f1 are what this machine has measured, so the plan
    // estimates one.
    let other = inventory(&h, "[[source]]\nname = \"f2\"\nsource = \"src\"\n");
    let out = h.run(&["fleet", "plan", &other, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &plan["sources"][0];
    assert!(
        row["blockers"][0]
            .as_str()
            .unwrap()
            .contains("already in migration f1"),
        "{plan}"
    );
    assert_eq!(plan["rates"]["snapshot"]["migrations"], 2, "{plan}");
    assert!(
        row["estimated_start_seconds"].as_f64().unwrap() > 0.5,
        "{plan}"
    );
    h.ok(&["migrate", "abort", "f1"]);
}
