//! `pgseal migrate ...`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use pgseal_core::preflight::{PreflightInput, TargetVersion, preflight};
use pgseal_core::strategy::Strategy as _;
use pgseal_crypto::keystore::DEFAULT_KEY_ALIAS;
use pgseal_crypto::{KeyState, Kms};
use pgseal_local::instance::LocalInstances;

use pgseal_core::cutover::{CutoverOptions, Recovered};
use pgseal_core::status::Retention;
use pgseal_core::{Engine, EngineError, Event, Journal, MigrationSpec, Phase, Surroundings};
use pgseal_local::instance::LocalError;

use super::platform::{AnyPlatform, aws_id, for_spec, is_aws_source};
use super::progress::MigrateObserver;
use super::switch::{EndpointSwitch, HookSwitch, resume_endpoint};
use super::{Context, Outcome, print_json, url_config};
use crate::cli::{MigrateCommand, MigrationArgs, Named};
use crate::exit;
use crate::output;

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
            no_follow,
        } => start(
            ctx,
            args,
            tables.clone(),
            *target_port,
            *max_slot_retention,
            !no_follow,
        ),
        MigrateCommand::Resume { name, no_follow } => resume(ctx, name, !no_follow),
        MigrateCommand::Follow {
            name,
            interval,
            serve,
            detach: true,
            ..
        } => super::follow::detach(ctx, name, *interval, serve.as_deref()),
        MigrateCommand::Follow {
            name,
            interval,
            once,
            serve,
            detach: false,
        } => super::follow::run(ctx, name, *interval, *once, serve.as_deref()),
        MigrateCommand::Abort(Named { name }) => abort(ctx, name),
        MigrateCommand::Status {
            serve: Some(addr),
            name,
            ..
        } => {
            let server = super::metrics_server(addr)?;
            super::answer_metrics(
                &server,
                super::migration_reports(ctx.journal.clone(), name.clone()),
            );
            Ok(exit::code(exit::OK))
        }
        MigrateCommand::Status {
            name,
            watch,
            interval,
            max_slot_retention,
            serve: None,
        } => status(ctx, name, *watch, *interval, *max_slot_retention),
        MigrateCommand::List => list(ctx),
        MigrateCommand::Report { name, output } => report(ctx, name, output.as_deref()),
        MigrateCommand::Validate {
            name,
            tables,
            wait_for_copies,
        } => validate(
            ctx,
            name,
            tables.as_deref(),
            std::time::Duration::from_secs(*wait_for_copies),
        ),
        MigrateCommand::Verify(Named { name }) => verify(ctx, name),
        MigrateCommand::Ddl {
            name,
            skip,
            apply,
            database,
        } => ddl(ctx, name, *skip, *apply, database.as_deref()),
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
            without_password,
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
                without_password: without_password.clone(),
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
    let support;
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
            support = target_versions(&runtime, &platform, &spec.source, spec.engine_version);
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
            support = TargetSupport {
                installed: Some(installed_versions(instances.installs())),
                full_load_unsupported: None,
                blue_green_unsupported: Some(LOCAL_HAS_NO_BLUE_GREEN.into()),
                blue_green_plan: None,
            };
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
            installed: support.installed,
            full_load_unsupported: support.full_load_unsupported,
            blue_green_unsupported: support.blue_green_unsupported,
            blue_green_plan: support.blue_green_plan,
        },
    };
    let report = runtime.block_on(async {
        let client = pgseal_pg::connect_pinned(&config).await?;
        let connect = async |db: &str| {
            let mut config = config.clone();
            config.dbname(db);
            pgseal_pg::connect_pinned(&config)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        anyhow::Ok(
            preflight(&client, connect, &input)
                .await
                .context("preflight query failed")?,
        )
    })?;
    ctx.print(&report, || {
        output::migrate::plan(
            &report,
            &args.source,
            target.as_deref().unwrap_or("?"),
            &args.name,
        )
    })?;
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
        copy_jobs: args.jobs,
        split_tables_larger_than: args.split_tables_larger_than,
        platform,
    })
}

