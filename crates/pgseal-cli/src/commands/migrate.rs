//! `pgseal migrate ...`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use pgseal_core::preflight::{PreflightInput, PreflightReport, Severity, TargetVersion, preflight};
use pgseal_crypto::keystore::DEFAULT_KEY_ALIAS;
use pgseal_crypto::{KeyState, Kms};
use pgseal_local::instance::LocalInstances;

use pgseal_core::cutover::{CutoverOptions, Recovered};
use pgseal_core::journal::format_ms;
use pgseal_core::status::{MigrationStatus, Retention};
use pgseal_core::{
    Engine, EngineError, Event, Journal, MigrationLock, MigrationSpec, Phase, Surroundings,
};
use pgseal_local::instance::LocalError;

use super::platform::{AnyPlatform, aws_id, for_spec, is_aws_source};
use super::progress::MigrateObserver;
use super::switch::{EndpointSwitch, HookSwitch, resume_endpoint};
use super::{Context, Outcome, print_json, render_table, url_config};
use crate::cli::{MigrateCommand, MigrationArgs};
use crate::exit;

/// Bytes free on the file system that holds `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// What is wrong with the key, if anything; reads the key store without creating anything
/// (the managed default key, when it does not exist yet, is made at `migrate start`).
fn key_problem(ctx: &Context, key: &str) -> Option<String> {
    let kms = match ctx.open_kms() {
        Ok(kms) => kms,
        Err(e) => return Some(format!("cannot check the key: {e:#}")),
    };
    let is_default = key.trim_start_matches("alias/") == DEFAULT_KEY_ALIAS;
    if is_default {
        let exists = kms
            .list_keys()
            .ok()?
            .iter()
            .any(|k| k.aliases.iter().any(|a| a == DEFAULT_KEY_ALIAS));
        if !exists {
            return None;
        }
    }
    match kms.describe_key(key) {
        Ok(meta) if meta.state == KeyState::Enabled => None,
        Ok(meta) => Some(format!("KMS key {} is {}", meta.key_id, meta.state)),
        Err(e) => Some(e.to_string()),
    }
}

