//! The README's generated sections equal what the binary generates (one source of truth).
//! After an intended change: `ENAWATCH_UPDATE_GOLDEN=1 cargo test --test offline docs::`.

use std::path::Path;

use enawatch::generate::readme::{config_reference, metrics_table};

fn section(text: &str, name: &str) -> (usize, usize) {
    let begin =
        text.find(&format!("<!-- {name}:begin")).unwrap_or_else(|| panic!("README lacks {name}:begin"));
    let start = begin + text[begin..].find("-->\n").expect("marker ends") + 4;
    let end = text.find(&format!("<!-- {name}:end -->")).unwrap_or_else(|| panic!("README lacks {name}:end"));
    (start, end)
}

#[test]
fn readme_tables_are_generated() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let mut readme = std::fs::read_to_string(&path).unwrap();
    let mut stale = Vec::new();
    for (name, generated) in [("metrics", metrics_table()), ("config", config_reference())] {
        let (start, end) = section(&readme, name);
        if readme[start..end] != generated {
            stale.push(name);
            readme.replace_range(start..end, &generated);
        }
    }
    if std::env::var_os("ENAWATCH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, readme).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "README sections {stale:?} are stale: run ENAWATCH_UPDATE_GOLDEN=1 cargo test --test offline docs::"
    );
}
