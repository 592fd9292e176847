//! `pgseal doctor`: checks this machine for everything the local platform needs.
//!
//! Each [`Check`] says what was found, whether pgseal can do without it, and — when it is
//! missing — the exact command that fixes it. The checks read the machine only; nothing is
//! changed. Paths under `/dev`, `/sys`, `/proc` and `/usr/lib/postgresql` are read below
//! [`DoctorInputs::system_root`] so tests can point them at a prepared tree.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use pgseal_exec::{RunAs, find_program_in, run_as::SERVER_OS_USER};
use pgseal_pg::install::{DiscoverError, PgInstall, packaged_bindirs};
use serde::Serialize;

use crate::capabilities::{CAP_SYS_RESOURCE, has_capability};

/// The oldest PostgreSQL major version pgseal runs local servers with.
pub const MIN_PG_MAJOR: u32 = 13;
/// The Debian package that provides the server.
const SERVER_PACKAGE: &str = "postgresql-15";
/// Linux capability number of CAP_SYS_ADMIN (mount, fscrypt key ioctls).
const CAP_SYS_ADMIN: u32 = 21;

/// What the checks look at: the search path, overrides, pgseal's home and the system root.
#[derive(Debug, Clone)]
pub struct DoctorInputs {
    /// The `PATH` to look for programs on.
    pub search_path: Option<OsString>,
    /// The `PGSEAL_PG_BINDIR` override, if set.
    pub pg_bindir_override: Option<OsString>,
    /// pgseal's data directory (`--home` / `PGSEAL_HOME`).
    pub home: PathBuf,
    /// Where `/dev`, `/sys`, `/proc` and `/usr` are read from: `/` on a real run.
    pub system_root: PathBuf,
}

impl DoctorInputs {
    /// The inputs of this process: its `PATH`, its `PGSEAL_PG_BINDIR`, and `/`.
    pub fn from_process(home: PathBuf) -> Self {
        DoctorInputs {
            search_path: std::env::var_os("PATH"),
            pg_bindir_override: std::env::var_os(pgseal_pg::install::BINDIR_ENV),
            home,
            system_root: PathBuf::from("/"),
        }
    }

    fn sys(&self, path: &str) -> PathBuf {
        self.system_root.join(path.trim_start_matches('/'))
    }
}

/// Whether pgseal can run without a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// The local platform does not work without it.
    Required,
    /// Some commands need it (named in [`Check::needed_for`]); the rest work without it.
    Recommended,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Absent or unusable.
    Missing,
}

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// A stable identifier (`postgres_binaries`, `pgbouncer`, ...), for scripts.
    pub id: &'static str,
    /// What was checked, for people.
    pub title: &'static str,
    /// What was found.
    pub status: Status,
    /// Whether pgseal can do without it.
    pub need: Need,
    /// What it is used for.
    pub needed_for: &'static str,
    /// What was found, or why it is missing.
    pub detail: String,
    /// The command (or step) that fixes it, when missing.
    pub fix: Option<String>,
}

/// All checks of one run.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// True when nothing required is missing.
    pub ready: bool,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// The checks that failed and are required.
    pub fn missing_required(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Missing && c.need == Need::Required)
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// Runs every check.
pub fn run_doctor(inputs: &DoctorInputs) -> DoctorReport {
    let is_root = nix::unistd::Uid::effective().is_root();
    let install = PgInstall::discover_with(
        inputs.pg_bindir_override.as_deref(),
        inputs.search_path.as_deref(),
    );
    let checks = vec![
        check_server_binaries(inputs, &install),
        check_pgbench(&install),
        check_versions(),
        check_server_user(is_root),
        check_home(&inputs.home),
        check_privileges(inputs, is_root),
        check_kernel_fscrypt(inputs),
        check_loop_devices(inputs),
        check_program(inputs, "mkfs_ext4", "mkfs.ext4", "e2fsprogs"),
        check_program(inputs, "losetup", "losetup", "mount"),
        check_program(inputs, "mount", "mount", "mount"),
        check_pgbouncer(inputs),
        check_online_resize(inputs),
        check_kernel_aes(inputs),
        check_leftovers(inputs),
    ];
    let ready = !checks
        .iter()
        .any(|c| c.status == Status::Missing && c.need == Need::Required);
    DoctorReport { ready, checks }
}

