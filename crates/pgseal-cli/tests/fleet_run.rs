//! `pgseal fleet run`: runners sharing a journal kept in PostgreSQL, each driving the
//! fleet's migrations under leases; one killed, one paused past its lease.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The lease the tests' runners take: short, so that a takeover comes within seconds.
const LEASE_SECONDS: &str = "6";

fn inventory(h: &Home, text: &str) -> String {
    let path = h.path("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A runner's process, killed if the test ends before it does (a failed assertion): its
/// migration commands die with it, before the home is cleaned up.
struct Running(Option<Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn take(mut self) -> Child {
        self.0.take().expect("a running runner")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pgseal fleet run FILE` as runner `name`, one migration at a time, its progress lines
/// (JSON, one per event) on a pipe.
fn runner(h: &Home, file: &str, name: &str, env: &[(&str, &str)]) -> Running {
    let mut c = h.command(&[
        "fleet",
        "run",
        file,
        "--parallel",
        "1",
        "--poll",
        "0.5",
        "--runner",
        name,
        "--json",
    ]);
    c.env("PGSEAL_LEASE_SECONDS", LEASE_SECONDS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Running(Some(c.spawn().unwrap()))
}

/// Waits for a runner to end and returns its summary (stdout) and its progress lines.
fn finished(
    running: Running,
    within: Duration,
) -> (i32, serde_json::Value, Vec<serde_json::Value>) {
    let child = running.take();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(within);
        // Still running past its time: stop it, so the test fails instead of hanging.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().unwrap();
    drop(watchdog);
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no summary: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary, lines)
}

/// The step runs of migration `name`: `(step, runner, outcome, started_ms, finished_ms)`.
/// Empty while it is not in the journal (a start takes its lease first).
fn runs(h: &Home, name: &str) -> Vec<(String, String, String, i64, Option<i64>)> {
    let out = h.run(&["migrate", "status", name, "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["step"].as_str().unwrap().to_string(),
                r["runner"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["started_ms"].as_i64().unwrap(),
                r["finished_ms"].as_i64(),
            )
        })
        .collect()
}

fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_runners_share_six_sources_the_one_killed_mid_start_is_taken_over_and_all_cut_over() {
    let h = Home::kept(Kept::Postgres);
    let mut text = String::from(
        "[defaults]\noptions = { replica_identity_full = true, no_follow = true }\n\
         [[wave]]\nnumber = 1\ncutover = \"auto\"\n[[wave]]\nnumber = 2\ncutover = \"auto\"\n",
    );
    let mut writers = Vec::new();
    for i in 1..=6 {
        let name = format!("s{i}");
        h.source(&name, &["wal_level=logical"]);
        if i % 2 == 0 {
            pgbench_init_scale(&h, &name, "postgres", 1);
        }
        let endpoint = format!("{name}-ep");
        h.ok(&["endpoint", "create", &endpoint, "--instance", &name]);
        text.push_str(&format!(
            "\n[[source]]\nname = \"m{i}\"\nsource = \"{name}\"\nwave = {}\nendpoint = \"{endpoint}\"\n",
            1 + (i - 1) / 3
        ));
        let ledger = h.path(&format!("{name}.ledger")).display().to_string();
        let child = ledger_through(&h, &endpoint, &ledger);
        writers.push((name, child, ledger));
    }
    let file = inventory(&h, &text);

    let a = runner(&h, &file, "runner-a", &[]);
    let b = runner(&h, &file, "runner-b", &[]);
    // Runner A in the middle of a start: a step after preflight under way, by A.
    let mut taken = String::new();
    until("runner A mid-start", Duration::from_secs(120), || {
        let leases = h.json(&["journal", "leases"]);
        for l in leases.as_array().unwrap() {
            if l["runner"] != "runner-a" {
                continue;
            }
            let m = l["migration"].as_str().unwrap();
            let mid = runs(&h, m).iter().any(|(step, runner, outcome, _, _)| {
                runner == "runner-a" && outcome == "running" && step != "preflight"
            });
            if mid {
                taken = m.to_string();
                return true;
            }
        }
        false
    });
    drop(a);
    let killed_ms = pgseal_core::journal::now_ms();

    let (code, summary, _) = finished(b, Duration::from_secs(420));
    assert_eq!(code, 0, "{summary}");
    for m in summary["migrations"].as_array().unwrap() {
        assert_eq!(m["action"], "done", "{summary}");
    }
    let list = h.json(&["migrate", "list"]);
    for m in list.as_array().unwrap() {
        assert_eq!(m["phase"], "cut_over", "{list}");
    }
    // The killed runner's migration: begun by A, finished by B, once its lease expired
    // (B's first step there starts 6 s or more after A's last began).
    let of_taken = runs(&h, &taken);
    let a_last = of_taken
        .iter()
        .filter(|r| r.1 == "runner-a")
        .map(|r| r.3)
        .max()
        .unwrap();
    let b_first = of_taken
        .iter()
        .filter(|r| r.1 == "runner-b")
        .map(|r| r.3)
        .min()
        .unwrap_or_else(|| panic!("B never ran {taken}: {of_taken:?}"));
    assert!(b_first > killed_ms, "{of_taken:?}");
    assert!(b_first - a_last >= 5_000, "{of_taken:?}");
    // Every step of every migration by one of the two runners, and never by both at
    // once: the runs of one migration do not overlap.
    let mut by = std::collections::BTreeSet::new();
    for i in 1..=6 {
        let mut r = runs(&h, &format!("m{i}"));
        r.sort_by_key(|r| r.3);
        for pair in r.windows(2) {
            let end = pair[0].4.unwrap_or(killed_ms);
            assert!(end <= pair[1].3, "m{i} overlaps: {r:?}");
        }
        for run in &r {
            assert!(["runner-a", "runner-b"].contains(&run.1.as_str()), "{r:?}");
            by.insert(run.1.clone());
        }
    }
    assert_eq!(by.len(), 2, "both runners ran steps");
    // No lease is left behind.
    assert_eq!(h.json(&["journal", "leases"]), serde_json::json!([]));

    // Every ledger: every acknowledged transaction once, on the target.
    for (name, child, ledger) in writers {
        let run = stop_ledger(child);
        assert_eq!(run["client_errors"], 0, "{name}: {run}");
        assert_all_landed(&h, &format!("{name}-enc"), &ledger, &run);
    }
}

#[test]
fn a_runner_paused_past_its_lease_stops_at_its_next_write_and_the_other_finishes() {
    let h = Home::with_source_kept(Kept::Postgres);
    let file = inventory(
        &h,
        "[[source]]\nname = \"m1\"\nsource = \"src\"\noptions = { no_follow = true }\n",
    );
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 40);
    // Runner A holds its migration at a known point: the snapshot's work done, not yet
    // recorded (its next act is a write to the journal).
    let wait = h.path("wait-point");
    let wait_env = wait.display().to_string();
    let a = runner(
        &h,
        &file,
        "runner-a",
        &[
            ("PGSEAL_WAITPOINT", "after:snapshot"),
            ("PGSEAL_WAITPOINT_FILE", &wait_env),
        ],
    );
    until(
        "runner A at its wait point",
        Duration::from_secs(120),
        || wait.exists(),
    );
    let leases = h.json(&["journal", "leases"]);
    let child = leases[0]["pid"].as_i64().unwrap() as i32;
    assert_eq!(leases[0]["runner"], "runner-a", "{leases}");
    // Paused, runner and migration command both, as a frozen host would be; its wait
    // point released, so that it goes on the moment it is continued.
    let stop = |pid: i32, signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    };
    stop(child, nix::sys::signal::Signal::SIGSTOP);
    stop(a.id() as i32, nix::sys::signal::Signal::SIGSTOP);
    std::fs::remove_file(&wait).unwrap();
    // Until it expires, the fleet's status names the runner that holds it.
    let status = h.json(&["fleet", "status", &file]);
    assert_eq!(status["migrations"][0]["runner"], "runner-a", "{status}");
    until("A's lease expired", Duration::from_secs(30), || {
        h.json(&["journal", "leases"])[0]["left_ms"]
            .as_i64()
            .is_some_and(|ms| ms < 0)
    });

    // Runner B takes the migration over; once it has written a step, A is continued.
    let b = runner(&h, &file, "runner-b", &[]);
    until("runner B took over", Duration::from_secs(60), || {
        runs(&h, "m1").iter().any(|r| r.1 == "runner-b")
    });
    let taken_ms = pgseal_core::journal::now_ms();
    stop(child, nix::sys::signal::Signal::SIGCONT);
    stop(a.id() as i32, nix::sys::signal::Signal::SIGCONT);

    let (b_code, b_summary, _) = finished(b, Duration::from_secs(240));
    assert_eq!(b_code, 0, "{b_summary}");
    assert_eq!(b_summary["migrations"][0]["action"], "done", "{b_summary}");
    let (a_code, a_summary, a_lines) = finished(a, Duration::from_secs(120));
    assert_eq!(a_code, 0, "{a_summary}");
    // A's migration command stopped on its own with "lease lost" (exit 12) ...
    let a_exits: Vec<i64> = a_lines
        .iter()
        .filter(|l| l["event"] == "finished")
        .filter_map(|l| l["exit_code"].as_i64())
        .collect();
    assert_eq!(a_exits.first(), Some(&12), "{a_lines:?}");
    assert!(
        a_lines
            .iter()
            .any(|l| l.to_string().contains("lease on migration 'm1' was lost")),
        "{a_lines:?}"
    );
    // ... before it changed anything: the snapshot run it was in was never recorded
    // done, and no step of the start began by A after B took over. (A's runner may take
    // the lease afresh later, for the validation: never while B holds it, so no two runs
    // of the migration ever overlap.)
    let r = runs(&h, "m1");
    let a_snapshot: Vec<_> = r
        .iter()
        .filter(|r| r.1 == "runner-a" && r.0 == "snapshot")
        .collect();
    assert_eq!(a_snapshot.len(), 1, "{r:?}");
    assert_eq!(a_snapshot[0].2, "running", "{r:?}");
    assert!(
        r.iter()
            .all(|r| r.1 != "runner-a" || r.3 < taken_ms || !STEPS.contains(&r.0.as_str())),
        "{r:?}"
    );
    let mut ordered = r.clone();
    ordered.sort_by_key(|r| r.3);
    for pair in ordered.windows(2) {
        // A's snapshot run, never finished, ended when A was paused.
        let end = pair[0].4.unwrap_or(pair[0].3);
        assert!(end <= pair[1].3, "two runs at once: {r:?}");
    }
    assert!(
        r.iter()
            .any(|r| r.1 == "runner-b" && r.0 == "replicating" && r.2 == "done"),
        "{r:?}"
    );
    // One stream, one slot: nothing of A's doubled what B made.
    assert_eq!(
        h.sql("src", "postgres")
            .count("SELECT count(*) FROM pg_catalog.pg_replication_slots"),
        1
    );
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "src-enc", &ledger);
    assert_eq!(on_target["missing"], 0, "{on_target}");
    assert_eq!(on_target["duplicated"], 0, "{on_target}");
    assert_eq!(on_target["acknowledged"], run["acknowledged"]);
}
