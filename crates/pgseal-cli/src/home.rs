//! Where pgseal keeps its state: `--home`, else `PGSEAL_HOME`, else (as root)
//! `/var/lib/pgseal`, else `$XDG_DATA_HOME/pgseal`, else `~/.local/share/pgseal`.
//!
//! Root gets a system directory because the servers pgseal starts run as `postgres`, which
//! cannot pass through root's home (`/root` is 0700).

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Resolves the home directory. `explicit` is `--home` / `PGSEAL_HOME` (clap reads both).
pub fn resolve(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    resolve_with(
        explicit,
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn resolve_with(
    explicit: Option<PathBuf>,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit.filter(|d| !d.as_os_str().is_empty()) {
        return absolute(dir);
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if let Some(xdg) = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(xdg.join("pgseal"));
    }
    match home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".local/share/pgseal")),
        None => bail!(
            "cannot choose a home directory: HOME is not set; pass --home DIR or set PGSEAL_HOME"
        ),
    }
}

fn absolute(dir: PathBuf) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir)
    } else {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(cwd.join(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_beats_xdg_beats_home() {
        let r = resolve_with(Some("/srv/ps".into()), Some("/x".into()), Some("/h".into())).unwrap();
        assert_eq!(r, PathBuf::from("/srv/ps"));
        let r = resolve_with(None, Some("/x".into()), Some("/h".into())).unwrap();
        assert_eq!(r, PathBuf::from("/x/pgseal"));
        let r = resolve_with(None, Some("relative".into()), Some("/h".into())).unwrap();
        assert_eq!(r, PathBuf::from("/h/.local/share/pgseal"));
        let err = resolve_with(None, None, None).unwrap_err();
        assert!(err.to_string().contains("--home"), "{err}");
    }

    #[test]
    fn relative_explicit_home_is_made_absolute() {
        let r = resolve_with(Some("state".into()), None, None).unwrap();
        assert!(r.is_absolute() && r.ends_with("state"));
    }
}
