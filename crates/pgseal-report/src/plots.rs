//! The report's plots, drawn by `plotters` into SVG strings.
//!
//! Each plot is computed in two parts: its [`Axes`] (ranges and units, pure and tested)
//! and its drawing. A series longer than [`MAX_POINTS`] is thinned to the largest value
//! of each bucket, so a day of one-per-second samples draws in milliseconds and peaks
//! stay visible.

use plotters::prelude::*;

use pgseal_core::cutover::PauseTiming;
use pgseal_core::samples::Sample;

use crate::ReportError;

/// The most points a series is drawn with.
pub const MAX_POINTS: usize = 1_000;

/// Width and height of every plot, in SVG pixels.
const SIZE: (u32, u32) = (760, 260);

/// A drawn plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// The plot's title.
    pub title: String,
    /// The SVG document.
    pub svg: String,
    /// Its axes.
    pub axes: Axes,
    /// True when there was nothing to draw (the SVG says so).
    pub empty: bool,
}

/// A unit a time axis counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Milliseconds (the cutover pause).
    Milliseconds,
    /// Seconds.
    Seconds,
    /// Minutes.
    Minutes,
    /// Hours.
    Hours,
}

impl TimeUnit {
    /// The unit that keeps a span of `span_ms` readable.
    pub fn for_span(span_ms: i64) -> TimeUnit {
        match span_ms {
            s if s > 3 * 3_600_000 => TimeUnit::Hours,
            s if s > 3 * 60_000 => TimeUnit::Minutes,
            _ => TimeUnit::Seconds,
        }
    }

    fn ms(self) -> f64 {
        match self {
            TimeUnit::Milliseconds => 1.0,
            TimeUnit::Seconds => 1_000.0,
            TimeUnit::Minutes => 60_000.0,
            TimeUnit::Hours => 3_600_000.0,
        }
    }

    /// Its name on an axis.
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Milliseconds => "ms",
            TimeUnit::Seconds => "s",
            TimeUnit::Minutes => "min",
            TimeUnit::Hours => "h",
        }
    }
}

/// A plot's ranges: x in `x_unit` since `origin_ms`, y in `y_unit` (a value divided by
/// `y_divisor`).
#[derive(Debug, Clone, PartialEq)]
pub struct Axes {
    /// The x range.
    pub x: (f64, f64),
    /// The y range (from 0).
    pub y: (f64, f64),
    /// What x counts.
    pub x_unit: TimeUnit,
    /// What y counts.
    pub y_unit: &'static str,
    /// What a value is divided by to be in `y_unit`.
    pub y_divisor: f64,
    /// The moment x counts from (unix ms).
    pub origin_ms: i64,
}

impl Axes {
    /// Where the value `value` at `at_ms` lies on these axes.
    pub fn point(&self, at_ms: i64, value: f64) -> (f64, f64) {
        (
            (at_ms - self.origin_ms) as f64 / self.x_unit.ms(),
            value / self.y_divisor,
        )
    }
}

/// A byte unit for values up to `max`: its divisor and name.
pub fn byte_unit(max: f64) -> (f64, &'static str) {
    const UNITS: [(f64, &str); 4] = [
        (1_073_741_824.0, "GiB"),
        (1_048_576.0, "MiB"),
        (1_024.0, "KiB"),
        (1.0, "B"),
    ];
    UNITS
        .into_iter()
        .find(|(d, _)| max >= *d * 2.0)
        .unwrap_or((1.0, "B"))
}

/// One line of a plot: a name and its points `(at_ms, value)`.
type Series = (String, Vec<(i64, f64)>);

/// `points` thinned to at most [`MAX_POINTS`]: the largest value of each bucket, at the
/// bucket's first time.
pub fn thin(points: &[(i64, f64)]) -> Vec<(i64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .map(|chunk| {
            let top = chunk.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            (chunk[0].0, top)
        })
        .collect()
}

