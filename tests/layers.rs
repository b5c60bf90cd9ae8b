//! Guards the crate's layering. `src/lib.rs` declares the top-level modules in layer order,
//! lowest first, and that order is the single source of truth: a module may import only the
//! modules declared above it (the binary, `src/main.rs`, sits above them all). Also fails on a
//! module missing from that order, and on an import cycle between the files of one folder
//! (a parent module and its own child excepted). Reads source text only; it links nothing.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A source file: its path from the crate root (`src/alerts/notify.rs`) and its text.
type File = (String, String);

/// Paths from the crate root, each with the line it is named on.
type Refs = Vec<(Vec<String>, usize)>;

#[derive(Clone)]
struct Tok {
    text: String,
    line: usize,
}

/// Tokens of `text` with comments, strings and char literals left out: a doc link to
/// [`crate::x`] or a message naming `crate::x` is not an import.
fn tokens(text: &str) -> Vec<Tok> {
    let s: Vec<char> = text.chars().collect();
    let at = |k: usize| s.get(k).copied().unwrap_or('\0');
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < s.len() {
        let start = i;
        // A raw string (r"..", r#".."#, br".."), unless the `r` is inside an identifier.
        let r = i + usize::from(matches!(s[i], 'b' | 'c') && at(i + 1) == 'r');
        let hashes = s[r + 1..].iter().take_while(|&&c| c == '#').count();
        let raw = at(r) == 'r' && at(r + 1 + hashes) == '"' && (i == 0 || !ident(s[i - 1]));
        if s[i] == '/' && at(i + 1) == '/' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if s[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0; // block comments nest
            while i < s.len() {
                let pair = (s[i], at(i + 1));
                i += if pair == ('/', '*') || pair == ('*', '/') { 2 } else { 1 };
                depth += i32::from(pair == ('/', '*')) - i32::from(pair == ('*', '/'));
                if depth == 0 {
                    break;
                }
            }
        } else if raw {
            i = r + hashes + 2;
            while i < s.len() && !(s[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                i += 1;
            }
            i += hashes + 1;
        } else if s[i] == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if s[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char ('x', '\n', '\'', '\u{e9}'); a lifetime or label ('a, 'outer) is a token.
            i += if at(i + 1) == '\\' { 4 } else { 3 };
            while i < s.len() && at(i - 1) != '\'' {
                i += 1;
            }
        } else if ident(s[i]) {
            while i < s.len() && ident(s[i]) {
                i += 1;
            }
            out.push(Tok { text: s[start..i].iter().collect(), line });
        } else {
            i += if s[i] == ':' && at(i + 1) == ':' { 2 } else { 1 };
            if !s[start].is_whitespace() {
                out.push(Tok { text: s[start..i].iter().collect(), line });
            }
        }
        line += s[start..i.min(s.len())].iter().filter(|&&c| c == '\n').count();
    }
    out
}

fn is(toks: &[Tok], i: usize, text: &str) -> bool {
    toks.get(i).is_some_and(|t| t.text == text)
}

/// Drops each item under `#[cfg(test)]`, through its `;` or its matched `{ }`. Returns the
/// rest and the names of the test modules declared as files (`#[cfg(test)] mod tests;`).
fn without_tests(toks: &[Tok]) -> (Vec<Tok>, Vec<String>) {
    let (mut kept, mut test_mods, mut i) = (Vec::new(), Vec::new(), 0);
    while i < toks.len() {
        if !["#", "[", "cfg", "(", "test", ")", "]"].iter().enumerate().all(|(k, t)| is(toks, i + k, t)) {
            kept.push(toks[i].clone());
            i += 1;
            continue;
        }
        let (mut depth, mut braces) = (0, 0);
        i += 7;
        while i < toks.len() {
            match toks[i].text.as_str() {
                "(" | "[" => depth += 1,
                ")" | "]" => depth -= 1,
                "{" => braces += 1,
                "}" => braces -= 1,
                _ => {}
            }
            let end = braces == 0 && depth == 0 && (is(toks, i, ";") || is(toks, i, "}"));
            i += 1;
            if end {
                break;
            }
        }
        if is(toks, i - 1, ";") && is(toks, i.wrapping_sub(3), "mod") {
            test_mods.push(toks[i - 2].text.clone());
        }
    }
    (kept, test_mods)
}

/// Appends the paths of the use tree (or plain path) at `toks[i..]` below `prefix`:
/// `{a::X, b::{self, Y}}` gives `a::X`, `b` and `b::Y`, each with the line naming its top-level
/// module (or `line`, that of `super`/`self`). Returns the index after it.
fn use_tree(toks: &[Tok], mut i: usize, mut prefix: Vec<String>, mut line: usize, out: &mut Refs) -> usize {
    while let Some(tok) = toks.get(i) {
        if tok.text == "{" {
            i += 1;
            while i < toks.len() && !is(toks, i, "}") {
                i = use_tree(toks, i, prefix.clone(), line, out);
                while i < toks.len() && !is(toks, i, ",") && !is(toks, i, "}") {
                    i += 1; // `as Name`
                }
                i += usize::from(is(toks, i, ","));
            }
            return i + 1;
        }
        if tok.text == "self" || !tok.text.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            break; // `self` in a group, a glob `*`, or `::<T>` after a path
        }
        if prefix.is_empty() {
            line = tok.line;
        }
        prefix.push(tok.text.clone());
        i += 1;
        if !is(toks, i, "::") {
            break;
        }
        i += 1;
    }
    out.push((prefix, line));
    i
}

