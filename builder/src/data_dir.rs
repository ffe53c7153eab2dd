//! Where imgbuild finds its recipes and overlays: beside an installed binary (the Debian package puts
//! them in /usr/share/lectern), else in the source checkout it was built from.

use std::path::{Path, PathBuf};

/// The environment variable that names the data directory outright.
const ENV: &str = "LECTERN_DATA_DIR";

/// `$LECTERN_DATA_DIR`; else `<prefix>/share/lectern` when this binary is `<prefix>/bin/imgbuild`
/// and that directory holds recipes; else the checkout this binary was built in.
pub fn find() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV) {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| installed(&exe))
        .unwrap_or_else(|| checkout().to_owned())
}

/// The source checkout (the workspace) this binary was built in.
fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the builder crate is in the workspace")
}

/// The data directory of a binary installed under a prefix, if it has one.
fn installed(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let data = bin.parent()?.join("share/lectern");
    data.join("recipes").is_dir().then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_binary_uses_its_prefix_and_a_built_one_the_checkout() {
        let prefix = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
        let exe = prefix.path().join("bin/imgbuild");
        assert_eq!(installed(&exe), None, "no share/lectern/recipes yet");
        std::fs::create_dir_all(prefix.path().join("share/lectern/recipes")).unwrap();
        assert_eq!(installed(&exe), Some(prefix.path().join("share/lectern")));
        // cargo's target/debug/imgbuild is not under a bin directory.
        assert_eq!(installed(&prefix.path().join("debug/imgbuild")), None);
        assert!(
            find().join("recipes/base.toml").is_file(),
            "{}",
            find().display()
        );
    }
}
