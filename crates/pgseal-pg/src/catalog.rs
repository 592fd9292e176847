//! A fingerprint of one database's catalog, and of the data no table comparison sees
//! (materialized views' rows, sequences' positions), so that two databases can be
//! compared object by object as a DBA would: every definition, privilege, comment and
//! setting, each named.
//!
//! Everything is read with plain catalog queries and PostgreSQL's own deparsers
//! (`pg_get_indexdef`, `pg_get_functiondef`, ...), in a session whose `search_path` is
//! pinned to `pg_catalog, pg_temp` (see [`crate::connect_pinned`]): every name is printed
//! schema-qualified, the same object reads the same on either side whatever a database's
//! own `search_path` says. Objects of pgseal's own schemas and triggers, of the system
//! schemas and of extensions (an extension's members are the extension's) are left out.
//!
//! Where two major versions print the same thing differently, [`compare`] normalises both
//! sides and says which normalisation it used ([`Normalisation`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// Session settings under which row text (a materialized view's rows) reads the same on
/// both sides; and no parallel workers, so each side's scan keeps to one core.
pub const SESSION: &str = "SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; \
     SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'; \
     SET max_parallel_workers_per_gather = 0";

/// What kind of object an entry of a [`Fingerprint`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// A schema: owner and privileges.
    Schema,
    /// A table, view, materialized view, sequence or foreign table: owner, persistence,
    /// row-level security, partitioning, inheritance, storage options and privileges.
    Relation,
    /// A column: type, nullability, default, identity, generation, collation, position
    /// and privileges.
    Column,
    /// A table's or domain's constraint.
    Constraint,
    /// An index, and whether it is valid.
    Index,
    /// A trigger, and whether it is enabled.
    Trigger,
    /// A rule.
    Rule,
    /// A row-level security policy.
    Policy,
    /// A view's or materialized view's definition.
    View,
    /// An enum (its labels in order), domain, composite or range type.
    Type,
    /// A function, procedure or aggregate: its definition, owner and privileges.
    Function,
    /// A comment on an object of the database.
    Comment,
    /// Default privileges.
    DefaultPrivileges,
    /// An installed extension: schema and version.
    Extension,
    /// A sequence's definition (not its position: see [`sequence_positions`]).
    Sequence,
    /// An event trigger.
    EventTrigger,
    /// Any other object made by a user (collation, statistics, operator, cast, text
    /// search configuration, foreign server, ...): that it exists. Publications and
    /// subscriptions are each side's replication plumbing (pgseal's, the platform's), not
    /// compared.
    Other,
    /// A materialized view's rows: their count and a hash of their text.
    MaterializedViewRows,
}

impl Category {
    /// Its name in output (`default privileges`, `materialized view rows`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Category::Schema => "schema",
            Category::Relation => "relation",
            Category::Column => "column",
            Category::Constraint => "constraint",
            Category::Index => "index",
            Category::Trigger => "trigger",
            Category::Rule => "rule",
            Category::Policy => "policy",
            Category::View => "view definition",
            Category::Type => "type",
            Category::Function => "function",
            Category::Comment => "comment",
            Category::DefaultPrivileges => "default privileges",
            Category::Extension => "extension",
            Category::Sequence => "sequence",
            Category::EventTrigger => "event trigger",
            Category::Other => "object",
            Category::MaterializedViewRows => "materialized view rows",
        }
    }
}

/// One database's catalog as [`read`] found it: `(category, object) -> definition`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// The server's major version (15, 17, ...).
    pub major: i32,
    /// Every object, by category and name (`index public.orders_pkey`).
    pub entries: BTreeMap<(Category, String), String>,
}

/// A normalisation [`compare`] applied because the two sides run different major
/// versions that print the same thing differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalisation {
    /// PostgreSQL 17 gives tables the `MAINTAIN` privilege (`m` in an ACL), which 15 does
    /// not have: it is left out of tables' privileges on both sides.
    MaintainPrivilege,
    /// PostgreSQL 16 and later print a view's columns without their table's name where
    /// that is unambiguous: name qualifiers are left out of view definitions on both
    /// sides.
    ViewQualifiers,
    /// An extension's version follows the server's: versions are not compared across
    /// major versions, only that the extension is there, in the same schema.
    ExtensionVersions,
}

