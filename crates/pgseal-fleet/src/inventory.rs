//! The inventory file: which sources a fleet migrates, under which key, strategy and
//! options, in which waves. `docs/fleet.md` documents it with an example.
//!
//! The file is TOML. Every table refuses fields it does not know, and every error names
//! the file, the line and the field, so that a typo never turns into a default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// An inventory that cannot be used: nothing has been started.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file cannot be read.
    #[error("cannot read the inventory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid inventory; `line` is where the problem is.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A wave was asked for that no source is in.
    #[error("wave {wave} is not in {path}: its waves are {waves}")]
    NoSuchWave {
        /// The file.
        path: PathBuf,
        /// The wave asked for.
        wave: u32,
        /// The waves the file has, comma-separated.
        waves: String,
    },
}

/// A size as the file gives it: a number of bytes, or text with a unit (`20GiB`), passed
/// to `pgseal migrate` as written (it checks the unit).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Bytes(n) => write!(f, "{n}"),
            Size::Text(t) => f.write_str(t),
        }
    }
}

/// The options of `pgseal migrate start` an inventory may set, in `[defaults.options]` for
/// every source or in a source's own `options` (which wins, field by field). Each is the
/// flag of the same name, with `-` for `_`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// `--allow-restart`: pgseal may restart the source to set `wal_level`.
    pub allow_restart: Option<bool>,
    /// `--replica-identity-full` for tables without a key.
    pub replica_identity_full: Option<bool>,
    /// `--jobs`: workers of a full load.
    pub jobs: Option<u32>,
    /// `--engine-version`: the target's major version (full load).
    pub engine_version: Option<u32>,
    /// `--max-slot-retention`: WAL the slot may hold on the source.
    pub max_slot_retention: Option<Size>,
    /// `--split-tables-larger-than` (full load).
    pub split_tables_larger_than: Option<Size>,
    /// `--slot-wait`, in seconds.
    pub slot_wait: Option<u64>,
    /// `--long-transaction-seconds`.
    pub long_transaction_seconds: Option<i64>,
    /// `--region` (AWS).
    pub region: Option<String>,
    /// `--endpoint-url` (AWS).
    pub endpoint_url: Option<String>,
    /// `--no-follow`: leave no follower running once the target replicates.
    pub no_follow: Option<bool>,
    /// `--connect-via ID=HOST:PORT`, each (AWS: where pgseal reaches an instance).
    pub connect_via: Option<Vec<String>>,
    /// `--peer-via ID=HOST:PORT`, each (AWS: where the other instance reaches it).
    pub peer_via: Option<Vec<String>>,
}

impl Options {
    /// These options, each unset one taken from `defaults`.
    fn or(self, defaults: &Options) -> Options {
        let d = defaults.clone();
        Options {
            allow_restart: self.allow_restart.or(d.allow_restart),
            replica_identity_full: self.replica_identity_full.or(d.replica_identity_full),
            jobs: self.jobs.or(d.jobs),
            engine_version: self.engine_version.or(d.engine_version),
            max_slot_retention: self.max_slot_retention.or(d.max_slot_retention),
            split_tables_larger_than: self.split_tables_larger_than.or(d.split_tables_larger_than),
            slot_wait: self.slot_wait.or(d.slot_wait),
            long_transaction_seconds: self.long_transaction_seconds.or(d.long_transaction_seconds),
            region: self.region.or(d.region),
            endpoint_url: self.endpoint_url.or(d.endpoint_url),
            no_follow: self.no_follow.or(d.no_follow),
            connect_via: self.connect_via.or(d.connect_via),
            peer_via: self.peer_via.or(d.peer_via),
        }
    }

    /// The flags of `migrate plan` (`start` = false) or `migrate start` (true).
    fn flags(&self, start: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, on: Option<bool>| {
            if on == Some(true) {
                out.push(format!("--{name}"));
            }
        };
        flag("allow-restart", self.allow_restart);
        flag("replica-identity-full", self.replica_identity_full);
        if start {
            flag("no-follow", self.no_follow);
        }
        let mut valued = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}"));
                out.push(v);
            }
        };
        valued("jobs", self.jobs.map(|v| v.to_string()));
        valued("engine-version", self.engine_version.map(|v| v.to_string()));
        valued(
            "split-tables-larger-than",
            self.split_tables_larger_than.as_ref().map(Size::to_string),
        );
        valued("slot-wait", self.slot_wait.map(|v| v.to_string()));
        valued(
            "long-transaction-seconds",
            self.long_transaction_seconds.map(|v| v.to_string()),
        );
        valued("region", self.region.clone());
        valued("endpoint-url", self.endpoint_url.clone());
        for (name, routes) in [
            ("connect-via", &self.connect_via),
            ("peer-via", &self.peer_via),
        ] {
            for route in routes.iter().flatten() {
                valued(name, Some(route.clone()));
            }
        }
        if start {
            valued(
                "max-slot-retention",
                self.max_slot_retention.as_ref().map(Size::to_string),
            );
        }
        out
    }
}

