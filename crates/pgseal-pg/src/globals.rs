//! What a server holds beside its databases' contents and what logical replication and
//! the DDL capture do not carry: roles (attributes, password verifiers, role-wide
//! settings, comments), role memberships, and each migrated database's own properties
//! (owner, privileges, connection limit, comment, `ALTER DATABASE ... SET` and
//! `ALTER ROLE ... IN DATABASE ... SET`). Event triggers never fire for these, so a role
//! the application's team makes during a migration, or a setting put on the database,
//! would be missing on the other side after a switch.
//!
//! [`read`] takes both sides' view, [`diff`] says what differs with the statement that
//! makes the other side match, and [`sync`] runs those statements until nothing differs.
//! Passwords travel as the verifiers PostgreSQL keeps (`SCRAM-SHA-256$...`, never a
//! plaintext password) and only where the session may read `pg_authid`; a statement that
//! carries one is never shown ([`Difference::statement`] is not serialised).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use crate::replication::{quote_ident, quote_literal};

/// Roles a platform keeps for itself, on every side alike: PostgreSQL's predefined ones and
/// RDS's and Aurora's own.
const MANAGED_ROLES: &str =
    "^(pg_.*|rds_.*|rdsadmin|rdsrepladmin|rdstopmgr|aurora_.*|rds_superuser)$";

/// Settings whose value is a list of names, each quoted on its own when set again (as
/// `pg_dump` does for them).
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// One role as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    /// Its name.
    pub name: String,
    /// `SUPERUSER`, `INHERIT`, `CREATEROLE`, `CREATEDB`, `LOGIN`, `REPLICATION`,
    /// `BYPASSRLS`, each with `NO` when not granted, in that order.
    pub attributes: Vec<String>,
    /// `CONNECTION LIMIT`.
    pub connection_limit: i32,
    /// `VALID UNTIL`, in UTC; `None` for never (no date, or `infinity`: a role cannot be
    /// given back no date, and both mean the same).
    pub valid_until: Option<String>,
    /// The password's verifier; `None` where it cannot be read or there is none (see
    /// [`Globals::passwords_readable`]). Never serialised.
    #[serde(skip)]
    pub password: Option<String>,
    /// Whether it has a password, where that can be read.
    pub has_password: Option<bool>,
    /// Its role-wide settings (`name=value`), sorted.
    pub settings: Vec<String>,
    /// Its comment.
    pub comment: Option<String>,
}

/// One database's own properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseProps {
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// Its privileges as `grantee:PRIVILEGE[*]` (`*` with grant option; `PUBLIC` for
    /// everyone), sorted; the defaults when none were granted.
    pub privileges: Vec<String>,
    /// `CONNECTION LIMIT`.
    pub connection_limit: i32,
    /// Its comment.
    pub comment: Option<String>,
    /// `ALTER DATABASE ... SET` (`name=value`), sorted.
    pub settings: Vec<String>,
    /// `ALTER ROLE ... IN DATABASE ... SET`, by role.
    pub role_settings: BTreeMap<String, Vec<String>>,
    /// Security labels (`provider:label`), sorted.
    pub labels: Vec<String>,
}

/// What one side holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Globals {
    /// Roles by name, but for the platform's own.
    pub roles: BTreeMap<String, Role>,
    /// Memberships as (role, member) with the admin option.
    pub memberships: BTreeMap<(String, String), bool>,
    /// The databases asked for, by name (those that exist).
    pub databases: BTreeMap<String, DatabaseProps>,
    /// Whether the session may read password verifiers (`pg_authid`).
    pub passwords_readable: bool,
    /// The role the session logged in as: the platform's master user.
    pub session_user: String,
}

/// What differs, with how to make the other side match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `role`, `membership` or `database`.
    pub kind: &'static str,
    /// The role, `role>member`, or database.
    pub object: String,
    /// What differs, for a person (no password or verifier).
    pub detail: String,
    /// The statement that makes the other side match. It may carry a password
    /// verifier: never shown or logged.
    #[serde(skip)]
    pub statement: String,
}

impl Difference {
    /// What differs, in one line for a person and the journal (`role app: missing`).
    pub fn summary(&self) -> String {
        format!("{} {}: {}", self.kind, self.object, self.detail)
    }
}

