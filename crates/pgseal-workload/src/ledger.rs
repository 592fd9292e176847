//! The ledger file: one line per finished transaction, `OUTCOME TXID KIND TARGET`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::Error;

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// New event, account and key-less row.
    Insert,
    /// `balance + 1` on an earlier account.
    Update,
    /// Removal of an earlier key-less row.
    Delete,
}

impl Kind {
    /// The word used in the ledger and the events table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "insert" => Some(Kind::Insert),
            "update" => Some(Kind::Update),
            "delete" => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// How a transaction ended, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `COMMIT` was acknowledged.
    Acknowledged,
    /// The connection was lost during `COMMIT`: it may or may not have committed.
    Uncertain,
}

/// One ledger line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// How it ended.
    pub outcome: Outcome,
    /// The client-made transaction id.
    pub txid: i64,
    /// What it did.
    pub kind: Kind,
    /// The account (update) or key-less row (delete) it touched; the txid itself for inserts.
    pub target: i64,
}

/// An append-only ledger shared by the clients of one run.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl Ledger {
    /// Opens (creating or appending to) a ledger file.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Ledger {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Ledger {
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    /// Appends one finished transaction.
    pub fn record(&self, entry: Entry) -> Result<(), Error> {
        let word = match entry.outcome {
            Outcome::Acknowledged => "ok",
            Outcome::Uncertain => "uncertain",
        };
        let mut out = self.out.lock().expect("ledger lock");
        writeln!(
            out,
            "{word} {} {} {}",
            entry.txid,
            entry.kind.as_str(),
            entry.target
        )
        .map_err(|source| Error::Ledger {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Flushes and fsyncs what was recorded.
    pub fn sync(&self) -> Result<(), Error> {
        let mut out = self.out.lock().expect("ledger lock");
        out.flush()
            .and_then(|_| out.get_ref().sync_data())
            .map_err(|source| Error::Ledger {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// Reads a whole ledger. A last line cut short by a crash of the writer is ignored.
pub fn read_ledger(path: &Path) -> Result<Vec<Entry>, Error> {
    let display = path.display().to_string();
    let file = File::open(path).map_err(|source| Error::Ledger {
        path: display.clone(),
        source,
    })?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Ledger {
            path: display.clone(),
            source,
        })?;
    let mut entries = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [outcome, txid, kind, target] => {
                let outcome = match *outcome {
                    "ok" => Some(Outcome::Acknowledged),
                    "uncertain" => Some(Outcome::Uncertain),
                    _ => None,
                };
                match (outcome, txid.parse(), Kind::parse(kind), target.parse()) {
                    (Some(outcome), Ok(txid), Some(kind), Ok(target)) => Some(Entry {
                        outcome,
                        txid,
                        kind,
                        target,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match parsed {
            Some(entry) => entries.push(entry),
            None if i + 1 == lines.len() => {
                tracing::warn!(line = i + 1, "ignoring a cut-off last ledger line")
            }
            None => {
                return Err(Error::LedgerFormat {
                    path: display,
                    line: i + 1,
                    reason: format!("cannot read {line:?}"),
                });
            }
        }
    }
    Ok(entries)
}
