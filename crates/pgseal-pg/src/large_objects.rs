//! Large objects (`lo_create`, `lo_import`, JDBC `Blob`s, psycopg's `lobject`) live in the
//! system catalogs `pg_largeobject` and `pg_largeobject_metadata`, which logical
//! replication never carries: pgseal copies them itself, object by object.
//!
//! - [`inventory`] reads each object's owner, privileges, comment, size and an MD5 of its
//!   contents (read with `lo_get`, so holes read as zeros on both sides alike): what a
//!   full [`sync`] and validation compare.
//! - [`marks`] is the cheap reading: per object the number of pages, their bytes and the
//!   sum of their transaction ids, from one scan of `pg_largeobject` without hashing
//!   anything. A page written since changes its transaction id, so two readings that
//!   differ for an object say it changed in between: [`sync_changed`] copies only those,
//!   which keeps the share of a cutover's pause spent on large objects to the objects
//!   written since the sync before it.
//!
//! An object is copied whole (unlinked, made again under the same OID, written in 1 MiB
//! pieces, its owner, privileges and comment set), in transactions on the other side
//! that commit after every 64 MiB or so, so a copy cut short leaves each object whole, old
//! or new, and a cutover's pause pays one commit for its few objects, not one per object
//! (`bench/cutover`: 33 objects of 64 KiB took 111–161 ms inside the pause at one commit
//! each). Up to 16 objects are in flight at once, their reads and writes pipelined.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::Oid;

use crate::replication::{quote_ident, quote_literal};

/// The piece size objects are read and written in.
const PIECE: i32 = 1 << 20;

/// One large object's metadata: what `ALTER LARGE OBJECT`, `GRANT` and `COMMENT` set.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// Its owner.
    pub owner: String,
    /// Its privileges as `grantee:PRIVILEGE[*]`, sorted (the defaults when none were
    /// granted).
    pub privileges: Vec<String>,
    /// Whether privileges were ever granted or revoked (`lomacl` is not NULL): an object
    /// made on the other side keeps the defaults as they are otherwise.
    pub granted: bool,
    /// Its comment.
    pub comment: Option<String>,
}

/// Equal when they give the same owner, privileges and comment (however the privileges
/// came about).
impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.owner == other.owner
            && self.privileges == other.privileges
            && self.comment == other.comment
    }
}

impl Eq for Metadata {}

/// One large object as [`inventory`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Object {
    /// Its metadata.
    pub metadata: Metadata,
    /// Its size in bytes.
    pub bytes: i64,
    /// MD5 of its contents (hex).
    pub md5: String,
}

/// Per object: pages, their bytes, the sum of their transaction ids (see the module
/// documentation). An object without pages (empty) has none.
pub type Marks = BTreeMap<Oid, (i64, i64, i64)>;

/// Every large object of the connected database with its contents' digest. Reads every
/// object whole: as costly as reading `pg_largeobject` once.
pub async fn inventory(client: &Client) -> Result<BTreeMap<Oid, Object>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT m.oid, {META}, octet_length(c.data), md5(c.data) \
                 FROM pg_largeobject_metadata m CROSS JOIN LATERAL (SELECT lo_get(m.oid) AS data) c \
                 ORDER BY 1"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Object {
                    metadata: metadata_of(r, 1),
                    bytes: r.get::<_, Option<i32>>(5).map_or(0, i64::from),
                    md5: r.get(6),
                },
            )
        })
        .collect())
}

/// The metadata columns of `pg_largeobject_metadata m`: owner, privileges, comment.
const META: &str = "pg_get_userbyid(m.lomowner)::text, \
     coalesce((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                                ELSE pg_get_userbyid(a.grantee)::text END \
                           || ':' || a.privilege_type \
                           || CASE WHEN a.is_grantable THEN '*' ELSE '' END ORDER BY 1) \
               FROM aclexplode(coalesce(m.lomacl, acldefault('L', m.lomowner))) a), '{}'), \
     m.lomacl IS NOT NULL, obj_description(m.oid, 'pg_largeobject')";

fn metadata_of(row: &tokio_postgres::Row, at: usize) -> Metadata {
    Metadata {
        owner: row.get(at),
        privileges: row.get(at + 1),
        granted: row.get(at + 2),
        comment: row.get(at + 3),
    }
}

