//! pgseal's migration engine. So far: [`preflight`], the read-only checks `migrate plan`
//! runs, which report every problem at once, each with its fix, and change nothing.

pub mod preflight;
