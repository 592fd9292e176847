//! The order in which the full load builds the pre-data part of a database's schema
//! archive on the target (tables, sequences, types, functions, views): several
//! `pg_restore` sessions at once where the archive's own dependencies allow it.
//!
//! `pg_restore --jobs` builds the pre-data in one session, in the archive's order, and
//! runs only the data and the post-data in parallel. With thousands of tables that one
//! session is most of the schema step (2,000 tables: 1.5 s on an encrypted volume; two
//! sessions, 1.0 s). Since 9.2 `pg_dump` records every pre-data entry's dependencies
//! (through objects it does not dump, such as a column's default), as `pg_restore -l -v`
//! shows them; the archive's order is one that satisfies them.
//!
//! The plan ([`rounds`]) keeps what `pg_restore` itself keeps:
//! - `pg_restore`'s later passes (privileges and default privileges, event triggers,
//!   materialized views' data) run last, in one session, in the archive's order: a
//!   default privilege granted before the tables are made would be applied to them;
//! - an entry runs only after every entry it depends on has been committed: the entries
//!   are put in levels (one more than the highest level they depend on), and a level
//!   with many entries is split over the sessions, one round after another;
//! - the levels with few entries, between those, run in one session in the archive's
//!   order (a view on a view on a view costs no round of new sessions each);
//! - an archive whose dependencies do not fit that picture (an entry depending on one
//!   listed after it, or on one of the later passes) is built in one session, as
//!   `pg_restore` builds it.

use std::collections::{HashMap, HashSet};

/// A level with at least this many entries is split over the sessions; a smaller one
/// runs in one session with its neighbours (each session costs a `pg_restore` and a
/// connection, some 20-30 ms).
pub(super) const PARALLEL_FROM: usize = 64;

/// One entry of `pg_restore -l -v`: its dump id, its line (as a `--use-list` takes it),
/// whether it belongs to `pg_restore`'s later passes, and the dump ids it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    id: u32,
    line: String,
    late: bool,
    deps: Vec<u32>,
}

/// The entries of a `pg_restore -l -v` listing (`listing`, every entry with its
/// dependencies) that a section's `pg_restore -l` listing (`section`) names, in order.
pub(super) fn parse(listing: &str, section: &str) -> Vec<Listed> {
    let wanted: HashSet<u32> = section
        .lines()
        .filter(|line| !line.starts_with(';'))
        .filter_map(|line| line.split_once("; ")?.0.trim().parse().ok())
        .collect();
    let mut entries: Vec<Listed> = Vec::new();
    let mut keep = false;
    for line in listing.lines() {
        if let Some(deps) = line.strip_prefix(";\tdepends on:") {
            if let Some(last) = entries.last_mut().filter(|_| keep) {
                last.deps.extend(
                    deps.split_whitespace()
                        .filter_map(|d| d.parse::<u32>().ok()),
                );
            }
            continue;
        }
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let Some((id, rest)) = line.split_once("; ") else {
            continue;
        };
        let Ok(id) = id.trim().parse() else {
            continue;
        };
        keep = wanted.contains(&id);
        if !keep {
            continue;
        }
        // `CATALOG OID DESC NAMESPACE TAG OWNER`: what follows the two numbers starts
        // with the entry's type.
        let what = rest.splitn(3, ' ').nth(2).unwrap_or_default();
        entries.push(Listed {
            id,
            line: line.to_string(),
            late: late_pass(what),
            deps: Vec::new(),
        });
    }
    entries
}

/// Whether an entry (`DESC NAMESPACE TAG OWNER`) is one `pg_restore` builds after all
/// others: privileges, default privileges, event triggers (and their comments),
/// materialized views' data.
fn late_pass(what: &str) -> bool {
    [
        "ACL ",
        "ACL LANGUAGE ",
        "DEFAULT ACL ",
        "EVENT TRIGGER ",
        "MATERIALIZED VIEW DATA ",
    ]
    .iter()
    .any(|desc| what.starts_with(desc))
        || what.starts_with("COMMENT - EVENT TRIGGER ")
}

