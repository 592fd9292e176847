//! Faults outside pgseal: the target stopped hard (SIGQUIT to its postmaster, as a crash
//! or an OOM kill leaves it) during catch-up and inside the cutover's and the rollback's
//! pauses, then started again, while the ledger and pgbench write through the endpoint.
//! Nothing committed is lost or doubled, the fence is never left up, and the way on (the
//! same command again) works.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
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

/// Whether every database but the templates takes connections (no fence left up).
const ALL_TAKE_CONNECTIONS: &str =
    "SELECT bool_and(datallowconn)::text FROM pg_database WHERE NOT datistemplate";

/// [`ALL_TAKE_CONNECTIONS`] on instance `instance`.
fn takes_connections(h: &Home, instance: &str) -> bool {
    h.sql(instance, "template1").text(ALL_TAKE_CONNECTIONS) == "true"
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
fn a_source_stopped_hard_once_the_reverse_replication_is_set_keeps_the_rollback_whole() {
    let h = Home::with_source();
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    let ledger = h.ledger();
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 30);
    h.start("sr", &["--replica-identity-full"]);
    wait_caught_up(&h, "src-enc", &ledger);
    // Inside the cutover's pause, once where the reverse replication starts is set on the
    // source: the source stops hard and starts again (crash recovery). The cutover goes
    // on; that position must have reached the source's disk, or the rollback's
    // replication would send every change the forward one applied back to the source
    // (the fault soak once stopped the source within the WAL writer's round after it).
    let out = crash_at(&h, "cutover:reversed", "src", &["migrate", "cutover", "sr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        "src-enc"
    );
    std::thread::sleep(Duration::from_secs(2));
    let back = h.run(&["migrate", "rollback", "sr", "--timeout", "20"]);
    assert!(
        back.status.success(),
        "{}\nsource's log:\n{}",
        String::from_utf8_lossy(&back.stderr),
        server_log_tail(&h, "src", 20)
    );
    let run = writes.finish();
    assert_all_landed(&h, "src", &ledger, &run);
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

/// A network fault on a relay: every connection cut (and new ones refused), or every
/// connection held silent (open, TCP answering, nothing forwarded).
#[derive(Clone, Copy, Debug)]
enum Outage {
    Cut,
    Silent,
}

impl Outage {
    fn begin(self, relay: &pgseal_testkit::Relay) {
        match self {
            Outage::Cut => relay.cut(),
            Outage::Silent => relay.hold(),
        }
    }

    fn end(self, relay: &pgseal_testkit::Relay) {
        match self {
            Outage::Cut => relay.restore(),
            Outage::Silent => relay.release(),
        }
    }
}

/// `outage` on `relay` for `lasting`, the test waiting it out.
fn outage(relay: &pgseal_testkit::Relay, outage: Outage, lasting: Duration) {
    outage.begin(relay);
    std::thread::sleep(lasting);
    outage.end(relay);
}

/// Runs `args` with pgseal held at `point`; there `outage` begins on `relay`, pgseal goes
/// on into it, and it ends `lasting` after it began, whatever pgseal does meanwhile.
/// Returns what pgseal printed.
fn outage_at(
    h: &Home,
    point: &str,
    args: &[&str],
    relay: &pgseal_testkit::Relay,
    outage: Outage,
    lasting: Duration,
) -> Output {
    let (began, when) = std::sync::mpsc::channel::<Instant>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Nothing arrives when pgseal never reached the point (the test fails).
            if let Ok(at) = when.recv() {
                std::thread::sleep(lasting.saturating_sub(at.elapsed()));
                outage.end(relay);
            }
        });
        fault_at(h, point, args, move || {
            outage.begin(relay);
            began.send(Instant::now()).unwrap();
        })
    })
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
    // pgbench's tables, for the tests that run it too.
    let init = Command::new(bin("pgbench"))
        .args(["-i", "-q", "-h", "127.0.0.1", "-p", &db.port().to_string()])
        .args(["-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let writes = h.workload(&["--url", &db.url("postgres")], &h.ledger(), seconds);
    std::thread::sleep(Duration::from_secs(1));
    h.ok(&[
        "migrate",
        "start",
        "--source",
        &via,
        "--target",
        target,
        "--name",
        name,
        "--replica-identity-full",
    ]);
    (db, relay, writes)
}

/// Ends `writes` and checks that every transaction the ledger had acknowledged is on
/// `target`, once, and nothing else.
fn nothing_lost(h: &Home, writes: Workload, target: &str) {
    let run = writes.finish();
    let on_target = wait_caught_up(h, target, &h.ledger());
    assert_eq!(
        on_target["acknowledged"], run["acknowledged"],
        "{on_target}"
    );
}

/// pgbench TPC-B at 20 tx/s for `seconds`, straight to `db`'s `postgres` database (a
/// source reached by URL has no endpoint in front of it).
fn pgbench_direct(db: &pgseal_testkit::TestCluster, seconds: u32) -> Child {
    Command::new(bin("pgbench"))
        .args(["-n", "-c", "2", "-j", "1", "-h", "127.0.0.1"])
        .args(["-p", &db.port().to_string(), "-U", "postgres", "-R", "20"])
        .args(["-T", &seconds.to_string(), "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// pgbench's own count: it saw no failure, and every transaction it processed is on
/// `target` (its history there, waited for up to a minute), balanced.
fn pgbench_arrived(h: &Home, bench: Child, target: &str) {
    let processed = pgbench_processed(bench);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (history, balanced) = tpcb(&h.sql(target, "postgres"));
        if history == processed {
            assert!(balanced, "TPC-B's balances on {target}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{history} of pgbench's {processed} transactions on {target}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// [`ALL_TAKE_CONNECTIONS`] on a source reached by URL.
fn source_open(db: &pgseal_testkit::TestCluster) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = rt.block_on(db.connect("postgres")).unwrap();
    let open: String = rt
        .block_on(source.query_one(ALL_TAKE_CONNECTIONS, &[]))
        .unwrap()
        .get(0);
    open == "true"
}

/// Waits (up to a minute) until migration `name` may cut over (`--dry-run` passes: its
/// apply worker may be starting again after an outage).
fn ready_for_cutover(h: &Home, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = h.run(&["migrate", "cutover", name, "--dry-run"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn every_connection_to_the_source_cut_or_silent_for_two_seconds_in_catch_up_loses_nothing() {
    let h = Home::new();
    let (db, relay, writes) = behind_a_relay(&h, "cut", "cut-enc", 15);
    let bench = pgbench_direct(&db, 12);
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
    outage(&relay, Outage::Cut, Duration::from_secs(2));
    nothing_lost(&h, writes, "cut-enc");
    pgbench_arrived(&h, bench, "cut-enc");
    // The cut ended the stream's connection: a new walsender serves it now.
    let after = walsender().expect("the subscription streams again");
    assert_ne!(before, after);
    // Stalled for 2 s: nothing crosses the relay either way, connections stay open.
    outage(&relay, Outage::Silent, Duration::from_secs(2));
    assert_eq!(h.json(&["migrate", "validate", "cut"])["clean"], true);
    h.ok(&["migrate", "abort", "cut"]);
}

#[test]
fn a_source_cut_then_silent_for_a_minute_each_in_catch_up_loses_nothing() {
    let h = Home::new();
    let (db, relay, writes) = behind_a_relay(&h, "long", "long-enc", 130);
    let bench = pgbench_direct(&db, 125);
    // A minute without the network, then a minute of a network that answers TCP and
    // carries nothing: the apply worker's walsender connection is ended by
    // wal_receiver_timeout (60 s) and made again. The ledger writes throughout.
    outage(&relay, Outage::Cut, Duration::from_secs(60));
    outage(&relay, Outage::Silent, Duration::from_secs(60));
    nothing_lost(&h, writes, "long-enc");
    pgbench_arrived(&h, bench, "long-enc");
    assert_eq!(h.json(&["migrate", "validate", "long"])["clean"], true);
    h.ok(&["migrate", "abort", "long"]);
}

#[test]
fn a_validation_whose_source_goes_silent_or_is_cut_waits_or_stops_by_name_and_the_next_is_clean() {
    let h = Home::new();
    let (db, relay, writes) = behind_a_relay(&h, "vmin", "vmin-enc", 20);
    let bench = pgbench_direct(&db, 20);
    let validate = ["migrate", "validate", "vmin", "--json"];
    // Silent for 2 s, then for a minute, in the middle of a table: the pass waits it out
    // (no chunk is waited on past 120 s) and calls the data clean.
    for seconds in [2, 60] {
        let lasting = Duration::from_secs(seconds);
        let out = outage_at(
            &h,
            "validate:table",
            &validate,
            &relay,
            Outage::Silent,
            lasting,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["clean"], true, "{report}");
    }
    // Cut for 2 s, then for a minute: the pass's sessions are gone; it stops at once and
    // says where.
    for seconds in [2, 60] {
        let lasting = Duration::from_secs(seconds);
        let out = outage_at(
            &h,
            "validate:table",
            &validate,
            &relay,
            Outage::Cut,
            lasting,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("on the source: connection closed"),
            "{stderr}"
        );
    }
    // Once the network holds, the next pass is clean and nothing was lost.
    nothing_lost(&h, writes, "vmin-enc");
    pgbench_arrived(&h, bench, "vmin-enc");
    assert_eq!(h.json(&["migrate", "validate", "vmin"])["clean"], true);
    h.ok(&["migrate", "abort", "vmin"]);
}

/// `migrate cutover NAME --timeout 5` (the switch a no-op hook) with `outage` on `relay`
/// from inside the drain, lasting `lasting`. Returns what pgseal printed.
fn cutover_through(
    h: &Home,
    name: &str,
    relay: &pgseal_testkit::Relay,
    outage: Outage,
    lasting: Duration,
) -> Output {
    let cutover = [
        "migrate",
        "cutover",
        name,
        "--on-switch",
        "true",
        "--timeout",
        "5",
    ];
    outage_at(h, "cutover:draining", &cutover, relay, outage, lasting)
}

#[test]
fn a_source_silent_for_a_minute_inside_the_drain_ends_the_pause_at_its_timeout_and_the_fence_comes_down_when_it_answers()
 {
    let h = Home::new();
    // The ledger alone writes here: it counts a transaction the fence refused as an error
    // and goes on, where pgbench would end its clients.
    let (db, relay, writes) = behind_a_relay(&h, "mute", "mute-enc", 20);
    wait_caught_up(&h, "mute-enc", &h.ledger());
    // Inside the pause, with the source fenced, the network to it stalls for 60 s: the
    // drain cannot read the slots, and lifting the fence cannot reach the source either.
    let minute = Duration::from_secs(60);
    let out = cutover_through(&h, "mute", &relay, Outage::Silent, minute);
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
    assert!(source_open(&db), "{stderr}");
    let status = h.json(&["migrate", "status", "mute"]);
    assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    nothing_lost(&h, writes, "mute-enc");
    // Silent for 2 s inside the drain: the cutover waits it out and goes through.
    ready_for_cutover(&h, "mute");
    let out = cutover_through(&h, "mute", &relay, Outage::Silent, Duration::from_secs(2));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = h.json(&["migrate", "status", "mute"]);
    assert_eq!(status["migration"]["phase"], "cut_over", "{status}");
}

#[test]
fn a_source_cut_inside_the_drain_undoes_the_cutover_the_fence_comes_down_when_it_answers_and_the_next_goes_through()
 {
    let h = Home::new();
    let (db, relay, writes) = behind_a_relay(&h, "drop", "drop-enc", 20);
    wait_caught_up(&h, "drop-enc", &h.ledger());
    for lasting in [60, 2].map(Duration::from_secs) {
        ready_for_cutover(&h, "drop");
        // The network drops inside the drain: the cutover fails on the closed session
        // and undoes itself; the fence comes down once the source takes connections.
        let out = cutover_through(&h, "drop", &relay, Outage::Cut, lasting);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(source_open(&db), "{stderr}");
        let status = h.json(&["migrate", "status", "drop"]);
        assert_eq!(status["migration"]["phase"], "replicating", "{status}");
    }
    nothing_lost(&h, writes, "drop-enc");
    ready_for_cutover(&h, "drop");
    h.ok(&["migrate", "cutover", "drop", "--on-switch", "true"]);
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
    h.ok(&["endpoint", "create", "src-ep", "--instance", "src"]);
    pgbench_init(&h, "src", "postgres");
    let writes = h.workload(&["--endpoint", "src-ep"], &ledger, 40);
    let bench = pgbench(&h, "src-ep", "postgres", 20, 40);
    h.start(
        "full",
        &["--max-slot-retention", "512MiB", "--replica-identity-full"],
    );
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
    pgbench_arrived(&h, bench, "src-enc");
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
