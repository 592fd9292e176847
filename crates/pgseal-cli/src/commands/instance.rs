//! `pgseal instance ...`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use pgseal_local::instance::{InstanceInfo, InstanceSpec, LocalInstances, ResizeHow};
use zeroize::Zeroizing;

use super::{Context, Outcome, as_dyn, chosen_key, print_json};
use crate::cli::{InstanceCommand, Named};
use crate::exit;

/// The environment variable that may hold the master password.
const MASTER_PASSWORD_ENV: &str = "PGSEAL_MASTER_PASSWORD";

/// The master password new instances get (`PGSEAL_MASTER_PASSWORD`), if one is set.
pub fn master_password_from_env() -> Option<Zeroizing<String>> {
    std::env::var(MASTER_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(Zeroizing::new)
}

/// Runs one instance command.
pub fn run(ctx: &Context, action: &InstanceCommand) -> Outcome {
    let instances = LocalInstances::open(&ctx.home)?;
    // The KMS is opened only where an encrypted instance needs it.
    let kms_for = |name: &str| -> anyhow::Result<Option<pgseal_crypto::LocalKms>> {
        match instances.record(name) {
            Ok(r) if r.encryption.is_some() => Ok(Some(ctx.open_kms()?)),
            _ => Ok(None),
        }
    };
    match action {
        InstanceCommand::Create {
            name,
            encrypted,
            key,
            port,
            storage,
            params,
            engine_version,
            master_password_file,
        } => {
            // --key alone implies --encrypted.
            let encryption_key = chosen_key(key, *encrypted);
            let master_password = match master_password_file {
                Some(path) => {
                    let text = Zeroizing::new(
                        std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    );
                    Some(Zeroizing::new(
                        text.lines().next().unwrap_or("").to_string(),
                    ))
                }
                None => master_password_from_env(),
            };
            if master_password.as_ref().is_some_and(|p| p.is_empty()) {
                bail!("the master password file is empty");
            }
            let kms = ctx.open_kms_if(encryption_key.is_some())?;
            let spec = InstanceSpec {
                name: name.clone(),
                port: *port,
                storage_bytes: *storage,
                encryption_key,
                params: params.iter().cloned().collect::<BTreeMap<_, _>>(),
                engine_version: *engine_version,
                master_password,
            };
            ctx.status(format!("creating instance {name}..."));
            let info = instances.create(&spec, as_dyn(kms.as_ref()))?;
            show(ctx, &info)
        }
        InstanceCommand::List => {
            let list = instances.list()?;
            if ctx.json {
                print_json(&list)?;
            } else {
                print!("{}", render_list(&list));
            }
            Ok(exit::code(exit::OK))
        }
        InstanceCommand::Describe(Named { name }) => show(ctx, &instances.describe(name)?),
        InstanceCommand::Start(Named { name }) => {
            let kms = kms_for(name)?;
            show(ctx, &instances.start(name, as_dyn(kms.as_ref()))?)
        }
        InstanceCommand::Stop(Named { name }) => show(ctx, &instances.stop(name)?),
        InstanceCommand::Reboot(Named { name }) => {
            let kms = kms_for(name)?;
            show(ctx, &instances.reboot(name, as_dyn(kms.as_ref()))?)
        }
        InstanceCommand::Delete { name, yes } => {
            instances.describe(name)?;
            if !yes {
                bail!(
                    "deleting instance {name} removes all of its data for good; run again with --yes to confirm"
                );
            }
            instances.delete(name)?;
            ctx.status(format!("deleted instance {name}"));
            if ctx.json {
                print_json(&serde_json::json!({ "deleted": name }))?;
            }
            Ok(exit::code(exit::OK))
        }
        InstanceCommand::Resize { name, storage } => {
            let kms = kms_for(name)?;
            let resized = instances.resize(name, *storage, as_dyn(kms.as_ref()))?;
            if ctx.json {
                print_json(&resized)?;
            } else {
                let how = match resized.how {
                    ResizeHow::Online => "online, without a restart",
                    ResizeHow::WithRestart => {
                        "with a brief restart (no CAP_SYS_RESOURCE for online growth)"
                    }
                    ResizeHow::Offline => "while stopped",
                    ResizeHow::RecordOnly => {
                        "plain instance: its data lives on this machine's file system"
                    }
                };
                println!(
                    "instance {name} now has {} of storage ({how})",
                    gib(resized.instance.storage_bytes)
                );
            }
            Ok(exit::code(exit::OK))
        }
        InstanceCommand::SetParam {
            name,
            params,
            apply,
        } => {
            let kms = if *apply { kms_for(name)? } else { None };
            let params: BTreeMap<String, String> = params.iter().cloned().collect();
            let change = instances.set_params(name, &params, *apply, as_dyn(kms.as_ref()))?;
            if ctx.json {
                print_json(&change)?;
            } else {
                if !change.applied.is_empty() {
                    println!("in effect: {}", change.applied.join(", "));
                }
                if change.restarted {
                    println!("instance {name} was restarted to apply them");
                }
                if !change.pending_restart.is_empty() {
                    println!(
                        "need a restart: {} (run `pgseal instance set-param {name} ... --apply` or `pgseal instance reboot {name}`)",
                        change.pending_restart.join(", ")
                    );
                }
            }
            Ok(exit::code(exit::OK))
        }
        InstanceCommand::Url { name, socket } => {
            let info = instances.describe(name)?;
            let url = if *socket {
                format!(
                    "postgresql://postgres@/postgres?host={}&port={}",
                    info.socket_dir.display(),
                    info.port
                )
            } else {
                info.url.clone()
            };
            if ctx.json {
                print_json(&serde_json::json!({ "url": url }))?;
            } else {
                println!("{url}");
            }
            Ok(exit::code(exit::OK))
        }
    }
}

fn show(ctx: &Context, info: &InstanceInfo) -> Outcome {
    if ctx.json {
        print_json(info)?;
    } else {
        print!("{}", render_one(info));
    }
    Ok(exit::code(exit::OK))
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn render_one(i: &InstanceInfo) -> String {
    let mut out = format!(
        "name:        {}\nstatus:      {}\nengine:      PostgreSQL {}\nport:        {}\nurl:         {}\nsocket dir:  {}\nencrypted:   {}\n",
        i.name,
        i.status,
        i.engine_version,
        i.port,
        i.url,
        i.socket_dir.display(),
        i.encrypted
    );
    if let (Some(id), Some(r)) = (&i.key_id, &i.key_ref) {
        out.push_str(&format!(
            "key id:      {id}\nkey:         {r}\nvolume:      {}\n",
            i.volume_image
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "storage:     {}\ncreated:     {}\ndata dir:    {}\nlog:         {}\n",
        gib(i.storage_bytes),
        i.created,
        i.data_dir.display(),
        i.log_path.display()
    ));
    if let Some(s) = &i.source_snapshot {
        out.push_str(&format!("from snapshot: {s}\n"));
    }
    if let Some(f) = &i.restore {
        out.push_str(&format!(
            "handoff LSN: {} (backup end {}, redo done at {})\n",
            f.handoff_lsn,
            f.backup_end_lsn,
            f.redo_done_at
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into())
        ));
    }
    if !i.params.is_empty() {
        let p: Vec<String> = i.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("parameters:  {}\n", p.join(" ")));
    }
    if i.status == "incomplete" {
        out.push_str(&format!("note:        creation did not finish; remove it with `pgseal instance delete {} --yes`\n", i.name));
    }
    out
}

fn render_list(list: &[InstanceInfo]) -> String {
    if list.is_empty() {
        return "No instances yet. Create one with `pgseal instance create NAME`.\n".to_string();
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "STATUS".into(),
        "PORT".into(),
        "ENCRYPTED".into(),
        "KEY".into(),
        "STORAGE".into(),
    ]];
    for i in list {
        rows.push(vec![
            i.name.clone(),
            i.status.to_string(),
            i.port.to_string(),
            if i.encrypted {
                "yes".into()
            } else {
                "no".into()
            },
            i.key_ref.clone().unwrap_or_else(|| "-".into()),
            gib(i.storage_bytes),
        ]);
    }
    crate::output::table(&rows)
}