/// `[defaults]`: what every source takes unless it says otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    key: Option<String>,
    strategy: Option<String>,
    password_env: Option<String>,
    #[serde(default)]
    options: Options,
}

/// One `[[source]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    source: String,
    key: Option<String>,
    strategy: Option<String>,
    target: Option<String>,
    wave: Option<Spanned<u32>>,
    databases: Option<Vec<String>>,
    tables: Option<Vec<String>>,
    endpoint: Option<String>,
    on_switch: Option<String>,
    password_env: Option<String>,
    #[serde(default)]
    options: Options,
}

/// One `[[wave]]` as written: what `fleet run` may do with a wave on its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    number: Spanned<u32>,
    cutover: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
    #[serde(default)]
    wave: Vec<RawWave>,
}

/// Minutes of a day, UTC, from `HH:MM`.
fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.trim().len() == 5).then_some(h * 60 + m)
}

/// A daily window, UTC (`"02:00-04:30"`; one that ends before it starts runs past
/// midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its first minute of the day.
    pub from: u32,
    /// The minute it ends (not in it).
    pub to: u32,
}

impl Window {
    /// Reads `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Option<Window> {
        let (from, to) = text.split_once('-')?;
        let (from, to) = (minutes(from)?, minutes(to)?);
        (from != to).then_some(Window { from, to })
    }

    /// True when unix time `at_ms` falls in the window.
    pub fn contains(&self, at_ms: i64) -> bool {
        let minute = (at_ms.rem_euclid(86_400_000) / 60_000) as u32;
        if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} UTC",
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60
        )
    }
}

/// What `fleet run` may do with a wave without a person: by default start and validate;
/// with `cutover = "auto"`, cut over too, inside its window when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WavePolicy {
    /// `cutover = "auto"`.
    pub auto_cutover: bool,
    /// When an automatic cutover may run; `None`: at any time.
    pub window: Option<Window>,
}

/// One source of the fleet, with the defaults applied: one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The line of the file where its `[[source]]` is.
    pub line: usize,
    /// The migration's name.
    pub name: String,
    /// The source: a local instance, `rds:ID`, `aurora:ID` or a `postgres://` URL.
    pub source: String,
    /// The KMS key; `None` for `migrate`'s default.
    pub key: Option<String>,
    /// The strategy (`snapshot`, `full-load`, `blue-green`); `None` for `migrate`'s default.
    pub strategy: Option<String>,
    /// The encrypted instance to create; `None` for `migrate`'s default.
    pub target: Option<String>,
    /// The wave it is cut over in (1 when the file does not say).
    pub wave: u32,
    /// The databases it is narrowed to (empty: the whole instance).
    pub databases: Vec<String>,
    /// The tables of its one database it is narrowed to (empty: all).
    pub tables: Vec<String>,
    /// The endpoint its cutover and rollback switch (`None`: the one in front of it).
    pub endpoint: Option<String>,
    /// The shell command its cutover and rollback run at the switch, without an endpoint.
    pub on_switch: Option<String>,
    /// The environment variable that holds a URL source's password (given to its
    /// `migrate` runs as `PGPASSWORD`); never the password itself.
    pub password_env: Option<String>,
    /// `migrate start`'s options.
    pub options: Options,
}

impl Source {
    /// The arguments of `pgseal migrate start` for this source (after `migrate start`).
    pub fn start_args(&self) -> Vec<String> {
        let mut args = self.common_args(true);
        if !self.tables.is_empty() {
            args.push("--tables".into());
            args.push(self.tables.join(","));
        }
        args
    }

    /// The arguments of `pgseal migrate plan` for this source (after `migrate plan`).
    pub fn plan_args(&self) -> Vec<String> {
        self.common_args(false)
    }

