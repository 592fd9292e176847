//! One module per command: each turns parsed arguments into library calls and renders the
//! result as text or JSON. No logic of its own beyond that.

pub mod doctor;

use std::process::ExitCode;

/// What every command gets besides its own arguments.
#[derive(Debug)]
pub struct Context {
    /// pgseal's home directory (resolved, absolute).
    pub home: std::path::PathBuf,
    /// Print JSON instead of text.
    pub json: bool,
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The outcome of a command: the exit code to leave with.
pub type Outcome = anyhow::Result<ExitCode>;
