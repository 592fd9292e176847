//! PostgreSQL write-ahead-log positions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL position (`pg_lsn`), written `X/Y` with `X` and `Y` the high and low 32 bits in
/// hex, as PostgreSQL prints it. Ordered as positions in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an LSN (expected X/Y in hex, e.g. 0/16B3748)")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let valid =
            |p: &str| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Finds the first LSN after `marker` in `text` (e.g. `"redo done at "` in a server log).
pub fn lsn_after(text: &str, marker: &str) -> Option<Lsn> {
    text.lines().find_map(|line| {
        let rest = &line[line.find(marker)? + marker.len()..];
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '/')
            .collect();
        token.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_orders_like_postgres() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(a.0, 0x16B3748);
        assert_eq!(b.0, 1 << 32);
        assert!(a < b);
        assert_eq!(a.to_string(), "0/16B3748");
        assert_eq!(b.to_string(), "1/0");
        for bad in ["", "0", "0/", "/1", "g/1", "0/123456789", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0/16B3748\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), a);
    }

    #[test]
    fn finds_lsns_in_server_log_lines() {
        let log = "2026-11-23 LOG:  redo starts at 0/2000028\n\
                   2026-11-23 LOG:  invalid record length at 0/3000148: wanted 24, got 0\n\
                   2026-11-23 LOG:  redo done at 0/3000110 system usage: CPU: user: 0.00 s";
        assert_eq!(
            lsn_after(log, "redo done at "),
            Some("0/3000110".parse().unwrap())
        );
        assert_eq!(
            lsn_after(log, "invalid record length at "),
            Some("0/3000148".parse().unwrap())
        );
        assert_eq!(
            lsn_after(log, "consistent recovery state reached at "),
            None
        );
    }
}
