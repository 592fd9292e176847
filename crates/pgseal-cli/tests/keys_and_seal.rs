//! `pgseal key`, `seal` and `unseal` as a user runs them: outcomes and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASS: &str = "integration test passphrase";

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgseal"));
        cmd.env("PGSEAL_HOME", self.path("home"))
            .env("PGSEAL_PASSPHRASE", PASS);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn key_lifecycle_through_the_cli() {
    let h = Home::new();
    let out = h.run(&[
        "key",
        "create",
        "--alias",
        "orders",
        "--description",
        "orders db",
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = json(&out)["key_id"].as_str().unwrap().to_string();

    let list = json(&h.run(&["key", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["aliases"][0], "orders");

    assert_eq!(
        json(&h.run(&["key", "rotate", "alias/orders", "--json"]))["material_versions"],
        2
    );
    assert_eq!(
        json(&h.run(&["key", "disable", &id, "--json"]))["state"],
        "disabled"
    );
    assert_eq!(
        json(&h.run(&["key", "enable", "orders", "--json"]))["state"],
        "enabled"
    );
    let pending = json(&h.run(&[
        "key",
        "schedule-deletion",
        "orders",
        "--days",
        "7",
        "--json",
    ]));
    assert_eq!(pending["state"], "pending_deletion");
    assert!(pending["deletion_date"].as_str().is_some());
    assert_eq!(
        json(&h.run(&["key", "cancel-deletion", "orders", "--json"]))["state"],
        "disabled"
    );

    let out = h.run(&["key", "schedule-deletion", "orders", "--days", "2"]);
    assert_eq!(code(&out), 2, "out-of-range days is a usage error");
    assert!(stderr(&out).contains("7 to 30"), "{}", stderr(&out));

    let text = String::from_utf8(h.run(&["key", "describe", "orders"]).stdout).unwrap();
    assert!(
        text.contains(&id) && text.contains("disabled") && text.contains("orders db"),
        "{text}"
    );

    // Audit log: one line per operation, with operation names a KMS user knows.
    let audit = std::fs::read_to_string(h.path("home/kms/audit.log")).unwrap();
    for op in [
        "CreateKey",
        "RotateKey",
        "DisableKey",
        "EnableKey",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
    ] {
        assert!(audit.contains(op), "{op} missing from audit log");
    }
}

#[test]
fn seal_and_unseal_round_trip_files_and_pipes() {
    let h = Home::new();
    let input = h.path("data.bin");
    let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let sealed = h.path("data.sealed");
    let out = h.run(&[
        "seal",
        "--context",
        "purpose=test",
        "--json",
        p(&input),
        p(&sealed),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["plaintext_bytes"], 3_000_001);
    assert_eq!(report["chunks"], 3);
    assert_eq!(report["encryption_context"]["purpose"], "test");
    // The default key is the managed one, made on first use.
    let keys = json(&h.run(&["key", "describe", "pgseal/default", "--json"]));
    assert_eq!(report["key_id"], keys["key_id"]);
    assert_eq!(keys["managed"], true);

    let back = h.path("back.bin");
    let out = h.run(&["unseal", p(&sealed), p(&back)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // stdin to stdout.
    let mut child = h
        .cmd()
        .args(["unseal", "-", "-"])
        .stdin(std::fs::File::open(&sealed).unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut piped = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut piped).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(piped, data);

    // An existing output is refused without --force and left as it was.
    let out = h.run(&["seal", p(&input), p(&back)]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

/// The files in a directory, to show a failed command left nothing behind.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_gets_a_clear_error_a_distinct_code_and_writes_nothing() {
    let h = Home::new();
    let input = h.path("in.bin");
    std::fs::write(&input, vec![42u8; 100_000]).unwrap();
    let sealed = h.path("in.sealed");
    assert_eq!(code(&h.run(&["seal", p(&input), p(&sealed)])), 0);
    let before = names(h.dir.path());
    let target = h.path("out.bin");

    // 4: no passphrase.
    let out = h
        .cmd()
        .env_remove("PGSEAL_PASSPHRASE")
        .args(["unseal", p(&sealed), p(&target)])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4);
    assert!(
        stderr(&out).contains("PGSEAL_PASSPHRASE"),
        "{}",
        stderr(&out)
    );

    // 5: wrong passphrase, via --passphrase-file.
    let pass_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pass_file.path(), "not the passphrase\n").unwrap();
    let out = h
        .cmd()
        .env_remove("PGSEAL_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(pass_file.path())
        .args(["unseal", p(&sealed), p(&target)])
        .output()
        .unwrap();
    assert_eq!(code(&out), 5);
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );

    // 7: unknown key.
    let out = h.run(&["seal", "--key", "alias/nope", p(&input), p(&target)]);
    assert_eq!(code(&out), 7);
    assert!(stderr(&out).contains("alias/nope"), "{}", stderr(&out));

    // 9: tampered stream.
    let mut bytes = std::fs::read(&sealed).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let tampered = h.path("tampered.sealed");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = h.run(&["unseal", p(&tampered), p(&target)]);
    assert_eq!(code(&out), 9);
    assert!(
        stderr(&out).contains("damaged or was tampered with"),
        "{}",
        stderr(&out)
    );

    // 9 too: truncated stream.
    let truncated = h.path("truncated.sealed");
    std::fs::write(
        &truncated,
        &std::fs::read(&sealed).unwrap()[..bytes.len() - 10],
    )
    .unwrap();
    assert_eq!(code(&h.run(&["unseal", p(&truncated), p(&target)])), 9);

    // 10: not a sealed stream at all.
    let out = h.run(&["unseal", p(&input), p(&target)]);
    assert_eq!(code(&out), 10);
    assert!(
        stderr(&out).contains("not a pgseal sealed stream"),
        "{}",
        stderr(&out)
    );

    // 8: disabled key.
    let default_id = json(&h.run(&["key", "describe", "pgseal/default", "--json"]))["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = json(&h.run(&["key", "create", "--alias", "mine", "--json"]));
    let own_sealed = h.path("own.sealed");
    assert_eq!(
        code(&h.run(&["seal", "--key", "mine", p(&input), p(&own_sealed)])),
        0
    );
    h.run(&["key", "disable", "mine"]);
    let out = h.run(&["unseal", p(&own_sealed), p(&target)]);
    assert_eq!(code(&out), 8);
    assert!(stderr(&out).contains("disabled"), "{}", stderr(&out));
    assert_ne!(own["key_id"].as_str().unwrap(), default_id);

    // 6: damaged key store.
    let store = h.path("home/kms/keystore.json");
    let good = std::fs::read(&store).unwrap();
    std::fs::write(&store, &good[..good.len() / 2]).unwrap();
    let out = h.run(&["key", "list"]);
    assert_eq!(code(&out), 6);
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    std::fs::write(&store, &good).unwrap();

    // None of it wrote an output file or left a temp file.
    let mut expected = before.clone();
    expected.extend([
        "own.sealed".to_string(),
        "tampered.sealed".into(),
        "truncated.sealed".into(),
    ]);
    expected.sort();
    assert_eq!(names(h.dir.path()), expected);
}