/// Runs one migrate command.
pub fn run(ctx: &Context, action: &MigrateCommand) -> Outcome {
    match action {
        MigrateCommand::Plan(args) => plan(ctx, args),
        MigrateCommand::Start {
            args,
            tables,
            target_port,
            max_slot_retention,
        } => start(ctx, args, tables.clone(), *target_port, *max_slot_retention),
        MigrateCommand::Resume { name } => resume(ctx, name),
        MigrateCommand::Abort { name } => abort(ctx, name),
        MigrateCommand::Status {
            name,
            watch,
            interval,
            max_slot_retention,
        } => status(ctx, name, *watch, *interval, *max_slot_retention),
        MigrateCommand::List => list(ctx),
        MigrateCommand::Validate { name, tables } => validate(ctx, name, tables.as_deref()),
        MigrateCommand::Rollback {
            name,
            endpoint,
            on_switch,
            timeout,
        } => rollback(
            ctx,
            name,
            endpoint.as_deref(),
            on_switch.clone(),
            std::time::Duration::from_secs_f64(timeout.max(1.0)),
        ),
        MigrateCommand::Cleanup {
            name,
            retire_source,
            delete_source,
        } => cleanup(ctx, name, *retire_source, *delete_source),
        MigrateCommand::Cutover {
            name,
            endpoint,
            on_switch,
            max_lag,
            timeout,
            dry_run,
            leave_stale,
        } => cutover(
            ctx,
            name,
            endpoint.as_deref(),
            on_switch.clone(),
            &CutoverOptions {
                max_lag: *max_lag,
                timeout: std::time::Duration::from_secs_f64(timeout.max(1.0)),
                dry_run: *dry_run,
                leave_stale: leave_stale.clone(),
            },
        ),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn is_url(source: &str) -> bool {
    source.starts_with("postgres://") || source.starts_with("postgresql://")
}

fn default_target(args: &MigrationArgs) -> Option<String> {
    args.target
        .clone()
        .or_else(|| (!is_url(&args.source)).then(|| format!("{}-enc", args.source)))
}

/// Parses a `--source` URL; the flag says whether it held a password.
fn url_config_checked(url: &str) -> anyhow::Result<(tokio_postgres::Config, bool)> {
    pgseal_pg::config_from_url(url).context("--source is not a PostgreSQL URL")
}

fn plan(ctx: &Context, args: &MigrationArgs) -> Outcome {
    let runtime = runtime()?;
    let (installed, full_load_unsupported);
    let (config, managed, target, target_problem, key_problem, free) =
        if is_aws_source(&args.source) {
            use pgseal_platform::Platform as _;
            let spec = spec_from_args(ctx, args, None, None, None)?;
            let platform = for_spec(ctx, &runtime, None, &spec, false)?;
            let mut config = runtime.block_on(platform.connection(&spec.source))?;
            config.dbname(&spec.database);
            let target_problem = runtime
                .block_on(platform.describe_instance(&spec.target))
                .ok()
                .map(|_| format!("{} already exists", spec.target));
            let key_problem = key_problem_on(ctx, &runtime, &platform, &spec.key);
            (installed, full_load_unsupported) = target_versions(&platform);
            (
                config,
                Some(args.source.clone()),
                Some(spec.target),
                target_problem,
                key_problem,
                None,
            )
        } else {
            let instances = LocalInstances::open(&ctx.home)?;
            installed = Some(installed_versions(instances.installs()));
            full_load_unsupported = None;
            let (config, managed) = if is_url(&args.source) {
                (url_config(&args.source, "--source")?, None)
            } else {
                let mut config = instances.describe(&args.source)?.sql_config();
                config.dbname(home_database(args));
                (config, Some(args.source.clone()))
            };
            let target = default_target(args);
            let target_problem = match &target {
                Some(t) if instances.describe(t).is_ok() => {
                    Some(format!("instance {t} already exists"))
                }
                Some(_) => None,
                None => Some("name the encrypted instance to create with --target".to_string()),
            };
            (
                config,
                managed,
                target,
                target_problem,
                key_problem(ctx, &args.key),
                free_bytes(&ctx.home),
            )
        };
    let input = PreflightInput {
        migration: args.name.clone(),
        managed_source: managed,
        allow_restart: args.allow_restart,
        replica_identity_full: args.replica_identity_full,
        long_transaction_seconds: args.long_transaction_seconds,
        free_bytes: free,
        key_problem,
        target_problem,
        databases: (!args.databases.is_empty()).then(|| args.databases.clone()),
        tables: None,
        target_version: TargetVersion {
            strategy: args.strategy.into(),
            engine_version: args.engine_version,
            installed,
            full_load_unsupported,
            copy_role_passwords: args.copy_role_passwords,
        },
    };
    let report = runtime.block_on(async {
        let client = pgseal_pg::connect(&config).await?;
        let connect = async |db: &str| {
            let mut config = config.clone();
            config.dbname(db);
            pgseal_pg::connect(&config)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        anyhow::Ok(
            preflight(&client, connect, &input)
                .await
                .context("preflight query failed")?,
        )
    })?;
    if ctx.json {
        print_json(&report)?;
    } else {
        print!(
            "{}",
            render(
                &report,
                &args.source,
                target.as_deref().unwrap_or("?"),
                &args.name
            )
        );
    }
    Ok(exit::code(if report.ready() {
        exit::OK
    } else {
        exit::PRECONDITION
    }))
}

/// The platform migration `name` runs on, with the local key store when `kms` (creating,
/// snapshotting and restoring encrypted local instances need it; status and abort do not).
fn platform(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    journal: &Journal,
    name: &str,
    kms: bool,
) -> anyhow::Result<AnyPlatform> {
    let spec = journal.migration(name)?.spec;
    for_spec(ctx, runtime, Some(journal), &spec, kms)
}

/// The database pgseal connects to first on an instance source: the first `--database`,
/// or `postgres`.
fn home_database(args: &MigrationArgs) -> &str {
    args.databases.first().map_or("postgres", String::as_str)
}

/// The migration `args` describe, checked before anything is recorded.
fn spec_from_args(
    ctx: &Context,
    args: &MigrationArgs,
    tables: Option<Vec<String>>,
    target_port: Option<u16>,
    max_slot_retention: Option<u64>,
) -> anyhow::Result<MigrationSpec> {
    let aws = is_aws_source(&args.source);
    let mut platform = std::collections::BTreeMap::new();
    if aws {
        for (key, value) in [
            ("region", &args.region),
            ("endpoint_url", &args.endpoint_url),
        ] {
            if let Some(v) = value {
                platform.insert(key.to_string(), v.clone());
            }
        }
        #[cfg(feature = "aws")]
        for (prefix, routes) in [
            ("connect_via", &args.connect_via),
            ("peer_via", &args.peer_via),
        ] {
            for route in routes {
                let (id, address) = pgseal_aws::parse_route(route)?;
                platform.insert(format!("{prefix}.{id}"), address);
            }
        }
    } else if args.region.is_some()
        || args.endpoint_url.is_some()
        || !args.connect_via.is_empty()
        || !args.peer_via.is_empty()
    {
        anyhow::bail!(LocalError::InvalidInput(
            "--region, --endpoint-url, --connect-via and --peer-via are for AWS sources (rds:ID, aurora:ID)".into()
        ));
    }
    // A URL source: the journal keeps the URL, so it must not hold the password; the
    // database is the URL's.
    let (database, target) = if is_url(&args.source) {
        let (config, password_in_url) = url_config_checked(&args.source)?;
        if password_in_url {
            anyhow::bail!(LocalError::InvalidInput(
                "the --source URL holds a password; the journal keeps the URL, so give the password in PGPASSWORD (at start and at each resume/abort/status) instead".into()
            ));
        }
        let target = args.target.clone().ok_or_else(|| {
            LocalError::InvalidInput(
                "name the encrypted instance to create with --target (a URL source has no default)"
                    .into(),
            )
        })?;
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
            .to_string();
        (database, target)
    } else if aws {
        let target = args
            .target
            .clone()
            .unwrap_or_else(|| format!("{}-enc", aws_id(&args.source)));
        (home_database(args).to_string(), target)
    } else {
        // An unknown source is bad input: refused before anything is recorded.
        LocalInstances::open(&ctx.home)?.describe(&args.source)?;
        pgseal_local::instance::check_name(
            &default_target(args).expect("an instance source has a default target"),
        )?;
        (
            home_database(args).to_string(),
            default_target(args).expect("an instance source has a default target"),
        )
    };
    if tables.is_some() && args.databases.len() != 1 {
        anyhow::bail!(LocalError::InvalidInput(
            "--tables narrows one database: name it with exactly one --database".into()
        ));
    }
    let key = if aws && args.key == DEFAULT_KEY_ALIAS {
        "alias/aws/rds".to_string()
    } else {
        args.key.clone()
    };
    Ok(MigrationSpec {
        name: args.name.clone(),
        source: args.source.clone(),
        target,
        target_port,
        key,
        database,
        databases: (!args.databases.is_empty()).then(|| args.databases.clone()),
        tables,
        allow_restart: args.allow_restart,
        replica_identity_full: args.replica_identity_full,
        long_transaction_seconds: args.long_transaction_seconds,
        max_slot_retention,
        slot_wait_seconds: args.slot_wait,
        strategy: args.strategy.into(),
        engine_version: args.engine_version,
        copy_role_passwords: args.copy_role_passwords,
        platform,
    })
}

/// What the target's platform can run, for preflight: the local platform's installed
/// major versions with their extensions; AWS decides for itself and runs no full load.
fn target_versions(
    platform: &AnyPlatform,
) -> (Option<BTreeMap<u32, BTreeSet<String>>>, Option<String>) {
    match platform {
        AnyPlatform::Local(local) => (Some(installed_versions(local.instances().installs())), None),
        #[cfg(feature = "aws")]
        AnyPlatform::Aws(_) => (
            None,
            Some("the full-load strategy runs on the local platform only: pgseal does not create empty RDS instances".into()),
        ),
    }
}

fn installed_versions(installs: &pgseal_pg::PgInstalls) -> BTreeMap<u32, BTreeSet<String>> {
    installs
        .all
        .iter()
        .map(|i| (i.version.major, i.extensions()))
        .collect()
}

/// The facts about the surroundings the engine cannot read over SQL.
fn surroundings(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    key: &str,
) -> Surroundings {
    let (installed, full_load_unsupported) = target_versions(platform);
    Surroundings {
        free_bytes: matches!(platform, AnyPlatform::Local(_))
            .then(|| free_bytes(&ctx.home))
            .flatten(),
        key_problem: key_problem_on(ctx, runtime, platform, key),
        installed,
        full_load_unsupported,
        // The local platform found them already; elsewhere they are looked for here.
        client_tools: match platform {
            AnyPlatform::Local(local) => local.instances().installs().clone(),
            #[cfg(feature = "aws")]
            AnyPlatform::Aws(_) => pgseal_pg::PgInstalls::discover(),
        },
    }
}

/// What is wrong with the migration's key, if anything, on its platform.
fn key_problem_on(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    key: &str,
) -> Option<String> {
    match platform {
        AnyPlatform::Local(_) => {
            let _ = runtime;
            key_problem(ctx, key)
        }
        #[cfg(feature = "aws")]
        AnyPlatform::Aws(aws) => runtime
            .block_on(aws.check_key(key))
            .err()
            .map(|e| e.to_string()),
    }
}

fn start(
    ctx: &Context,
    args: &MigrationArgs,
    tables: Option<Vec<String>>,
    target_port: Option<u16>,
    max_slot_retention: Option<u64>,
) -> Outcome {
    let spec = spec_from_args(ctx, args, tables, target_port, max_slot_retention)?;
    let _lock = MigrationLock::acquire(&ctx.home, &spec.name)?;
    let journal = Journal::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = for_spec(ctx, &runtime, None, &spec, true)?;
    match &platform {
        AnyPlatform::Local(_) => {
            let kms = ctx.open_kms()?;
            // The managed default key is made on first use; other keys must exist and be
            // enabled.
            if args.key.trim_start_matches("alias/") == DEFAULT_KEY_ALIAS {
                kms.resolve(&args.key)?;
            }
        }
        #[cfg(feature = "aws")]
        AnyPlatform::Aws(aws) => {
            // An unknown source, or a bad target name, is refused before anything is recorded.
            use pgseal_platform::Platform as _;
            runtime.block_on(aws.describe_instance(&spec.source))?;
            pgseal_aws::settings::check_identifier(&spec.target)?;
        }
    }
    let surroundings = surroundings(ctx, &runtime, &platform, &spec.key);
    journal.create(&spec)?;
    ctx.status(format!(
        "migration {}: {} -> encrypted instance {} under {} (journal {})",
        spec.name,
        spec.source,
        spec.target,
        spec.key,
        journal.path().display()
    ));
    let result = drive(ctx, &runtime, &platform, &journal, &spec.name, surroundings);
    // A start that preflight stopped created nothing: forget it, so that the same name
    // can be started again with the fixes (some of them are options).
    if let Err(e) = &result
        && e.chain().any(|c| {
            matches!(
                c.downcast_ref::<EngineError>(),
                Some(EngineError::Blocked(_))
            )
        })
    {
        journal.forget(&spec.name)?;
    }
    result
}

fn resume(ctx: &Context, name: &str) -> Outcome {
    let _lock = MigrationLock::acquire(&ctx.home, name)?;
    let journal = Journal::open(&ctx.home)?;
    let record = journal.migration(name)?;
    if record.phase == Phase::CuttingOver {
        return recover_cutover(ctx, &journal, name);
    }
    if record.phase == Phase::CutOver
        && journal
            .resources(name)?
            .iter()
            .any(|r| r.kind == "target_fence")
    {
        return recover_cutover(ctx, &journal, name);
    }
    let runtime = runtime()?;
    let platform = for_spec(ctx, &runtime, Some(&journal), &record.spec, true)?;
    let surroundings = surroundings(ctx, &runtime, &platform, &record.spec.key);
    ctx.status(format!(
        "resuming migration {name} (phase {})",
        record.phase.as_str()
    ));
    drive(ctx, &runtime, &platform, &journal, name, surroundings)
}

/// Runs the engine and reports how it ended.
fn drive(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    journal: &Journal,
    name: &str,
    surroundings: Surroundings,
) -> Outcome {
    let observer = MigrateObserver::new(ctx, journal.migration(name)?.spec.strategy);
    let observe = |event: &Event| observer.event(event);
    let result = runtime.block_on(async {
        let engine = Engine::new(platform, journal, name, surroundings, observe)?;
        engine.run().await
    });
    if let Err(e) = result {
        let hint = if matches!(e, EngineError::Blocked(_)) {
            "nothing was changed; fix the blockers and run `pgseal migrate start` again".to_string()
        } else if matches!(e, EngineError::SlotWait(_)) {
            "what it had made was removed and the migration forgotten; run `pgseal migrate start` again".to_string()
        } else {
            format!(
                "`pgseal migrate resume {name}` retries from this step; `pgseal migrate abort {name}` removes what was created"
            )
        };
        return Err(anyhow::Error::new(e).context(format!("migration {name} stopped ({hint})")));
    }
    let report = runtime.block_on(pgseal_core::status::status(platform, journal, name, None))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        let how = match &report.handoff {
            Some(h) => format!("handoff LSN {}", h.lsn),
            None => format!("{} strategy", report.migration.spec.strategy),
        };
        println!(
            "migration {name} is replicating: {} -> {} (encrypted), {how}",
            report.migration.spec.source, report.migration.spec.target,
        );
        println!("follow it with: pgseal migrate status {name} --watch");
    }
    Ok(exit::code(exit::OK))
}

/// The endpoints in front of `instance`.
fn endpoints_of(instances: &LocalInstances, instance: &str) -> anyhow::Result<Vec<String>> {
    Ok(instances
        .endpoints()?
        .into_iter()
        .filter(|e| e.record.instance == instance)
        .map(|e| e.record.name)
        .collect())
}

fn cutover(
    ctx: &Context,
    name: &str,
    endpoint: Option<&str>,
    on_switch: Option<String>,
    options: &CutoverOptions,
) -> Outcome {
    let _lock = MigrationLock::acquire(&ctx.home, name)?;
    let journal = Journal::open(&ctx.home)?;
    let spec = journal.migration(name)?.spec;
    let instances = LocalInstances::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    #[cfg(feature = "aws")]
    if let AnyPlatform::Aws(aws) = &platform {
        let switch = rename_switch(ctx, aws, &spec, endpoint, on_switch.as_deref(), false)?;
        let report = runtime.block_on(pgseal_core::cutover::cutover(
            &platform, &journal, name, &switch, options,
        ))?;
        return print_cutover(ctx, name, &spec, &report);
    }
    let endpoint = match (endpoint, &on_switch, spec.source_url()) {
        (Some(e), _, _) => Some(e.to_string()),
        (None, Some(_), _) | (None, None, Some(_)) => None,
        (None, None, None) => {
            let found = endpoints_of(&instances, &spec.source)?;
            if found.len() > 1 {
                anyhow::bail!(LocalError::InvalidInput(format!(
                    "several endpoints are in front of {}: {}; choose one with --endpoint",
                    spec.source,
                    found.join(", ")
                )));
            }
            found.into_iter().next()
        }
    };
    let report = match endpoint {
        Some(endpoint) => {
            let switch = EndpointSwitch {
                instances: instances.clone(),
                endpoint,
                from: spec.source.clone(),
                target: spec.target.clone(),
                database: spec.database.clone(),
            };
            runtime.block_on(pgseal_core::cutover::cutover(
                &platform, &journal, name, &switch, options,
            ))?
        }
        None => {
            let switch =
                HookSwitch::to_instance(&instances, &spec.target, &spec.database, on_switch, name)?;
            runtime.block_on(pgseal_core::cutover::cutover(
                &platform, &journal, name, &switch, options,
            ))?
        }
    };
    print_cutover(ctx, name, &spec, &report)
}

/// Prints what cutover did (or would refuse); exit 3 for a refused dry run.
fn print_cutover(
    ctx: &Context,
    name: &str,
    spec: &MigrationSpec,
    report: &pgseal_core::cutover::CutoverReport,
) -> Outcome {
    if ctx.json {
        print_json(&report)?;
    } else if report.dry_run {
        if report.failed_checks.is_empty() {
            println!("cutover of {name}: every precondition holds (dry run, nothing changed)");
        } else {
            println!("cutover of {name} would be refused:");
            for c in &report.failed_checks {
                println!("  - {c}");
            }
        }
    } else {
        println!(
            "cut over {name} to {} with {}: {} database(s) ({}), write pause {} ms (drained at {} after the fence's barrier at {}), {} sequence(s) set, {} source session(s) ended",
            spec.target,
            report.switch,
            report.databases.len(),
            report.databases.join(", "),
            report.write_pause_ms.unwrap_or(0),
            report.drained_lsn.map_or("?".into(), |l| l.to_string()),
            report.fence_lsn.map_or("?".into(), |l| l.to_string()),
            report.sequences.len(),
            report.sessions_ended
        );
        for w in &report.workers_ended {
            println!("the fence ended background worker {w}");
        }
        if !report.kept_on_source.is_empty() {
            println!(
                "outside the migration, still served by the source through the endpoint: {}",
                report.kept_on_source.join(", ")
            );
        }
        if !report.left_stale.is_empty() {
            println!(
                "left stale on the target, as accepted: {}",
                report.left_stale.join(", ")
            );
        }
        println!(
            "the source {} stays fenced (no connections to {})",
            spec.source,
            report.databases.join(", ")
        );
    }
    Ok(exit::code(
        if report.dry_run && !report.failed_checks.is_empty() {
            exit::PRECONDITION
        } else {
            exit::OK
        },
    ))
}

/// The rename switch of an AWS migration (`back` for rollback); `--endpoint` and
/// `--on-switch` are for local instances.
#[cfg(feature = "aws")]
fn rename_switch(
    ctx: &Context,
    aws: &pgseal_aws::AwsPlatform,
    spec: &MigrationSpec,
    endpoint: Option<&str>,
    on_switch: Option<&str>,
    back: bool,
) -> anyhow::Result<super::switch::RenameSwitch> {
    if endpoint.is_some() || on_switch.is_some() {
        anyhow::bail!(LocalError::InvalidInput(
            "on AWS the switch renames the instances (applications keep their endpoint); --endpoint and --on-switch are for local instances".into()
        ));
    }
    Ok(super::switch::RenameSwitch {
        platform: aws.clone(),
        home: ctx.home.clone(),
        migration: spec.name.clone(),
        source: spec.source.clone(),
        target: spec.target.clone(),
        database: spec.database.clone(),
        back,
    })
}

/// `resume` of a cutover that was interrupted: back to replicating before the switch,
/// finished forward after it; endpoints in front of either side are resumed.
fn recover_cutover(ctx: &Context, journal: &Journal, name: &str) -> Outcome {
    let spec = journal.migration(name)?.spec;
    let instances = LocalInstances::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, journal, name, false)?;
    let rolling_back = journal.migration(name)?.phase == Phase::CutOver;
    let outcome = if rolling_back {
        runtime.block_on(pgseal_core::cutover::recover_interrupted_rollback(
            &platform, journal, name,
        ))?
    } else {
        runtime.block_on(pgseal_core::cutover::recover_interrupted(
            &platform, journal, name,
        ))?
    };
    #[cfg(feature = "aws")]
    if let AnyPlatform::Aws(aws) = &platform
        && matches!(outcome, Recovered::CutOver | Recovered::RolledBack)
    {
        use pgseal_core::cutover::Switch as _;
        let back = outcome == Recovered::RolledBack;
        let switch = rename_switch(ctx, aws, &spec, None, None, back)?;
        runtime
            .block_on(switch.point_to_target(&[]))
            .map_err(|e| anyhow::anyhow!("finishing {}: {e}", switch.describe()))?;
    }
    let mut endpoints = if matches!(platform, AnyPlatform::Local(_)) {
        endpoints_of(&instances, &spec.source)?
    } else {
        Vec::new()
    };
    if matches!(platform, AnyPlatform::Local(_)) {
        endpoints.extend(endpoints_of(&instances, &spec.target)?);
    }
    for e in endpoints {
        match outcome {
            Recovered::CutOver => {
                let stay = runtime.block_on(pgseal_core::cutover::databases_outside(
                    &platform, journal, name,
                ))?;
                let routes = stay
                    .into_iter()
                    .map(|db| (db, spec.source.clone()))
                    .collect();
                runtime.block_on(instances.point_endpoint(&e, &spec.target, routes))?;
            }
            Recovered::RolledBack => {
                runtime.block_on(instances.point_endpoint(&e, &spec.source, Default::default()))?;
            }
            Recovered::BackToReplicating | Recovered::StillCutOver => {}
        }
        runtime
            .block_on(resume_endpoint(&instances.endpoint(&e)?))
            .map_err(|err| anyhow::anyhow!("resuming endpoint {e}: {err}"))?;
    }
    match outcome {
        Recovered::BackToReplicating => println!(
            "the interrupted cutover of {name} was undone: fence lifted, replicating again; run `pgseal migrate cutover {name}` again"
        ),
        Recovered::CutOver => {
            println!("the interrupted cutover of {name} had switched: it is now cut over")
        }
        Recovered::StillCutOver => println!(
            "the interrupted rollback of {name} was undone: the target serves again; run `pgseal migrate rollback {name}` again"
        ),
        Recovered::RolledBack => {
            println!("the interrupted rollback of {name} had switched back: it is now rolled back")
        }
    }
    Ok(exit::code(exit::OK))
}

/// A table state's name, as the JSON output spells it.
fn state_name(state: pgseal_core::validate::TableState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn validate(ctx: &Context, name: &str, tables: Option<&[String]>) -> Outcome {
    let journal = Journal::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    use pgseal_core::validate::Progress;
    use std::io::IsTerminal;
    let bars = !ctx.quiet && !ctx.json && std::io::stderr().is_terminal();
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    let progress = |p: Progress<'_>| match p {
        Progress::Table {
            table,
            estimated_rows,
        } if bars => {
            let b = indicatif::ProgressBar::new(estimated_rows.max(1) as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:40} {wide_bar} {human_pos}/{human_len} rows, eta {eta}",
                )
                .expect("valid template"),
            );
            b.set_message(table.to_string());
            *bar.lock().expect("not poisoned") = Some(b);
        }
        Progress::Rows(rows) => {
            if let Some(b) = bar.lock().expect("not poisoned").as_ref() {
                b.set_position(rows.max(0) as u64);
            }
        }
        Progress::Done(t) => {
            if let Some(b) = bar.lock().expect("not poisoned").take() {
                b.finish_and_clear();
            }
            ctx.status(format!(
                "  {:<40} {:>10} rows {:>5} chunks {:>7.2} s  {}",
                t.table,
                t.rows,
                t.chunks,
                t.seconds,
                state_name(t.state)
            ));
        }
        Progress::Table { .. } => {}
    };
    let report = runtime.block_on(pgseal_core::validate::validate(
        &platform, &journal, name, tables, &progress,
    ))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        for t in report
            .tables
            .iter()
            .filter(|t| t.mismatched_rows > 0 || t.error.is_some())
        {
            println!("{}: {} mismatched row(s)", t.table, t.mismatched_rows);
            for (label, keys) in [
                ("missing on the target", &t.missing),
                ("extra on the target", &t.extra),
                ("different", &t.different),
            ] {
                if !keys.is_empty() {
                    let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
                    println!(
                        "  {label}: {}{}",
                        shown.join(", "),
                        if keys.len() > 5 {
                            format!(" and {} more", keys.len() - 5)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            if let Some(e) = &t.error {
                println!("  error: {e}");
            }
        }
        let mut rows = vec![vec![
            "TABLE".to_string(),
            "STATE".into(),
            "ROWS".into(),
            "CHUNKS".into(),
            "SECONDS".into(),
            "MISMATCHED".into(),
        ]];
        for t in &report.tables {
            rows.push(vec![
                t.table.clone(),
                state_name(t.state),
                t.rows.to_string(),
                t.chunks.to_string(),
                format!("{:.2}", t.seconds),
                t.mismatched_rows.to_string(),
            ]);
        }
        print!("{}", render_table(&rows));
        println!(
            "validation of {name}: {} rows in {} tables compared in {:.1} s, {} mismatched: {}",
            report.rows,
            report.tables.len(),
            report.seconds,
            report.mismatched_rows,
            if report.clean { "clean" } else { "NOT clean" }
        );
    }
    Ok(exit::code(if report.clean {
        exit::OK
    } else {
        exit::VERIFY_FAILED
    }))
}

fn rollback(
    ctx: &Context,
    name: &str,
    endpoint: Option<&str>,
    on_switch: Option<String>,
    timeout: std::time::Duration,
) -> Outcome {
    let _lock = MigrationLock::acquire(&ctx.home, name)?;
    let journal = Journal::open(&ctx.home)?;
    let spec = journal.migration(name)?.spec;
    let instances = LocalInstances::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    #[cfg(feature = "aws")]
    if let AnyPlatform::Aws(aws) = &platform {
        let switch = rename_switch(ctx, aws, &spec, endpoint, on_switch.as_deref(), true)?;
        let report = runtime.block_on(pgseal_core::cutover::rollback(
            &platform, &journal, name, &switch, timeout,
        ))?;
        return print_rollback(ctx, name, &spec, &report);
    }
    let endpoint = match (endpoint, &on_switch) {
        (Some(e), _) => Some(e.to_string()),
        (None, Some(_)) => None,
        (None, None) => endpoints_of(&instances, &spec.target)?.into_iter().next(),
    };
    let report = match (endpoint, spec.source_url()) {
        (Some(endpoint), None) => {
            let switch = EndpointSwitch {
                instances: instances.clone(),
                endpoint,
                from: spec.target.clone(),
                target: spec.source.clone(),
                database: spec.database.clone(),
            };
            runtime.block_on(pgseal_core::cutover::rollback(
                &platform, &journal, name, &switch, timeout,
            ))?
        }
        (_, Some(url)) => {
            let switch = HookSwitch {
                command: on_switch,
                migration: name.to_string(),
                target: url.to_string(),
                new_url: url.to_string(),
                target_config: url_config(url, "the source URL")?,
            };
            runtime.block_on(pgseal_core::cutover::rollback(
                &platform, &journal, name, &switch, timeout,
            ))?
        }
        (None, None) => {
            let switch =
                HookSwitch::to_instance(&instances, &spec.source, &spec.database, on_switch, name)?;
            runtime.block_on(pgseal_core::cutover::rollback(
                &platform, &journal, name, &switch, timeout,
            ))?
        }
    };
    print_rollback(ctx, name, &spec, &report)
}

/// Prints what rollback did.
fn print_rollback(
    ctx: &Context,
    name: &str,
    spec: &MigrationSpec,
    report: &pgseal_core::cutover::RollbackReport,
) -> Outcome {
    if ctx.json {
        print_json(&report)?;
    } else {
        println!(
            "rolled {name} back to {} with {}: write pause {} ms (drained at {} after the target's fence at {}), {} sequence(s) set",
            spec.source,
            report.switch,
            report.write_pause_ms,
            report.drained_lsn,
            report.fence_lsn,
            report.sequences.len()
        );
        println!(
            "the encrypted target {} stays fenced; `pgseal migrate cleanup {name}` removes it",
            spec.target
        );
    }
    Ok(exit::code(exit::OK))
}

fn cleanup(ctx: &Context, name: &str, retire: bool, delete: bool) -> Outcome {
    let _lock = MigrationLock::acquire(&ctx.home, name)?;
    let journal = Journal::open(&ctx.home)?;
    let spec = journal.migration(name)?.spec;
    if (retire || delete) && spec.source_url().is_some() {
        anyhow::bail!(LocalError::InvalidInput(
            "the source is a server reached by URL: pgseal cannot stop or delete it".into()
        ));
    }
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    if matches!(platform, AnyPlatform::Local(_)) {
        let mut report =
            runtime.block_on(pgseal_core::cutover::cleanup(&platform, &journal, name))?;
        cleanup_local_source(ctx, &spec, retire, delete, &mut report)?;
        return print_cleanup(ctx, name, &spec, &report);
    }
    let mut report = runtime.block_on(pgseal_core::cutover::cleanup(&platform, &journal, name))?;
    #[cfg(feature = "aws")]
    if retire && let AnyPlatform::Aws(aws) = &platform {
        runtime.block_on(aws.stop_instance(&spec.source))?;
        report.removed.push(format!(
            "(stopped) {}{} (the old source; AWS starts it again after 7 days unless deleted)",
            aws_id(&spec.source),
            pgseal_aws::RETIRED_SUFFIX
        ));
    }
    if delete {
        use pgseal_platform::Platform as _;
        runtime.block_on(platform.delete_instance(&spec.source))?;
        report
            .removed
            .push(format!("instance {} (the old source)", spec.source));
    }
    print_cleanup(ctx, name, &spec, &report)
}

/// Stops (`retire`) or deletes the local source after cleanup.
fn cleanup_local_source(
    ctx: &Context,
    spec: &MigrationSpec,
    retire: bool,
    delete: bool,
    report: &mut pgseal_core::cutover::CleanupReport,
) -> anyhow::Result<()> {
    let instances = LocalInstances::open(&ctx.home)?;
    if retire {
        instances.stop(&spec.source)?;
        report
            .removed
            .push(format!("(stopped) instance {}", spec.source));
    }
    if delete {
        instances.delete(&spec.source)?;
        report.removed.push(format!("instance {}", spec.source));
    }
    Ok(())
}

/// Prints what cleanup removed.
fn print_cleanup(
    ctx: &Context,
    name: &str,
    spec: &MigrationSpec,
    report: &pgseal_core::cutover::CleanupReport,
) -> Outcome {
    if ctx.json {
        print_json(&report)?;
    } else {
        for line in &report.removed {
            println!("removed {line}");
        }
        println!(
            "migration {name} cleaned up; {} is the database now",
            spec.target
        );
    }
    Ok(exit::code(exit::OK))
}

fn abort(ctx: &Context, name: &str) -> Outcome {
    let _lock = MigrationLock::acquire(&ctx.home, name)?;
    let journal = Journal::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    let report = runtime.block_on(pgseal_core::abort::abort(&platform, &journal, name))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        for line in &report.removed {
            println!("removed {line}");
        }
        for line in &report.already_gone {
            println!("already gone: {line}");
        }
        println!("migration {name} aborted; the source keeps serving as before");
    }
    Ok(exit::code(exit::OK))
}

fn list(ctx: &Context) -> Outcome {
    let journal = Journal::open(&ctx.home)?;
    let migrations = journal.list()?;
    if ctx.json {
        return print_json(&migrations).map(|()| exit::code(exit::OK));
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "PHASE".into(),
        "SOURCE".into(),
        "TARGET".into(),
        "KEY".into(),
        "CREATED".into(),
    ]];
    for m in &migrations {
        rows.push(vec![
            m.spec.name.clone(),
            m.phase.as_str().to_string(),
            m.spec.source.clone(),
            m.spec.target.clone(),
            m.spec.key.clone(),
            format_ms(m.created_ms),
        ]);
    }
    print!("{}", render_table(&rows));
    Ok(exit::code(exit::OK))
}

