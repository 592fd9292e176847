//! Where the key store's passphrase comes from.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::{Error, Result};

/// The environment variable that holds the passphrase.
pub const PASSPHRASE_ENV: &str = "PGSEAL_PASSPHRASE";
/// The shortest passphrase a new key store accepts.
pub const MIN_NEW_PASSPHRASE_LEN: usize = 8;

/// The key store's passphrase, wiped from memory on drop; `Debug` never shows it.
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(redacted)")
    }
}

impl Passphrase {
    /// A passphrase held by the caller.
    pub fn new(text: impl Into<String>) -> Self {
        Passphrase(Zeroizing::new(text.into()))
    }

    /// From `--passphrase-file` when given, else from `PGSEAL_PASSPHRASE`; a trailing
    /// newline in the file is ignored.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Self> {
        if let Some(path) = file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(Error::io(
                format!("cannot read passphrase file {}", path.display()),
            ))?);
            let trimmed = text.strip_suffix('\n').unwrap_or(&text);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            if trimmed.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "passphrase file {} is empty",
                    path.display()
                )));
            }
            return Ok(Passphrase::new(trimmed));
        }
        match std::env::var(PASSPHRASE_ENV) {
            Ok(text) if !text.is_empty() => Ok(Passphrase::new(text)),
            _ => Err(Error::NoPassphrase),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_passphrase_drops_one_trailing_newline_and_debug_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "correct horse\n").unwrap();
        let p = Passphrase::from_file_or_env(Some(&f)).unwrap();
        assert_eq!(p.as_bytes(), b"correct horse");
        assert_eq!(format!("{p:?}"), "Passphrase(redacted)");
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(
            Passphrase::from_file_or_env(Some(&f)).unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
    }
}
