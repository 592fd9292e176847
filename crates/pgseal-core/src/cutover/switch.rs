//! How applications are moved ([`Switch`]), and the timing of a pause's parts.

use std::future::Future;
use std::time::{Duration, Instant};

use super::report::*;
use crate::error::EngineError;
use crate::steps::failpoint_at;

/// An error of a [`Switch`].
pub type SwitchError = Box<dyn std::error::Error + Send + Sync>;

/// How applications are moved from the source to the target: an endpoint (PgBouncer), a
/// hook command, an AWS rename, or nothing but the new URL printed.
pub trait Switch: Sync {
    /// What it is, for messages.
    fn describe(&self) -> String;
    /// True when the switch can keep sending databases outside the migration to the
    /// source (an endpoint with one entry per database); false when it moves the whole
    /// instance (a hook, a rename).
    fn keeps_other_databases(&self) -> bool;
    /// Why it cannot keep database `db` on the source apart from the others although it
    /// keeps others (a name the endpoint's configuration cannot hold), if it cannot.
    fn cannot_keep(&self, db: &str) -> Option<String> {
        let _ = db;
        None
    }
    /// Looks up and prepares, before the pause, whatever the switch would otherwise do
    /// inside it (a program's version, a configuration written), so the pause holds
    /// only the switch itself; `stay` is what [`point_to_target`](Self::point_to_target)
    /// will be given.
    fn ready(&self, stay: &[String]) -> impl Future<Output = Result<(), SwitchError>> + Send {
        let _ = stay;
        async { Ok(()) }
    }
    /// Holds new transactions (waiting for running ones to end).
    fn pause(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Sends applications to the other side from now on, except for the databases in
    /// `stay` (outside the migration), which keep going to the side they were on.
    fn point_to_target(
        &self,
        stay: &[String],
    ) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Lets transactions flow again, wherever they now go.
    fn resume(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Makes one write the way applications do, once switched (measures the pause).
    fn probe_write(&self) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// How long the longest-waiting client has waited behind the pause so far, where the
    /// switch can know it (a PgBouncer endpoint: `SHOW POOLS` `maxwait`); `None` where it
    /// cannot (a hook, a rename).
    fn longest_client_wait(&self) -> impl Future<Output = Option<Duration>> + Send {
        async { None }
    }
}

/// Times the parts of a pause, one after another.
pub(super) struct Laps {
    pub(super) last: Instant,
    pub(super) laps: Vec<PauseTiming>,
}

impl Laps {
    pub(super) fn start() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends the part called `phase` now.
    pub(super) fn lap(&mut self, phase: &str) {
        self.lap_at(phase, Instant::now());
    }

    /// Ends the part called `phase` at `at`, for parts that ran beside others: it counts
    /// only what the pause waited for it beyond the parts before it (nothing where they
    /// ended later), so the laps still add up to the pause.
    pub(super) fn lap_at(&mut self, phase: &str, at: Instant) {
        let at = at.max(self.last);
        self.laps.push(PauseTiming {
            phase: phase.to_string(),
            ms: (at - self.last).as_secs_f64() * 1000.0,
        });
        self.last = at;
    }
}

/// What an error of `switch` becomes while `doing` something with it (`pausing`,
/// `resuming`, ...): the step, the switch, and the switch's own error.
pub(super) fn switch_failed<'a, S: Switch>(
    switch: &'a S,
    doing: &'a str,
) -> impl FnOnce(SwitchError) -> EngineError + 'a {
    move |e| EngineError::Precondition(format!("{doing} {}: {e}", switch.describe()))
}

/// Points the switch at the other side (`to`, for messages) but for the databases in
/// `stay`, resumes it, and makes the first write through it; `point` is the failpoint
/// between pointing and resuming. Returns the longest client wait in milliseconds, when
/// the switch can tell.
pub(super) async fn switch_over<S: Switch>(
    switch: &S,
    stay: &[String],
    to: &str,
    point: &str,
    laps: &mut Laps,
) -> Result<Option<u64>, EngineError> {
    let waited = switch.longest_client_wait().await;
    let read_at = Instant::now();
    switch
        .point_to_target(stay)
        .await
        .map_err(switch_failed(switch, &format!("pointing at the {to}:")))?;
    laps.lap("switch");
    failpoint_at(point);
    switch
        .resume()
        .await
        .map_err(switch_failed(switch, "resuming"))?;
    laps.lap("resume");
    let client_wait = waited.map(|w| (w + read_at.elapsed()).as_millis() as u64);
    switch
        .probe_write()
        .await
        .map_err(switch_failed(switch, "the first write failed through"))?;
    laps.lap("first_write");
    Ok(client_wait)
}
