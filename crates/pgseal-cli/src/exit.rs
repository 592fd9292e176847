//! The process exit codes pgseal documents in `--help` and keeps stable for scripts.

use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// The command failed (the message says why).
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// A precondition is not met: nothing was changed; fix what the output lists and run again.
pub const PRECONDITION: u8 = 3;

/// The text for `--help`.
pub const HELP_TEXT: &str = "\
Exit codes:
  0  success
  1  failure (the message says why)
  2  usage error (wrong command line)
  3  precondition not met: nothing was changed; fix what is listed and run again";

/// An [`ExitCode`] from one of the constants above.
pub fn code(value: u8) -> ExitCode {
    ExitCode::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_lists_every_code() {
        for c in [OK, FAILURE, USAGE, PRECONDITION] {
            assert!(
                HELP_TEXT.contains(&format!("  {c}  ")),
                "code {c} undocumented"
            );
        }
    }
}
