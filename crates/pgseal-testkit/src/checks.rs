//! What the tests check the same way everywhere: one value read over SQL, and the ledger
//! workload's verdict.

use tokio_postgres::types::FromSqlOwned;

/// The first column of the one row `sql` returns, on `client`; panics (the test fails)
/// with the statement when it cannot be read.
pub async fn scalar<T: FromSqlOwned>(client: &tokio_postgres::Client, sql: &str) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Asserts a ledger verdict (`pgseal workload verify --json`): every acknowledged
/// transaction there once (`acknowledged` of them, when given), nothing else. `context`
/// names what was verified in the failure.
pub fn assert_ledger_whole(verdict: &serde_json::Value, acknowledged: Option<u64>, context: &str) {
    let counts = ["missing", "duplicated", "unexpected"].map(|k| verdict[k].as_u64());
    assert_eq!(counts, [Some(0); 3], "{context}: {verdict}");
    if let Some(n) = acknowledged {
        assert_eq!(
            verdict["acknowledged"].as_u64(),
            Some(n),
            "{context}: {verdict}"
        );
    }
}
