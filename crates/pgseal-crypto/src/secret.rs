//! Plaintext key material, held only in memory that is wiped on drop.

use std::fmt;

use zeroize::Zeroizing;

/// A plaintext data key (or other key material). Wiped from memory when dropped; `Debug`
/// shows only its length.
#[derive(Clone)]
pub struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    /// Wraps bytes that are already secret; the caller's copy should itself be zeroizing.
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        DataKey(bytes)
    }

    /// Fresh random key material of `len` bytes from the system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator never fails here");
        DataKey(bytes)
    }

    /// The key bytes. Hand them only to a cipher or a kernel interface, never to a file, a
    /// log or a command line.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a zero-length key (never produced by the KMS).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DataKey::from_bytes(Zeroizing::new(vec![0xAB; 32]));
        let text = format!("{key:?}");
        assert_eq!(text, "DataKey(32 bytes, redacted)");
        assert_ne!(DataKey::random(32).expose(), DataKey::random(32).expose());
    }
}
