//! `pgseal demo --json` as a newcomer runs it (smaller): every invariant holds and nothing
//! is left behind.

mod common;

use std::process::Command;

#[test]
fn the_demo_proves_every_invariant_and_leaves_nothing_behind() {
    let user_home = tempfile::tempdir().unwrap();
    let ports = common::Ports::claim();
    let out = Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .env_remove("PGSEAL_PASSPHRASE")
        .env("PGSEAL_FIRST_PORT", ports.first.to_string())
        .env("PGSEAL_HOME", user_home.path())
        .args(["demo", "--scale", "2", "--duration", "2", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["invariants_failed"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["source"]["encrypted"], false);
    assert_eq!(s["target"]["encrypted"], true);
    assert!(s["target"]["key_id"].is_string());
    assert!(s["handoff_lsn"].is_string());
    assert!(s["workload"]["acknowledged"].as_u64().unwrap() > 100, "{s}");
    assert_eq!(s["workload"]["missing"], 0);
    assert_eq!(s["workload"]["duplicated"], 0);
    assert_eq!(s["workload"]["client_errors"], 0);
    assert!(s["cutover"]["write_pause_ms"].as_u64().unwrap() < 5000);
    assert!(s["cutover"]["sequences_synced"].as_u64().unwrap() >= 1);
    assert_eq!(s["validation"]["mismatched_rows"], 0);
    assert_eq!(s["plaintext_marker_found_on_source_storage"], true);
    assert_eq!(s["plaintext_marker_found_on_target_storage"], false);
    // The throwaway home is gone, with its instances and volumes.
    let home = s["home"].as_str().unwrap();
    assert!(!std::path::Path::new(home).exists(), "{home} left behind");
    let image = s["target"]["volume_image"].as_str().unwrap();
    let loops = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!loops.contains(home), "a mount of {home} left behind");
    assert!(!std::path::Path::new(image).exists());
    // The report stays, in the user's home, with the cutover and the encryption checks.
    let report = s["report"].as_str().unwrap();
    assert!(
        report.starts_with(user_home.path().to_str().unwrap()),
        "{report}"
    );
    let page = std::fs::read_to_string(report).unwrap();
    assert!(page.contains("Cutover write pause"));
    assert!(page.contains("plaintext scan after a CHECKPOINT"));
    assert!(page.contains("fscrypt v2 policy read back"));
}
