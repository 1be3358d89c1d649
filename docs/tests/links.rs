//! Every relative link in the repository's Markdown resolves: the file (or
//! directory) exists, and a `#fragment` names a heading of the target page.
//! Links to this repository on GitHub (`https://github.com/saga-rs/saga-rs/blob/main/..`,
//! as the crate READMEs use so that they work on crates.io) are checked the
//! same way. Also: every page in `docs/` is compiled by this crate and listed
//! in the index, `docs/README.md`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Links to the repository as the crate READMEs write them.
const REPOSITORY: &str = "https://github.com/saga-rs/saga-rs/";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("docs/ has a parent")
        .to_path_buf()
}

/// The Markdown files whose links are checked, relative to the root.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![PathBuf::from("README.md"), PathBuf::from("CHANGELOG.md")];
    for krate in ["saga-core", "saga-postgres", "saga-rabbitmq", "saga-sqlite"] {
        pages.push(Path::new(krate).join("README.md"));
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read docs/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path.strip_prefix(&root).expect("under root").to_path_buf());
            }
        }
    }
    pages.sort();
    pages
}

/// Markdown without fenced code blocks and code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match fence {
            Some(marker) => {
                if trimmed.starts_with(marker) {
                    fence = None;
                }
                out.push('\n');
                continue;
            }
            None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                fence = Some(&trimmed[..3]);
                out.push('\n');
                continue;
            }
            None => {}
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Link targets: inline `[text](target)` / `![alt](target)` and reference
/// definitions `[label]: target`, each with its line number.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose(markdown).lines().enumerate() {
        let number = number + 1;
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((_, target)) = trimmed.split_once("]: ")
            && !trimmed.starts_with("[!")
        {
            found.push((number, first_word(target)));
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = closing_paren(after) else {
                break;
            };
            found.push((number, first_word(&after[..end])));
            rest = &after[end..];
        }
    }
    found
}

/// The index of the `)` closing a link target (targets may hold balanced parentheses).
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The target without an optional `"title"` and without `<..>`.
fn first_word(target: &str) -> String {
    let target = target.trim();
    let target = target
        .strip_prefix('<')
        .and_then(|t| t.split_once('>'))
        .map_or_else(
            || target.split_whitespace().next().unwrap_or(""),
            |(t, _)| t,
        );
    target.to_owned()
}

/// GitHub's anchors for the headings of a Markdown page.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let base = slug(text);
        let mut anchor = base.clone();
        let mut n = 1;
        while !seen.insert(anchor.clone()) {
            anchor = format!("{base}-{n}");
            n += 1;
        }
    }
    seen
}

/// GitHub's slug of a heading: link texts kept, formatting dropped,
/// lower case, punctuation removed, spaces to hyphens.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](target)` -> `text`
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.split_once("](") {
            Some((label, tail)) => {
                text.push_str(label);
                rest = closing_paren(tail).map_or("", |end| &tail[end + 1..]);
            }
            None => {
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Joins `link` to the directory `from` and normalizes `..`; `None` when it
/// climbs out of the repository.
fn resolve(from: &Path, link: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    let joined = if let Some(absolute) = link.strip_prefix('/') {
        PathBuf::from(absolute)
    } else {
        from.join(link)
    };
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => path.push(other),
        }
    }
    Some(path)
}

/// Percent-decoding of the few escapes paths use.
fn decode(path: &str) -> String {
    path.replace("%20", " ")
}

/// Every broken link of `page` (relative to the root), one line each.
fn broken(page: &Path) -> Vec<String> {
    let root = root();
    let markdown = fs::read_to_string(root.join(page)).expect("read page");
    let dir = page.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (line, target) in links(&markdown) {
        let here = format!("{}:{line}: `{target}`", page.display());
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let resolved = if let Some(in_repo) = path.strip_prefix(REPOSITORY) {
            // blob/<branch>/<path> or tree/<branch>/<path>
            let mut parts = in_repo.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("blob" | "tree"), Some(_branch), Some(rest)) => Some(PathBuf::from(rest)),
                (Some("blob" | "tree"), Some(_branch), None) => Some(PathBuf::new()),
                _ if in_repo.is_empty() => Some(PathBuf::new()),
                _ => {
                    problems.push(format!("{here}: not a blob/ or tree/ link"));
                    continue;
                }
            }
        } else if path.contains("://") || path.starts_with("mailto:") {
            continue;
        } else if path.is_empty() {
            Some(page.to_path_buf())
        } else {
            resolve(dir, &decode(path))
        };
        let Some(resolved) = resolved else {
            problems.push(format!("{here}: leaves the repository"));
            continue;
        };
        let full = root.join(&resolved);
        if !full.exists() {
            problems.push(format!("{here}: {} does not exist", resolved.display()));
            continue;
        }
        if let Some(fragment) = fragment.filter(|f| !f.is_empty())
            && full.extension().is_some_and(|e| e == "md")
        {
            let target_page = fs::read_to_string(&full).expect("read target");
            if !anchors(&target_page).contains(&fragment.to_lowercase()) {
                problems.push(format!(
                    "{here}: {} has no heading for `#{fragment}`",
                    resolved.display()
                ));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_resolves() {
    let pages = pages();
    assert!(pages.len() > 10, "found the pages: {pages:?}");
    let problems: Vec<String> = pages.iter().flat_map(|page| broken(page)).collect();
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_guide_is_compiled_and_indexed() {
    let root = root();
    let compiled = fs::read_to_string(root.join("docs/src/lib.rs")).expect("read lib.rs");
    let index = fs::read_to_string(root.join("docs/README.md")).expect("read the index");
    let mut problems = Vec::new();
    for page in pages() {
        let Ok(in_docs) = page.strip_prefix("docs") else {
            continue;
        };
        // Benchmark reports are tool output, not guides.
        if in_docs.starts_with("benchmarks/reports") {
            continue;
        }
        let name = in_docs.display().to_string();
        if !compiled.contains(&format!("\"../{name}\"")) {
            problems.push(format!(
                "docs/{name} is not compiled by docs/src/lib.rs (`guide!`)"
            ));
        }
        if name != "README.md" && !index.contains(&format!("]({name}")) {
            problems.push(format!("docs/{name} is not linked from docs/README.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_links_anchors_and_code() {
    let page = "# Title\n## A `code` heading: yes!\n[a](x.md#title) ![b](img.svg \"t\")\n\
                `[not](a-link.md)`\n```rust\n[not](either.md)\n```\n[ref]: y.md\n";
    let found: Vec<String> = links(page).into_iter().map(|(_, t)| t).collect();
    assert_eq!(found, ["x.md#title", "img.svg", "y.md"]);
    let anchors = anchors(page);
    assert!(
        anchors.contains("title") && anchors.contains("a-code-heading-yes"),
        "{anchors:?}"
    );
    assert_eq!(
        resolve(Path::new("docs"), "../README.md"),
        Some(PathBuf::from("README.md"))
    );
    assert_eq!(resolve(Path::new(""), "../x"), None);
}
