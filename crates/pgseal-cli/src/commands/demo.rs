//! `pgseal demo`: the whole story on local instances, under live writes. A plain source
//! with pgbench data and a plaintext marker, an endpoint in front of it, the ledger
//! workload writing through the endpoint the whole time; migrate onto an encrypted instance
//! under a new customer key, compare the pgbench tables, cut over, keep writing on the
//! target, verify the ledger, look for the marker in the target's storage, clean up.
//!
//! Without a passphrase (`PGSEAL_PASSPHRASE` / `--passphrase-file`) the demo runs in a
//! throwaway home with a random passphrase that only this process holds.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgseal_core::cutover::CutoverOptions;
use pgseal_core::migration::{cleanup, cutover};
use pgseal_core::{Engine, Journal, MigrationSpec, Surroundings};
use pgseal_crypto::{LocalKms, Passphrase};
use pgseal_exec::ExternalCommand;
use pgseal_local::instance::{InstanceSpec, LocalInstances};
use pgseal_local::platform::LocalPlatform;
use pgseal_workload::{Ledger, RunOptions, read_ledger};
use serde_json::json;

use super::switch::EndpointSwitch;
use super::{Context, Outcome, print_json};
use crate::exit;

/// `pgseal demo` options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// pgbench scale of the source.
    pub scale: u32,
    /// Seconds to keep writing on the target after cutover.
    pub duration: u64,
    /// Ledger transactions per second.
    pub rate: f64,
    /// Keep the instances, endpoint and key afterwards.
    pub keep: bool,
}

/// True when the bytes of `marker` occur in `path` (read in 8 MiB blocks).
fn file_contains(path: &Path, marker: &[u8]) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(false);
        }
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&block[..n]);
        if memchr::memmem::find(&window, marker).is_some() {
            return Ok(true);
        }
        let keep = marker.len().saturating_sub(1).min(window.len());
        carry = window[window.len() - keep..].to_vec();
    }
}

/// True when `marker` occurs in any file under `dir`.
fn tree_contains(dir: &Path, marker: &[u8]) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let found = if kind.is_dir() {
            tree_contains(&entry.path(), marker)?
        } else if kind.is_file() {
            file_contains(&entry.path(), marker)?
        } else {
            false
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs the demo.
pub fn run(ctx: &Context, options: &DemoOptions) -> Outcome {
    let given = Passphrase::from_file_or_env(ctx.passphrase_file.as_deref()).ok();
    if options.keep && given.is_none() {
        anyhow::bail!(pgseal_local::instance::LocalError::InvalidInput(
            "--keep needs PGSEAL_PASSPHRASE or --passphrase-file: without one the demo's key store is throwaway and the kept encrypted instance could never start again".into()
        ));
    }
    let throwaway;
    let (home, passphrase) = match given {
        Some(p) => (ctx.home.clone(), p),
        None => {
            std::fs::create_dir_all("/var/tmp")?;
            throwaway = tempfile::Builder::new()
                .prefix("pgseal-demo-")
                .tempdir_in("/var/tmp")?;
            let random = pgseal_crypto::DataKey::random(24);
            let text: String = random.expose().iter().map(|b| format!("{b:02x}")).collect();
            (throwaway.path().to_path_buf(), Passphrase::new(text))
        }
    };
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o711)).ok();
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 0x100000)
            .unwrap_or(0)
    );
    let names = Names {
        source: format!("demo-{suffix}"),
        target: format!("demo-{suffix}-enc"),
        endpoint: format!("demo-{suffix}-ep"),
        migration: format!("demo-{suffix}"),
        key_alias: format!("demo/customer-{suffix}"),
    };
    let instances = LocalInstances::open(&home)?;
    let kms =
        LocalKms::open(&home.join("kms"), &passphrase).context("cannot open the key store")?;
    let started = Instant::now();
    let result = story(ctx, &home, &instances, kms, &names, options);
    if !options.keep {
        ctx.status("cleaning up: endpoint, instances, key");
        let _ = instances.delete_endpoint(&names.endpoint);
        // The fenced source refuses connections; deleting it does not need any.
        for name in [&names.target, &names.source] {
            let _ = instances.delete(name);
        }
        if let Ok(kms) = LocalKms::open(&home.join("kms"), &passphrase) {
            let _ = kms.schedule_key_deletion(&names.key_alias, 7);
        }
    }
    let mut summary = result?;
    // The report is written where the user's home keeps it, even when the demo's own
    // home is a throwaway directory.
    let report = super::migrate::write_report(
        &Journal::open(&home)?,
        &home,
        &names.migration,
        Some(&super::migrate::default_report_path(
            &ctx.home,
            &names.migration,
        )),
    )?;
    summary["report"] = json!(report);
    summary["seconds"] = json!(started.elapsed().as_secs_f64());
    summary["kept"] = json!(options.keep);
    let failures = invariants(&summary);
    summary["invariants_failed"] = json!(failures);
    if ctx.json {
        print_json(&summary)?;
    } else {
        print!("{}", render(&summary));
        println!("{}", report.display());
    }
    Ok(exit::code(if failures.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    }))
}