/// What the target's platform can run, for preflight: the local platform's installed
/// major versions with their extensions (AWS decides for itself and runs no full load),
/// why it cannot run the full-load strategy, and whether and how it would make a
/// blue/green deployment of `source` with green on `engine_version`.
fn target_versions(
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    source: &str,
    engine_version: Option<u32>,
) -> TargetSupport {
    let _ = (runtime, source, engine_version);
    match platform {
        AnyPlatform::Local(local) => TargetSupport {
            installed: Some(installed_versions(local.instances().installs())),
            full_load_unsupported: None,
            blue_green_unsupported: Some(LOCAL_HAS_NO_BLUE_GREEN.into()),
            blue_green_plan: None,
        },
        #[cfg(feature = "aws")]
        AnyPlatform::Aws(aws) => {
            // AWS's documented limits, read from the account, then its replication method
            // for this source and version.
            let plan = runtime.block_on(aws.plan_deployment(source, engine_version));
            let blue_green_unsupported = match runtime.block_on(aws.blue_green_blockers(source)) {
                Ok(found) if found.is_empty() => plan.as_ref().err().map(|e| e.to_string()),
                Ok(found) => Some(format!(
                    "AWS blue/green deployments do not support {}",
                    found.join("; ")
                )),
                Err(e) => Some(format!(
                    "the account's blue/green limits could not be read: {e}"
                )),
            };
            TargetSupport {
                installed: None,
                full_load_unsupported: Some("the full-load strategy runs on the local platform only: pgseal does not create empty RDS instances".into()),
                blue_green_unsupported,
                blue_green_plan: plan.ok(),
            }
        }
    }
}

/// Why `--strategy blue-green` is refused for a source that is not on AWS.
const LOCAL_HAS_NO_BLUE_GREEN: &str = "blue/green deployments are RDS and Aurora's own (sources rds:ID or aurora:ID); the local platform has none";