impl Normalisation {
    /// What it does, for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Normalisation::MaintainPrivilege => {
                "tables' MAINTAIN privilege (m, new in PostgreSQL 17) left out of privileges"
            }
            Normalisation::ViewQualifiers => {
                "view definitions compared without name qualifiers (PostgreSQL 16 and later omit unambiguous ones)"
            }
            Normalisation::ExtensionVersions => {
                "extension versions not compared across major versions"
            }
        }
    }
}

/// One object that differs: what it is, and both sides' definitions (`None` where a side
/// does not have it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Its category.
    pub category: Category,
    /// The object (`index public.orders_pkey`).
    pub object: String,
    /// The source's definition.
    pub source: Option<String>,
    /// The target's definition.
    pub target: Option<String>,
}

impl Difference {
    /// One line for a person: the object and what each side has.
    pub fn summary(&self) -> String {
        match (&self.source, &self.target) {
            (Some(_), None) => format!("{}: missing on the target", self.object),
            (None, Some(_)) => format!("{}: only on the target", self.object),
            (Some(s), Some(t)) => format!("{}: source has {s}; target has {t}", self.object),
            (None, None) => self.object.clone(),
        }
    }
}

/// SQL true for a namespace `n` that holds the user's objects: not the system's, not
/// pgseal's own.
const USER_SCHEMA: &str = "(n.nspname NOT IN ('information_schema', 'pgseal_ddl', 'pgseal_validate') \
     AND n.nspname !~ '^pg_')";

/// SQL for an ACL column `acl` (NULL meaning the defaults of the object kind SQL `kind`
/// gives, `acldefault`'s letter, for owner `owner`) as its items sorted, so that grant
/// order does not matter.
fn acl(acl: &str, kind: &str, owner: &str) -> String {
    format!(
        "(SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '') \
          FROM unnest(coalesce({acl}, acldefault(({kind})::\"char\", {owner}))) x)"
    )
}

