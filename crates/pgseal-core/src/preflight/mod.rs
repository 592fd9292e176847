//! Preflight: everything that would stop or endanger a migration, found before anything is
//! changed on the source. Each [`Finding`] says what is wrong, whether it blocks, and what
//! to do; the checks only read (catalog queries), so running them is always safe.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use crate::steps::StrategyKind;
use crate::stream::{self, DatabaseInfo, Stream};

pub mod blue_green;

pub use blue_green::{BlueGreenReport, Limit};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The migration cannot start until this is fixed (or opted into).
    Blocker,
    /// The migration can start; the user should know (something will not be migrated).
    Warning,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A stable identifier, for scripts.
    pub id: &'static str,
    /// Blocker or warning.
    pub severity: Severity,
    /// What is wrong, with the objects concerned.
    pub detail: String,
    /// What to do about it.
    pub fix: String,
}

/// What the checks are told besides the source itself.
#[derive(Debug, Clone)]
pub struct PreflightInput {
    /// The migration's name; slot, publication and subscription are named after it.
    pub migration: String,
    /// True when the source is an instance pgseal manages (it can change its parameters).
    pub managed_source: Option<String>,
    /// The user allows a restart of the source to set `wal_level` (`--allow-restart`).
    pub allow_restart: bool,
    /// The user opts in to `REPLICA IDENTITY FULL` for tables without a key.
    pub replica_identity_full: bool,
    /// Transactions older than this many seconds are reported (they block slot creation).
    pub long_transaction_seconds: i64,
    /// Bytes free where the snapshot and the restored copy will live, if known.
    pub free_bytes: Option<u64>,
    /// A problem with the target key found by the caller (disabled, pending deletion, unknown).
    pub key_problem: Option<String>,
    /// A problem with the target found by the caller (its name is taken, ...).
    pub target_problem: Option<String>,
    /// The databases the user narrowed the scope to (`--database`); `None`: all.
    pub databases: Option<Vec<String>>,
    /// The tables the user narrowed the one database to (`--tables`); `None`: all.
    pub tables: Option<Vec<String>>,
    /// How the target is to get its data, and which version it runs.
    pub target_version: TargetVersion,
}

/// The strategy and target version asked for, and what the target's platform can run.
#[derive(Debug, Clone, Default)]
pub struct TargetVersion {
    /// `--strategy`.
    pub strategy: StrategyKind,
    /// `--engine-version`; `None` for the source's.
    pub engine_version: Option<u32>,
    /// The major versions the platform can run locally, each with the extensions it can
    /// create; `None` where the platform itself decides (nothing to check here).
    pub installed: Option<BTreeMap<u32, BTreeSet<String>>>,
    /// Why the platform cannot run the full-load strategy, if it cannot.
    pub full_load_unsupported: Option<String>,
    /// Why the platform has no blue/green deployments, if it has none.
    pub blue_green_unsupported: Option<String>,
    /// How the platform's blue/green deployment of this source would replicate (where it
    /// has them and can make the version asked for).
    pub blue_green_plan: Option<pgseal_platform::BlueGreenPlan>,
}

impl TargetVersion {
    /// The replication method of the blue/green deployment asked for (`None` for the
    /// other strategies, or where the platform has none).
    pub fn blue_green_method(&self) -> Option<pgseal_platform::ReplicationMethod> {
        (self.strategy == StrategyKind::BlueGreen)
            .then(|| self.blue_green_plan.as_ref().map(|p| p.method))
            .flatten()
    }
}

/// Whether a strategy can move this source, and why.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyChoice {
    /// The strategy.
    pub strategy: StrategyKind,
    /// True when it can move this source onto the target asked for.
    pub possible: bool,
    /// Why (or why not).
    pub why: String,
}

/// One database of the source, as the scope sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseScope {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: i64,
    /// Tables in it (ordinary and partitioned, outside the system schemas); 0 when it is
    /// not carried (not read).
    pub tables: u64,
    /// True when the migration replicates it.
    pub carried: bool,
    /// What is in it that replication does not carry (unlogged tables, tables outside
    /// `--tables`).
    pub not_carried: Vec<String>,
    /// What is in it that replication does not carry and pgseal does (large objects).
    #[serde(default)]
    pub carried_by_pgseal: Vec<String>,
}

