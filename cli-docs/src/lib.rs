//! Man pages and shell completions for lectern's binaries, generated from the same clap definitions
//! as `--help` so that they never disagree with it. The Debian package's build runs each binary with
//! `LECTERN_GENERATE_DOCS=DIR` (an environment variable rather than a subcommand: the completions
//! would offer a hidden subcommand all the same).

use std::io;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The environment variable that makes a binary write its docs into the directory it names and exit.
pub const ENV: &str = "LECTERN_GENERATE_DOCS";

/// When `LECTERN_GENERATE_DOCS` is set: writes the docs there and exits (1 on failure).
pub fn write_if_asked(command: impl FnOnce() -> Command) {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let command = command();
    let name = command.get_name().to_owned();
    match write(command, Path::new(&dir)) {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("{name}: writing the man pages and completions into {dir:?}: {err}");
            std::process::exit(1)
        }
    }
}

/// Writes `<dir>/man/<name>.1` with a page per subcommand (`<name>-<sub>.1`), and
/// `<dir>/completions/` for bash (`<name>.bash`), zsh (`_<name>`) and fish (`<name>.fish`).
/// Hidden subcommands get no page.
pub fn write(mut command: Command, dir: &Path) -> io::Result<()> {
    let name = command.get_name().to_owned();
    command.build();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    write_pages(&command, &man)?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}

/// A page for this command and, recursively, for each visible subcommand but clap's `help`.
fn write_pages(command: &Command, man: &Path) -> io::Result<()> {
    let name = command.get_display_name().unwrap_or(command.get_name());
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(man.join(format!("{name}.1")), page)?;
    for sub in command.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            write_pages(sub, man)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page_and_every_shell_a_completion() {
        let command = Command::new("tool")
            .about("A tool.")
            .subcommand(
                Command::new("release")
                    .about("Releases.")
                    .subcommand(Command::new("list")),
            )
            .subcommand(Command::new("internal").hide(true));
        let dir = tempfile::tempdir().unwrap();
        write(command, dir.path()).unwrap();
        let mut written: Vec<_> = walk(dir.path());
        written.sort();
        assert_eq!(
            written,
            [
                "completions/_tool",
                "completions/tool.bash",
                "completions/tool.fish",
                "man/tool-release-list.1",
                "man/tool-release.1",
                "man/tool.1"
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("man/tool.1")).unwrap();
        assert!(page.contains("A tool."), "{page}");
        let bash = std::fs::read_to_string(dir.path().join("completions/tool.bash")).unwrap();
        assert!(bash.contains("release"), "{bash}");
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut files = Vec::new();
        for kind in std::fs::read_dir(root).unwrap() {
            for file in std::fs::read_dir(kind.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                files.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
        files
    }
}
