//! The `pgseal` binary: parses the command line, sets up logging and dispatches to a
//! command. All logic lives in the library crates.
// The AWS SDK futures nest deeply inside the migrate commands' async blocks.
#![recursion_limit = "256"]

mod cli;
mod commands;
mod exit;
mod home;
mod output;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version come here too, and are not errors.
            let _ = error.print();
            return exit::code(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging(&cli.global);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // The whole chain: the outer context says what failed, the inner causes say why.
            // Names from the databases may be in it: no control character reaches the
            // terminal raw.
            // (Each cause once: an error that shows its cause is not followed by it again.)
            let chain = pgseal_core::error::error_chain(
                AsRef::<dyn std::error::Error + Send + Sync>::as_ref(&error),
            );
            eprintln!("error: {}", output::terminal_safe(&chain));
            exit::code(exit::for_error(&error))
        }
    }
}

/// What a lost lease does: this process stops at once, as a crash would, so that no
/// further step, and no clean-up path either, acts on a migration another runner may now
/// drive. Its children (`pg_dump`, `pg_restore`, PgBouncer reloads) die with it.
fn lease_lost(migration: &str) {
    let error = pgseal_core::JournalError::LeaseLost(migration.to_string());
    tracing::error!(%migration, "lease lost; stopping");
    eprintln!("error: {}", output::terminal_safe(&error.to_string()));
    std::process::exit(i32::from(exit::LEASE_LOST));
}

fn run(cli: Cli) -> commands::Outcome {
    let home = home::resolve(cli.global.home.clone())?;
    let journal = pgseal_core::JournalConfig {
        location: pgseal_core::journal::Location::parse(cli.global.journal.as_deref(), &home)?,
        home: home.clone(),
        runner: pgseal_core::journal::Runner::here(cli.global.runner.clone()),
        terms: pgseal_core::journal::LeaseTerms {
            ttl: std::time::Duration::from_secs(cli.global.lease_seconds),
            on_lost: std::sync::Arc::new(lease_lost),
        },
    };
    let ctx = commands::Context {
        home,
        json: cli.global.json,
        quiet: cli.global.quiet,
        passphrase_file: cli.global.passphrase_file.clone(),
        journal,
    };
    tracing::debug!(home = %ctx.home.display(), json = ctx.json, "starting");
    match cli.command {
        Command::Doctor => commands::doctor::run(&ctx),
        Command::Key { action } => commands::key::run(&ctx, &action),
        Command::Instance { action } => commands::instance::run(&ctx, &action),
        Command::Endpoint { action } => commands::endpoint::run(&ctx, &action),
        Command::Demo {
            scale,
            duration,
            rate,
            keep,
        } => commands::demo::run(
            &ctx,
            &commands::demo::DemoOptions {
                scale,
                duration,
                rate,
                keep,
            },
        ),
        Command::Snapshot { action } => commands::snapshot::run(&ctx, &action),
        Command::Workload { action } => commands::workload::run(&ctx, &action),
        Command::Migrate { action } => commands::migrate::run(&ctx, &action),
        Command::Fleet { action } => commands::fleet::run(&ctx, &action),
        Command::Journal { action } => commands::journal::run(&ctx, &action),
        Command::Seal(args) => commands::seal::seal(&ctx, &args),
        Command::Unseal(args) => commands::seal::unseal(&ctx, &args),
    }
}

/// Logs go to stderr so stdout stays clean for results and `--json`. `PGSEAL_LOG` (an
/// `EnvFilter` directive such as `pgseal_local=debug`) overrides -v/-q.
fn init_logging(global: &cli::GlobalArgs) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("PGSEAL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