struct Names {
    source: String,
    target: String,
    endpoint: String,
    migration: String,
    key_alias: String,
}

fn story(
    ctx: &Context,
    home: &Path,
    instances: &LocalInstances,
    kms: LocalKms,
    names: &Names,
    options: &DemoOptions,
) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // 1. The customer key and the plain source with pgbench data and a marker.
    let key = kms.create_key(Some(&names.key_alias), "pgseal demo customer key")?;
    ctx.status(format!(
        "[demo] customer key {} ({})",
        names.key_alias, key.key_id.0
    ));
    let storage = (1024u64 + u64::from(options.scale) * 64) << 20;
    let source = instances.create(
        &InstanceSpec {
            engine_version: None,
            name: names.source.clone(),
            port: None,
            storage_bytes: storage,
            encryption_key: None,
            params: [("wal_level".to_string(), "logical".to_string())].into(),
            master_password: None,
        },
        None,
    )?;
    ctx.status(format!(
        "[demo] plain source instance {} on port {}; pgbench -i -s {}",
        source.name, source.port, options.scale
    ));
    let install = pgseal_pg::PgInstall::discover()?;
    ExternalCommand::new(install.bindir.join("pgbench"))
        .args(["-i", "-q", "-s", &options.scale.to_string(), "-h"])
        .arg(&source.socket_dir)
        .args(["-p", &source.port.to_string(), "-U", "postgres", "postgres"])
        .run()
        .context("pgbench -i failed")?;
    let marker = format!("PGSEAL-PLAINTEXT-MARKER-{}", names.migration);
    let source_config = source.sql_config();
    runtime.block_on(async {
        let client = pgseal_pg::connect(&source_config).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE demo_marker (note text PRIMARY KEY); INSERT INTO demo_marker VALUES ('{marker}'); \
                 CREATE SEQUENCE demo_invoice_no START 1000; SELECT nextval('demo_invoice_no') FROM generate_series(1, 25); \
                 CHECKPOINT"
            ))
            .await?;
        anyhow::Ok(())
    })?;

    // 2. The endpoint, and the ledger workload through it for the whole story.
    let endpoint =
        instances.create_endpoint(&names.endpoint, &names.source, &Default::default())?;
    ctx.status(format!(
        "[demo] endpoint {} -> {}",
        names.endpoint, names.source
    ));
    let ledger_path = home.join(format!("{}.ledger", names.migration));
    let ledger = Arc::new(Ledger::open(&ledger_path)?);
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (config, ledger) = (endpoint.sql_config("postgres"), ledger.clone());
        let opts = RunOptions {
            rate: options.rate,
            duration: Duration::from_secs(24 * 3600),
            clients: 4,
            stop: stop.clone(),
        };
        runtime.spawn(async move { pgseal_workload::run(&config, ledger, &opts).await })
    };
    ctx.status(format!(
        "[demo] ledger workload: {} tx/s through the endpoint, ledger {}",
        options.rate,
        ledger_path.display()
    ));
    let outcome = (|| {
        // 3. Migrate onto encrypted storage under the customer key.
        let platform = LocalPlatform::new(instances.clone(), Some(kms));
        let journal = Journal::open(home)?;
        let spec = MigrationSpec {
            replica_identity_full: true,
            ..MigrationSpec::new(
                &names.migration,
                &names.source,
                &names.target,
                &names.key_alias,
                "postgres",
            )
        };
        journal.create(&spec)?;
        let observe = |e: &pgseal_core::Event| {
            if let pgseal_core::Event::Done {
                step,
                elapsed,
                summary,
            } = e
            {
                ctx.status(format!(
                    "[demo] migrate [{:>2}/10] {step} ({:.1} s): {summary}",
                    step.number(spec.strategy),
                    elapsed.as_secs_f64()
                ));
            }
        };
        runtime.block_on(async {
            Engine::new(
                &platform,
                &journal,
                &names.migration,
                Surroundings::default(),
                observe,
            )?
            .run()
            .await
        })?;
        // Watch the catch-up for a few seconds, as `migrate status --watch` would (each
        // reading is a sample for the report's plots).
        let mut status = None;
        for _ in 0..4 {
            let now = runtime.block_on(pgseal_core::status::status(
                &platform,
                &journal,
                &names.migration,
                None,
            ))?;
            let lag = now.replication.as_ref().and_then(|r| r.lag_bytes);
            ctx.status(format!(
                "[demo] replicating: {} KiB behind",
                lag.map_or("?".into(), |l| (l >> 10).to_string())
            ));
            status = Some(now);
            std::thread::sleep(Duration::from_millis(1100));
        }
        let handoff = status.and_then(|s| s.handoff).map(|h| h.lsn.to_string());

        // 4. Validate every published table while the workload writes.
        let validation = runtime.block_on(pgseal_core::migration::validate(
            &platform,
            &journal,
            &names.migration,
            None,
            pgseal_core::validate::COPY_WAIT,
            &|_: pgseal_core::validate::Progress<'_>| {},
        ))?;
        let (compared, mismatched) = (validation.rows, validation.mismatched_rows);
        ctx.status(format!(
            "[demo] validation under live writes: {compared} rows in {} tables compared in {:.1} s, {mismatched} mismatched",
            validation.tables.len(),
            validation.seconds
        ));

        // 5. Cut over through the endpoint; keep writing on the target.
        let switch = EndpointSwitch::new(
            instances.clone(),
            names.endpoint.clone(),
            names.source.clone(),
            names.target.clone(),
            "postgres".into(),
        );
        let report = runtime.block_on(cutover(
            &platform,
            &journal,
            &names.migration,
            &switch,
            &CutoverOptions {
                max_lag: 64 << 20,
                timeout: Duration::from_secs(60),
                dry_run: false,
                leave_stale: Vec::new(),
                without_password: Vec::new(),
            },
        ))?;
        ctx.status(format!(
            "[demo] cut over: write pause {} ms, {} sequence(s) set; writing on the target for {} s",
            report.write_pause_ms.unwrap_or(0),
            report.sequences.len(),
            options.duration
        ));
        std::thread::sleep(Duration::from_secs(options.duration));
        anyhow::Ok((platform, journal, handoff, compared, mismatched, report))
    })();
    stop.store(true, Ordering::Relaxed);
    let run = runtime.block_on(workload)??;
    let (platform, journal, handoff, compared, mismatched, report) = outcome?;

    // 6. Verify the ledger on the target, where every write now lands.
    let target_info = instances.describe(&names.target)?;
    let entries = read_ledger(&ledger_path)?;
    let verification =
        runtime.block_on(pgseal_workload::verify(&target_info.sql_config(), &entries))?;
    ctx.status(format!(
        "[demo] ledger: {} acknowledged, {} missing, {} duplicated, {} client errors",
        verification.acknowledged, verification.missing, verification.duplicated, run.client_errors
    ));

    // 7. Is the marker readable in the storage? Flushed first.
    runtime.block_on(async {
        let client = pgseal_pg::connect(&target_info.sql_config()).await?;
        client.batch_execute("CHECKPOINT").await?;
        anyhow::Ok(())
    })?;
    nix::unistd::sync();
    let image = target_info
        .volume_image
        .clone()
        .context("the target has no encrypted volume")?;
    let on_target = file_contains(&image, marker.as_bytes())?;
    let on_source = tree_contains(
        &instances.describe(&names.source)?.data_dir,
        marker.as_bytes(),
    )?;
    ctx.status(format!(
        "[demo] marker in the source's files: {on_source}; in the target's volume image: {on_target}"
    ));
    journal.add_fact(
        &names.migration,
        "encryption_check",
        &json!({
            "summary": format!(
                "plaintext scan after a CHECKPOINT: a marker row written on the source was {} in the source's data files and {} in the target's volume image {}",
                if on_source { "found" } else { "NOT found" },
                if on_target { "FOUND" } else { "not found" },
                image.display()
            ),
            "found_on_source": on_source,
            "found_on_target": on_target,
        }),
    )?;

    // 8. Clean up the replication objects (the instances go unless --keep).
    let cleaned = runtime.block_on(cleanup(&platform, &journal, &names.migration))?;
    journal.add_fact(
        &names.migration,
        "cleanup",
        &serde_json::to_value(&cleaned)?,
    )?;
    let source_info = instances.describe(&names.source)?;
    Ok(json!({
        "names": {
            "source": names.source, "target": names.target, "endpoint": names.endpoint,
            "migration": names.migration, "key_alias": names.key_alias,
        },
        "home": home,
        "scale": options.scale,
        "source": { "name": names.source, "encrypted": source_info.encrypted },
        "target": {
            "name": names.target, "encrypted": target_info.encrypted,
            "key_id": target_info.key_id, "volume_image": target_info.volume_image,
        },
        "handoff_lsn": handoff,
        "workload": {
            "acknowledged": verification.acknowledged,
            "uncertain": verification.uncertain,
            "missing": verification.missing,
            "duplicated": verification.duplicated,
            "unexpected": verification.unexpected,
            "client_errors": run.client_errors,
        },
        "cutover": {
            "write_pause_ms": report.write_pause_ms,
            "sequences_synced": report.sequences.len(),
            "fence_lsn": report.fence_lsn,
            "drained_lsn": report.drained_lsn,
            "switch": report.switch,
            "final_check": report.final_check,
        },
        "validation": {
            "method": "pgseal migrate validate: chunked row-hash comparison of every published table",
            "rows_compared": compared,
            "mismatched_rows": mismatched,
        },
        "plaintext_marker_found_on_source_storage": on_source,
        "plaintext_marker_found_on_target_storage": on_target,
        "cleanup_removed": cleaned.removed,
    }))
}

