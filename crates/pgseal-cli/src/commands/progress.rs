//! How `migrate start` and `resume` show the engine's progress: one line per step, and
//! during a full load's initial copy a bar per table on a terminal (JSON lines on stderr
//! otherwise, one when a table changes state and every few seconds while it copies).

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgseal_core::Event;
use pgseal_core::initial_copy::TableCopy;
use pgseal_core::steps::StrategyKind;

use super::Context;

/// How often a copying table gets a JSON line when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Reports the events of one run of the engine.
pub struct MigrateObserver<'a> {
    ctx: &'a Context,
    strategy: StrategyKind,
    copy: Mutex<CopyView>,
}

enum CopyView {
    /// Nothing to show (`--quiet`, or `--json` on stdout).
    Silent,
    /// A bar per table.
    Bars {
        multi: indicatif::MultiProgress,
        bars: HashMap<(String, String), indicatif::ProgressBar>,
    },
    /// JSON lines on stderr.
    Lines {
        last: HashMap<(String, String), (String, Instant)>,
    },
}

impl<'a> MigrateObserver<'a> {
    /// An observer for a migration of `strategy`.
    pub fn new(ctx: &'a Context, strategy: StrategyKind) -> Self {
        let view = if ctx.quiet || ctx.json {
            CopyView::Silent
        } else if std::io::stderr().is_terminal() {
            CopyView::Bars {
                multi: indicatif::MultiProgress::new(),
                bars: HashMap::new(),
            }
        } else {
            CopyView::Lines {
                last: HashMap::new(),
            }
        };
        MigrateObserver {
            ctx,
            strategy,
            copy: Mutex::new(view),
        }
    }

    fn step_label(&self, step: pgseal_core::Step) -> String {
        format!(
            "[{:>2}/{}] {step}",
            step.number(self.strategy),
            self.strategy.steps().len()
        )
    }

    /// Shows one event.
    pub fn event(&self, event: &Event) {
        match event {
            Event::Started(step) => self.ctx.status(format!("{} ...", self.step_label(*step))),
            Event::Done {
                step,
                elapsed,
                summary,
            } => {
                self.finish_bars();
                self.ctx.status(format!(
                    "{} done in {:.1} s: {summary}",
                    self.step_label(*step),
                    elapsed.as_secs_f64()
                ))
            }
            Event::AlreadyDone(step) => self
                .ctx
                .status(format!("{} (done earlier)", self.step_label(*step))),
            Event::Waiting { step, what } => self
                .ctx
                .status(format!("{} waits: {what}", self.step_label(*step))),
            Event::Copy(tables) => self.copy(tables),
        }
    }

    fn finish_bars(&self) {
        let mut view = self.copy.lock().expect("the observer is not poisoned");
        if let CopyView::Bars { bars, .. } = &mut *view {
            for (_, bar) in bars.drain() {
                bar.finish();
            }
        }
    }

    fn copy(&self, tables: &[TableCopy]) {
        let mut view = self.copy.lock().expect("the observer is not poisoned");
        match &mut *view {
            CopyView::Silent => {}
            CopyView::Bars { multi, bars } => {
                for t in tables {
                    let key = (t.database.clone(), t.table.clone());
                    let bar = bars.entry(key).or_insert_with(|| {
                        let bar = multi.add(indicatif::ProgressBar::new(
                            t.source_bytes.unwrap_or(0).max(1) as u64,
                        ));
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "  {prefix:<36} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                            )
                            .expect("the template is valid")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{}/{}", t.database, t.table));
                        bar
                    });
                    if t.ready() {
                        bar.set_position(bar.length().unwrap_or(0));
                    } else if let Some(b) = t.bytes {
                        bar.set_position(b.max(0) as u64);
                    }
                    bar.set_message(format!(
                        "{} {}",
                        t.state,
                        t.rows.map(|r| format!("{r} rows")).unwrap_or_default()
                    ));
                }
            }
            CopyView::Lines { last } => {
                for t in tables {
                    let key = (t.database.clone(), t.table.clone());
                    let due = match last.get(&key) {
                        None => true,
                        Some((state, at)) => {
                            *state != t.state
                                || (t.state == "copying" && at.elapsed() >= LINE_EVERY)
                        }
                    };
                    if due {
                        let line = serde_json::json!({
                            "event": "copy", "database": t.database, "table": t.table,
                            "state": t.state, "rows": t.rows, "bytes": t.bytes,
                            "source_bytes": t.source_bytes,
                        });
                        eprintln!("{line}");
                        last.insert(key, (t.state.clone(), Instant::now()));
                    }
                }
            }
        }
    }
}

