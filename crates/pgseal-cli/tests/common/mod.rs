//! What the migrate tests share: a pgseal home with the binary run in it, SQL sessions on
//! its instances, the ledger workload, and the checks on their results.
// Each test file uses some of these.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const STEPS: [&str; 10] = [
    "preflight",
    "prepare_source",
    "snapshot",
    "restore",
    "target_housekeeping",
    "subscription",
    "guards",
    "origin_advance",
    "enable",
    "replicating",
];

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgseal"));
        c.env("PGSEAL_HOME", self.dir.path().join("home"))
            .env("PGSEAL_PASSPHRASE", "cli migrate test passphrase")
            .env_remove("PGSEAL_FAILPOINT")
            .env_remove("PGSEAL_TEST_HOOK")
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn run_env(&self, env: (&str, &str), args: &[&str]) -> Output {
        self.command(args).env(env.0, env.1).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_slice(&self.ok(&args).stdout).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Asserts that nothing under the home can be read or changed by another user: every
    /// directory others may pass through is not listable or writable by them, and every
    /// file in one is the owner's only. (What lies in a directory others cannot enter —
    /// a server's data directory, PgBouncer's run directory — is out of their reach.)
    pub fn assert_private(&self) {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let mut open = vec![self.path("home")];
        let mut seen = 0;
        while let Some(dir) = open.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                let mode = meta.permissions().mode() & 0o777;
                seen += 1;
                if meta.is_dir() {
                    assert_eq!(mode & 0o066, 0, "{} is {mode:o}", entry.path().display());
                    if mode & 0o011 != 0 {
                        open.push(entry.path());
                    }
                } else if !meta.file_type().is_socket() && !meta.is_symlink() {
                    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.path().display());
                }
            }
        }
        assert!(seen > 3, "the home holds {seen} entries");
    }

    /// A plain source instance with `params`.
    pub fn source(&self, name: &str, params: &[&str]) {
        let port = free_port();
        let mut args = vec![
            "instance",
            "create",
            name,
            "--port",
            &port,
            "--storage",
            "1GiB",
        ];
        for p in params {
            args.extend(["--param", p]);
        }
        self.ok(&args);
    }

    /// A SQL session on an instance's database, over its unix socket.
    pub fn sql(&self, instance: &str, db: &str) -> Sql {
        let info = self.json(&["instance", "describe", instance]);
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(info["socket_dir"].as_str().unwrap())
            .port(info["port"].as_u64().unwrap() as u16)
            .user("postgres")
            .dbname(db);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        });
        Sql { runtime, client }
    }

    /// Starts the ledger workload against `on` (`--instance I` or `--url U`), for `seconds`.
    pub fn workload(&self, on: &[&str], ledger: &str, seconds: u32) -> Workload {
        let child = self
            .command(&["workload", "run"])
            .args(on)
            .args([
                "--ledger",
                ledger,
                "--rate",
                "150",
                "--clients",
                "3",
                "--duration",
                &seconds.to_string(),
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Workload(Some(child))
    }

    pub fn verify(&self, on: &[&str], ledger: &str) -> serde_json::Value {
        let out = self
            .command(&["workload", "verify"])
            .args(on)
            .args(["--ledger", ledger, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("verify: {}", String::from_utf8_lossy(&out.stderr));
        })
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Abort every migration, then delete every endpoint and instance: no server,
        // PgBouncer, mount or slot outlives the test.
        if let Ok(out) = self.command(&["migrate", "list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            for m in list.as_array().into_iter().flatten() {
                let name = m["spec"]["name"].as_str().unwrap_or_default();
                let _ = self.run(&["migrate", "abort", name]);
            }
        }
        if let Ok(out) = self.command(&["endpoint", "list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            for e in list.as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                let _ = self.run(&["endpoint", "delete", name]);
            }
        }
        if let Ok(out) = self.command(&["instance", "list", "--json"]).output()
            && let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            for i in list.as_array().into_iter().flatten() {
                let name = i["name"].as_str().unwrap_or_default();
                let _ = self.run(&["instance", "delete", name, "--yes"]);
            }
        }
    }
}

pub struct Sql {
    pub runtime: tokio::runtime::Runtime,
    pub client: tokio_postgres::Client,
}

impl Sql {
    pub fn exec(&self, sql: &str) {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs `sql`, which must fail; returns the server's message and hint.
    pub fn refused(&self, sql: &str) -> String {
        let e = self
            .runtime
            .block_on(self.client.batch_execute(sql))
            .expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        format!("{} ({})", db.message(), db.hint().unwrap_or_default())
    }

    pub fn text(&self, sql: &str) -> String {
        self.runtime
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get::<_, Option<String>>(0)
            .unwrap_or_default()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.runtime
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// pgseal's slots and publications on this server.
    pub fn pgseal_objects(&self) -> i64 {
        self.count(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgseal%') \
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgseal%')",
        )
    }

    /// pgseal's slots, publications and subscriptions on this server (all databases'
    /// slots; this database's publications and subscriptions), and this database's DDL
    /// capture (event triggers, schema).
    pub fn pgseal_everything(&self) -> i64 {
        self.count(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgseal%') \
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgseal%') \
                  + (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'pgseal%') \
                  + (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgseal%') \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgseal_ddl')",
        )
    }

