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
/// No passphrase for the key store (PGSEAL_PASSPHRASE or --passphrase-file).
pub const NO_PASSPHRASE: u8 = 4;
/// The passphrase does not open the key store.
pub const WRONG_PASSPHRASE: u8 = 5;
/// The key store file is damaged or was changed outside pgseal.
pub const KEYSTORE_DAMAGED: u8 = 6;
/// No KMS key with that id or alias.
pub const KEY_NOT_FOUND: u8 = 7;
/// The KMS key is disabled or pending deletion.
pub const KEY_UNUSABLE: u8 = 8;
/// Sealed data is damaged or was tampered with.
pub const TAMPERED: u8 = 9;
/// The input is not a pgseal sealed stream.
pub const NOT_SEALED: u8 = 10;
/// `workload verify` found missing, duplicated or unexpected transactions, `migrate
/// validate` found differing rows, or `endpoint check` found prepared-statement failures.
pub const VERIFY_FAILED: u8 = 11;
/// This process's lease on a migration in a shared journal was lost (it was paused or cut
/// off past the lease): it stopped before changing anything more; another runner may
/// have taken the migration over.
pub const LEASE_LOST: u8 = 12;
/// Another process or runner drives the migration now (its lock or lease is held):
/// nothing was changed; wait for it, or for its lease to expire.
pub const BUSY: u8 = 13;

/// The text for `--help`.
pub const HELP_TEXT: &str = "\
Exit codes:
  0  success
  1  failure (the message says why)
  2  usage error (wrong command line, or a fleet inventory that cannot be used)
  3  precondition not met: nothing was changed; fix what is listed and run again
  4  no passphrase for the key store (set PGSEAL_PASSPHRASE or pass --passphrase-file)
  5  wrong passphrase for the key store
  6  key store damaged or changed outside pgseal
  7  no KMS key with that id or alias
  8  KMS key disabled or pending deletion
  9  sealed data damaged or tampered with
  10 input is not a pgseal sealed stream
  11 workload verify found missing, duplicated or unexpected transactions,
     migrate validate found differing rows, or endpoint check found
     prepared-statement failures
  12 the lease on a migration in a shared journal was lost (this process was
     paused or cut off too long): it stopped before changing anything more
  13 another process or runner drives the migration now (its lock or lease is
     held): nothing was changed";

/// The exit code for a failed command: a library error's kind decides; anything else is 1.
pub fn for_error(error: &anyhow::Error) -> u8 {
    use pgseal_crypto::ErrorKind;
    let local = error
        .chain()
        .find_map(|e| e.downcast_ref::<pgseal_local::instance::LocalError>());
    if local.is_some_and(|e| e.is_precondition()) {
        return PRECONDITION;
    }
    // A fleet's inventory that cannot be used is bad input, like a wrong command line.
    if error
        .chain()
        .any(|e| e.downcast_ref::<pgseal_fleet::InventoryError>().is_some())
    {
        return USAGE;
    }
    for cause in error.chain() {
        if let Some(engine) = cause.downcast_ref::<pgseal_core::EngineError>() {
            if let pgseal_core::EngineError::Platform { source, .. } = engine
                && source.kind == pgseal_platform::ErrorKind::Key
            {
                return KEY_UNUSABLE;
            }
            return if engine.is_precondition() {
                PRECONDITION
            } else {
                FAILURE
            };
        }
        if let Some(platform) = cause.downcast_ref::<pgseal_platform::PlatformError>() {
            use pgseal_platform::ErrorKind::{Key, NotFound, Precondition};
            match platform.kind {
                Key => return KEY_UNUSABLE,
                NotFound | Precondition => return PRECONDITION,
                _ => {}
            }
        }
        if let Some(journal) = cause.downcast_ref::<pgseal_core::JournalError>() {
            use pgseal_core::JournalError::{BadLocation, Exists, LeaseLost, NotFound};
            if matches!(journal, LeaseLost(_)) {
                return LEASE_LOST;
            }
            if journal.is_busy() {
                return BUSY;
            }
            if matches!(journal, NotFound(_) | Exists(_) | BadLocation(_)) {
                return PRECONDITION;
            }
        }
    }
    let Some(crypto) = error
        .chain()
        .find_map(|e| e.downcast_ref::<pgseal_crypto::Error>())
    else {
        return FAILURE;
    };
    match crypto.kind() {
        ErrorKind::NoPassphrase => NO_PASSPHRASE,
        ErrorKind::WrongPassphrase => WRONG_PASSPHRASE,
        ErrorKind::KeyStoreDamaged => KEYSTORE_DAMAGED,
        ErrorKind::KeyNotFound => KEY_NOT_FOUND,
        ErrorKind::KeyUnusable => KEY_UNUSABLE,
        ErrorKind::Tampered => TAMPERED,
        ErrorKind::NotSealed => NOT_SEALED,
        ErrorKind::InvalidInput => USAGE,
        ErrorKind::Io => FAILURE,
    }
}

/// An [`ExitCode`] from one of the constants above.
pub fn code(value: u8) -> ExitCode {
    ExitCode::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_lists_every_code() {
        let all = [
            OK,
            FAILURE,
            USAGE,
            PRECONDITION,
            NO_PASSPHRASE,
            WRONG_PASSPHRASE,
            KEYSTORE_DAMAGED,
            KEY_NOT_FOUND,
            KEY_UNUSABLE,
            TAMPERED,
            NOT_SEALED,
            VERIFY_FAILED,
        ];
        for c in all {
            assert!(
                HELP_TEXT.contains(&format!("  {c:<2} ")),
                "code {c} undocumented"
            );
        }
    }
}
