//! Runs one `pgseal migrate ...` command per migration, a few at a time.
//!
//! Each migration is a process of its own: one that fails or crashes leaves the others
//! running, and each stays a normal migration in the journal, resumable on its own. The
//! commands die with the fleet process (`PR_SET_PDEATHSIG`), so a killed fleet leaves
//! interrupted migrations that the next run resumes, never ones still running behind it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pgseal_exec::ExternalCommand;
use serde::Serialize;

use crate::slots::Slots;

/// How many of a command's last stderr lines are kept for its outcome.
const TAIL_LINES: usize = 20;

/// One command to run for one migration.
#[derive(Debug, Clone)]
pub struct Job {
    /// The migration it runs for.
    pub migration: String,
    /// Its arguments (after the program and the arguments every job shares).
    pub args: Vec<String>,
    /// Environment it gets beyond what every job gets (a source's `PGPASSWORD`).
    pub env: Vec<(String, String)>,
}

/// How one job ended.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    /// The migration.
    pub migration: String,
    /// The command's exit code; `None` when it did not run (skipped after a failure) or
    /// was killed by a signal.
    pub exit_code: Option<i32>,
    /// True when it never started: an earlier job failed and the runner stops at the
    /// first failure.
    pub skipped: bool,
    /// What it printed on stdout, as JSON (`Null` when nothing or not JSON).
    pub output: serde_json::Value,
    /// Its last stderr lines.
    pub stderr_tail: Vec<String>,
    /// When it started and ended (unix milliseconds; 0 when skipped).
    pub started_ms: i64,
    /// When it ended.
    pub finished_ms: i64,
}

impl Finished {
    /// True when the command exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Why it did not succeed, in a line: its last stderr line, or its exit.
    pub fn why(&self) -> String {
        if self.skipped {
            return "not run: an earlier migration failed (--keep-going runs the rest)".into();
        }
        let exit = match self.exit_code {
            Some(code) => format!("exit {code}"),
            None => "killed".into(),
        };
        match self.stderr_tail.iter().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => format!("{exit}: {}", line.trim()),
            None => exit,
        }
    }
}

/// What a job does while it runs, for progress.
#[derive(Debug)]
pub enum Event<'a> {
    /// It started, holding slot `slot`.
    Started {
        /// The migration.
        migration: &'a str,
        /// The slot it holds.
        slot: usize,
    },
    /// It wrote a line on stderr.
    Line {
        /// The migration.
        migration: &'a str,
        /// The line.
        line: &'a str,
    },
    /// It ended.
    Finished(&'a Finished),
}

