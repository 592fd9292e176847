//! The step runner's context: one migration's platform, journal, spec and observer, and
//! the steps every pgseal-replicated strategy shares. Each strategy's own steps live in
//! [`crate::strategy`]; the loop that runs them in order, journaling each, is
//! [`Engine::run`] (in [`crate::migration`]).
//!
//! - [`prepare`](self): preflight and the source's streams (publication and slot per
//!   database, DDL capture);
//! - `subscribe`: the target's subscriptions, enabling them, waiting for the apply workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgseal_platform::{ErrorKind, Platform};
use tokio_postgres::Client;

use crate::error::{EngineError, platform_error};
use crate::journal::{Journal, MigrationSpec};
use crate::sessions::{connect_source, connect_source_db, connect_to, streams_of};
use crate::steps::Step;
use crate::stream::Stream;

mod prepare;
mod subscribe;

/// What a step returns: its outputs, to journal, and one line on what it did.
pub(crate) type StepResult = Result<(serde_json::Value, String), EngineError>;

/// Facts about the surroundings that preflight cannot read over SQL; the caller finds them.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// Bytes free where the snapshot and the restored copy will live, if known.
    pub free_bytes: Option<u64>,
    /// A problem with the target key (disabled, pending deletion, unknown), if any.
    pub key_problem: Option<String>,
    /// The major versions the platform runs servers with here, each with the extensions
    /// it can create (the local platform); `None` where the platform decides.
    pub installed: Option<std::collections::BTreeMap<u32, std::collections::BTreeSet<String>>>,
    /// Why the platform cannot run the full-load strategy, if it cannot.
    pub full_load_unsupported: Option<String>,
    /// Why the platform has no blue/green deployments, if it has none.
    pub blue_green_unsupported: Option<String>,
    /// How the platform's blue/green deployment of the source would replicate.
    pub blue_green_plan: Option<pgseal_platform::BlueGreenPlan>,
    /// The client programs (`pg_dump`, `pg_dumpall`, `psql`) the full load runs.
    pub client_tools: pgseal_pg::PgInstalls,
}

/// What the engine reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step starts.
    Started(Step),
    /// A step finished; `summary` says what it did.
    Done {
        /// The step.
        step: Step,
        /// How long it ran.
        elapsed: Duration,
        /// One line on what it did.
        summary: String,
    },
    /// A step was done by an earlier run.
    AlreadyDone(Step),
    /// The full load's initial copy, table by table (about once a second while it runs).
    Copy(Vec<crate::initial_copy::TableCopy>),
    /// A step waits for something outside pgseal (said every few seconds).
    Waiting {
        /// The step.
        step: Step,
        /// What it waits for.
        what: String,
    },
}

/// Runs one migration's steps.
pub struct Engine<'a, P: Platform> {
    pub(crate) platform: &'a P,
    pub(crate) journal: &'a Journal,
    pub(crate) spec: MigrationSpec,
    pub(crate) surroundings: Surroundings,
    pub(crate) observer: Box<dyn Fn(&Event) + 'a>,
    /// Each database's schema archive (`pg_dump -Fc`, definitions and no row values),
    /// taken once by one step while the source holds DDL and read by the later steps of
    /// the same run. In memory only: a run that resumes takes it again.
    pub(crate) schema_archives: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl<'a, P: Platform> Engine<'a, P> {
    /// An engine for the recorded migration `name`.
    pub fn new(
        platform: &'a P,
        journal: &'a Journal,
        name: &str,
        surroundings: Surroundings,
        observer: impl Fn(&Event) + 'a,
    ) -> Result<Self, EngineError> {
        let spec = journal.migration(name)?.spec;
        Ok(Engine {
            platform,
            journal,
            spec,
            surroundings,
            observer: Box::new(observer),
            schema_archives: Mutex::default(),
        })
    }

    /// A session on the source's main database.
    pub(crate) async fn source(&self) -> Result<Client, EngineError> {
        connect_source(self.platform, &self.spec).await
    }

    /// A session on the target's main database.
    pub(crate) async fn target(&self) -> Result<Client, EngineError> {
        self.target_db(&self.spec.database).await
    }

    /// A session on the source's `database`.
    pub(crate) async fn source_db(&self, database: &str) -> Result<Client, EngineError> {
        connect_source_db(self.platform, &self.spec, database).await
    }

    /// A session on the target's `database`.
    pub(crate) async fn target_db(&self, database: &str) -> Result<Client, EngineError> {
        connect_to(self.platform, &self.spec.target, database, "target").await
    }

    /// The migration's streams, as recorded when the source was prepared.
    pub(crate) fn streams(&self) -> Result<Vec<Stream>, EngineError> {
        streams_of(self.journal, &self.spec.name)
    }

    /// Field `field` of what `step` journaled when it ran.
    pub(crate) fn recorded<T: serde::de::DeserializeOwned>(
        &self,
        step: Step,
        field: &str,
    ) -> Result<T, EngineError> {
        let outputs = self
            .journal
            .outputs(&self.spec.name, step)?
            .ok_or_else(|| {
                EngineError::Precondition(format!("step {step} has no recorded outputs"))
            })?;
        serde_json::from_value(outputs[field].clone()).map_err(|e| {
            EngineError::Precondition(format!(
                "the journal's {step}.{field} cannot be read ({e}): the journal was edited?"
            ))
        })
    }

    /// Deletes `instance`, the target an earlier run began to make and did not finish
    /// (`what`: its creation, its restore), so that it can be made again.
    pub(crate) async fn remove_interrupted_target(
        &self,
        instance: &pgseal_platform::Instance,
        what: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(
            target = %instance.name,
            status = ?instance.status,
            interrupted = what,
            "removing a target whose making was interrupted"
        );
        self.platform
            .delete_instance(&self.spec.target)
            .await
            .map_err(platform_error(format!("removing the interrupted {what}")))
    }

    /// The target instance if it exists and this migration made it (an earlier run of the
    /// step that makes it); one that exists but was not made by it is refused.
    pub(crate) async fn existing_target(
        &self,
    ) -> Result<Option<pgseal_platform::Instance>, EngineError> {
        let target = &self.spec.target;
        let ours = self
            .journal
            .resources(&self.spec.name)?
            .iter()
            .any(|r| r.kind == "instance" && &r.name == target);
        match self.platform.describe_instance(target).await {
            Ok(i) if !ours => Err(EngineError::Precondition(format!(
                "instance {} exists and was not made by migration {} (status {:?}); choose another --target",
                i.name, self.spec.name, i.status
            ))),
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(platform_error("describing the target")(e)),
        }
    }
}
