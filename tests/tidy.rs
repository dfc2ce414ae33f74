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
    let map = std::fs::read_to_string("ARCHITECTURE.md").expect("ARCHITECTURE.md");
    let lib = std::fs::read_to_string("src/lib.rs").expect("lib.rs");
    for module in lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
    {
        assert!(
            map.contains(&format!("**`{module}`**")),
            "ARCHITECTURE.md has no entry for `{module}`"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    assert!(readme.contains("./scripts/test") && ci.contains("./scripts/test"));
}
