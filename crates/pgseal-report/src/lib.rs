//! The migration report: one self-contained HTML page made from a migration's journal
//! ([`pgseal_core::report::MigrationReport`]).
//!
//! - [`plots`]: lag, slot retention, catch-up and the cutover pause, as SVG by `plotters`.
//! - [`page`]: the page, an `askama` template with inline CSS; it fetches nothing (no
//!   script, font, stylesheet or image from anywhere) and prints on A4.

pub mod fleet;
pub mod page;
pub mod plots;

/// Making the report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A plot could not be drawn.
    #[error("drawing a plot: {0}")]
    Plot(String),
    /// The page could not be rendered.
    #[error("rendering the page: {0}")]
    Page(#[from] askama::Error),
}

pub use page::render;
