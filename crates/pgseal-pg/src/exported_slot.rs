//! A logical replication slot made on the replication protocol with its snapshot exported
//! (`CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT 'export')`): every commit
//! before the slot's consistent point is in that snapshot, and every later one comes
//! through the slot. A copy read under the snapshot (`SET TRANSACTION SNAPSHOT` in a
//! `REPEATABLE READ` transaction) and replication from the slot meet exactly, nothing
//! lost or doubled.
//!
//! The snapshot lives as long as the session that made the slot. That session is a `psql`
//! child (libpq speaks the walsender's protocol; tokio-postgres 0.7 cannot open such a
//! connection), given only libpq's environment (its password there, never on its command
//! line) and held open until [`ExportedSlot::release`] or drop.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio_postgres::Config;

use crate::Lsn;
use crate::connect::libpq_env;

/// Why a slot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The slot's name is not one PostgreSQL allows.
    #[error("'{0}' is not a slot name: lowercase letters, digits and '_', at most 63")]
    BadName(String),
    /// `psql` could not be started or spoken to.
    #[error("running psql for the replication session: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused, or answered what was not a slot.
    #[error("the server did not make slot {slot}: {answer}")]
    Refused {
        /// The slot.
        slot: String,
        /// What psql printed (the server's error).
        answer: String,
    },
}

/// A slot made with its snapshot exported, the snapshot held open.
#[derive(Debug)]
pub struct ExportedSlot {
    /// The slot's name.
    pub slot: String,
    /// The slot's consistent point: commits from here on come through it.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
    stdin: Option<ChildStdin>,
    child: Child,
}

impl ExportedSlot {
    /// Ends the session that holds the snapshot (the slot stays); waits for it to go.
    pub async fn release(mut self) -> Result<(), ExportError> {
        drop(self.stdin.take());
        self.child.wait().await?;
        Ok(())
    }
}

/// Makes logical slot `slot` (plugin `pgoutput`) on the server and database `config`
/// names, with `psql` from `psql`, and returns it with its exported snapshot held open.
pub async fn create_exported_slot(
    psql: &Path,
    config: &Config,
    slot: &str,
) -> Result<ExportedSlot, ExportError> {
    if slot.is_empty()
        || slot.len() > 63
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ExportError::BadName(slot.to_string()));
    }
    let mut child = Command::new(psql)
        .env_clear()
        .envs(libpq_env(config))
        // The connection string names only the protocol: the rest comes from libpq's
        // environment. `-w`: never ask for a password on the terminal.
        .args(["-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg("replication=database")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(
            format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export');\n")
                .as_bytes(),
        )
        .await?;
    stdin.flush().await?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .await?;
    // slot_name|consistent_point|snapshot_name|output_plugin
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    let parsed = match fields[..] {
        [name, point, snapshot, _] if name == slot && !snapshot.is_empty() => point
            .parse::<Lsn>()
            .ok()
            .map(|point| (point, snapshot.to_string())),
        _ => None,
    };
    let Some((consistent_point, snapshot)) = parsed else {
        drop(stdin);
        let out = child.wait_with_output().await?;
        let answer = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ExportError::Refused {
            slot: slot.to_string(),
            answer: if answer.is_empty() {
                line.trim().to_string()
            } else {
                answer
            },
        });
    };
    Ok(ExportedSlot {
        slot: slot.to_string(),
        consistent_point,
        snapshot,
        stdin: Some(stdin),
        child,
    })
}
