//! Verification: the comparison a DBA makes after a switch, built in. For every database
//! of a migration, both sides' catalogs (`pgseal_pg::catalog`: columns, constraints,
//! indexes, triggers, rules, policies, functions, types, views, comments, privileges,
//! extensions, sequences' definitions), the rows of materialized views, where sequences
//! stand (the target's may be ahead, never behind once cut over) and the large objects;
//! and for the instance, roles, memberships and database settings (`pgseal_pg::globals`).
//! Each difference is named, with both sides' definitions.
//!
//! While the target follows the source, each database's source side is read first, then
//! the target's once it has applied everything the source had committed by then; a
//! difference is read again (DDL may have run in between) before it counts. Sequences are
//! never replicated: until the cutover sets them, the target's trail the source's, and
//! they are listed but not counted ([`Sequences::Trailing`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgseal_pg::catalog::{self, Difference, Fingerprint, Normalisation, SequenceBehind};
use pgseal_pg::globals;
use pgseal_platform::Platform;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::catch_up::{CatchUp, Follower};
use crate::error::{EngineError, sql};
use crate::journal::Journal;
use crate::sessions::{connect_source_db, connect_to};
use crate::stream;

/// What the journal keeps of a definition.
const WITHHELD: &str = "(withheld from the journal; `pgseal migrate verify` shows it)";

/// How sequences behind on the target count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequences {
    /// The target follows the source and the cutover sets sequences: one behind is
    /// listed, not counted.
    Trailing,
    /// Sequences are set (the cutover did, or no replication runs): one behind is a
    /// difference.
    Set,
}

/// One database's large objects, compared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LargeObjectsCompared {
    /// How many the source has.
    pub source: usize,
    /// How many the target has.
    pub target: usize,
    /// Copied to the target just before comparing (written on the source since the
    /// follower's last pass, or changed on the target).
    pub copied_first: usize,
    /// Objects the source wrote or unlinked after the read that copy followed: carried by
    /// the follower's next pass and the cutover, not counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub written_meanwhile: usize,
    /// What differed before that copy, each named: carried, so no longer a difference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<pgseal_pg::large_objects::LoDifference>,
    /// Those that still differ (OIDs only: never their contents).
    pub differing: Vec<pgseal_pg::large_objects::LoDifference>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One database, verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatabaseVerified {
    /// Catalog objects compared (the source's), materialized views' rows included.
    pub objects: usize,
    /// Every object that differs.
    pub differences: Vec<Difference>,
    /// Sequences the target has behind the source.
    pub sequences_behind: Vec<SequenceBehind>,
    /// Whether those count as differences (they do once sequences are set).
    pub sequences_count: bool,
    /// The large objects.
    pub large_objects: LargeObjectsCompared,
}

impl DatabaseVerified {
    /// How many differences count: objects, large objects, and sequences behind once
    /// they are set.
    pub fn counted(&self) -> usize {
        self.differences.len()
            + self.large_objects.differing.len()
            + if self.sequences_count {
                self.sequences_behind.len()
            } else {
                0
            }
    }
}

/// The whole verification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Per database.
    pub databases: BTreeMap<String, DatabaseVerified>,
    /// Roles, memberships and database properties that differ (what, never a password).
    pub globals: Vec<String>,
    /// Those that differed and were carried to the target just before comparing, as the
    /// follower does between its passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globals_carried: Vec<String>,
    /// Normalisations applied because the sides run different major versions, each
    /// described.
    pub normalised: Vec<String>,
    /// Differences that count, in all.
    pub differences: usize,
    /// True when there are none.
    pub clean: bool,
    /// Seconds taken.
    pub seconds: f64,
}

impl VerifyReport {
    /// The report as the journal (a file on the host's disk) keeps it: every difference
    /// named, its definitions left out (a default or a function's body may hold a value).
    pub fn journaled(&self) -> VerifyReport {
        let mut kept = self.clone();
        for v in kept.databases.values_mut() {
            for d in &mut v.differences {
                for side in [&mut d.source, &mut d.target] {
                    if side.is_some() {
                        *side = Some(WITHHELD.to_string());
                    }
                }
            }
        }
        kept
    }

