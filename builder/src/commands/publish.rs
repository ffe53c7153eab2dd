use std::collections::BTreeSet;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lectern_cloud::Aws;
use lectern_cloud::ami::{self, AmiSpec, Published};
use lectern_master::model::Where;
use lectern_store::Digest;

use super::{Global, print};
use crate::disk::{self, DiskFormat, DiskSpec};

/// Publish a role's current image where cloud hosts boot it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum Target {
    /// Upload the role's UEFI disk into an EBS snapshot (EBS direct APIs) and register it as an AMI,
    /// tagged with the image hash and release. The same disk again reuses its AMI. Credentials come
    /// from the standard AWS chain (environment, ~/.aws).
    Ec2 {
        /// The role whose current release to publish (build it first with `imgbuild role`).
        #[arg(long)]
        role: String,
        /// Default: the regions of the master file's `where = "ec2"` hosts of this role, else the AWS
        /// chain's region.
        #[arg(long)]
        region: Option<String>,
        /// Talk to this endpoint instead of AWS (a stand-in such as moto); default: `AWS_ENDPOINT_URL`, else AWS.
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Blocks uploaded in parallel.
        #[arg(long, default_value_t = 16)]
        workers: usize,
    },
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let Target::Ec2 {
        role,
        region,
        endpoint_url,
        workers,
    } = &args.target;
    let plan = global.typed_plan()?;
    let regions: BTreeSet<String> = match region {
        Some(region) => BTreeSet::from([region.clone()]),
        None => plan
            .hosts
            .iter()
            .filter(|h| h.role.as_str() == role && h.placement == Where::Ec2)
            .filter_map(|h| Some(h.cloud()?.region.clone()))
            .collect(),
    };
    let store = global.open_store()?;
    let (number, manifest) = store.releases(role)?.pop().with_context(|| {
        format!(
            "no {role} image in {}: build it first with `imgbuild role {role}`",
            store.root().display()
        )
    })?;
    // Removed whether the publish succeeds or not.
    let disk = tempfile::TempPath::try_from_path(store.temp_path(&format!("{role}-ec2.raw")))?;
    disk::write_disk(
        &store,
        &DiskSpec {
            manifest: &manifest,
            server_url: &plan.netboot.base_url,
            format: DiskFormat::Raw,
            source_date_epoch: global.source_date_epoch,
        },
        &disk,
    )?;
    let (disk_sha, disk_size) = Digest::of_reader(std::fs::File::open(&disk)?)?;
    let spec = AmiSpec {
        name: format!("lectern-{role}-{}", &disk_sha.as_str()[..16]),
        description: format!(
            "lectern {role} image {} (release {number})",
            manifest.image.short()
        ),
        disk: &disk,
        disk_sha256: disk_sha.as_str().to_owned(),
        tags: vec![
            (
                "Name".into(),
                format!("lectern {role} {}", manifest.image.short()),
            ),
            ("lectern:role".into(), role.clone()),
            ("lectern:image".into(), manifest.image.as_str().to_owned()),
            ("lectern:release".into(), number.to_string()),
            ("lectern:conference".into(), plan.conference.slug.clone()),
        ],
        workers: *workers,
    };
    let targets: Vec<Option<&str>> = if regions.is_empty() {
        vec![None]
    } else {
        regions.iter().map(|r| Some(r.as_str())).collect()
    };
    for target in targets {
        let aws = Aws::from_environment(target, endpoint_url.as_deref())?;
        let bar = crate::progress::shown(
            ProgressBar::new(disk_size).with_message(format!("uploading to {}", aws.region)),
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        let published = ami::publish(&aws, &spec, &|done| bar.set_position(done))
            .with_context(|| format!("publishing {role} release {number} to {}", aws.region));
        bar.finish_and_clear();
        let text = match published? {
            Published::Existing { ami } => {
                format!(
                    "{role} release {number}: {ami} in {} already holds this disk\n",
                    aws.region
                )
            }
            Published::Registered {
                ami,
                snapshot,
                uploaded,
            } => format!(
                "{role} release {number}: registered {ami} in {} from {snapshot} ({})\n",
                aws.region,
                match uploaded {
                    Some(u) => format!(
                        "{} of {} blocks uploaded, {} GiB volume",
                        u.blocks_written, u.blocks_total, u.volume_gib
                    ),
                    None => "reused the complete snapshot of an interrupted publish".to_owned(),
                }
            ),
        };
        print(&text)?;
    }
    Ok(())
}