/// What one check is about, the same whichever way it comes out.
struct About {
    id: &'static str,
    title: &'static str,
    need: Need,
    needed_for: &'static str,
}

impl About {
    const fn new(
        id: &'static str,
        title: &'static str,
        need: Need,
        needed_for: &'static str,
    ) -> Self {
        About {
            id,
            title,
            need,
            needed_for,
        }
    }

    /// The check found what it looks for.
    fn ok(&self, detail: String) -> Check {
        self.check(Status::Ok, detail, None)
    }

    /// The check did not find it; `fix` says how to get it.
    fn missing(&self, detail: String, fix: String) -> Check {
        self.check(Status::Missing, detail, Some(fix))
    }

    fn check(&self, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            id: self.id,
            title: self.title,
            status,
            need: self.need,
            needed_for: self.needed_for,
            detail,
            fix,
        }
    }
}

fn check_server_binaries(
    inputs: &DoctorInputs,
    install: &Result<PgInstall, DiscoverError>,
) -> Check {
    const CHECK: About = About::new(
        "postgres_binaries",
        "PostgreSQL server binaries",
        Need::Required,
        "every local instance, snapshot and restore",
    );
    let apt = format!("apt-get install -y {SERVER_PACKAGE}");
    match install {
        Ok(install) if install.version.major < MIN_PG_MAJOR => CHECK.missing(
            format!(
                "PostgreSQL {} in {} is older than {MIN_PG_MAJOR}",
                install.version,
                install.bindir.display()
            ),
            apt,
        ),
        Ok(install) => CHECK.ok(format!(
            "PostgreSQL {} in {} (from {})",
            install.version,
            install.bindir.display(),
            install.origin
        )),
        Err(error) => {
            // Installed but not on PATH (Debian keeps server programs out of PATH): point at it.
            let packaged = packaged_bindirs(&inputs.system_root);
            let fix = match (error, packaged.first()) {
                (DiscoverError::NoPgConfig, Some(dir)) => {
                    let dir =
                        Path::new("/").join(dir.strip_prefix(&inputs.system_root).unwrap_or(dir));
                    format!("export PGSEAL_PG_BINDIR={}", dir.display())
                }
                _ => apt,
            };
            CHECK.missing(error.to_string(), fix)
        }
    }
}

fn check_versions() -> Check {
    const CHECK: About = About::new(
        "postgres_versions",
        "PostgreSQL major versions",
        Need::Recommended,
        "`instance create --engine-version` and full-load migrations onto a newer version",
    );
    let installs = pgseal_pg::PgInstalls::discover();
    let listed: Vec<String> = installs
        .all
        .iter()
        .map(|i| {
            let clients = if i.has("pg_dump") {
                ""
            } else {
                ", server only"
            };
            format!("{} ({}{clients})", i.version, i.bindir.display())
        })
        .collect();
    if installs.all.len() > 1 {
        CHECK.ok(listed.join("; "))
    } else {
        CHECK.missing(if listed.is_empty() {
                "none found".to_string()
            } else {
                format!("only {}", listed.join("; "))
            },
            format!(
                "bash scripts/setup (provisions PostgreSQL 17 into .tools/postgresql/17), or name N/bin trees with {}",
                pgseal_pg::install::ROOTS_ENV
            ),
        )
    }
}

