//! What the migrate tests share: a pgseal home with the binary run in it, SQL sessions on
//! its instances, the ledger workload, and the checks on their results.
// Each test file uses some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
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

/// `out` of `pgseal ARGS`, asserted to have succeeded (both streams shown otherwise).
pub fn succeeded(out: Output, args: &[&str]) -> Output {
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts that `out` exited with `code` (both streams shown otherwise).
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A range of ports held by this test for the instances pgseal makes without `--port`
/// (`PGSEAL_FIRST_PORT`). Tests run side by side: without it, a port one test's instance
/// frees while it is down (a crash, a stop) is the first free one for another test's new
/// instance, and the first cannot start again. The range is held by an abstract unix
/// socket, which goes with the process and leaves no file.
pub struct Ports {
    /// The range's first port.
    pub first: u16,
    _held: std::os::unix::net::UnixListener,
}

impl Ports {
    /// Ports in one range, held until dropped.
    const PER_RANGE: u16 = 40;

    /// Claims the first range no other test holds, from port 20000 (below the kernel's
    /// ephemeral ports, where the tests' own servers get theirs).
    pub fn claim() -> Ports {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};
        for slot in 0..100u16 {
            let name = format!("pgseal-test-ports-{slot}");
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            if let Ok(held) = UnixListener::bind_addr(&addr) {
                return Ports {
                    first: 20000 + slot * Self::PER_RANGE,
                    _held: held,
                };
            }
        }
        panic!("all 100 test port ranges are held");
    }
}

/// Where a test's journal is kept: the home's SQLite file, or a PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Sqlite,
    Postgres,
}

/// A journal in PostgreSQL for a test: a server of its own (Debian's PostgreSQL, stopped
/// and removed on drop) with a database owned by a role that is not a superuser, as a
/// team would give pgseal.
pub struct SharedJournal {
    pub server: pgseal_testkit::TestCluster,
    pub url: String,
}

impl SharedJournal {
    pub fn start() -> SharedJournal {
        let server = pgseal_testkit::TestCluster::start().unwrap();
        let url = server
            .owned_database("pgseal runner", "migrations.journal")
            .unwrap();
        SharedJournal { server, url }
    }
}

pub struct Home {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    /// The journal's server, when it is kept in PostgreSQL.
    pub journal: Option<SharedJournal>,
}

impl Home {
    pub fn new() -> Home {
        Home::kept(Kept::Sqlite)
    }

