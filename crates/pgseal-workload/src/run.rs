//! Writing the workload.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::types::Type;

use serde::Serialize;
use tokio_postgres::{Client, Config};

use crate::ledger::{Entry, Kind, Ledger, Outcome};
use crate::{Error, SCHEMA};

/// How much to write.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Transactions per second over all clients.
    pub rate: f64,
    /// How long to write.
    pub duration: Duration,
    /// Concurrent connections.
    pub clients: usize,
    /// Set to end the run early (each client finishes its transaction first).
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Transactions whose `COMMIT` was acknowledged (all in the ledger).
    pub acknowledged: u64,
    /// Transactions whose `COMMIT` got no answer (in the ledger as uncertain).
    pub uncertain: u64,
    /// Lost connections and failed transactions; each was retried on a new connection.
    pub client_errors: u64,
    /// Acknowledged inserts, updates and deletes.
    pub inserts: u64,
    /// See `inserts`.
    pub updates: u64,
    /// See `inserts`.
    pub deletes: u64,
    /// The longest a transaction took, from `BEGIN` sent to `COMMIT` answered (ms, the
    /// client's own clock), failed and in-doubt ones included.
    pub latency_max_ms: f64,
    /// Transactions that took at least [`SLOW_MS`], oldest first (at most
    /// [`SLOW_KEPT`]): when each began on the wall clock, so that a pause seen elsewhere
    /// (a cutover) can be matched with what the clients waited.
    pub slow_transactions: Vec<SlowTransaction>,
}

/// A transaction that took at least [`SLOW_MS`].
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct SlowTransaction {
    /// When its `BEGIN` was sent, in milliseconds since the Unix epoch.
    pub began_unix_ms: u64,
    /// How long it took until `COMMIT` was answered (or it failed), in milliseconds.
    pub ms: f64,
}

/// The latency from which a transaction is listed in [`RunSummary::slow_transactions`].
pub const SLOW_MS: f64 = 10.0;

/// How many slow transactions a run lists at most (the rest only count in
/// [`RunSummary::latency_max_ms`]).
pub const SLOW_KEPT: usize = 100_000;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Latencies {
    max_ms: f64,
    slow: Vec<SlowTransaction>,
}

impl Latencies {
    fn record(&mut self, began_unix_ms: u64, ms: f64) {
        self.max_ms = self.max_ms.max(ms);
        if ms >= SLOW_MS && self.slow.len() < SLOW_KEPT {
            self.slow.push(SlowTransaction { began_unix_ms, ms });
        }
    }
}

#[derive(Default)]
struct Counters {
    acknowledged: AtomicU64,
    uncertain: AtomicU64,
    client_errors: AtomicU64,
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    latencies: Mutex<Latencies>,
}

/// Creates the workload's tables if missing, then writes at `rate` for `duration` from
/// `clients` connections, recording each finished transaction in `ledger`.
pub async fn run(
    config: &Config,
    ledger: Arc<Ledger>,
    opts: &RunOptions,
) -> Result<RunSummary, Error> {
    let setup = pgseal_pg::connect(config).await?;
    setup.batch_execute(SCHEMA).await?;
    // Ids continue above everything earlier runs wrote, so ledgers can be appended to.
    let base: i64 = setup
        .query_typed(
            "SELECT coalesce(max(txid), 0) + 1 FROM pgseal_ledger_events",
            &[],
        )
        .await?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(1);
    drop(setup);
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + opts.duration;
    let clients = opts.clients.max(1);
    let period = Duration::from_secs_f64(clients as f64 / opts.rate.max(0.001));
    let mut tasks = Vec::new();
    for client_no in 0..clients {
        let (config, ledger, counters) = (config.clone(), ledger.clone(), counters.clone());
        let stop = opts.stop.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(
                config, ledger, counters, client_no, clients, base, period, deadline, stop,
            )
            .await
        }));
    }
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(join) => tracing::warn!(%join, "a workload client panicked"),
        }
    }
    ledger.sync()?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let c = &counters;
    let mut latencies =
        std::mem::take(&mut *c.latencies.lock().expect("no client panicked holding it"));
    latencies.slow.sort_by_key(|t| t.began_unix_ms);
    Ok(RunSummary {
        acknowledged: c.acknowledged.load(Ordering::Relaxed),
        uncertain: c.uncertain.load(Ordering::Relaxed),
        client_errors: c.client_errors.load(Ordering::Relaxed),
        inserts: c.inserts.load(Ordering::Relaxed),
        updates: c.updates.load(Ordering::Relaxed),
        deletes: c.deletes.load(Ordering::Relaxed),
        latency_max_ms: latencies.max_ms,
        slow_transactions: latencies.slow,
    })
}