/// Everything preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    /// The source's size in bytes (all databases).
    pub source_bytes: u64,
    /// The source's version.
    pub server_version: String,
    /// Tables that will be published, in all carried databases.
    pub tables: u64,
    /// Every database of the source: carried or not, with sizes and table counts.
    pub databases: Vec<DatabaseScope>,
    /// The source's major version.
    pub source_major: u32,
    /// The target's major version (the source's, or `--engine-version`).
    pub target_major: u32,
    /// The strategy asked for.
    pub strategy: StrategyKind,
    /// Each strategy, whether it can do this migration and why.
    pub strategies: Vec<StrategyChoice>,
    /// The strategy pgseal recommends for this source and target.
    pub recommended: StrategyKind,
    /// The findings, blockers first.
    pub findings: Vec<Finding>,
    /// DDL that stops the target's apply until the user decides, where DDL is captured
    /// (everything else DDL does is replayed).
    #[serde(default)]
    pub ddl_stops: Vec<String>,
    /// The blue/green deployment asked for: its method, what follows, its limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenReport>,
}

impl PreflightReport {
    /// The names of the databases the migration carries.
    pub fn carried(&self) -> Vec<&str> {
        self.databases
            .iter()
            .filter(|d| d.carried)
            .map(|d| d.name.as_str())
            .collect()
    }

    /// True when nothing blocks the migration.
    pub fn ready(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Blocker)
    }
}

fn blocker(id: &'static str, detail: String, fix: String) -> Finding {
    Finding {
        id,
        severity: Severity::Blocker,
        detail,
        fix,
    }
}

fn warning(id: &'static str, detail: String, fix: String) -> Finding {
    Finding {
        id,
        severity: Severity::Warning,
        detail,
        fix,
    }
}

