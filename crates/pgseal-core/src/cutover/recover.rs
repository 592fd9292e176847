//! An interrupted cutover or rollback, undone before its switch or finished after it.

use pgseal_pg::replication::quote_ident;
use pgseal_platform::Platform;

use super::report::*;
use crate::error::{EngineError, sql};
use crate::fence::{admin_session, lift_fences, slip_in};
use crate::handle::Handle;
use crate::journal::{Journal, Phase};
use crate::sessions::streams_of;

use super::reverse::*;
use super::sides::*;

/// After a crash during rollback (the migration still cut over, the target fenced): before
/// the switch back, the target serves again (source re-fenced, reverse subscriptions
/// disabled, target's fences lifted); after it, the migration is marked rolled back. The
/// caller resumes the switch (pointed at the source when rolled back).
pub async fn recover_interrupted_rollback<P: Platform>(
    platform: &P,
    journal: &Journal,
    name: &str,
) -> Result<Recovered, EngineError> {
    let spec = journal.migration(name)?.spec;
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    if journal.has_resource(name, "switched_back")? {
        for db in &dbs {
            journal.remove_resource(name, "fence", db, db)?;
        }
        journal.set_phase(name, Phase::RolledBack, None)?;
        return Ok(Recovered::RolledBack);
    }
    // The source databases may be open (their fences were lifted for the reverse apply).
    let admin = admin_session(platform, &spec, &streams).await?;
    for s in &streams {
        let source = slip_in(platform, &spec, &admin, &s.database).await?;
        source
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} DISABLE",
                quote_ident(&s.reverse_name())
            ))
            .await
            .map_err(sql("source", "disabling the reverse subscription"))?;
    }
    let target_admin = target_admin(platform, &spec, &streams).await?;
    lift_fences(&target_admin, &dbs, "target").await?;
    for db in &dbs {
        journal.remove_resource(name, "target_fence", db, db)?;
    }
    Ok(Recovered::StillCutOver)
}

/// After a crash during cutover: before the switch, drops the reverse objects it may have
/// made, lifts the fences, re-enables the subscriptions and returns the migration to
/// replicating; after it, marks it cut over.
pub async fn recover_interrupted<P: Platform>(m: &Handle<'_, P>) -> Result<Recovered, EngineError> {
    let (platform, journal, name) = (m.platform, m.journal, m.name);
    let spec = journal.migration(name)?.spec;
    if journal.has_resource(name, "switched")? {
        journal.set_phase(name, Phase::CutOver, None)?;
        return Ok(Recovered::CutOver);
    }
    let streams = streams_of(journal, name)?;
    let dbs: Vec<String> = streams.iter().map(|s| s.database.clone()).collect();
    let admin = admin_session(platform, &spec, &streams).await?;
    lift_fences(&admin, &dbs, "source").await?;
    for db in &dbs {
        journal.remove_resource(name, "fence", db, db)?;
    }
    let sources = sessions(platform, &spec, &streams, "source").await?;
    let targets = sessions(platform, &spec, &streams, "target").await?;
    drop_reverse(journal, &spec, &streams, &sources.clients, &targets.clients).await?;
    let forward: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
    resume_forward(&targets.clients, &forward).await?;
    journal.set_phase(name, Phase::Replicating, None)?;
    Ok(Recovered::BackToReplicating)
}