/// Per-database series of `value` over `samples` from `since_ms` on.
fn series(
    samples: &[Sample],
    since_ms: i64,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Vec<Series> {
    by_database(
        samples
            .iter()
            .filter(|s| s.at_ms >= since_ms)
            .filter_map(|s| Some((s.database.as_str(), s.at_ms, value(s)?))),
    )
}

/// `(database, at_ms, value)` points as one series a database, in the order first seen.
fn by_database<'a>(points: impl IntoIterator<Item = (&'a str, i64, f64)>) -> Vec<Series> {
    let mut by_db: Vec<Series> = Vec::new();
    for (database, at_ms, v) in points {
        match by_db.iter_mut().find(|(db, _)| db == database) {
            Some((_, points)) => points.push((at_ms, v)),
            None => by_db.push((database.to_string(), vec![(at_ms, v)])),
        }
    }
    by_db
}

/// The axes of `series` (and of a limit line at `limit`), times from `origin_ms`.
pub fn time_axes(series: &[Series], origin_ms: i64, limit: Option<f64>) -> Axes {
    let last = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .max()
        .unwrap_or(origin_ms);
    let unit = TimeUnit::for_span(last - origin_ms);
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .chain(limit)
        .fold(0.0, f64::max);
    let (divisor, name) = byte_unit(top);
    let x_max = ((last - origin_ms) as f64 / unit.ms()).max(1.0);
    let y_max = if top > 0.0 { top / divisor * 1.1 } else { 1.0 };
    Axes {
        x: (0.0, x_max),
        y: (0.0, y_max),
        x_unit: unit,
        y_unit: name,
        y_divisor: divisor,
        origin_ms,
    }
}

fn plot_error<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// A chart titled `title` over `axes` on `root`, with `y_labels` pixels for the y axis's
/// labels.
fn chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    axes: &Axes,
    y_labels: u32,
) -> Result<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    ReportError,
> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(y_labels)
        .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
        .map_err(plot_error)
}

/// Writes `note` across the middle of an empty plot.
fn empty_note<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    note: &str,
) -> Result<(), ReportError> {
    let (width, height) = root.dim_in_pixel();
    root.draw(&Text::new(
        note,
        (width as i32 / 2 - 70, height as i32 / 2),
        ("sans-serif", 16)
            .into_font()
            .color(&RGBColor(120, 120, 120)),
    ))
    .map_err(plot_error)
}

/// Draws the legend of the series drawn so far in the upper right corner.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)
}