/// How `fleet` commands show their migrations while they run: on a terminal a line per
/// running migration with the last thing it said; otherwise (and with `--json`) JSON
/// lines on stderr, each naming its migration; nothing with `--quiet`.
pub struct FleetProgress {
    view: Mutex<FleetView>,
}

enum FleetView {
    Silent,
    Bars {
        multi: indicatif::MultiProgress,
        bars: HashMap<String, indicatif::ProgressBar>,
    },
    Lines,
}

/// The most of a migration's line a terminal bar shows.
const BAR_LINE_CHARS: usize = 100;

impl FleetProgress {
    /// A view for `ctx`'s output.
    pub fn new(ctx: &Context) -> Self {
        let view = if ctx.quiet {
            FleetView::Silent
        } else if std::io::stderr().is_terminal() && !ctx.json {
            FleetView::Bars {
                multi: indicatif::MultiProgress::new(),
                bars: HashMap::new(),
            }
        } else {
            FleetView::Lines
        };
        FleetProgress {
            view: Mutex::new(view),
        }
    }

    /// Shows one event of the fleet's runner.
    pub fn show(&self, event: &pgseal_fleet::Event<'_>) {
        use pgseal_fleet::Event;
        let mut view = self.view.lock().expect("progress view");
        match &mut *view {
            FleetView::Silent => {}
            FleetView::Lines => {
                let line = match event {
                    Event::Started { migration, slot } => serde_json::json!({
                        "migration": migration, "event": "started", "slot": slot,
                    }),
                    Event::Line { migration, line } => {
                        match serde_json::from_str::<serde_json::Value>(line) {
                            Ok(serde_json::Value::Object(mut fields)) => {
                                fields.insert("migration".into(), (*migration).into());
                                serde_json::Value::Object(fields)
                            }
                            _ => serde_json::json!({
                                "migration": migration, "event": "line", "line": line,
                            }),
                        }
                    }
                    Event::Finished(f) => serde_json::json!({
                        "migration": f.migration, "event": "finished",
                        "exit_code": f.exit_code, "skipped": f.skipped,
                        "seconds": (f.finished_ms - f.started_ms).max(0) as f64 / 1000.0,
                    }),
                };
                eprintln!("{line}");
            }
            FleetView::Bars { multi, bars } => match event {
                Event::Started { migration, .. } => {
                    let bar = multi.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} {prefix:<16} {elapsed:>4} {wide_msg}",
                        )
                        .expect("a valid template"),
                    );
                    bar.set_prefix(crate::output::terminal_safe(migration));
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bars.insert(migration.to_string(), bar);
                }
                Event::Line { migration, line } => {
                    if let Some(bar) = bars.get(*migration) {
                        let text: String = crate::output::terminal_safe(line)
                            .chars()
                            .take(BAR_LINE_CHARS)
                            .collect();
                        bar.set_message(text);
                    }
                }
                Event::Finished(f) => {
                    if let Some(bar) = bars.get(&f.migration) {
                        bar.finish_with_message(if f.succeeded() {
                            "done".to_string()
                        } else {
                            crate::output::terminal_safe(&f.why())
                        });
                    }
                }
            },
        }
    }
}