/// Lists names, the first few and a count beyond.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Runs every check against the source server `client` is connected to, and in each
/// database of the scope through `connect` (a session on the named database).
pub async fn preflight<C>(
    client: &Client,
    connect: C,
    input: &PreflightInput,
) -> Result<PreflightReport, tokio_postgres::Error>
where
    C: AsyncFn(&str) -> Result<Client, String>,
{
    let mut findings = Vec::new();
    let all = stream::databases(client).await?;
    let streams = match stream::plan(&input.migration, &all, input.databases.as_deref()) {
        Ok(streams) => streams,
        Err(why) => {
            findings.push(blocker(
                "scope",
                why,
                "name databases that exist on the source and accept connections".into(),
            ));
            Vec::new()
        }
    };
    let n = streams.len().max(1) as i64;
    let setting = |rows: &[tokio_postgres::Row], name: &str| -> String {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == name)
            .map(|r| r.get::<_, String>(1))
            .unwrap_or_default()
    };
    let settings = client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders', 'server_version', 'max_logical_replication_workers', 'max_worker_processes', 'server_version_num', 'max_slot_wal_keep_size')",
            &[],
        )
        .await?;
    let server_version = setting(&settings, "server_version");
    let source_major = setting(&settings, "server_version_num")
        .parse::<u32>()
        .unwrap_or(0)
        / 10000;
    let wanted = &input.target_version;
    let target_major = wanted.engine_version.unwrap_or(source_major);
    let (strategies, recommended) = strategy_choices(input, source_major, target_major);
    version_checks(input, source_major, target_major, &mut findings);

    // 0. A standby is read-only: no slot, publication or event trigger can be made there.
    let standby: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if standby {
        findings.push(blocker(
            "standby",
            "the source is a standby (in recovery): it is read-only, so no publication, slot or event trigger can be made on it".into(),
            "migrate its primary (the switch moves the applications that write there); a standby follows the primary it replicates".into(),
        ));
    }

    // 1. wal_level (a physical blue/green deployment replicates without it).
    let wal_level = setting(&settings, "wal_level");
    let physical = wanted.blue_green_method() == Some(pgseal_platform::ReplicationMethod::Physical);
    if wal_level != "logical" && !physical {
        let fix = match (&input.managed_source, input.allow_restart) {
            (Some(_), true) => "pgseal sets it and restarts the source at `migrate start` (--allow-restart given)".to_string(),
            (Some(name), false) => format!(
                "pass --allow-restart to let pgseal set it and restart {name}, or run `pgseal instance set-param {name} wal_level=logical --apply`"
            ),
            (None, _) => "ALTER SYSTEM SET wal_level = logical; then restart the server (on RDS: rds.logical_replication = 1 in a custom parameter group)".to_string(),
        };
        let blocks = !(input.managed_source.is_some() && input.allow_restart);
        let detail = format!("wal_level is {wal_level}; logical replication needs logical");
        findings.push(if blocks {
            blocker("wal_level", detail, fix)
        } else {
            warning("wal_level", detail, fix)
        });
    }

    // PostgreSQL's own guard on the WAL slots hold: pgseal sets it on a source it manages
    // (from --max-slot-retention); on others it can only say so.
    let keep = setting(&settings, "max_slot_wal_keep_size");
    if input.managed_source.is_none() && keep == "-1" {
        findings.push(warning(
            "max_slot_wal_keep_size",
            "max_slot_wal_keep_size is -1 (no limit): if the target stops applying, the migration's slots keep WAL until the source's disk is full (pgseal's own guard acts only while `pgseal migrate status` runs)".to_string(),
            "ALTER SYSTEM SET max_slot_wal_keep_size = '20GB' (the WAL you can spare; the same as --max-slot-retention); SELECT pg_reload_conf(); it is instance-wide, so it limits every slot on the server, and a slot past it is invalidated (on RDS: the parameter group)".to_string(),
        ));
    }

    // 2. Free slots and senders: one of each per database for the migration, one more per
    //    database for rollback (pgseal's streams; a physical blue/green deployment makes
    //    none of them).
    let used = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await?;
    let streams_needed = if physical {
        Vec::new()
    } else {
        vec![
            ("max_replication_slots", used.get::<_, i64>(0)),
            ("max_wal_senders", used.get::<_, i64>(1)),
        ]
    };
    for (name, in_use) in streams_needed {
        let max: i64 = setting(&settings, name).parse().unwrap_or(0);
        if max - in_use < 2 * n {
            findings.push(blocker(
                if name == "max_wal_senders" { "max_wal_senders" } else { "max_replication_slots" },
                format!("{name} is {max} with {in_use} in use; the migration of {n} database(s) needs {} free (one per database to migrate, one per database to roll back)", 2 * n),
                format!("ALTER SYSTEM SET {name} = {}; then restart the server", (in_use + 2 * n + 2).max(10)),
            ));
        }
    }
    // The target runs one apply worker per database (and the source as many at rollback);
    // the target inherits these settings from the snapshot.
    let workers: i64 = setting(&settings, "max_logical_replication_workers")
        .parse()
        .unwrap_or(0);
    let processes: i64 = setting(&settings, "max_worker_processes")
        .parse()
        .unwrap_or(0);
    if !physical && (workers < n || processes < n + 1) {
        findings.push(blocker(
            "replication_workers",
            format!("max_logical_replication_workers is {workers} and max_worker_processes {processes}; {n} database(s) need {n} apply workers (and one launcher)"),
            format!("ALTER SYSTEM SET max_logical_replication_workers = {}; ALTER SYSTEM SET max_worker_processes = {}; then restart the server (the target inherits them)", n + 2, (n + 4).max(8)),
        ));
    }

    // 3. Privileges.
    let role = client
        .query_one("SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await?;
    let (user, is_super, can_replicate): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if !is_super && !can_replicate {
        findings.push(blocker(
            "privileges",
            format!("role {user} is neither superuser nor REPLICATION"),
            format!("ALTER ROLE {user} REPLICATION; (on RDS: GRANT rds_replication TO {user};) and make it own the tables or be superuser"),
        ));
    }

    // DDL during the migration is carried only where an event trigger can capture it.
    let no_capture = match wanted.strategy {
        StrategyKind::BlueGreen => None, // AWS's own replication; blue/green documents its DDL rules
        _ if input.tables.is_some() => {
            Some("a migration narrowed to tables does not capture DDL".to_string())
        }
        _ if !pgseal_pg::ddl::capture_possible(client).await? => Some(format!(
            "role {user} cannot create event triggers (a superuser, or rds_superuser on RDS, can)"
        )),
        StrategyKind::Snapshot | StrategyKind::FullLoad => None,
    };
    if no_capture.is_none() && wanted.strategy == StrategyKind::FullLoad {
        findings.push(warning(
            "ddl_hold",
            "DDL on the source is refused from the start until every table is copied and its indexes built (schema changes would race PostgreSQL's table copy); from then on it is captured and replayed on the target".into(),
            "schedule schema changes after the copy; `pgseal migrate status` shows its progress".into(),
        ));
    }
    let captured = no_capture.is_none() && wanted.strategy != StrategyKind::BlueGreen;
    if let Some(why) = no_capture {
        findings.push(warning(
            "ddl_capture",
            format!("{why}: DDL run on the source during the migration is not carried to the target"),
            "avoid schema changes until cutover; `pgseal migrate status` shows any drift with the statements that repair it".into(),
        ));
    }

    // 4. In each database of the scope: tables and replica identity (UPDATE/DELETE on a
    //    published table without one fails on the production source), unlogged tables
    //    and large objects (not replicated), name clashes.
    let mut scope = Vec::new();
    let mut published_tables = 0;
    let mut seen = blue_green::Seen::default();
    for db in &all {
        let Some(stream) = streams.iter().find(|s| s.database == db.name) else {
            scope.push(DatabaseScope {
                name: db.name.clone(),
                bytes: db.bytes,
                tables: 0,
                carried: false,
                not_carried: Vec::new(),
                carried_by_pgseal: Vec::new(),
            });
            continue;
        };
        let session = match connect(&db.name).await {
            Ok(session) => session,
            Err(why) => {
                findings.push(blocker(
                    "database_unreachable",
                    format!("database {} cannot be reached: {why}", db.name),
                    "grant the migration's role CONNECT on it, or leave it out of the scope with --database".into(),
                ));
                continue;
            }
        };
        let (entry, count) =
            database_checks(&session, db, stream, input, &mut findings, &mut seen).await?;
        if wanted.strategy == StrategyKind::FullLoad
            && let Some(available) = wanted.installed.as_ref().and_then(|i| i.get(&target_major))
        {
            let missing: Vec<String> = session
                .query("SELECT extname::text FROM pg_extension ORDER BY 1", &[])
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|e| !available.contains(e))
                .collect();
            if !missing.is_empty() {
                findings.push(blocker(
                    "extensions_missing",
                    format!(
                        "{}: extension(s) {} are used on the source but PostgreSQL {target_major} here cannot create them",
                        db.name,
                        list(&missing)
                    ),
                    format!("install them for PostgreSQL {target_major}, or DROP EXTENSION them on the source if unused, or choose another --engine-version"),
                ));
            }
        }
        published_tables += count;
        scope.push(entry);
    }

    // 6. Long transactions hold up slot creation (it waits for running transactions).
    let long = client
        .query(
            "SELECT pid, coalesce(usename::text, '?'), extract(epoch FROM now() - xact_start)::bigint \
             FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() \
               AND now() - xact_start > make_interval(secs => $1::bigint) ORDER BY xact_start",
            &[&input.long_transaction_seconds],
        )
        .await?;
    if !long.is_empty() {
        let items: Vec<String> = long
            .iter()
            .map(|r| {
                format!(
                    "pid {} ({}, {} s)",
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2)
                )
            })
            .collect();
        findings.push(blocker(
            "long_transactions",
            format!("{} transaction(s) open longer than {} s: {}; creating the slot would wait for them", items.len(), input.long_transaction_seconds, list(&items)),
            "let them finish, or end them: SELECT pg_terminate_backend(PID)".into(),
        ));
    }

    // 6b. Prepared transactions: creating a slot waits for them too, and a fenced database
    //     cannot commit them.
    let prepared = client
        .query(
            "SELECT gid, database::text, extract(epoch FROM now() - prepared)::bigint \
             FROM pg_prepared_xacts ORDER BY prepared",
            &[],
        )
        .await?;
    if !prepared.is_empty() {
        let items: Vec<String> = prepared
            .iter()
            .map(|r| {
                format!(
                    "gid '{}' (database {}, prepared {} s ago)",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2)
                )
            })
            .collect();
        findings.push(blocker(
            "prepared_transactions",
            format!(
                "{} prepared transaction(s) wait: {}; creating the slot would wait for them",
                items.len(),
                list(&items)
            ),
            "finish each in its database: COMMIT PREPARED 'GID'; or ROLLBACK PREPARED 'GID';"
                .into(),
        ));
    }

    // 7. Slot names are server-wide.
    for stream in &streams {
        let clash = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&stream.name],
            )
            .await?;
        if clash.get::<_, bool>(0) {
            findings.push(blocker(
                "name_clash",
                format!("a replication slot named {} already exists on the source", stream.name),
                format!("choose another --name, or if it is left from an earlier attempt: `pgseal migrate abort {}`", input.migration),
            ));
        }
    }

    // 8. Room for the snapshot and the restored copy.
    let source_bytes: i64 = client
        .query_one(
            "SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database",
            &[],
        )
        .await?
        .get(0);
    let source_bytes = source_bytes.max(0) as u64;
    if let Some(free) = input.free_bytes {
        // A full load makes no snapshot: only the target's copy; blue/green's green lives
        // on the platform.
        let needed = match wanted.strategy {
            StrategyKind::Snapshot => Some((
                source_bytes * 2 + (source_bytes / 5),
                "the snapshot and the restored copy need",
                "2.2x",
            )),
            StrategyKind::FullLoad => Some((
                source_bytes + (source_bytes / 5),
                "the loaded copy needs",
                "1.2x",
            )),
            StrategyKind::BlueGreen => None,
        };
        if let Some((needed, what, factor)) = needed
            && free < needed
        {
            findings.push(blocker(
                "disk_space",
                format!(
                    "{} MiB free; {what} about {} MiB ({factor} the source's {} MiB)",
                    free >> 20,
                    needed >> 20,
                    source_bytes >> 20
                ),
                "free space, or point --home at a larger file system".into(),
            ));
        }
    }

    // 9. The key.
    if let Some(problem) = &input.key_problem {
        findings.push(blocker(
            "key",
            problem.clone(),
            "choose another --key, or fix this one (`pgseal key describe`)".into(),
        ));
    }

    // 10. The target.
    if let Some(problem) = &input.target_problem {
        findings.push(blocker(
            "target",
            problem.clone(),
            "choose another --target".into(),
        ));
    }

    // 11. Roles, for the full load (a snapshot carries them with the files): copied
    // with their passwords' verifiers where this role may read them.
    if wanted.strategy == StrategyKind::FullLoad {
        let row = client
            .query_one(
                "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT'), \
                        coalesce(string_agg(quote_ident(rolname), ', ' ORDER BY rolname), '') \
                 FROM pg_roles WHERE rolcanlogin AND rolname !~ '^(pg_|rds)' AND rolname <> session_user",
                &[],
            )
            .await?;
        let (readable, logins): (bool, String) = (row.get(0), row.get(1));
        if !readable && !logins.is_empty() {
            findings.push(warning(
                "role_passwords",
                format!("login role(s) {logins} are copied to the target without their passwords: role {user} cannot read them (pg_authid)"),
                "set them on the target before the cutover (ALTER ROLE ... PASSWORD), which refuses while one has none there; or accept each with `pgseal migrate cutover --without-password ROLE`".into(),
            ));
        }
    }

    let blue_green = match (&wanted.blue_green_plan, wanted.strategy) {
        (Some(plan), StrategyKind::BlueGreen) => Some(blue_green::report(
            plan,
            &wal_level,
            &scope,
            &seen,
            &mut findings,
        )),
        _ => None,
    };
    findings.sort_by_key(|f| f.severity == Severity::Warning);
    Ok(PreflightReport {
        blue_green,
        source_major,
        target_major,
        strategy: wanted.strategy,
        strategies,
        recommended,
        source_bytes,
        server_version,
        tables: published_tables,
        databases: scope,
        findings,
        ddl_stops: if captured {
            pgseal_pg::ddl::STOPS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            Vec::new()
        },
    })
}