    /// The arguments that choose the switch of `migrate cutover` and `migrate rollback`.
    pub fn switch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(endpoint) = &self.endpoint {
            args.extend(["--endpoint".to_string(), endpoint.clone()]);
        }
        if let Some(command) = &self.on_switch {
            args.extend(["--on-switch".to_string(), command.clone()]);
        }
        args
    }

    fn common_args(&self, start: bool) -> Vec<String> {
        let mut args = vec![
            "--name".to_string(),
            self.name.clone(),
            "--source".into(),
            self.source.clone(),
        ];
        for (flag, value) in [
            ("--key", &self.key),
            ("--strategy", &self.strategy),
            ("--target", &self.target),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]);
            }
        }
        for db in &self.databases {
            args.extend(["--database".to_string(), db.clone()]);
        }
        args.extend(self.options.flags(start));
        args
    }
}

/// A fleet's inventory, checked.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    /// The sources, in the file's order.
    pub sources: Vec<Source>,
    /// The waves' `[[wave]]` settings (a wave without one has the default policy).
    pub policies: BTreeMap<u32, WavePolicy>,
}

impl Inventory {
    /// Reads and checks the inventory at `path`.
    pub fn read(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::parse(path, &text)
    }

    /// Checks `text`, the contents of the inventory at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let invalid = |line: usize, message: String| InventoryError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawInventory = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(s.start));
            let message = match e.span().and_then(|s| key_before(text, s.start)) {
                Some(key) if !e.message().contains(&format!("`{key}`")) => {
                    format!("field `{key}`: {}", e.message())
                }
                _ => e.message().to_string(),
            };
            invalid(line, message)
        })?;
        if raw.source.is_empty() {
            return Err(invalid(
                1,
                "no [[source]]: name at least one source to migrate".into(),
            ));
        }
        let defaults = raw.defaults;
        let mut sources = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut origins: BTreeMap<String, usize> = BTreeMap::new();
        for spanned in raw.source {
            let line = line_of(spanned.span().start);
            let s = spanned.into_inner();
            for (field, value, seen) in [
                ("name", &s.name, &mut names),
                ("source", &s.source, &mut origins),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(line, format!("field `{field}` is empty")));
                }
                if let Some(first) = seen.insert(value.clone(), line) {
                    return Err(invalid(
                        line,
                        format!(
                            "field `{field}`: `{value}` is already given at line {first}; a {field} may stand once in a fleet"
                        ),
                    ));
                }
            }
            let wave = match s.wave {
                Some(w) if *w.get_ref() == 0 => {
                    return Err(invalid(
                        line_of(w.span().start),
                        "field `wave`: waves count from 1".into(),
                    ));
                }
                Some(w) => w.into_inner(),
                None => 1,
            };
            let databases = s.databases.unwrap_or_default();
            let tables = s.tables.unwrap_or_default();
            if !tables.is_empty() && databases.len() != 1 {
                return Err(invalid(
                    line,
                    "field `tables` narrows one database: name it in `databases`, alone".into(),
                ));
            }
            let password_env = s.password_env.or(defaults.password_env.clone());
            if let Some(var) = &password_env
                && (var.is_empty()
                    || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || var.starts_with(|c: char| c.is_ascii_digit()))
            {
                return Err(invalid(
                    line,
                    format!(
                        "field `password_env`: `{var}` is not the name of an environment variable"
                    ),
                ));
            }
            if s.endpoint.is_some() && s.on_switch.is_some() {
                return Err(invalid(
                    line,
                    "fields `endpoint` and `on_switch`: give one switch, not both".into(),
                ));
            }
            sources.push(Source {
                line,
                name: s.name,
                source: s.source,
                key: s.key.or(defaults.key.clone()),
                strategy: s.strategy.or(defaults.strategy.clone()),
                target: s.target,
                wave,
                databases,
                tables,
                endpoint: s.endpoint,
                on_switch: s.on_switch,
                password_env,
                options: s.options.or(&defaults.options),
            });
        }
        let mut policies = BTreeMap::new();
        for w in raw.wave {
            let number = *w.number.get_ref();
            let line = line_of(w.number.span().start);
            if !sources.iter().any(|s| s.wave == number) {
                return Err(invalid(
                    line,
                    format!("field `number`: no source is in wave {number}"),
                ));
            }
            let auto_cutover = match &w.cutover {
                None => false,
                Some(c) if c.get_ref() == "auto" => true,
                Some(c) if c.get_ref() == "manual" => false,
                Some(c) => {
                    return Err(invalid(
                        line_of(c.span().start),
                        format!(
                            "field `cutover`: `{}` is neither \"auto\" nor \"manual\"",
                            c.get_ref()
                        ),
                    ));
                }
            };
            let window = match &w.window {
                None => None,
                Some(text) => Some(Window::parse(text.get_ref()).ok_or_else(|| {
                    invalid(
                        line_of(text.span().start),
                        format!(
                            "field `window`: `{}` is not HH:MM-HH:MM (UTC, for example \"02:00-04:30\")",
                            text.get_ref()
                        ),
                    )
                })?),
            };
            if window.is_some() && !auto_cutover {
                return Err(invalid(
                    line,
                    "field `window`: a window is for `cutover = \"auto\"`".into(),
                ));
            }
            if policies
                .insert(
                    number,
                    WavePolicy {
                        auto_cutover,
                        window,
                    },
                )
                .is_some()
            {
                return Err(invalid(
                    line,
                    format!("field `number`: wave {number} is given twice"),
                ));
            }
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            sources,
            policies,
        })
    }

    /// What `fleet run` may do with `wave` on its own.
    pub fn policy(&self, wave: u32) -> WavePolicy {
        self.policies.get(&wave).copied().unwrap_or_default()
    }

    /// The waves, in order.
    pub fn waves(&self) -> BTreeSet<u32> {
        self.sources.iter().map(|s| s.wave).collect()
    }

    /// The sources of `wave`, or every source for `None`; a wave no source is in is an
    /// error.
    pub fn wave(&self, wave: Option<u32>) -> Result<Vec<&Source>, InventoryError> {
        let Some(wave) = wave else {
            return Ok(self.sources.iter().collect());
        };
        let found: Vec<&Source> = self.sources.iter().filter(|s| s.wave == wave).collect();
        if found.is_empty() {
            return Err(InventoryError::NoSuchWave {
                path: self.path.clone(),
                wave,
                waves: self
                    .waves()
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(found)
    }

    /// The sources in the order `start` takes them: wave by wave, in the file's order
    /// within a wave.
    pub fn by_wave(&self) -> Vec<&Source> {
        let mut sources: Vec<&Source> = self.sources.iter().collect();
        sources.sort_by_key(|s| s.wave);
        sources
    }
}

/// The key whose value starts at `offset` (`wave` in `wave = "two"`, `jobs` in
/// `options = { jobs = "x" }`), to name the field of a value of the wrong type.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let (left, _) = line.rsplit_once('=')?;
    let key = left.rsplit(['{', ',']).next()?.trim().trim_matches('"');
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[defaults]
key = "alias/fleet"
strategy = "snapshot"
options = { allow_restart = true, max_slot_retention = "20GiB" }

[[source]]
name = "shop"
source = "shop"

[[source]]
name = "billing"
source = "postgres://app@db2.internal:5432/billing"
target = "billing-enc"
wave = 2
strategy = "full-load"
password_env = "BILLING_PGPASSWORD"
options = { jobs = 4, max_slot_retention = 1000000 }
"#;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(Path::new("fleet.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply_and_a_source_overrides_them_field_by_field() {
        let inv = parse(EXAMPLE).unwrap();
        let [shop, billing] = &inv.sources[..] else {
            panic!("two sources: {inv:?}")
        };
        assert_eq!((shop.line, shop.wave), (7, 1));
        assert_eq!(billing.line, 11);
        assert_eq!(
            shop.start_args(),
            [
                "--name",
                "shop",
                "--source",
                "shop",
                "--key",
                "alias/fleet",
                "--strategy",
                "snapshot",
                "--allow-restart",
                "--max-slot-retention",
                "20GiB"
            ]
        );
        let args = billing.start_args();
        assert!(
            args.windows(2).any(|w| w == ["--strategy", "full-load"])
                && args.windows(2).any(|w| w == ["--jobs", "4"])
                && args
                    .windows(2)
                    .any(|w| w == ["--max-slot-retention", "1000000"])
                && args.contains(&"--allow-restart".to_string()),
            "{args:?}"
        );
        // plan takes no start-only flag.
        assert!(
            !billing
                .plan_args()
                .iter()
                .any(|a| a == "--max-slot-retention")
        );
        assert_eq!(billing.password_env.as_deref(), Some("BILLING_PGPASSWORD"));
        assert_eq!(inv.waves().into_iter().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(inv.by_wave()[1].name, "billing");
    }

    #[test]
    fn unknown_fields_are_refused_with_the_line_and_the_field() {
        let text = "[[source]]\nname = \"a\"\nsource = \"a\"\ncolour = \"blue\"\n";
        let e = error(text);
        assert!(
            e.starts_with("fleet.toml:4:") && e.contains("colour"),
            "{e}"
        );
        let e =
            error("[defaults]\noptions = { jobz = 2 }\n[[source]]\nname = \"a\"\nsource = \"a\"\n");
        assert!(e.starts_with("fleet.toml:2:") && e.contains("jobz"), "{e}");
        let e = error("[[sources]]\nname = \"a\"\n");
        assert!(
            e.starts_with("fleet.toml:1:") && e.contains("sources"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_file_a_wrong_type_and_a_missing_field_name_their_line() {
        let e = error("[[source]]\nname = \"a\"\nsource = \n");
        assert!(e.starts_with("fleet.toml:3:"), "{e}");
        let e = error("[[source]]\nname = \"a\"\nsource = \"a\"\nwave = \"two\"\n");
        assert!(e.starts_with("fleet.toml:4:") && e.contains("wave"), "{e}");
        let e = error("[[source]]\nname = \"a\"\n");
        assert!(e.contains("missing field `source`"), "{e}");
        let e = error("[defaults]\nkey = \"k\"\n");
        assert!(e.contains("no [[source]]"), "{e}");
    }

    #[test]
    fn a_name_or_source_twice_wave_zero_and_tables_without_one_database_are_refused() {
        let twice = "[[source]]\nname = \"a\"\nsource = \"x\"\n\n[[source]]\nname = \"b\"\nsource = \"x\"\n";
        let e = error(twice);
        assert!(
            e.starts_with("fleet.toml:5:") && e.contains("`x`") && e.contains("line 1"),
            "{e}"
        );
        let e = error(&twice.replace("name = \"b\"", "name = \"a\""));
        assert!(e.contains("field `name`"), "{e}");
        let e = error("[[source]]\nname = \"a\"\nsource = \"a\"\nwave = 0\n");
        assert!(e.starts_with("fleet.toml:4:") && e.contains("wave"), "{e}");
        let e = error("[[source]]\nname = \"a\"\nsource = \"a\"\ntables = [\"public.t\"]\n");
        assert!(e.contains("field `tables`"), "{e}");
        let e = error("[[source]]\nname = \"a\"\nsource = \"a\"\npassword_env = \"NOT A VAR\"\n");
        assert!(e.contains("password_env"), "{e}");
    }

    #[test]
    fn a_wave_no_source_is_in_is_named_with_the_waves_there_are() {
        let inv = parse(EXAMPLE).unwrap();
        assert_eq!(inv.wave(Some(2)).unwrap().len(), 1);
        assert_eq!(inv.wave(None).unwrap().len(), 2);
        let e = inv.wave(Some(7)).unwrap_err().to_string();
        assert!(e.contains("wave 7") && e.contains("1, 2"), "{e}");
    }

    #[test]
    fn waves_say_when_they_cut_over_on_their_own_and_a_bad_setting_is_named() {
        let base = "[[source]]\nname = \"a\"\nsource = \"s1\"\nwave = 2\n";
        let inv = parse(&format!(
            "{base}[[wave]]\nnumber = 2\ncutover = \"auto\"\nwindow = \"23:30-01:00\"\n"
        ))
        .unwrap();
        let policy = inv.policy(2);
        assert!(policy.auto_cutover);
        let window = policy.window.unwrap();
        let at = |h: i64, m: i64| (h * 60 + m) * 60_000 + 20 * 86_400_000;
        assert!(window.contains(at(23, 45)) && window.contains(at(0, 59)));
        assert!(!window.contains(at(1, 0)) && !window.contains(at(12, 0)));
        assert_eq!(inv.policy(1), WavePolicy::default());
        for (wave, wanted) in [
            (
                "number = 3",
                "fleet.toml:6: field `number`: no source is in wave 3",
            ),
            (
                "number = 2\ncutover = \"soon\"",
                "fleet.toml:7: field `cutover`: `soon`",
            ),
            (
                "number = 2\ncutover = \"auto\"\nwindow = \"2am\"",
                "fleet.toml:8: field `window`: `2am` is not HH:MM-HH:MM",
            ),
            (
                "number = 2\nwindow = \"01:00-02:00\"",
                "fleet.toml:6: field `window`: a window is for",
            ),
            ("number = 2\nlater = 1", "unknown field `later`"),
        ] {
            let e = error(&format!("{base}[[wave]]\n{wave}\n"));
            assert!(e.contains(wanted), "{wave}: {e}");
        }
    }
}