    /// A fresh home whose journal is kept as `kept` says.
    pub fn kept(kept: Kept) -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
            ports: Ports::claim(),
            journal: (kept == Kept::Postgres).then(SharedJournal::start),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgseal"));
        c.env("PGSEAL_HOME", self.dir.path().join("home"))
            .env("PGSEAL_PASSPHRASE", "cli migrate test passphrase")
            .env("PGSEAL_FIRST_PORT", self.ports.first.to_string())
            .env_remove("PGSEAL_FAILPOINT")
            .env_remove("PGSEAL_TEST_HOOK")
            .env_remove("PGSEAL_JOURNAL")
            .env_remove("PGSEAL_RUNNER")
            .args(args);
        if let Some(journal) = &self.journal {
            c.env("PGSEAL_JOURNAL", &journal.url);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn run_env(&self, env: (&str, &str), args: &[&str]) -> Output {
        self.command(args).env(env.0, env.1).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        succeeded(self.run(args), args)
    }

    /// Starts migration `name` of source instance `src` (with `extra` arguments), which
    /// must succeed.
    pub fn start(&self, name: &str, extra: &[&str]) -> Output {
        let mut args = vec!["migrate", "start", "--source", "src", "--name", name];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// Runs `pgseal ARGS`, asserts it exited with `code` (both streams shown otherwise)
    /// and returns what it printed: `(stdout, stderr)`.
    pub fn exits(&self, code: i32, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert_exit(&out, code);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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

    /// A fresh home holding source instance `src`, plain, with `wal_level=logical`: where
    /// most migration tests start.
    pub fn with_source() -> Home {
        Home::with_source_kept(Kept::Sqlite)
    }

    /// [`Home::with_source`], its journal kept as `kept` says.
    pub fn with_source_kept(kept: Kept) -> Home {
        let h = Home::kept(kept);
        h.source("src", &["wal_level=logical"]);
        h
    }

    /// The path of the ledger file the workload writes and verifies in this home.
    pub fn ledger(&self) -> String {
        self.path("ledger").display().to_string()
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
        self.sql_as(instance, db, "postgres")
    }

    /// A SQL session on an instance's database as role `user`, over its unix socket.
    pub fn sql_as(&self, instance: &str, db: &str, user: &str) -> Sql {
        let info = self.json(&["instance", "describe", instance]);
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(info["socket_dir"].as_str().unwrap())
            .port(info["port"].as_u64().unwrap() as u16)
            .user(user)
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

/// The last element of the JSON array `list` whose `field` is `value` (a step's last run in
/// a status, a table in a copy's outputs, a check in doctor's report).
pub fn find_in<'a>(list: &'a serde_json::Value, field: &str, value: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .rfind(|item| item[field] == value)
        .unwrap_or_else(|| panic!("no {field} {value} in {list}"))
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
    let acknowledged = run["acknowledged"]
        .as_u64()
        .expect("the run counts what it acknowledged");
    pgseal_testkit::assert_ledger_whole(&v, Some(acknowledged), instance);
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

/// The schemas a DBA compares: every one but the system's and pgseal's own.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('information_schema', 'pgseal_ddl', 'pgseal_validate') \
     AND n.nspname !~ '^pg_'";

/// What a DBA compares after a switch, read with plain catalog queries (names printed
/// schema-qualified: `search_path` pinned to `pg_catalog`): every definition, privilege,
/// comment, role, setting, large object, materialized view's rows and table's rows of the
/// connected database, by category. Sequences are left out (the target's may be ahead).
pub fn dba_view(sql: &Sql) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    sql.exec("SET search_path = pg_catalog, pg_temp");
    let s = USER_SCHEMAS;
    let unnest_sorted = |col: &str| {
        format!(
            "(SELECT coalesce(array_agg(x::text ORDER BY x::text), '{{}}') FROM unnest({col}) x)::text"
        )
    };
    let relacl = unnest_sorted("c.relacl");
    let nspacl = unnest_sorted("n.nspacl");
    let queries: Vec<(&'static str, String)> = vec![
        ("columns", format!(
            "SELECT format('%s.%s %s %s %s notnull=%s default=%s identity=%s generated=%s collation=%s', \
                    n.nspname, c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE {s} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')")),
        ("relations", format!(
            "SELECT format('%s.%s %s owner=%s persistence=%s rls=%s/%s replident=%s partition=%s acl=%s', \
                    n.nspname, c.relname, c.relkind, c.relowner::regrole, c.relpersistence, \
                    c.relrowsecurity, c.relforcerowsecurity, c.relreplident, \
                    pg_get_expr(c.relpartbound, c.oid), {relacl}) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {s} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")),
        ("schemas", format!(
            "SELECT format('%s owner=%s acl=%s', n.nspname, n.nspowner::regrole, {nspacl}) \
             FROM pg_namespace n WHERE {s}")),
        ("constraints", format!(
            "SELECT format('%s %s %s', coalesce(k.conrelid::regclass::text, k.contypid::regtype::text), \
                    k.conname, pg_get_constraintdef(k.oid)) \
             FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE {s}")),
        ("indexes", format!(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {s}")),
        ("triggers", format!(
            "SELECT pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {s} AND NOT t.tgisinternal AND t.tgname !~ '^pgseal'")),
        ("policies",
            "SELECT format('%s.%s %s %s %s %s %s %s', schemaname, tablename, policyname, permissive, \
                    roles, cmd, qual, with_check) FROM pg_policies".to_string()),
        ("views", format!(
            "SELECT format('%s.%s %s', n.nspname, c.relname, pg_get_viewdef(c.oid)) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {s} AND c.relkind IN ('v', 'm')")),
        ("types", format!(
            "SELECT format('%s %s %s %s %s', t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), \
                    t.typnotnull, coalesce(t.typdefault, '') || coalesce((SELECT string_agg(e.enumlabel, ',' \
                    ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '')) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE {s} AND t.typtype IN ('e', 'd', 'c') AND NOT EXISTS \
                   (SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind <> 'c') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = t.oid AND e.deptype = 'e')")),
        ("functions", format!(
            "SELECT pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, '') FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {s} AND p.prokind IN ('f', 'p') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = p.oid AND e.deptype = 'e')")),
        // User objects' (OIDs from 16384 on), but an extension's own.
        ("comments",
            "SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description \
             FROM pg_description d WHERE d.objoid >= 16384 \
               AND pg_describe_object(d.classoid, d.objoid, d.objsubid) !~ 'pgseal' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = d.objoid AND e.deptype = 'e')".to_string()),
        ("default privileges",
            "SELECT format('%s %s %s %s', d.defaclrole::regrole, d.defaclnamespace::regnamespace, \
                    d.defaclobjtype, d.defaclacl) FROM pg_default_acl d".to_string()),
        ("extensions",
            "SELECT e.extname || ' ' || e.extnamespace::regnamespace FROM pg_extension e".to_string()),
        ("roles",
            "SELECT format('%s super=%s inherit=%s createrole=%s createdb=%s login=%s repl=%s bypassrls=%s \
                    connlimit=%s password=%s config=%s', a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, \
                    a.rolcreatedb, a.rolcanlogin, a.rolreplication, a.rolbypassrls, a.rolconnlimit, \
                    a.rolpassword, (SELECT setconfig FROM pg_db_role_setting s \
                                    WHERE s.setrole = a.oid AND s.setdatabase = 0)) \
             FROM pg_authid a WHERE a.rolname !~ '^pg_'".to_string()),
        ("memberships",
            "SELECT format('%s > %s admin=%s', m.roleid::regrole, m.member::regrole, m.admin_option) \
             FROM pg_auth_members m WHERE m.roleid::regrole::text !~ '^pg_'".to_string()),
        ("database",
            "SELECT format('%s owner=%s acl=%s limit=%s comment=%s', d.datname, d.datdba::regrole, \
                    (SELECT coalesce(array_agg(x::text ORDER BY x::text), '{}') FROM unnest(d.datacl) x), \
                    d.datconnlimit, shobj_description(d.oid, 'pg_database')) \
             FROM pg_database d WHERE d.datname = current_database()".to_string()),
        ("settings",
            "SELECT format('%s in %s: %s', coalesce(s.setrole::regrole::text, '-'), \
                    (SELECT datname FROM pg_database WHERE oid = s.setdatabase), s.setconfig) \
             FROM pg_db_role_setting s WHERE s.setdatabase <> 0".to_string()),
        ("large objects",
            "SELECT format('%s %s %s %s', m.oid, m.lomowner::regrole, m.lomacl, md5(lo_get(m.oid))) \
             FROM pg_largeobject_metadata m".to_string()),
    ];
    let mut view = std::collections::BTreeMap::new();
    for (category, query) in queries {
        let mut rows: Vec<String> = sql
            .runtime
            .block_on(sql.client.query(&query, &[]))
            .unwrap_or_else(|e| panic!("{category}: {e:?}"))
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect();
        rows.sort();
        view.insert(category, rows);
    }
    // Every table's and materialized view's rows.
    let relations: Vec<String> = sql
        .runtime
        .block_on(sql.client.query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {s} AND c.relkind IN ('r', 'm') ORDER BY 1"
            ),
            &[],
        ))
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut data = Vec::new();
    for rel in relations {
        data.push(format!(
            "{rel} {}",
            sql.text(&format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {rel} t"
            ))
        ));
    }
    view.insert("rows", data);
    let sequences: Vec<String> = sql
        .runtime
        .block_on(sql.client.query(
            "SELECT format('%s %s', schemaname || '.' || sequencename, coalesce(last_value, 0)) \
             FROM pg_sequences WHERE schemaname !~ '^pgseal'",
            &[],
        ))
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    view.insert("sequences", sequences);
    view
}

/// A [`dba_view`] line as both major versions print it. PostgreSQL 17 gives a table's
/// owner the MAINTAIN privilege (`m` in its ACL) that 15 does not have, and prints a view's
/// columns without their table where that is unambiguous: owners' `m` is dropped, and
/// every `name.` qualifier (tables' and schemas' alike, on both sides) is left out of view
/// definitions.
fn across_versions(category: &str, line: &str) -> String {
    match category {
        "relations" => line.replace("arwdDxtm/", "arwdDxt/"),
        "views" => {
            let mut out = String::new();
            let mut word = String::new();
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    word.push(c);
                    continue;
                }
                let qualifier = c == '.'
                    && !word.is_empty()
                    && !word.chars().next().unwrap().is_ascii_digit()
                    && chars
                        .peek()
                        .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_' || *n == '"');
                if !qualifier {
                    out.push_str(&word);
                    out.push(c);
                }
                word.clear();
            }
            out.push_str(&word);
            out
        }
        _ => line.to_string(),
    }
}

/// What differs between two [`dba_view`]s, one line each; sequences may be ahead on the
/// target, never behind.
pub fn dba_differences(
    source: &std::collections::BTreeMap<&'static str, Vec<String>>,
    target: &std::collections::BTreeMap<&'static str, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (category, rows) in source {
        let other = &target[category];
        if *category == "sequences" {
            let value = |line: &String| -> (String, i64) {
                let (name, v) = line.rsplit_once(' ').unwrap();
                (name.to_string(), v.parse().unwrap())
            };
            let theirs: std::collections::BTreeMap<String, i64> = other.iter().map(value).collect();
            for (name, v) in rows.iter().map(value) {
                if theirs.get(&name).is_none_or(|t| *t < v) {
                    out.push(format!(
                        "sequences: {name} at {v} on the source, {:?} on the target",
                        theirs.get(&name)
                    ));
                }
            }
            continue;
        }
        let normal = |lines: &Vec<String>| -> Vec<String> {
            lines.iter().map(|l| across_versions(category, l)).collect()
        };
        let (rows, other) = (normal(rows), normal(other));
        for r in rows.iter().filter(|r| !other.contains(r)) {
            out.push(format!("{category}: only on the source: {r}"));
        }
        for r in other.iter().filter(|r| !rows.contains(r)) {
            out.push(format!("{category}: only on the target: {r}"));
        }
    }
    out
}