/// What a platform can run, as preflight is told.
struct TargetSupport {
    installed: Option<BTreeMap<u32, BTreeSet<String>>>,
    full_load_unsupported: Option<String>,
    blue_green_unsupported: Option<String>,
    blue_green_plan: Option<pgseal_platform::BlueGreenPlan>,
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
    spec: &MigrationSpec,
) -> Surroundings {
    let support = target_versions(runtime, platform, &spec.source, spec.engine_version);
    let key = &spec.key;
    Surroundings {
        free_bytes: matches!(platform, AnyPlatform::Local(_))
            .then(|| free_bytes(&ctx.home))
            .flatten(),
        key_problem: key_problem_on(ctx, runtime, platform, key),
        installed: support.installed,
        full_load_unsupported: support.full_load_unsupported,
        blue_green_unsupported: support.blue_green_unsupported,
        blue_green_plan: support.blue_green_plan,
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
    follow: bool,
) -> Outcome {
    let spec = spec_from_args(ctx, args, tables, target_port, max_slot_retention)?;
    let journal = ctx.journal()?;
    let _lock = journal.hold(&spec.name)?;
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
    let surroundings = surroundings(ctx, &runtime, &platform, &spec);
    journal.create(&spec)?;
    ctx.status(format!(
        "migration {}: {} -> encrypted instance {} under {} (journal {})",
        spec.name,
        spec.source,
        spec.target,
        spec.key,
        journal.location()
    ));
    let result = drive(
        ctx,
        &runtime,
        &platform,
        &journal,
        &spec.name,
        surroundings,
        follow,
    );
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

fn resume(ctx: &Context, name: &str, follow: bool) -> Outcome {
    let journal = ctx.journal()?;
    let _lock = journal.hold(name)?;
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
    if let Some(next) = nothing_to_resume(name, record.phase) {
        if ctx.json {
            print_json(&serde_json::json!({
                "migration": name,
                "phase": record.phase.as_str(),
                "resumed": false,
                "next": next,
            }))?;
        } else {
            println!(
                "migration {name} is {}: there is nothing to resume; {next}",
                record.phase.as_str()
            );
        }
        // An aborted migration cannot be taken up again: a refusal, as before.
        let refused = matches!(record.phase, Phase::Aborted | Phase::Aborting);
        return Ok(exit::code(if refused {
            exit::PRECONDITION
        } else {
            exit::OK
        }));
    }
    let runtime = runtime()?;
    let platform = for_spec(ctx, &runtime, Some(&journal), &record.spec, true)?;
    let surroundings = surroundings(ctx, &runtime, &platform, &record.spec);
    ctx.status(format!(
        "resuming migration {name} (phase {})",
        record.phase.as_str()
    ));
    drive(
        ctx,
        &runtime,
        &platform,
        &journal,
        name,
        surroundings,
        follow,
    )
}

/// What to do instead when `resume` has nothing to resume in `phase` (the phases after
/// replication, whose interrupted commands `resume` has already been given the chance to
/// recover); `None` when it has something to do.
fn nothing_to_resume(name: &str, phase: Phase) -> Option<String> {
    match phase {
        Phase::CutOver => Some(format!(
            "applications use the target; `pgseal migrate cleanup {name}` removes the replication, `pgseal migrate rollback {name}` switches back"
        )),
        Phase::RolledBack => Some(format!(
            "the source serves again; `pgseal migrate cleanup {name}` removes what the migration left, the abandoned target included"
        )),
        Phase::CleanedUp => Some("it is finished".to_string()),
        Phase::Aborted => {
            Some("it was aborted; `pgseal migrate start` begins a new one".to_string())
        }
        Phase::Aborting => Some(format!(
            "an abort was interrupted; `pgseal migrate abort {name}` finishes it"
        )),
        Phase::Running | Phase::Failed | Phase::Replicating | Phase::CuttingOver => None,
    }
}

/// Runs the engine and reports how it ended.
fn drive(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    journal: &Journal,
    name: &str,
    surroundings: Surroundings,
    follow: bool,
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
    // Something must keep the migration moving once this command returns.
    let follower = if follow
        && pgseal_core::follow::follows(journal.migration(name)?.phase)
        && journal
            .migration(name)?
            .spec
            .strategy
            .follower_idle()
            .is_none()
    {
        super::follow::spawn(ctx, name, &[])?
    } else {
        None
    };
    let report = runtime.block_on(pgseal_core::status::status(platform, journal, name, None))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        if let Some(pid) = follower {
            println!(
                "a follower (pid {pid}) keeps it moving: new tables, large objects, roles (log: {})",
                pgseal_core::follow::log_path(&ctx.home, name).display()
            );
        }
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
    let s = Switching::open(ctx, name, endpoint, on_switch, Direction::ToTarget)?;
    if !options.dry_run {
        revalidate_after_ddl(ctx, &s.runtime, &s.platform, &s.journal, name)?;
    }
    let report = s.runtime.block_on(pgseal_core::migration::cutover(
        &s.platform,
        &s.journal,
        name,
        &s.switch,
        options,
    ))?;
    print_cutover(ctx, name, &s.spec, &report)
}

/// A migration opened by a command that moves its applications (cutover, rollback):
/// locked, its journal, spec and platform, and the switch chosen for `direction`.
struct Switching {
    _lock: pgseal_core::journal::Hold,
    journal: Journal,
    spec: MigrationSpec,
    runtime: tokio::runtime::Runtime,
    platform: AnyPlatform,
    switch: super::switch::ChosenSwitch,
}

impl Switching {
    fn open(
        ctx: &Context,
        name: &str,
        endpoint: Option<&str>,
        on_switch: Option<String>,
        direction: Direction,
    ) -> anyhow::Result<Switching> {
        let journal = ctx.journal()?;
        let lock = journal.hold(name)?;
        let spec = journal.migration(name)?.spec;
        let instances = LocalInstances::open(&ctx.home)?;
        let runtime = runtime()?;
        let platform = platform(ctx, &runtime, &journal, name, false)?;
        let switch = choose_switch(
            ctx, &platform, &instances, &spec, endpoint, on_switch, direction,
        )?;
        Ok(Switching {
            _lock: lock,
            journal,
            spec,
            runtime,
            platform,
            switch,
        })
    }
}

/// Which way a switch moves applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// At cutover: from the source to the target.
    ToTarget,
    /// At rollback: from the target back to the source.
    BackToSource,
}

/// Chooses, once, how applications are moved at a cutover or a rollback: on AWS the
/// instances are renamed; locally, the endpoint named by `--endpoint`, else a hook
/// (`--on-switch`) or the new URL printed when one is given or the source is a URL, else
/// the endpoint in front of the side applications leave (one only, at cutover).
fn choose_switch(
    ctx: &Context,
    platform: &AnyPlatform,
    instances: &LocalInstances,
    spec: &MigrationSpec,
    endpoint: Option<&str>,
    on_switch: Option<String>,
    direction: Direction,
) -> anyhow::Result<super::switch::ChosenSwitch> {
    use super::switch::ChosenSwitch;
    #[cfg(feature = "aws")]
    if let AnyPlatform::Aws(aws) = platform {
        let back = direction == Direction::BackToSource;
        return Ok(ChosenSwitch::Rename(rename_switch(
            ctx,
            aws,
            spec,
            endpoint,
            on_switch.as_deref(),
            back,
        )?));
    }
    let _ = (ctx, platform);
    let (from, to) = match direction {
        Direction::ToTarget => (&spec.source, &spec.target),
        Direction::BackToSource => (&spec.target, &spec.source),
    };
    let endpoint = match (endpoint, &on_switch, direction, spec.source_url()) {
        (Some(e), ..) => Some(e.to_string()),
        (None, Some(_), ..) => None,
        (None, None, Direction::ToTarget, Some(_)) => None,
        (None, None, Direction::ToTarget, None) => {
            let found = endpoints_of(instances, from)?;
            if found.len() > 1 {
                anyhow::bail!(LocalError::InvalidInput(format!(
                    "several endpoints are in front of {from}: {}; choose one with --endpoint",
                    found.join(", ")
                )));
            }
            found.into_iter().next()
        }
        (None, None, Direction::BackToSource, _) => {
            endpoints_of(instances, from)?.into_iter().next()
        }
    };
    Ok(match (endpoint, direction, spec.source_url()) {
        // Back to a source reached by URL: a hook (or the URL printed).
        (_, Direction::BackToSource, Some(url)) => ChosenSwitch::Hook(HookSwitch {
            command: on_switch,
            migration: spec.name.clone(),
            target: url.to_string(),
            new_url: url.to_string(),
            target_config: url_config(url, "the source URL")?,
        }),
        (Some(endpoint), ..) => ChosenSwitch::Endpoint(EndpointSwitch::new(
            instances.clone(),
            endpoint,
            from.clone(),
            to.clone(),
            spec.database.clone(),
        )),
        (None, ..) => ChosenSwitch::Hook(HookSwitch::to_instance(
            instances,
            to,
            &spec.database,
            on_switch,
            &spec.name,
        )?),
    })
}

/// Prints what cutover did (or would refuse); exit 3 for a refused dry run.
fn print_cutover(
    ctx: &Context,
    name: &str,
    spec: &MigrationSpec,
    report: &pgseal_core::cutover::CutoverReport,
) -> Outcome {
    ctx.print(&report, || output::migrate::cutover(name, spec, report))?;
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
        journal: ctx.journal.clone(),
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
        runtime.block_on(pgseal_core::migration::recover_interrupted(
            &platform, journal, name,
        ))?
    };
    #[cfg(feature = "aws")]
    if let AnyPlatform::Aws(aws) = &platform
        && matches!(outcome, Recovered::CutOver | Recovered::RolledBack)
        // A blue/green switchover moved the names itself.
        && !spec.strategy.switch_moves_names()
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
        let info = instances.endpoint(&e)?;
        runtime
            .block_on(resume_endpoint(&info))
            .map_err(|err| anyhow::anyhow!("resuming endpoint {e}: {err}"))?;
        // Nothing is said done before a write through the endpoint proves it. A cutover
        // whose switch does not take stays interrupted, so that `resume` tries it again.
        if let Err(err) = runtime.block_on(super::switch::probe_endpoint(&info, &spec.database)) {
            let why = format!(
                "a write through endpoint {e} to {} failed after resume finished the switch: {err}",
                spec.database
            );
            if outcome == Recovered::CutOver {
                journal.set_phase(name, Phase::CuttingOver, Some(&why))?;
            }
            anyhow::bail!(
                "{why}. Applications cannot write through it; `pgseal endpoint describe {e}` shows where it points. \
                 Fix the cause, then {}",
                if outcome == Recovered::CutOver {
                    format!("`pgseal migrate resume {name}` again")
                } else {
                    format!("`pgseal endpoint check {e}`")
                }
            );
        }
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
/// Where a migration's report goes without `--output`.
pub fn default_report_path(home: &Path, name: &str) -> std::path::PathBuf {
    home.join("migrations").join(name).join("report.html")
}

/// Writes the report page of migration `name` in `journal`, whose home is `home`, and
/// returns the path written.
pub fn write_report(
    journal: &Journal,
    home: &Path,
    name: &str,
    output: Option<&Path>,
) -> anyhow::Result<std::path::PathBuf> {
    write_report_of(
        home,
        name,
        &pgseal_core::report::gather(journal, name)?,
        output,
    )
}

/// Writes the page of `report`, migration `name`'s report already gathered, and returns
/// the path written.
pub fn write_report_of(
    home: &Path,
    name: &str,
    report: &pgseal_core::report::MigrationReport,
    output: Option<&Path>,
) -> anyhow::Result<std::path::PathBuf> {
    let page = pgseal_report::render(report)?;
    let path = output.map_or_else(|| default_report_path(home, name), Path::to_path_buf);
    write_page(home, &path, &page)?;
    Ok(path)
}

/// Writes a report page at `path`, its folder made when missing (the owner's only under
/// PGSEAL_HOME), atomically.
pub fn write_page(home: &Path, path: &Path, page: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.starts_with(home) {
            // Under PGSEAL_HOME everything is the owner's only.
            pgseal_crashsafe::create_dir_all_durable(dir, 0o700)
        } else {
            std::fs::create_dir_all(dir)
        }
        .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    pgseal_crashsafe::write_atomic(path, page.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn report(ctx: &Context, name: &str, output: Option<&Path>) -> Outcome {
    let journal = ctx.journal()?;
    if ctx.json {
        print_json(&pgseal_core::report::gather(&journal, name)?)?;
        return Ok(exit::code(exit::OK));
    }
    let path = write_report(&journal, &ctx.home, name, output)?;
    println!("{}", path.display());
    Ok(exit::code(exit::OK))
}

/// `migrate ddl`: lists the captured statements, or records a decision on one.
fn ddl(
    ctx: &Context,
    name: &str,
    skip: Option<i64>,
    apply: Option<i64>,
    database: Option<&str>,
) -> Outcome {
    let journal = ctx.journal()?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    let decision = match (skip, apply) {
        (Some(id), _) => Some((id, "skip")),
        (_, Some(id)) => Some((id, "applied")),
        _ => None,
    };
    let Some((id, decision)) = decision else {
        let entries = runtime.block_on(pgseal_core::ddl::list(&platform, &journal, name))?;
        ctx.print(&entries, || output::migrate::ddl(name, &entries))?;
        return Ok(exit::code(exit::OK));
    };
    let _lock = journal.hold(name)?;
    let database = match database {
        Some(d) => d.to_string(),
        None => {
            let streams = journal.streams(name)?;
            match streams.as_slice() {
                [only] => only.database.clone(),
                _ => anyhow::bail!(LocalError::InvalidInput(format!(
                    "migration {name} moves {} databases: name the statement's with --database",
                    streams.len()
                ))),
            }
        }
    };
    let entry = runtime.block_on(pgseal_core::ddl::decide(
        &platform, &journal, name, &database, id, decision,
    ))?;
    ctx.print(&entry, || {
        output::migrate::ddl(name, std::slice::from_ref(&entry))
    })?;
    Ok(exit::code(exit::OK))
}

fn validate(
    ctx: &Context,
    name: &str,
    tables: Option<&[String]>,
    copy_wait: std::time::Duration,
) -> Outcome {
    let journal = ctx.journal()?;
    let _held = journal.hold_if_shared(name)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    let report = run_validation(ctx, &runtime, &platform, &journal, name, tables, copy_wait)?;
    ctx.print(&report, || output::migrate::validation(name, &report))?;
    Ok(exit::code(if report.clean {
        exit::OK
    } else {
        exit::VERIFY_FAILED
    }))
}

fn verify(ctx: &Context, name: &str) -> Outcome {
    let journal = ctx.journal()?;
    let _held = journal.hold_if_shared(name)?;
    let runtime = runtime()?;
    let platform = platform(ctx, &runtime, &journal, name, false)?;
    let progress = |db: &str| ctx.status(format!("verifying {db}"));
    let report = runtime.block_on(pgseal_core::migration::verify(
        &platform, &journal, name, &progress,
    ))?;
    ctx.print(&report, || output::migrate::verification(name, &report))?;
    Ok(exit::code(if report.clean {
        exit::OK
    } else {
        exit::VERIFY_FAILED
    }))
}

/// Validates `tables` (or every published table) of migration `name`, with a progress bar
/// per table on a terminal and a line per table done.
fn run_validation(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    journal: &Journal,
    name: &str,
    tables: Option<&[String]>,
    copy_wait: std::time::Duration,
) -> anyhow::Result<pgseal_core::validate::ValidationReport> {
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
            ctx.status(output::migrate::validated_table(t));
        }
        Progress::Copying { table, waited } => {
            if waited % 10 == 0 {
                ctx.status(format!(
                    "{table}: still being copied by the subscription, waiting ({waited} s of 60)"
                ));
            }
        }
        Progress::Table { .. } => {}
    };
    Ok(runtime.block_on(pgseal_core::migration::validate(
        platform, journal, name, tables, copy_wait, &progress,
    ))?)
}

/// Before a cutover: the tables DDL changed since the last validation are compared again
/// (DDL rewrites rows no change log sees), so that the cutover's own check finds them
/// vouched for. Nothing when there was no validation or no DDL since.
fn revalidate_after_ddl(
    ctx: &Context,
    runtime: &tokio::runtime::Runtime,
    platform: &AnyPlatform,
    journal: &Journal,
    name: &str,
) -> anyhow::Result<()> {
    let record = journal.migration(name)?;
    let last = journal.outputs(name, pgseal_core::steps::Step::Validate)?;
    let (Some(last), Phase::Replicating) = (last, record.phase) else {
        return Ok(());
    };
    if !record.spec.strategy.replays_ddl() {
        return Ok(());
    }
    let since = runtime.block_on(pgseal_core::ddl::since_validation(
        platform, journal, name, &last,
    ))?;
    if since.is_empty() {
        return Ok(());
    }
    let tables: Vec<String> = since
        .iter()
        .flat_map(pgseal_core::ddl::DdlSinceValidation::qualified_tables)
        .collect();
    ctx.status(output::migrate::revalidating(&since));
    let report = run_validation(
        ctx,
        runtime,
        platform,
        journal,
        name,
        Some(&tables),
        pgseal_core::validate::COPY_WAIT,
    )?;
    ctx.status(format!(
        "compared again: {} table(s), {} row(s), {} mismatched",
        report.tables.len(),
        report.rows,
        report.mismatched_rows
    ));
    Ok(())
}

fn rollback(
    ctx: &Context,
    name: &str,
    endpoint: Option<&str>,
    on_switch: Option<String>,
    timeout: std::time::Duration,
) -> Outcome {
    let s = Switching::open(ctx, name, endpoint, on_switch, Direction::BackToSource)?;
    let report = s.runtime.block_on(pgseal_core::migration::rollback(
        &s.platform,
        &s.journal,
        name,
        &s.switch,
        timeout,
    ))?;
    print_rollback(ctx, name, &s.spec, &report)
}

/// Prints what rollback did.
fn print_rollback(
    ctx: &Context,
    name: &str,
    spec: &MigrationSpec,
    report: &pgseal_core::cutover::RollbackReport,
) -> Outcome {
    ctx.print(&report, || output::migrate::rollback(name, spec, report))?;
    Ok(exit::code(exit::OK))
}

fn cleanup(ctx: &Context, name: &str, retire: bool, delete: bool) -> Outcome {
    let journal = ctx.journal()?;
    let _lock = journal.hold(name)?;
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
            runtime.block_on(pgseal_core::migration::cleanup(&platform, &journal, name))?;
        cleanup_local_source(ctx, &spec, retire, delete, &mut report)?;
        journal.add_fact(name, "cleanup", &serde_json::to_value(&report)?)?;
        return print_cleanup(ctx, name, &spec, &report);
    }
    let mut report =
        runtime.block_on(pgseal_core::migration::cleanup(&platform, &journal, name))?;
    // A platform that switched over renamed the old source (blue/green's old blue);
    // `spec.source`'s name is the new one's now.
    if let Some(old) = pgseal_core::migration::old_source(&journal, name)? {
        #[cfg(feature = "aws")]
        if retire && let AnyPlatform::Aws(aws) = &platform {
            runtime.block_on(aws.stop_instance(&old))?;
            report.removed.push(format!(
                "(stopped) {old} (the old blue; AWS starts it again after 7 days unless deleted)"
            ));
        }
        if delete {
            use pgseal_platform::Platform as _;
            runtime.block_on(platform.delete_instance(&old))?;
            report
                .removed
                .push(format!("instance {old} (the old blue)"));
        }
        journal.add_fact(name, "cleanup", &serde_json::to_value(&report)?)?;
        return print_cleanup(ctx, name, &spec, &report);
    }
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
    journal.add_fact(name, "cleanup", &serde_json::to_value(&report)?)?;
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
    ctx.print(&report, || output::migrate::cleanup(name, spec, report))?;
    Ok(exit::code(exit::OK))
}