/// Each path the file names from the crate root, resolved against the file's module path
/// (`crate::a`, `super::super::a`, `self::a`; in the binary `enawatch::a`), with its line.
fn references(toks: &[Tok], module: &[String], binary: bool) -> Refs {
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if !is(toks, i + 1, "::") || (i > 0 && is(toks, i - 1, "::")) {
            continue;
        }
        let (mut base, mut j) = (module.to_vec(), i + 2);
        match toks[i].text.as_str() {
            "crate" if !binary => base.clear(),
            "enawatch" if binary => base.clear(),
            "self" => {}
            "super" => {
                base.pop();
                while is(toks, j, "super") && is(toks, j + 1, "::") {
                    base.pop();
                    j += 2;
                }
            }
            _ => continue,
        }
        use_tree(toks, j, base, toks[i].line, &mut out);
    }
    out
}

/// Every layering problem in `files` (which must include `src/lib.rs`), one message each.
fn check(files: &[File]) -> Vec<String> {
    let mut errors = Vec::new();
    let lib = files.iter().find(|(path, _)| path == "src/lib.rs").map_or("", |(_, text)| text);
    let lib = without_tests(&tokens(lib)).0;
    let layers: Vec<&str> = (0..lib.len().saturating_sub(2))
        .filter(|&i| lib[i].text == "mod" && is(&lib, i + 2, ";"))
        .map(|i| lib[i + 1].text.as_str())
        .collect();
    if layers.is_empty() {
        errors.push("src/lib.rs declares no modules".to_owned());
    }
    let layer = |name: &str| layers.iter().position(|&l| l == name);

    // Test code, inline or in its own file, may import anything: drop it first.
    let (mut scanned, mut test_files) = (Vec::new(), Vec::new());
    for (path, text) in files {
        let (toks, test_mods) = without_tests(&tokens(text));
        // `a/mod.rs` declares `a/tests.rs`; `a/dns.rs` declares `a/dns/tests.rs`.
        let dir = match path.rsplit_once('/') {
            Some((dir, "mod.rs" | "lib.rs" | "main.rs")) => dir.to_owned(),
            _ => path.trim_end_matches(".rs").to_owned(),
        };
        test_files.extend(test_mods.iter().flat_map(|m| [format!("{dir}/{m}.rs"), format!("{dir}/{m}/")]));
        scanned.push((path, toks));
    }
    let is_test =
        |path: &str| test_files.iter().any(|t| path == t || (t.ends_with('/') && path.starts_with(t)));
    let mut files_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new(); // top -> second level
    let (mut refs, mut missing) = (Vec::new(), BTreeSet::new());
    for (path, toks) in scanned.iter().filter(|(path, _)| !is_test(path) && *path != "src/lib.rs") {
        let binary = *path == "src/main.rs";
        let rel = path.trim_start_matches("src/").trim_end_matches(".rs");
        let mut module: Vec<String> = rel.split('/').map(str::to_owned).collect();
        if binary || module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        if !binary && layer(&module[0]).is_none() {
            if missing.insert(module[0].clone()) {
                errors.push(format!(
                    "{path}: module {} is not declared in src/lib.rs, so it has no layer",
                    module[0]
                ));
            }
            continue;
        }
        if module.len() > 1 {
            files_of.entry(module[0].clone()).or_default().insert(module[1].clone());
        }
        refs.push((path, module.clone(), references(toks, &module, binary)));
    }

    // Layers: no edge may point to a module declared later in lib.rs.
    let mut edges = Graph::new();
    let sibling = |m: &[String]| m.len() > 1 && files_of[&m[0]].contains(&m[1]);
    for (path, module, paths) in &refs {
        let (from, from_layer) =
            module.first().map_or(("main", layers.len()), |m| (m.as_str(), layer(m).unwrap()));
        for (target, line) in paths {
            let Some(to_layer) = target.first().and_then(|t| layer(t)) else { continue };
            if to_layer > from_layer {
                errors.push(format!(
                    "{path}:{line}: {from} (layer {}) imports {} (layer {}), a higher layer",
                    from_layer + 1,
                    target[0],
                    to_layer + 1,
                ));
            }
            // Siblings: a file of folder `a` naming another file of `a` (not `a/mod.rs`).
            if target[0] == from && sibling(module) && sibling(target) && target[1] != module[1] {
                let to = edges.entry([from, &module[1]]).or_default();
                to.entry([from, &target[1]]).or_insert((path, *line));
            }
        }
    }
    // `use crate::a::{self, X}` names `a` twice on one line: one message is enough.
    errors.dedup();

    // Depth-first search over the sibling files; an edge back onto the stack closes a cycle.
    let (mut done, mut stack) = (BTreeSet::new(), Vec::new());
    for &node in edges.keys() {
        cycles(node, &edges, &mut stack, &mut done, &mut errors);
    }
    errors
}

