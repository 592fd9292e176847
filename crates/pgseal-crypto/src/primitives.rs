//! The cryptographic building blocks, in one place: AES-256-GCM with a random nonce for
//! wrapping small secrets (master keys, data keys), HKDF-SHA-256, and a constant-time
//! comparison. The stream format does its own nonce handling (see `stream`).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

/// Length of the authentication tag.
pub(crate) const TAG_LEN: usize = 16;

/// Builds an AES-256-GCM key; `key` must be 32 bytes.
pub(crate) fn gcm_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256 keys are 32 bytes"))
}

/// Encrypts `plaintext` under `key` with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal_random_nonce(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system random generator never fails here");
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(NONCE_LEN);
    gcm_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("sealing a small buffer cannot fail");
    out.extend_from_slice(&body);
    out
}

/// Opens what [`seal_random_nonce`] made; `None` when it fails authentication.
pub(crate) fn open_random_nonce(
    key: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = gcm_key(key)
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// A fixed-length HKDF output.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256: extract with `salt` from `ikm`, then expand 32 bytes for `info`.
pub(crate) fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = Zeroizing::new(vec![0u8; 32]);
    prk.expand(info, OkmLen(32))
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is within HKDF-SHA-256's output limit");
    out
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_binds_aad() {
        let key = [7u8; 32];
        let sealed = seal_random_nonce(&key, b"aad", b"secret");
        assert_eq!(
            &open_random_nonce(&key, b"aad", &sealed).unwrap()[..],
            b"secret"
        );
        assert!(open_random_nonce(&key, b"other", &sealed).is_none());
        assert!(open_random_nonce(&[8u8; 32], b"aad", &sealed).is_none());
        assert_ne!(
            sealed,
            seal_random_nonce(&key, b"aad", b"secret"),
            "nonces are fresh"
        );
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
