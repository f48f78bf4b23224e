//! `cargo xtask layers`: the host crates read top-down. Each file is a node; a file that
//! names another crate module (`crate::a::b`, `super::c`, in a `use` or inline) points at it.
//! Fails on an import circle (naming the files in it) and on a controller function longer
//! than [`MAX_FN_LINES`] lines. Runs as a gate of `cargo xtask test`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::util;

/// The crates whose modules must not import in a circle.
const CRATES: [&str; 3] = ["hairpin-ctl", "hairpin-common", "hairpin-bench"];
/// The crate whose functions must stay short, and how short.
const SHORT_FNS: &str = "hairpin-ctl";
pub const MAX_FN_LINES: usize = 60;

pub fn run() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for krate in CRATES {
        let src = util::root().join(krate).join("src");
        let files = modules(&src)?;
        let graph = imports(&files);
        let circles = cycles(&graph);
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        println!("{krate}: {} modules, {edges} imports between them, {} import circles", graph.len(), circles.len());
        for cycle in circles {
            problems.push(format!("{krate}: import circle among: {}", cycle.join(", ")));
        }
        if krate == SHORT_FNS {
            for (module, text) in &files {
                for (name, lines) in long_fns(text) {
                    problems.push(format!("{krate}: {module}: fn {name} is {lines} lines (at most {MAX_FN_LINES})"));
                }
            }
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} layering problems", problems.len());
    }
    Ok(())
}

/// Every module file under `src`, by module path (`cmd::up`; the crate root is `crate`).
fn modules(src: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            if path.is_dir() {
                // `src/bin/` holds binaries of their own, not modules of the library.
                if path.file_name() != Some("bin".as_ref()) {
                    stack.push(path);
                }
            } else if path.extension() == Some("rs".as_ref()) {
                let text = fs::read_to_string(&path)?;
                out.insert(module_path(src, &path), text);
            }
        }
    }
    Ok(out)
}

fn module_path(src: &Path, file: &Path) -> String {
    let rel: PathBuf = file.strip_prefix(src).expect("under src").with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    if parts.is_empty() { "crate".into() } else { parts.join("::") }
}

/// Module -> the modules it names.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let items = items(files);
    files
        .iter()
        .map(|(module, text)| {
            let mut to = BTreeSet::new();
            for path in paths(text) {
                let Some(mut full) = absolute(module, &path) else { continue };
                // An item re-exported at the crate root (`crate::FlowKey`) is its module's.
                if let Some(home) = full.first().and_then(|name| items.get(name.as_str())) {
                    full.splice(0..1, home.split("::").map(String::from).chain([full[0].clone()]));
                }
                // The longest prefix that is a module file: `gateway::plan::Plan` is `gateway::plan`.
                let target = (1..=full.len()).rev().map(|n| full[..n].join("::")).find(|m| known.contains(m.as_str()));
                if let Some(t) = target
                    && t != *module
                    && !is_ancestor(&t, module)
                {
                    to.insert(t);
                }
            }
            (module.clone(), to)
        })
        .collect()
}

/// Where each item defined at a module's top level (`pub struct X`, `pub fn x`, ...) lives, for
/// the paths that name it through a re-export at the crate root. A name defined twice is left
/// out (ambiguous).
fn items(files: &BTreeMap<String, String>) -> BTreeMap<&str, String> {
    let mut out = BTreeMap::new();
    let mut twice = BTreeSet::new();
    for (module, text) in files.iter().filter(|(m, _)| m.as_str() != "crate") {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("pub ") else { continue };
            let rest = rest.strip_prefix("const fn ").or_else(|| rest.strip_prefix("unsafe fn ")).unwrap_or(rest);
            let Some((_, rest)) = ["struct ", "enum ", "fn ", "const ", "static ", "type ", "trait ", "union "]
                .iter()
                .find_map(|k| rest.strip_prefix(k).map(|r| (k, r)))
            else {
                continue;
            };
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let name = &rest[..end];
            if !name.is_empty() && out.insert(name, module.clone()).is_some() {
                twice.insert(name);
            }
        }
    }
    out.retain(|k, _| !twice.contains(k));
    out
}

/// A module naming its parent's items is fine only for a parent's declarations of it; a
/// parent is where its children's shared items live, so `super::X` from a child is not counted
/// as a circle with the parent's `mod child;` (declarations are not imports). Uses of a child
/// by its parent (`use child::X`) are counted.
fn is_ancestor(a: &str, module: &str) -> bool {
    a == "crate" || module.starts_with(&format!("{a}::"))
}

/// `path` (as written, `crate::`/`super::`/`self::` first) relative to nothing.
fn absolute(module: &str, path: &[String]) -> Option<Vec<String>> {
    let mut here: Vec<String> = if module == "crate" { vec![] } else { module.split("::").map(String::from).collect() };
    let mut rest = path;
    match rest.first()?.as_str() {
        "crate" => here.clear(),
        "super" => {
            while rest.first().is_some_and(|s| s == "super") {
                here.pop()?;
                rest = &rest[1..];
            }
            here.extend(rest.iter().cloned());
            return Some(here);
        }
        _ => return None,
    }
    here.extend(rest[1..].iter().cloned());
    Some(here)
}

