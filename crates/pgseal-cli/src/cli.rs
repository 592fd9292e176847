//! The command line: every command, option and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;

const ABOUT: &str = "Move a live PostgreSQL database onto encrypted-at-rest storage with seconds of write downtime.";

const LONG_ABOUT: &str = "\
Move a live PostgreSQL database onto encrypted-at-rest storage (or onto a new key) with
seconds of write downtime, no lost or duplicated transaction, and proof of both.

How it works: pgseal creates a publication and a logical replication slot on the source,
takes a snapshot, seals it under a KMS key, restores it onto an encrypted instance,
subscribes that instance to the slot from the exact LSN where the snapshot ends, lets it
catch up, then fences writes, syncs sequences and switches applications over.

Start with `pgseal doctor`: it checks this machine and prints the command that fixes each
missing piece.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "pgseal",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = exit::HELP_TEXT,
    propagate_version = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where pgseal keeps instances, snapshots, keys and journals
    /// [default: $XDG_DATA_HOME/pgseal, or ~/.local/share/pgseal]
    #[arg(long, global = true, env = "PGSEAL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more to stderr (-v: info, -vv: debug, -vvv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only errors to stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this machine for what pgseal needs, and print the fix for each missing piece
    #[command(long_about = "\
Check this machine for everything the local platform needs: PostgreSQL server binaries
(from PGSEAL_PG_BINDIR, else `pg_config --bindir` on PATH), the OS user servers run as,
pgseal's home directory, what encrypted volumes need (root or CAP_SYS_ADMIN, kernel
fscrypt support for ext4, loop devices, mkfs.ext4, losetup, mount) and PgBouncer.

For each missing piece it prints the exact command that fixes it. Nothing is changed.
Exits 3 when something required is missing, 0 otherwise (missing recommended pieces are
listed as warnings).")]
    Doctor,
}