/// The last `lines` lines of an instance's server log (plain or encrypted), for a failing
/// test's message.
pub fn server_log_tail(h: &Home, instance: &str, lines: usize) -> String {
    for path in [
        format!("home/instances/{instance}/mnt/pgseal/log/postgresql.log"),
        format!("home/instances/{instance}/log/postgresql.log"),
    ] {
        if let Ok(text) = std::fs::read_to_string(h.path(&path)) {
            let all: Vec<&str> = text.lines().collect();
            return all[all.len().saturating_sub(lines)..].join("\n");
        }
    }
    format!("(no server log of {instance} found)")
}

/// `migrate start`'s arguments for a full load onto PostgreSQL 17 into instance `src-17`.
pub const FULL_LOAD_ONTO_17: [&str; 6] = [
    "--strategy",
    "full-load",
    "--engine-version",
    "17",
    "--target",
    "src-17",
];

/// Creates endpoint `ep` in front of `instance`, listening on TCP as applications reach it
/// (their roles log in with their passwords); returns its port.
pub fn tcp_endpoint(h: &Home, instance: &str) -> String {
    let port = free_port();
    h.ok(&[
        "endpoint",
        "create",
        "ep",
        "--instance",
        instance,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    port
}

/// `program` with only the libpq environment of role `user` (password `password`) on
/// database `db` through the TCP endpoint on `port`.
pub fn through_endpoint(
    program: &str,
    port: &str,
    user: &str,
    password: &str,
    db: &str,
) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port)
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGDATABASE", db);
    c
}

