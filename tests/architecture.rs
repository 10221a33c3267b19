//! The module graph stays a layering: no import cycles between the crate's top-level modules
//! (`qwen` → `translate`/`tools` → `turn` → `conversation` → `chat` → `api` → `router`),
//! layers do not reach into the router or the core, the core does not call into a layer, and
//! nothing below the client APIs (`api`) knows one of them. Read from the sources, so a
//! change that breaks the shape fails here with the path of the cycle.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its non-test code names (`crate::x`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let name = rel.to_string_lossy();
            if !name.ends_with(".rs") || name == "lib.rs" || name == "main.rs" {
                continue;
            }
            if rel.file_name().is_some_and(|f| f == "tests.rs") {
                continue;
            }
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere; only the module's own code counts.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = g.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one: the modules in order.
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    walk(g, start, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_import_cycles_between_modules() {
    let g = graph();
    assert!(g.len() > 15, "the sources were read: {:?}", g.keys());
    for m in g.keys() {
        if let Some(cycle) = cycle_from(&g, m) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn layers_stay_out_of_the_router_and_the_core_and_the_other_way_round() {
    let g = graph();
    let layers = &g["layers"];
    for forbidden in ["router", "stack", "chat", "app"] {
        assert!(!layers.contains(forbidden), "layers use {forbidden}");
    }
    assert!(!g["chat"].contains("layers"), "the core calls into a layer");
    // Function calling is part of the engine: an Anthropic encoder renders the same events.
    for module in ["qwen", "chat", "conversation", "turn"] {
        assert!(!g["tools"].contains(module), "tools uses {module}");
    }
}

#[test]
fn the_engine_knows_no_client_api() {
    let g = graph();
    // The engine and the layers are written once over `turn::ClientApi`; each client API
    // (`api::openai`, next Anthropic's and the Responses API) knows them, never the reverse.
    for module in [
        "turn",
        "conversation",
        "chat",
        "layers",
        "translate",
        "tools",
        "qwen",
    ] {
        assert!(g.contains_key(module), "{module} was read");
        assert!(!g[module].contains("api"), "{module} uses api");
    }
    // The turn model is below conversations and the core.
    for module in ["conversation", "chat", "layers", "router", "stack"] {
        assert!(!g["turn"].contains(module), "turn uses {module}");
    }
    assert!(
        !g["conversation"].contains("chat"),
        "conversation uses chat"
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(cycle_from(&g, "a"), None);
}
