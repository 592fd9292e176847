//! The workspace's layout stays a tree of layers: in no crate does a source file use a
//! file that uses it, directly or through others. Read from the code itself: every
//! `crate::a::b::...` path (in `use` lines and in the code) is resolved to the deepest file
//! it names (`a/b.rs`, `a/b/mod.rs`, `a.rs`, ...); `super::` paths to their parent's file.
//! A module declaring its children (`mod x;`) is not a use. The same holds with every
//! top-level module taken whole (a folder with all its files): no folder uses one above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src` (`cutover/mod.rs` -> `cutover`, `lib.rs` -> ``).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The deepest file of `modules` that a path of segments names.
fn resolve(modules: &BTreeMap<Vec<String>, PathBuf>, segments: &[String]) -> Option<PathBuf> {
    (1..=segments.len())
        .rev()
        .find_map(|n| modules.get(&segments[..n]).cloned())
}

/// The `crate::...` and `super::...` paths in `code` (comments left out), as segments from
/// the crate root, given the file's own module path.
fn used_paths(code: &str, own: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find(['c', 's']) {
            let tail = &rest[at..];
            let boundary = at == 0
                || !rest[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let (base, after) = if boundary && tail.starts_with("crate::") {
                (Vec::new(), &tail["crate::".len()..])
            } else if boundary && tail.starts_with("super::") {
                // `super` of a `mod.rs` is the parent of its folder's module.
                let mut base = own.to_vec();
                if !is_mod_file || !base.is_empty() {
                    base.pop();
                }
                (base, &tail["super::".len()..])
            } else {
                rest = &tail[1..];
                continue;
            };
            // Segments up to the first non-path character; a `{...}` group is expanded one
            // level (`crate::a::{b, c::d}`).
            let mut path = base;
            let mut chars = after;
            loop {
                let end = chars
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(chars.len());
                if end == 0 {
                    break;
                }
                path.push(chars[..end].to_string());
                chars = &chars[end..];
                if let Some(next) = chars.strip_prefix("::") {
                    if let Some(group) = next.strip_prefix('{') {
                        let inner = group.split('}').next().unwrap_or("");
                        for item in inner.split(',') {
                            let mut p = path.clone();
                            p.extend(
                                item.trim()
                                    .split("::")
                                    .map(|s| s.trim().to_string())
                                    .filter(|s| !s.is_empty() && s != "self"),
                            );
                            out.push(p);
                        }
                        break;
                    }
                    chars = next;
                } else {
                    break;
                }
            }
            out.push(path);
            rest = chars;
        }
    }
    out
}

/// A cycle in `edges`, if there is one, as the files around it.
fn cycle(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    return Some(stack[from..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node)
            && let Some(c) = visit(node, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The workspace's root (the `crates` and `bench` folders).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every crate's `src` folder (the bench's too).
fn crate_sources() -> Vec<PathBuf> {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.push(root().join("bench/src"));
    crates
}

/// Which file of the crate under `src` uses which (binaries left out).
fn uses(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("bin")))
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (own, file) in &modules {
        let code = std::fs::read_to_string(file).unwrap();
        let is_mod_file = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let entry = edges.entry(file.clone()).or_default();
        for path in used_paths(&code, own, is_mod_file) {
            if let Some(target) = resolve(&modules, &path)
                && target != *file
                // A module's root declaring or re-exporting its own children is not a
                // use of them by a sibling.
                && !(is_mod_file && module_of(src, &target).starts_with(own))
            {
                entry.insert(target);
            }
        }
    }
    edges
}

/// Panics with the circle in `edges`, if there is one.
fn refuse_circle(what: &str, edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) {
    if let Some(c) = cycle(edges) {
        let names: Vec<String> = c
            .iter()
            .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
            .collect();
        panic!(
            "{what} that use each other in a circle: {} -> (back to the first)",
            names.join(" -> ")
        );
    }
}

#[test]
fn no_source_file_uses_a_file_that_uses_it() {
    let mut checked = 0;
    for src in crate_sources() {
        let edges = uses(&src);
        checked += edges.len();
        refuse_circle("files", &edges);
    }
    assert!(checked > 50, "only {checked} files read");
}

/// Nothing runs up the layers: with each of a crate's top-level modules (a file, or a
/// folder with everything in it) taken as one, none uses one that uses it. A folder whose
/// file uses a higher module while another of its files is used by that module would be
/// a circle here although no two files form one.
#[test]
fn no_module_or_folder_uses_one_above_it() {
    for src in crate_sources() {
        let top = |file: &Path| -> PathBuf {
            match module_of(&src, file).first() {
                Some(first) => src.join(first),
                None => src.join("lib.rs"),
            }
        };
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (file, targets) in uses(&src) {
            let from = top(&file);
            // The crate's root declares and re-exports the modules: it is above them all.
            if from == src.join("lib.rs") {
                continue;
            }
            for target in targets {
                let to = top(&target);
                if to != from {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        refuse_circle("modules", &edges);
    }
}

#[test]
fn the_reader_finds_paths_and_groups() {
    let own = vec!["cutover".to_string()];
    let found = used_paths(
        "use crate::engine::{EngineError, connect_to};\nlet x = crate::fence::slip_in(a); // crate::not::this\nuse super::report::Thing;",
        &own,
        true,
    );
    assert!(found.contains(&vec!["engine".to_string(), "EngineError".to_string()]));
    assert!(found.contains(&vec!["fence".to_string(), "slip_in".to_string()]));
    assert!(!found.iter().any(|p| p.first().is_some_and(|s| s == "not")));
    let found = used_paths("use super::report::Thing;", &own, false);
    assert!(found.contains(&vec!["report".to_string(), "Thing".to_string()]));
}
