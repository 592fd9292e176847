//! `pgseal snapshot ...`.

use std::sync::Mutex;

use indicatif::ProgressBar;
use pgseal_local::instance::{DEFAULT_STORAGE_BYTES, InstanceSpec, LocalInstances};
use pgseal_local::snapshot::{SnapshotFrom, SnapshotRecord, SnapshotSource};

use super::{Context, Outcome, as_dyn, chosen_key, print_json};
use crate::cli::{Named, SnapshotCommand};
use crate::exit;

/// Shows byte progress: a bar on a terminal, a log line every 5 seconds otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    last_line: Mutex<std::time::Instant>,
    verb: &'static str,
    quiet: bool,
}

impl Reporter {
    fn new(ctx: &Context, verb: &'static str) -> Self {
        let bar = super::byte_bar(ctx, verb, 0);
        Reporter {
            bar,
            last_line: Mutex::new(std::time::Instant::now()),
            verb,
            quiet: ctx.quiet || ctx.json,
        }
    }

    fn report(&self, done: u64, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(t) = total {
                bar.set_length(t.max(done));
            }
            bar.set_position(done);
        } else if !self.quiet {
            let mut last = self.last_line.lock().expect("not poisoned");
            if last.elapsed().as_secs() >= 5 {
                *last = std::time::Instant::now();
                tracing::info!(verb = self.verb, bytes = done, total = ?total, "progress");
            }
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Runs `work` with progress shown as `verb`, and returns what it returned.
    fn around<T>(
        ctx: &Context,
        verb: &'static str,
        work: impl FnOnce(&(dyn Fn(u64, Option<u64>) + Sync)) -> T,
    ) -> T {
        let reporter = Reporter::new(ctx, verb);
        let result = work(&|d, t| reporter.report(d, t));
        reporter.done();
        result
    }
}

/// Runs one snapshot command.
pub fn run(ctx: &Context, action: &SnapshotCommand) -> Outcome {
    let instances = LocalInstances::open(&ctx.home)?;
    match action {
        SnapshotCommand::Create {
            instance,
            source_url,
            name,
            key,
            encrypt,
        } => {
            let from = match (instance, source_url) {
                (Some(i), _) => SnapshotFrom::Instance(i.clone()),
                (None, Some(u)) => SnapshotFrom::Url(u.clone()),
                (None, None) => anyhow::bail!("name an INSTANCE or give --source-url"),
            };
            let key = chosen_key(key, *encrypt);
            // The KMS is needed to seal, and for any snapshot of an encrypted instance.
            let needs_kms = key.is_some()
                || matches!(&from, SnapshotFrom::Instance(i) if instances.record(i).is_ok_and(|r| r.encryption.is_some()));
            let kms = ctx.open_kms_if(needs_kms)?;
            let (key, kms) = (key.as_deref(), as_dyn(kms.as_ref()));
            let record = Reporter::around(ctx, "snapshot", |progress| {
                instances.create_snapshot(&from, name, key, kms, progress)
            })?;
            show(ctx, &record)
        }
        SnapshotCommand::Copy {
            source,
            name,
            key,
            encrypt,
        } => {
            let key = chosen_key(key, *encrypt);
            let needs_kms = key.is_some()
                || instances
                    .snapshot(source)
                    .is_ok_and(|s| s.encryption.is_some());
            let kms = ctx.open_kms_if(needs_kms)?;
            let (key, kms) = (key.as_deref(), as_dyn(kms.as_ref()));
            let record = Reporter::around(ctx, "copy", |progress| {
                instances.copy_snapshot(source, name, key, kms, progress)
            })?;
            show(ctx, &record)
        }
        SnapshotCommand::Restore {
            snapshot,
            instance,
            port,
            storage,
        } => {
            let snap = instances.snapshot(snapshot)?;
            let kms = ctx.open_kms_if(snap.encryption.is_some())?;
            // Default storage: 10 GiB, or what the snapshot needs with room to grow.
            let needed = snap.backup_bytes * 2 + (256 << 20);
            let spec = InstanceSpec {
                engine_version: None,
                name: instance.clone(),
                port: *port,
                storage_bytes: storage.unwrap_or(DEFAULT_STORAGE_BYTES.max(needed)),
                encryption_key: None,
                params: Default::default(),
                master_password: None,
            };
            let info = Reporter::around(ctx, "restore", |progress| {
                instances.restore_snapshot(snapshot, &spec, as_dyn(kms.as_ref()), progress)
            })?;
            if ctx.json {
                print_json(&info)?;
            } else {
                println!(
                    "restored snapshot {snapshot} into instance {} ({}, port {})",
                    info.name,
                    if info.encrypted { "encrypted" } else { "plain" },
                    info.port
                );
                if let Some(facts) = &info.restore {
                    println!(
                        "handoff LSN {} (backup end {}, replay position at first start {})",
                        facts.handoff_lsn,
                        facts.backup_end_lsn,
                        facts
                            .replay_lsn
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(exit::code(exit::OK))
        }
        SnapshotCommand::List => {
            let list = instances.snapshots()?;
            if ctx.json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!(
                    "No snapshots yet. Take one with `pgseal snapshot create INSTANCE --name NAME`."
                );
            } else {
                let mut rows = vec![
                    ["NAME", "ENCRYPTED", "SIZE", "END LSN", "CREATED"]
                        .map(String::from)
                        .to_vec(),
                ];
                for s in &list {
                    rows.push(vec![
                        s.name.clone(),
                        if s.encryption.is_some() { "yes" } else { "no" }.to_string(),
                        format!("{} MiB", s.backup_bytes >> 20),
                        s.end_lsn.to_string(),
                        s.created.clone(),
                    ]);
                }
                print!("{}", crate::output::table(&rows));
            }
            Ok(exit::code(exit::OK))
        }
        SnapshotCommand::Describe(Named { name }) => show(ctx, &instances.snapshot(name)?),
        SnapshotCommand::Delete(Named { name }) => {
            instances.delete_snapshot(name)?;
            ctx.status(format!("deleted snapshot {name}"));
            Ok(exit::code(exit::OK))
        }
    }
}

fn show(ctx: &Context, s: &SnapshotRecord) -> Outcome {
    if ctx.json {
        print_json(s)?;
        return Ok(exit::code(exit::OK));
    }
    let source = match &s.source {
        SnapshotSource::Instance { name } => format!("instance {name}"),
        SnapshotSource::External { target } => format!("external {target}"),
        SnapshotSource::Copy { of } => format!("copy of snapshot {of}"),
    };
    println!(
        "name:       {}\nsource:     {source}\ncreated:    {}\nengine:     PostgreSQL {}",
        s.name, s.created, s.engine_version
    );
    match &s.encryption {
        Some(e) => println!("encrypted:  true\nkey id:     {}", e.key_id),
        None => println!("encrypted:  false"),
    }
    println!(
        "backup:     {} bytes ({} stored)\nWAL:        {} .. {}",
        s.backup_bytes, s.stored_bytes, s.start_lsn, s.end_lsn
    );
    Ok(exit::code(exit::OK))
}
