//! `pgseal migrate ...`.

use std::path::Path;

use anyhow::Context as _;
use pgseal_core::preflight::{PreflightInput, PreflightReport, Severity, preflight};
use pgseal_crypto::keystore::DEFAULT_KEY_ALIAS;
use pgseal_crypto::{KeyState, Kms};
use pgseal_local::instance::LocalInstances;

use super::{Context, Outcome, print_json, url_config};
use crate::cli::MigrateCommand;
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
    let MigrateCommand::Plan {
        source,
        target,
        key,
        name,
        allow_restart,
        replica_identity_full,
        long_transaction_seconds,
    } = action;
    let is_url = source.starts_with("postgres://") || source.starts_with("postgresql://");
    let instances = LocalInstances::open(&ctx.home)?;
    let (config, managed) = if is_url {
        (url_config(source, "--source")?, None)
    } else {
        (
            instances.describe(source)?.sql_config(),
            Some(source.clone()),
        )
    };
    let target = target
        .clone()
        .or_else(|| managed.as_ref().map(|s| format!("{s}-enc")));
    let target_problem = match &target {
        Some(t) if instances.describe(t).is_ok() => Some(format!("instance {t} already exists")),
        Some(_) => None,
        None => Some("name the encrypted instance to create with --target".to_string()),
    };
    let input = PreflightInput {
        migration: name.clone(),
        managed_source: managed,
        allow_restart: *allow_restart,
        replica_identity_full: *replica_identity_full,
        long_transaction_seconds: *long_transaction_seconds,
        free_bytes: free_bytes(&ctx.home),
        key_problem: key_problem(ctx, key),
        target_problem,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let client = pgseal_pg::connect(&config).await?;
        anyhow::Ok(
            preflight(&client, &input)
                .await
                .context("preflight query failed")?,
        )
    })?;
    if ctx.json {
        print_json(&report)?;
    } else {
        print!(
            "{}",
            render(&report, source, target.as_deref().unwrap_or("?"), name)
        );
    }
    Ok(exit::code(if report.ready() {
        exit::OK
    } else {
        exit::PRECONDITION
    }))
}

fn render(r: &PreflightReport, source: &str, target: &str, name: &str) -> String {
    let mut out = format!(
        "migration {name}: {source} ({} MiB, {} tables, PostgreSQL {}) -> encrypted instance {target}\n\n",
        r.source_bytes >> 20,
        r.tables,
        r.server_version
    );
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
