//! The shape of the code, checked from its source: each module imports only from its own
//! layer or the layers below it (the table in ARCHITECTURE.md), no modules or files import
//! each other in a circle, no source file is over 400 lines, and only `src/store` writes the
//! core tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 400;
const CORE_TABLES: [&str; 5] = ["jobs", "keys", "key_values", "events", "audit_log"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The code of a file without its comments (doc comments name paths in prose).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every path that follows `prefix` (`crate::`, `super::`), including
/// each path in a `prefix{a::b, c}` group.
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut part = String::new();
            let mut parts = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(std::mem::take(&mut part));
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
            parts.push(part);
            for part in parts {
                names.extend(identifier(part.trim()));
            }
        } else {
            names.extend(identifier(rest));
        }
    }
    names
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The top-level module a file belongs to (`store` for `src/store/claim.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The layers of ARCHITECTURE.md's table, top first: the modules each row names.
fn layers() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## The layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a section `## The layers`");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let modules = cells[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|m| !m.contains("::"))
                .map(str::to_string)
                .collect();
            (cells[1].to_string(), modules)
        })
        .collect()
}

/// Each module's row in the table, 0 at the top.
fn ranks() -> BTreeMap<String, usize> {
    let mut ranks = BTreeMap::new();
    for (rank, (layer, modules)) in layers().into_iter().enumerate() {
        for module in modules {
            assert!(
                ranks.insert(module.clone(), rank).is_none(),
                "`{module}` is in two layers (again in {layer})"
            );
        }
    }
    ranks
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_only_from_their_layer_or_below_and_never_in_a_circle() {
    let src = root().join("src");
    let ranks = ranks();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in rust_files(&src) {
        let module = module_of(&src, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let rank = *ranks
            .get(&module)
            .unwrap_or_else(|| panic!("module `{module}` is in no layer of ARCHITECTURE.md"));
        for used in first_segments(&code(&file), "crate::") {
            if used == module || !ranks.contains_key(&used) {
                continue;
            }
            if ranks[&used] < rank {
                upward.push(format!("{} uses `{used}`", file.display()));
            }
            graph.entry(module.clone()).or_default().insert(used);
        }
    }
    assert!(upward.is_empty(), "imports that point up: {upward:#?}");
    assert_eq!(find_cycle(&graph), None, "modules that import each other");
}

#[test]
fn no_files_of_a_module_import_each_other_in_a_circle() {
    let src = root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let dir = file.parent().unwrap();
        if stem == "mod" || dir == src {
            continue;
        }
        let siblings: BTreeSet<String> = rust_files(dir)
            .iter()
            .filter(|f| f.parent() == Some(dir))
            .map(|f| f.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|s| s != "mod" && *s != stem)
            .collect();
        let code = code(&file);
        let module_path = dir
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('/', "::");
        let mut used = first_segments(&code, "super::");
        used.extend(first_segments(&code, &format!("crate::{module_path}::")));
        let name = format!("{module_path}::{stem}");
        for sibling in used.intersection(&siblings) {
            graph
                .entry(name.clone())
                .or_default()
                .insert(format!("{module_path}::{sibling}"));
        }
    }
    assert_eq!(find_cycle(&graph), None, "files that import each other");
}

#[test]
fn no_source_file_is_over_400_lines() {
    let long: Vec<String> = rust_files(&root().join("src"))
        .into_iter()
        .map(|f| (std::fs::read_to_string(&f).unwrap().lines().count(), f))
        .filter(|(lines, _)| *lines > MAX_LINES)
        .map(|(lines, f)| format!("{}: {lines} lines", f.display()))
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
}

#[test]
fn only_the_store_writes_jobs_keys_events_and_the_audit_log() {
    let src = root().join("src");
    let store = src.join("store");
    let mut writers = Vec::new();
    for file in rust_files(&src)
        .into_iter()
        .filter(|f| !f.starts_with(&store))
    {
        let code = code(&file);
        for verb in ["INSERT INTO", "UPDATE", "DELETE FROM", "TRUNCATE"] {
            for table in CORE_TABLES {
                let statement = format!("{verb} {table} ");
                if code.contains(&statement) {
                    writers.push(format!("{}: {statement}", file.display()));
                }
            }
        }
    }
    assert!(
        writers.is_empty(),
        "SQL writes outside src/store: {writers:#?}"
    );
}

#[test]
fn the_checks_above_see_what_they_look_for() {
    let segments = first_segments(
        "use crate::{db::Db, store::{self, x}};\nlet a = crate::jobs::next(); mycrate::no",
        "crate::",
    );
    assert_eq!(
        segments,
        BTreeSet::from(["db".into(), "store".into(), "jobs".into()])
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert!(!layers().is_empty());
}
