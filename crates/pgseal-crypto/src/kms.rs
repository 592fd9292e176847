//! The KMS abstraction the migration engine and the platforms use.

use std::fmt;

use serde::Serialize;

use crate::{DataKey, EncryptionContext, Error, Result};

/// An opaque KMS key identifier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which kind of data key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeySpec {
    /// 32 bytes, for AES-256-GCM (sealed snapshots).
    Aes256Gcm,
    /// 64 bytes, for AES-256-XTS (fscrypt volume contents: two 256-bit halves).
    Aes256Xts,
}

impl DataKeySpec {
    /// The key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            DataKeySpec::Aes256Gcm => 32,
            DataKeySpec::Aes256Xts => 64,
        }
    }
}

/// The lifecycle state of a KMS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Refuses every operation until enabled again.
    Disabled,
    /// Refuses every operation; deleted for good at `deletion_date` unless cancelled.
    PendingDeletion {
        /// When the key will be deleted (RFC 3339).
        deletion_date: String,
    },
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyState::Enabled => write!(f, "enabled"),
            KeyState::Disabled => write!(f, "disabled"),
            KeyState::PendingDeletion { deletion_date } => {
                write!(f, "pending deletion ({deletion_date})")
            }
        }
    }
}

/// What a KMS says about a key (never its material).
#[derive(Debug, Clone, Serialize)]
pub struct KeyMetadata {
    /// The key's id.
    pub key_id: KeyId,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// Free text given at creation.
    pub description: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Its state.
    #[serde(flatten)]
    pub state: KeyState,
    /// How many versions of key material it has (1 + rotations).
    pub material_versions: u32,
    /// When its material was last rotated (RFC 3339), if ever.
    pub last_rotated: Option<String>,
    /// True for a key pgseal made on first use (`pgseal/default`), like `aws/rds`.
    pub managed: bool,
}

/// A freshly generated data key: the plaintext for immediate use, and the wrapped form to
/// store beside the data.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The plaintext key (zeroized on drop).
    pub plaintext: DataKey,
    /// The key wrapped under the KMS key; opens only with the same encryption context.
    pub wrapped: WrappedKey,
}

/// A data key wrapped under a KMS key: safe to store anywhere.
///
/// Layout: `"PGWK"`, format `1`, key id length (1 byte), key id, material version (`u32`
/// BE), then `nonce ‖ ciphertext ‖ tag` of AES-256-GCM under that version of the key, with
/// the key id, version and canonical encryption context as associated data.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

const WRAPPED_MAGIC: &[u8; 4] = b"PGWK";
const WRAPPED_FORMAT: u8 = 1;

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

impl WrappedKey {
    /// Builds the blob from its parts.
    pub(crate) fn assemble(key_id: &KeyId, version: u32, sealed: &[u8]) -> Self {
        let id = key_id.0.as_bytes();
        let mut out = Vec::with_capacity(4 + 2 + id.len() + 4 + sealed.len());
        out.extend_from_slice(WRAPPED_MAGIC);
        out.push(WRAPPED_FORMAT);
        out.push(u8::try_from(id.len()).expect("key ids are short"));
        out.extend_from_slice(id);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(sealed);
        WrappedKey(out)
    }

    /// Splits the blob: (key id, material version, sealed bytes).
    pub(crate) fn parts(&self) -> Result<(KeyId, u32, &[u8])> {
        let bad = || Error::tampered("wrapped data key is malformed");
        let b = &self.0;
        if b.len() < 6 || &b[..4] != WRAPPED_MAGIC || b[4] != WRAPPED_FORMAT {
            return Err(bad());
        }
        let id_len = b[5] as usize;
        let rest = &b[6..];
        if rest.len() < id_len + 4 {
            return Err(bad());
        }
        let id = std::str::from_utf8(&rest[..id_len]).map_err(|_| bad())?;
        let version = u32::from_be_bytes(rest[id_len..id_len + 4].try_into().expect("4 bytes"));
        Ok((KeyId(id.to_string()), version, &rest[id_len + 4..]))
    }

    /// The id of the KMS key this was wrapped under.
    pub fn key_id(&self) -> Result<KeyId> {
        Ok(self.parts()?.0)
    }

    /// The raw bytes, for storing.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// From stored bytes (checked when used).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        WrappedKey(bytes)
    }
}

/// The operations pgseal needs from a key management service.
///
/// `key` arguments take a key id or an alias (`pgseal/default`, `alias/name` or `name`).
/// Every operation is checked against the key's state: a disabled key or one pending
/// deletion refuses with [`Error::KeyDisabled`] / [`Error::KeyPendingDeletion`].
pub trait Kms: Send + Sync {
    /// Resolves an id or alias to a key id.
    fn resolve(&self, key: &str) -> Result<KeyId>;

    /// Describes a key.
    fn describe_key(&self, key: &str) -> Result<KeyMetadata>;

    /// Generates a data key under `key`, bound to `context`.
    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedDataKey>;

    /// Unwraps a data key; `context` must equal the one it was generated with.
    fn decrypt(&self, wrapped: &WrappedKey, context: &EncryptionContext) -> Result<DataKey>;

    /// Re-wraps a data key under `dest_key` and `dest_context` without the plaintext
    /// leaving the KMS.
    fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        dest_key: &str,
        dest_context: &EncryptionContext,
    ) -> Result<WrappedKey>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_parts_round_trip_and_reject_garbage() {
        let w = WrappedKey::assemble(&KeyId("abc".into()), 3, b"sealedbytes");
        let (id, version, sealed) = w.parts().unwrap();
        assert_eq!(
            (id.0.as_str(), version, sealed),
            ("abc", 3, &b"sealedbytes"[..])
        );
        assert!(WrappedKey::from_bytes(b"XXXX".to_vec()).parts().is_err());
        assert!(
            WrappedKey::from_bytes(w.as_bytes()[..8].to_vec())
                .parts()
                .is_err()
        );
    }
}