/// Chromium as the machine's probe runs it: no sandbox (root), no GPU, and none of the
/// background services that would reach for the network.
pub fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Distinct colours in a PNG screenshot (a blank page has one).
pub fn colours(png_path: &Path) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let mut seen = std::collections::HashSet::new();
    for px in pixels[..frame.buffer_size()].chunks(channels) {
        seen.insert(px[..3.min(channels)].to_vec());
    }
    seen.len()
}

/// A screenshot of `url` by Chromium at `window` (`W,H`), with `extra` arguments, kept in
/// `work`; Chromium must succeed. Returns the distinct colours in it (a blank page has
/// one).
pub fn screenshot_colours(work: &Path, url: &str, window: &str, extra: &[String]) -> usize {
    let png = work.join("screenshot.png");
    let shot = chromium(&work.join("profile-shot"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={window}"))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    colours(&png)
}

/// The size Chromium lays each SVG of `page` out at, as `(width, height)`: a copy of the
/// page with a measuring script (the page itself has none) in `work`, whose result
/// `--dump-dom` prints.
pub fn svg_sizes(work: &Path, page: &str) -> Vec<(f64, f64)> {
    let measured = work.join("measured.html");
    std::fs::write(
        &measured,
        page.replace(
            "</body>",
            "<script>document.body.insertAdjacentHTML('beforeend', '<pre id=\"svg-sizes\">' + \
             Array.from(document.querySelectorAll('svg')).map(function (s) { \
               var r = s.getBoundingClientRect(); return r.width + 'x' + r.height; }).join(' ') \
             + '</pre>');</script></body>",
        ),
    )
    .unwrap();
    let dom = chromium(&work.join("profile-measure"))
        .arg("--dump-dom")
        .arg(format!("file://{}", measured.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The last occurrence: the first is in the script's own text.
    let sizes = dom
        .rsplit("<pre id=\"svg-sizes\">")
        .next()
        .filter(|_| dom.matches("<pre id=\"svg-sizes\">").count() == 2)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no sizes in the DOM: {}", &dom[..dom.len().min(500)]));
    sizes
        .split_whitespace()
        .map(|wh| {
            let (w, h) = wh.split_once('x').unwrap();
            (w.parse().unwrap(), h.parse().unwrap())
        })
        .collect()
}

/// The ledger writing through `endpoint` for up to ten minutes, at a rate six of them can
/// share two cores at (the fleet tests).
pub fn ledger_through(h: &Home, endpoint: &str, ledger: &str) -> Child {
    h.command(&["workload", "run", "--endpoint", endpoint])
        .args([
            "--ledger",
            ledger,
            "--rate",
            "20",
            "--clients",
            "1",
            "--duration",
            "600",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a ledger workload as an operator would (SIGINT) and returns its summary.
pub fn stop_ledger(child: Child) -> serde_json::Value {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    Workload(Some(child)).finish()
}