/// Runs jobs through one program (this pgseal), each holding a slot.
#[derive(Debug)]
pub struct Runner {
    /// The program (`std::env::current_exe()`).
    pub program: PathBuf,
    /// Arguments every job starts with (`--home DIR`, `--json`, ...).
    pub common_args: Vec<String>,
    /// Environment every job gets (the rest of the environment is not passed on).
    pub env: Vec<(String, String)>,
    /// The slots that bound how many jobs run at once, across processes.
    pub slots: Slots,
    /// Start no job after one has failed (the ones running finish).
    pub stop_at_first_failure: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Runner {
    /// Runs every job, at most as many at once as there are slots, and returns how each
    /// ended, in the order given. `event` sees progress from several threads.
    pub fn run(&self, jobs: Vec<Job>, event: &(dyn Fn(Event<'_>) + Sync)) -> Vec<Finished> {
        let order: Vec<String> = jobs.iter().map(|j| j.migration.clone()).collect();
        let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
        let results = Mutex::new(Vec::new());
        let failed = AtomicBool::new(false);
        let workers = self.slots.count().min(order.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let Some(job) = queue.lock().expect("queue").pop_front() else {
                            break;
                        };
                        let done = if self.stop_at_first_failure && failed.load(Ordering::SeqCst) {
                            skipped(&job.migration)
                        } else {
                            self.run_one(&job, event)
                        };
                        if !done.succeeded() && !done.skipped {
                            failed.store(true, Ordering::SeqCst);
                        }
                        event(Event::Finished(&done));
                        results.lock().expect("results").push(done);
                    }
                });
            }
        });
        let mut results = results.into_inner().expect("results");
        results.sort_by_key(|f| order.iter().position(|m| *m == f.migration));
        results
    }

    fn run_one(&self, job: &Job, event: &(dyn Fn(Event<'_>) + Sync)) -> Finished {
        let slot = match self.slots.acquire() {
            Ok(slot) => slot,
            Err(e) => {
                return Finished {
                    stderr_tail: vec![format!("cannot take a fleet slot: {e}")],
                    ..skipped(&job.migration)
                };
            }
        };
        let started_ms = now_ms();
        event(Event::Started {
            migration: &job.migration,
            slot: slot.index,
        });
        let mut command = ExternalCommand::new(&self.program)
            .args(&self.common_args)
            .args(&job.args)
            .die_with_parent();
        for (k, v) in self.env.iter().chain(&job.env) {
            command = command.env(k, v);
        }
        let mut tail = VecDeque::new();
        let outcome = command.output_with_stderr_lines(|line| {
            event(Event::Line {
                migration: &job.migration,
                line,
            });
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        });
        drop(slot);
        let (exit_code, output) = match outcome {
            Ok(out) => (
                out.status.code(),
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            ),
            Err(e) => {
                tail.push_back(e.to_string());
                (None, serde_json::Value::Null)
            }
        };
        Finished {
            migration: job.migration.clone(),
            exit_code,
            skipped: false,
            output,
            stderr_tail: tail.into(),
            started_ms,
            finished_ms: now_ms(),
        }
    }
}

fn skipped(migration: &str) -> Finished {
    Finished {
        migration: migration.to_string(),
        exit_code: None,
        skipped: true,
        output: serde_json::Value::Null,
        stderr_tail: Vec::new(),
        started_ms: 0,
        finished_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, script: &str) -> Job {
        Job {
            migration: name.into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("WHO".into(), name.into())],
        }
    }

    fn runner(dir: &std::path::Path, n: usize, stop: bool) -> Runner {
        Runner {
            program: "sh".into(),
            common_args: Vec::new(),
            env: vec![("SHARED".into(), "yes".into())],
            slots: Slots::new(dir, n).unwrap(),
            stop_at_first_failure: stop,
        }
    }

    #[test]
    fn jobs_run_n_at_a_time_with_their_output_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let running = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        let jobs: Vec<Job> = (0..5)
            .map(|i| {
                job(
                    &format!("m{i}"),
                    "echo \"working $WHO\" >&2; sleep 0.2; echo \"{\\\"who\\\": \\\"$WHO\\\", \\\"shared\\\": \\\"$SHARED\\\", \\\"home\\\": \\\"$HOME\\\"}\"",
                )
            })
            .collect();
        let lines = Mutex::new(Vec::new());
        let results = runner(dir.path(), 2, false).run(jobs, &|e| match e {
            Event::Started { .. } => {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
            }
            Event::Finished(_) => {
                running.fetch_sub(1, Ordering::SeqCst);
            }
            Event::Line { migration, line } => {
                lines.lock().unwrap().push(format!("{migration}: {line}"))
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(results.len(), 5);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.migration, format!("m{i}"));
            assert!(r.succeeded(), "{r:?}");
            assert_eq!(r.output["who"], format!("m{i}"));
            assert_eq!(r.output["shared"], "yes");
            // Nothing of the fleet's own environment but what it passes on.
            assert_eq!(r.output["home"], "");
            assert_eq!(r.stderr_tail, [format!("working m{i}")]);
        }
        assert!(
            lines
                .lock()
                .unwrap()
                .contains(&"m3: working m3".to_string())
        );
    }

    #[test]
    fn a_failure_stops_what_has_not_started_unless_told_to_keep_going() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = || {
            vec![
                job("ok", "exit 0"),
                job("bad", "echo 'it broke' >&2; exit 3"),
                job("after", "exit 0"),
            ]
        };
        let stopped = runner(dir.path(), 1, true).run(jobs(), &|_| {});
        assert!(stopped[0].succeeded());
        assert_eq!(stopped[1].exit_code, Some(3));
        assert_eq!(stopped[1].why(), "exit 3: it broke");
        assert!(stopped[2].skipped, "{:?}", stopped[2]);
        let kept = runner(dir.path(), 1, false).run(jobs(), &|_| {});
        assert!(kept[2].succeeded());
    }
}