impl Globals {
    /// The login roles whose password cannot be read here or that have none.
    pub fn login_roles(&self) -> Vec<&Role> {
        self.roles
            .values()
            .filter(|r| r.attributes.iter().any(|a| a == "LOGIN"))
            .collect()
    }
}

/// Reads the roles, memberships and the properties of `databases` the session can see.
pub async fn read(client: &Client, databases: &[String]) -> Result<Globals, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT'), session_user::text",
            &[],
        )
        .await?;
    let (passwords_readable, session_user): (bool, String) = (row.get(0), row.get(1));
    let secret = if passwords_readable {
        "(SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid)"
    } else {
        "NULL::text"
    };
    // The rest read at once, pipelined on the one connection.
    let roles = async {
        client.query(
            &format!(
                "SELECT r.rolname::text, \
                        ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END, \
                              CASE WHEN r.rolinherit THEN 'INHERIT' ELSE 'NOINHERIT' END, \
                              CASE WHEN r.rolcreaterole THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END, \
                              CASE WHEN r.rolcreatedb THEN 'CREATEDB' ELSE 'NOCREATEDB' END, \
                              CASE WHEN r.rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END, \
                              CASE WHEN r.rolreplication THEN 'REPLICATION' ELSE 'NOREPLICATION' END, \
                              CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END], \
                        r.rolconnlimit, \
                        CASE WHEN r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity' THEN NULL \
                             WHEN NOT isfinite(r.rolvaliduntil) THEN r.rolvaliduntil::text \
                             ELSE to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' END, \
                        {secret}, \
                        coalesce((SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c \
                                  WHERE s.setdatabase = 0 AND s.setrole = r.oid), '{{}}'), \
                        shobj_description(r.oid, 'pg_authid') \
                 FROM pg_roles r WHERE r.rolname !~ $1 ORDER BY 1"
            ),
            &[&MANAGED_ROLES],
        ).await
    };
    let memberships = async {
        client
            .query(
                "SELECT g.rolname::text, m.rolname::text, bool_or(a.admin_option) \
                 FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid \
                 JOIN pg_roles m ON m.oid = a.member \
                 WHERE g.rolname !~ $1 AND m.rolname !~ $1 GROUP BY 1, 2",
                &[&MANAGED_ROLES],
            )
            .await
    };
    let props = async {
        client.query(
            "SELECT d.datname::text, pg_get_userbyid(d.datdba)::text, \
                    coalesce((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                                               ELSE pg_get_userbyid(a.grantee)::text END \
                                          || ':' || a.privilege_type \
                                          || CASE WHEN a.is_grantable THEN '*' ELSE '' END ORDER BY 1) \
                              FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a), '{}'), \
                    d.datconnlimit, shobj_description(d.oid, 'pg_database'), \
                    coalesce((SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c \
                              WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'), \
                    coalesce((SELECT array_agg(l.provider || ':' || l.label ORDER BY 1) FROM pg_shseclabel l \
                              WHERE l.objoid = d.oid AND l.classoid = 'pg_database'::regclass), '{}') \
             FROM pg_database d WHERE d.datname = ANY($1) ORDER BY 1",
            &[&databases],
        ).await
    };
    // Every database's per-role settings in one read, in each database's order.
    let role_settings = async {
        client
            .query(
                "SELECT d.datname::text, pg_get_userbyid(s.setrole)::text, c \
                 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
                      unnest(s.setconfig) c \
                 WHERE d.datname = ANY($1) AND s.setrole <> 0 ORDER BY 1, 2, 3",
                &[&databases],
            )
            .await
    };
    let (roles, memberships, props, role_settings) =
        tokio::try_join!(roles, memberships, props, role_settings)?;
    let roles = roles
        .iter()
        .map(|r| {
            let password: Option<String> = r.get(4);
            let role = Role {
                name: r.get(0),
                attributes: r.get(1),
                connection_limit: r.get(2),
                valid_until: r.get(3),
                has_password: passwords_readable.then_some(password.is_some()),
                password,
                settings: r.get(5),
                comment: r.get(6),
            };
            (role.name.clone(), role)
        })
        .collect();
    let memberships = memberships
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut by_database: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for r in &role_settings {
        by_database
            .entry(r.get(0))
            .or_default()
            .entry(r.get(1))
            .or_default()
            .push(r.get(2));
    }
    let mut props_by_name = BTreeMap::new();
    for row in &props {
        let name: String = row.get(0);
        let p = DatabaseProps {
            role_settings: by_database.remove(&name).unwrap_or_default(),
            name,
            owner: row.get(1),
            privileges: row.get(2),
            connection_limit: row.get(3),
            comment: row.get(4),
            settings: row.get(5),
            labels: row.get(6),
        };
        props_by_name.insert(p.name.clone(), p);
    }
    Ok(Globals {
        roles,
        memberships,
        databases: props_by_name,
        passwords_readable,
        session_user,
    })
}

