//! Stamps the binary with the source revision for `enawatch_build_info`.

use std::process::Command;

fn main() {
    // An explicit revision wins (release builds, the Dockerfile, source tarballs).
    let revision = std::env::var("ENAWATCH_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=ENAWATCH_REVISION={}", revision.as_deref().unwrap_or("unknown"));
    println!("cargo:rerun-if-env-changed=ENAWATCH_REVISION");
    // Rebuild when HEAD moves (a checkout, or a commit on the branch it names), not on
    // every file change.
    let head = std::fs::read_to_string(".git/HEAD").unwrap_or_default();
    let branch = head.strip_prefix("ref: ").map(|r| format!(".git/{}", r.trim()));
    for path in
        [Some(".git/HEAD".to_owned()), branch, Some(".git/packed-refs".to_owned())].into_iter().flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
