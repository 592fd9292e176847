//! `migrate report` of a real short migration that crashed once and was resumed, under the
//! ledger workload through an endpoint: its JSON facts, and its page rendered by a real
//! headless Chromium (screenshot not blank, every plot laid out with a size, nothing
//! fetched from the network).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Home, assert_all_landed, assert_crashed, screenshot_colours, svg_sizes};

#[test]
fn the_report_of_a_crashed_and_resumed_migration_shows_both_runs_and_renders_in_chromium() {
    let h = Home::with_source();
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 20);
    std::thread::sleep(Duration::from_secs(1));

    // A crash right after the snapshot's work, then resume.
    let crashed = h.run_env(
        ("PGSEAL_FAILPOINT", "after:snapshot"),
        &["migrate", "start", "--source", "src", "--name", "r1"],
    );
    assert_crashed(&crashed, "after:snapshot");
    h.ok(&["migrate", "resume", "r1"]);
    for _ in 0..3 {
        h.ok(&["migrate", "status", "r1"]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let validated = h.json(&["migrate", "validate", "r1"]);
    assert_eq!(validated["clean"], true, "{validated}");
    let cut = h.json(&["migrate", "cutover", "r1"]);
    let run = writes.finish();
    assert_eq!(run["client_errors"], 0, "{run}");
    assert_all_landed(&h, "src-enc", &ledger, &run);
    h.ok(&["migrate", "cleanup", "r1"]);

    // The facts.
    let r = h.json(&["migrate", "report", "r1"]);
    let runs: Vec<(String, u64, String)> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "snapshot")
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["attempt"].as_u64().unwrap(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        vec![
            ("snapshot".into(), 1, "running".into()),
            ("snapshot".into(), 2, "done".into())
        ],
        "{r}"
    );
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{r}");
    assert!(samples.iter().all(|s| s["database"] == "postgres"));
    assert!(
        samples
            .iter()
            .any(|s| s["retained_bytes"].as_i64().is_some())
    );
    let cutover = &r["cutover"];
    assert_eq!(cutover["write_pause_ms"], cut["write_pause_ms"], "{r}");
    let phases: Vec<&str> = cutover["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "pause",
            "fence",
            "drain",
            "final_check",
            "sequences",
            "verified",
            "carried",
            "reverse_setup",
            "switch",
            "resume",
            "first_write"
        ]
    );
    let parts: f64 = cutover["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ms"].as_f64().unwrap())
        .sum();
    let pause = cutover["write_pause_ms"].as_f64().unwrap();
    assert!((parts - pause).abs() < 5.0, "{parts} vs {pause}");
    // PgBouncer saw the workload's clients wait behind the pause, never longer than it.
    let waited = cutover["client_wait_ms"].as_f64().unwrap();
    assert!(waited > 0.0 && waited <= pause + 5.0, "{cutover}");
    let enc = &r["encryption"];
    assert_eq!(enc["encrypted"], true, "{enc}");
    assert!(
        enc["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("fscrypt v2 policy read back"),
        "{enc}"
    );
    assert_eq!(r["validation"]["clean"], true);
    assert!(r["cleaned_up"].as_array().unwrap().len() >= 3, "{r}");

    // The page: written where the help says, owner-only, with its four plots inline.
    let out = h.ok(&["migrate", "report", "r1"]);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        Path::new(&path),
        h.path("home").join("migrations/r1/report.html")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let page = std::fs::read_to_string(&path).unwrap();
    assert_eq!(page.matches("<svg").count(), 4);
    for fetching in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!page.contains(fetching), "the page holds {fetching}");
    }
    assert!(page.contains("interrupted"), "the crashed run shows");
    assert!(
        page.contains("then run again (<code>resume</code>): snapshot."),
        "the resumed step is named"
    );

    // Chromium renders it: a screenshot that is not blank...
    let work = h.path("chromium");
    std::fs::create_dir_all(&work).unwrap();
    let net_log = work.join("net-log.json");
    let distinct = screenshot_colours(
        &work,
        &format!("file://{path}"),
        "1100,3000",
        &[format!("--log-net-log={}", net_log.display())],
    );
    assert!(distinct > 50, "a near-blank screenshot: {distinct} colours");
    // ... for which nothing was fetched: in Chromium's own network log, a request the
    // page makes carries the page's origin as its initiator (`null` for a file); the
    // browser's own background calls (update checks, accounts) carry "not an origin".
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&net_log).unwrap()).unwrap();
    for event in log["events"].as_array().unwrap() {
        let params = &event["params"];
        if let Some(initiator) = params["initiator"].as_str() {
            assert_eq!(
                initiator, "not an origin",
                "the page fetched {}",
                params["url"]
            );
        }
    }
    // ... and lays out every plot with a size.
    let sizes = svg_sizes(&work, &page);
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    assert!(
        sizes.iter().all(|(w, h)| *w > 100.0 && *h > 50.0),
        "{sizes:?}"
    );

    h.ok(&["endpoint", "delete", "src-ep"]);
    h.sql("src", "template1")
        .exec("ALTER DATABASE postgres ALLOW_CONNECTIONS true");
}
