//! `pgseal seal` and `pgseal unseal`.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use pgseal_crashsafe::PendingFile;
use pgseal_crypto::EncryptionContext;
use pgseal_crypto::stream::{UnsealReader, seal_from};
use serde::Serialize;

use super::{Context, Outcome, print_json};
use crate::cli::{SealArgs, UnsealArgs};
use crate::exit;

/// Where output goes: a file that appears only when complete, or stdout.
enum Output {
    File(PendingFile),
    Stdout(io::Stdout),
}

impl Output {
    /// Refuses an existing file (without --force) before anything is read or written.
    fn open(path: &Path, force: bool) -> anyhow::Result<Self> {
        if is_dash(path) {
            return Ok(Output::Stdout(io::stdout()));
        }
        let pending = PendingFile::create(path, 0o600, force).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists; pass --force to replace it",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
        })?;
        Ok(Output::File(pending))
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::File(f) => f.commit().context("cannot put the output in place"),
            Output::Stdout(mut s) => s.flush().context("cannot write to stdout"),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::File(f) => f.write(buf),
            Output::Stdout(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(f) => f.flush(),
            Output::Stdout(s) => s.flush(),
        }
    }
}

fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The input and its size when known (for the progress bar).
fn open_input(path: &Path) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    if is_dash(path) {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(file), len))
}

/// A byte progress bar on a terminal for inputs over 64 MiB; hidden otherwise.
fn progress(ctx: &Context, len: Option<u64>, verb: &str) -> ProgressBar {
    len.filter(|len| *len > 64 << 20)
        .and_then(|len| super::byte_bar(ctx, verb, len))
        .unwrap_or_else(ProgressBar::hidden)
}

/// What `seal` reports.
#[derive(Debug, Serialize)]
struct SealReport<'a> {
    output: String,
    key_id: String,
    encryption_context: &'a EncryptionContext,
    plaintext_bytes: u64,
    sealed_bytes: u64,
    chunks: u64,
}

/// Runs `pgseal seal`.
pub fn seal(ctx: &Context, args: &SealArgs) -> Outcome {
    let context = EncryptionContext::from_pairs(&args.context)?;
    if is_dash(&args.output) && io::stdout().is_terminal() {
        bail!("refusing to write sealed binary data to a terminal: redirect stdout or name OUT");
    }
    let kms = ctx.open_kms()?;
    let (input, len) = open_input(&args.input)?;
    let mut output = Output::open(&args.output, args.force)?;
    let bar = progress(ctx, len, "sealing");
    let summary = seal_from(
        &kms,
        &args.key,
        context.clone(),
        &mut bar.wrap_read(input),
        &mut output,
        args.chunk_size,
    )?;
    bar.finish_and_clear();
    output.finish()?;
    let report = SealReport {
        output: args.output.display().to_string(),
        key_id: summary.key_id.0,
        encryption_context: &context,
        plaintext_bytes: summary.plaintext_bytes,
        sealed_bytes: summary.sealed_bytes,
        chunks: summary.chunks,
    };
    if ctx.json && !is_dash(&args.output) {
        print_json(&report)?;
    } else {
        ctx.status(format!(
            "sealed {} bytes into {} ({} chunks) under KMS key {}",
            report.plaintext_bytes, report.output, report.chunks, report.key_id
        ));
    }
    Ok(exit::code(exit::OK))
}

/// What `unseal` reports.
#[derive(Debug, Serialize)]
struct UnsealReport<'a> {
    output: String,
    key_id: String,
    encryption_context: &'a EncryptionContext,
    plaintext_bytes: u64,
}

/// Runs `pgseal unseal`.
pub fn unseal(ctx: &Context, args: &UnsealArgs) -> Outcome {
    let kms = ctx.open_kms()?;
    let (input, len) = open_input(&args.input)?;
    // Header, data key and key commitment are checked before any output exists.
    let bar = progress(ctx, len, "unsealing");
    let mut reader = UnsealReader::open(&kms, bar.wrap_read(input))?;
    let header = reader.header().clone();
    let mut output = Output::open(&args.output, args.force)?;
    let copied = reader.copy_to(&mut output);
    bar.finish_and_clear();
    let bytes = match copied {
        Ok(bytes) => bytes,
        Err(error) => {
            if matches!(output, Output::Stdout(_)) {
                return Err(anyhow::Error::new(error)
                    .context("unsealing stopped part-way: discard what was written to stdout"));
            }
            // The pending output file is removed when dropped.
            return Err(error.into());
        }
    };
    output.finish()?;
    let report = UnsealReport {
        output: args.output.display().to_string(),
        key_id: header.key_id.0.clone(),
        encryption_context: &header.context,
        plaintext_bytes: bytes,
    };
    if ctx.json && !is_dash(&args.output) {
        print_json(&report)?;
    } else {
        ctx.status(format!(
            "unsealed {} bytes into {} (KMS key {}, context {})",
            report.plaintext_bytes, report.output, report.key_id, report.encryption_context
        ));
    }
    Ok(exit::code(exit::OK))
}
