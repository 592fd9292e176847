//! `pgseal key ...`.

use pgseal_crypto::{KeyMetadata, Kms};

use super::{Context, Outcome, print_json};
use crate::cli::KeyCommand;
use crate::exit;

/// Runs one key command.
pub fn run(ctx: &Context, action: &KeyCommand) -> Outcome {
    let kms = ctx.open_kms()?;
    let one = match action {
        KeyCommand::List => {
            let keys = kms.list_keys()?;
            if ctx.json {
                print_json(&keys)?;
            } else {
                print!("{}", render_list(&keys));
            }
            return Ok(exit::code(exit::OK));
        }
        KeyCommand::Create { alias, description } => {
            kms.create_key(alias.as_deref(), description)?
        }
        KeyCommand::Describe { key } => kms.describe_key(key)?,
        KeyCommand::Rotate { key } => kms.rotate_key(key)?,
        KeyCommand::Disable { key } => kms.disable_key(key)?,
        KeyCommand::Enable { key } => kms.enable_key(key)?,
        KeyCommand::ScheduleDeletion { key, days } => kms.schedule_key_deletion(key, *days)?,
        KeyCommand::CancelDeletion { key } => kms.cancel_key_deletion(key)?,
    };
    if ctx.json {
        print_json(&one)?;
    } else {
        print!("{}", render_one(&one));
    }
    Ok(exit::code(exit::OK))
}

fn render_one(key: &KeyMetadata) -> String {
    let aliases = if key.aliases.is_empty() {
        "-".to_string()
    } else {
        key.aliases.join(", ")
    };
    let mut out = format!(
        "key id:       {}\naliases:      {aliases}\nstate:        {}\ndescription:  {}\ncreated:      {}\nversions:     {}\n",
        key.key_id,
        key.state,
        if key.description.is_empty() {
            "-"
        } else {
            &key.description
        },
        key.created,
        key.material_versions,
    );
    if let Some(rotated) = &key.last_rotated {
        out.push_str(&format!("last rotated: {rotated}\n"));
    }
    if key.managed {
        out.push_str(
            "managed:      yes (made by pgseal on first use; cannot be disabled or deleted)\n",
        );
    }
    out
}

fn render_list(keys: &[KeyMetadata]) -> String {
    if keys.is_empty() {
        return "No KMS keys yet. Create one with `pgseal key create --alias NAME`.\n".to_string();
    }
    let mut rows = vec![vec![
        "KEY ID".to_string(),
        "ALIASES".into(),
        "STATE".into(),
        "VERSIONS".into(),
        "CREATED".into(),
    ]];
    for k in keys {
        rows.push(vec![
            k.key_id.to_string(),
            if k.aliases.is_empty() {
                "-".into()
            } else {
                k.aliases.join(",")
            },
            k.state.to_string(),
            k.material_versions.to_string(),
            k.created.clone(),
        ]);
    }
    crate::output::table(&rows)
}
