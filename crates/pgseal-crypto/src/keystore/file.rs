//! The key store file (`keystore.json`) and the keys derived from the passphrase.
//!
//! The file holds the Argon2id parameters and salt, a verifier (a constant sealed under the
//! root key: it tells a wrong passphrase from a damaged file), every KMS key with its
//! versions of material sealed under the root key, the aliases, and an HMAC over all of
//! it so that a change made outside pgseal (re-enabling a disabled key, say) is detected.

use std::collections::BTreeMap;

use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Passphrase;
use crate::primitives::{hkdf_sha256, open_random_nonce, seal_random_nonce};

/// The key store file's format version.
pub(crate) const STORE_FORMAT: u32 = 1;
const VERIFIER_AAD: &[u8] = b"pgseal/keystore/v1/verifier";
const VERIFIER_TEXT: &[u8] = b"pgseal key store";
const MATERIAL_AAD: &[u8] = b"pgseal/keystore/v1/material";

/// Argon2id parameters, stored with the salt so a store opens with the parameters it was
/// made with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KdfParams {
    pub algorithm: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: String,
}

impl KdfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane) with a fresh salt.
    pub(crate) fn new_default() -> Self {
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).expect("the system random generator never fails here");
        KdfParams {
            algorithm: "argon2id".into(),
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            salt: B64.encode(salt),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    pub format: u32,
    pub kdf: KdfParams,
    pub verifier: String,
    pub body: StoreBody,
    pub mac: String,
}

/// Keys and aliases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreBody {
    pub keys: Vec<StoredKey>,
    pub aliases: BTreeMap<String, String>,
}

/// One KMS key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredKey {
    pub id: String,
    pub description: String,
    pub created: u64,
    pub state: StoredState,
    pub deletion_date: Option<u64>,
    pub managed: bool,
    pub versions: Vec<StoredVersion>,
}

/// A key's lifecycle state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoredState {
    Enabled,
    Disabled,
    PendingDeletion,
}

/// One version of a key's material, sealed under the root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredVersion {
    pub version: u32,
    pub created: u64,
    pub material: String,
}

/// The keys derived from the passphrase: one encrypts key material, one MACs the file.
pub(crate) struct RootKeys {
    encrypt: Zeroizing<Vec<u8>>,
    mac: hmac::Key,
}

impl RootKeys {
    /// Runs Argon2id over the passphrase; `None` when the stored parameters are unusable.
    pub(crate) fn derive(passphrase: &Passphrase, kdf: &KdfParams) -> Option<Self> {
        if kdf.algorithm != "argon2id" {
            return None;
        }
        let salt = B64.decode(&kdf.salt).ok()?;
        let params = Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32)).ok()?;
        let mut root = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, root.as_mut())
            .ok()?;
        let encrypt = hkdf_sha256(root.as_ref(), b"pgseal/keystore/v1", &[b"encrypt"]);
        let mac_bytes = hkdf_sha256(root.as_ref(), b"pgseal/keystore/v1", &[b"mac"]);
        Some(RootKeys {
            encrypt,
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_bytes),
        })
    }

    pub(crate) fn make_verifier(&self) -> String {
        B64.encode(seal_random_nonce(
            &self.encrypt,
            VERIFIER_AAD,
            VERIFIER_TEXT,
        ))
    }

    pub(crate) fn check_verifier(&self, verifier: &str) -> bool {
        B64.decode(verifier)
            .ok()
            .and_then(|sealed| open_random_nonce(&self.encrypt, VERIFIER_AAD, &sealed))
            .is_some_and(|text| text.as_slice() == VERIFIER_TEXT)
    }

    fn mac_input(format: u32, kdf: &KdfParams, verifier: &str, body: &StoreBody) -> Vec<u8> {
        serde_json::to_vec(&(format, kdf, verifier, body)).expect("the store serialises")
    }

    pub(crate) fn mac(
        &self,
        format: u32,
        kdf: &KdfParams,
        verifier: &str,
        body: &StoreBody,
    ) -> String {
        B64.encode(hmac::sign(&self.mac, &Self::mac_input(format, kdf, verifier, body)).as_ref())
    }

    pub(crate) fn check_mac(&self, file: &StoreFile) -> bool {
        let Ok(tag) = B64.decode(&file.mac) else {
            return false;
        };
        hmac::verify(
            &self.mac,
            &Self::mac_input(file.format, &file.kdf, &file.verifier, &file.body),
            &tag,
        )
        .is_ok()
    }

    fn material_aad(key_id: &str, version: u32) -> Vec<u8> {
        let mut aad = MATERIAL_AAD.to_vec();
        aad.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    pub(crate) fn seal_material(&self, key_id: &str, version: u32, material: &[u8]) -> String {
        B64.encode(seal_random_nonce(
            &self.encrypt,
            &Self::material_aad(key_id, version),
            material,
        ))
    }

    pub(crate) fn open_material(
        &self,
        key_id: &str,
        version: u32,
        sealed: &str,
    ) -> Option<Zeroizing<Vec<u8>>> {
        let sealed = B64.decode(sealed).ok()?;
        open_random_nonce(&self.encrypt, &Self::material_aad(key_id, version), &sealed)
    }
}
