//! One module per command: each turns parsed arguments into library calls and renders the
//! result as text or JSON. No logic of its own beyond that.

pub mod demo;
pub mod doctor;
pub mod endpoint;
pub mod fleet;
pub mod fleet_jobs;
pub mod fleet_run;
pub mod follow;
pub mod instance;
pub mod journal;
pub mod key;
pub mod migrate;
pub mod platform;
pub mod progress;
pub mod seal;
pub mod snapshot;
pub mod switch;
pub mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use pgseal_crypto::{LocalKms, Passphrase};

/// What every command gets besides its own arguments.
#[derive(Debug)]
pub struct Context {
    /// pgseal's home directory (resolved, absolute).
    pub home: PathBuf,
    /// Print JSON instead of text.
    pub json: bool,
    /// Print no progress or status lines.
    pub quiet: bool,
    /// `--passphrase-file`, if given.
    pub passphrase_file: Option<PathBuf>,
    /// Where the journal is (`--journal`), and who this process is as a runner.
    pub journal: pgseal_core::JournalConfig,
}

impl Context {
    /// Opens the journal (`--journal`, or the home's SQLite file).
    pub fn journal(&self) -> anyhow::Result<pgseal_core::Journal> {
        Ok(self.journal.open()?)
    }

    /// The environment a child `pgseal` needs to use the same journal as this process:
    /// `PGSEAL_JOURNAL` (it may hold a password, so never a command line) and the lease's
    /// length.
    pub fn journal_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "PGSEAL_LEASE_SECONDS",
            self.journal.terms.ttl.as_secs().to_string(),
        )];
        if let pgseal_core::journal::Location::Postgres(url) = &self.journal.location {
            env.push(("PGSEAL_JOURNAL", url.clone()));
        }
        env
    }

    /// Opens (or on first use creates) the local key store under the home directory.
    pub fn open_kms(&self) -> anyhow::Result<LocalKms> {
        let passphrase = Passphrase::from_file_or_env(self.passphrase_file.as_deref())?;
        let dir = self.home.join("kms");
        LocalKms::open(&dir, &passphrase).context("cannot use the local KMS")
    }

    /// Opens the key store only when `needed` (plain operations never ask for the
    /// passphrase).
    pub fn open_kms_if(&self, needed: bool) -> anyhow::Result<Option<LocalKms>> {
        needed.then(|| self.open_kms()).transpose()
    }

    /// Prints a command's result on stdout: `value` as pretty JSON with `--json`,
    /// otherwise what `text` renders (from `output/`), made safe for a terminal.
    pub fn print<T: serde::Serialize>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            print_json(value)
        } else {
            print!("{}", crate::output::terminal_safe(&text()));
            Ok(())
        }
    }

    /// Writes a status line to stderr unless `--quiet`.
    pub fn status(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}", crate::output::terminal_safe(&line.to_string()));
        }
    }
}

/// Listens for `/metrics` scrapes on `addr`; the address listened on goes to stderr
/// (with port 0, the one chosen).
pub fn metrics_server(addr: &str) -> anyhow::Result<pgseal_metrics::Server> {
    let server = pgseal_metrics::serve(addr)?;
    eprintln!(
        "pgseal: serving metrics at http://{}/metrics",
        server.addr()
    );
    Ok(server)
}

/// What a scrape shows: the migrations' reports and the leases held on them.
pub type Scraped = (
    Vec<pgseal_core::report::MigrationReport>,
    Vec<pgseal_core::journal::LeaseRecord>,
);

/// Answers `server`'s scrapes until the process ends: at each, `read` reads the
/// migrations and their leases from the journal anew and `pgseal_metrics` renders them.
pub fn answer_metrics(server: &pgseal_metrics::Server, read: impl Fn() -> anyhow::Result<Scraped>) {
    server.run(|| {
        let (reports, leases) = read().map_err(|e| format!("{e:#}"))?;
        let refs: Vec<&pgseal_core::report::MigrationReport> = reports.iter().collect();
        pgseal_metrics::render(&refs, &leases, pgseal_core::journal::now_ms())
            .map_err(|e| e.to_string())
    });
}

/// The leases `journal` holds on the migrations `names`.
pub fn leases_of(
    journal: &pgseal_core::Journal,
    names: &[&str],
) -> anyhow::Result<Vec<pgseal_core::journal::LeaseRecord>> {
    Ok(journal
        .leases()?
        .into_iter()
        .filter(|l| names.contains(&l.migration.as_str()))
        .collect())
}

/// What one migration's metrics are made of: its report with its latest samples and its
/// lease, read from the journal at each call.
pub fn migration_reports(
    journal: pgseal_core::JournalConfig,
    name: String,
) -> impl Fn() -> anyhow::Result<Scraped> {
    move || {
        let journal = journal.open()?;
        let report = pgseal_core::report::gather_with(
            &journal,
            &name,
            pgseal_core::report::History::Latest,
        )?;
        Ok((vec![report], leases_of(&journal, &[&name])?))
    }
}

/// Prints one frame of a `status` that may `--watch`: `value` as JSON with `--json`,
/// else what `text` renders, the screen cleared first when `redraw`.
pub fn show_frame<T: serde::Serialize>(
    ctx: &Context,
    redraw: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(value);
    }
    if redraw {
        print!("\x1b[2J\x1b[H");
    }
    print!("{}", crate::output::terminal_safe(&text()));
    Ok(())
}

/// A byte progress bar labelled `verb`, when progress should show: on a terminal, and
/// neither `--quiet` nor `--json`.
pub fn byte_bar(ctx: &Context, verb: &str, len: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if ctx.quiet || ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(verb.to_string());
    Some(bar)
}

/// Parses a URL given as `flag`, the password coming from PGPASSWORD when the URL has none.
/// A URL that holds a password is used, with a warning: the process list shows it.
pub fn url_config(url: &str, flag: &str) -> anyhow::Result<tokio_postgres::Config> {
    use anyhow::Context as _;
    let (config, password_in_url) = pgseal_pg::config_from_url(url)
        .with_context(|| format!("{flag} is not a PostgreSQL URL"))?;
    if password_in_url {
        tracing::warn!(
            "{flag} holds a password, which other users can see in the process list; set PGPASSWORD instead"
        );
    }
    Ok(config)
}

/// The KMS as the platform calls take it.
pub fn as_dyn(kms: Option<&LocalKms>) -> Option<&dyn pgseal_crypto::Kms> {
    kms.map(|k| k as &dyn pgseal_crypto::Kms)
}

/// The key a `--key K` / `--encrypt` pair names: K, or the managed default key.
pub fn chosen_key(key: &Option<String>, encrypt: bool) -> Option<String> {
    key.clone()
        .or_else(|| encrypt.then(|| pgseal_crypto::keystore::DEFAULT_KEY_ALIAS.to_string()))
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The outcome of a command: the exit code to leave with.
pub type Outcome = anyhow::Result<ExitCode>;
