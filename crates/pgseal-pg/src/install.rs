//! Discovering the PostgreSQL server installation pgseal runs its local servers with.
//!
//! The binaries directory comes from `PGSEAL_PG_BINDIR` when set, else from
//! `pg_config --bindir` with `pg_config` found on `PATH`. Either way the directory must hold
//! every program in [`REQUIRED_PROGRAMS`], and `postgres --version` gives the version.
//!
//! Other major versions ([`PgInstalls`]) are found under the installation roots: Debian's
//! `/usr/lib/postgresql/N/bin`, the roots `scripts/setup` provisions (`.tools/postgresql/N`
//! beside the binary's project, `/usr/local/lib/pgseal/postgresql/N`), and the roots named
//! by `PGSEAL_PG_ROOTS`. A server-only installation (the registry package of PostgreSQL
//! 17 has no `pg_dump`) runs servers; client tools come from the newest installation that
//! has them ([`PgInstalls::client_tool`]).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use pgseal_exec::{ExternalCommand, find_program_in};
use serde::Serialize;

/// The environment variable that names the binaries directory explicitly.
pub const BINDIR_ENV: &str = "PGSEAL_PG_BINDIR";

/// Programs pgseal needs from the server installation.
pub const REQUIRED_PROGRAMS: &[&str] = &["postgres", "initdb", "pg_ctl", "pg_basebackup"];

/// Programs a server-only installation must hold to run local servers.
pub const SERVER_PROGRAMS: &[&str] = &["postgres", "initdb", "pg_ctl"];

/// The environment variable naming more installation roots (`:`-separated); each holds
/// one directory per major version, `N/bin/postgres`.
pub const ROOTS_ENV: &str = "PGSEAL_PG_ROOTS";

/// The machine-wide root `scripts/setup` falls back to when the project's `.tools` cannot
/// be read by the server's OS user.
pub const SYSTEM_TOOLS_ROOT: &str = "/usr/local/lib/pgseal/postgresql";

/// Why no usable installation was found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// `PGSEAL_PG_BINDIR` is unset and `pg_config` is not on `PATH`.
    #[error("pg_config is not on PATH and {BINDIR_ENV} is not set")]
    NoPgConfig,
    /// `pg_config --bindir` failed.
    #[error("cannot ask pg_config for the binaries directory: {0}")]
    PgConfig(#[source] pgseal_exec::Error),
    /// The binaries directory lacks programs pgseal needs.
    #[error("{} (from {origin}) lacks {}", bindir.display(), missing.join(", "))]
    MissingPrograms {
        /// The directory looked in.
        bindir: PathBuf,
        /// Where the directory came from.
        origin: BindirOrigin,
        /// The programs it lacks.
        missing: Vec<String>,
    },
    /// `postgres --version` failed or printed something unexpected.
    #[error("cannot tell the PostgreSQL version of {}: {reason}", program.display())]
    Version {
        /// The `postgres` program asked.
        program: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Where the binaries directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindirOrigin {
    /// The `PGSEAL_PG_BINDIR` environment variable.
    Env,
    /// `pg_config --bindir`.
    PgConfig,
    /// Found under an installation root (see [`PgInstalls`]).
    Root,
}

impl fmt::Display for BindirOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindirOrigin::Env => write!(f, "{BINDIR_ENV}"),
            BindirOrigin::PgConfig => write!(f, "pg_config --bindir"),
            BindirOrigin::Root => write!(f, "an installation root"),
        }
    }
}

/// A PostgreSQL server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PgVersion {
    /// Major version (15 for 15.18).
    pub major: u32,
    /// Minor version (18 for 15.18).
    pub minor: u32,
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl PgVersion {
    /// The major version of a version as records keep it (`15.20`, `17.10`, `17`).
    pub fn major_of(text: &str) -> Option<u32> {
        text.split('.').next()?.trim().parse().ok()
    }

    /// Parses the output of `postgres --version`, e.g.
    /// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub fn parse_version_output(text: &str) -> Option<Self> {
        let rest = text
            .split("(PostgreSQL)")
            .nth(1)?
            .split_whitespace()
            .next()?;
        let mut parts = rest.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(PgVersion { major, minor })
    }
}

/// A usable PostgreSQL server installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PgInstall {
    /// The directory that holds `postgres`, `initdb`, `pg_ctl`, ...
    pub bindir: PathBuf,
    /// Where that directory came from.
    pub origin: BindirOrigin,
    /// The server's version.
    pub version: PgVersion,
}

impl PgInstall {
    /// Discovers the installation from this process's environment.
    pub fn discover() -> Result<Self, DiscoverError> {
        Self::discover_with(
            std::env::var_os(BINDIR_ENV).as_deref(),
            std::env::var_os("PATH").as_deref(),
        )
    }

