//! What neither logical replication nor the DDL capture carries, carried by pgseal itself
//! at a switch (cutover, and rollback the other way): large objects, and the roles,
//! memberships and database properties event triggers never see (`pgseal_pg::globals`).
//!
//! Before the pause, everything is compared and carried whole ([`before_pause`]); inside
//! it, with writes fenced, only the large objects written since (found by one scan of
//! `pg_largeobject` without reading their contents again) and whatever differs in the
//! catalog of roles and settings, which is small ([`inside_pause`]). Between switches
//! the follower keeps the other side close (`follow`), so both are short.

use pgseal_pg::globals::{self, DiffOptions, Difference, Globals};
use pgseal_pg::large_objects::{self, Marks, SyncReport};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::EngineError;

/// What was carried.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Carried {
    /// Large objects copied, unlinked or given their metadata, all databases together.
    pub large_objects: LargeObjects,
    /// Roles, memberships and database properties made equal (what, never how: a
    /// statement may hold a password verifier).
    pub globals: Vec<String>,
}

impl Carried {
    /// Adds what a later pass carried.
    pub fn add(&mut self, later: Carried) {
        let (lo, more) = (&mut self.large_objects, later.large_objects);
        lo.copied += more.copied;
        lo.bytes += more.bytes;
        lo.unlinked += more.unlinked;
        lo.metadata += more.metadata;
        self.globals.extend(later.globals);
    }
}

/// [`SyncReport`] as the journal keeps it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct LargeObjects {
    /// Objects copied whole.
    pub copied: usize,
    /// Their bytes.
    pub bytes: i64,
    /// Objects unlinked.
    pub unlinked: usize,
    /// Objects given their owner, privileges or comment.
    pub metadata: usize,
}

impl From<&SyncReport> for LargeObjects {
    fn from(r: &SyncReport) -> Self {
        LargeObjects {
            copied: r.copied,
            bytes: r.bytes,
            unlinked: r.unlinked,
            metadata: r.metadata,
        }
    }
}

/// Where [`inside_pause`] starts from: each database's large-object marks on the side
/// carried from, taken by [`before_pause`].
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    marks: Vec<Marks>,
}

/// The sessions on both sides, one per database of the migration (in stream order), and
/// which side is which (`source`/`target`, for errors).
pub struct Sides<'a> {
    /// The side carried from.
    pub from: &'a [Client],
    /// Its role in errors.
    pub from_role: &'static str,
    /// The side carried to.
    pub to: &'a [Client],
    /// Its role in errors.
    pub to_role: &'static str,
    /// The databases, in the same order.
    pub databases: &'a [String],
    /// How the master users and skipped passwords are treated.
    pub options: &'a DiffOptions,
}

impl Sides<'_> {
    fn lo_error(&self, database: &str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
        let what = format!(
            "carrying the large objects of {database} from the {} to the {}",
            self.from_role, self.to_role
        );
        let role = self.to_role;
        move |source| EngineError::Sql { role, what, source }
    }

    async fn globals(&self) -> Result<Vec<Difference>, EngineError> {
        globals::sync(&self.from[0], &self.to[0], self.databases, self.options)
            .await
            .map_err(|e| {
                EngineError::Precondition(format!(
                    "carrying roles and database settings from the {} to the {}: {}",
                    self.from_role,
                    self.to_role,
                    crate::error::error_chain(&e)
                ))
            })
    }
}

fn carried(reports: &[SyncReport], globals: Vec<Difference>) -> Carried {
    Carried {
        large_objects: (&large_objects::total(reports)).into(),
        globals: globals.iter().map(Difference::summary).collect(),
    }
}

/// Carries what differs: the large objects written since `baseline` (all of them, their
/// contents read on both sides, without one), and whatever differs in roles and database
/// properties; returns what it did and the baseline for the next call.
pub async fn since(
    sides: &Sides<'_>,
    baseline: Option<&Baseline>,
) -> Result<(Carried, Baseline), EngineError> {
    // The databases side by side, each on its own sessions.
    let each = sides.databases.iter().enumerate().map(|(i, db)| {
        let (from, to) = (&sides.from[i], &sides.to[i]);
        async move {
            match baseline {
                None => large_objects::sync(from, to).await,
                Some(b) => {
                    let since = b.marks.get(i).cloned().unwrap_or_default();
                    large_objects::sync_changed(from, to, &since).await
                }
            }
            .map_err(sides.lo_error(db))
        }
    });
    let mut reports = Vec::new();
    let mut next = Baseline::default();
    for (report, marks) in futures_util::future::try_join_all(each).await? {
        reports.push(report);
        next.marks.push(marks);
    }
    let globals = sides.globals().await?;
    Ok((carried(&reports, globals), next))
}

/// Compares and carries everything (every large object's contents are read on both
/// sides); returns what it did and the baseline for [`inside_pause`].
pub async fn before_pause(sides: &Sides<'_>) -> Result<(Carried, Baseline), EngineError> {
    since(sides, None).await
}

/// Carries what changed since [`before_pause`]: the large objects written since, and
/// whatever differs in roles and database properties.
pub async fn inside_pause(sides: &Sides<'_>, baseline: &Baseline) -> Result<Carried, EngineError> {
    Ok(since(sides, Some(baseline)).await?.0)
}

/// The login roles of `from` whose password would be missing on `to` after carrying
/// (`from` cannot show its verifiers, and `to` has none), but those `skip` names; empty
/// where `to` cannot show whether a role has one.
pub fn password_gaps(from: &Globals, to: &Globals, skip: &[String]) -> Vec<String> {
    if from.passwords_readable && to.passwords_readable {
        // Carried with the rest, or the source has none either.
        return Vec::new();
    }
    if !to.passwords_readable {
        return Vec::new();
    }
    from.login_roles()
        .into_iter()
        .filter(|r| !skip.contains(&r.name) && r.name != to.session_user)
        .filter(|r| {
            to.roles
                .get(&r.name)
                .is_none_or(|t| t.has_password != Some(true))
        })
        .map(|r| r.name.clone())
        .collect()
}
