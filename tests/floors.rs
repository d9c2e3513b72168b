//! The house has floors, and imports only point down: a module names modules on its
//! own floor or below, never above, and the modules' imports form no circle.
//!
//! This reads the source as text: every `crate::NAME` outside a comment is an import
//! of the top-level module `NAME`. `STILL_WRONG` lists the imports still to be taken
//! out (upward ones, and ones closing a circle within a floor); the tests fail on any
//! other, and on an entry that is no longer needed, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Floor of each top-level module, from the ground up.
const FLOORS: &[(&str, u8)] = &[
    // The ground: the config and the wire.
    ("config", 0),
    ("http", 0),
    // A client's socket, registered with the poller only when it has to wait.
    ("socket", 0),
    // Reused heap blocks for large futures, used from the wire up.
    ("recycle", 0),
    // Small shared parts.
    ("metrics", 1),
    ("recent", 1),
    ("logthrottle", 1),
    ("tls", 1),
    ("admission", 1),
    ("access_log", 1),
    ("clock", 1),
    ("heap", 1),
    ("body", 1),
    // weir's own craft, each standing alone.
    ("balancer", 2),
    ("cache", 2),
    ("ratelimit", 2),
    ("shaping", 2),
    // Servers, their pools, connections, health and discovery.
    ("upstream", 3),
    // The request pipeline.
    ("proxy", 4),
    // The process: accepting, the runtime built from the config, admin, lifecycle.
    ("listener", 5),
    ("runtime", 5),
    ("admin", 5),
    ("server", 5),
    ("notify", 5),
    ("handover", 5),
];

/// Imports not yet taken out: (from, to).
const STILL_WRONG: &[(&str, &str)] = &[];

fn floor(module: &str) -> u8 {
    FLOORS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, floor)| *floor)
        .unwrap_or_else(|| panic!("module `{module}` has no floor: add it to FLOORS in tests/floors.rs"))
}

/// (module, module it names) for every `crate::NAME` in `src/`.
fn imports() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
            let module = first.trim_end_matches(".rs");
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let name: String = code[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        found.insert((module.to_string(), name));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn imports_only_point_down() {
    let still_up: BTreeSet<(String, String)> =
        STILL_WRONG.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let imports = imports();
    let up: BTreeSet<(String, String)> =
        imports.iter().filter(|(from, to)| floor(to) > floor(from)).cloned().collect();
    let new: Vec<_> = up.difference(&still_up).collect();
    assert!(new.is_empty(), "imports from a lower floor to a higher one: {new:?}");
    let gone: Vec<_> = still_up.difference(&imports).collect();
    assert!(gone.is_empty(), "no longer needed, remove from STILL_WRONG: {gone:?}");
}

#[test]
fn modules_form_no_circle() {
    // Upward imports are checked above; a circle among the rest is one within a floor.
    let still_up: BTreeSet<(String, String)> =
        STILL_WRONG.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in imports().difference(&still_up).cloned() {
        edges.entry(from).or_default().insert(to);
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("a circle of imports: {:?}", &path[at..]);
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done);
    }
}
