//! The dependency rules of `docs/ARCHITECTURE.md`, checked over the source
//! tree: every `crate::` path (in `use` lines and inline), and every
//! `tidegate::` path in `main.rs`, is an import of one top-level module by
//! another. `.ci/run` runs this first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. An import may point to its own layer or below.
const LAYERS: [(&str, &[&str]); 5] = [
    ("leaves", &["config", "clock", "shutdown", "telemetry", "sd_notify"]),
    (
        "data",
        &[
            "histogram",
            "access_log",
            "balance",
            "upstream",
            "pool",
            "traffic",
            "cache",
            "state",
            "proxy",
            "server",
        ],
    ),
    (
        "control",
        &["control", "admin", "health", "autoscale", "cluster", "discovery"],
    ),
    ("composition", &["app"]),
    ("tooling", &["sim", "demo", "main"]),
];

/// The pure autoscale files: no tokio, no state, no pool, no I/O modules.
const PURE_AUTOSCALE: [&str; 10] = [
    "erlang", "forecast", "guard", "mod", "policy", "schedule", "signal", "step", "tidegate", "warmup",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/pool/queue.rs` -> `pool`; `src/app.rs` -> `app`; `src/lib.rs` -> `lib`.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every module a file names after `crate::` (or `tidegate::` in main.rs),
/// including those inside `use crate::{a, b::c}` groups. Comments are
/// skipped.
fn imports(text: &str, root: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let after = &rest[at + root.len()..];
            let boundary_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
            if boundary_ok {
                if let Some(group) = after.strip_prefix('{') {
                    // The first name of each item at the group's own depth.
                    let (mut depth, mut item_start) = (0usize, true);
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => item_start = true,
                            c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                                let name: String = group[i..]
                                    .chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                    .collect();
                                if name != "self" {
                                    found.insert(name);
                                }
                                item_start = false;
                            }
                            _ => {}
                        }
                    }
                } else {
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            }
            rest = &rest[at + root.len()..];
        }
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

struct Tree {
    /// file -> (its top-level module, the modules it imports)
    files: Vec<(PathBuf, String, BTreeSet<String>)>,
}

fn tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    let files = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let top = top_module(&src, &p);
            let root = if top == "main" { "tidegate::" } else { "crate::" };
            let mut imported = imports(&text, root);
            imported.remove(&top);
            (p, top, imported)
        })
        .collect();
    Tree { files }
}

#[test]
fn every_module_is_in_a_layer() {
    for (path, top, imported) in &tree().files {
        if top != "lib" {
            assert!(
                layer_of(top).is_some(),
                "{}: module `{top}` is in no layer",
                path.display()
            );
        }
        for m in imported {
            assert!(
                layer_of(m).is_some(),
                "{}: imports `{m}`, which is in no layer",
                path.display()
            );
        }
    }
}

#[test]
fn imports_point_down_the_layers() {
    let mut wrong = Vec::new();
    for (path, top, imported) in &tree().files {
        let Some(mine) = layer_of(top) else { continue };
        for m in imported {
            if layer_of(m).is_some_and(|theirs| theirs > mine) {
                wrong.push(format!("{}: `{top}` imports `{m}` from a higher layer", path.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_named_rules_hold() {
    // The layers' own lists: a module added to a layer is under its rules.
    let (leaves, data_layer): (&[&str], &[&str]) = (LAYERS[0].1, LAYERS[1].1);
    const BELOW_PROXY: [&str; 6] = ["histogram", "balance", "upstream", "pool", "traffic", "cache"];
    let below_proxy: Vec<&str> = leaves.iter().chain(&BELOW_PROXY).copied().collect();
    let data: Vec<&str> = leaves.iter().chain(data_layer).copied().collect();
    // (who, everything they may import, the rule)
    let allowed: [(&[&str], &[&str], &str); 4] = [
        (leaves, &[], "a leaf imports no other tidegate module"),
        (
            &BELOW_PROXY,
            &below_proxy,
            "pool, balance, upstream, traffic, cache and histogram sit below the proxy",
        ),
        (
            &["proxy", "server"],
            &data,
            "the data path never imports the control path",
        ),
        (
            &["sim"],
            &["config", "autoscale"],
            "the simulator imports only the pure autoscale code (and config)",
        ),
    ];
    let mut wrong = Vec::new();
    for (path, top, imported) in &tree().files {
        for (who, may, rule) in &allowed {
            if !who.contains(&top.as_str()) {
                continue;
            }
            for m in imported.iter().filter(|m| !may.contains(&m.as_str())) {
                wrong.push(format!("{}: imports `{m}`: {rule}", path.display()));
            }
        }
        if imported.contains("demo") && top != "main" && top != "demo" {
            wrong.push(format!("{}: imports `demo`: only main.rs may", path.display()));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn pure_autoscale_files_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/autoscale");
    let mut wrong = Vec::new();
    for name in PURE_AUTOSCALE {
        let path = src.join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [
            "tokio",
            "crate::state",
            "crate::pool",
            "std::fs",
            "std::net::Tcp",
            "live::",
            "hook::",
        ] {
            if text
                .lines()
                .any(|l| l.split("//").next().unwrap_or("").contains(needle))
            {
                wrong.push(format!("{}: uses `{needle}`", path.display()));
            }
        }
    }
    // The simulator may only reach the pure files.
    for (path, top, _) in &tree().files {
        if top != "sim" {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for needle in ["autoscale::live", "autoscale::hook"] {
            if text.contains(needle) {
                wrong.push(format!("{}: uses `{needle}`", path.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, top, imported) in &tree().files {
        edges.entry(top.clone()).or_default().extend(imported.iter().cloned());
    }
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(cycle) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_scanner_reads_groups_and_inline_paths() {
    let text =
        "use crate::{config::Config, pool::{Backend, Pool}};\nlet x = crate::clock::unix_ms(); // crate::admin\n";
    let found = imports(text, "crate::");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["clock".to_string(), "config".to_string(), "pool".to_string()]
    );
}
