//! The kernel command line of a lectern boot: what the image's initrd (`boot=lectern`) and its
//! reporter read. Each way an image boots (netbooted by iPXE, from its disk's unified kernel image,
//! or straight from the test lab) writes it here, so they cannot drift apart.

/// Where the booted host's own layer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLayer {
    /// Loaded with the initrds (iPXE, by MAC): nothing to fetch.
    Loaded,
    /// The initrd fetches it from the server, by the host's name or its MAC (a disk boot).
    Fetch,
}

/// The image a boot runs, as its reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image<'a> {
    pub id: &'a str,
    pub role: &'a str,
    /// `systemd.hostname=`: when the boot already knows which host it is.
    pub hostname: Option<&'a str>,
    pub layer: HostLayer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCommandLine<'a> {
    /// The root image: where the initrd fetches it (a URL, or `partlabel:NAME` on a disk) and the
    /// SHA-256 it must have.
    pub root: Option<(&'a str, &'a str)>,
    /// netbootd's HTTP side: where the host reports and fetches what it needs.
    pub server: &'a str,
    /// A lectern image (`None`: some other kernel, given only `extra`).
    pub image: Option<Image<'a>>,
    /// The host's own arguments (the master file's `kernel_args`), last.
    pub extra: &'a [String],
}

impl KernelCommandLine<'_> {
    pub fn render(&self) -> String {
        let mut line = Vec::new();
        if let Some((url, sha256)) = self.root {
            line.push(format!("lectern.root={url}"));
            line.push(format!("lectern.root_sha256={sha256}"));
        }
        line.push(format!(
            "lectern.server={}",
            self.server.trim_end_matches('/')
        ));
        if let Some(image) = &self.image {
            line.extend(["boot=lectern".to_owned(), "ip=dhcp".to_owned()]);
            if image.layer == HostLayer::Fetch {
                line.push("lectern.layer=fetch".to_owned());
            }
            line.push(format!("lectern.image={}", image.id));
            line.push(format!("lectern.role={}", image.role));
            if let Some(hostname) = image.hostname {
                line.push(format!("systemd.hostname={hostname}"));
            }
            // The serial console is where a lab, or a video team's crash cart, reads a boot.
            line.extend([
                "console=tty0".to_owned(),
                "console=ttyS0,115200n8".to_owned(),
            ]);
        }
        line.extend(self.extra.iter().cloned());
        line.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netboot_and_a_disk_boot_differ_only_where_they_must() {
        let extra = ["nomodeset".to_owned()];
        let netboot = KernelCommandLine {
            root: Some(("http://s/a/r", "r")),
            server: "http://s/",
            image: Some(Image {
                id: "i",
                role: "mixer",
                hostname: Some("m1"),
                layer: HostLayer::Loaded,
            }),
            extra: &extra,
        };
        assert_eq!(
            netboot.render(),
            "lectern.root=http://s/a/r lectern.root_sha256=r lectern.server=http://s boot=lectern \
             ip=dhcp lectern.image=i lectern.role=mixer systemd.hostname=m1 console=tty0 \
             console=ttyS0,115200n8 nomodeset"
        );
        let disk = KernelCommandLine {
            root: Some(("partlabel:root", "r")),
            image: Some(Image {
                hostname: None,
                layer: HostLayer::Fetch,
                ..netboot.image.unwrap()
            }),
            extra: &[],
            ..netboot
        };
        assert_eq!(
            disk.render(),
            "lectern.root=partlabel:root lectern.root_sha256=r lectern.server=http://s boot=lectern \
             ip=dhcp lectern.layer=fetch lectern.image=i lectern.role=mixer console=tty0 \
             console=ttyS0,115200n8"
        );
        let other = KernelCommandLine {
            root: None,
            image: None,
            ..netboot
        };
        assert_eq!(other.render(), "lectern.server=http://s nomodeset");
    }
}
