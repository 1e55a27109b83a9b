//! The server's module graph, read from the sources: no cycle between files, none between the
//! folders at any level, and the layering `http → engine → model` with `preprocess`, `metrics`
//! and `config` standing alone. An edge is any path a file names (`crate::…`, `super::…`,
//! `self::…`, or a child module's name), resolved to the deepest module file it reaches, so a
//! re-export in a `mod.rs` counts as much as a `use` in a leaf.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("" = the crate root, "model::cpu::winograd") → its file's source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                match name.as_str() {
                    "mod" => {}
                    "lib" if prefix.is_empty() => {}
                    "main" if prefix.is_empty() => continue, // the binary: not the library's graph
                    _ => p.push(name),
                }
                out.insert(p.join("::"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

fn segments(module: &str) -> Vec<String> {
    if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(str::to_owned).collect()
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The path that starts at `s[i]` (after `prefix::`), `{a, b::{c}}` groups expanded into `out`;
/// returns where it ends.
fn parse_paths(s: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == '{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return i + 1;
                }
                i = parse_paths(s, i, path.clone(), out);
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i > start {
            path.push(s[start..i].iter().collect());
        }
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// The modules `module`'s source refers to (itself excluded).
fn references(module: &str, source: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let here = segments(module);
    let children: BTreeSet<String> = known
        .iter()
        .filter_map(|k| {
            let k = segments(k);
            (k.len() == here.len() + 1 && k.starts_with(&here)).then(|| k[here.len()].clone())
        })
        .collect();
    // Inline modules (`mod tests {`, `mod x86 {`) add a level that `super` climbs first. Code is
    // rustfmt-formatted: such a module ends at the first `}` line at the `mod` line's indent.
    let mut s: Vec<char> = Vec::new();
    let mut depth: Vec<usize> = Vec::new();
    let mut open: Vec<String> = Vec::new(); // closing lines of the inline modules we are in
    for line in source.lines() {
        let t = line.trim_start();
        if open.last().is_some_and(|close| line == close) {
            open.pop();
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        let inline_mod = matches!(
            words.as_slice(),
            ["mod", _, "{"] | ["pub", "mod", _, "{"] | ["pub(crate)", "mod", _, "{"]
        );
        if inline_mod {
            open.push(format!("{}}}", &line[..line.len() - t.len()]));
            continue;
        }
        s.extend(line.chars().chain(std::iter::once('\n')));
        depth.resize(s.len(), open.len());
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == ':' || s[i - 1] == '$');
        if boundary && is_ident(s[i]) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let is_path = s.get(i) == Some(&':') && s.get(i + 1) == Some(&':');
            let inline = depth[start];
            let mut base = match word.as_str() {
                _ if !is_path => continue,
                "crate" => vec![],
                "self" => here.clone(),
                "super" => here.clone(),
                w if inline == 0 && children.contains(w) => {
                    [here.clone(), vec![w.to_owned()]].concat()
                }
                _ => continue,
            };
            i += 2;
            if word == "super" {
                // Each `super` leaves an inline module first, then the file's own module.
                let mut supers = 1;
                while s[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                    supers += 1;
                    i += 7;
                }
                for _ in inline..supers {
                    base.pop();
                }
            }
            let mut paths = Vec::new();
            i = parse_paths(&s, i, base, &mut paths);
            found.extend(paths);
        } else {
            i += 1;
        }
    }
    found
        .into_iter()
        .filter_map(|p| {
            (0..=p.len())
                .rev()
                .map(|n| p[..n].join("::"))
                .find(|m| known.contains(m))
        })
        .filter(|m| m != module)
        .collect()
}

/// A cycle in `edges`, if there is one, as the nodes along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut state, &mut Vec::new()))
}

/// File edges of the crate under `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(m, source)| (m.clone(), references(m, source, &known)))
        .collect()
}

