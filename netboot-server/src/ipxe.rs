//! What a [`Boot`] looks like to iPXE: URLs, the kernel command line and the script.

use lectern_store::command_line::{HostLayer, Image, KernelCommandLine};

use crate::mac::MacAddr;
use crate::policy::Boot;
use crate::urls::Urls;

/// The iPXE script of `boot` for the host `mac`.
pub fn script(boot: &Boot, mac: MacAddr, urls: &Urls) -> String {
    // UEFI's kernel loader joins initrds without padding: a plain cpio is only found at a 4-byte
    // offset, a compressed archive at any, so the host layer goes first.
    let initrds: Vec<String> = (boot.host_layer.then(|| urls.host_layer(mac)).into_iter())
        .chain(boot.initrds.iter().map(|hash| urls.artifact(hash)))
        .collect();
    let names: Vec<String> = (0..initrds.len()).map(|i| format!("initrd{i}")).collect();
    // UEFI iPXE hands initrds over only to a kernel whose command line names them.
    let initrd_args: String = names.iter().map(|name| format!(" initrd={name}")).collect();
    let root = boot.root.as_ref().map(|hash| (urls.artifact(hash), hash));
    let cmdline = KernelCommandLine {
        root: root
            .as_ref()
            .map(|(url, hash)| (url.as_str(), hash.as_str())),
        server: urls.base(),
        image: boot.image.as_ref().map(|image| Image {
            id: &image.id,
            role: &image.role,
            hostname: Some(&image.hostname),
            layer: HostLayer::Loaded,
        }),
        extra: &boot.args,
    }
    .render();
    let mut script = format!(
        "#!ipxe\nkernel {}{initrd_args} {cmdline}\n",
        urls.artifact(&boot.kernel)
    );
    for (name, url) in names.iter().zip(&initrds) {
        script.push_str(&format!("initrd --name {name} {url}\n"));
    }
    script.push_str("boot\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_every_initrd_and_pins_the_root() {
        let boot = Boot {
            kernel: "k".into(),
            initrds: vec!["i".into()],
            host_layer: true,
            root: Some("r".into()),
            image: None,
            args: vec!["console=ttyS0".into()],
        };
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            script(&boot, mac, &Urls::new("http://s")),
            "#!ipxe\nkernel http://s/a/k initrd=initrd0 initrd=initrd1 lectern.root=http://s/a/r \
             lectern.root_sha256=r lectern.server=http://s console=ttyS0\n\
             initrd --name initrd0 http://s/host/52:54:00:00:00:01/layer\n\
             initrd --name initrd1 http://s/a/i\nboot\n"
        );
    }
}
