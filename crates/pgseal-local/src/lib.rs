//! The local platform of pgseal: real PostgreSQL servers on this machine, managed like a
//! tiny RDS.
//!
//! - [`doctor`]: what this machine has for the local platform, what it lacks, and the exact
//!   command that fixes each gap.

pub mod doctor;