/// Which strategies can do this migration, and the one pgseal recommends: a physical
/// copy keeps the major version and the whole instance; a full load can change the
/// version and carries a subset as cheaply as the whole.
fn strategy_choices(
    input: &PreflightInput,
    source_major: u32,
    target_major: u32,
) -> (Vec<StrategyChoice>, StrategyKind) {
    let wanted = &input.target_version;
    let same_version = target_major == source_major;
    let snapshot = StrategyChoice {
        strategy: StrategyKind::Snapshot,
        possible: same_version,
        why: if same_version {
            "same major version: the files are copied at disk speed (no reload, no index rebuild) and replication starts at the exact LSN where the copy ends".into()
        } else {
            format!(
                "a physical copy keeps the major version ({source_major}); it cannot make a {target_major} target"
            )
        },
    };
    let installed = wanted
        .installed
        .as_ref()
        .is_none_or(|i| i.contains_key(&target_major));
    let full_load = StrategyChoice {
        strategy: StrategyKind::FullLoad,
        possible: wanted.full_load_unsupported.is_none()
            && target_major >= source_major
            && installed,
        why: if let Some(why) = &wanted.full_load_unsupported {
            why.clone()
        } else if target_major < source_major {
            format!(
                "logical replication onto an older major version ({target_major} < {source_major}) is not supported"
            )
        } else if !installed {
            format!("PostgreSQL {target_major} is not installed")
        } else {
            format!(
                "an empty PostgreSQL {target_major} target: roles and schema copied, every table loaded and then streamed by native logical replication (slower than a file copy for a large instance; indexes are rebuilt)"
            )
        },
    };
    let blue_green = StrategyChoice {
        strategy: StrategyKind::BlueGreen,
        possible: wanted.blue_green_unsupported.is_none()
            && (wanted.blue_green_plan.is_some() || same_version),
        why: if let Some(why) = &wanted.blue_green_unsupported {
            why.clone()
        } else {
            let method = wanted
                .blue_green_plan
                .as_ref()
                .map(|p| format!(" ({} replication: {})", p.method, p.why))
                .unwrap_or_default();
            format!(
                "the platform's own Blue/Green deployment with green encrypted under the key{method}: AWS runs the replication; same account only; not with RDS Proxy, cascading or cross-Region read replicas, or Multi-AZ DB clusters; the switchover drops connections and has no way back (pgseal's snapshot strategy rolls back by reverse replication). Chosen only when asked for"
            )
        },
    };
    let recommended = if !same_version && full_load.possible {
        StrategyKind::FullLoad
    } else if !same_version && blue_green.possible {
        // Where pgseal makes no empty target (AWS), the platform's deployment upgrades.
        StrategyKind::BlueGreen
    } else if input.tables.is_some() && full_load.possible {
        // A snapshot copies every table to replicate a few.
        StrategyKind::FullLoad
    } else {
        StrategyKind::Snapshot
    };
    (vec![snapshot, full_load, blue_green], recommended)
}

