//! The module map of `src/lib.rs` holds: each module imports (`crate::NAME`) only modules of
//! lower layers, so no two modules import each other and none imports one above it. Reads the
//! sources; the layers below are the ones `src/lib.rs` and the README's architecture list.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. A module may use modules of earlier layers only.
const LAYERS: &[&[&str]] = &[
    &["codec", "auth", "shutdown", "flow_control", "memory"],
    &["message", "config"],
    &["command", "outbox", "queue", "transport"],
    &["store"],
    &["router", "election"],
    &["session", "status"],
    &["server", "admin"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/layout.rs"))
}

/// Every `crate::NAME` in the files of module `module` (its file and its directory).
fn imports(src: &Path, module: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no source for module `{module}`");
    let mut found = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or(l.strip_prefix("pub(crate) mod "))
        })
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    let mut wrong = Vec::new();
    for module in &modules {
        for used in imports(&src, module) {
            if layer_of(&used) >= layer_of(module) {
                wrong.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways: {wrong:?}"
    );
}
