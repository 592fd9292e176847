//! `pgseal instance` as a user runs it, on real servers.

use std::process::Command;

mod common;
use common::{Home, assert_exit, free_port};

#[test]
fn instance_commands_create_describe_stop_start_and_delete() {
    let h = Home::new();
    let port = free_port();
    let created = h.json(&[
        "instance",
        "create",
        "cli-plain",
        "--port",
        &port,
        "--storage",
        "512MiB",
        "--param",
        "wal_level=logical",
    ]);
    assert_eq!(created["status"], "available");
    assert_eq!(created["params"]["wal_level"], "logical");
    assert_eq!(created["encrypted"], false);

    let enc = h.json(&[
        "instance",
        "create",
        "cli-enc",
        "--encrypted",
        "--storage",
        "256MiB",
    ]);
    assert_eq!(enc["encrypted"], true);
    assert_eq!(
        enc["port"], h.ports.first,
        "without --port: the first free port from PGSEAL_FIRST_PORT"
    );
    let default_key = h.json(&["key", "describe", "pgseal/default"]);
    assert_eq!(
        enc["key_id"], default_key["key_id"],
        "--encrypted without --key uses the managed default key"
    );

    let list = h.json(&["instance", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    assert_eq!(
        h.json(&["instance", "stop", "cli-enc"])["status"],
        "stopped"
    );
    // Another program took the port while the instance was down: start names it and
    // the fix, and leaves the instance stopped (its key out of the kernel).
    let squatter = std::net::TcpListener::bind(("127.0.0.1", h.ports.first)).unwrap();
    let out = h.run(&["instance", "start", "cli-enc"]);
    assert_exit(&out, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "instance 'cli-enc' cannot start: its port {} is now in use",
            h.ports.first
        )),
        "{stderr}"
    );
    assert_eq!(
        h.json(&["instance", "describe", "cli-enc"])["status"],
        "stopped"
    );
    drop(squatter);
    assert_eq!(
        h.json(&["instance", "start", "cli-enc"])["status"],
        "available"
    );

    let change = h.json(&["instance", "set-param", "cli-plain", "max_wal_senders=13"]);
    assert_eq!(change["pending_restart"][0], "max_wal_senders");
    let url = h.json(&["instance", "url", "cli-plain"]);
    assert_eq!(
        url["url"],
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );

    // Precondition failures exit 3 and make nothing.
    assert_exit(&h.run(&["instance", "create", "cli-plain", "--json"]), 3);
    // A name that could not be an instance's is a wrong command line, refused by the
    // command line's own check.
    let out = h.run(&["instance", "create", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(2));

    let out = h.run(&["instance", "delete", "cli-plain"]);
    assert!(!out.status.success(), "delete asks for --yes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(
        h.json(&["instance", "delete", "cli-plain", "--yes"])["deleted"],
        "cli-plain"
    );
    assert_eq!(h.json(&["instance", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn without_root_an_encrypted_instance_is_refused_with_a_pointer_to_doctor() {
    use std::os::unix::process::CommandExt;
    let postgres = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres OS user");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(postgres.uid), Some(postgres.gid)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgseal"))
        .uid(postgres.uid.as_raw())
        .gid(postgres.gid.as_raw())
        .env("PGSEAL_HOME", dir.path().join("home"))
        .env("PGSEAL_PASSPHRASE", "unprivileged test passphrase")
        .args([
            "instance",
            "create",
            "nope",
            "--encrypted",
            "--storage",
            "256MiB",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("not running as root") && stderr.contains("pgseal doctor"),
        "{stderr}"
    );
    assert!(!dir.path().join("home/instances/nope").exists());
}