/// Every path starting `crate::` or `super::` in the text (outside comments), with `use`
/// groups expanded: `crate::{a::{b, c}, d}` gives `crate::a::b`, `crate::a::c`, `crate::d`.
/// A `mod tests` block's `use super::*` names the file itself and is dropped by the caller.
fn paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$');
        let head = ["crate::", "super::"].into_iter().find(|h| b[i..].starts_with(h.as_bytes()));
        if let (true, Some(h)) = (word_start, head) {
            let mut prefix = vec![h.trim_end_matches("::").to_string()];
            let mut j = i + h.len();
            // `super::super::x`
            while b[j..].starts_with(b"super::") {
                prefix.push("super".into());
                j += "super::".len();
            }
            j = tree(&code, j, &mut prefix, &mut out);
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses a use tree at `i` under `prefix` into `out`; returns where it ended.
fn tree(code: &str, mut i: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = code.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let depth = prefix.len();
    loop {
        i = skip_ws(i);
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                i = tree(code, i, prefix, out);
                i = skip_ws(i);
                if i < b.len() && b[i] == b',' {
                    i += 1;
                }
            }
            prefix.truncate(depth);
            return i;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'*') {
            i += 1;
        }
        if i > start {
            prefix.push(code[start..i].to_string());
        }
        if b[i..].starts_with(b"::") {
            i += 2;
            continue;
        }
        // `self` in a group names its parent.
        if prefix.last().is_some_and(|s| s == "self" || s == "*") {
            prefix.pop();
        }
        out.push(prefix.clone());
        prefix.truncate(depth);
        return i;
    }
}

/// The circles of a graph: each strongly connected component of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t =
        T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Functions longer than [`MAX_FN_LINES`]: from the line of `fn` to its closing brace at the
/// same indentation (rustfmt's layout).
fn long_fns(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let Some(at) = ["fn ", "pub fn ", "async fn ", "pub async fn ", "pub(crate) fn ", "const fn ", "pub const fn "]
            .iter()
            .find_map(|p| t.strip_prefix(p))
        else {
            continue;
        };
        let name: String = at.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // A declaration without a body (a trait's) ends with `;`.
        let Some(end) = lines[i..].iter().position(|x| {
            let xt = x.trim_start();
            x.len() - xt.len() == indent && (xt.starts_with('}') || (xt.ends_with(';') && !xt.contains('{')))
        }) else {
            continue;
        };
        if end + 1 > MAX_FN_LINES && lines[i + end].trim_start().starts_with('}') {
            out.push((name, end + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter().map(|(m, t)| (m.to_string(), t.to_string())).collect()
    }

    #[test]
    fn use_groups_expand_to_paths() {
        let p =
            paths("use crate::{a::{b, c::D}, d}; let x = crate::e::f(); // crate::g\n$crate::h\nuse super::super::i;");
        let s: Vec<String> = p.iter().map(|v| v.join("::")).collect();
        assert_eq!(s, ["crate::a::b", "crate::a::c::D", "crate::d", "crate::e::f", "super::super::i"]);
    }

    #[test]
    fn circles_are_found_through_any_path_form() {
        let g = imports(&files(&[
            ("crate", "pub mod cli; pub mod cmd; pub mod spec;"),
            ("cli", "use crate::cmd::up::UpArgs;"),
            ("cmd", "pub mod up;"),
            ("cmd::up", "use crate::spec::Spec;"),
            ("spec", "use crate::{cli::Proto};"),
        ]));
        assert_eq!(cycles(&g), [vec!["cli".to_string(), "cmd::up".into(), "spec".into()]]);
        let g = imports(&files(&[
            ("cli", "use crate::spec::Proto;"),
            ("cmd", "pub mod up;"),
            ("cmd::up", "use super::super::spec::Spec; mod tests { use super::*; }"),
            ("spec", ""),
        ]));
        assert!(cycles(&g).is_empty(), "{g:?}");
        assert!(g["cmd::up"].contains("spec"));
        // Through a re-export at the crate root.
        let g = imports(&files(&[
            ("crate", "pub use types::*;"),
            ("types", "pub struct Config;\nunsafe impl Pod for crate::cache::Slot {}"),
            ("cache", "pub struct Slot;\nuse crate::Config;"),
        ]));
        assert_eq!(cycles(&g), [vec!["cache".to_string(), "types".into()]]);
    }

    #[test]
    fn long_functions_are_counted_to_their_closing_brace() {
        let body = "    x();\n".repeat(MAX_FN_LINES);
        let text = format!("fn short() {{\n}}\n\npub fn long(a: u8) {{\n{body}}}\n");
        assert_eq!(long_fns(&text), [("long".to_string(), MAX_FN_LINES + 2)]);
    }
}