/// SQL false for an object of catalog `class` with OID `oid` that belongs to an
/// extension.
fn not_extension_member(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{class}'::regclass \
         AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// SQL true for an object (catalog `class`, OID `oid`) that `pg_identify_object` named `o`
/// and that is the user's: made by a user (OIDs from 16384 on), in a user schema or none,
/// not pgseal's, not an extension's member.
fn users_identified(class: &str, oid: &str) -> String {
    format!(
        "{oid} >= 16384 \
         AND (o.schema IS NULL OR (o.schema NOT IN ('information_schema', 'pgseal_ddl', 'pgseal_validate') \
                                   AND o.schema !~ '^pg_')) \
         AND o.identity !~ '^\"?pgseal' \
         AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = {class} AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// The catalog queries: each selects `(object, definition)` rows of one category.
fn queries() -> Vec<(Category, String)> {
    let class_member = not_extension_member("pg_class", "c.oid");
    let kind = "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' \
                WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' \
                WHEN 'f' THEN 'foreign table' END";
    let relacl = acl(
        "c.relacl",
        "CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END",
        "c.relowner",
    );
    vec![
        (
            Category::Schema,
            format!(
                "SELECT format('schema %I', n.nspname), \
                        format('owner %s; privileges %s', n.nspowner::regrole, {}) \
                 FROM pg_namespace n WHERE {USER_SCHEMA} AND {}",
                acl("n.nspacl", "'n'", "n.nspowner"),
                not_extension_member("pg_namespace", "n.oid")
            ),
        ),
        (
            Category::Relation,
            format!(
                "SELECT format('%s %I.%I', {kind}, n.nspname, c.relname), \
                        format('owner %s; persistence %s; row security %s%s; partition key %s; \
                                partition of %s %s; inherits %s; options %s; access method %s; privileges %s', \
                               c.relowner::regrole, c.relpersistence, c.relrowsecurity, \
                               CASE WHEN c.relforcerowsecurity THEN ' (forced)' ELSE '' END, \
                               CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, \
                               (SELECT i.inhparent::regclass::text FROM pg_inherits i \
                                WHERE i.inhrelid = c.oid AND c.relispartition), \
                               pg_get_expr(c.relpartbound, c.oid), \
                               (SELECT string_agg(i.inhparent::regclass::text, ',' ORDER BY i.inhseqno) \
                                FROM pg_inherits i WHERE i.inhrelid = c.oid AND NOT c.relispartition), \
                               (SELECT string_agg(o, ',' ORDER BY o) FROM unnest(c.reloptions) o), \
                               (SELECT amname FROM pg_am WHERE oid = c.relam), {relacl}) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {class_member}"
            ),
        ),
        (
            Category::Column,
            format!(
                "SELECT format('column %I.%I.%I', n.nspname, c.relname, a.attname), \
                        format('%s%s%s%s%s%s; position %s%s', format_type(a.atttypid, a.atttypmod), \
                               CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, \
                               CASE WHEN a.attgenerated = '' AND d.adbin IS NOT NULL \
                                    THEN ' default ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END, \
                               CASE a.attidentity WHEN 'a' THEN ' generated always as identity' \
                                    WHEN 'd' THEN ' generated by default as identity' ELSE '' END, \
                               CASE WHEN a.attgenerated = 's' \
                                    THEN ' generated always as (' || pg_get_expr(d.adbin, d.adrelid) || ') stored' ELSE '' END, \
                               CASE WHEN a.attcollation <> t.typcollation \
                                    THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END, \
                               row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), \
                               CASE WHEN a.attacl IS NOT NULL THEN '; privileges ' || \
                                    (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x) ELSE '' END) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
                 WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {class_member}"
            ),
        ),
        (
            Category::Constraint,
            format!(
                "SELECT format('constraint %I on %s', k.conname, \
                               coalesce(k.conrelid::regclass::text, 'domain ' || k.contypid::regtype::text)), \
                        pg_get_constraintdef(k.oid) \
                 FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
                 WHERE {USER_SCHEMA} AND {}",
                not_extension_member("pg_constraint", "k.oid")
            ),
        ),
        (
            Category::Index,
            format!(
                "SELECT format('index %I.%I', n.nspname, c.relname), \
                        pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA} AND {class_member}"
            ),
        ),
        (
            Category::Trigger,
            format!(
                "SELECT format('trigger %I on %s', t.tgname, t.tgrelid::regclass), \
                        pg_get_triggerdef(t.oid) || '; enabled ' || t.tgenabled::text \
                 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND NOT t.tgisinternal AND t.tgname !~ '^pgseal' AND {class_member}"
            ),
        ),
        (
            Category::Rule,
            format!(
                "SELECT format('rule %I on %s', r.rulename, r.ev_class::regclass), \
                        pg_get_ruledef(r.oid) || '; enabled ' || r.ev_enabled::text \
                 FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND r.rulename <> '_RETURN' AND {class_member}"
            ),
        ),
        (
            Category::Policy,
            format!(
                "SELECT format('policy %I on %s', p.polname, p.polrelid::regclass), \
                        format('%s for %s to %s using (%s) with check (%s)', \
                               CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, \
                               CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert' WHEN 'w' THEN 'update' \
                                    WHEN 'd' THEN 'delete' ELSE 'all' END, \
                               (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' \
                                                  ORDER BY 1) FROM unnest(p.polroles) r), \
                               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)) \
                 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA} AND {class_member}"
            ),
        ),
        (
            Category::View,
            format!(
                "SELECT format('%s %I.%I', {kind}, n.nspname, c.relname), \
                        pg_get_viewdef(c.oid) || CASE WHEN c.relkind = 'm' AND NOT c.relispopulated \
                                                      THEN ' (not populated)' ELSE '' END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND c.relkind IN ('v', 'm') AND {class_member}"
            ),
        ),
        (
            Category::Type,
            format!(
                "SELECT format('type %s', t.oid::regtype), \
                        CASE t.typtype \
                          WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' \
                                                     ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) || ')' \
                          WHEN 'd' THEN 'domain over ' || format_type(t.typbasetype, t.typtypmod) \
                                        || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END \
                                        || coalesce(' default ' || t.typdefault, '') \
                          WHEN 'c' THEN 'composite (' || (SELECT string_agg(quote_ident(a.attname) || ' ' \
                                            || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) \
                                            FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 \
                                              AND NOT a.attisdropped) || ')' \
                          WHEN 'r' THEN 'range of ' || (SELECT r.rngsubtype::regtype::text FROM pg_range r \
                                                        WHERE r.rngtypid = t.oid) \
                          ELSE 'base type' END \
                        || format('; owner %s; privileges %s', t.typowner::regrole, {}) \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE {USER_SCHEMA} AND t.typtype IN ('e', 'd', 'c', 'r', 'b') \
                   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
                   AND NOT (t.typtype = 'b' AND t.typcategory = 'A') AND {}",
                acl("t.typacl", "'T'", "t.typowner"),
                not_extension_member("pg_type", "t.oid")
            ),
        ),
        (
            Category::Function,
            format!(
                "SELECT format('%s %s', CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' \
                                        WHEN 'w' THEN 'window function' ELSE 'function' END, p.oid::regprocedure), \
                        CASE WHEN p.prokind = 'a' THEN \
                               (SELECT format('aggregate (state function %s, state type %s, final function %s, initial %s)', \
                                              g.aggtransfn, format_type(g.aggtranstype, NULL), g.aggfinalfn, g.agginitval) \
                                FROM pg_aggregate g WHERE g.aggfnoid = p.oid) \
                             ELSE pg_get_functiondef(p.oid) END \
                        || format('; owner %s; privileges %s', p.proowner::regrole, {}) \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE {USER_SCHEMA} AND {}",
                acl("p.proacl", "'f'", "p.proowner"),
                not_extension_member("pg_proc", "p.oid")
            ),
        ),
        (
            Category::Comment,
            // User objects' (OIDs from 16384 on), in user schemas or none, but pgseal's
            // and extensions' own.
            format!(
                "SELECT format('comment on %s %s', o.type, o.identity), d.description \
                 FROM pg_description d, LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o \
                 WHERE {}",
                users_identified("d.classoid", "d.objoid")
            ),
        ),
        (
            Category::DefaultPrivileges,
            "SELECT format('default privileges of %s%s on %s', d.defaclrole::regrole, \
                           CASE WHEN d.defaclnamespace = 0 THEN '' \
                                ELSE ' in schema ' || d.defaclnamespace::regnamespace::text END, \
                           CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' \
                                WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' \
                                ELSE d.defaclobjtype::text END), \
                    (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(d.defaclacl) x) \
             FROM pg_default_acl d"
                .to_string(),
        ),
        (
            Category::Extension,
            "SELECT format('extension %I', e.extname), \
                    format('schema %s; version %s', e.extnamespace::regnamespace, e.extversion) \
             FROM pg_extension e"
                .to_string(),
        ),
        (
            Category::Sequence,
            format!(
                "SELECT format('sequence %I.%I', n.nspname, c.relname), \
                        format('%s start %s increment %s min %s max %s cache %s%s; owned by %s', \
                               s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, \
                               CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END, \
                               (SELECT format('%s.%I', d.refobjid::regclass, a.attname) FROM pg_depend d \
                                JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1)) \
                 FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA} AND {class_member}"
            ),
        ),
        (
            Category::EventTrigger,
            "SELECT format('event trigger %I', t.evtname), \
                    format('on %s execute %s; tags %s; enabled %s; owner %s', t.evtevent, t.evtfoid::regproc, \
                           t.evttags, t.evtenabled, t.evtowner::regrole) \
             FROM pg_event_trigger t WHERE t.evtname !~ '^pgseal' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_event_trigger'::regclass \
                               AND e.objid = t.oid AND e.deptype = 'e')"
                .to_string(),
        ),
        (
            Category::Other,
            // The catalogs of other objects a user makes, by PostgreSQL's own identity.
            "SELECT format('%s %s', o.type, o.identity), '' FROM ( \
               SELECT 'pg_collation'::regclass AS class, oid FROM pg_collation UNION ALL \
               SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext UNION ALL \
               SELECT 'pg_operator'::regclass, oid FROM pg_operator UNION ALL \
               SELECT 'pg_opclass'::regclass, oid FROM pg_opclass UNION ALL \
               SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily UNION ALL \
               SELECT 'pg_cast'::regclass, oid FROM pg_cast UNION ALL \
               SELECT 'pg_conversion'::regclass, oid FROM pg_conversion UNION ALL \
               SELECT 'pg_language'::regclass, oid FROM pg_language UNION ALL \
               SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config UNION ALL \
               SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict UNION ALL \
               SELECT 'pg_foreign_data_wrapper'::regclass, oid FROM pg_foreign_data_wrapper UNION ALL \
               SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server \
             ) x, LATERAL pg_identify_object(x.class, x.oid, 0) o WHERE "
                .to_string()
                + &users_identified("x.class", "x.oid"),
        ),
    ]
}

/// Reads the connected database's catalog. The session's `search_path` must be pinned
/// (see [`crate::connect_pinned`]) for names to read the same on both sides.
pub async fn read(client: &Client) -> Result<Fingerprint, tokio_postgres::Error> {
    let major: i32 = client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await?
        .get(0);
    let mut entries = BTreeMap::new();
    for (category, query) in queries() {
        for row in client.query(&query, &[]).await? {
            let object: String = row.get(0);
            let definition: Option<String> = row.get(1);
            entries.insert((category, object), definition.unwrap_or_default());
        }
    }
    Ok(Fingerprint { major, entries })
}

/// The connected database's materialized views (populated ones) with their rows: count
/// and the XOR of a 64-bit hash of each row's text, under [`SESSION`]'s settings (which
/// the caller sets). `materialized view schema.name -> "N rows, hash H"`.
pub async fn materialized_view_rows(
    client: &Client,
) -> Result<BTreeMap<(Category, String), String>, tokio_postgres::Error> {
    let views: Vec<(String, String)> = client
        .query(
            &format!(
                "SELECT format('materialized view %I.%I', n.nspname, c.relname), \
                        format('%I.%I', n.nspname, c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND c.relkind = 'm' AND c.relispopulated AND {} ORDER BY 1",
                not_extension_member("pg_class", "c.oid")
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = BTreeMap::new();
    for (object, relation) in views {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(bit_xor(hashtextextended(t::text, 0)), 0) FROM {relation} t"
                ),
                &[],
            )
            .await?;
        let (rows, hash): (i64, i64) = (row.get(0), row.get(1));
        out.insert(
            (Category::MaterializedViewRows, object),
            format!("{rows} rows, hash {hash:016x}"),
        );
    }
    Ok(out)
}

/// The connected database's sequences and where each stands: `schema.name` (quoted as
/// needed) -> `last_value`, `None` for one never used.
pub async fn sequence_positions(
    client: &Client,
) -> Result<BTreeMap<String, Option<i64>>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT format('%I.%I', s.schemaname, s.sequencename), s.last_value FROM pg_sequences s \
             WHERE s.schemaname NOT IN ('information_schema', 'pgseal_ddl', 'pgseal_validate') \
               AND s.schemaname !~ '^pg_'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A sequence the target has behind the source (or not at all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceBehind {
    /// `schema.name`.
    pub sequence: String,
    /// The source's `last_value`.
    pub source: i64,
    /// The target's, `None` where it was never used there (or is missing).
    pub target: Option<i64>,
}

/// The sequences `target` has behind `source` (a sequence may be ahead on the target,
/// never behind).
pub fn sequences_behind(
    source: &BTreeMap<String, Option<i64>>,
    target: &BTreeMap<String, Option<i64>>,
) -> Vec<SequenceBehind> {
    source
        .iter()
        .filter_map(|(name, value)| {
            let value = (*value)?;
            let theirs = target.get(name).copied().flatten();
            (theirs.is_none_or(|t| t < value)).then(|| SequenceBehind {
                sequence: name.clone(),
                source: value,
                target: theirs,
            })
        })
        .collect()
}

/// `m` (MAINTAIN) left out of every ACL item in `definition`'s `privileges ...` part.
fn without_maintain(definition: &str) -> String {
    let Some(at) = definition.rfind("privileges ") else {
        return definition.to_string();
    };
    let (head, acl) = definition.split_at(at);
    let mut out = String::with_capacity(definition.len());
    out.push_str(head);
    // In each item `grantee=privileges/grantor`, only the privileges lose their `m`.
    let mut in_privileges = false;
    for c in acl.chars() {
        match c {
            '=' => in_privileges = true,
            '/' => in_privileges = false,
            'm' if in_privileges => continue,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `definition` without name qualifiers (`a.b` -> `b`, `"x y".b` -> `b`) outside string
/// literals.
fn without_qualifiers(definition: &str) -> String {
    let chars: Vec<char> = definition.chars().collect();
    let mut out = String::with_capacity(definition.len());
    let mut i = 0;
    let starts_identifier = |c: char| c.is_alphabetic() || c == '_' || c == '"';
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A string literal, copied as it is ('' inside it included).
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            continue;
        }
        if starts_identifier(c) && (i == 0 || !is_word(chars[i - 1])) {
            // An identifier: plain, or double-quoted with "" inside.
            let start = i;
            if c == '"' {
                i += 1;
                while i < chars.len() {
                    if chars[i] == '"' {
                        if chars.get(i + 1) == Some(&'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            } else {
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
            }
            let qualifier = chars.get(i) == Some(&'.')
                && chars.get(i + 1).is_some_and(|n| starts_identifier(*n));
            if qualifier {
                i += 1; // the identifier and its dot are left out
            } else {
                out.extend(&chars[start..i]);
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Compares two fingerprints (with any [`materialized_view_rows`] added to their
/// entries): every object that differs, and the normalisations applied because the sides
/// run different major versions (none when they run the same).
pub fn compare(
    source: &Fingerprint,
    target: &Fingerprint,
) -> (Vec<Difference>, Vec<Normalisation>) {
    let across = source.major != target.major;
    let mut used = std::collections::BTreeSet::new();
    let mut normal = |category: Category, definition: &str| -> String {
        if !across {
            return definition.to_string();
        }
        let (rule, out) = match category {
            Category::Relation => (
                Normalisation::MaintainPrivilege,
                without_maintain(definition),
            ),
            Category::View => (
                Normalisation::ViewQualifiers,
                without_qualifiers(definition),
            ),
            Category::Extension => (
                Normalisation::ExtensionVersions,
                definition
                    .split_once("; version ")
                    .map_or(definition, |(schema, _)| schema)
                    .to_string(),
            ),
            _ => return definition.to_string(),
        };
        if out != definition {
            used.insert(rule);
        }
        out
    };
    let mut differences = Vec::new();
    let keys: std::collections::BTreeSet<&(Category, String)> =
        source.entries.keys().chain(target.entries.keys()).collect();
    for key in keys {
        let (s, t) = (source.entries.get(key), target.entries.get(key));
        let equal = match (s, t) {
            (Some(s), Some(t)) => s == t || normal(key.0, s) == normal(key.0, t),
            _ => false,
        };
        if !equal {
            differences.push(Difference {
                category: key.0,
                object: key.1.clone(),
                source: s.cloned(),
                target: t.cloned(),
            });
        }
    }
    (differences, used.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintain_is_left_out_of_privileges_only() {
        assert_eq!(
            without_maintain(
                "owner maria; persistence p; privileges maria=arwdDxtm/maria,app=r/maria"
            ),
            "owner maria; persistence p; privileges maria=arwdDxt/maria,app=r/maria"
        );
        assert_eq!(
            without_maintain("owner m; privileges \"m m\"=m*/\"m m\""),
            "owner m; privileges \"m m\"=*/\"m m\""
        );
    }

    #[test]
    fn qualifiers_go_literals_stay() {
        assert_eq!(
            without_qualifiers(
                " SELECT o.id, \"my t\".\"a.b\" FROM public.orders o WHERE o.note = 'x.y'"
            ),
            " SELECT id, \"a.b\" FROM orders o WHERE note = 'x.y'"
        );
        assert_eq!(without_qualifiers("1.5 + a.b"), "1.5 + b");
    }

    #[test]
    fn sequences_may_be_ahead_never_behind() {
        let s = BTreeMap::from([
            ("a".to_string(), Some(10)),
            ("b".to_string(), Some(10)),
            ("c".to_string(), None),
            ("d".to_string(), Some(3)),
        ]);
        let t = BTreeMap::from([
            ("a".to_string(), Some(12)),
            ("b".to_string(), Some(9)),
            ("c".to_string(), None),
        ]);
        let behind: Vec<String> = sequences_behind(&s, &t)
            .into_iter()
            .map(|b| b.sequence)
            .collect();
        assert_eq!(behind, ["b", "d"]);
    }

    #[test]
    fn normalises_only_across_major_versions() {
        let entry = |major, def: &str| Fingerprint {
            major,
            entries: BTreeMap::from([(
                (Category::Relation, "table public.t".to_string()),
                def.to_string(),
            )]),
        };
        let (d, used) = compare(
            &entry(15, "privileges a=arwdDxt/a"),
            &entry(17, "privileges a=arwdDxtm/a"),
        );
        assert!(d.is_empty());
        assert_eq!(used, [Normalisation::MaintainPrivilege]);
        let (d, _) = compare(
            &entry(17, "privileges a=arwdDxt/a"),
            &entry(17, "privileges a=arwdDxtm/a"),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].summary(),
            "table public.t: source has privileges a=arwdDxt/a; target has privileges a=arwdDxtm/a"
        );
    }
}
