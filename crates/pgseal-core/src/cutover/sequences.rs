//! Sequences set on the other side from this side's positions, and read back.

use tokio_postgres::Client;

use super::report::*;
use crate::error::{EngineError, sql};

/// Sets every sequence of `from`'s database on `to`, and reads them back.
pub(super) async fn sync_sequences(
    database: &str,
    from: &Client,
    to: &Client,
) -> Result<Vec<SequenceSync>, EngineError> {
    let names: Vec<String> = from
        .query(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1",
            &[],
        )
        .await
        .map_err(sql("source", "listing sequences"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut synced = Vec::new();
    for seq in names {
        let row = from
            .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
            .await
            .map_err(sql("source", "reading a sequence"))?;
        let (last_value, is_called): (i64, bool) = (row.get(0), row.get(1));
        let back: i64 = to
            .query_one(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&seq, &last_value, &is_called],
            )
            .await
            .map_err(sql("target", "setting a sequence"))?
            .get(0);
        if back != last_value {
            return Err(EngineError::Precondition(format!(
                "sequence {seq} of {database} reads {back} after setting {last_value}"
            )));
        }
        synced.push(SequenceSync {
            database: database.to_string(),
            sequence: seq,
            last_value,
            is_called,
        });
    }
    Ok(synced)
}