/// The invariants the demo proves; each failure is named.
fn invariants(s: &serde_json::Value) -> Vec<String> {
    let w = &s["workload"];
    let held = [
        (s["source"]["encrypted"] == false, "the source is plain"),
        (s["target"]["encrypted"] == true, "the target is encrypted"),
        (!s["target"]["key_id"].is_null(), "the target has a key id"),
        (!s["handoff_lsn"].is_null(), "a handoff LSN was recorded"),
        (
            w["acknowledged"].as_u64().unwrap_or(0) > 0,
            "the workload wrote",
        ),
        (w["missing"] == 0, "no acknowledged transaction missing"),
        (w["duplicated"] == 0, "no transaction applied twice"),
        (w["unexpected"] == 0, "no unexpected transaction"),
        (
            w["client_errors"] == 0,
            "no client error through the endpoint",
        ),
        (
            !s["cutover"]["write_pause_ms"].is_null(),
            "the write pause was measured",
        ),
        (
            s["validation"]["mismatched_rows"] == 0,
            "validation found no mismatch",
        ),
        (
            s["plaintext_marker_found_on_source_storage"] == true,
            "the marker is readable in the plain source's files (the scan works)",
        ),
        (
            s["plaintext_marker_found_on_target_storage"] == false,
            "the marker is not readable in the target's storage",
        ),
    ];
    held.into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what.to_string())
        .collect()
}