/// How the sides' master users are treated by [`diff`].
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// The other side's master user keeps its own password (the platform set one for
    /// it); otherwise it gets the source's, as any role.
    pub keep_master_password: bool,
    /// Roles whose password the user asked not to carry.
    pub skip_passwords: Vec<String>,
}

/// A setting (`name=value`, as the catalog keeps it) as `SET name TO ...` takes it.
fn setting_clause(entry: &str) -> (String, String) {
    let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        split_list(value)
            .iter()
            .map(|v| quote_literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    };
    (
        name.to_string(),
        format!("SET {} TO {value}", quote_ident(name)),
    )
}

/// The elements of a list setting's value (`"$user", public`): split at commas outside
/// double quotes, each unquoted.
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current).trim().to_string()),
            c if !quoted && c.is_whitespace() && current.is_empty() => {}
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() || !out.is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The statements that turn settings `have` into `want` (`prefix` names what they are set
/// on: `ALTER ROLE "r"`, `ALTER DATABASE "d"`, `ALTER ROLE "r" IN DATABASE "d"`).
fn settings_changes(prefix: &str, want: &[String], have: &[String]) -> Vec<(String, String)> {
    let name = |e: &String| e.split_once('=').map_or(e.clone(), |(n, _)| n.to_string());
    let wanted: BTreeSet<String> = want.iter().map(name).collect();
    let mut out = Vec::new();
    for e in want.iter().filter(|e| !have.contains(e)) {
        let (setting, clause) = setting_clause(e);
        out.push((format!("{setting} set"), format!("{prefix} {clause}")));
    }
    for e in have.iter().map(name).filter(|n| !wanted.contains(n)) {
        out.push((
            format!("{e} reset"),
            format!("{prefix} RESET {}", quote_ident(&e)),
        ));
    }
    out
}

fn comment_statement(on: &str, comment: Option<&str>) -> String {
    format!(
        "COMMENT ON {on} IS {}",
        comment.map_or("NULL".to_string(), quote_literal)
    )
}

/// What differs between `source` and `target`, each with the statement that makes
/// `target` match. Roles first (memberships and databases name them), then memberships,
/// then databases; a role the target has and the source does not is dropped last.
pub fn diff(source: &Globals, target: &Globals, options: &DiffOptions) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |kind, object: &str, detail: String, statement: String| {
        out.push(Difference {
            kind,
            object: object.to_string(),
            detail,
            statement,
        })
    };
    let master = &target.session_user;
    for (name, want) in &source.roles {
        // Each side's master user is the platform's: its attributes are its own.
        let is_master = name == master || name == &source.session_user;
        let ident = quote_ident(name);
        // The master user keeps the password the platform gave it unless the source's
        // has one (then applications log in with that, as on the source).
        let carry_password = source.passwords_readable
            && target.passwords_readable
            && !options.skip_passwords.contains(name)
            && !(is_master && (options.keep_master_password || want.password.is_none()));
        let password_clause = |p: &Option<String>| {
            p.as_deref().map_or(" PASSWORD NULL".to_string(), |v| {
                format!(" PASSWORD {}", quote_literal(v))
            })
        };
        match target.roles.get(name) {
            None => {
                let mut statement = format!(
                    "CREATE ROLE {ident} WITH {} CONNECTION LIMIT {}",
                    want.attributes.join(" "),
                    want.connection_limit
                );
                if let Some(v) = &want.valid_until {
                    statement.push_str(&format!(" VALID UNTIL {}", quote_literal(v)));
                }
                if source.passwords_readable
                    && want.password.is_some()
                    && !options.skip_passwords.contains(name)
                {
                    statement.push_str(&password_clause(&want.password));
                }
                push("role", name, "missing".into(), statement);
                for (detail, statement) in
                    settings_changes(&format!("ALTER ROLE {ident}"), &want.settings, &[])
                {
                    push("role", name, detail, statement);
                }
                if want.comment.is_some() {
                    push(
                        "role",
                        name,
                        "comment".into(),
                        comment_statement(&format!("ROLE {ident}"), want.comment.as_deref()),
                    );
                }
            }
            Some(have) => {
                if !is_master
                    && (have.attributes != want.attributes
                        || have.connection_limit != want.connection_limit
                        || have.valid_until != want.valid_until)
                {
                    push(
                        "role",
                        name,
                        format!(
                            "attributes {} (connection limit {}, valid until {}) where the source has {} ({}, {})",
                            have.attributes.join(" "),
                            have.connection_limit,
                            have.valid_until.as_deref().unwrap_or("-"),
                            want.attributes.join(" "),
                            want.connection_limit,
                            want.valid_until.as_deref().unwrap_or("-")
                        ),
                        format!(
                            "ALTER ROLE {ident} WITH {} CONNECTION LIMIT {} VALID UNTIL {}",
                            want.attributes.join(" "),
                            want.connection_limit,
                            quote_literal(want.valid_until.as_deref().unwrap_or("infinity"))
                        ),
                    );
                }
                if carry_password && have.password != want.password {
                    push(
                        "role",
                        name,
                        "password differs".into(),
                        format!("ALTER ROLE {ident} WITH{}", password_clause(&want.password)),
                    );
                }
                for (detail, statement) in settings_changes(
                    &format!("ALTER ROLE {ident}"),
                    &want.settings,
                    &have.settings,
                ) {
                    push("role", name, detail, statement);
                }
                if have.comment != want.comment {
                    push(
                        "role",
                        name,
                        "comment".into(),
                        comment_statement(&format!("ROLE {ident}"), want.comment.as_deref()),
                    );
                }
            }
        }
    }
    for ((role, member), admin) in &source.memberships {
        let object = format!("{role}>{member}");
        match target.memberships.get(&(role.clone(), member.clone())) {
            Some(have) if have == admin => {}
            Some(_) if !admin => push(
                "membership",
                &object,
                "admin option".into(),
                format!(
                    "REVOKE ADMIN OPTION FOR {} FROM {}",
                    quote_ident(role),
                    quote_ident(member)
                ),
            ),
            _ => push(
                "membership",
                &object,
                if *admin {
                    "missing (with admin option)".into()
                } else {
                    "missing".into()
                },
                format!(
                    "GRANT {} TO {}{}",
                    quote_ident(role),
                    quote_ident(member),
                    if *admin { " WITH ADMIN OPTION" } else { "" }
                ),
            ),
        }
    }
    for (role, member) in target.memberships.keys() {
        if !source
            .memberships
            .contains_key(&(role.clone(), member.clone()))
            && source.roles.contains_key(role)
            && source.roles.contains_key(member)
        {
            push(
                "membership",
                &format!("{role}>{member}"),
                "not on the source".into(),
                format!("REVOKE {} FROM {}", quote_ident(role), quote_ident(member)),
            );
        }
    }
    for (name, want) in &source.databases {
        let Some(have) = target.databases.get(name) else {
            continue;
        };
        let ident = quote_ident(name);
        if have.owner != want.owner {
            push(
                "database",
                name,
                format!("owner {} where the source has {}", have.owner, want.owner),
                format!(
                    "ALTER DATABASE {ident} OWNER TO {}",
                    quote_ident(&want.owner)
                ),
            );
        }
        if have.connection_limit != want.connection_limit {
            push(
                "database",
                name,
                format!(
                    "connection limit {} where the source has {}",
                    have.connection_limit, want.connection_limit
                ),
                format!(
                    "ALTER DATABASE {ident} CONNECTION LIMIT {}",
                    want.connection_limit
                ),
            );
        }
        // Privileges follow the owner: compared once the owners agree.
        if have.owner == want.owner && have.privileges != want.privileges {
            for p in want
                .privileges
                .iter()
                .filter(|p| !have.privileges.contains(p))
            {
                let (grantee, privilege) = p.split_once(':').unwrap_or((p, ""));
                let grantable = privilege.ends_with('*');
                push(
                    "database",
                    name,
                    format!("privilege {p} missing"),
                    format!(
                        "GRANT {} ON DATABASE {ident} TO {}{}",
                        privilege.trim_end_matches('*'),
                        grantee_sql(grantee),
                        if grantable { " WITH GRANT OPTION" } else { "" }
                    ),
                );
            }
            for p in have
                .privileges
                .iter()
                .filter(|p| !want.privileges.contains(p))
            {
                let (grantee, privilege) = p.split_once(':').unwrap_or((p, ""));
                push(
                    "database",
                    name,
                    format!("privilege {p} not on the source"),
                    format!(
                        "REVOKE {} ON DATABASE {ident} FROM {} CASCADE",
                        privilege.trim_end_matches('*'),
                        grantee_sql(grantee)
                    ),
                );
            }
        }
        if have.comment != want.comment {
            push(
                "database",
                name,
                "comment".into(),
                comment_statement(&format!("DATABASE {ident}"), want.comment.as_deref()),
            );
        }
        for (detail, statement) in settings_changes(
            &format!("ALTER DATABASE {ident}"),
            &want.settings,
            &have.settings,
        ) {
            push("database", name, detail, statement);
        }
        let roles: BTreeSet<&String> = want
            .role_settings
            .keys()
            .chain(have.role_settings.keys())
            .collect();
        for role in roles {
            let empty = Vec::new();
            for (detail, statement) in settings_changes(
                &format!("ALTER ROLE {} IN DATABASE {ident}", quote_ident(role)),
                want.role_settings.get(role).unwrap_or(&empty),
                have.role_settings.get(role).unwrap_or(&empty),
            ) {
                push("database", name, format!("{role}: {detail}"), statement);
            }
        }
        if have.labels != want.labels {
            for l in want.labels.iter().filter(|l| !have.labels.contains(l)) {
                let (provider, label) = l.split_once(':').unwrap_or((l, ""));
                push(
                    "database",
                    name,
                    format!("security label of {provider}"),
                    format!(
                        "SECURITY LABEL FOR {} ON DATABASE {ident} IS {}",
                        quote_ident(provider),
                        quote_literal(label)
                    ),
                );
            }
        }
    }
    for name in target.roles.keys() {
        if !source.roles.contains_key(name) && name != master {
            push(
                "role",
                name,
                "not on the source".into(),
                format!("DROP ROLE {}", quote_ident(name)),
            );
        }
    }
    out
}

