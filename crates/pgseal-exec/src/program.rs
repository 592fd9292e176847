//! Finding programs on a search path, as a shell would.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Finds `name` on this process's `PATH`: the first executable file of that name.
pub fn find_program(name: &str) -> Option<PathBuf> {
    find_program_in(name, std::env::var_os("PATH").as_deref())
}

/// Finds `name` on the given search path (`PATH` syntax); `None` when the path is unset or
/// no directory on it holds an executable file of that name.
pub fn find_program_in(name: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    let search_path = search_path?;
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn finds_only_executable_files_in_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("tool"), "not executable").unwrap();
        fs::write(b.path().join("tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(b.path().join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(
            find_program_in("tool", Some(&path)),
            Some(b.path().join("tool"))
        );
        assert_eq!(find_program_in("other", Some(&path)), None);
        assert_eq!(find_program_in("tool", None), None);
    }
}