    /// A digest of every ledger table's rows.
    pub fn ledger_digest(&self) -> String {
        [
            "pgseal_ledger_events",
            "pgseal_ledger_accounts",
            "pgseal_ledger_nokey",
        ]
        .iter()
        .map(|t| {
            self.text(&format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {t} t"
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
    }
}

pub struct Workload(pub Option<Child>);

impl Workload {
    pub fn finish(mut self) -> serde_json::Value {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "workload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An LSN's text (`X/Y`) as a number.
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// Asserts the process ended by SIGABRT at a failpoint.
pub fn assert_crashed(out: &Output, failpoint: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{failpoint}: expected an abort, got {:?} (failpoints exist only with --features pgseal-cli/failpoints, as scripts/test builds): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(failpoint));
}

/// Verifies the ledger on `instance`: every acknowledged transaction there once, nothing
/// else.
pub fn assert_all_landed(h: &Home, instance: &str, ledger: &str, run: &serde_json::Value) {
    let v = h.verify(&["--instance", instance], ledger);
    assert_eq!(v["acknowledged"], run["acknowledged"], "{v}");
    assert_eq!(
        (
            v["missing"].as_u64(),
            v["duplicated"].as_u64(),
            v["unexpected"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{instance}: {v}"
    );
}

/// Runs `args` killed at `point`, then `migrate resume M`; checks what resume says, the
/// phase after it and where the endpoint `src-ep` points.
pub fn crash_then_resume(
    h: &Home,
    point: &str,
    args: &[&str],
    says: &str,
    phase: &str,
    endpoint_on: &str,
) {
    let out = h.run_env(("PGSEAL_FAILPOINT", point), args);
    assert_crashed(&out, point);
    let migration = args[2];
    let text = String::from_utf8_lossy(&h.ok(&["migrate", "resume", migration]).stdout).to_string();
    assert!(text.contains(says), "{point}: {text}");
    assert_eq!(
        h.json(&["migrate", "status", migration])["migration"]["phase"],
        phase,
        "{point}"
    );
    assert_eq!(
        h.json(&["endpoint", "describe", "src-ep"])["instance"],
        endpoint_on,
        "{point}"
    );
}

/// Waits until the target has every acknowledged transaction (it is replicating).
pub fn wait_caught_up(h: &Home, target: &str, ledger: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = h.verify(&["--instance", target], ledger);
        if v["missing"] == 0 && v["duplicated"] == 0 && v["unexpected"] == 0 {
            return v;
        }
        assert!(Instant::now() < deadline, "target never caught up: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The PostgreSQL 15 client programs.
pub fn bin(program: &str) -> String {
    let dir = std::env::var("PGSEAL_PG_BINDIR")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    format!("{dir}/{program}")
}

/// Where an instance's (or endpoint's) socket is: `(dir, port)`.
pub fn socket(h: &Home, what: &[&str]) -> (String, String) {
    let info = h.json(what);
    let dir = info["socket_dir"].as_str().unwrap().to_string();
    let port = info["port"].as_u64().unwrap().to_string();
    (dir, port)
}

/// `pgbench -i` (scale 1) of database `db` on instance `instance`.
pub fn pgbench_init(h: &Home, instance: &str, db: &str) {
    pgbench_init_scale(h, instance, db, 1);
}

/// `pgbench -i` at `scale` (100,000 accounts each) of database `db` on `instance`.
pub fn pgbench_init_scale(h: &Home, instance: &str, db: &str, scale: u32) {
    let (dir, port) = socket(h, &["instance", "describe", instance]);
    let scale = scale.to_string();
    let out = Command::new(bin("pgbench"))
        .args([
            "-i", "-s", &scale, "-q", "-h", &dir, "-p", &port, "-U", "postgres", db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TPC-B through endpoint `endpoint` into `db`: 2 clients at `rate` tx/s for `seconds`.
pub fn pgbench(h: &Home, endpoint: &str, db: &str, rate: u32, seconds: u32) -> Child {
    let (dir, port) = socket(h, &["endpoint", "describe", endpoint]);
    Command::new(bin("pgbench"))
        .args([
            "-n", "-c", "2", "-j", "1", "-h", &dir, "-p", &port, "-U", "postgres",
        ])
        .args(["-R", &rate.to_string(), "-T", &seconds.to_string(), db])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for pgbench and returns the transactions it counted as processed; asserts it saw
/// no failed transaction and no aborted client.
pub fn pgbench_processed(child: Child) -> i64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let errors = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pgbench failed: {text}{errors}");
    let field = |label: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{label}' in pgbench's output: {text}"))
    };
    assert_eq!(
        field("number of failed transactions: "),
        0,
        "{text}{errors}"
    );
    let processed = field("number of transactions actually processed: ");
    assert!(processed > 100, "pgbench processed too little: {text}");
    processed
}

/// TPC-B's own account of database `sql`: history rows, and whether every balance equals
/// the sum of its history's deltas (accounts, tellers and branches).
pub fn tpcb(sql: &Sql) -> (i64, bool) {
    let history = sql.count("SELECT count(*) FROM pgbench_history");
    let balanced = sql.text(
        "SELECT ((SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history))::text",
    ) == "true";
    (history, balanced)
}
