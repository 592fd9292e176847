//! Checking a database against a ledger.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tokio_postgres::Config;

use crate::Error;
use crate::ledger::{Entry, Kind, Outcome};

/// At most this many ids of each kind of discrepancy are listed.
const LISTED: usize = 20;

/// The verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Acknowledged transactions in the ledger.
    pub acknowledged: u64,
    /// Uncertain transactions in the ledger (either outcome is fine).
    pub uncertain: u64,
    /// Acknowledged transactions, or effects of them, not in the database.
    pub missing: u64,
    /// Effects applied more than once.
    pub duplicated: u64,
    /// Committed events no client acknowledged and none left uncertain.
    pub unexpected: u64,
    /// Up to 20 transaction ids behind `missing`.
    pub missing_ids: Vec<i64>,
    /// Up to 20 transaction (or account) ids behind `duplicated`.
    pub duplicated_ids: Vec<i64>,
    /// Up to 20 ids behind `unexpected`.
    pub unexpected_ids: Vec<i64>,
}

impl Verification {
    /// True when nothing is missing, duplicated or unexpected.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

fn note(count: &mut u64, ids: &mut Vec<i64>, id: i64, n: u64) {
    *count += n;
    if ids.len() < LISTED {
        ids.push(id);
    }
}

/// Compares the database behind `config` with the ledger `entries`.
pub async fn verify(config: &Config, entries: &[Entry]) -> Result<Verification, Error> {
    let client = pgseal_pg::connect(config).await?;
    let events: HashSet<i64> = client
        .query_typed("SELECT txid FROM pgseal_ledger_events", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let balances: HashMap<i64, i64> = client
        .query_typed("SELECT id, balance FROM pgseal_ledger_accounts", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let nokey: HashMap<i64, i64> = client
        .query_typed(
            "SELECT txid, count(*) FROM pgseal_ledger_nokey GROUP BY txid",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut v = Verification::default();
    let known: HashSet<i64> = entries.iter().map(|e| e.txid).collect();
    // Per account: acknowledged and uncertain updates; per key-less row: deleted or maybe.
    let mut updates: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut deleted: HashSet<i64> = HashSet::new();
    let mut maybe_deleted: HashSet<i64> = HashSet::new();
    for e in entries {
        let acknowledged = e.outcome == Outcome::Acknowledged;
        if acknowledged {
            v.acknowledged += 1;
        } else {
            v.uncertain += 1;
        }
        match (e.kind, acknowledged) {
            (Kind::Update, true) => updates.entry(e.target).or_default().0 += 1,
            (Kind::Update, false) => updates.entry(e.target).or_default().1 += 1,
            (Kind::Delete, true) => {
                deleted.insert(e.target);
            }
            (Kind::Delete, false) => {
                maybe_deleted.insert(e.target);
            }
            (Kind::Insert, _) => {}
        }
    }
    for e in entries
        .iter()
        .filter(|e| e.outcome == Outcome::Acknowledged)
    {
        if !events.contains(&e.txid) {
            note(&mut v.missing, &mut v.missing_ids, e.txid, 1);
            continue;
        }
        if e.kind == Kind::Insert {
            if !balances.contains_key(&e.txid) {
                note(&mut v.missing, &mut v.missing_ids, e.txid, 1);
            }
            let rows = nokey.get(&e.txid).copied().unwrap_or(0);
            let expected_gone = deleted.contains(&e.txid);
            match (rows, expected_gone) {
                (0, false) if !maybe_deleted.contains(&e.txid) => {
                    note(&mut v.missing, &mut v.missing_ids, e.txid, 1)
                }
                (n, true) if n > 0 => note(&mut v.missing, &mut v.missing_ids, e.txid, 1),
                (n, false) if n > 1 => note(
                    &mut v.duplicated,
                    &mut v.duplicated_ids,
                    e.txid,
                    (n - 1) as u64,
                ),
                _ => {}
            }
        }
    }
    for (account, (acked, maybe)) in &updates {
        let Some(balance) = balances.get(account) else {
            continue; // the insert itself is reported missing
        };
        let applied = balance - 100;
        if applied < *acked {
            note(
                &mut v.missing,
                &mut v.missing_ids,
                *account,
                (acked - applied) as u64,
            );
        } else if applied > acked + maybe {
            note(
                &mut v.duplicated,
                &mut v.duplicated_ids,
                *account,
                (applied - acked - maybe) as u64,
            );
        }
    }
    let mut extra: Vec<i64> = events
        .iter()
        .filter(|t| !known.contains(t))
        .copied()
        .collect();
    extra.sort_unstable();
    for t in extra {
        note(&mut v.unexpected, &mut v.unexpected_ids, t, 1);
    }
    Ok(v)
}