/// Blockers for a strategy that cannot make the target asked for.
fn version_checks(
    input: &PreflightInput,
    source_major: u32,
    target_major: u32,
    findings: &mut Vec<Finding>,
) {
    let wanted = &input.target_version;
    match wanted.strategy {
        StrategyKind::Snapshot if target_major != source_major => findings.push(blocker(
            "engine_version",
            format!("--engine-version {target_major} with the snapshot strategy: a physical copy keeps the source's major version {source_major}"),
            format!("pass --strategy full-load to move onto PostgreSQL {target_major}, or leave --engine-version out"),
        )),
        StrategyKind::Snapshot => {}
        StrategyKind::BlueGreen => {
            if let Some(why) = &wanted.blue_green_unsupported {
                findings.push(blocker(
                    "strategy",
                    why.clone(),
                    "use --strategy snapshot (or full-load) on this platform".into(),
                ));
            } else if target_major != source_major && wanted.blue_green_plan.is_none() {
                // Where the platform planned the deployment, it allowed the upgrade.
                findings.push(blocker(
                    "engine_version",
                    format!("--engine-version {target_major} with the blue-green strategy: the platform cannot make green on PostgreSQL {target_major} from {source_major}"),
                    format!("pass --strategy full-load to move onto PostgreSQL {target_major}, or leave --engine-version out"),
                ));
            }
        }
        StrategyKind::FullLoad => {
            if let Some(why) = &wanted.full_load_unsupported {
                findings.push(blocker(
                    "strategy",
                    why.clone(),
                    "use --strategy snapshot on this platform".into(),
                ));
            } else if target_major < source_major {
                findings.push(blocker(
                    "engine_version",
                    format!("--engine-version {target_major} is older than the source's {source_major}: logical replication onto an older version may meet syntax and types it lacks, and pg_dump output does not load into older servers"),
                    format!("choose {source_major} or newer"),
                ));
            } else if let Some(installed) = &wanted.installed
                && !installed.contains_key(&target_major)
            {
                findings.push(blocker(
                    "engine_not_installed",
                    format!(
                        "PostgreSQL {target_major} is not installed here (installed: {})",
                        installed.keys().map(u32::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    format!("install its server binaries (`bash scripts/setup` provisions 17 into .tools/postgresql/17; any N/bin tree can be named with {})", pgseal_pg::install::ROOTS_ENV),
                ));
            }
        }
    }
}

/// The checks of one database of the scope; returns its scope entry and how many tables
/// it publishes.
/// The full load reads a database's schema with `pg_dump`, which locks every table it
/// dumps in one transaction: past the room of the source's lock table it fails with "out
/// of shared memory", and so may the source's own sessions meanwhile. A warning when the
/// tables would take more than half of that room (PostgreSQL's own sizing:
/// `max_locks_per_transaction × (max_connections + max_prepared_transactions)`).
async fn lock_table_check(
    client: &Client,
    in_db: &dyn Fn(String) -> String,
    findings: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                       AND n.nspname NOT LIKE 'pg_toast%'), \
                    current_setting('max_locks_per_transaction')::bigint, \
                    current_setting('max_connections')::bigint \
                      + current_setting('max_prepared_transactions')::bigint",
            &[],
        )
        .await?;
    let (tables, per_transaction, slots): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let room = per_transaction * slots.max(1);
    if tables * 2 > room {
        let enough = ((tables * 2 + slots.max(1) - 1) / slots.max(1)).max(64);
        findings.push(warning(
            "lock_table",
            in_db(format!(
                "pg_dump, which reads the schema for the full load, locks all {tables} tables at once; the lock table has room for about {room} locks (max_locks_per_transaction {per_transaction}), shared with every other session: past it pg_dump fails with \"out of shared memory\", and so may the applications' own transactions meanwhile"
            )),
            format!(
                "raise max_locks_per_transaction to {enough} or more on the source (a restart) before the migration; pgseal gives the target the source's value"
            ),
        ));
    }
    Ok(())
}