/// The rounds that build `entries` with `jobs` sessions: one round after another, the
/// batches of a round at once, each batch's lines (a `--use-list`) in order. See the
/// module's documentation.
pub(super) fn rounds(entries: &[Listed], jobs: usize) -> Vec<Vec<Vec<String>>> {
    let position: HashMap<u32, usize> =
        entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let all_in_one = || {
        vec![vec![
            entries.iter().map(|e| e.line.clone()).collect::<Vec<_>>(),
        ]]
    };
    // Each entry's level, in the archive's order; a dependency listed later, or a main
    // entry depending on a late one, and the archive is built as pg_restore builds it.
    let mut level: Vec<usize> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let mut mine = 0;
        for dep in &entry.deps {
            let Some(&at) = position.get(dep) else {
                // Not in this section (or not in the archive): built already, or never.
                continue;
            };
            if at >= i || (entries[at].late && !entry.late) {
                return all_in_one();
            }
            mine = mine.max(level[at] + 1);
        }
        level.push(mine);
    }
    let mut by_level: Vec<Vec<usize>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.late {
            continue;
        }
        if by_level.len() <= level[i] {
            by_level.resize(level[i] + 1, Vec::new());
        }
        by_level[level[i]].push(i);
    }
    let line = |i: &usize| entries[*i].line.clone();
    let mut rounds: Vec<Vec<Vec<String>>> = Vec::new();
    let mut serial: Vec<usize> = Vec::new();
    for members in by_level {
        if jobs > 1 && members.len() >= PARALLEL_FROM {
            if !serial.is_empty() {
                serial.sort_unstable();
                rounds.push(vec![serial.iter().map(line).collect()]);
                serial.clear();
            }
            let mut batches = vec![Vec::new(); jobs];
            for (n, i) in members.iter().enumerate() {
                batches[n % jobs].push(line(i));
            }
            rounds.push(batches);
        } else {
            serial.extend(members);
        }
    }
    serial.extend((0..entries.len()).filter(|&i| entries[i].late));
    if !serial.is_empty() {
        serial.sort_unstable();
        // The late entries after every main one, each part in the archive's order.
        serial.sort_by_key(|&i| entries[i].late);
        rounds.push(vec![serial.iter().map(line).collect()]);
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing line and its dependencies, as `pg_restore -l -v` prints them.
    fn listing(entries: &[(u32, &str, &[u32])]) -> String {
        let mut out = String::from(";\n; Archive created at 2026-12-07\n;\n");
        for (id, what, deps) in entries {
            out.push_str(&format!("{id}; 1259 {} {what} postgres\n", 16000 + id));
            if !deps.is_empty() {
                let ids: Vec<String> = deps.iter().map(u32::to_string).collect();
                out.push_str(&format!(";\tdepends on: {}\n", ids.join(" ")));
            }
        }
        out
    }

    /// Every entry of a listing.
    fn parse_all(text: &str) -> Vec<Listed> {
        parse(text, text)
    }

    fn ids(batch: &[String]) -> Vec<u32> {
        batch
            .iter()
            .map(|l| l.split(';').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_listing_parses_with_its_dependencies_and_passes() {
        let text = listing(&[
            (5, "TABLE public t a", &[]),
            (6, "MATERIALIZED VIEW public mv", &[5]),
            (7, "ACL public TABLE t", &[5]),
            (8, "DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES", &[]),
            (9, "COMMENT - EVENT TRIGGER e", &[]),
            (10, "COMMENT public TABLE t", &[5]),
        ]);
        let parsed = parse_all(&text);
        assert_eq!(
            parsed
                .iter()
                .map(|e| (e.id, e.late, e.deps.clone()))
                .collect::<Vec<_>>(),
            vec![
                (5, false, vec![]),
                (6, false, vec![5]),
                (7, true, vec![5]),
                (8, true, vec![]),
                (9, true, vec![]),
                (10, false, vec![5]),
            ]
        );
        assert_eq!(parsed[0].line, "5; 1259 16005 TABLE public t a postgres");
        // `-l -v` lists every entry whatever the section: the section's own listing
        // says which are in it (a dependency line goes with its entry).
        let section = "5; 1259 16005 TABLE public t a postgres\n10; 1259 16010 COMMENT public TABLE t postgres\n";
        let parsed = parse(&text, section);
        assert_eq!(
            parsed
                .iter()
                .map(|e| (e.id, e.deps.clone()))
                .collect::<Vec<_>>(),
            vec![(5, vec![]), (10, vec![5])]
        );
    }

    #[test]
    fn many_independent_tables_are_split_and_what_depends_on_them_follows() {
        let mut entries: Vec<(u32, String, Vec<u32>)> = vec![(1, "SCHEMA - s".into(), vec![])];
        for id in 2..(2 + PARALLEL_FROM as u32) {
            entries.push((id, format!("TABLE s t{id}"), vec![1]));
        }
        let last = 2 + PARALLEL_FROM as u32;
        entries.push((last, "VIEW s v".into(), vec![2, 3]));
        entries.push((last + 1, "ACL s TABLE t2".into(), vec![2]));
        let borrowed: Vec<(u32, &str, &[u32])> = entries
            .iter()
            .map(|(i, w, d)| (*i, w.as_str(), d.as_slice()))
            .collect();
        let plan = rounds(&parse_all(&listing(&borrowed)), 2);
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert_eq!(ids(&plan[0][0]), vec![1]);
        assert_eq!(plan[1].len(), 2);
        let mut split: Vec<u32> = plan[1].iter().flat_map(|b| ids(b)).collect();
        split.sort_unstable();
        assert_eq!(split, (2..last).collect::<Vec<_>>());
        assert_eq!(plan[1][0].len(), PARALLEL_FROM / 2);
        // The view, then the privilege, in the last session.
        assert_eq!(ids(&plan[2][0]), vec![last, last + 1]);
    }

    #[test]
    fn few_entries_or_one_job_run_in_one_session_in_the_archives_order() {
        let text = listing(&[
            (1, "TYPE public mood", &[]),
            (2, "DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES", &[]),
            (3, "TABLE public t", &[1]),
            (4, "VIEW public v", &[3]),
            (5, "VIEW public w", &[4]),
        ]);
        let plan = rounds(&parse_all(&text), 4);
        assert_eq!(plan.len(), 1);
        assert_eq!(ids(&plan[0][0]), vec![1, 3, 4, 5, 2]);
        let mut many = vec![];
        for id in 1..=100 {
            many.push((id, "TABLE public t", &[][..]));
        }
        let plan = rounds(&parse_all(&listing(&many)), 1);
        assert_eq!(plan.len(), 1);
        assert_eq!(ids(&plan[0][0]), (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn dependencies_out_of_the_archives_order_build_it_as_pg_restore_does() {
        let mut many: Vec<(u32, &str, &[u32])> = vec![(1, "TABLE public a", &[2])];
        for id in 2..=100 {
            many.push((id, "TABLE public t", &[]));
        }
        let plan = rounds(&parse_all(&listing(&many)), 2);
        assert_eq!(plan.len(), 1);
        assert_eq!(ids(&plan[0][0]), (1..=100).collect::<Vec<_>>());
        // A main entry that needs a late one: the same.
        let mut late_first: Vec<(u32, &str, &[u32])> = vec![(1, "ACL public TABLE a", &[])];
        for id in 2..=100 {
            late_first.push((id, "TABLE public t", &[1]));
        }
        let plan = rounds(&parse_all(&listing(&late_first)), 2);
        assert_eq!(plan.len(), 1);
        assert_eq!(ids(&plan[0][0]), (1..=100).collect::<Vec<_>>());
    }
}