/// Every large object's metadata (a read of `pg_largeobject_metadata` only).
pub async fn metadata(client: &Client) -> Result<BTreeMap<Oid, Metadata>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT m.oid, {META} FROM pg_largeobject_metadata m ORDER BY 1"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), metadata_of(r, 1))).collect())
}

/// How many large objects the connected database has, and their bytes as stored (a
/// read of the catalogs' sizes only).
pub async fn count(client: &Client) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata), \
                    pg_total_relation_size('pg_catalog.pg_largeobject')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// See [`Marks`]: one scan of `pg_largeobject`, nothing hashed.
pub async fn marks(client: &Client) -> Result<Marks, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT loid, count(*), sum(octet_length(data))::bigint, sum(xmin::text::bigint)::bigint \
             FROM pg_largeobject GROUP BY loid",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect())
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Objects copied (new or changed).
    pub copied: usize,
    /// Their bytes.
    pub bytes: i64,
    /// Objects unlinked on the other side (gone from this one).
    pub unlinked: usize,
    /// Objects whose owner, privileges or comment were set.
    pub metadata: usize,
}

impl SyncReport {
    /// True when nothing was done.
    pub fn is_empty(&self) -> bool {
        self.copied == 0 && self.unlinked == 0 && self.metadata == 0
    }

    fn add(&mut self, other: &SyncReport) {
        self.copied += other.copied;
        self.bytes += other.bytes;
        self.unlinked += other.unlinked;
        self.metadata += other.metadata;
    }
}

