//! Fleets: many migrations described by one inventory file (`docs/fleet.md`).
//!
//! A fleet adds no engine of its own. Each source of the inventory is one normal
//! migration, named in the file, that `pgseal migrate` runs, resumes, validates, cuts
//! over, rolls back and cleans up as it would alone. The fleet chooses which, how many at
//! once and in which wave:
//! - [`inventory`] reads and checks the file;
//! - [`drive`] says what `fleet run` does next with each migration;
//! - [`outcome`] says what a fleet command did with each migration;
//! - [`runner`] runs one `pgseal migrate` command per migration, a few at a time;
//! - [`slots`] bounds how many run at once across every fleet process of a home;
//! - [`status`] reads where each stands from the journal;
//! - [`estimate`] tells how long a start will take from what this machine measured.

pub mod drive;
pub mod estimate;
pub mod inventory;
pub mod outcome;
pub mod runner;
pub mod slots;
pub mod status;

pub use inventory::{Inventory, InventoryError, Source};
pub use outcome::MigrationOutcome;
pub use runner::{Event, Finished, Job, Runner};
pub use slots::{InventoryLock, Slots};
