//! `pgseal workload` as a user runs it, against a real server.

use std::process::Command;

fn pgseal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .args(args)
        .output()
        .unwrap()
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

    let out = pgseal(&[
        "workload",
        "verify",
        "--url",
        &url,
        "--ledger",
        &ledger_arg,
        "--json",
    ]);
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