/// How one transaction ended.
enum TxEnd {
    Committed,
    /// The connection was lost or ended during COMMIT: it may have committed.
    InDoubt,
    /// It did not commit (an error before COMMIT, or the server refused the COMMIT).
    Failed(tokio_postgres::Error),
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    config: Config,
    ledger: Arc<Ledger>,
    counters: Arc<Counters>,
    client_no: usize,
    clients: usize,
    base: i64,
    period: Duration,
    deadline: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    // This client's acknowledged accounts, and its key-less rows not yet deleted.
    let mut accounts: Vec<i64> = Vec::new();
    let mut rows: Vec<i64> = Vec::new();
    let mut seq: i64 = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let c = match client.take() {
            Some(c) if !c.is_closed() => client.insert(c),
            lost => {
                if lost.is_some() {
                    // The server ended this session between two transactions: an
                    // application's pool finds the same on its next use, an error to it.
                    counters.client_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_no, "the connection was closed; reconnecting");
                }
                match pgseal_pg::connect(&config).await {
                    Ok(c) => client.insert(c),
                    Err(error) => {
                        counters.client_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client_no, %error, "reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let txid = base + seq * clients as i64 + client_no as i64;
        seq += 1;
        let (kind, target) = match seq % 4 {
            2 if !accounts.is_empty() => {
                (Kind::Update, accounts[(seq as usize / 4) % accounts.len()])
            }
            3 if !rows.is_empty() => (Kind::Delete, rows[0]),
            _ => (Kind::Insert, txid),
        };
        let (began, began_unix_ms) = (Instant::now(), unix_ms());
        let outcome = transaction(c, client_no, txid, kind, target).await;
        counters
            .latencies
            .lock()
            .expect("no client panicked holding it")
            .record(began_unix_ms, began.elapsed().as_secs_f64() * 1000.0);
        let entry = |outcome| Entry {
            outcome,
            txid,
            kind,
            target,
        };
        match outcome {
            TxEnd::Committed => {
                ledger.record(entry(Outcome::Acknowledged))?;
                counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                match kind {
                    Kind::Insert => {
                        accounts.push(txid);
                        rows.push(txid);
                        counters.inserts.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Update => {
                        counters.updates.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Delete => {
                        rows.retain(|r| *r != target);
                        counters.deletes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            TxEnd::InDoubt => {
                ledger.record(entry(Outcome::Uncertain))?;
                counters.uncertain.fetch_add(1, Ordering::Relaxed);
                counters.client_errors.fetch_add(1, Ordering::Relaxed);
                // A delete that may have happened is not tried again on that row.
                if kind == Kind::Delete {
                    rows.retain(|r| *r != target);
                }
                client = None;
            }
            TxEnd::Failed(error) if !is_retryable(&error) => {
                // The same statement would fail again: stop and say why.
                return Err(Error::Sql(error));
            }
            TxEnd::Failed(error) => {
                counters.client_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client_no, %error, "transaction failed; retrying on a fresh connection");
                client = None;
            }
        }
    }
    Ok(())
}

/// Errors a cutover, a fence or an operator can cause, which a new attempt may get past:
/// no answer at all (connection lost), connection exceptions (08), operator intervention
/// such as a terminated backend (57), read-only transactions under a write fence (25006),
/// rollbacks (40), exhausted resources (53) and lock timeouts (55P03). Anything else
/// (an undefined table, a violated constraint) would fail the same way again.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return true;
    };
    let code = db.code().code();
    ["08", "57", "40", "53"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "25006"
        || code == "55P03"
}

async fn transaction(
    client: &Client,
    client_no: usize,
    txid: i64,
    kind: Kind,
    target: i64,
) -> TxEnd {
    let body = async {
        client.batch_execute("BEGIN").await?;
        client
            .query_typed(
                "INSERT INTO pgseal_ledger_events (txid, client, kind, target) VALUES ($1, $2, $3, $4)",
                &[
                    (&txid, Type::INT8),
                    (&(client_no as i32), Type::INT4),
                    (&kind.as_str(), Type::TEXT),
                    (&target, Type::INT8),
                ],
            )
            .await?;
        match kind {
            Kind::Insert => {
                client
                    .query_typed(
                        "INSERT INTO pgseal_ledger_accounts (id, balance) VALUES ($1, 100)",
                        &[(&txid, Type::INT8)],
                    )
                    .await?;
                client
                    .query_typed(
                        "INSERT INTO pgseal_ledger_nokey (txid, note) VALUES ($1, 'row of ' || $1::bigint::text)",
                        &[(&txid, Type::INT8)],
                    )
                    .await?;
            }
            Kind::Update => {
                client
                    .query_typed(
                        "UPDATE pgseal_ledger_accounts SET balance = balance + 1, updated_by = $1 WHERE id = $2",
                        &[(&txid, Type::INT8), (&target, Type::INT8)],
                    )
                    .await?;
            }
            Kind::Delete => {
                client
                    .query_typed(
                        "DELETE FROM pgseal_ledger_nokey WHERE txid = $1",
                        &[(&target, Type::INT8)],
                    )
                    .await?;
            }
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    if let Err(error) = body.await {
        // Best effort: a broken connection rolls back by itself.
        let _ = client.batch_execute("ROLLBACK").await;
        return TxEnd::Failed(error);
    }
    commit(client).await
}

/// Sends `COMMIT` and says how the transaction ended. Only an `ERROR` in answer means it
/// did not commit (a deferred constraint, a serialization failure: the server rolled it
/// back and the session lives on). No answer, or a `FATAL` one (the session was ended:
/// an immediate shutdown's `SIGQUIT` can end it after its commit record was flushed), is
/// in doubt.
async fn commit(client: &Client) -> TxEnd {
    match client.batch_execute("COMMIT").await {
        Ok(()) => TxEnd::Committed,
        Err(error)
            if error
                .as_db_error()
                .is_some_and(|db| db.severity() == "ERROR") =>
        {
            TxEnd::Failed(error)
        }
        Err(_) => TxEnd::InDoubt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_refused_with_an_error_failed_and_one_whose_session_was_ended_is_in_doubt() {
        let cluster = pgseal_testkit::TestCluster::start().unwrap();
        let client = cluster.connect("postgres").await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE parent (id int PRIMARY KEY); \
                 CREATE TABLE child (id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
            )
            .await
            .unwrap();
        // The server refuses the COMMIT (the deferred key fails) and rolls it back.
        client
            .batch_execute("BEGIN; INSERT INTO child VALUES (1)")
            .await
            .unwrap();
        assert!(matches!(commit(&client).await, TxEnd::Failed(_)));

        // The session is ended with a FATAL while the transaction is open: the COMMIT
        // gets that FATAL, which says nothing of whether a commit record was written.
        let doomed = cluster.connect("postgres").await.unwrap();
        doomed
            .batch_execute("BEGIN; INSERT INTO parent VALUES (1)")
            .await
            .unwrap();
        let pid: i32 = doomed
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(commit(&doomed).await, TxEnd::InDoubt));
    }
}