fn render(s: &serde_json::Value) -> String {
    let failed = s["invariants_failed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = format!(
        "\npgseal demo: {} (plain) -> {} (encrypted under {}, key {})\n",
        s["source"]["name"].as_str().unwrap_or("?"),
        s["target"]["name"].as_str().unwrap_or("?"),
        s["names"]["key_alias"].as_str().unwrap_or("?"),
        s["target"]["key_id"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "  handoff LSN            {}\n  ledger                 {} acknowledged, {} missing, {} duplicated, {} client errors\n  cutover write pause    {} ms ({} sequences set)\n  validation             {} rows compared, {} mismatched\n  plaintext marker       in the source's files: {}; in the target's storage: {}\n  total                  {:.0} s\n",
        s["handoff_lsn"].as_str().unwrap_or("?"),
        s["workload"]["acknowledged"],
        s["workload"]["missing"],
        s["workload"]["duplicated"],
        s["workload"]["client_errors"],
        s["cutover"]["write_pause_ms"],
        s["cutover"]["sequences_synced"],
        s["validation"]["rows_compared"],
        s["validation"]["mismatched_rows"],
        s["plaintext_marker_found_on_source_storage"],
        s["plaintext_marker_found_on_target_storage"],
        s["seconds"].as_f64().unwrap_or(0.0),
    ));
    if failed.is_empty() {
        out.push_str("  every invariant holds\n");
    } else {
        for f in failed {
            out.push_str(&format!("  FAILED: {}\n", f.as_str().unwrap_or("?")));
        }
    }
    if s["kept"] == true {
        out.push_str(&format!(
            "  kept: instances, endpoint and key under {}\n",
            s["home"].as_str().unwrap_or("?")
        ));
    }
    out
}
