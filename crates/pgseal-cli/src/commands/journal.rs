//! `pgseal journal`: copy a journal into a shared one; list the leases on migrations.

use pgseal_core::journal::Location;

use super::{Context, Outcome};
use crate::cli::JournalCommand;
use crate::{exit, output};

/// Runs a `journal` subcommand.
pub fn run(ctx: &Context, action: &JournalCommand) -> Outcome {
    match action {
        JournalCommand::Copy { from, to } => copy(ctx, from.as_deref(), to.as_deref()),
        JournalCommand::Leases => {
            let leases = ctx.journal()?.leases()?;
            ctx.print(&leases, || output::journal::leases(&leases))?;
            Ok(exit::code(exit::OK))
        }
    }
}

/// `journal copy`: the SQLite journal `from` (the home's by default) into the PostgreSQL
/// journal `to` (`--journal` by default).
fn copy(ctx: &Context, from: Option<&std::path::Path>, to: Option<&str>) -> Outcome {
    let from = from.map_or_else(
        || Location::in_home(&ctx.home),
        |f| Location::File(f.into()),
    );
    let to = match to {
        Some(url) => Location::parse(Some(url), &ctx.home)?,
        None => ctx.journal.location.clone(),
    };
    if !to.is_shared() {
        anyhow::bail!(pgseal_core::JournalError::BadLocation(format!(
            "{to}: `journal copy` copies into a postgres:// journal; give one with --to or --journal"
        )));
    }
    if let Location::File(path) = &from
        && !path.exists()
    {
        anyhow::bail!(pgseal_core::JournalError::BadLocation(format!(
            "{}: no such journal file",
            path.display()
        )));
    }
    let open = |location: &Location| {
        pgseal_core::JournalConfig {
            location: location.clone(),
            ..ctx.journal.clone()
        }
        .open()
    };
    let (source, target) = (open(&from)?, open(&to)?);
    let copied = pgseal_core::journal::copy::copy(&source, &target)?;
    ctx.print(&copied, || {
        output::journal::copied(&copied, source.location(), target.location())
    })?;
    Ok(exit::code(exit::OK))
}
