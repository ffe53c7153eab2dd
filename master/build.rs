//! Names the commit the binaries are built from, for their `--version` (`lectern_master::VERSION`).
//! A build outside a git checkout (a source tarball) says so instead.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "no git commit".into());
    println!("cargo:rustc-env=LECTERN_COMMIT={commit}");
    // A new commit moves a branch's ref (or, packed, packed-refs) and HEAD names the branch.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for watched in ["HEAD", "refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={git_dir}/{watched}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
