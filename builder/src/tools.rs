//! The external programs imgbuild drives, checked up front so a missing one is named with its apt package.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

pub struct Tool {
    pub command: &'static str,
    pub package: &'static str,
    /// Arguments that print the version on the first line.
    version_args: &'static [&'static str],
}

pub const MMDEBSTRAP: Tool = Tool {
    command: "mmdebstrap",
    package: "mmdebstrap",
    version_args: &["--version"],
};
pub const MKSQUASHFS: Tool = Tool {
    command: "mksquashfs",
    package: "squashfs-tools",
    version_args: &["-version"],
};
/// Unpacks overlay archives inside mmdebstrap hooks.
pub const CPIO: Tool = Tool {
    command: "cpio",
    package: "cpio",
    version_args: &["--version"],
};
/// mmdebstrap --mode=unshare maps users through them.
pub const NEWUIDMAP: Tool = Tool {
    command: "newuidmap",
    package: "uidmap",
    version_args: &[],
};

/// Disk images (`imgbuild disk`): the unified kernel image, the ESP and the partition table.
pub const OBJCOPY: Tool = Tool {
    command: "objcopy",
    package: "binutils",
    version_args: &["--version"],
};
pub const MKFS_VFAT: Tool = Tool {
    command: "mkfs.vfat",
    package: "dosfstools",
    version_args: &[],
};
pub const MMD: Tool = Tool {
    command: "mmd",
    package: "mtools",
    version_args: &[],
};
pub const MCOPY: Tool = Tool {
    command: "mcopy",
    package: "mtools",
    version_args: &[],
};
pub const SFDISK: Tool = Tool {
    command: "sfdisk",
    package: "fdisk",
    version_args: &[],
};
pub const QEMU_IMG: Tool = Tool {
    command: "qemu-img",
    package: "qemu-utils",
    version_args: &["--version"],
};

pub const IMAGE_TOOLS: &[Tool] = &[MMDEBSTRAP, MKSQUASHFS, CPIO, NEWUIDMAP];

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(command).is_file())
    })
}

/// Fails naming every missing tool and the `apt-get install` line that provides them.
pub fn require(tools: &[Tool]) -> Result<()> {
    let missing: Vec<&Tool> = tools.iter().filter(|tool| !on_path(tool.command)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let commands: Vec<&str> = missing.iter().map(|tool| tool.command).collect();
    let mut packages: Vec<&str> = missing.iter().map(|tool| tool.package).collect();
    packages.dedup();
    bail!(
        "missing {}: install with `apt-get install {}`",
        commands.join(", "),
        packages.join(" ")
    )
}

/// First line of each tool's version output, for manifests and layer keys.
pub fn versions(tools: &[Tool]) -> Result<BTreeMap<String, String>> {
    let mut versions = BTreeMap::new();
    for tool in tools.iter().filter(|tool| !tool.version_args.is_empty()) {
        let output = Command::new(tool.command)
            .args(tool.version_args)
            .output()?;
        let text = if output.stdout.is_empty() {
            output.stderr
        } else {
            output.stdout
        };
        let first = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        versions.insert(tool.command.to_owned(), first);
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let ghost = Tool {
            command: "lectern-no-such-tool",
            package: "lectern-ghost",
            version_args: &[],
        };
        let err = require(&[ghost]).unwrap_err().to_string();
        assert_eq!(
            err,
            "missing lectern-no-such-tool: install with `apt-get install lectern-ghost`"
        );
        let shell = Tool {
            command: "sh",
            package: "dash",
            version_args: &[],
        };
        assert!(require(&[shell]).is_ok());
    }
}
