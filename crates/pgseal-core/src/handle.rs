//! [`Handle`]: one migration as a phase acts on it.

use pgseal_platform::Platform;

use crate::journal::Journal;

/// One migration as the phases act on it: the platform its instances run on, the journal
/// that records it, and its name there. What every [`crate::strategy::Strategy`] method
/// and every phase's entry gets.
pub struct Handle<'a, P: Platform> {
    /// The platform the source and target run on.
    pub platform: &'a P,
    /// The journal holding the migration's spec, phase, steps and resources.
    pub journal: &'a Journal,
    /// The migration's name.
    pub name: &'a str,
}

impl<'a, P: Platform> Handle<'a, P> {
    /// The migration `name` of `journal`, on `platform`.
    pub fn new(platform: &'a P, journal: &'a Journal, name: &'a str) -> Self {
        Handle {
            platform,
            journal,
            name,
        }
    }
}