fn status(
    ctx: &Context,
    name: &str,
    watch: bool,
    interval: f64,
    max_slot_retention: Option<u64>,
) -> Outcome {
    use std::io::IsTerminal;
    let journal = Journal::open(&ctx.home)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    let redraw = watch && std::io::stdout().is_terminal() && !ctx.json;
    loop {
        let report = runtime.block_on(pgseal_core::status::status(
            &platform,
            &journal,
            name,
            max_slot_retention,
        ))?;
        if ctx.json {
            print_json(&report)?;
        } else {
            if redraw {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render_status(&report));
        }
        if report.retention == Retention::Exceeded && report.migration.phase != Phase::Aborted {
            eprintln!(
                "pgseal: the slot holds more WAL than --max-slot-retention allows: aborting migration {name} to protect the source's disk"
            );
            let _lock = MigrationLock::acquire(&ctx.home, name)?;
            runtime.block_on(pgseal_core::abort::abort(&platform, &journal, name))?;
            eprintln!("pgseal: migration {name} aborted (slot and publication dropped)");
            return Ok(exit::code(exit::PRECONDITION));
        }
        if !watch {
            return Ok(exit::code(exit::OK));
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval.max(0.2)));
    }
}

fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} B")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

fn render_status(s: &MigrationStatus) -> String {
    let spec = &s.migration.spec;
    let mut out = format!(
        "migration {}: {} -> {} (key {}, {})\nphase: {}{}\n",
        spec.name,
        spec.source,
        spec.target,
        spec.key,
        spec.databases
            .as_ref()
            .map_or("the whole instance".to_string(), |d| format!(
                "databases {}",
                d.join(", ")
            )),
        s.migration.phase.as_str(),
        s.migration
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(" - {e}"))
    );
    if let Some(h) = &s.handoff {
        out.push_str(&format!("handoff LSN: {}\n", h.lsn));
    }
    if let Some(done) = s.steps.iter().rev().find(|r| {
        r.step == pgseal_core::Step::Cutover && r.outcome == pgseal_core::journal::Outcome::Done
    }) && let Some(outputs) = &done.outputs
    {
        out.push_str(&format!(
            "cut over with {}: write pause {} ms, {} sequence(s) set\n",
            outputs["switch"].as_str().unwrap_or("?"),
            outputs["write_pause_ms"],
            outputs["sequences"].as_array().map_or(0, Vec::len)
        ));
    }
    out.push_str("\nsteps:\n");
    let mut rows = vec![vec![
        "#".to_string(),
        "STEP".into(),
        "OUTCOME".into(),
        "STARTED".into(),
        "SECONDS".into(),
    ]];
    for run in &s.steps {
        rows.push(vec![
            run.step.number(s.migration.spec.strategy).to_string(),
            run.step.as_str().to_string(),
            match run.outcome {
                pgseal_core::journal::Outcome::Done => "done".to_string(),
                pgseal_core::journal::Outcome::Failed => "failed".to_string(),
                pgseal_core::journal::Outcome::Running if s.migration.phase == Phase::Running => {
                    "running or interrupted".to_string()
                }
                pgseal_core::journal::Outcome::Running => "interrupted".to_string(),
            },
            format_ms(run.started_ms),
            run.duration()
                .map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64())),
        ]);
    }
    out.push_str(&render_table(&rows));
    if let Some(r) = &s.replication {
        out.push_str(&format!(
            "\nreplication: source WAL position {}, lag {} (slowest database), slots hold {} of WAL in all\n",
            r.source_lsn,
            r.lag_bytes.map_or("?".to_string(), mib),
            r.retained_bytes
                .map_or("?".to_string(), |b| mib(b.max(0) as u64)),
        ));
        let mut rows = vec![vec![
            "DATABASE".to_string(),
            "SLOT".into(),
            "CONFIRMED".into(),
            "HOLDS".into(),
            "LAG".into(),
            "WORKER".into(),
            "APPLY ERRORS".into(),
            "SCHEMA".into(),
        ]];
        for st in &r.streams {
            rows.push(vec![
                st.database.clone(),
                match &st.slot {
                    Some(slot) => format!(
                        "{} ({}, {})",
                        slot.name,
                        if slot.active { "active" } else { "inactive" },
                        slot.wal_status.as_deref().unwrap_or("?")
                    ),
                    None => format!("{} MISSING", st.name),
                },
                st.slot
                    .as_ref()
                    .and_then(|s| s.confirmed_flush_lsn)
                    .map_or("?".to_string(), |l| l.to_string()),
                st.slot
                    .as_ref()
                    .and_then(|s| s.retained_bytes)
                    .map_or("?".to_string(), |b| mib(b.max(0) as u64)),
                st.lag_bytes.map_or("?".to_string(), |lag| {
                    format!(
                        "{}{}",
                        mib(lag),
                        st.lag_seconds
                            .map_or(String::new(), |s| format!(", {s:.1} s"))
                    )
                }),
                st.subscription.as_ref().map_or("-".to_string(), |sub| {
                    match (sub.enabled, sub.worker_pid) {
                        (_, Some(p)) => format!("pid {p}"),
                        (true, None) => "not running".to_string(),
                        (false, None) => "disabled".to_string(),
                    }
                }),
                st.subscription
                    .as_ref()
                    .map_or("-".to_string(), |sub| sub.apply_errors.to_string()),
                st.schema.as_ref().map_or("-".to_string(), |schema| {
                    if schema.drift.is_empty() {
                        "equal".to_string()
                    } else {
                        format!("DRIFT ({})", schema.drift.len())
                    }
                }),
            ]);
        }
        out.push_str(&render_table(&rows));
        for st in &r.streams {
            for d in st.schema.iter().flat_map(|schema| &schema.drift) {
                out.push_str(&format!(
                    "  {}/{}: {}\n    run on the target: {}\n",
                    st.database, d.table, d.detail, d.statement
                ));
            }
        }
        let copying: Vec<_> = r.streams.iter().flat_map(|st| &st.copy).collect();
        if !copying.is_empty() {
            let ready = copying.iter().filter(|t| t.ready()).count();
            out.push_str(&format!(
                "\ninitial copy: {ready} of {} table(s) ready\n",
                copying.len()
            ));
            let mut rows = vec![vec![
                "DATABASE".to_string(),
                "TABLE".into(),
                "STATE".into(),
                "ROWS".into(),
                "COPIED".into(),
                "SOURCE SIZE".into(),
            ]];
            for t in copying {
                rows.push(vec![
                    t.database.clone(),
                    t.table.clone(),
                    t.state.clone(),
                    t.rows.map_or("-".into(), |r| r.to_string()),
                    t.bytes.map_or("-".into(), |b| mib(b.max(0) as u64)),
                    t.source_bytes.map_or("?".into(), |b| mib(b.max(0) as u64)),
                ]);
            }
            out.push_str(&render_table(&rows));
        }
    }
    if let Some(v) = &s.last_validation {
        out.push_str(&format!(
            "\nlast validation: {} rows, {} mismatched ({})\n",
            v["rows"],
            v["mismatched_rows"],
            if v["clean"] == true {
                "clean"
            } else {
                "NOT clean"
            }
        ));
    }
    for w in &s.warnings {
        out.push_str(&format!("\nwarning: {w}"));
    }
    if !s.warnings.is_empty() {
        out.push('\n');
    }
    out
}