fn check_pgbench(install: &Result<PgInstall, DiscoverError>) -> Check {
    const CHECK: About = About::new(
        "pgbench",
        "pgbench",
        Need::Recommended,
        "pgseal demo and the benchmarks (sample data and load)",
    );
    match install {
        Ok(install) if install.program("pgbench").is_file() => {
            CHECK.ok(install.program("pgbench").display().to_string())
        }
        Ok(install) => CHECK.missing(
            format!("not in {}", install.bindir.display()),
            format!(
                "apt-get install -y postgresql-client-{}",
                install.version.major
            ),
        ),
        Err(_) => CHECK.missing(
            "no PostgreSQL installation found".into(),
            format!("apt-get install -y {SERVER_PACKAGE}"),
        ),
    }
}

fn check_server_user(is_root: bool) -> Check {
    const CHECK: About = About::new(
        "server_os_user",
        "OS user to run servers as",
        Need::Required,
        "running PostgreSQL servers (they refuse to run as root)",
    );
    if !is_root {
        let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "the current user".into());
        return CHECK.ok(format!("servers run as {me}"));
    }
    match RunAs::user(SERVER_OS_USER) {
        Ok(user) => CHECK.ok(format!(
                "running as root; servers run as '{SERVER_OS_USER}' (uid {})",
                user.ids().0
            ),
        ),
        Err(error) => CHECK.missing(format!("running as root and there is no '{SERVER_OS_USER}' user"),
            match error {
                pgseal_exec::Error::NoSuchUser { user } => format!(
                    "useradd --system --create-home --home-dir /var/lib/postgresql --shell /bin/bash {user}"
                ),
                other => format!("check the system's user database: {other}"),
            },
        ),
    }
}

fn check_home(home: &Path) -> Check {
    const CHECK: About = About::new(
        "home",
        "pgseal home directory",
        Need::Required,
        "instances, snapshots, keys and journals",
    );
    let existing = home.ancestors().find(|p| p.exists());
    let writable =
        existing.is_some_and(|p| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok());
    if writable {
        let state = if home.exists() {
            "exists"
        } else {
            "will be created"
        };
        CHECK.ok(format!("{} ({state})", home.display()))
    } else {
        CHECK.missing(
            format!("{} cannot be written", home.display()),
            "pass --home DIR (or set PGSEAL_HOME) to a directory you can write".into(),
        )
    }
}

fn check_privileges(inputs: &DoctorInputs, is_root: bool) -> Check {
    const CHECK: About = About::new(
        "volume_privileges",
        "privileges for encrypted volumes",
        Need::Required,
        "encrypted instances (loop mounts and fscrypt key ioctls)",
    );
    let has_cap = has_capability(&inputs.sys("/proc/self/status"), CAP_SYS_ADMIN);
    match (is_root, has_cap) {
        (_, true) => CHECK.ok(format!(
            "{} with CAP_SYS_ADMIN",
            if is_root { "root" } else { "non-root" }
        )),
        (true, false) => CHECK.missing(
            "root, but without CAP_SYS_ADMIN (a restricted container?)".into(),
            "run pgseal where root has CAP_SYS_ADMIN (e.g. a privileged container or the host)"
                .into(),
        ),
        (false, false) => CHECK.missing(
            "not root and no CAP_SYS_ADMIN".into(),
            "run pgseal as root: sudo -E pgseal ...".into(),
        ),
    }
}

fn check_kernel_fscrypt(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "kernel_fscrypt",
        "kernel fscrypt support for ext4",
        Need::Required,
        "encrypted instances (AES-256-XTS file contents)",
    );
    let feature = inputs.sys("/sys/fs/ext4/features/encryption");
    if feature.exists() {
        CHECK.ok("/sys/fs/ext4/features/encryption present".into())
    } else {
        CHECK.missing(
            "/sys/fs/ext4/features/encryption is absent: this kernel's ext4 cannot encrypt".into(),
            "boot a kernel built with CONFIG_FS_ENCRYPTION=y (Debian's stock kernels are); in a container the host's kernel decides; then modprobe ext4".into(),
        )
    }
}