    /// Discovers the installation from an explicit `PGSEAL_PG_BINDIR` value and search path.
    pub fn discover_with(
        bindir_override: Option<&OsStr>,
        search_path: Option<&OsStr>,
    ) -> Result<Self, DiscoverError> {
        let (bindir, origin) = match bindir_override.filter(|v| !v.is_empty()) {
            Some(dir) => (PathBuf::from(dir), BindirOrigin::Env),
            None => {
                let pg_config =
                    find_program_in("pg_config", search_path).ok_or(DiscoverError::NoPgConfig)?;
                let mut cmd = ExternalCommand::new(pg_config).arg("--bindir");
                if let Some(path) = search_path {
                    cmd = cmd.env("PATH", path);
                }
                let out = cmd.run().map_err(DiscoverError::PgConfig)?;
                (
                    PathBuf::from(out.stdout_text().trim()),
                    BindirOrigin::PgConfig,
                )
            }
        };
        Self::at(bindir, origin, REQUIRED_PROGRAMS)
    }

    /// The installation in `bindir`, which must hold `required`.
    pub fn at(
        bindir: PathBuf,
        origin: BindirOrigin,
        required: &[&str],
    ) -> Result<Self, DiscoverError> {
        let missing: Vec<String> = required
            .iter()
            .filter(|p| find_program_in(p, Some(bindir.as_os_str())).is_none())
            .map(|p| p.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(DiscoverError::MissingPrograms {
                bindir,
                origin,
                missing,
            });
        }
        let postgres = bindir.join("postgres");
        let version_error = |reason: String| DiscoverError::Version {
            program: postgres.clone(),
            reason,
        };
        let out = ExternalCommand::new(&postgres)
            .arg("--version")
            .run()
            .map_err(|e| version_error(e.to_string()))?;
        let text = out.stdout_text();
        let version = PgVersion::parse_version_output(&text)
            .ok_or_else(|| version_error(format!("unexpected output {:?}", text.trim())))?;
        Ok(PgInstall {
            bindir,
            origin,
            version,
        })
    }

    /// The path of one of the installation's programs (`initdb`, `pg_ctl`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// True when the installation has the program `name`.
    pub fn has(&self, name: &str) -> bool {
        self.program(name).is_file()
    }

    /// The extensions this installation can create (`share/extension/*.control`, found
    /// with `pg_config`'s layout or the registry package's `share/postgresql/extension`).
    pub fn extensions(&self) -> std::collections::BTreeSet<String> {
        let Some(prefix) = self.bindir.parent() else {
            return Default::default();
        };
        let mut dirs = vec![
            prefix.join("share/postgresql/extension"),
            prefix.join("share/extension"),
        ];
        // Debian: /usr/lib/postgresql/N/bin -> /usr/share/postgresql/N/extension.
        dirs.push(
            PathBuf::from("/usr/share/postgresql")
                .join(self.version.major.to_string())
                .join("extension"),
        );
        dirs.iter()
            .filter(|d| {
                // Debian's shared directory belongs to its own packaged installation only.
                !d.starts_with("/usr/share/postgresql")
                    || self.bindir.starts_with("/usr/lib/postgresql")
            })
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".control").map(str::to_string)
            })
            .collect()
    }
}

/// Every PostgreSQL installation pgseal can use, one per major version: the default one
/// ([`PgInstall::discover`]) and those under the installation roots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgInstalls {
    /// The installation `PGSEAL_PG_BINDIR` or `pg_config` names, when there is one.
    pub default: Option<PgInstall>,
    /// All of them (the default included), newest major version first; one per major.
    pub all: Vec<PgInstall>,
}

impl PgInstalls {
    /// Discovers the installations from this process's environment.
    pub fn discover() -> Self {
        let default = PgInstall::discover().ok();
        let mut roots = vec![PathBuf::from("/usr/lib/postgresql")];
        if let Some(extra) = std::env::var_os(ROOTS_ENV) {
            roots.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
        }
        roots.extend(project_tools_root());
        roots.push(PathBuf::from(SYSTEM_TOOLS_ROOT));
        Self::from_roots(default, &roots)
    }

    /// The installations under `roots` (each holding `N/bin`), with `default` first.
    pub fn from_roots(default: Option<PgInstall>, roots: &[PathBuf]) -> Self {
        let mut all: Vec<PgInstall> = default.iter().cloned().collect();
        for root in roots {
            let mut found: Vec<PathBuf> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .map(|e| e.path().join("bin"))
                .collect();
            found.sort();
            for bindir in found {
                if all.iter().any(|i| i.bindir == bindir) {
                    continue;
                }
                let Ok(install) = PgInstall::at(bindir, BindirOrigin::Root, SERVER_PROGRAMS) else {
                    continue;
                };
                if !all.iter().any(|i| i.version.major == install.version.major) {
                    all.push(install);
                }
            }
        }
        all.sort_by_key(|i| std::cmp::Reverse(i.version.major));
        PgInstalls { default, all }
    }