fn render(r: &PreflightReport, source: &str, target: &str, name: &str) -> String {
    let mut out = format!(
        "migration {name}: {source} ({} MiB, {} tables carried, PostgreSQL {}) -> encrypted instance {target}\n\nscope:\n",
        r.source_bytes >> 20,
        r.tables,
        r.server_version
    );
    let mut rows = vec![vec![
        "DATABASE".to_string(),
        "SIZE".into(),
        "TABLES".into(),
        "CARRIED".into(),
        "NOT CARRIED".into(),
    ]];
    for d in &r.databases {
        rows.push(vec![
            d.name.clone(),
            mib(d.bytes.max(0) as u64),
            if d.carried {
                d.tables.to_string()
            } else {
                "-".into()
            },
            if d.carried { "yes" } else { "no" }.to_string(),
            if d.carried {
                d.not_carried.join("; ")
            } else {
                "the whole database: an endpoint keeps it on the source; a hook or rename switch refuses unless --leave-stale".into()
            },
        ]);
    }
    out.push_str(&render_table(&rows));
    out.push_str(&format!(
        "\nstrategy: {} (PostgreSQL {} -> {}); recommended: {}\n",
        r.strategy, r.source_major, r.target_major, r.recommended
    ));
    for c in &r.strategies {
        out.push_str(&format!(
            "  {:<10} {:<12} {}\n",
            c.strategy.as_str(),
            if c.possible {
                "possible"
            } else {
                "not possible"
            },
            c.why
        ));
    }
    out.push('\n');
    for f in &r.findings {
        let label = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "  {label:<8} {}\n  {:<8} fix: {}\n",
            f.detail, "", f.fix
        ));
    }
    let blockers = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .count();
    out.push('\n');
    out.push_str(&if blockers == 0 {
        "Ready: nothing blocks the migration.\n".to_string()
    } else {
        format!("Not ready: {blockers} blocker(s). Fix them (nothing was changed) and run `pgseal migrate plan` again.\n")
    });
    out
}
