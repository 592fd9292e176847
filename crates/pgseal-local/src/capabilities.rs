//! Linux capabilities of a process, read from its `/proc/<pid>/status`.

use std::path::Path;

/// Linux capability number of CAP_SYS_RESOURCE (growing a mounted ext4).
pub(crate) const CAP_SYS_RESOURCE: u32 = 24;

/// True when the `/proc/<pid>/status` file gives the capability `cap` as effective.
pub(crate) fn has_capability(status_file: &Path, cap: u32) -> bool {
    effective_capabilities(status_file).is_some_and(|caps| caps & (1u64 << cap) != 0)
}

/// The effective capability set from a `/proc/<pid>/status` file.
fn effective_capabilities(status_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status_file).ok()?;
    let hex = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_parsing_reads_cap_eff() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("status");
        std::fs::write(&f, "Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        let caps = effective_capabilities(&f).unwrap();
        assert_ne!(caps & (1 << CAP_SYS_RESOURCE), 0);
        assert!(has_capability(&f, CAP_SYS_RESOURCE));
        std::fs::write(&f, "CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(effective_capabilities(&f), Some(0));
        assert!(!has_capability(&f, CAP_SYS_RESOURCE));
    }
}