fn check_loop_devices(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "loop_devices",
        "loop devices",
        Need::Required,
        "encrypted instances (each volume is a loop-mounted image)",
    );
    let control = inputs.sys("/dev/loop-control");
    let loop0 = inputs.sys("/dev/loop0");
    if control.exists() || loop0.exists() {
        let which = if control.exists() {
            "/dev/loop-control"
        } else {
            "/dev/loop0"
        };
        CHECK.ok(format!("{which} present"))
    } else {
        CHECK.missing(
            "neither /dev/loop-control nor /dev/loop0 exists".into(),
            "modprobe loop (in a container: give it the host's /dev/loop-control and loop devices)"
                .into(),
        )
    }
}

fn check_program(
    inputs: &DoctorInputs,
    id: &'static str,
    program: &'static str,
    package: &str,
) -> Check {
    let check = About {
        id,
        title: match id {
            "mkfs_ext4" => "mkfs.ext4",
            "losetup" => "losetup",
            _ => "mount / umount",
        },
        need: Need::Required,
        needed_for: "encrypted instances (making and mounting volumes)",
    };
    match find_program_in(program, inputs.search_path.as_deref()) {
        Some(path) => check.ok(path.display().to_string()),
        None => check.missing(
            format!("{program} is not on PATH"),
            format!("apt-get install -y {package}"),
        ),
    }
}

fn check_pgbouncer(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "pgbouncer",
        "PgBouncer",
        Need::Recommended,
        "endpoints (switching applications without reconnects) and pgseal demo",
    );
    match find_program_in("pgbouncer", inputs.search_path.as_deref()) {
        Some(path) => match crate::endpoint::pgbouncer::PgBouncer::at(path.clone()) {
            Ok(found) => CHECK.ok(pgbouncer_detail(&found)),
            Err(e) => CHECK.missing(
                format!("{} does not run: {e}", path.display()),
                "apt-get install --reinstall -y pgbouncer".into(),
            ),
        },
        None => CHECK.missing(
            "pgbouncer is not on PATH".into(),
            "apt-get install -y pgbouncer".into(),
        ),
    }
}

/// What doctor says of a PgBouncer: where, which version, and whether applications may
/// use server-side prepared statements through its endpoints.
fn pgbouncer_detail(found: &crate::endpoint::pgbouncer::PgBouncer) -> String {
    if found.prepared_statements {
        format!(
            "{} {}; max_prepared_statements: yes (endpoints set it: drivers may prepare)",
            found.program.display(),
            found.version
        )
    } else {
        format!(
            "{} {}; max_prepared_statements: no (1.21+): applications must not use server-side prepared statements through endpoints (see docs/endpoints.md, `pgseal endpoint check`)",
            found.program.display(),
            found.version
        )
    }
}

/// The kernel's AES drivers from `/proc/crypto` (driver names of `aes` and `xts(aes)`).
fn kernel_aes_drivers(crypto: &str) -> Vec<String> {
    let mut drivers = Vec::new();
    let mut name = String::new();
    for line in crypto.lines() {
        let mut parts = line.splitn(2, ':').map(str::trim);
        match (parts.next(), parts.next()) {
            (Some("name"), Some(n)) => name = n.to_string(),
            (Some("driver"), Some(d)) if name == "aes" || name == "xts(aes)" => {
                drivers.push(d.to_string())
            }
            _ => {}
        }
    }
    drivers
}

