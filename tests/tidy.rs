//! Style enforced by tests: module docs, and docs that stay true to the tree.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    assert!(files.len() > 10);
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        assert!(
            text.trim_start().starts_with("//!"),
            "{} lacks a //! module doc",
            f.display()
        );
    }
}

#[test]
fn architecture_names_every_module() {
    // Every file module by its own name, and every folder as `folder/`.
    let map = std::fs::read_to_string("ARCHITECTURE.md").expect("ARCHITECTURE.md");
    let graph = module_graph();
    for module in graph.keys() {
        let mut parts: Vec<&str> = module.split("::").collect();
        let leaf = parts.pop().unwrap_or_default();
        let folder = graph.keys().any(|m| m.starts_with(&format!("{module}::")));
        assert!(
            map.contains(&format!("**`{leaf}`**"))
                || (folder && map.contains(&format!("`{leaf}/`"))),
            "ARCHITECTURE.md has no entry for `{module}`"
        );
        for folder in parts {
            assert!(
                map.contains(&format!("`{folder}/`")),
                "ARCHITECTURE.md has no section for `{folder}/`"
            );
        }
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    assert!(readme.contains("./scripts/test") && ci.contains("./scripts/test"));
}

/// Each source file as a module path (`core::gate`, `serve::api`, `plan`), with the `crate::`
/// paths its non-test code names, resolved to module paths of files that exist.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let module_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix("src").ok()?.with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        Some(parts.join("::"))
    };
    let modules: std::collections::BTreeSet<String> =
        files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph = std::collections::BTreeMap::new();
    for f in &files {
        let Some(me) = module_of(f) else { continue };
        if ["lib", "main", "cli"].contains(&me.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut deps = std::collections::BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let path: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that is a module file.
            let dep = (1..=segments.len())
                .rev()
                .map(|n| segments[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(dep) = dep.filter(|d| d != &me) {
                deps.insert(dep);
            }
        }
        graph.insert(me, deps);
    }
    graph
}

#[test]
fn the_layers_import_only_downwards() {
    let graph = module_graph();
    assert!(graph.contains_key("core::gate") && graph.contains_key("plan"));
    // What each layer may name of ours.
    let allowed = |from: &str, to: &str| -> bool {
        let layer = |m: &str| m.split("::").next().unwrap_or("").to_string();
        match layer(from).as_str() {
            "plan" => to == "core::clock",
            "core" => ["plan", "core"].contains(&layer(to).as_str()),
            "config" => layer(to) == "plan" || layer(to) == "config" || to == "core::clock",
            "store" => ["plan", "core", "store"].contains(&layer(to).as_str()),
            "offline" => ["plan", "config", "core", "offline"].contains(&layer(to).as_str()),
            "serve" => layer(to) != "offline",
            _ => false,
        }
    };
    let mut bad = Vec::new();
    for (from, deps) in &graph {
        for to in deps {
            if !allowed(from, to) {
                bad.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layering: {bad:?}");

    // The pure layers name no I/O or async crate.
    let mut files = Vec::new();
    rust_files(Path::new("src/core"), &mut files);
    files.push("src/plan.rs".into());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for crate_name in ["tokio", "axum", "hyper", "redb", "reqwest", "tracing"] {
            assert!(
                !code.contains(&format!("{crate_name}::")),
                "{} uses {crate_name}: the decision core does no I/O",
                f.display()
            );
        }
    }
}

#[test]
fn no_module_imports_itself_through_a_circle() {
    let graph = module_graph();
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("an import circle: {}", circle.join(" → "));
        }
    }
}