    /// Every counted difference in one line each, `database: object: ...`, for a refusal
    /// (which the journal keeps): named, without definitions.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.globals.clone();
        for (db, v) in &self.databases {
            out.extend(v.differences.iter().map(|d| {
                let what = match (&d.source, &d.target) {
                    (Some(_), None) => "missing on the target",
                    (None, Some(_)) => "only on the target",
                    _ => "differs",
                };
                format!("{db}: {} {}: {what}", d.category.label(), d.object)
            }));
            out.extend(
                v.large_objects
                    .differing
                    .iter()
                    .map(|l| format!("{db}: large object {}: {}", l.oid, l.what)),
            );
            if v.sequences_count {
                out.extend(v.sequences_behind.iter().map(|s| {
                    format!(
                        "{db}: sequence {} at {} on the source, {} on the target",
                        s.sequence,
                        s.source,
                        s.target.map_or("unused".to_string(), |t| t.to_string())
                    )
                }));
            }
        }
        out
    }
}

/// A verification put together database by database (by `migrate verify`, a validation
/// pass and the cutover alike): the time it spends is its own, however the caller
/// interleaves other work.
#[derive(Default)]
pub(crate) struct Verifying {
    report: VerifyReport,
    normalised: std::collections::BTreeSet<Normalisation>,
    spent: Duration,
}

impl Verifying {
    /// Verifies database `db` (see [`database`]) and adds it; returns what it found.
    pub(crate) async fn database(
        &mut self,
        db: &str,
        source: &Client,
        target: &Client,
        catch_up: Option<&CatchUp<'_>>,
        sequences: Sequences,
        copy: bool,
    ) -> Result<&DatabaseVerified, EngineError> {
        let began = Instant::now();
        let (verified, used) = database(source, target, catch_up, sequences, copy).await?;
        self.normalised.extend(used);
        self.spent += began.elapsed();
        self.report.databases.insert(db.to_string(), verified);
        Ok(&self.report.databases[db])
    }

    /// Compares (and, where `carry` allows, first carries) the roles, memberships and the
    /// properties of `databases` (see [`globals`]).
    pub(crate) async fn globals(
        &mut self,
        source: &Client,
        target: &Client,
        databases: &[String],
        carry: bool,
        options: &globals::DiffOptions,
    ) -> Result<(), EngineError> {
        let began = Instant::now();
        (self.report.globals_carried, self.report.globals) =
            globals(source, target, databases, carry, options).await?;
        self.spent += began.elapsed();
        Ok(())
    }

    /// The whole verification: its differences counted and its normalisations described.
    pub(crate) fn finish(self) -> VerifyReport {
        let mut report = self.report;
        report.normalised = self
            .normalised
            .into_iter()
            .map(|n| n.describe().to_string())
            .collect();
        report.differences = report.globals.len()
            + report
                .databases
                .values()
                .map(DatabaseVerified::counted)
                .sum::<usize>();
        report.clean = report.differences == 0;
        report.seconds = self.spent.as_secs_f64();
        report
    }
}

/// The sequences `target` has behind `source` (sessions on one database each).
async fn sequences_behind(
    source: &Client,
    target: &Client,
) -> Result<Vec<SequenceBehind>, EngineError> {
    // Both sides' reads sent at once.
    let (s, t) = futures_util::future::try_join(
        async {
            catalog::sequence_positions(source)
                .await
                .map_err(sql("source", "reading the sequences"))
        },
        async {
            catalog::sequence_positions(target)
                .await
                .map_err(sql("target", "reading the sequences"))
        },
    )
    .await?;
    Ok(catalog::sequences_behind(&s, &t))
}

/// Reads one side: its catalog and its materialized views' rows.
async fn side(client: &Client, role: &'static str) -> Result<Fingerprint, EngineError> {
    let mut print = catalog::read(client)
        .await
        .map_err(sql(role, "reading the catalog"))?;
    print.entries.extend(
        catalog::materialized_view_rows(client)
            .await
            .map_err(sql(role, "reading the materialized views"))?,
    );
    Ok(print)
}

/// How many times a database's catalog is read again while the source keeps changing it.
const TRIES: usize = 3;