/// The statements that give object `oid` on the other side `want`'s owner, privileges and
/// comment (from `have`'s, or an object just made, whose owner is the session's role).
fn metadata_statements(oid: Oid, want: &Metadata, have: Option<&Metadata>) -> Vec<String> {
    let mut out = Vec::new();
    if have.is_none_or(|h| h.owner != want.owner) {
        out.push(format!(
            "ALTER LARGE OBJECT {oid} OWNER TO {}",
            quote_ident(&want.owner)
        ));
    }
    let regrant = match have {
        Some(h) => h.privileges != want.privileges || h.owner != want.owner,
        // A new object has its owner's defaults, as the source's has unless granted.
        None => want.granted,
    };
    if regrant {
        // From nothing, then what the source grants (the owner's own entries included).
        out.push(format!(
            "REVOKE ALL ON LARGE OBJECT {oid} FROM PUBLIC, {}",
            quote_ident(&want.owner)
        ));
        if let Some(h) = have {
            for grantee in h
                .privileges
                .iter()
                .filter_map(|p| p.split_once(':').map(|(g, _)| g))
                .collect::<BTreeSet<_>>()
            {
                if grantee != "PUBLIC" && grantee != want.owner {
                    out.push(format!(
                        "REVOKE ALL ON LARGE OBJECT {oid} FROM {}",
                        quote_ident(grantee)
                    ));
                }
            }
        }
        for p in &want.privileges {
            let (grantee, privilege) = p.split_once(':').unwrap_or((p, ""));
            out.push(format!(
                "GRANT {} ON LARGE OBJECT {oid} TO {}{}",
                privilege.trim_end_matches('*'),
                if grantee == "PUBLIC" {
                    "PUBLIC".to_string()
                } else {
                    quote_ident(grantee)
                },
                if privilege.ends_with('*') {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
    }
    if have.map(|h| &h.comment) != Some(&want.comment) && (have.is_some() || want.comment.is_some())
    {
        out.push(format!(
            "COMMENT ON LARGE OBJECT {oid} IS {}",
            want.comment
                .as_deref()
                .map_or("NULL".to_string(), quote_literal)
        ));
    }
    out
}

/// How many objects are copied at once (their reads and writes pipelined on the two
/// sessions); each holds at most one [`PIECE`] in memory.
const AT_ONCE: usize = 16;

/// How many bytes one transaction of [`copy_all`] copies before it commits (a first sync
/// of many gigabytes keeps its progress in steps; a cutover's few objects take one).
const COMMIT_EVERY: i64 = 64 << 20;

/// Copies the objects `objects` (with their metadata) whole from `from` to `to`, in one
/// transaction on `to` per [`COMMIT_EVERY`] bytes, [`AT_ONCE`] objects in flight at a
/// time. Returns the bytes copied.
async fn copy_all(
    from: &Client,
    to: &Client,
    objects: &[(Oid, &Metadata)],
) -> Result<i64, tokio_postgres::Error> {
    let (mut bytes, mut uncommitted) = (0, None::<i64>);
    for chunk in objects.chunks(AT_ONCE) {
        if uncommitted.is_none() {
            to.batch_execute("BEGIN").await?;
        }
        let each = chunk
            .iter()
            .map(|(oid, meta)| copy_one(from, to, *oid, meta));
        let copied = match futures_util::future::try_join_all(each).await {
            Ok(sizes) => sizes.into_iter().sum::<i64>(),
            Err(e) => {
                let _ = to.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        bytes += copied;
        let pending = uncommitted.unwrap_or(0) + copied;
        if pending >= COMMIT_EVERY {
            to.batch_execute("COMMIT").await?;
            uncommitted = None;
        } else {
            uncommitted = Some(pending);
        }
    }
    if uncommitted.is_some() {
        to.batch_execute("COMMIT").await?;
    }
    Ok(bytes)
}

/// Copies one object whole, inside the caller's transaction on `to`; returns its bytes.
async fn copy_one(
    from: &Client,
    to: &Client,
    oid: Oid,
    meta: &Metadata,
) -> Result<i64, tokio_postgres::Error> {
    to.execute(
        "SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1",
        &[&oid],
    )
    .await?;
    to.execute("SELECT lo_create($1)", &[&oid]).await?;
    let mut offset: i64 = 0;
    loop {
        let piece: Vec<u8> = from
            .query_one("SELECT lo_get($1, $2, $3)", &[&oid, &offset, &PIECE])
            .await?
            .get(0);
        if piece.is_empty() {
            break;
        }
        to.execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &piece])
            .await?;
        offset += piece.len() as i64;
        if piece.len() < PIECE as usize {
            break;
        }
    }
    for statement in metadata_statements(oid, meta, None) {
        to.batch_execute(&statement).await?;
    }
    Ok(offset)
}

/// Copies `objects` whole from `from` to `to`, then unlinks what `from` no longer has and
/// settles the metadata of the rest (`from_meta`, `to_meta`: each side's before the
/// copy); what [`sync`] and [`sync_changed`] both end with.
async fn copy_and_settle(
    from: &Client,
    to: &Client,
    objects: &[(Oid, &Metadata)],
    from_meta: &BTreeMap<Oid, Metadata>,
    to_meta: &BTreeMap<Oid, Metadata>,
) -> Result<SyncReport, tokio_postgres::Error> {
    let mut report = SyncReport {
        bytes: copy_all(from, to, objects).await?,
        copied: objects.len(),
        ..Default::default()
    };
    let copied: BTreeSet<Oid> = objects.iter().map(|(oid, _)| *oid).collect();
    settle_metadata(to, from_meta, to_meta, &copied, &mut report).await?;
    Ok(report)
}

/// Unlinks on `to` the objects `from` does not have and sets the metadata of those both
/// have where it differs (`from_meta`, `to_meta`: each side's, `skip`: objects copied
/// whole anyway).
async fn settle_metadata(
    to: &Client,
    from_meta: &BTreeMap<Oid, Metadata>,
    to_meta: &BTreeMap<Oid, Metadata>,
    skip: &BTreeSet<Oid>,
    report: &mut SyncReport,
) -> Result<(), tokio_postgres::Error> {
    for oid in to_meta.keys().filter(|o| !from_meta.contains_key(o)) {
        to.execute("SELECT lo_unlink($1)", &[oid]).await?;
        report.unlinked += 1;
    }
    for (oid, want) in from_meta {
        if skip.contains(oid) {
            continue;
        }
        if let Some(have) = to_meta.get(oid)
            && have != want
        {
            let statements = metadata_statements(*oid, want, Some(have));
            to.batch_execute(&format!("BEGIN; {}; COMMIT", statements.join("; ")))
                .await?;
            report.metadata += 1;
        }
    }
    Ok(())
}

/// Makes the large objects of `to`'s database those of `from`'s, comparing every object's
/// contents; returns what it did and the [`marks`] of `from` taken before, for a later
/// [`sync_changed`].
pub async fn sync(
    from: &Client,
    to: &Client,
) -> Result<(SyncReport, Marks), tokio_postgres::Error> {
    let before = marks(from).await?;
    let want = inventory(from).await?;
    let have = inventory(to).await?;
    let differ: Vec<(Oid, &Metadata)> = want
        .iter()
        .filter(|(oid, object)| {
            !have
                .get(oid)
                .is_some_and(|h| h.bytes == object.bytes && h.md5 == object.md5)
        })
        .map(|(oid, object)| (*oid, &object.metadata))
        .collect();
    let from_meta = want.iter().map(|(o, w)| (*o, w.metadata.clone())).collect();
    let to_meta = have.iter().map(|(o, h)| (*o, h.metadata.clone())).collect();
    let report = copy_and_settle(from, to, &differ, &from_meta, &to_meta).await?;
    Ok((report, before))
}

/// Carries what changed on `from` since `since` (its [`marks`] then; an object
/// [`sync`] or an earlier call left equal on both sides): objects made or written since
/// are copied whole, objects gone are unlinked, metadata is compared for all. Returns what
/// it did and the marks to pass next time.
pub async fn sync_changed(
    from: &Client,
    to: &Client,
    since: &Marks,
) -> Result<(SyncReport, Marks), tokio_postgres::Error> {
    // The three reads at once (those on `from` pipelined on its connection).
    let (now, from_meta, to_meta) = tokio::try_join!(marks(from), metadata(from), metadata(to))?;
    let changed: Vec<(Oid, &Metadata)> = from_meta
        .iter()
        .filter(|(oid, _)| now.get(oid) != since.get(oid) || !to_meta.contains_key(oid))
        .map(|(oid, meta)| (*oid, meta))
        .collect();
    let report = copy_and_settle(from, to, &changed, &from_meta, &to_meta).await?;
    Ok((report, now))
}

/// What differs between two inventories, per object (for validation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LoDifference {
    /// The object's OID.
    pub oid: Oid,
    /// `missing on the target`, `not on the source`, `contents differ`, `metadata differ`.
    pub what: String,
}

/// The objects that differ between `source` and `target` ([`inventory`] of each).
pub fn compare(
    source: &BTreeMap<Oid, Object>,
    target: &BTreeMap<Oid, Object>,
) -> Vec<LoDifference> {
    let mut out = Vec::new();
    for (oid, s) in source {
        let what = match target.get(oid) {
            None => "missing on the target",
            Some(t) if t.bytes != s.bytes || t.md5 != s.md5 => "contents differ",
            Some(t) if t.metadata != s.metadata => "owner, privileges or comment differ",
            Some(_) => continue,
        };
        out.push(LoDifference {
            oid: *oid,
            what: what.to_string(),
        });
    }
    for oid in target.keys().filter(|o| !source.contains_key(o)) {
        out.push(LoDifference {
            oid: *oid,
            what: "not on the source".to_string(),
        });
    }
    out
}

/// [`SyncReport`]s of several databases added up.
pub fn total<'a>(reports: impl IntoIterator<Item = &'a SyncReport>) -> SyncReport {
    let mut sum = SyncReport::default();
    for r in reports {
        sum.add(r);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner: &str, privileges: &[&str]) -> Metadata {
        Metadata {
            owner: owner.into(),
            privileges: privileges.iter().map(|p| p.to_string()).collect(),
            granted: true,
            comment: None,
        }
    }

    #[test]
    fn metadata_is_set_from_nothing_to_what_the_source_grants() {
        let want = meta("app", &["app:SELECT", "app:UPDATE", "reader:SELECT"]);
        let have = meta("app", &["app:SELECT", "app:UPDATE", "old:SELECT*"]);
        assert_eq!(
            metadata_statements(42, &want, Some(&have)),
            [
                r#"REVOKE ALL ON LARGE OBJECT 42 FROM PUBLIC, "app""#,
                r#"REVOKE ALL ON LARGE OBJECT 42 FROM "old""#,
                r#"GRANT SELECT ON LARGE OBJECT 42 TO "app""#,
                r#"GRANT UPDATE ON LARGE OBJECT 42 TO "app""#,
                r#"GRANT SELECT ON LARGE OBJECT 42 TO "reader""#,
            ]
        );
        assert!(metadata_statements(42, &want, Some(&want)).is_empty());
        // Made anew where the source never granted anything: its owner, and the defaults.
        let defaults = Metadata {
            granted: false,
            ..meta("app", &["app:SELECT", "app:UPDATE"])
        };
        assert_eq!(
            metadata_statements(42, &defaults, None),
            [r#"ALTER LARGE OBJECT 42 OWNER TO "app""#]
        );
    }
}