/// Every cycle problem: between files, then between the parts of each folder (an edge from
/// `a/x.rs` to `b/y.rs` is an edge `a → b` among the root's parts, and so on down).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(c) = find_cycle(edges) {
        problems.push(format!("files: {}", c.join(" → ")));
    }
    let depth = edges.keys().map(|k| segments(k).len()).max().unwrap_or(0);
    for level in 0..depth {
        // Folder → the graph among its parts at this level.
        let mut per_folder: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> =
            BTreeMap::new();
        for (from, tos) in edges {
            let f = segments(from);
            for to in tos {
                let t = segments(to);
                if f.len() > level
                    && t.len() > level
                    && f[..level] == t[..level]
                    && f[level] != t[level]
                {
                    per_folder
                        .entry(f[..level].to_vec())
                        .or_default()
                        .entry(f[level].clone())
                        .or_default()
                        .insert(t[level].clone());
                }
            }
        }
        for (folder, g) in per_folder {
            if let Some(c) = find_cycle(&g) {
                problems.push(format!(
                    "parts of `{}`: {}",
                    folder.join("::"),
                    c.join(" → ")
                ));
            }
        }
    }
    problems
}

#[test]
fn the_module_graph_has_no_cycles() {
    let edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(edges.len() > 20, "read only {} modules", edges.len());
    // The reader sees the edges the layout is built on.
    assert!(edges["http::server"].contains("engine"));
    assert!(edges["engine"].contains("model"));
    assert!(edges["model::cpu::network"].contains("model::cpu::winograd"));
    assert!(
        edges["model::cpu"].contains("model::cpu::network"),
        "re-exports count"
    );
    let problems = cycles(&edges);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn dependencies_point_one_way() {
    let edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let top = |m: &str| segments(m).first().cloned().unwrap_or_default();
    // Top-level part → the parts it may use.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        (
            "",
            &[
                "config",
                "engine",
                "fetch",
                "http",
                "metrics",
                "model",
                "preprocess",
                "probe",
            ][..],
        ),
        ("fetch", &["config", "model"][..]),
        (
            "http",
            &["config", "engine", "metrics", "model", "preprocess"][..],
        ),
        ("engine", &["metrics", "model"][..]),
        ("model", &["config", "preprocess"][..]),
        ("preprocess", &[][..]),
        ("metrics", &[][..]),
        ("config", &[][..]),
        ("probe", &[][..]),
    ]);
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let Some(ok) = allowed.get(top(from).as_str()) else {
            wrong.push(format!(
                "{from}: a top-level part the layering does not know"
            ));
            continue;
        };
        for to in tos {
            if top(to) != top(from) && !ok.contains(&top(to).as_str()) {
                wrong.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The checker itself finds what it is for (a cycle only between folders, a cycle through a
/// `mod.rs` re-export) and no more (comments, inline test modules).
#[test]
fn the_checker_finds_cycles() {
    let dir = std::env::temp_dir().join(format!("layout-check-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let _ = std::fs::remove_dir_all(&dir);
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "pub mod x;\npub use x::X;\n");
    write(
        "a/x.rs",
        "// crate::b::y in a comment is no edge\nuse crate::b::{self, y::Y};\n",
    );
    write("b/mod.rs", "pub mod y;\npub use y::Y;\n");
    // `super` in an inline module is the file's own module: no edge back to b.
    write(
        "b/y.rs",
        "pub struct Y;\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    assert!(cycles(&graph(&dir)).is_empty(), "{:?}", graph(&dir));
    // Folders only: a/x → b/y and b/y → a (the mod.rs); no two files import each other.
    write("b/y.rs", "use super::super::a::X;\n");
    let found = cycles(&graph(&dir));
    assert!(
        found.iter().any(|p| p.starts_with("parts of ``: ")),
        "{found:?}"
    );
    // A child that imports its parent, which re-exports the child.
    write("b/y.rs", "pub struct Y;\n");
    write("a/x.rs", "use super::Z;\npub struct X;\n");
    write("a/mod.rs", "pub mod x;\npub use x::X;\npub struct Z;\n");
    let found = cycles(&graph(&dir));
    assert!(found.iter().any(|p| p.starts_with("files: ")), "{found:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
