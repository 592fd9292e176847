//! Sequences set on the other side from this side's positions, and read back.

use tokio_postgres::Client;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::stream::Stream;

/// How many sequences one statement reads at the most.
const READ_AT_ONCE: usize = 1000;

/// Sets every sequence of `from`'s database on `to`, and reads them back. However many
/// sequences there are, it takes one statement to list them and one to read them all on
/// `from` (a statement per thousand), and one to set them all on `to`: the pause grows
/// with the work, not with round trips.
async fn sync_sequences(
    database: &str,
    from: &Client,
    to: &Client,
) -> Result<Vec<SequenceSync>, EngineError> {
    // Quoted by PostgreSQL's rules on the side that holds them.
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
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut read: Vec<(i64, bool)> = Vec::with_capacity(names.len());
    for chunk in names.chunks(READ_AT_ONCE) {
        // `last_value` and `is_called` as the sequence itself holds them (a sequence
        // restarted or set with `is_called = false` keeps a value no view shows).
        let statement = chunk
            .iter()
            .enumerate()
            .map(|(i, seq)| format!("SELECT {i} AS n, last_value, is_called FROM {seq}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows: Vec<(i32, i64, bool)> = from
            .query(&format!("{statement} ORDER BY n"), &[])
            .await
            .map_err(sql("source", "reading the sequences"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        read.extend(rows.into_iter().map(|(_, value, called)| (value, called)));
    }
    let (values, called): (Vec<i64>, Vec<bool>) = read.iter().copied().unzip();
    let back: Vec<i64> = to
        .query(
            "SELECT setval(t.seq::regclass, t.value, t.called) \
             FROM unnest($1::text[], $2::int8[], $3::bool[]) WITH ORDINALITY \
                  AS t(seq, value, called, n) ORDER BY t.n",
            &[&names, &values, &called],
        )
        .await
        .map_err(sql("target", "setting the sequences"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut synced = Vec::with_capacity(names.len());
    for ((seq, (last_value, is_called)), set) in names.into_iter().zip(read).zip(back) {
        if set != last_value {
            return Err(EngineError::Precondition(format!(
                "sequence {seq} of {database} reads {set} after setting {last_value}"
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

/// [`sync_sequences`] for every stream's database, side by side (each on its own sessions:
/// `from[i]` and `to[i]` are the stream `streams[i]`'s).
pub(super) async fn sync_all_sequences(
    streams: &[Stream],
    from: &[Client],
    to: &[Client],
) -> Result<Vec<SequenceSync>, EngineError> {
    let each = streams
        .iter()
        .enumerate()
        .map(|(i, s)| sync_sequences(&s.database, &from[i], &to[i]));
    Ok(futures_util::future::try_join_all(each)
        .await?
        .into_iter()
        .flatten()
        .collect())
}
