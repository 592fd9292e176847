//! Which OS user a child process runs as.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::{Error, Result};

/// The OS user PostgreSQL servers run as when pgseal itself runs as root.
pub const SERVER_OS_USER: &str = "postgres";

/// The OS user a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The user this process runs as.
    CurrentUser,
    /// Another user; needs root (or CAP_SETUID/CAP_SETGID). Supplementary groups are dropped.
    User {
        /// The user's name, for messages.
        name: String,
        /// Its numeric user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
        /// Its home directory, given to the child as `HOME`.
        home: PathBuf,
    },
}

impl RunAs {
    /// Looks up an OS user by name.
    pub fn user(name: &str) -> Result<Self> {
        let user = User::from_name(name)
            .map_err(|source| Error::UserLookup {
                user: name.to_string(),
                source,
            })?
            .ok_or_else(|| Error::NoSuchUser {
                user: name.to_string(),
            })?;
        Ok(RunAs::User {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }

    /// The user PostgreSQL servers must run as from this process: `postgres` when this
    /// process is root (PostgreSQL refuses to run as root), else the current user.
    pub fn server_user() -> Result<Self> {
        if Uid::effective().is_root() {
            Self::user(SERVER_OS_USER)
        } else {
            Ok(RunAs::CurrentUser)
        }
    }

    /// The numeric (uid, gid) files made for this user should be owned by.
    pub fn ids(&self) -> (u32, u32) {
        match self {
            RunAs::CurrentUser => (Uid::effective().as_raw(), Gid::effective().as_raw()),
            RunAs::User { uid, gid, .. } => (*uid, *gid),
        }
    }

    /// Gives `path` to this user (a no-op for the current user).
    pub fn chown(&self, path: &std::path::Path) -> std::io::Result<()> {
        match self {
            RunAs::CurrentUser => Ok(()),
            RunAs::User { uid, gid, .. } => {
                nix::unistd::chown(path, Some(Uid::from_raw(*uid)), Some(Gid::from_raw(*gid)))
                    .map_err(std::io::Error::from)
            }
        }
    }

    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let RunAs::User {
            uid,
            gid,
            home,
            name,
            ..
        } = self
        {
            cmd.uid(*uid).gid(*gid);
            cmd.env("HOME", home).env("USER", name).env("LOGNAME", name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExternalCommand;

    #[test]
    fn server_user_is_postgres_exactly_when_root() {
        let user = RunAs::server_user();
        if Uid::effective().is_root() {
            let user = user.expect("the postgres OS user must exist to run servers as root");
            let out = ExternalCommand::new("id")
                .arg("-un")
                .run_as(user)
                .run()
                .unwrap();
            assert_eq!(out.stdout_text().trim(), SERVER_OS_USER);
        } else {
            assert_eq!(user.unwrap(), RunAs::CurrentUser);
        }
    }

    #[test]
    fn unknown_user_says_how_to_create_it() {
        let err = RunAs::user("pgseal-no-such-user").unwrap_err();
        assert!(err.to_string().contains("useradd"), "{err}");
    }
}