/// Verifies one database: `source` and `target` are pinned sessions on it, and
/// `catch_up` (while the target follows) says when the target has applied what the source
/// had committed. Large objects are copied first where `copy` allows (those written since
/// the follower's last pass).
async fn database(
    source: &Client,
    target: &Client,
    catch_up: Option<&CatchUp<'_>>,
    sequences: Sequences,
    copy: bool,
) -> Result<(DatabaseVerified, Vec<Normalisation>), EngineError> {
    for (client, role) in [(source, "source"), (target, "target")] {
        client
            .batch_execute(catalog::SESSION)
            .await
            .map_err(sql(role, "setting the session"))?;
    }
    let mut compared = None;
    for _ in 0..TRIES {
        let src = side(source, "source").await?;
        if let Some(c) = catch_up {
            c.applied(c.source_lsn(c.source).await?).await?;
        }
        let dst = side(target, "target").await?;
        let (differences, used) = catalog::compare(&src, &dst);
        let settled =
            differences.is_empty() || catch_up.is_none() || side(source, "source").await? == src;
        compared = Some((src.entries.len(), differences, used));
        if settled {
            break;
        }
    }
    let (objects, differences, used) = compared.expect("read at least once");
    Ok((
        DatabaseVerified {
            objects,
            differences,
            sequences_behind: sequences_behind(source, target).await?,
            sequences_count: sequences == Sequences::Set,
            large_objects: large_objects(source, target, copy).await?,
        },
        used,
    ))
}

/// Compares the large objects of `source` and `target` (one database each); where they
/// differ and `copy` allows, copies them first and compares again.
async fn large_objects(
    source: &Client,
    target: &Client,
    copy: bool,
) -> Result<LargeObjectsCompared, EngineError> {
    use pgseal_pg::large_objects as lo;
    let read = async || {
        let s = lo::inventory(source)
            .await
            .map_err(sql("source", "reading the large objects"))?;
        let t = lo::inventory(target)
            .await
            .map_err(sql("target", "reading the large objects"))?;
        Ok::<_, EngineError>((s, t))
    };
    let (s, t) = read().await?;
    let carried = if copy {
        lo::compare(&s, &t)
    } else {
        Vec::new()
    };
    if carried.is_empty() {
        return Ok(LargeObjectsCompared {
            source: s.len(),
            target: t.len(),
            differing: lo::compare(&s, &t),
            ..Default::default()
        });
    }
    let (report, _) = lo::sync(source, target)
        .await
        .map_err(sql("target", "copying the large objects"))?;
    let (after, t) = read().await?;
    // An object the source wrote or unlinked since the read the copy followed is the
    // follower's next pass (and the cutover's, inside its pause): not a difference.
    let (differing, written_meanwhile): (Vec<_>, Vec<_>) = lo::compare(&after, &t)
        .into_iter()
        .partition(|d| s.get(&d.oid) == after.get(&d.oid));
    Ok(LargeObjectsCompared {
        source: after.len(),
        target: t.len(),
        copied_first: report.copied,
        carried,
        written_meanwhile: written_meanwhile.len(),
        differing,
    })
}

/// Roles, memberships and the properties of `databases` that differ between the sides
/// (`source` and `target`: sessions on any database of each; `options` as the carrying
/// treats master users and skipped passwords): where `carry` allows, what
/// differed is carried first (as the follower does) and returned as such, then what still
/// differs. Never a password or verifier, only what differs.
pub(crate) async fn globals(
    source: &Client,
    target: &Client,
    databases: &[String],
    carry: bool,
    options: &globals::DiffOptions,
) -> Result<(Vec<String>, Vec<String>), EngineError> {
    let carried = if carry {
        globals::sync(source, target, databases, options)
            .await
            .map_err(|e| {
                EngineError::Precondition(format!(
                    "carrying roles and database settings to the target: {}",
                    crate::error::error_chain(&e)
                ))
            })?
            .iter()
            .map(globals::Difference::summary)
            .collect()
    } else {
        Vec::new()
    };
    let s = globals::read(source, databases)
        .await
        .map_err(sql("source", "reading roles and database properties"))?;
    let t = globals::read(target, databases)
        .await
        .map_err(sql("target", "reading roles and database properties"))?;
    let differing = globals::diff(&s, &t, options)
        .iter()
        .map(globals::Difference::summary)
        .collect();
    Ok((carried, differing))
}

/// Who replicates into the instance a migration compares the source with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicator {
    /// pgseal's own streams: a publication, slot and subscription per database, the
    /// change log, and what pgseal carries besides (large objects, roles).
    Pgseal,
    /// The platform's own replication (a blue/green deployment), by its method; pgseal
    /// carries nothing.
    Platform(pgseal_platform::ReplicationMethod),
}

