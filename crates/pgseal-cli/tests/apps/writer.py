"""An application's writes during a migration, through psycopg 3 and pgseal's endpoint.

Connection from the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD);
it runs as the application's own role. For WRITER_SECONDS it loops, each iteration one
transaction (autocommit off, committed at once):

- a customer with a citext e-mail, an order with toasted jsonb and bytea, an event in the
  partitioned table and a row in the key-less audit table;
- every third iteration a large object (`lo_from_bytea`, as JDBC's Blob does through the
  server's large-object functions), and every seventh one unlinked again;
- every WRITER_REFRESH_EVERY seconds `REFRESH MATERIALIZED VIEW CONCURRENTLY` of the
  dashboard, as a scheduled job runs it.

Its tables are named without a schema: the database's own `search_path` (`ALTER
DATABASE ... SET search_path`) finds them, on the source and after the switch on the
target. An error is recorded and the connection opened again; the tests expect none (a
switch is a pause, not an error). At the end it prints one JSON line: committed
transactions, refreshes, large objects made and unlinked, and every error it saw.
"""

import json
import os
import sys
import time

import psycopg

SECONDS = float(os.environ.get("WRITER_SECONDS", "20"))
REFRESH_EVERY = float(os.environ.get("WRITER_REFRESH_EVERY", "3"))
PAUSE = float(os.environ.get("WRITER_PAUSE", "0.05"))


def connect():
    # No server-side prepared statements: PgBouncer 1.18 in transaction pooling.
    return psycopg.connect(prepare_threshold=None, autocommit=False)


def main():
    conn = connect()
    done = {"transactions": 0, "refreshes": 0, "large_objects": 0, "unlinked": 0,
            "errors": []}
    started = time.monotonic()
    last_refresh = started
    i = 0
    blobs = []
    while time.monotonic() - started < SECONDS:
        i += 1
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO customers (email, name) VALUES (%s, %s) RETURNING id",
                    (f"User{i}@Example.com", f"customer {i}"),
                )
                customer = cur.fetchone()[0]
                cur.execute(
                    "INSERT INTO orders (customer_id, status, total, doc, pdf, invoice_no)"
                    " VALUES (%s, %s, %s, %s, %s, nextval('invoice_no'))",
                    (
                        customer,
                        ["new", "paid", "shipped"][i % 3],
                        i * 1.25,
                        json.dumps({"lines": [{"sku": f"s{n}", "qty": n} for n in range(300)]}),
                        bytes(range(256)) * 40,
                    ),
                )
                cur.execute(
                    "INSERT INTO events (at, kind, payload) VALUES"
                    " ('2026-12-01'::date + (%s %% 90), 'order', %s)",
                    (i, f"order of customer {customer}"),
                )
                cur.execute("INSERT INTO audit_log (what) VALUES (%s)", (f"order {i}",))
                if i % 3 == 0:
                    cur.execute(
                        "SELECT lo_from_bytea(0, %s)", (f"scan {i} ".encode() * 500,)
                    )
                    blobs.append(cur.fetchone()[0])
                    done["large_objects"] += 1
                if i % 7 == 0 and blobs:
                    cur.execute("SELECT lo_unlink(%s)", (blobs.pop(0),))
                    done["unlinked"] += 1
            conn.commit()
            done["transactions"] += 1
            if time.monotonic() - last_refresh >= REFRESH_EVERY:
                with conn.cursor() as cur:
                    cur.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY dashboard")
                conn.commit()
                done["refreshes"] += 1
                last_refresh = time.monotonic()
        except psycopg.Error as e:
            done["errors"].append(f"{type(e).__name__}: {e}".strip())
            try:
                conn.close()
            except psycopg.Error:
                pass
            time.sleep(0.2)
            conn = connect()
        time.sleep(PAUSE)
    conn.close()
    print(json.dumps(done))


if __name__ == "__main__":
    sys.exit(main())
