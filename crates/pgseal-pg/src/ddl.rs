//! DDL carried with the data: logical replication carries rows, not schema changes, so a
//! migration captures each DDL statement on the source and replays it on the target at
//! the same point of the stream.
//!
//! - On the source, an event trigger (`ddl_command_end`, with `sql_drop` noting what a
//!   DROP removed) writes each statement's text, command tag, objects and `search_path`
//!   into `pgseal_ddl.statements`, a table that is
//!   itself published: the row travels in the same transaction, in WAL order, as the data
//!   around it. A statement that cannot be replayed safely gets a `verdict` saying why
//!   (several statements in one query string, DDL run inside a function or a `DO` block,
//!   rows computed by a query, a rewrite `USING` an expression, a column added with a
//!   default that is not immutable or an identity, privileges and tablespaces).
//!   Publications and subscriptions are each server's own and are not captured.
//! - On the target, an `ENABLE ALWAYS` trigger on that table replays each arriving
//!   statement inside the apply worker's transaction, so it is applied exactly once (the
//!   subscription's origin advances with it) and before the rows that follow it. A row
//!   with a verdict stops the apply worker with an error that names it and the choices;
//!   `pgseal_ddl.decisions` records the user's choice (`skip`, or `applied` after doing it
//!   by hand) and the next retry goes on.
//!
//! - A full load copies its tables with PostgreSQL's tablesync workers, which DDL would
//!   race (a table's copy, then its changes from before the DDL applied onto the new
//!   shape): the source holds DDL ([`install_hold`]) from before its slot until every
//!   table is copied, and the replay is installed before the hold is lifted.
//!
//! - After a cutover the roles swap ([`capture_here`] on the target, [`install_replay`] on
//!   the source): DDL on the new primary travels back with the reverse replication, so a
//!   rollback finds the source's schema as the target's.
//!
//! Event triggers need a superuser (or RDS's `rds_superuser`); without one nothing is
//! installed and the schema fingerprint comparison remains the only check
//! ([`capture_possible`]).

use tokio_postgres::Client;

use crate::schema::varies_sql;

/// The schema pgseal keeps the capture in, on both sides.
pub const SCHEMA: &str = "pgseal_ddl";

/// The source's event trigger.
pub const EVENT_TRIGGER: &str = "pgseal_ddl_capture";

/// The source's event trigger noting what a DROP removed (`sql_drop`).
pub const DROP_TRIGGER: &str = "pgseal_ddl_drops";

/// The source's event trigger holding DDL during a full load's initial copy.
pub const HOLD_TRIGGER: &str = "pgseal_ddl_hold";

/// Every event trigger pgseal makes, by the prefix of their names.
const TRIGGER_PREFIX: &str = "pgseal_ddl_";

