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
//! - A full load copies its tables under its slot's exported snapshot, which DDL would
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
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
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
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$ SELECT cardinality(pgseal_ddl.statement_heads(q)) $f$;
"#;

/// The capture table and the decisions table, as both sides have them (the target's copy
/// arrives with the snapshot; the decisions are written on the target only, but every
/// published table must exist on both sides for the reverse subscription of a rollback).
/// Nobody but its owner may read or write them: the capture writes through
/// `pgseal_ddl.record`, which every role may call and which decides what is written.
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
ALTER TABLE pgseal_ddl.statements
  ADD COLUMN IF NOT EXISTS role text,
  ADD COLUMN IF NOT EXISTS conforming_strings boolean NOT NULL DEFAULT true,
  ADD COLUMN IF NOT EXISTS roles jsonb,
  ADD COLUMN IF NOT EXISTS replay text;
CREATE TABLE IF NOT EXISTS pgseal_ddl.decisions (
  id bigint PRIMARY KEY,
  decision text NOT NULL CHECK (decision IN ('skip', 'applied')),
  decided_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON ALL TABLES IN SCHEMA pgseal_ddl FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgseal_ddl FROM PUBLIC;
GRANT USAGE ON SCHEMA pgseal_ddl TO PUBLIC;
";

/// The table (or, partitioned, its leaf partitions: what a publication lists) an object
/// identity of the capture names, itself or as a column's table; none for other objects
/// (an index changes no row). An identity that is not a name at all gives none too.
const TABLES_OF: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.tables_of(ident text) RETURNS SETOF regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
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

/// The roles of the connected server (every role but PostgreSQL's predefined `pg_*`
/// ones) as the replay makes a missing one: attributes, the password's verifier where
/// the capture's owner may read it (never a plaintext password: PostgreSQL keeps none),
/// and memberships. A captured statement carries them, so that one naming (or run by) a
/// role made since the copy finds it on the other side.
const ROLES: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.roles() RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
DECLARE
  secret text := 'NULL::text';
  out jsonb;
BEGIN
  IF has_table_privilege('pg_catalog.pg_authid', 'SELECT') THEN
    secret := '(SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid)';
  END IF;
  EXECUTE format($q$
    SELECT jsonb_agg(jsonb_build_object(
             'name', r.rolname, 'superuser', r.rolsuper, 'inherit', r.rolinherit,
             'createrole', r.rolcreaterole, 'createdb', r.rolcreatedb, 'login', r.rolcanlogin,
             'replication', r.rolreplication, 'bypassrls', r.rolbypassrls,
             'connlimit', r.rolconnlimit, 'valid_until', r.rolvaliduntil, 'password', %s,
             'member_of', (SELECT coalesce(jsonb_agg(jsonb_build_object('role', g.rolname,
                              'admin', m.admin_option) ORDER BY g.rolname), '[]')
                           FROM pg_catalog.pg_auth_members m
                           JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid))
           ORDER BY r.rolname)
    FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_'$q$, secret) INTO out;
  RETURN out;
END $f$;
REVOKE ALL ON FUNCTION pgseal_ddl.roles() FROM PUBLIC;
"#;

/// The source's capture. `pgseal_ddl.capture()` runs as whoever ran the DDL (so it can
/// see their `search_path` and role) and hands only those to `pgseal_ddl.record`, which
/// runs as pgseal's role with a pinned `search_path` and decides all else from
/// PostgreSQL's own event-trigger data. `{varies}` is [`varies_sql`] of a column default.
///
/// What is not captured, and why:
/// - commands PostgreSQL collects nothing for: those run inside another command that
///   PostgreSQL keeps out of the collection (`REFRESH MATERIALIZED VIEW CONCURRENTLY`'s
///   temporary diff tables; the refresh itself is captured) and no-ops
///   (`IF [NOT] EXISTS` that found nothing to do);
/// - temporary objects, pgseal's own schemas, and what an extension's script runs;
/// - replication plumbing (publications, subscriptions: each server's own) and physical
///   maintenance (`REINDEX`, `CLUSTER`: the other side's storage is its own).
const CAPTURE: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.capture() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pgseal_ddl.record(tg_tag, pg_catalog.current_setting('search_path'),
                            pg_catalog.current_setting('standard_conforming_strings') = 'on',
                            current_user::text);
END $f$;

CREATE OR REPLACE FUNCTION pgseal_ddl.has_rows(rel regclass) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
DECLARE
  found boolean;
BEGIN
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', rel) INTO found;
  RETURN found;
END $f$;

-- A table made from a query (CREATE TABLE AS, SELECT INTO) as a plain CREATE TABLE: its
-- rows reach the other side with the subscription's copy of the new table.
CREATE OR REPLACE FUNCTION pgseal_ddl.table_of_query(rel regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
  SELECT format('CREATE TABLE %s (%s)', rel,
           string_agg(format('%I %s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                             CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                                  THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END),
                      ', ' ORDER BY a.attnum))
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$f$;

CREATE OR REPLACE FUNCTION pgseal_ddl.record(tag text, path text, conforming boolean, who text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
DECLARE
  q text := current_query();
  objects text;
  collected int;
  dropped text;
  verdict text;
  replay text;
  heads text[];
  made regclass;
  secret boolean := false;
BEGIN
  -- A password in the query text (a role made in the same string as DDL) is never kept
  -- in clear: the role reaches the other side with its verifier instead.
  IF q ~* '\mPASSWORD\s+E?''' THEN
    q := regexp_replace(q, '(\mPASSWORD\s+)(E?''([^'']|'''')*'')', '\1''***''', 'gi');
    secret := true;
  END IF;
  -- Replication plumbing (pgseal's own at cutover, too) belongs to each server; the
  -- other side's storage is its own.
  IF tag ~ '^(CREATE|ALTER|DROP) (SUBSCRIPTION|PUBLICATION)$' OR tag IN ('REINDEX', 'CLUSTER') THEN
    RETURN;
  END IF;
  -- What a DROP removed, as pgseal_ddl.dropped() noted it just before (sql_drop).
  dropped := nullif(current_setting('pgseal_ddl.dropped', true), '');
  PERFORM set_config('pgseal_ddl.dropped', '', true);
  SELECT count(*), string_agg(DISTINCT object_identity, ', ') INTO collected, objects
    FROM pg_event_trigger_ddl_commands();
  -- Nothing collected and nothing dropped: a command run inside another one that
  -- PostgreSQL keeps out of the collection, or one that changed nothing.
  IF collected = 0 AND dropped IS NULL THEN
    RETURN;
  END IF;
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
  objects := coalesce(objects, dropped);
  -- Replayed as the role that ran it, which pgseal's role could become here.
  IF who IS NULL OR NOT pg_has_role(session_user, who, 'MEMBER') THEN
    who := session_user;
  END IF;
  -- Several statements are replayed whole when each is DDL the capture carries.
  heads := pgseal_ddl.statement_heads(q);
  -- (A password in the query text was never kept: see above.)
  IF secret THEN
    verdict := 'it sets a password, which pgseal does not keep in clear (the role reaches the target with its password''s verifier): run the rest on the target by hand';
  ELSIF left(objects, 1) = '!' THEN
    objects := substr(objects, 2);
    verdict := 'it drops temporary objects together with others: the target has no such temporary object; drop the others there';
  ELSIF cardinality(heads) > 1 AND NOT heads <@ ARRAY['CREATE', 'ALTER', 'DROP', 'COMMENT', 'GRANT', 'REVOKE'] THEN
    verdict := 'the query string holds several statements, not all of them DDL: replaying it would repeat the others';
  ELSIF NOT split_part(tag, ' ', 1) = ANY (heads) THEN
    verdict := 'it ran inside another statement (a function, a DO block): replaying that would repeat all it did';
  ELSIF q ~* '\mTABLESPACE\M' THEN
    verdict := 'it names a tablespace, which the target has its own of: check it there';
  ELSIF tag = 'ALTER TABLE' AND q ~* '\mADD\M' AND EXISTS (
      SELECT 1 FROM pg_event_trigger_ddl_commands() e
      JOIN pg_attribute a ON a.attrelid = e.objid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE e.classid = 'pg_class'::regclass
        -- The column this statement adds: its name right after ADD [COLUMN].
        AND q ~* ('\mADD\s+(COLUMN\s+)?(IF\s+NOT\s+EXISTS\s+)?"?'
                  || regexp_replace(a.attname, '([^A-Za-z0-9_])', '\\\1', 'g') || '($|[\s"])')
        AND (a.attidentity <> '' OR {varies})
        AND pgseal_ddl.has_rows(e.objid)
        -- A table made in this transaction reaches the other side with its rows, by
        -- the subscription's copy once it learns of it: nothing computed there.
        AND NOT EXISTS (SELECT 1 FROM pgseal_ddl.statements s
                        WHERE s.xid = pg_current_xact_id()
                          AND s.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
                          AND e.object_identity = ANY (string_to_array(s.object_identity, ', ')))) THEN
    verdict := 'a column added to a table with rows, with a default that is not immutable (or an identity, or a serial), gets values computed on the target, unlike the source''s rows';
  ELSIF tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
    SELECT e.objid::regclass INTO made FROM pg_event_trigger_ddl_commands() e
      WHERE e.classid = 'pg_class'::regclass AND e.object_type = 'table' LIMIT 1;
    IF made IS NOT NULL THEN
      replay := pgseal_ddl.table_of_query(made);
    END IF;
  END IF;
  INSERT INTO pgseal_ddl.statements
    (command_tag, object_identity, search_path, statement, verdict, role, conforming_strings, roles, replay)
  VALUES (tag, objects, path, q, verdict, who, conforming, pgseal_ddl.roles(), replay);
END $f$;
REVOKE ALL ON FUNCTION pgseal_ddl.record(text, text, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgseal_ddl.record(text, text, boolean, text) TO PUBLIC;

-- sql_drop fires before ddl_command_end, and only there are the dropped objects known:
-- it notes them for capture(), or '-' when they are temporary or pgseal's own (not
-- carried: the target has no such temporary object, and pgseal's are each side's own).
CREATE OR REPLACE FUNCTION pgseal_ddl.dropped() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
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
/// migration's name as a literal): DDL then would race the copy (a table's
/// copy and the changes after it in the old shape, replayed onto the new), so it is
/// refused with a message saying why and until when. Temporary tables, publications and
/// pgseal's own sessions pass.
const HOLD: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.hold() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
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

/// The target's replay trigger, and the roles a replayed statement needs.
///
/// Each statement runs as the role that ran it on the source (so `"$user"` in its
/// `search_path` and the owner of what it makes are the source's), with that session's
/// `search_path` and `standard_conforming_strings`; roles made on the source since the
/// copy are made first, from the definitions the statement carries. A statement
/// PostgreSQL refuses inside a transaction (`CONCURRENTLY`) is run without it: the apply
/// worker runs in one.
const REPLAY: &str = r#"
CREATE OR REPLACE FUNCTION pgseal_ddl.ensure_roles(defs jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
DECLARE
  r jsonb;
  m jsonb;
BEGIN
  FOR r IN SELECT value FROM jsonb_array_elements(coalesce(defs, '[]')) LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r->>'name') THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I WITH %s %s %s %s %s %s %s CONNECTION LIMIT %s%s%s',
          r->>'name',
          CASE WHEN (r->>'superuser')::boolean THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END,
          CASE WHEN (r->>'inherit')::boolean THEN 'INHERIT' ELSE 'NOINHERIT' END,
          CASE WHEN (r->>'createrole')::boolean THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END,
          CASE WHEN (r->>'createdb')::boolean THEN 'CREATEDB' ELSE 'NOCREATEDB' END,
          CASE WHEN (r->>'login')::boolean THEN 'LOGIN' ELSE 'NOLOGIN' END,
          CASE WHEN (r->>'replication')::boolean THEN 'REPLICATION' ELSE 'NOREPLICATION' END,
          CASE WHEN (r->>'bypassrls')::boolean THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END,
          (r->>'connlimit')::int,
          CASE WHEN r->>'valid_until' IS NOT NULL THEN format(' VALID UNTIL %L', r->>'valid_until') ELSE '' END,
          CASE WHEN r->>'password' IS NOT NULL THEN format(' PASSWORD %L', r->>'password') ELSE '' END);
      EXCEPTION WHEN others THEN
        -- Another stream made it meanwhile, or this platform forbids an attribute: the
        -- statement that needs it says so if it still fails.
        RAISE WARNING 'pgseal: role % was not made here: %', r->>'name', SQLERRM;
      END;
    END IF;
  END LOOP;
  FOR r IN SELECT value FROM jsonb_array_elements(coalesce(defs, '[]')) LOOP
    FOR m IN SELECT value FROM jsonb_array_elements(coalesce(r->'member_of', '[]')) LOOP
      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = m->>'role')
         AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r->>'name')
         AND NOT pg_has_role(r->>'name', m->>'role', 'MEMBER') THEN
        BEGIN
          EXECUTE format('GRANT %I TO %I%s', m->>'role', r->>'name',
                         CASE WHEN (m->>'admin')::boolean THEN ' WITH ADMIN OPTION' ELSE '' END);
        EXCEPTION WHEN others THEN
          RAISE WARNING 'pgseal: role % was not made a member of %: %', r->>'name', m->>'role', SQLERRM;
        END;
      END IF;
    END LOOP;
  END LOOP;
END $f$;
REVOKE ALL ON FUNCTION pgseal_ddl.ensure_roles(jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgseal_ddl.replay() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $f$
DECLARE
  chosen text;
  stmt text := coalesce(NEW.replay, NEW.statement);
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
  PERFORM pgseal_ddl.ensure_roles(NEW.roles);
  BEGIN
    PERFORM pg_catalog.set_config('search_path', NEW.search_path, true);
    PERFORM pg_catalog.set_config('standard_conforming_strings',
                                  CASE WHEN NEW.conforming_strings THEN 'on' ELSE 'off' END, true);
    IF NEW.role IS NOT NULL THEN
      PERFORM pg_catalog.set_config('role', NEW.role, true);
    END IF;
    BEGIN
      EXECUTE stmt;
    EXCEPTION WHEN active_sql_transaction THEN
      -- CONCURRENTLY (CREATE/DROP INDEX, REINDEX, DETACH PARTITION) cannot run in the
      -- apply worker's transaction; the plain form does the same there.
      EXECUTE pg_catalog.regexp_replace(stmt, '\mCONCURRENTLY\M', '', 'gi');
    END;
    -- (search_path and standard_conforming_strings come back with the function's own.)
    PERFORM pg_catalog.set_config('role', 'none', true);
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

/// What the capture gives a verdict (the target's apply stops on it until the user
/// decides, `pgseal migrate ddl`): what cannot be replayed as it ran. Everything else DDL
/// does is replayed in its place in the stream.
pub const STOPS: [&str; 6] = [
    "a query string that mixes DDL with other statements (replaying it would repeat them)",
    "DDL run inside a function or a DO block (replaying the call would repeat all it did)",
    "a statement naming a tablespace (the target has its own)",
    "a column added to a table that has rows, with a default that is not immutable, an identity or a serial (the target would compute other values)",
    "a DROP of temporary objects together with others",
    "a query string that sets a password (pgseal does not keep it in clear; the role itself is carried with its verifier)",
];

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

/// Installs the capture in the connected (source) database, idempotently, in one
/// transaction. False (and nothing made) when the role cannot create event triggers.
/// Installing again (a resumed step, the swap after a cutover) captures nothing of its
/// own: the capture's triggers are off for that transaction only, which no other session
/// ever sees (catalog changes show at commit).
pub async fn install_capture(client: &Client) -> Result<bool, tokio_postgres::Error> {
    install_capture_with(client, true).await
}

/// [`install_capture`], with the event triggers it makes left on (`enable_new`) or off.
async fn install_capture_with(
    client: &Client,
    enable_new: bool,
) -> Result<bool, tokio_postgres::Error> {
    if !capture_possible(client).await? {
        return Ok(false);
    }
    let enabled = enabled_triggers(client).await?;
    let mut sql = String::from("BEGIN;\n");
    sql.push_str(&alter_triggers(&enabled, "DISABLE"));
    sql.push_str(TABLE);
    sql.push_str(STATEMENT_HEADS);
    sql.push_str(TABLES_OF);
    sql.push_str(ROLES);
    sql.push_str(&CAPTURE.replace("{varies}", &varies_sql("pg_get_expr(d.adbin, d.adrelid)")));
    for (name, event, function) in [
        (DROP_TRIGGER, "sql_drop", "dropped"),
        (EVENT_TRIGGER, "ddl_command_end", "capture"),
    ] {
        if !event_trigger_exists(client, name).await? {
            sql.push_str(&format!(
                "CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION pgseal_ddl.{function}();\n"
            ));
            if !enable_new {
                sql.push_str(&format!("ALTER EVENT TRIGGER {name} DISABLE;\n"));
            }
        }
    }
    sql.push_str(&alter_triggers(&enabled, "ENABLE"));
    sql.push_str("COMMIT;");
    client.batch_execute(&sql).await?;
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
    if !prepare_replay(client).await? {
        return Ok(false);
    }
    replay_now(client).await?;
    Ok(true)
}

/// Makes the connected database the capturing side where it was the replaying one: after
/// a cutover, the target, whose DDL the reverse replication then carries back to the
/// source for a rollback. Its capture's event triggers are made (a full load's target has
/// none) or enabled, its replay trigger dropped, and the id sequence set past every row
/// captured so far. False (nothing done) where no capture is installed or the role cannot
/// make event triggers.
pub async fn capture_here(client: &Client) -> Result<bool, tokio_postgres::Error> {
    if !prepare_capture(client).await? {
        return Ok(false);
    }
    capture_now(client).await?;
    Ok(true)
}

/// The first half of [`capture_here`], for a switch that must hold as little as possible:
/// the capture installed with its event triggers off, so the connected database still only
/// replays. [`capture_now`] then makes it capture, in one statement string. False
/// (nothing done) where no capture is installed or the role cannot make event triggers.
pub async fn prepare_capture(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(installed(client).await? && install_capture_with(client, false).await?)
}

/// The second half of [`capture_here`], after [`prepare_capture`]: the capture's event
/// triggers on, the replay trigger dropped and the id sequence set past every row
/// captured so far, in one implicit transaction.
pub async fn capture_now(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "ALTER EVENT TRIGGER {DROP_TRIGGER} ENABLE; ALTER EVENT TRIGGER {EVENT_TRIGGER} ENABLE; \
             DROP TRIGGER IF EXISTS replay ON {SCHEMA}.statements; \
             SELECT setval(pg_get_serial_sequence('{SCHEMA}.statements', 'id'), \
                           greatest((SELECT max(id) FROM {SCHEMA}.statements), 1))"
        ))
        .await
}

/// The first half of [`install_replay`], for a switch that must hold as little as
/// possible: the replay installed with its trigger off, so the connected database still
/// captures (and its captured rows replay nothing here). [`replay_now`] then makes it
/// replay, in one statement string. False (nothing done) where no capture is installed.
pub async fn prepare_replay(client: &Client) -> Result<bool, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(false);
    }
    // The capture is off for this transaction only (one query string is one implicit
    // transaction, and catalog changes show at commit): it would otherwise capture the
    // replay's own GRANTs, which name no schema it could skip.
    let enabled = enabled_triggers(client).await?;
    client
        .batch_execute(&format!(
            "{}{REPLAY}ALTER TABLE {SCHEMA}.statements DISABLE TRIGGER replay;\n{}",
            alter_triggers(&enabled, "DISABLE"),
            alter_triggers(&enabled, "ENABLE")
        ))
        .await?;
    Ok(true)
}

/// pgseal's event triggers that are on in the connected database, their names quoted:
/// what a transaction that must capture nothing of its own turns off and on again.
async fn enabled_triggers(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT quote_ident(evtname) FROM pg_event_trigger \
             WHERE starts_with(evtname, $1) AND evtenabled = 'O'",
            &[&TRIGGER_PREFIX],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `ALTER EVENT TRIGGER t DISABLE` (or `ENABLE`, `to`) for each of `triggers` (quoted).
fn alter_triggers(triggers: &[String], to: &str) -> String {
    triggers
        .iter()
        .map(|t| format!("ALTER EVENT TRIGGER {t} {to};\n"))
        .collect()
}

/// The second half of [`install_replay`], after [`prepare_replay`]: pgseal's event
/// triggers off and the replay trigger on, in one implicit transaction.
pub async fn replay_now(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "DO $pgseal$ DECLARE t text; BEGIN \
               FOR t IN SELECT quote_ident(evtname) FROM pg_event_trigger \
                        WHERE starts_with(evtname, {prefix}) LOOP \
                 EXECUTE 'ALTER EVENT TRIGGER ' || t || ' DISABLE'; \
               END LOOP; \
             END $pgseal$; \
             ALTER TABLE {SCHEMA}.statements ENABLE ALWAYS TRIGGER replay",
            prefix = crate::sql::quote_literal(TRIGGER_PREFIX),
        ))
        .await
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

/// The number of the last captured statement the connected database holds (on a
/// replaying side: the last one replayed, whose row arrives in the transaction that ran
/// it); `None` where no capture is installed, `Some(0)` where none arrived yet.
pub async fn held_id(client: &Client) -> Result<Option<i64>, tokio_postgres::Error> {
    // One round trip (it runs inside cutover's pause), and no error in the server's log
    // where the capture is missing: the table is read only where it exists
    // (`query_to_xml` runs its query when called, which `CASE` does only then).
    let messages = client
        .simple_query(
            "SELECT CASE WHEN to_regclass('pgseal_ddl.statements') IS NOT NULL THEN \
               (xpath('/row/m/text()', query_to_xml( \
                  'SELECT coalesce(max(id), 0) AS m FROM pgseal_ddl.statements', \
                  false, true, '')))[1]::text END",
        )
        .await?;
    Ok(messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    }))
}

/// The number of the last statement captured in the connected (source) database; 0 when
/// none was (or the capture is not installed).
pub async fn last_id(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(held_id(client).await?.unwrap_or(0))
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

/// The first statement captured in the connected `source` database that the apply on
/// `target` stops on: one with a verdict (not replayed by itself) that has not arrived
/// there and that the user has not decided on.
pub async fn stopped(
    source: &Client,
    target: &Client,
) -> Result<Option<Captured>, tokio_postgres::Error> {
    let captured = captured(source).await?;
    if captured.iter().all(|c| c.verdict.is_none()) {
        return Ok(None);
    }
    let (arrived, decided) = applied(target).await?;
    Ok(captured
        .into_iter()
        .find(|c| c.verdict.is_some() && !arrived.contains(&c.id) && !decided.contains_key(&c.id)))
}