async fn database_checks(
    client: &Client,
    db: &DatabaseInfo,
    stream: &Stream,
    input: &PreflightInput,
    findings: &mut Vec<Finding>,
    seen: &mut blue_green::Seen,
) -> Result<(DatabaseScope, u64), tokio_postgres::Error> {
    let blue_green = input.target_version.strategy == StrategyKind::BlueGreen;
    let physical = input.target_version.blue_green_method()
        == Some(pgseal_platform::ReplicationMethod::Physical);
    let in_db = |what: String| format!("{}: {what}", db.name);
    let tables = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                    c.relpersistence::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await?;
    let wanted = |name: &str| {
        input.tables.as_ref().is_none_or(|list| {
            list.iter().any(|w| {
                pgseal_pg::replication::qualified(w) == pgseal_pg::replication::qualified(name)
            })
        })
    };
    let mut no_identity = Vec::new();
    let mut unlogged = Vec::new();
    let mut outside = Vec::new();
    let mut published = 0;
    for t in &tables {
        let (name, ident, has_pk, persistence): (String, String, bool, String) =
            (t.get(0), t.get(1), t.get(2), t.get(3));
        if persistence == "u" {
            unlogged.push(name);
            continue;
        }
        if !wanted(&name) {
            outside.push(name);
            continue;
        }
        published += 1;
        // 'd' uses the primary key; 'n' has none; 'f' full and 'i' an index are usable.
        if ident == "n" || (ident == "d" && !has_pk) {
            no_identity.push(name);
        }
    }
    seen.keyless
        .extend(no_identity.iter().map(|t| in_db(t.clone())));
    // A physical copy needs no replica identity: nothing is published.
    if !no_identity.is_empty() && !physical {
        let detail = in_db(format!(
            "{} table(s) without a primary key or replica identity: {}; once published, UPDATE and DELETE on them fail on the source",
            no_identity.len(),
            list(&no_identity)
        ));
        findings.push(if input.replica_identity_full {
            warning("replica_identity", detail, "pgseal sets REPLICA IDENTITY FULL on them (--replica-identity-full given)".into())
        } else {
            blocker(
                "replica_identity",
                detail,
                "add primary keys, or pass --replica-identity-full to let pgseal set REPLICA IDENTITY FULL (updates then log whole rows)".into(),
            )
        });
    }
    let mut not_carried = Vec::new();
    if !unlogged.is_empty() {
        findings.push(warning(
            "unlogged_tables",
            in_db(format!("{} unlogged table(s) cannot be replicated and come back empty on the target: {}", unlogged.len(), list(&unlogged))),
            format!("ALTER TABLE ... SET LOGGED before the migration, or recreate their contents on the target; cutover refuses until each is accepted with --leave-stale {}/SCHEMA.TABLE", db.name),
        ));
        not_carried.extend(unlogged.iter().map(|t| format!("{t} (unlogged)")));
    }
    if !outside.is_empty() {
        findings.push(warning(
            "tables_outside_scope",
            in_db(format!("{} table(s) outside --tables are not replicated and would be stale on the target: {}", outside.len(), list(&outside))),
            format!("add them to --tables, or accept each at cutover with --leave-stale {}/SCHEMA.TABLE", db.name),
        ));
        not_carried.extend(outside.iter().map(|t| format!("{t} (outside --tables)")));
    }
    // A full load makes every object in the target's default tablespace (its encrypted
    // volume): the source's placement is a physical layout the target does not have.
    if input.target_version.strategy == StrategyKind::FullLoad {
        lock_table_check(client, &in_db, findings).await?;
        let spaces: Vec<String> = client
            .query(
                "SELECT DISTINCT t.spcname::text FROM pg_class c \
                 JOIN pg_tablespace t ON t.oid = c.reltablespace \
                 WHERE c.reltablespace <> 0 AND t.spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !spaces.is_empty() {
            findings.push(warning(
                "tablespaces",
                in_db(format!(
                    "objects in tablespace(s) {} are made in the target's default tablespace, on its encrypted volume",
                    list(&spaces)
                )),
                "nothing to do for the data; make the tablespaces on the target and move the objects after the cutover if their placement matters".into(),
            ));
            not_carried.push(format!("the placement in tablespace(s) {}", list(&spaces)));
        }
    }
    let mut carried_by_pgseal = Vec::new();
    let (large_objects, lo_bytes) = pgseal_pg::large_objects::count(client).await?;
    if blue_green {
        // The platform replicates; pgseal carries nothing (see the method's limits).
        if large_objects > 0 {
            seen.large_objects.push(in_db(format!(
                "{large_objects} large object(s), {} KiB",
                lo_bytes >> 10
            )));
        }
        seen.replication.extend(
            client
                .query(
                    "SELECT 'publication ' || pubname FROM pg_publication WHERE pubname NOT LIKE 'pgseal%' \
                     UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
                     WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                       AND subname NOT LIKE 'pgseal%' ORDER BY 1",
                    &[],
                )
                .await?
                .iter()
                .map(|r| in_db(r.get(0))),
        );
    } else if large_objects > 0 {
        carried_by_pgseal.push(format!(
            "{large_objects} large object(s), {} KiB: copied by the follower, what changed since inside the cutover's pause",
            lo_bytes >> 10
        ));
    }
    let clash = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
                    EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&stream.name],
        )
        .await?;
    for (i, kind) in ["publication", "subscription"].iter().enumerate() {
        if clash.get::<_, bool>(i) {
            findings.push(blocker(
                "name_clash",
                in_db(format!("a {kind} named {} already exists", stream.name)),
                format!("choose another --name, or if it is left from an earlier attempt: `pgseal migrate abort {}`", input.migration),
            ));
        }
    }
    Ok((
        DatabaseScope {
            name: db.name.clone(),
            bytes: db.bytes,
            tables: published,
            carried: true,
            not_carried,
            carried_by_pgseal,
        },
        published,
    ))
}
