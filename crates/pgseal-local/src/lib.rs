//! The local platform of pgseal: real PostgreSQL servers on this machine, managed like a
//! tiny RDS.
//!
//! - [`doctor`]: what this machine has for the local platform, what it lacks, and the exact
//!   command that fixes each gap.
//! - [`endpoint`]: PgBouncer endpoints in front of instances, switched at cutover.
//! - [`error`]: the local platform's error type.
//! - [`instance`]: PostgreSQL servers pgseal creates and runs, plain or on encrypted
//!   volumes.
//! - [`platform`]: all of it behind the engine's `Platform` trait.
//! - [`snapshot`]: base-backup snapshots (plain or sealed while streaming), copies,
//!   restores with the handoff LSN.
//! - [`volume`] and [`fscrypt`]: kernel-encrypted volumes (ext4 image, loop mount, fscrypt
//!   v2 policy, AES-256-XTS).
//! - [`writeout`]: a server's freshly written files written out from several threads.

pub(crate) mod capabilities;
pub mod doctor;
pub mod endpoint;
pub mod error;
pub mod fscrypt;
pub mod instance;
pub mod platform;
pub mod snapshot;
pub mod volume;
pub mod writeout;