/// The first word of each statement of a query string (upper case; `?` for one that does
/// not start with a word), skipping quoted text, dollar-quoted bodies and comments. A
/// string of several statements fires the event trigger once for each DDL statement in
/// it; replayed whole, it would repeat any statement that is not DDL (its rows arrive by
/// replication anyway) and a `SET` would stay set in the target's apply worker.
const STATEMENT_HEADS: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.statement_heads(q text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $f$
DECLARE
  i int := 1; n int := length(q); c text; state text := 'code'; tag text;
  heads text[] := '{}'; seen boolean := false;
BEGIN
  WHILE i <= n LOOP
    c := substr(q, i, 1);
    IF state = 'code' AND NOT seen AND c !~ '[\s;]'
       AND substr(q, i, 2) NOT IN ('--', '/*') THEN
      heads := heads || upper(coalesce(substring(substr(q, i) FROM '^[A-Za-z]+'), '?'));
      seen := true;
    END IF;
    IF state = 'code' THEN
      IF c = '''' THEN
        seen := true;
        -- E'...' takes backslash escapes (a \' inside does not end it).
        IF i > 1 AND lower(substr(q, i - 1, 1)) = 'e'
           AND (i = 2 OR substr(q, i - 2, 1) !~ '[A-Za-z0-9_$]') THEN
          state := 'escaped';
        ELSE
          state := 'single';
        END IF;
      ELSIF c = '"' THEN state := 'double'; seen := true;
      ELSIF substr(q, i, 2) = '--' THEN state := 'line';
      ELSIF substr(q, i, 2) = '/*' THEN state := 'block'; i := i + 1;
      ELSIF c = '$' AND substring(substr(q, i) FROM '^\$[A-Za-z_0-9]*\$') IS NOT NULL THEN
        tag := substring(substr(q, i) FROM '^\$[A-Za-z_0-9]*\$');
        state := 'dollar'; seen := true; i := i + length(tag) - 1;
      ELSIF c = ';' THEN
        seen := false;
      ELSIF c !~ '\s' THEN seen := true;
      END IF;
    ELSIF state = 'single' THEN
      IF c = '''' THEN
        IF substr(q, i + 1, 1) = '''' THEN i := i + 1; ELSE state := 'code'; END IF;
      END IF;
    ELSIF state = 'escaped' THEN
      IF c = '\' THEN i := i + 1;
      ELSIF c = '''' THEN
        IF substr(q, i + 1, 1) = '''' THEN i := i + 1; ELSE state := 'code'; END IF;
      END IF;
    ELSIF state = 'double' THEN IF c = '"' THEN state := 'code'; END IF;
    ELSIF state = 'line' THEN IF c = E'\n' THEN state := 'code'; END IF;
    ELSIF state = 'block' THEN
      IF substr(q, i, 2) = '*/' THEN state := 'code'; i := i + 1; END IF;
    ELSIF state = 'dollar' THEN
      IF substr(q, i, length(tag)) = tag THEN state := 'code'; i := i + length(tag) - 1; END IF;
    END IF;
    i := i + 1;
  END LOOP;
  RETURN heads;
END $f$;

CREATE OR REPLACE FUNCTION pgseal_ddl.statement_count(q text) RETURNS int
LANGUAGE sql IMMUTABLE AS $f$ SELECT cardinality(pgseal_ddl.statement_heads(q)) $f$;
"#;

/// The capture table and the decisions table, as both sides have them (the target's copy
/// arrives with the snapshot; the decisions are written on the target only, but every
/// published table must exist on both sides for the reverse subscription of a rollback).
const TABLE: &str = "
CREATE SCHEMA IF NOT EXISTS pgseal_ddl;
CREATE TABLE IF NOT EXISTS pgseal_ddl.statements (
  id bigserial PRIMARY KEY,
  captured_at timestamptz NOT NULL DEFAULT now(),
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  command_tag text NOT NULL,
  object_identity text,
  search_path text NOT NULL,
  statement text NOT NULL,
  verdict text
);
CREATE TABLE IF NOT EXISTS pgseal_ddl.decisions (
  id bigint PRIMARY KEY,
  decision text NOT NULL CHECK (decision IN ('skip', 'applied')),
  decided_at timestamptz NOT NULL DEFAULT now()
);
";

/// The table (or, partitioned, its leaf partitions: what a publication lists) an object
/// identity of the capture names, itself or as a column's table; none for other objects
/// (an index changes no row). An identity that is not a name at all gives none too.
const TABLES_OF: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.tables_of(ident text) RETURNS SETOF regclass
LANGUAGE plpgsql STABLE AS $f$
DECLARE
  candidate text;
  rel regclass;
BEGIN
  FOREACH candidate IN ARRAY ARRAY[ident, regexp_replace(ident, '\.[^.]+$', '')] LOOP
    BEGIN
      rel := to_regclass(candidate);
    EXCEPTION WHEN others THEN
      rel := NULL;
    END;
    IF rel IS NOT NULL AND EXISTS (SELECT 1 FROM pg_class WHERE oid = rel AND relkind IN ('r', 'p')) THEN
      IF (SELECT relkind FROM pg_class WHERE oid = rel) = 'p' THEN
        RETURN QUERY SELECT relid FROM pg_partition_tree(rel) WHERE isleaf;
      ELSE
        RETURN NEXT rel;
      END IF;
      RETURN;
    END IF;
  END LOOP;
END $f$;
"#;

/// The source's capture function; `{varies}` is [`varies_sql`] of the column default.
const CAPTURE: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.capture() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
DECLARE
  q text := current_query();
  objects text;
  dropped text;
  verdict text;
  heads text[];
BEGIN
  -- Replication plumbing (pgseal's own at cutover, too) belongs to each server.
  IF tg_tag ~ '^(CREATE|ALTER|DROP) (SUBSCRIPTION|PUBLICATION)$' THEN
    RETURN;
  END IF;
  -- What a DROP removed, as pgseal_ddl.dropped() noted it just before (sql_drop).
  dropped := nullif(current_setting('pgseal_ddl.dropped', true), '');
  PERFORM set_config('pgseal_ddl.dropped', '', true);
  IF dropped = '-' OR EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
             WHERE schema_name IN ('pgseal_ddl', 'pgseal_validate')
                OR schema_name LIKE 'pg\_temp%' OR in_extension) THEN
    RETURN;
  END IF;
  -- A string of several DDL statements fires once per statement: capture it once.
  IF EXISTS (SELECT 1 FROM pgseal_ddl.statements
             WHERE xid = pg_current_xact_id() AND statement = q) THEN
    RETURN;
  END IF;
  SELECT string_agg(DISTINCT object_identity, ', ') INTO objects
    FROM pg_event_trigger_ddl_commands();
  -- `IF [NOT] EXISTS` that found nothing to do changed nothing to carry.
  IF objects IS NULL AND dropped IS NULL AND q ~* '\mIF\s+(NOT\s+)?EXISTS\M' THEN
    RETURN;
  END IF;
  objects := coalesce(objects, dropped);
  -- Several statements are replayed whole when each is DDL the capture carries.
  heads := pgseal_ddl.statement_heads(q);
  IF left(objects, 1) = '!' THEN
    objects := substr(objects, 2);
    verdict := 'it drops temporary objects together with others: the target has no such temporary object; drop the others there';
  ELSIF cardinality(heads) > 1 AND NOT heads <@ ARRAY['CREATE', 'ALTER', 'DROP', 'COMMENT'] THEN
    verdict := 'the query string holds several statements, not all of them DDL: replaying it would repeat the others';
  ELSIF NOT split_part(tg_tag, ' ', 1) = ANY (heads) THEN
    verdict := 'it ran inside another statement (a function, a DO block): replaying that would repeat all it did';
  ELSIF tg_tag IN ('GRANT', 'REVOKE', 'ALTER DEFAULT PRIVILEGES') OR q ~* '\mTABLESPACE\M'
        OR q ~* '\mOWNER\s+TO\M' OR q ~* '\mAUTHORIZATION\M'
        OR (tg_tag IN ('CREATE POLICY', 'ALTER POLICY') AND q ~* '\mTO\M') THEN
    verdict := 'it names roles or a tablespace, which the target has its own of (a role made on the source since the copy is not there): check them there';
  ELSIF tg_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
    verdict := 'its rows come from a query, which the target would run on its own data';
  ELSIF tg_tag = 'ALTER TABLE' AND q ~* '\mTYPE\M' AND q ~* '\mUSING\M' THEN
    verdict := 'ALTER ... TYPE ... USING rewrites every row with an expression';
  ELSIF tg_tag = 'ALTER TABLE' AND q ~* '\mADD\M' AND EXISTS (
      SELECT 1 FROM pg_event_trigger_ddl_commands() e
      JOIN pg_attribute a ON a.attrelid = e.objid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE e.classid = 'pg_class'::regclass
        AND position(lower(a.attname::text) IN lower(q)) > 0
        AND (a.attidentity <> '' OR {varies})) THEN
    verdict := 'a column added with a default that is not immutable (or an identity, or a serial) gets values computed on the target, unlike the source''s rows';
  END IF;
  INSERT INTO pgseal_ddl.statements (command_tag, object_identity, search_path, statement, verdict)
  VALUES (tg_tag, objects, current_setting('search_path'), q, verdict);
END $f$;

-- sql_drop fires before ddl_command_end, and only there are the dropped objects known:
-- it notes them for capture(), or '-' when they are temporary or pgseal's own (not
-- carried: the target has no such temporary object, and pgseal's are each side's own).
CREATE OR REPLACE FUNCTION pgseal_ddl.dropped() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
DECLARE
  noted text;
  own int;
  theirs int;
BEGIN
  SELECT count(*) FILTER (WHERE is_temporary
            OR schema_name IN ('pgseal_ddl', 'pgseal_validate')
            OR (object_type = 'schema' AND object_identity IN ('pgseal_ddl', 'pgseal_validate'))),
         count(*)
    INTO own, theirs
    FROM pg_event_trigger_dropped_objects() WHERE original;
  IF own > 0 AND own = theirs THEN
    noted := '-';
  ELSE
    SELECT string_agg(DISTINCT object_identity, ', ') INTO noted
      FROM pg_event_trigger_dropped_objects() WHERE original;
    -- Temporary objects dropped with others: the target has no such temporary object.
    IF own > 0 THEN
      noted := '!' || noted;
    END IF;
  END IF;
  PERFORM set_config('pgseal_ddl.dropped', coalesce(noted, ''), true);
END $f$;
"#;

/// The source's DDL hold while a full load's tables are copied (`{migration}`: the
/// migration's name as a literal): DDL then would race the tablesync workers (a table's
/// copy and the changes after it in the old shape, replayed onto the new), so it is
/// refused with a message saying why and until when. Temporary tables, publications and
/// pgseal's own sessions pass.
const HOLD: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.hold() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
BEGIN
  IF tg_tag ~ '^(CREATE|ALTER|DROP) (SUBSCRIPTION|PUBLICATION)$'
     OR current_setting('application_name') = 'pgseal'
     OR current_query() ~* '^\s*CREATE\s+((GLOBAL|LOCAL)\s+)?TEMP(ORARY)?\s' THEN
    RETURN;
  END IF;
  RAISE EXCEPTION 'pgseal: % is held in this database while migration % copies its tables', tg_tag, {migration}
    USING HINT = format('schema changes race the initial copy; run it once `pgseal migrate status %s` shows the copy done (DDL is carried to the target from then on), or `pgseal migrate abort %s`', {migration}, {migration});
END $f$;
"#;

/// The target's replay trigger.
const REPLAY: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.replay() RETURNS trigger
LANGUAGE plpgsql AS $f$
DECLARE
  chosen text;
  stmt text := NEW.statement;
  rel regclass;
BEGIN
  SELECT decision INTO chosen FROM pgseal_ddl.decisions WHERE id = NEW.id;
  IF chosen IS NOT NULL THEN
    RETURN NEW;
  END IF;
  IF NEW.verdict IS NOT NULL THEN
    RAISE EXCEPTION 'pgseal: captured DDL % (%) is not replayed: %', NEW.id, NEW.command_tag, NEW.verdict
      USING HINT = format('apply it on the target by hand, then `pgseal migrate ddl MIGRATION --apply %s`; or `--skip %s` to leave it out', NEW.id, NEW.id);
  END IF;
  -- The apply worker runs in a transaction: no CONCURRENTLY there.
  IF NEW.command_tag IN ('CREATE INDEX', 'DROP INDEX', 'REINDEX') THEN
    stmt := regexp_replace(stmt, '\mCONCURRENTLY\M', '', 'gi');
  END IF;
  PERFORM set_config('search_path', NEW.search_path, true);
  BEGIN
    EXECUTE stmt;
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'pgseal: captured DDL % (%) failed on this side: %', NEW.id, NEW.command_tag, SQLERRM
      USING HINT = format('make it succeed or do its work here by hand, then `pgseal migrate ddl MIGRATION --apply %s`; or `--skip %s` to leave it out', NEW.id, NEW.id);
  END;
  -- A validation's row log on a table the statement changed names its key columns as they
  -- were (a renamed key would stop the apply): dropped. The cutover wants that table
  -- validated again, which logs it anew.
  FOR rel IN SELECT DISTINCT t FROM unnest(string_to_array(NEW.object_identity, ', ')) o,
                  pgseal_ddl.tables_of(o) t LOOP
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'pgseal_changes') THEN
      EXECUTE format('DROP TRIGGER pgseal_changes ON %s', rel);
    END IF;
  END LOOP;
  RETURN NEW;
END $f$;
DROP TRIGGER IF EXISTS replay ON pgseal_ddl.statements;
CREATE TRIGGER replay BEFORE INSERT ON pgseal_ddl.statements
  FOR EACH ROW EXECUTE FUNCTION pgseal_ddl.replay();
ALTER TABLE pgseal_ddl.statements ENABLE ALWAYS TRIGGER replay;
"#;

/// Whether the connected role may create event triggers: a superuser, or on RDS and
/// Aurora a member of `rds_superuser` (the master user), which AWS lets make them.
pub async fn capture_possible(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT rolsuper OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_superuser' \
                    AND pg_has_role(current_user, r.oid, 'member')) \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0))
}

/// Whether the connected database has an event trigger named `name`.
async fn event_trigger_exists(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_event_trigger WHERE evtname = $1",
            &[&name],
        )
        .await?
        .is_some())
}

/// Installs the capture in the connected (source) database, idempotently. False (and
/// nothing made) when the role cannot create event triggers.
pub async fn install_capture(client: &Client) -> Result<bool, tokio_postgres::Error> {
    if !capture_possible(client).await? {
        return Ok(false);
    }
    let capture = CAPTURE.replace("{varies}", &varies_sql("pg_get_expr(d.adbin, d.adrelid)"));
    client
        .batch_execute(&format!("{TABLE}{STATEMENT_HEADS}{TABLES_OF}{capture}"))
        .await?;
    for (name, event, function) in [
        (DROP_TRIGGER, "sql_drop", "dropped"),
        (EVENT_TRIGGER, "ddl_command_end", "capture"),
    ] {
        if !event_trigger_exists(client, name).await? {
            client
                .batch_execute(&format!(
                    "CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION pgseal_ddl.{function}()"
                ))
                .await?;
        }
    }
    Ok(true)
}

/// Holds DDL in the connected (source) database while migration `migration` copies its
/// tables (see [`HOLD`]), idempotently; false (nothing made) without the privilege.
pub async fn install_hold(client: &Client, migration: &str) -> Result<bool, tokio_postgres::Error> {
    if !capture_possible(client).await? {
        return Ok(false);
    }
    let literal = crate::replication::quote_literal(migration);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA}; {}",
            HOLD.replace("{migration}", &literal)
        ))
        .await?;
    if !event_trigger_exists(client, HOLD_TRIGGER).await? {
        client
            .batch_execute(&format!(
                "CREATE EVENT TRIGGER {HOLD_TRIGGER} ON ddl_command_start EXECUTE FUNCTION pgseal_ddl.hold()"
            ))
            .await?;
    }
    Ok(true)
}

/// Lifts the DDL hold in the connected (source) database; true when there was one.
pub async fn lift_hold(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let held = held(client).await?;
    client
        .batch_execute(&format!("DROP EVENT TRIGGER IF EXISTS {HOLD_TRIGGER}"))
        .await?;
    Ok(held)
}

/// Whether DDL is held in the connected database.
pub async fn held(client: &Client) -> Result<bool, tokio_postgres::Error> {
    event_trigger_exists(client, HOLD_TRIGGER).await
}

/// Makes the connected target database replay what arrives in the capture table (and
/// capture or hold nothing itself: its event triggers, copied with a snapshot, are
/// disabled); a no-op where the source had no capture.
pub async fn install_replay(client: &Client) -> Result<bool, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(false);
    }
    let disable: String = pgseal_triggers(client)
        .await?
        .iter()
        .map(|t| format!("ALTER EVENT TRIGGER {t} DISABLE; "))
        .collect();
    client.batch_execute(&format!("{disable}{REPLAY}")).await?;
    Ok(true)
}

/// Makes the connected database the capturing side where it was the replaying one: after
/// a cutover, the target, whose DDL the reverse replication then carries back to the
/// source for a rollback. Its capture's event triggers are made (a full load's target has
/// none) or enabled, its replay trigger dropped, and the id sequence set past every row
/// captured so far. False (nothing done) where no capture is installed or the role cannot
/// make event triggers.
pub async fn capture_here(client: &Client) -> Result<bool, tokio_postgres::Error> {
    if !installed(client).await? || !install_capture(client).await? {
        return Ok(false);
    }
    client
        .batch_execute(&format!(
            "ALTER EVENT TRIGGER {DROP_TRIGGER} ENABLE; ALTER EVENT TRIGGER {EVENT_TRIGGER} ENABLE; \
             DROP TRIGGER IF EXISTS replay ON {SCHEMA}.statements; \
             SELECT setval(pg_get_serial_sequence('{SCHEMA}.statements', 'id'), \
                           greatest((SELECT max(id) FROM {SCHEMA}.statements), 1))"
        ))
        .await?;
    Ok(true)
}

/// pgseal's event triggers in the connected database (capture, drops, hold), their names
/// quoted.
async fn pgseal_triggers(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT quote_ident(evtname) FROM pg_event_trigger WHERE starts_with(evtname, $1)",
            &[&TRIGGER_PREFIX],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Whether the connected database has the capture table.
pub async fn installed(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'pgseal_ddl' AND c.relname = 'statements'",
            &[],
        )
        .await?
        .is_some())
}

/// Removes the event triggers and the capture schema from the connected database. True
/// when there was something to remove.
pub async fn remove(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let triggers = pgseal_triggers(client).await?;
    let schema = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&SCHEMA])
        .await?
        .is_some();
    let drops: String = triggers
        .iter()
        .map(|t| format!("DROP EVENT TRIGGER IF EXISTS {t}; "))
        .collect();
    client
        .batch_execute(&format!("{drops}DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    Ok(schema || !triggers.is_empty())
}

/// The number of the last statement captured in the connected (source) database; 0 when
/// none was (or the capture is not installed).
pub async fn last_id(client: &Client) -> Result<i64, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(max(id), 0) FROM pgseal_ddl.statements",
            &[],
        )
        .await?
        .get(0))
}

/// The tables (`schema.table`, as publications list them) of the statements `which`
/// (`$1` in a condition on `s.id`) made or changed, as the connected database has them now.
async fn tables_of_statements(
    client: &Client,
    which: &str,
    id: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT n.nspname || '.' || c.relname \
                 FROM pgseal_ddl.statements s \
                 CROSS JOIN LATERAL unnest(string_to_array(s.object_identity, ', ')) o \
                 CROSS JOIN LATERAL pgseal_ddl.tables_of(o) t \
                 JOIN pg_class c ON c.oid = t JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {which} ORDER BY 1"
            ),
            &[&id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tables that statements captured after number `after` in the connected (source)
/// database made or changed: what a validation must compare again before it vouches for
/// them. Dropped tables and other objects (indexes, functions) are not among them.
pub async fn touched_tables(
    client: &Client,
    after: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(Vec::new());
    }
    tables_of_statements(client, "s.id > $1", after).await
}

/// The tables captured statement `id` made or changed, as the connected (capturing)
/// database has them now.
pub async fn statement_tables(
    client: &Client,
    id: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    tables_of_statements(client, "s.id = $1", id).await
}

/// One captured statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Captured {
    /// Its number, in capture order.
    pub id: i64,
    /// Its command tag (`ALTER TABLE`, ...).
    pub command_tag: String,
    /// The objects it made or changed, as PostgreSQL names them.
    pub object_identity: Option<String>,
    /// Its text as the client sent it.
    pub statement: String,
    /// Why it is not replayed by itself, if it is not.
    pub verdict: Option<String>,
}

/// The statements captured in the connected (source) database, oldest first.
pub async fn captured(client: &Client) -> Result<Vec<Captured>, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id, command_tag, object_identity, statement, verdict \
             FROM pgseal_ddl.statements ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Captured {
            id: r.get(0),
            command_tag: r.get(1),
            object_identity: r.get(2),
            statement: r.get(3),
            verdict: r.get(4),
        })
        .collect())
}

/// The ids the connected target database has applied (the rows that arrived) and the
/// user's decisions by id.
pub async fn applied(
    client: &Client,
) -> Result<
    (
        std::collections::BTreeSet<i64>,
        std::collections::BTreeMap<i64, String>,
    ),
    tokio_postgres::Error,
> {
    if !installed(client).await? {
        return Ok(Default::default());
    }
    let arrived = client
        .query("SELECT id FROM pgseal_ddl.statements", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let decided = client
        .query("SELECT id, decision FROM pgseal_ddl.decisions", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((arrived, decided))
}

/// Records the user's `decision` (`skip` or `applied`) on statement `id` in the connected
/// target database.
pub async fn decide(client: &Client, id: i64, decision: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgseal_ddl.decisions (id, decision) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET decision = EXCLUDED.decision, decided_at = now()",
            &[&id, &decision],
        )
        .await?;
    Ok(())
}

/// Tables publication `publication` publishes on the source (`source`) that subscription
/// `subscription` on the target (`target`) does not know yet: tables created on the
/// source since, whose rows come only once the subscription is refreshed.
pub async fn unsubscribed(
    source: &Client,
    target: &Client,
    publication: &str,
    subscription: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let published = crate::replication::published_tables(source, publication).await?;
    let known: std::collections::BTreeSet<String> = target
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_subscription_rel r \
             JOIN pg_subscription s ON s.oid = r.srsubid \
             JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE s.subname = $1",
            &[&subscription],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(published
        .into_iter()
        .filter(|t| !known.contains(t))
        .collect())
}

/// Makes subscription `subscription` learn of the publication's new tables, copying
/// their rows (then streaming them: nothing is lost or doubled).
pub async fn refresh(target: &Client, subscription: &str) -> Result<(), tokio_postgres::Error> {
    target
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
            crate::replication::quote_ident(subscription)
        ))
        .await
}
