//! No two modules of one parent use each other, directly or around a loop: the top-level modules
//! of `src/`, and the modules inside each of them (`service/clients` → `startup` →
//! `store_retry` → `input` → `clients` was one such loop). A cycle means a module has no single
//! job; an item moved only to keep a file short is the usual cause.
//!
//! Paths are read from the source text: `crate::…`, `super::…` and `self::…`, `use` groups
//! included; comments and test modules are skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Sibling → siblings it uses, for every parent module (the crate root is `[]`).
type Graphs = BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn no_module_uses_its_siblings_in_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = sibling_graphs(&src);
    assert!(graphs.get(&vec!["service".to_string()]).is_some_and(|g| g.len() > 5), "the reader found the service's modules: {graphs:?}");
    let cycles: Vec<String> = graphs.iter().filter_map(|(parent, graph)| find_cycle(graph).map(|c| format!("in `{}`: {}", display(parent), c.join(" → ")))).collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// The reader finds a loop it is shown, through `use` groups and `super::` paths.
#[test]
fn a_planted_loop_is_found() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cycles-fixture");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("edge")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod edge;\npub mod core;\n").unwrap();
    std::fs::write(dir.join("core.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(dir.join("edge/mod.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(dir.join("edge/a.rs"), "#[cfg(test)]\nmod a_tests;\nuse super::{b::B, other};\n// super::c is only a comment\n").unwrap();
    std::fs::write(dir.join("edge/b.rs"), "pub struct B;\nfn g() { super::c::h(); crate::core::f(); }\n").unwrap();
    std::fs::write(dir.join("edge/c.rs"), "pub fn h() {}\nuse crate::edge::{self, a::*};\n#[cfg(test)]\nmod tests {\n    use super::super::b::B;\n}\n").unwrap();
    let graphs = sibling_graphs(&dir);
    let cycle = find_cycle(&graphs[&vec!["edge".to_string()]]).expect("a → b → c → a is a loop");
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert!(find_cycle(&graphs[&vec![]]).is_none(), "edge → core alone is no loop");
    std::fs::write(dir.join("edge/c.rs"), "pub fn h() {}\n").unwrap();
    assert!(find_cycle(&sibling_graphs(&dir)[&vec!["edge".to_string()]]).is_none(), "without c → a there is no loop");
}

fn display(parent: &[String]) -> String {
    if parent.is_empty() {
        "crate".into()
    } else {
        parent.join("::")
    }
}

fn sibling_graphs(src: &Path) -> Graphs {
    let mut graphs = Graphs::new();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    for file in &files {
        let module = module_path(src, file);
        // Test modules (`tests.rs`, `image_tests.rs`) may reach anywhere.
        if module.is_empty() || module.last().is_some_and(|m| m.ends_with("tests")) {
            continue;
        }
        for target in referenced_paths(&without_tests_and_comments(&std::fs::read_to_string(file).unwrap()), &module) {
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (Some(from), Some(to)) = (module.get(common), target.get(common)) else { continue };
            let parent = module[..common].to_vec();
            let mut sibling = parent.clone();
            sibling.push(to.clone());
            if modules.contains(&sibling) {
                graphs.entry(parent).or_default().entry(from.clone()).or_default().insert(to.clone());
            }
        }
        // Every module appears in its parent's graph, with or without edges.
        let parent = module[..module.len() - 1].to_vec();
        graphs.entry(parent).or_default().entry(module.last().unwrap().clone()).or_default();
    }
    graphs
}

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

/// `src/service/input.rs` → `[service, input]`; `src/o2u/mod.rs` → `[o2u]`; `src/lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_string());
    }
    parts
}

/// The text before a file's test module, without line comments (doc links are not uses).
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        // An inline test module ends what the file's own code uses (`mod tests;` is a file of its
        // own, skipped as a module).
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{')) {
            break;
        }
        let code = line.find("//").map_or(line, |i| &line[..i]);
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module path the text names through `crate::`, `super::` or `self::`, resolved against
/// `module` and with `use` groups expanded (`super::{a::X, b}` names `a::X` and `b`).
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let word_start = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':' || chars[i - 1] == '$');
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        let base = if !word_start {
            None
        } else if rest.starts_with("crate::") {
            i += 7;
            Some(Vec::new())
        } else if rest.starts_with("super::") || rest.starts_with("self::") {
            // `module` is the file's own module (`[edge]` for `edge/mod.rs`): `super` is its parent.
            let mut base = module.to_vec();
            while chars[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                base.pop();
                i += 7;
            }
            if chars[i..].starts_with(&['s', 'e', 'l', 'f', ':', ':']) {
                i += 6;
            }
            Some(base)
        } else {
            None
        };
        match base {
            Some(base) => i = use_tree(&chars, i, base, &mut out),
            None => i += 1,
        }
    }
    out
}

/// Reads one use tree at `i` (`a::b`, `a::{b, c::d}`, `a::*`) under `prefix`; returns the index
/// after it.
fn use_tree(chars: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    return i + 1;
                }
                let next = use_tree(chars, i, path.clone(), out);
                // Something this reader does not know (a comment, a raw identifier): step over it
                // rather than read the same place forever.
                i = next.max(i + 1);
            }
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if start == i {
            // `*` or the end of the path.
            if i < chars.len() && chars[i] == '*' {
                i += 1;
            }
            out.push(path);
            return i;
        }
        let ident: String = chars[start..i].iter().collect();
        if ident != "self" {
            path.push(ident);
        }
        if chars[i..].starts_with(&[':', ':']) {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// A loop in `graph`, as the modules around it with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(node: &str, graph: &BTreeMap<String, BTreeSet<String>>, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let from = path.iter().position(|p| p == next).unwrap();
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}
