//! The layers import downward only (README.md, "How a request flows"): every `crate::…`
//! path in a layer's files names that layer or one below it. A new upward import fails
//! here, naming the file and the line.

use std::path::{Path, PathBuf};

/// Each layer, its files under `server/src`, and the layers it may import besides itself.
const LAYERS: &[(&str, &str, &[&str])] = &[
    ("runtime", "runtime", &[]),
    ("units", "units.rs", &[]),
    ("metrics", "metrics.rs", &[]),
    ("http", "http", &[]),
    ("store", "store", &["metrics", "runtime", "units"]),
    ("limits", "limits", &["http", "store", "units"]),
    ("config", "config", &["http", "limits", "store", "units"]),
    ("api", "api", &["config", "http", "limits", "metrics", "store", "units"]),
    (
        "engine",
        "engine",
        &[
            "api", "config", "http", "limits", "metrics", "runtime", "store", "units",
        ],
    ),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        rust_files(&entry.unwrap().path(), out);
    }
}

/// The first segment of every `crate::segment` path in `text`, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let segment: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push((number + 1, segment));
        }
    }
    found
}

#[test]
fn every_layer_imports_only_itself_and_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    for (layer, place, allowed) in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(place), &mut files);
        assert!(!files.is_empty(), "{place} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, segment) in crate_paths(&text) {
                if segment != *layer && !allowed.contains(&segment.as_str()) {
                    upward.push(format!("{}:{line}: {layer} imports {segment}", file.display()));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_belongs_to_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines().filter(|l| l.starts_with("pub mod ")) {
        let module = line.trim_start_matches("pub mod ").trim_end_matches(';');
        assert!(
            LAYERS.iter().any(|(layer, _, _)| *layer == module),
            "{module} is in no layer of this test"
        );
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    let text = "use crate::store::Sql;\n// crate::engine in a comment\nlet x = crate::engine::shard::now_ms();";
    assert_eq!(
        crate_paths(text),
        vec![(1, "store".to_string()), (3, "engine".to_string())]
    );
}
