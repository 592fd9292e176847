//! Faults outside pgseal: the target stopped hard (SIGQUIT to its postmaster, as a crash
//! or an OOM kill leaves it) during catch-up and inside the cutover's and the rollback's
//! pauses, then started again, while the ledger and pgbench write through the endpoint.
//! Nothing committed is lost or doubled, the fence is never left up, and the way on (the
//! same command again) works.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Stops instance `name` hard and starts it again (crash recovery).
fn crash_and_restart(h: &Home, name: &str) {
    let info = h.json(&["instance", "describe", name]);
    let data_dir = info["data_dir"].as_str().expect("data_dir");
    pgseal_testkit::crash_postmaster(Path::new(data_dir)).unwrap();
    h.ok(&["instance", "start", name]);
}

/// Runs `args` with pgseal waiting at `point`; once it is there, runs `fault`, then lets
/// pgseal go on. Returns what pgseal printed.
fn fault_at(h: &Home, point: &str, args: &[&str], fault: impl FnOnce()) -> Output {
    let file = h.path("waitpoint");
    let mut child = h
        .command(args)
        .env("PGSEAL_WAITPOINT", point)
        .env("PGSEAL_WAITPOINT_FILE", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !file.exists() {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} ended before {point}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{point} never reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fault();
    std::fs::remove_file(&file).unwrap();
    child.wait_with_output().unwrap()
}

/// [`fault_at`] `point`, where `instance` is stopped hard and started again.
fn crash_at(h: &Home, point: &str, instance: &str, args: &[&str]) -> Output {
    fault_at(h, point, args, || crash_and_restart(h, instance))
}

/// Runs `migrate COMMAND tc` with the target stopped hard and started again at `point`
/// inside its pause, and checks the command failed and undid itself: the phase is
/// `phase` again, and `serving` (the instance the endpoint `src-ep` still points at)
/// takes connections.
fn undone_after_a_crash(h: &Home, command: &str, point: &str, phase: &str, serving: &str) {
    let out = crash_at(h, point, "src-enc", &["migrate", command, "tc"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let status = h.json(&["migrate", "status", "tc"]);
    assert_eq!(status["migration"]["phase"], phase, "{stderr}\n{status}");
    assert!(takes_connections(h, serving), "{stderr}");
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        serving
    );
}

/// Whether every database of `instance` but the templates takes connections.
fn takes_connections(h: &Home, instance: &str) -> bool {
    h.sql(instance, "template1")
        .text("SELECT bool_and(datallowconn)::text FROM pg_database WHERE NOT datistemplate")
        == "true"
}

#[test]
fn a_target_stopped_hard_in_catch_up_in_a_validation_and_inside_both_pauses_loses_nothing_and_never_leaves_a_fence_up()
 {
    let h = Home::with_source();
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    pgbench_init(&h, "src", "postgres");
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 60);
    let bench = pgbench(&h, "src-ep", "postgres", 20, 60);
    h.start("tc", &["--replica-identity-full"]);

    // During catch-up: the target restarts and follows again, nothing missing.
    crash_and_restart(&h, "src-enc");
    wait_caught_up(&h, "src-enc", &ledger);
    assert_eq!(h.json(&["migrate", "validate", "tc"])["clean"], true);

    // In the middle of a validation: it does not call anything clean it could not read,
    // and the next one is clean.
    let out = crash_at(
        &h,
        "validate:table",
        "src-enc",
        &["migrate", "validate", "tc", "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        report["clean"] != true,
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_caught_up(&h, "src-enc", &ledger);
    assert_eq!(h.json(&["migrate", "validate", "tc"])["clean"], true);

    // Inside the cutover's pause, with the source fenced: the cutover fails and undoes
    // itself; the source serves again and the target follows it.
    undone_after_a_crash(&h, "cutover", "cutover:fenced", "replicating", "src");
    std::thread::sleep(Duration::from_secs(2));
    wait_caught_up(&h, "src-enc", &ledger);
    // The restarted target's apply worker found the source fenced and exited; the
    // launcher starts it again after `wal_retrieve_retry_interval`. Until then the
    // cutover refuses, naming it, as a user would see.
    let ready = Instant::now();
    loop {
        let out = h.run(&["migrate", "cutover", "tc", "--dry-run"]);
        if out.status.success() {
            break;
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("apply worker is not running"), "{text}");
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "{text}\ntarget's log:\n{}",
            server_log_tail(&h, "src-enc", 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    h.json(&["migrate", "cutover", "tc"]);
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        "src-enc"
    );
    std::thread::sleep(Duration::from_secs(2));

    // Inside the rollback's pause, with the target fenced: its fence is in its catalog and
    // survives the crash; the rollback undoes itself and lifts it, and the target serves.
    undone_after_a_crash(&h, "rollback", "rollback:fenced", "cut_over", "src-enc");
    std::thread::sleep(Duration::from_secs(2));
    h.json(&["migrate", "rollback", "tc"]);
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        "src"
    );

    // The writers' own counts: every acknowledged ledger transaction on the source once,
    // and pgbench's processed transactions are its history there, balanced.
    let run = writes.finish();
    let processed = pgbench_processed(bench);
    assert_all_landed(&h, "src", &ledger, &run);
    let (history, balanced) = tpcb(&h.sql("src", "postgres"));
    assert_eq!(history, processed, "pgbench's transactions on the source");
    assert!(balanced, "every balance is the sum of its history");
}

#[test]
fn a_source_that_comes_back_without_its_slot_is_failed_by_name_and_never_resumed() {
    let h = Home::with_source();
    let ledger = h.ledger();
    let writes = h.workload(&["--instance", "src"], &ledger, 6);
    h.start("sf", &[]);
    let slot = h.json(&["migrate", "status", "sf"])["replication"]["streams"][0]["name"]
        .as_str()
        .expect("the stream's name")
        .to_string();
    // What a failover to a PostgreSQL 15 standby leaves: the same databases, no logical
    // slot (its walsender ended, the slot dropped before the apply worker reconnects).
    h.sql("src", "postgres").exec(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = '{slot}' AND active_pid IS NOT NULL; \
         SELECT pg_sleep(0.2); SELECT pg_drop_replication_slot('{slot}')"
    ));
    writes.finish();
    let status = h.json(&["migrate", "status", "sf"]);
    assert_eq!(status["migration"]["phase"], "failed", "{status}");
    let why = status["migration"]["error"].to_string();
    assert!(
        why.contains(&slot) && why.contains("failover") && why.contains("pgseal migrate abort sf"),
        "{why}"
    );
    // Never resumed as if nothing happened, never cut over.
    let (_, stderr) = h.exits(3, &["migrate", "resume", "sf"]);
    assert!(
        stderr.contains("cannot mend it") && stderr.contains(&slot),
        "{stderr}"
    );
    assert_eq!(
        h.json(&["migrate", "status", "sf"])["migration"]["phase"],
        "failed"
    );
    let out = h.run(&["migrate", "cutover", "sf"]);
    assert!(!out.status.success());
    // The way on: abort leaves nothing on the source.
    h.ok(&["migrate", "abort", "sf"]);
    assert_eq!(h.sql("src", "postgres").pgseal_objects(), 0);
}

#[test]
fn every_connection_to_the_source_cut_for_two_seconds_in_catch_up_loses_nothing() {
    let h = Home::new();
    let ledger = h.ledger();
    let (db, relay, writes) = behind_a_relay(&h, "cut", "cut-enc", 15);
    // The stream's walsender on the source, serving the subscription through the relay.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = rt.block_on(db.connect("postgres")).unwrap();
    let walsender = || -> Option<i32> {
        rt.block_on(source.query_opt(
            "SELECT pid FROM pg_stat_replication WHERE application_name LIKE 'pgseal%'",
            &[],
        ))
        .unwrap()
        .map(|r| r.get(0))
    };
    let before = walsender().expect("the subscription streams");
    // The network drops: every connection through the relay closes, and none is taken
    // for 2 s, while the ledger goes on writing.
    relay.cut();
    std::thread::sleep(Duration::from_secs(2));
    relay.restore();
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "cut-enc", &ledger);
    assert_eq!(
        on_target["acknowledged"], run["acknowledged"],
        "{on_target}"
    );
    // The cut ended the stream's connection: a new walsender serves it now.
    let after = walsender().expect("the subscription streams again");
    assert_ne!(before, after);
    assert_eq!(h.json(&["migrate", "validate", "cut"])["clean"], true);
    h.ok(&["migrate", "abort", "cut"]);
}

/// A source reached by URL through a relay the test controls (the subscription and
/// pgseal's own sessions cross it; the ledger writes to the source directly), migrated
/// onto instance `target` as migration `name`, with the ledger writing for `seconds`.
fn behind_a_relay(
    h: &Home,
    name: &str,
    target: &str,
    seconds: u32,
) -> (pgseal_testkit::TestCluster, pgseal_testkit::Relay, Workload) {
    let db = pgseal_testkit::TestCluster::start().unwrap();
    let relay = pgseal_testkit::Relay::start(&format!("127.0.0.1:{}", db.port())).unwrap();
    let via = format!("postgres://postgres@127.0.0.1:{}/postgres", relay.port());
    let writes = h.workload(&["--url", &db.url("postgres")], &h.ledger(), seconds);
    std::thread::sleep(Duration::from_secs(1));
    h.ok(&[
        "migrate", "start", "--source", &via, "--target", target, "--name", name,
    ]);
    (db, relay, writes)
}

#[test]
fn a_source_silent_for_two_seconds_in_catch_up_and_in_a_validation_loses_nothing() {
    let h = Home::new();
    let ledger = h.ledger();
    let (_db, relay, writes) = behind_a_relay(&h, "hold", "hold-enc", 15);
    // The network stalls: nothing crosses the relay either way for 2 s, connections stay
    // open (TCP still answers), while the ledger goes on writing.
    relay.hold();
    std::thread::sleep(Duration::from_secs(2));
    relay.release();
    // A validation whose source goes silent for 2 s in the middle of a table goes on
    // where it was and calls the data clean.
    let out = fault_at(
        &h,
        "validate:table",
        &["migrate", "validate", "hold", "--json"],
        || {
            relay.hold();
            std::thread::sleep(Duration::from_secs(2));
            relay.release();
        },
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let validated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(validated["clean"], true, "{validated}");
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "hold-enc", &ledger);
    assert_eq!(
        on_target["acknowledged"], run["acknowledged"],
        "{on_target}"
    );
    h.ok(&["migrate", "abort", "hold"]);
}

#[test]
fn a_source_silent_for_a_minute_inside_the_pause_ends_it_at_its_timeout_and_the_fence_comes_down_when_it_answers()
 {
    let h = Home::new();
    let ledger = h.ledger();
    let (db, relay, writes) = behind_a_relay(&h, "mute", "mute-enc", 20);
    wait_caught_up(&h, "mute-enc", &ledger);
    // Inside the pause, with the source fenced, the network to it stalls for 60 s: the
    // drain cannot read the slots, and lifting the fence cannot reach the source either.
    let (held, hold_began) = std::sync::mpsc::channel::<Instant>();
    let out = std::thread::scope(|scope| {
        let relay = &relay;
        scope.spawn(move || {
            let began = hold_began.recv().unwrap();
            std::thread::sleep(Duration::from_secs(60).saturating_sub(began.elapsed()));
            relay.release();
        });
        let args = [
            "migrate",
            "cutover",
            "mute",
            "--on-switch",
            "true",
            "--timeout",
            "5",
        ];
        fault_at(&h, "cutover:draining", &args, || {
            relay.hold();
            held.send(Instant::now()).unwrap();
        })
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // It gave up at its timeout, naming what it waited for, and ended the pause then,
    // before the source answered again.
    assert!(
        stderr.contains("timed out after 5 s waiting for every slot on the source to confirm the barrier (the drain) inside the pause (--timeout)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the pause reached its --timeout with the source's fence up: the switch resumed"
        ),
        "{stderr}"
    );
    // Once the source answered, the fence came down and the migration replicates again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = rt.block_on(db.connect("postgres")).unwrap();
    let open: bool = rt
        .block_on(source.query_one(
            "SELECT bool_and(datallowconn) FROM pg_database WHERE NOT datistemplate",
            &[],
        ))
        .unwrap()
        .get(0);
    assert!(open, "{stderr}");
    let status = h.json(&["migrate", "status", "mute"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    // Nothing the ledger was told was committed is lost or doubled, and the cutover goes
    // through once the network holds (the apply worker may be starting again after its
    // own timeout).
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "mute-enc", &ledger);
    assert_eq!(
        on_target["acknowledged"], run["acknowledged"],
        "{on_target}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let again = h.run(&["migrate", "cutover", "mute", "--on-switch", "true"]);
        if again.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let on_target = h.verify(&["--instance", "mute-enc"], &ledger);
    assert_eq!(on_target["missing"], 0, "{on_target}");
    assert_eq!(on_target["duplicated"], 0, "{on_target}");
}

/// Takes all but `leave` bytes of what the file system under `dir` has free, with a file
/// (allocated, not written) that `Drop` removes.
struct Filler(std::path::PathBuf);

impl Filler {
    fn leaving(dir: &Path, leave: u64) -> Filler {
        let fs = nix::sys::statvfs::statvfs(dir).unwrap();
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        let path = dir.join("pgseal-test-filler");
        let file = std::fs::File::create(&path).unwrap();
        nix::fcntl::posix_fallocate(&file, 0, free.saturating_sub(leave) as i64).unwrap();
        Filler(path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_target_whose_disk_fills_in_catch_up_is_named_with_the_fix_and_goes_on_once_grown() {
    let h = Home::with_source();
    let ledger = h.ledger();
    h.sql("src", "postgres")
        .exec("CREATE TABLE bulk (id bigint PRIMARY KEY, pad text)");
    let writes = h.workload(&["--instance", "src"], &ledger, 40);
    h.start("full", &["--max-slot-retention", "512MiB"]);
    wait_caught_up(&h, "src-enc", &ledger);
    // The target's encrypted volume fills (a file beside its data, on the same volume):
    // the apply worker cannot extend a table and stops.
    let info = h.json(&["instance", "describe", "src-enc"]);
    let data_dir = Path::new(info["data_dir"].as_str().unwrap());
    let volume = data_dir.ancestors().nth(2).unwrap();
    assert!(volume.ends_with("mnt"), "{}", volume.display());
    let filler = Filler::leaving(volume, 512 << 10);
    // 20 MiB more rows on the source than the target has room for.
    h.sql("src", "postgres").exec(
        "INSERT INTO bulk SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 20000) g",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let status = h.json(&["migrate", "status", "full"]);
        let errors = status["replication"]["streams"][0]["subscription"]["apply_errors"]
            .as_i64()
            .unwrap_or(0);
        if errors > 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the apply never failed: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // status names the cause, the free space and the fix.
    let free = status["storage"]["target"]["free_bytes"].as_u64().unwrap();
    assert!(free < 64 << 20, "{status}");
    let size = status["storage"]["target"]["size_bytes"].as_u64().unwrap();
    let grown = format!("{}GiB", (size * 2).div_ceil(1 << 30));
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("the target's storage (instance src-enc) has")
            && warnings.contains(&format!("pgseal instance resize src-enc --storage {grown}")),
        "{status}"
    );
    // The source is protected meanwhile: its slot keeps the WAL within the limit set at
    // start, which PostgreSQL itself enforces.
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    let limit = h
        .sql("src", "postgres")
        .text("SELECT current_setting('max_slot_wal_keep_size')");
    assert_eq!(limit, "512MB");
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "status", "full"]).stdout).into_owned();
    assert!(text.contains("storage: source"), "{text}");
    // The fix: the volume grows online, the apply goes on, nothing is lost.
    h.ok(&["instance", "resize", "src-enc", "--storage", &grown]);
    let run = writes.finish();
    let on_target = wait_caught_up(&h, "src-enc", &ledger);
    assert_eq!(
        on_target["acknowledged"], run["acknowledged"],
        "{on_target}"
    );
    assert_eq!(h.json(&["migrate", "validate", "full"])["clean"], true);
    assert_eq!(
        h.sql("src-enc", "postgres")
            .text("SELECT count(*)::text FROM bulk"),
        "20000"
    );
    let status = h.json(&["migrate", "status", "full"]);
    assert!(
        !status["warnings"]
            .to_string()
            .contains("the target's storage"),
        "{status}"
    );
    drop(filler);
}

#[test]
fn a_source_disk_filling_while_the_slot_holds_wal_is_guarded_before_postgresql_stops() {
    let h = Home::new();
    h.ok(&[
        "instance",
        "create",
        "esrc",
        "--encrypted",
        "--port",
        &free_port(),
        "--storage",
        "1GiB",
        "--param",
        "wal_level=logical",
    ]);
    h.ok(&["migrate", "start", "--source", "esrc", "--name", "guard"]);
    // The target stops: from now on the slot holds every byte of WAL the source writes.
    h.ok(&["instance", "stop", "esrc-enc"]);
    h.sql("esrc", "postgres").exec(
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 32) AS pad FROM generate_series(1, 30000) g",
    );
    let status = h.json(&["migrate", "status", "guard"]);
    assert_eq!(status["retention"], "ok", "{status}");
    assert!(
        status["replication"]["retained_bytes"].as_i64().unwrap() >= 16 << 20,
        "{status}"
    );
    // The source's volume runs low while the slot holds that WAL: under the tenth pgseal
    // keeps free, status protects the source by aborting the migration (dropping its
    // slot), while PostgreSQL still has room to run.
    let info = h.json(&["instance", "describe", "esrc"]);
    let data_dir = Path::new(info["data_dir"].as_str().unwrap());
    let _filler = Filler::leaving(data_dir.ancestors().nth(2).unwrap(), 32 << 20);
    let (_, stderr) = h.exits(3, &["migrate", "status", "guard"]);
    assert!(
        stderr.contains("the source's storage has")
            && stderr.contains("aborting migration guard to protect the source's disk"),
        "{stderr}"
    );
    let source = h.sql("esrc", "postgres");
    assert_eq!(
        source.text("SELECT count(*)::text FROM pg_replication_slots"),
        "0"
    );
    source.exec("INSERT INTO bulk VALUES (0, 'the source still takes writes')");
    assert_eq!(
        h.json(&["migrate", "status", "guard"])["migration"]["phase"],
        "aborted"
    );
}
