//! Encryption contexts: non-secret key/value pairs bound into every wrap.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Non-secret string pairs that must be the same when a data key is unwrapped as when it was
/// generated (as in a cloud KMS). pgseal puts what a key is for into it, e.g.
/// `pgseal:instance=orders-enc`, so a key wrapped for one purpose cannot be used for another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pair (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Parses `k=v` items, as given on a command line.
    pub fn from_pairs<I, S>(items: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ctx = Self::new();
        for item in items {
            let item = item.as_ref();
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::InvalidInput(format!("encryption context item '{item}' is not KEY=VALUE"))
            })?;
            if k.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "encryption context item '{item}' has an empty key"
                )));
            }
            ctx.0.insert(k.to_string(), v.to_string());
        }
        Ok(ctx)
    }

    /// The pairs, sorted by key.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical byte encoding bound into wraps and stream headers: a `u32` count, then
    /// per pair (sorted by key) a `u32` length and bytes of the key, then of the value; all
    /// integers big-endian. Unambiguous: no two contexts encode alike.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }

    /// Decodes [`canonical_bytes`](Self::canonical_bytes); `None` when malformed.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head)
        };
        let read_u32 = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
        let count = read_u32(take(4)?);
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let klen = read_u32(take(4)?);
            let k = String::from_utf8(take(klen)?.to_vec()).ok()?;
            let vlen = read_u32(take(4)?);
            let v = String::from_utf8(take(vlen)?.to_vec()).ok()?;
            map.insert(k, v);
        }
        let ctx = EncryptionContext(map);
        // Only the canonical form is accepted (sorted, no duplicates, nothing trailing).
        (ctx.canonical_bytes() == bytes).then_some(ctx)
    }
}

impl fmt::Display for EncryptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.pairs().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_encoding_round_trips_and_is_unambiguous() {
        let a = EncryptionContext::new().with("ab", "c");
        let b = EncryptionContext::new().with("a", "bc");
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(
            EncryptionContext::from_canonical_bytes(&a.canonical_bytes()),
            Some(a.clone())
        );
        let mut bytes = a.canonical_bytes();
        bytes.push(0);
        assert_eq!(EncryptionContext::from_canonical_bytes(&bytes), None);
        assert_eq!(EncryptionContext::from_canonical_bytes(&[0, 0]), None);
    }

    #[test]
    fn parses_command_line_pairs() {
        let ctx = EncryptionContext::from_pairs(["purpose=snapshot", "name=a=b"]).unwrap();
        assert_eq!(ctx.to_string(), "{name=a=b, purpose=snapshot}");
        assert!(EncryptionContext::from_pairs(["novalue"]).is_err());
        assert!(EncryptionContext::from_pairs(["=v"]).is_err());
    }
}
