//! The `pgseal` binary as a user runs it.

mod common;

use std::process::{Command, Output};

use common::find_in;

fn pgseal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgseal"));
    cmd.env_remove("PGSEAL_HOME").env_remove("PGSEAL_PG_BINDIR");
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_teaches_the_flow_and_documents_exit_codes() {
    let out = pgseal().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out);
    for needle in [
        "pgseal doctor",
        "--home",
        "PGSEAL_HOME",
        "--json",
        "Exit codes",
        "precondition not met",
        "logical replication slot",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = pgseal().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out).trim(),
        format!("pgseal {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_error_exits_2() {
    let out = pgseal().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pgseal().args(["doctor", "-v", "-q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "-v and -q conflict");
}

/// A directory holding links to a chosen few programs, used as the whole `PATH`.
fn path_with(programs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in programs {
        let real = [
            "/usr/local/bin",
            "/usr/local/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/bin",
            "/sbin",
        ]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} must be installed on this machine (scripts/setup)"));
        std::os::unix::fs::symlink(real, dir.path().join(name)).unwrap();
    }
    dir
}

fn doctor_json(path: &std::path::Path, home: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = pgseal()
        .args(["doctor", "--json", "--home"])
        .arg(home)
        .env("PATH", path)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {}", text(&out)));
    (out.status.code(), json)
}

fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    find_in(&report["checks"], "id", id)
}

#[test]
fn doctor_without_postgres_on_path_says_so_prints_the_fix_and_exits_3() {
    let path = path_with(&["mkfs.ext4", "losetup", "mount"]);
    let home = tempfile::tempdir().unwrap();
    let (code, report) = doctor_json(path.path(), home.path());
    assert_eq!(code, Some(3));
    assert_eq!(report["ready"], false);
    let pg = check(&report, "postgres_binaries");
    assert_eq!(pg["status"], "missing");
    let fix = pg["fix"].as_str().unwrap();
    // Debian keeps server programs off PATH; the fix points at them or installs them.
    assert!(
        fix.starts_with("export PGSEAL_PG_BINDIR=/usr/lib/postgresql/")
            || fix == "apt-get install -y postgresql-15",
        "{fix}"
    );

    // The same in text: the word MISSING, the fix, and the closing verdict.
    let out = pgseal()
        .args(["doctor", "--home"])
        .arg(home.path())
        .env("PATH", path.path())
        .output()
        .unwrap();
    let human = text(&out);
    assert!(human.contains("MISSING"), "{human}");
    assert!(human.contains(&format!("fix: {fix}")), "{human}");
    assert!(human.contains("Not ready"), "{human}");
}

#[test]
fn doctor_without_pgbouncer_warns_with_the_fix_but_is_ready() {
    // A typical non-root PATH: /usr/bin and /bin but no sbin, where Debian puts pgbouncer.
    for dir in ["/usr/bin", "/bin"] {
        assert!(
            !std::path::Path::new(dir).join("pgbouncer").exists(),
            "pgbouncer in {dir}"
        );
    }
    let links = path_with(&["mkfs.ext4", "losetup"]);
    let path = std::env::join_paths([links.path(), "/usr/bin".as_ref(), "/bin".as_ref()]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let (code, report) = doctor_json(path.as_ref(), home.path());
    let pgb = check(&report, "pgbouncer");
    assert_eq!(pgb["status"], "missing");
    assert_eq!(pgb["need"], "recommended");
    assert_eq!(pgb["fix"], "apt-get install -y pgbouncer");
    assert_eq!(
        check(&report, "postgres_binaries")["status"],
        "ok",
        "{report:#}"
    );
    assert_eq!(report["ready"], true, "{report:#}");
    assert_eq!(code, Some(0));
}

#[test]
fn doctor_honours_the_bindir_override() {
    let path = path_with(&["mkfs.ext4", "losetup", "mount"]);
    let home = tempfile::tempdir().unwrap();
    let out = pgseal()
        .args(["doctor", "--json", "--home"])
        .arg(home.path())
        .env("PATH", path.path())
        .env("PGSEAL_PG_BINDIR", "/nonexistent/pg/bin")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pg = check(&report, "postgres_binaries");
    assert_eq!(pg["status"], "missing");
    assert!(
        pg["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/pg/bin"),
        "{pg}"
    );
    assert!(
        pg["detail"].as_str().unwrap().contains("PGSEAL_PG_BINDIR"),
        "{pg}"
    );
}