fn check_kernel_aes(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "kernel_aes",
        "hardware AES for fscrypt",
        Need::Recommended,
        "encrypted instances at full speed (software AES costs write throughput)",
    );
    let crypto = std::fs::read_to_string(inputs.sys("/proc/crypto")).unwrap_or_default();
    let drivers = kernel_aes_drivers(&crypto);
    let accelerated = drivers
        .iter()
        .find(|d| d.contains("aesni") || d.contains("vaes") || d.contains("aes-ce"));
    match accelerated {
        Some(d) => CHECK.ok(format!("kernel driver {d}"),
        ),
        None => CHECK.missing(format!(
                "the kernel encrypts with software AES ({}); measured here: fdatasync 2,456/s on an encrypted volume vs 4,743/s without fscrypt, pgbench 0.39x plain",
                if drivers.is_empty() {
                    "no accelerated driver listed".to_string()
                } else {
                    drivers.join(", ")
                }
            ),
            "modprobe aesni_intel, or boot a kernel built with CONFIG_CRYPTO_AES_NI_INTEL".into(),
        ),
    }
}

/// Loop devices and mounts of pgseal volumes whose instance is gone: a crash between
/// mounting and recording can leave them, and they survive until detached.
fn check_leftovers(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "leftover_volumes",
        "leftover volumes",
        Need::Recommended,
        "a clean machine (leaked loop devices and mounts hold disk space and devices)",
    );
    let instances = inputs.home.join("instances");
    let gone = |path: &Path| -> bool {
        // .../instances/NAME/(volume.img|mnt): the instance is gone when its record is.
        path.strip_prefix(&instances)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|name| !instances.join(name).join("instance.json").exists())
    };
    let mut fixes = Vec::new();
    if let Ok(entries) = std::fs::read_dir(inputs.sys("/sys/block")) {
        for entry in entries.flatten() {
            let dev = entry.file_name().to_string_lossy().into_owned();
            let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            else {
                continue;
            };
            let backing = backing.trim().trim_end_matches(" (deleted)");
            if gone(Path::new(backing)) {
                fixes.push(format!("losetup -d /dev/{dev}"));
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string(inputs.sys("/proc/self/mountinfo")) {
        for mount_point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mount_point.ends_with("/mnt") && gone(Path::new(mount_point)) {
                fixes.insert(0, format!("umount -d {mount_point}"));
            }
        }
    }
    if fixes.is_empty() {
        CHECK.ok("none".into())
    } else {
        CHECK.missing(
            format!(
                "{} left behind by instances that no longer exist",
                fixes.len()
            ),
            fixes.join(" && "),
        )
    }
}

fn check_online_resize(inputs: &DoctorInputs) -> Check {
    const CHECK: About = About::new(
        "online_resize",
        "online volume growth",
        Need::Recommended,
        "growing an encrypted instance without a restart (instance resize)",
    );
    let has = has_capability(&inputs.sys("/proc/self/status"), CAP_SYS_RESOURCE);
    if has {
        CHECK.ok("CAP_SYS_RESOURCE present".into())
    } else {
        CHECK.missing(
            "no CAP_SYS_RESOURCE: ext4 cannot grow while mounted; resize restarts the instance briefly".into(),
            "run pgseal where root has CAP_SYS_RESOURCE (the host, or a container given that capability)".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_with_path(path: Option<OsString>, root: &Path) -> DoctorInputs {
        DoctorInputs {
            search_path: path,
            pg_bindir_override: None,
            home: root.join("home"),
            system_root: root.to_path_buf(),
        }
    }

    #[test]
    fn pgbouncer_is_reported_with_its_version_and_prepared_statement_support() {
        // scripts/setup installs Debian's PgBouncer (1.18), which cannot keep them.
        let root = tempfile::tempdir().unwrap();
        let path = std::env::var_os("PATH").map(|p| {
            let mut p = p;
            p.push(":/usr/sbin");
            p
        });
        let report = run_doctor(&inputs_with_path(path, root.path()));
        let check = report.check("pgbouncer").unwrap();
        assert_eq!(check.status, Status::Ok, "{check:?}");
        let version = check.detail.split_whitespace().nth(1).unwrap();
        assert!(version.starts_with("1."), "{check:?}");
        let supported = crate::endpoint::pgbouncer::supports_prepared_statements(version);
        let said = if supported {
            "max_prepared_statements: yes"
        } else {
            "max_prepared_statements: no"
        };
        assert!(check.detail.contains(said), "{check:?}");
    }

    #[test]
    fn empty_machine_reports_every_gap_with_a_fix() {
        let root = tempfile::tempdir().unwrap();
        let report = run_doctor(&inputs_with_path(Some(OsString::new()), root.path()));
        assert!(!report.ready);
        for id in [
            "postgres_binaries",
            "kernel_fscrypt",
            "loop_devices",
            "mkfs_ext4",
            "losetup",
            "mount",
            "pgbouncer",
        ] {
            let check = report.check(id).unwrap();
            assert_eq!(check.status, Status::Missing, "{id}");
            assert!(
                check.fix.as_deref().is_some_and(|f| !f.is_empty()),
                "{id} has a fix"
            );
        }
        assert_eq!(
            report.check("postgres_binaries").unwrap().fix.as_deref(),
            Some("apt-get install -y postgresql-15")
        );
        assert_eq!(
            report.check("pgbouncer").unwrap().fix.as_deref(),
            Some("apt-get install -y pgbouncer")
        );
        assert_eq!(report.check("home").unwrap().status, Status::Ok);
    }

    #[test]
    fn installed_but_off_path_server_points_at_its_bindir() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("usr/lib/postgresql/15/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("postgres"), "").unwrap();
        let report = run_doctor(&inputs_with_path(Some(OsString::new()), root.path()));
        assert_eq!(
            report.check("postgres_binaries").unwrap().fix.as_deref(),
            Some("export PGSEAL_PG_BINDIR=/usr/lib/postgresql/15/bin")
        );
    }

    #[test]
    fn aes_driver_check_tells_hardware_from_software() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        let inputs = inputs_with_path(None, root.path());
        let software = "name         : xts(aes)\ndriver       : xts(ecb(aes-fixed-time))\n\nname         : aes\ndriver       : aes-fixed-time\n";
        std::fs::write(root.path().join("proc/crypto"), software).unwrap();
        let check = check_kernel_aes(&inputs);
        assert_eq!(check.status, Status::Missing);
        assert!(check.detail.contains("aes-fixed-time"), "{}", check.detail);
        let hardware = format!("{software}\nname         : aes\ndriver       : aes-aesni\n");
        std::fs::write(root.path().join("proc/crypto"), hardware).unwrap();
        assert_eq!(check_kernel_aes(&inputs).status, Status::Ok);
    }

    #[test]
    fn leaked_loop_devices_of_deleted_instances_are_reported_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let inputs = inputs_with_path(None, root.path());
        let live = inputs.home.join("instances/live");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("instance.json"), "{}").unwrap();
        for (dev, backing) in [
            ("loop3", inputs.home.join("instances/gone/volume.img")),
            ("loop4", live.join("volume.img")),
        ] {
            let dir = root.path().join("sys/block").join(dev).join("loop");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("backing_file"),
                format!("{} (deleted)\n", backing.display()),
            )
            .unwrap();
        }
        let check = check_leftovers(&inputs);
        assert_eq!(check.status, Status::Missing);
        assert_eq!(check.fix.as_deref(), Some("losetup -d /dev/loop3"));
        std::fs::remove_dir_all(root.path().join("sys/block/loop3")).unwrap();
        assert_eq!(check_leftovers(&inputs).status, Status::Ok);
    }

    #[test]
    fn this_machine_after_setup_is_ready() {
        // The set-up script installs everything; this is the real machine, not a fake tree.
        let home = tempfile::tempdir().unwrap();
        let report = run_doctor(&DoctorInputs::from_process(home.path().join("pgseal")));
        let gaps: Vec<_> = report
            .missing_required()
            .map(|c| (c.id, c.detail.clone()))
            .collect();
        assert!(report.ready, "required pieces missing: {gaps:?}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ready"], true);
        assert_eq!(json["checks"][0]["id"], "postgres_binaries");
    }
}
