//! The module map holds: each module imports (`crate::NAME`) only modules of lower layers, so
//! no two modules import each other and none imports one above it. Reads the sources, the
//! README's import graph (each module's layer and imports, which must be exactly what the
//! sources import) and `src/lib.rs`'s numbered layers (which must be the README's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One module's line of the README's import graph.
#[derive(Debug)]
struct Node {
    layer: usize,
    imports: BTreeSet<String>,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The README's import graph: the code block after "The import graph", one line per module,
/// `LAYER MODULE -> IMPORTS...`.
fn readme_graph(root: &Path) -> BTreeMap<String, Node> {
    let readme = read(&root.join("README.md"));
    let at = readme
        .find("The import graph")
        .expect("the README's architecture section has an import graph");
    let block = readme[at..]
        .split("```")
        .nth(1)
        .expect("the import graph is a code block");
    let mut graph = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (left, imports) = line
            .split_once("->")
            .unwrap_or_else(|| panic!("import graph line without `->`: {line:?}"));
        let mut left = left.split_whitespace();
        let (Some(layer), Some(module), None) = (left.next(), left.next(), left.next()) else {
            panic!("import graph line is not `LAYER MODULE -> ...`: {line:?}");
        };
        let layer = layer
            .parse()
            .unwrap_or_else(|_| panic!("import graph line's layer is not a number: {line:?}"));
        let imports = imports.split_whitespace().map(String::from).collect();
        let old = graph.insert(module.to_string(), Node { layer, imports });
        assert!(
            old.is_none(),
            "`{module}` is twice in the README's import graph"
        );
    }
    graph
}

/// `src/lib.rs`'s numbered layers (`//! N. `module`, ...`; what is in parentheses annotates).
fn lib_layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! ")) {
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        let mut plain = String::new();
        let mut depth = 0usize;
        for c in rest.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        for name in plain.split('`').skip(1).step_by(2) {
            layers.insert(name.to_string(), layer);
        }
    }
    layers
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
        let text = read(&file);
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib = read(&src.join("lib.rs"));
    let modules: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or(l.strip_prefix("pub(crate) mod "))
        })
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    let graph = readme_graph(root);
    let listed: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(
        listed, modules,
        "the README's import graph lists other modules than src/lib.rs"
    );

    let mut wrong = Vec::new();
    for (module, node) in &graph {
        let used = imports(&src, module);
        if used != node.imports {
            wrong.push(format!(
                "the README says {module} -> {:?}, the sources import {used:?}",
                node.imports
            ));
        }
        for import in &used {
            match graph.get(import) {
                Some(below) if below.layer < node.layer => {}
                Some(_) => wrong.push(format!("{module} -> {import} points up or sideways")),
                None => wrong.push(format!("{module} -> {import}: no such module")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    let readme_layers: BTreeMap<String, usize> =
        graph.iter().map(|(m, n)| (m.clone(), n.layer)).collect();
    assert_eq!(
        lib_layers(&lib),
        readme_layers,
        "src/lib.rs's numbered layers are not the README's"
    );
}
