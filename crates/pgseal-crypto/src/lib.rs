//! Encryption for pgseal: a KMS in the envelope model of a cloud KMS, and the sealed-stream
//! format encrypted snapshots are written in.
//!
//! - [`Kms`]: the operations the migration needs from a key management service. A *KMS key*
//!   never leaves the key store; it generates and unwraps *data keys*, and data is encrypted
//!   with a data key. Every call takes an [`EncryptionContext`] that is bound into the wrap
//!   and must match on unwrap.
//! - [`LocalKms`]: the key store under `PGSEAL_HOME/kms`, its master keys encrypted under a
//!   root key derived from a passphrase (Argon2id), with the lifecycle of a cloud KMS key
//!   (rotate, disable, schedule deletion) and an audit log.
//! - [`stream`]: the sealed-stream format (chunked AES-256-GCM, per-stream HKDF subkey, key
//!   commitment), specified in `docs/sealed-stream.md`.
//!
//! Plaintext keys live only in zeroizing buffers ([`DataKey`]) and are never written to
//! disk, logged, or put on a command line.

mod context;
mod error;
pub mod keystore;
mod kms;
mod primitives;
mod secret;
pub mod stream;

pub use context::EncryptionContext;
pub use error::{Error, ErrorKind, Result};
pub use keystore::{LocalKms, Passphrase};
pub use kms::{DataKeySpec, GeneratedDataKey, KeyId, KeyMetadata, KeyState, Kms, WrappedKey};
pub use secret::DataKey;