/// What a migration compares the source with, as its strategy says
/// ([`crate::strategy::Strategy::compared_with`]).
#[derive(Debug, Clone)]
pub struct Compared {
    /// The instance compared with the source: the target, or green.
    pub target: String,
    /// The databases compared, each with its stream.
    pub scope: Vec<stream::Stream>,
    /// Who replicates into `target`.
    pub replicator: Replicator,
}

impl Replicator {
    /// The platform's replication method; `None` when pgseal replicates.
    pub fn method(self) -> Option<pgseal_platform::ReplicationMethod> {
        match self {
            Replicator::Pgseal => None,
            Replicator::Platform(method) => Some(method),
        }
    }
}

impl Compared {
    /// Whether pgseal replicates (and carries) into the compared instance.
    pub fn by_pgseal(&self) -> bool {
        self.replicator == Replicator::Pgseal
    }
}

/// Verifies every database of migration `name` while its target follows the source (or,
/// for blue/green, against green), and the instance's roles and settings, against what
/// its strategy compares (`compared`). `progress` hears of each database as it starts.
/// The caller ([`crate::migration::verify`]) has checked that the migration replicates.
pub async fn verify<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
    compared: &Compared,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<VerifyReport, EngineError> {
    let spec = journal.migration(name)?.spec;
    let (target_name, scope) = (&compared.target, &compared.scope);
    let carried = compared.by_pgseal();
    let mut verifying = Verifying::default();
    // Large objects written since the follower's last pass are copied first, with the
    // follower held off meanwhile.
    let _gate = crate::follow::PassGate::hold(journal.home(), name, Duration::from_secs(60));
    let databases: Vec<String> = scope.iter().map(|s| s.database.clone()).collect();
    for stream in scope {
        let db = &stream.database;
        progress(db);
        let source = connect_source_db(platform, &spec, db).await?;
        let source_aux = connect_source_db(platform, &spec, db).await?;
        let target = connect_to(platform, target_name, db, "target").await?;
        let follower = Follower::of(&source_aux, stream, compared.replicator.method()).await?;
        let catch_up = CatchUp::new(name, db, &source_aux, &target, follower).await?;
        verifying
            .database(
                db,
                &source,
                &target,
                Some(&catch_up),
                Sequences::Trailing,
                carried,
            )
            .await?;
        if *db == databases[0] {
            verifying
                .globals(&source, &target, &databases, carried, &Default::default())
                .await?;
        }
    }
    Ok(verifying.finish())
}

/// The cutover's check with the source fenced and drained and the sequences set: every
/// database whose DDL moved since `checked` (its last captured statement when the
/// verification before the pause read it) is verified again, and sequences behind count.
/// `sources` and `targets` are sessions on each database of `databases`, in order.
pub(crate) async fn fenced(
    sources: &[Client],
    targets: &[Client],
    databases: &[String],
    checked: &BTreeMap<String, i64>,
) -> Result<VerifyReport, EngineError> {
    let began = Instant::now();
    // Every database side by side, each on its own sessions: what DDL each captured last,
    // then, where nothing changed the catalog since it was verified, only its sequences.
    // Both read at once for every database (one round trip each side); a database whose
    // catalog moved is verified whole below, sequences included.
    let (lasts, mut behind) = futures_util::future::try_join(
        futures_util::future::try_join_all(sources.iter().map(|source| async move {
            pgseal_pg::ddl::last_id(source)
                .await
                .map_err(sql("source", "reading the captured DDL"))
        })),
        futures_util::future::try_join_all(
            sources
                .iter()
                .zip(targets)
                .map(|(source, target)| sequences_behind(source, target)),
        ),
    )
    .await?;
    let unchanged = |i: &usize| checked.get(&databases[*i]) == Some(&lasts[*i]);
    let (same, moved): (Vec<usize>, Vec<usize>) = (0..databases.len()).partition(unchanged);
    let behind: Vec<_> = same
        .iter()
        .map(|&i| std::mem::take(&mut behind[i]))
        .collect();
    let mut verifying = Verifying::default();
    for (i, sequences_behind) in same.into_iter().zip(behind) {
        let verified = DatabaseVerified {
            sequences_behind,
            sequences_count: true,
            ..Default::default()
        };
        verifying
            .report
            .databases
            .insert(databases[i].clone(), verified);
    }
    verifying.spent += began.elapsed();
    for i in moved {
        verifying
            .database(
                &databases[i],
                &sources[i],
                &targets[i],
                None,
                Sequences::Set,
                false,
            )
            .await?;
    }
    Ok(verifying.finish())
}