fn abort(ctx: &Context, name: &str) -> Outcome {
    let journal = ctx.journal()?;
    let _lock = journal.hold(name)?;
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
        for line in &report.left_on_source {
            println!("left on the source: {}", output::terminal_safe(line));
        }
        println!("migration {name} aborted; the source keeps serving as before");
    }
    Ok(exit::code(exit::OK))
}

fn list(ctx: &Context) -> Outcome {
    let journal = ctx.journal()?;
    let migrations = journal.list()?;
    if ctx.json {
        return print_json(&migrations).map(|()| exit::code(exit::OK));
    }
    print!(
        "{}",
        output::terminal_safe(&output::migrate::list(&migrations))
    );
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
    let journal = ctx.journal()?;
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
        super::show_frame(ctx, redraw, &report, || output::migrate::status(&report))?;
        if report.retention == Retention::Exceeded && report.migration.phase != Phase::Aborted {
            let _lock = journal.hold(name)?;
            super::follow::abort_protecting_source(
                &runtime,
                &platform,
                &journal,
                name,
                report
                    .retention_why
                    .as_deref()
                    .unwrap_or("the slot holds more WAL than --max-slot-retention allows"),
            )?;
            return Ok(exit::code(exit::PRECONDITION));
        }
        if !watch {
            return Ok(exit::code(exit::OK));
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval.max(0.2)));
    }
}