type Graph<'a> = BTreeMap<[&'a str; 2], BTreeMap<[&'a str; 2], (&'a str, usize)>>;

fn cycles<'a>(
    node: [&'a str; 2],
    edges: &Graph<'a>,
    stack: &mut Vec<[&'a str; 2]>,
    done: &mut BTreeSet<[&'a str; 2]>,
    errors: &mut Vec<String>,
) {
    if done.contains(&node) {
        return;
    }
    if let Some(start) = stack.iter().position(|&n| n == node) {
        let ring: Vec<_> = stack[start..].iter().chain([&node]).collect();
        let sites: Vec<_> = ring.windows(2).map(|w| edges[w[0]][w[1]]).collect();
        let list: Vec<_> = sites.iter().map(|(path, line)| format!("{path}:{line}")).collect();
        errors.push(format!("import cycle between sibling files: {} -> {}", list.join(" -> "), sites[0].0));
        return;
    }
    stack.push(node);
    for &next in edges.get(&node).into_iter().flat_map(BTreeMap::keys) {
        cycles(next, edges, stack, done, errors);
    }
    stack.pop();
    done.insert(node);
}

fn read_tree(dir: &Path, root: &Path, files: &mut Vec<File>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().components();
            let rel: Vec<_> = rel.map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push((rel.join("/"), std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn modules_import_only_the_layers_declared_above_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    read_tree(&root.join("src"), root, &mut files);
    files.sort();
    let errors = check(&files);
    assert!(
        errors.is_empty(),
        "{} layering problem(s); the layer order is src/lib.rs's `mod` order, lowest first:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

fn fake(files: &[(&str, &str)]) -> Vec<String> {
    check(&files.iter().map(|&(path, text)| (path.to_owned(), text.to_owned())).collect::<Vec<_>>())
}

#[test]
fn the_checker_sees_an_upward_import_and_nothing_in_comments_strings_or_tests() {
    let lib =
        "//! pub mod fake;\npub mod base;\npub mod history;\n#[expect(unsafe_code)]\npub mod sampler;\n";
    let base = "//! The floor; [`crate::sampler`] is only a link.\nuse crate::{\n    base::time,\n    \
                sampler::{self, Sampler},\n};\n";
    let history = "// crate::sampler\n/* crate::sampler /* nested */ crate::sampler */\n\
                   const S: &str = \"crate::sampler \\\" crate::sampler\";\n\
                   const R: &str = r#\"crate::sampler \"quoted\" \"#;\nconst Q: char = '\"';\n\
                   fn f<'a>(x: &'a str) -> &'a str { x }\nuse crate::base::{self, Y};\n\
                   #[cfg(test)]\nmod tests {\n    use crate::sampler::X;\n}\n#[cfg(test)]\nmod more;\n";
    let errors = fake(&[
        ("src/lib.rs", lib),
        ("src/main.rs", "use enawatch::sampler::Sampler;\n"),
        ("src/base/mod.rs", base),
        ("src/history/mod.rs", history),
        ("src/history/more.rs", "use crate::sampler::Z;\n"),
        ("src/sampler/mod.rs", "use crate::{base, history::Snapshot};\n"),
    ]);
    assert_eq!(errors, ["src/base/mod.rs:4: base (layer 1) imports sampler (layer 3), a higher layer"]);
    let errors = fake(&[("src/lib.rs", lib), ("src/orphan.rs", "")]);
    assert_eq!(errors, ["src/orphan.rs: module orphan is not declared in src/lib.rs, so it has no layer"]);
}

#[test]
fn the_checker_sees_a_cycle_between_sibling_files() {
    let errors = fake(&[
        ("src/lib.rs", "pub mod base;\npub mod remote_write;\n"),
        ("src/remote_write/mod.rs", "mod queue;\nmod spool;\nuse self::queue::Queue;\n"),
        ("src/remote_write/proto.rs", "use super::queue::Queue;\n"),
        ("src/remote_write/queue.rs", "use super::Shared;\nuse super::spool::Spool;\n"),
        (
            "src/remote_write/spool.rs",
            "pub(in crate::remote_write) fn f() {}\nuse crate::remote_write::queue;\n",
        ),
    ]);
    let cycle = "src/remote_write/queue.rs:2 -> src/remote_write/spool.rs:2 -> src/remote_write/queue.rs";
    assert_eq!(errors, [format!("import cycle between sibling files: {cycle}")]);
}