    /// The installation of major version `major`.
    pub fn for_major(&self, major: u32) -> Option<&PgInstall> {
        self.all.iter().find(|i| i.version.major == major)
    }

    /// The major versions installed, newest first.
    pub fn majors(&self) -> Vec<u32> {
        self.all.iter().map(|i| i.version.major).collect()
    }

    /// The client program `name` (`pg_dump`, `psql`, ...) of the newest installation that
    /// has it and is not older than `at_least` (a dump must come from a `pg_dump` at least
    /// as new as the server it reads).
    pub fn client_tool(&self, name: &str, at_least: u32) -> Option<PathBuf> {
        self.all
            .iter()
            .filter(|i| i.version.major >= at_least && i.has(name))
            .map(|i| i.program(name))
            .next()
    }
}

/// `.tools/postgresql` in the project this binary was built in, found by walking up from
/// the executable (`target/release/pgseal` → the project root), when it exists.
fn project_tools_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|dir| dir.join(".tools/postgresql"))
        .find(|dir| dir.is_dir())
}

/// Server binaries directories a distribution package would have installed, newest first
/// (Debian and Ubuntu put them under `/usr/lib/postgresql/N/bin`). Used for hints only.
pub fn packaged_bindirs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root.join("usr/lib/postgresql"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The `PATH` value that puts `dir` first, for children that need a particular install.
pub fn path_with_first(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| dir.as_os_str().to_os_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_debian_and_plain_version_strings() {
        let v = PgVersion::parse_version_output(
            "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
        );
        assert_eq!(
            v,
            Some(PgVersion {
                major: 15,
                minor: 18
            })
        );
        let v = PgVersion::parse_version_output("postgres (PostgreSQL) 17beta1");
        assert_eq!(
            v,
            Some(PgVersion {
                major: 17,
                minor: 0
            })
        );
        assert_eq!(PgVersion::parse_version_output("bash 5.2"), None);
        assert_eq!(PgVersion::major_of("17.10"), Some(17));
        assert_eq!(PgVersion::major_of("15"), Some(15));
        assert_eq!(PgVersion::major_of("x"), None);
    }

    #[test]
    fn no_pg_config_on_path_is_reported() {
        let empty = tempfile::tempdir().unwrap();
        let err = PgInstall::discover_with(None, Some(empty.path().as_os_str())).unwrap_err();
        assert!(matches!(err, DiscoverError::NoPgConfig), "{err:?}");
    }

    #[test]
    fn override_lacking_programs_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("postgres");
        std::fs::write(&fake, "#!/bin/sh\necho 'postgres (PostgreSQL) 15.2'\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = PgInstall::discover_with(Some(dir.path().as_os_str()), None).unwrap_err();
        let DiscoverError::MissingPrograms {
            missing, origin, ..
        } = err
        else {
            panic!("expected missing programs, got {err:?}")
        };
        assert_eq!(origin, BindirOrigin::Env);
        assert_eq!(missing, ["initdb", "pg_ctl", "pg_basebackup"]);
    }

    #[test]
    fn installations_are_found_per_major_version_under_roots() {
        let root = tempfile::tempdir().unwrap();
        for (major, programs) in [
            ("17", &["postgres", "initdb", "pg_ctl"][..]),
            ("16", &["postgres"][..]),
        ] {
            let bin = root.path().join(major).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in programs {
                let path = bin.join(p);
                std::fs::write(
                    &path,
                    format!("#!/bin/sh\necho 'postgres (PostgreSQL) {major}.3'\n"),
                )
                .unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let installs = PgInstalls::from_roots(None, &[root.path().to_path_buf()]);
        // 16 lacks initdb and pg_ctl: not an installation.
        assert_eq!(installs.majors(), [17]);
        let v17 = installs.for_major(17).unwrap();
        assert_eq!(
            v17.version,
            PgVersion {
                major: 17,
                minor: 3
            }
        );
        assert_eq!(v17.origin, BindirOrigin::Root);
        assert_eq!(installs.client_tool("pg_dump", 15), None);
        assert_eq!(
            installs.client_tool("initdb", 15),
            Some(v17.program("initdb"))
        );
        assert_eq!(installs.client_tool("initdb", 18), None);
    }

    #[test]
    fn finds_the_machine_installation() {
        // The set-up script installs postgresql-15; this is the real discovery path.
        let install =
            PgInstall::discover().expect("PostgreSQL server binaries (run scripts/setup)");
        assert!(install.version.major >= 13, "{install:?}");
        assert!(install.program("initdb").is_file());
    }
}
