//! Turning a client-supplied file name into a path that cannot leave the served root.

use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path leaves the served root")]
    Escapes,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error(transparent)]
    Io(io::Error),
}

/// Resolves `requested` under `root`. A leading `/` means the root itself (PXE ROMs send
/// `/undionly.kpxe`), `\` separates like `/` (Windows clients), and any `..`, or a symlink
/// pointing out of the root, is refused.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, PathError> {
    if requested.chars().any(char::is_control) {
        return Err(PathError::Escapes);
    }
    let mut relative = PathBuf::new();
    for part in requested.split(['/', '\\']) {
        match Path::new(part).components().next() {
            None | Some(Component::CurDir) => {}
            Some(Component::Normal(name)) => relative.push(name),
            Some(Component::ParentDir | Component::RootDir | Component::Prefix(_)) => {
                return Err(PathError::Escapes);
            }
        }
    }
    let root = root.canonicalize().map_err(PathError::Io)?;
    let path = match root.join(relative).canonicalize() {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(PathError::NotFound),
        Err(error) => return Err(PathError::Io(error)),
    };
    if !path.starts_with(&root) {
        return Err(PathError::Escapes);
    }
    if !path.is_file() {
        return Err(PathError::NotAFile);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn root_with_file() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/file.bin"), b"x").unwrap();
        dir
    }

    #[test]
    fn resolves_plain_leading_slash_and_backslash_names() {
        let root = root_with_file();
        let expected = root.path().canonicalize().unwrap().join("sub/file.bin");
        for name in [
            "sub/file.bin",
            "/sub/file.bin",
            "sub\\file.bin",
            "./sub//file.bin",
        ] {
            assert_eq!(resolve(root.path(), name).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn refuses_parent_components_anywhere() {
        let root = root_with_file();
        for name in [
            "../etc/passwd",
            "sub/../../etc/passwd",
            "sub\\..\\..\\x",
            "..",
            "sub/..",
        ] {
            assert!(
                matches!(resolve(root.path(), name), Err(PathError::Escapes)),
                "{name}"
            );
        }
    }

    #[test]
    fn absolute_paths_stay_inside_the_root() {
        let root = root_with_file();
        assert!(matches!(
            resolve(root.path(), "/etc/passwd"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn refuses_symlinks_out_of_the_root_and_directories() {
        let root = root_with_file();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("link")).unwrap();
        assert!(matches!(
            resolve(root.path(), "link"),
            Err(PathError::Escapes)
        ));
        assert!(matches!(
            resolve(root.path(), "sub"),
            Err(PathError::NotAFile)
        ));
        assert!(matches!(
            resolve(root.path(), "nul\0"),
            Err(PathError::Escapes)
        ));
    }
}