/// Draws lines over time since `origin_ms` (`since` names that moment on the x axis),
/// with an optional horizontal limit line.
fn time_plot(
    title: &str,
    series: Vec<Series>,
    origin_ms: i64,
    since: &str,
    limit: Option<(f64, String)>,
) -> Result<Plot, ReportError> {
    let axes = time_axes(&series, origin_ms, limit.as_ref().map(|l| l.0));
    let empty = series.iter().all(|(_, p)| p.is_empty());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = chart(&root, title, &axes, 64)?;
        chart
            .configure_mesh()
            .x_desc(format!("time since {since} ({})", axes.x_unit.name()))
            .y_desc(axes.y_unit)
            .draw()
            .map_err(plot_error)?;
        if empty {
            empty_note(&root, "no samples recorded")?;
        }
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = thin(points);
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(at, v)| axes.point(*at, *v)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        if let Some((value, label)) = &limit {
            let red = RGBColor(200, 30, 30);
            chart
                .draw_series(DashedLineSeries::new(
                    [
                        (axes.x.0, value / axes.y_divisor),
                        (axes.x.1, value / axes.y_divisor),
                    ],
                    6,
                    4,
                    red.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red));
        }
        if !empty {
            legend(&mut chart)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(Plot {
        title: title.to_string(),
        svg,
        axes,
        empty,
    })
}

/// Replication lag in bytes per database over the whole migration.
pub fn lag(samples: &[Sample], origin_ms: i64) -> Result<Plot, ReportError> {
    time_plot(
        "Replication lag per database",
        series(samples, origin_ms, |s| s.lag_bytes.map(|b| b as f64)),
        origin_ms,
        "the migration began",
        None,
    )
}

/// WAL held by each slot on the source, against the retention limit when there is one.
pub fn retention(
    samples: &[Sample],
    origin_ms: i64,
    limit: Option<u64>,
) -> Result<Plot, ReportError> {
    time_plot(
        "WAL held on the source by each slot",
        series(samples, origin_ms, |s| s.retained_bytes.map(|b| b as f64)),
        origin_ms,
        "the migration began",
        limit.map(|l| (l as f64, "--max-slot-retention".to_string())),
    )
}

/// The full load's copy rate (`COPY` bytes per second) per database over time, from
/// `rates` as `(at_ms, database, bytes_per_second)`.
pub fn copy_rate(rates: &[(i64, String, f64)], origin_ms: i64) -> Result<Plot, ReportError> {
    let by_db = by_database(
        rates
            .iter()
            .map(|(at_ms, db, rate)| (db.as_str(), *at_ms, *rate)),
    );
    time_plot(
        "Initial copy: COPY data per second, per database",
        by_db,
        origin_ms,
        "the migration began",
        None,
    )
}

/// A fleet's replication lag over time, one line per migration (the largest of its
/// databases at each sample), from `migrations` as `(name, samples)`.
pub fn fleet_lag(migrations: &[(&str, &[Sample])], origin_ms: i64) -> Result<Plot, ReportError> {
    let series = migrations
        .iter()
        .map(|(name, samples)| {
            let mut at: std::collections::BTreeMap<i64, f64> = Default::default();
            for s in samples.iter().filter(|s| s.at_ms >= origin_ms) {
                if let Some(lag) = s.lag_bytes {
                    let v = at.entry(s.at_ms).or_insert(0.0);
                    *v = v.max(lag as f64);
                }
            }
            (name.to_string(), at.into_iter().collect())
        })
        .collect();
    time_plot(
        "Replication lag per migration",
        series,
        origin_ms,
        "the first migration began",
        None,
    )
}

/// A fleet's write pauses side by side: for each `(migration, cutover ms, rollback ms)`
/// a bar of its cutover's pause and one of its rollback's, where there was one.
pub fn fleet_pauses(pauses: &[(&str, Option<u64>, Option<u64>)]) -> Result<Plot, ReportError> {
    let top = pauses
        .iter()
        .flat_map(|(_, c, r)| [*c, *r])
        .flatten()
        .max()
        .unwrap_or(0) as f64;
    let n = pauses.len().max(1);
    let axes = Axes {
        x: (0.0, n as f64),
        y: (0.0, if top > 0.0 { top * 1.25 } else { 1.0 }),
        x_unit: TimeUnit::Milliseconds,
        y_unit: "ms",
        y_divisor: 1.0,
        origin_ms: 0,
    };
    let empty = pauses.iter().all(|(_, c, r)| c.is_none() && r.is_none());
    let names: Vec<String> = pauses.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = chart(&root, "Write pauses per migration", &axes, 64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.26 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("milliseconds")
            .draw()
            .map_err(plot_error)?;
        if empty {
            empty_note(&root, "no pause recorded")?;
        }
        for (which, colour, offset) in [
            ("cutover", PHASE_COLOURS[0], 0.15),
            ("rollback", PHASE_COLOURS[1], 0.5),
        ] {
            let bars: Vec<Rectangle<(f64, f64)>> = pauses
                .iter()
                .enumerate()
                .filter_map(|(i, (_, c, r))| {
                    let ms = if which == "cutover" { *c } else { *r }?;
                    let x = i as f64 + offset;
                    Some(Rectangle::new(
                        [(x, 0.0), (x + 0.35, ms as f64)],
                        colour.filled(),
                    ))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars)
                .map_err(plot_error)?
                .label(which)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if !empty {
            legend(&mut chart)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(Plot {
        title: "Write pauses per migration".into(),
        svg,
        axes,
        empty,
    })
}

/// How long catch-up after the snapshot (or the initial copy) is shown at most.
const CATCH_UP_WINDOW_MS: i64 = 15 * 60_000;

/// The lag from the moment replication into the target began, over its first minutes.
pub fn catch_up(samples: &[Sample], started_ms: Option<i64>) -> Result<Plot, ReportError> {
    let start = started_ms.unwrap_or(i64::MAX);
    let window: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at_ms >= start && s.at_ms <= start.saturating_add(CATCH_UP_WINDOW_MS))
        .cloned()
        .collect();
    time_plot(
        "Catch-up once replication began",
        series(&window, start, |s| s.lag_bytes.map(|b| b as f64)),
        if started_ms.is_some() { start } else { 0 },
        "replication began",
        None,
    )
}

/// The colours of the pause's parts, in order.
const PHASE_COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// A switch's write pause (`title`: the cutover's or the rollback's) as a stacked bar of
/// its parts (pgseal's clock), beside a bar of the longest client wait the switch saw.
pub fn pause(
    title: &str,
    phases: &[PauseTiming],
    client_wait_ms: Option<u64>,
) -> Result<Plot, ReportError> {
    let total: f64 = phases.iter().map(|p| p.ms).sum();
    let top = total.max(client_wait_ms.unwrap_or(0) as f64);
    // The right third stays free for the legend.
    let axes = Axes {
        x: (0.0, if top > 0.0 { top * 1.5 } else { 1.0 }),
        y: (0.0, 2.0),
        x_unit: TimeUnit::Milliseconds,
        y_unit: "",
        y_divisor: 1.0,
        origin_ms: 0,
    };
    let empty = phases.is_empty();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, 240)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = chart(&root, title, &axes, 90)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(3)
            .y_label_formatter(&|y| match y.round() as i64 {
                0 => "clients".to_string(),
                1 => "pgseal".to_string(),
                _ => String::new(),
            })
            .x_desc("milliseconds")
            .draw()
            .map_err(plot_error)?;
        if empty {
            empty_note(&root, "no pause recorded")?;
        }
        let mut from = 0.0;
        for (i, phase) in phases.iter().enumerate() {
            let colour = PHASE_COLOURS[i % PHASE_COLOURS.len()];
            let to = from + phase.ms;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(from, 0.7), (to, 1.3)],
                    colour.filled(),
                )))
                .map_err(plot_error)?
                .label(format!("{} {:.0} ms", phase.phase, phase.ms))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
            from = to;
        }
        if let Some(wait) = client_wait_ms {
            let grey = RGBColor(90, 90, 90);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, -0.3), (wait as f64, 0.3)],
                    grey.filled(),
                )))
                .map_err(plot_error)?
                .label(format!("longest client wait {wait} ms"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], grey.filled()));
        }
        if !empty {
            legend(&mut chart)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(Plot {
        title: title.into(),
        svg,
        axes,
        empty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, database: &str, lag: u64, retained: i64) -> Sample {
        Sample::lag_only(at_ms, database, lag, retained)
    }

    #[test]
    fn lag_axes_cover_every_database_in_a_readable_unit() {
        let samples = [
            sample(1_000, "app", 4 << 20, 0),
            sample(1_000, "audit", 1 << 20, 0),
            sample(121_000, "app", 2 << 20, 0),
            sample(241_000, "audit", 10 << 20, 0),
        ];
        let plot = lag(&samples, 1_000).unwrap();
        assert!(!plot.empty);
        assert_eq!(plot.axes.x_unit, TimeUnit::Minutes);
        assert_eq!(plot.axes.x, (0.0, 4.0));
        assert_eq!(plot.axes.y_unit, "MiB");
        assert!((plot.axes.y.1 - 11.0).abs() < 1e-9, "{:?}", plot.axes.y);
        assert!(plot.svg.starts_with("<svg"));
        assert!(plot.svg.contains(">\napp\n<") || plot.svg.contains("app"));
        assert!(plot.svg.contains("audit"));
        // Every sample lies inside the plotted range, in the axis's unit.
        for s in &samples {
            let (x, y) = plot.axes.point(s.at_ms, s.lag_bytes.unwrap() as f64);
            assert!(
                x <= plot.axes.x.1 && y <= plot.axes.y.1,
                "{x}, {y}: {:?}",
                plot.axes
            );
        }
        assert_eq!(plot.axes.point(241_000, (10 << 20) as f64), (4.0, 10.0));
        // ... and is drawn where its value puts it: each database's two different lags
        // at two different heights, inside the picture (not pinned to an edge).
        for line in plot
            .svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
        {
            let points = line.split("points=\"").nth(1).unwrap();
            let ys: Vec<f64> = points
                .split('"')
                .next()
                .unwrap()
                .split_whitespace()
                .map(|xy| xy.split(',').nth(1).unwrap().parse().unwrap())
                .collect();
            assert_eq!(ys.len(), 2, "{line}");
            assert!(ys[0] != ys[1], "{line}");
            assert!(ys.iter().all(|y| *y > 0.0 && *y < SIZE.1 as f64), "{line}");
        }
    }

    #[test]
    fn retention_draws_the_limit_and_scales_to_it() {
        let samples = [
            sample(0, "app", 0, 1 << 20),
            sample(10_000, "app", 0, 2 << 20),
        ];
        let plot = retention(&samples, 0, Some(64 << 20)).unwrap();
        assert_eq!(plot.axes.y_unit, "MiB");
        // The limit is above every sample: the range reaches it.
        assert!(plot.axes.y.1 >= 64.0, "{:?}", plot.axes.y);
        assert!(plot.svg.contains("--max-slot-retention"));
        assert!(
            plot.svg.contains("#C81E1E"),
            "the limit line is drawn in red"
        );
        let without = retention(&samples, 0, None).unwrap();
        assert!(!without.svg.contains("--max-slot-retention"));
        assert!(without.axes.y.1 < 3.0);
    }

    #[test]
    fn an_empty_series_draws_a_labelled_empty_plot() {
        for plot in [
            lag(&[], 0).unwrap(),
            retention(&[], 0, None).unwrap(),
            catch_up(&[], None).unwrap(),
            pause("Cutover write pause", &[], None).unwrap(),
        ] {
            assert!(plot.empty, "{}", plot.title);
            assert!(plot.svg.contains("no "), "{}", plot.title);
            assert!(plot.axes.x.1 > plot.axes.x.0 && plot.axes.y.1 > plot.axes.y.0);
        }
    }

    #[test]
    fn catch_up_starts_when_replication_began_and_ends_after_its_window() {
        let samples = [
            sample(0, "app", 9 << 20, 0),
            sample(5_000, "app", 8 << 20, 0),
            sample(65_000, "app", 1 << 10, 0),
            sample(5_000 + CATCH_UP_WINDOW_MS + 1, "app", 1, 0),
        ];
        let plot = catch_up(&samples, Some(5_000)).unwrap();
        assert_eq!(plot.axes.x_unit, TimeUnit::Seconds);
        assert!(plot.svg.contains("time since replication began (s)"));
        assert_eq!(plot.axes.x, (0.0, 60.0));
        assert!((plot.axes.y.1 - 8.8).abs() < 1e-9, "{:?}", plot.axes.y);
    }

    #[test]
    fn the_pause_bar_stacks_its_parts_beside_the_clients_wait() {
        let phases: Vec<PauseTiming> = [("pause", 5.0), ("fence", 40.0), ("drain", 55.0)]
            .into_iter()
            .map(|(phase, ms)| PauseTiming {
                phase: phase.into(),
                ms,
            })
            .collect();
        let plot = pause("Cutover write pause", &phases, Some(130)).unwrap();
        assert!((plot.axes.x.1 - 195.0).abs() < 1e-9, "{:?}", plot.axes.x);
        assert!(plot.svg.contains("drain 55 ms"));
        assert!(plot.svg.contains("longest client wait 130 ms"));
        // Three parts, the client bar, and the legend's swatches.
        assert!(plot.svg.matches("<rect").count() >= 4 + 4);
    }

    #[test]
    fn a_day_of_samples_is_thinned_keeping_peaks() {
        let mut points: Vec<(i64, f64)> = (0..86_400).map(|i| (i * 1000, 1.0)).collect();
        points[43_210].1 = 99.0;
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_POINTS);
        assert!(thinned.iter().any(|p| p.1 == 99.0));
    }
}
