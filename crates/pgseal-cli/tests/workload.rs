//! `pgseal workload` as a user runs it, against a real server.

use std::process::Command;

fn pgseal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .args(args)
        .output()
        .unwrap()
}

/// `pgseal workload verify` of the ledger `ledger` against `url`, as JSON.
fn verify(url: &str, ledger: &str) -> std::process::Output {
    pgseal(&[
        "workload", "verify", "--url", url, "--ledger", ledger, "--json",
    ])
}

#[test]
fn run_then_verify_is_clean_and_a_lost_transaction_exits_11() {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("run.ledger");
    let (url, ledger_arg) = (db.url("postgres"), ledger.to_str().unwrap().to_string());
    let out = pgseal(&[
        "workload",
        "run",
        "--url",
        &url,
        "--rate",
        "200",
        "--duration",
        "2",
        "--ledger",
        &ledger_arg,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(run["acknowledged"].as_u64().unwrap() > 200, "{run}");

    let out = verify(&url, &ledger_arg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["missing"].as_u64(), v["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(v["acknowledged"], run["acknowledged"]);

    // Lose one acknowledged transaction behind the workload's back.
    let first = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = db.connect("postgres").await.unwrap();
        c.execute(
            "DELETE FROM pgseal_ledger_events WHERE txid = $1::text::bigint",
            &[&first],
        )
        .await
        .unwrap();
    });
    let out = pgseal(&["workload", "verify", "--url", &url, "--ledger", &ledger_arg]);
    assert_eq!(out.status.code(), Some(11));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("missing 1") && text.contains(&first),
        "{text}"
    );
}

#[test]
fn a_transaction_held_up_by_a_lock_is_timed_by_the_clients_own_clock() {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("run.ledger");
    let (url, ledger_arg) = (db.url("postgres"), ledger.to_str().unwrap().to_string());
    let run = |seconds: &str| {
        Command::new(env!("CARGO_BIN_EXE_pgseal"))
            .args(["workload", "run", "--url", &url, "--rate", "100"])
            .args(["--duration", seconds, "--ledger", &ledger_arg, "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A first short run makes the tables; the second is held up by a lock for 800 ms.
    assert!(run("1").wait().unwrap().success());
    let writer = run("3");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let locked_at = rt.block_on(async {
        let c = db.connect("postgres").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let at = pgseal_workload::unix_ms();
        c.batch_execute(
            "BEGIN; LOCK TABLE pgseal_ledger_events IN EXCLUSIVE MODE; \
             SELECT pg_sleep(0.8); COMMIT",
        )
        .await
        .unwrap();
        at
    });
    let out = writer.wait_with_output().unwrap();
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["client_errors"], 0, "{run}");
    let max = run["latency_max_ms"].as_f64().unwrap();
    assert!((700.0..3000.0).contains(&max), "{max} ms");
    let slow = run["slow_transactions"].as_array().unwrap();
    // The slowest began while the lock was held, by the wall clock.
    let slowest = slow
        .iter()
        .max_by(|a, b| a["ms"].as_f64().partial_cmp(&b["ms"].as_f64()).unwrap())
        .unwrap();
    let began = slowest["began_unix_ms"].as_u64().unwrap();
    assert!(
        began + 50 >= locked_at && began <= locked_at + 850,
        "began {began}, locked at {locked_at}"
    );
    assert!(slow.iter().all(|t| t["ms"].as_f64().unwrap() >= 10.0));
}

#[test]
fn sigterm_ends_a_run_early_with_its_summary_and_a_ledger_that_verifies() {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("run.ledger");
    let (url, ledger_arg) = (db.url("postgres"), ledger.to_str().unwrap().to_string());
    let started = std::time::Instant::now();
    let writer = Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .args(["workload", "run", "--url", &url, "--rate", "100"])
        .args(["--duration", "600", "--ledger", &ledger_arg, "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(writer.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(run["acknowledged"].as_u64().unwrap() > 50, "{run}");
    let out = verify(&url, &ledger_arg);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["acknowledged"], run["acknowledged"], "{v}");
}