fn grantee_sql(grantee: &str) -> String {
    if grantee == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(grantee)
    }
}

/// A statement [`sync`] ran that the other side refused.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {object} ({detail}) could not be carried: {source}")]
pub struct SyncError {
    /// See [`Difference::kind`].
    pub kind: &'static str,
    /// See [`Difference::object`].
    pub object: String,
    /// See [`Difference::detail`].
    pub detail: String,
    /// The server's refusal.
    #[source]
    pub source: tokio_postgres::Error,
}

/// Why [`sync`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncFailure {
    /// Reading either side failed.
    #[error("reading roles and database properties: {0}")]
    Read(#[from] tokio_postgres::Error),
    /// A statement was refused.
    #[error(transparent)]
    Refused(#[from] SyncError),
}

/// Makes `target` hold what `source` holds (roles, memberships, the properties of
/// `databases`), reading both again after each round (an owner changed moves privileges)
/// until nothing differs; returns what was carried.
pub async fn sync(
    source: &Client,
    target: &Client,
    databases: &[String],
    options: &DiffOptions,
) -> Result<Vec<Difference>, SyncFailure> {
    // Both sides read at once; the target again after each round that changed it.
    let (want, mut have) = tokio::try_join!(read(source, databases), read(target, databases))?;
    let mut carried = Vec::new();
    for round in 0..3 {
        if round > 0 {
            have = read(target, databases).await?;
        }
        let differences = diff(&want, &have, options);
        if differences.is_empty() {
            break;
        }
        for d in differences {
            target
                .batch_execute(&d.statement)
                .await
                .map_err(|source| SyncError {
                    kind: d.kind,
                    object: d.object.clone(),
                    detail: d.detail.clone(),
                    source,
                })?;
            carried.push(d);
        }
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, login: bool, password: Option<&str>) -> Role {
        Role {
            name: name.into(),
            attributes: vec![
                "NOSUPERUSER".into(),
                "INHERIT".into(),
                "NOCREATEROLE".into(),
                "NOCREATEDB".into(),
                if login { "LOGIN" } else { "NOLOGIN" }.into(),
                "NOREPLICATION".into(),
                "NOBYPASSRLS".into(),
            ],
            connection_limit: -1,
            valid_until: None,
            password: password.map(String::from),
            has_password: Some(password.is_some()),
            settings: Vec::new(),
            comment: None,
        }
    }

    fn side(roles: Vec<Role>) -> Globals {
        Globals {
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
            passwords_readable: true,
            session_user: "postgres".into(),
            ..Default::default()
        }
    }

    #[test]
    fn list_settings_are_split_and_each_element_quoted() {
        assert_eq!(split_list(r#""$user", public"#), ["$user", "public"]);
        assert_eq!(
            split_list(r#"shop, "we""ird, x""#),
            ["shop", r#"we"ird, x"#]
        );
        assert_eq!(
            setting_clause(r#"search_path="$user", public"#).1,
            r#"SET "search_path" TO '$user', 'public'"#
        );
        assert_eq!(
            setting_clause("statement_timeout=5s").1,
            r#"SET "statement_timeout" TO '5s'"#
        );
    }

    #[test]
    fn a_new_role_its_membership_and_settings_are_carried_and_no_verifier_is_shown() {
        let mut app = role("app", true, Some("SCRAM-SHA-256$4096:c2FsdA==$a:b"));
        app.settings = vec!["statement_timeout=5s".into()];
        let mut source = side(vec![
            role("postgres", true, None),
            app,
            role("reader", false, None),
        ]);
        source
            .memberships
            .insert(("reader".into(), "app".into()), false);
        let mut db = DatabaseProps {
            name: "shop".into(),
            owner: "app".into(),
            privileges: vec!["PUBLIC:CONNECT".into(), "app:CONNECT".into()],
            connection_limit: -1,
            comment: None,
            settings: vec![r#"search_path=shop, public"#.into()],
            role_settings: BTreeMap::new(),
            labels: Vec::new(),
        };
        source.databases.insert("shop".into(), db.clone());
        let mut target = side(vec![role("postgres", true, Some("SCRAM-SHA-256$other"))]);
        db.settings.clear();
        db.owner = "postgres".into();
        target.databases.insert("shop".into(), db);
        let found = diff(&source, &target, &DiffOptions::default());
        let statements: Vec<&str> = found.iter().map(|d| d.statement.as_str()).collect();
        assert!(statements.contains(&r#"CREATE ROLE "app" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"#), "{statements:#?}");
        assert!(statements.contains(&r#"ALTER ROLE "app" SET "statement_timeout" TO '5s'"#));
        assert!(statements.contains(&r#"GRANT "reader" TO "app""#));
        assert!(statements.contains(&r#"ALTER DATABASE "shop" OWNER TO "app""#));
        assert!(
            statements.contains(&r#"ALTER DATABASE "shop" SET "search_path" TO 'shop', 'public'"#)
        );
        // The master user keeps its own password where the source's has none.
        assert!(
            statements
                .iter()
                .all(|s| !s.starts_with(r#"ALTER ROLE "postgres" WITH PASSWORD"#)),
            "{statements:#?}"
        );
        source.roles.get_mut("postgres").unwrap().password = Some("SCRAM-SHA-256$src".into());
        let found = diff(&source, &target, &DiffOptions::default());
        assert!(
            found.iter().any(
                |d| d.statement == r#"ALTER ROLE "postgres" WITH PASSWORD 'SCRAM-SHA-256$src'"#
            )
        );
        let kept = diff(
            &source,
            &target,
            &DiffOptions {
                keep_master_password: true,
                ..Default::default()
            },
        );
        assert!(
            kept.iter()
                .all(|d| !d.statement.contains("\"postgres\" WITH PASSWORD"))
        );
        let shown = serde_json::to_string(&found).unwrap();
        assert!(!shown.contains("SCRAM"), "{shown}");
    }

    #[test]
    fn nothing_differs_between_equal_sides() {
        let source = side(vec![
            role("postgres", true, None),
            role("app", true, Some("x")),
        ]);
        assert!(diff(&source, &source.clone(), &DiffOptions::default()).is_empty());
    }
}
