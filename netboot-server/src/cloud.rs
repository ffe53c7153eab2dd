//! A room's cloud encoders (`where = "ec2"`), started and stopped on demand. `up` puts each host's layer
//! (its rendered config, secrets included) into SSM Parameter Store as a SecureString and runs one
//! instance of the role's current AMI per host with user-data that names the host and the parameter,
//! never a secret; the instance reads the parameter at boot with its own role. `down` terminates the
//! room's instances and deletes their parameters. Both are idempotent: a running host is left alone, a
//! stopped room stays stopped.

use std::io::Write;

use anyhow::{Context, Result, bail};
use base64::Engine;
use lectern_cloud::Aws;
use lectern_cloud::ec2::{self, Item, Launch};
use lectern_cloud::ssm;
use lectern_master::plan::CloudPlan;
use lectern_master::{Host, Plan};
use lectern_store::Store;

use crate::schedule::RoomSwitch;

/// The first line of a lectern cloud host's user-data, which the image's cloud-layer unit looks for.
pub const USER_DATA_MAGIC: &str = "#lectern-cloud-host";
/// States of an instance that still runs, or will.
const LIVE_STATES: &[&str] = &["pending", "running"];
/// States of an instance `down` terminates.
const STOPPABLE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

pub struct CloudEncoders<'a> {
    pub plan: &'a Plan,
    pub store: &'a Store,
    /// An AWS stand-in for every region (tests), else AWS itself.
    pub endpoint: Option<String>,
}

/// What `up` did for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Launched {
        hostname: String,
        instance: String,
        ami: String,
    },
    AlreadyRunning {
        hostname: String,
        instance: String,
    },
}

impl CloudEncoders<'_> {
    /// The room's hosts that run in the cloud; an error if the room is unknown or has none.
    fn hosts(&self, room: &str) -> Result<Vec<(&Host, &CloudPlan)>> {
        if self.plan.room(room).is_none() {
            let known: Vec<&str> = self.plan.rooms.iter().map(|r| r.slug.as_str()).collect();
            bail!(
                "no room {room:?} in the master file (rooms: {})",
                known.join(", ")
            );
        }
        let hosts: Vec<_> = (self.plan.hosts.iter())
            .filter(|h| h.room.as_deref() == Some(room))
            .filter_map(|h| Some((h, h.cloud()?)))
            .collect();
        if hosts.is_empty() {
            bail!("room {room} has no cloud (`where = \"ec2\"`) hosts");
        }
        Ok(hosts)
    }

    fn aws(&self, cloud: &CloudPlan) -> Result<Aws> {
        Aws::from_environment(Some(&cloud.region), self.endpoint.as_deref())
    }

    fn tags(&self, host: &Host, image: &str) -> Vec<(String, String)> {
        vec![
            ("Name".into(), host.hostname.clone()),
            ("lectern:host".into(), host.hostname.clone()),
            ("lectern:room".into(), host.room.clone().unwrap_or_default()),
            (
                "lectern:conference".into(),
                self.plan.conference.slug.clone(),
            ),
            ("lectern:image".into(), image.to_owned()),
        ]
    }

    /// The instances of `hostname` of this conference in `states`.
    fn instances_of(&self, aws: &Aws, hostname: &str, states: &[&str]) -> Result<Vec<Item>> {
        ec2::instances(
            aws,
            &[
                ("tag:lectern:host", &[hostname]),
                (
                    "tag:lectern:conference",
                    &[self.plan.conference.slug.as_str()],
                ),
                ("instance-state-name", states),
            ],
        )
    }

    pub fn up(&self, room: &str) -> Result<Vec<Started>> {
        let mut started = Vec::new();
        for (host, cloud) in self.hosts(room)? {
            let aws = self.aws(cloud)?;
            let hostname = &host.hostname;
            // The layer goes first, so that even an instance already running reads the current one at
            // its next boot.
            let layer = layer_parameter_value(self.store, hostname)?;
            ssm::put_secure(
                &aws,
                &cloud.layer_parameter,
                &layer,
                &format!("lectern per-host layer of {hostname}"),
            )
            .with_context(|| format!("{hostname}: storing its layer"))?;
            if let Some(running) = self.instances_of(&aws, hostname, LIVE_STATES)?.first() {
                started.push(Started::AlreadyRunning {
                    hostname: hostname.clone(),
                    instance: running.require("instanceId")?.to_owned(),
                });
                continue;
            }
            let (ami, image) = self.current_ami(&aws, host)?;
            let user_data = user_data(host, cloud, self.endpoint.as_deref());
            let tags = self.tags(host, &image);
            let instance = ec2::run_instance(
                &aws,
                &Launch {
                    image: &ami,
                    instance_type: &cloud.instance_type,
                    instance_profile: &cloud.instance_profile,
                    security_groups: &cloud.security_groups,
                    subnet: cloud.subnet.as_deref(),
                    user_data: &user_data,
                    tags: &tags,
                },
            )
            .with_context(|| format!("{hostname}: starting its instance"))?;
            started.push(Started::Launched {
                hostname: hostname.clone(),
                instance,
                ami,
            });
        }
        Ok(started)
    }

    /// Terminates the room's instances and deletes their layers; the instances it terminated.
    pub fn down(&self, room: &str) -> Result<Vec<String>> {
        let mut terminated = Vec::new();
        for (host, cloud) in self.hosts(room)? {
            let aws = self.aws(cloud)?;
            let ids = (self
                .instances_of(&aws, &host.hostname, STOPPABLE_STATES)?
                .iter())
            .map(|i| i.require("instanceId").map(str::to_owned))
            .collect::<Result<Vec<_>>>()?;
            if !ids.is_empty() {
                ec2::terminate_instances(&aws, &ids).with_context(|| {
                    format!("{}: terminating {}", host.hostname, ids.join(", "))
                })?;
            }
            ssm::delete(&aws, &cloud.layer_parameter)?;
            terminated.extend(ids);
        }
        Ok(terminated)
    }

    /// The newest AMI of the role's current image in this region, and the image id.
    fn current_ami(&self, aws: &Aws, host: &Host) -> Result<(String, String)> {
        let role = host.role.as_str();
        let manifest = self.store.latest_manifest(role)?.with_context(|| {
            format!("no {role} image in the store: build it with `imgbuild role {role}`")
        })?;
        let image = manifest.image.as_str();
        let mut amis = ec2::images(aws, &[("tag:lectern:image", &[image])])?;
        amis.sort_by(|a, b| b.get("creationDate").cmp(&a.get("creationDate")));
        let ami = amis.first().with_context(|| {
            format!(
                "no AMI of {role} image {} in {}: publish it with `imgbuild publish ec2 --role {role}`",
                manifest.image.short(),
                aws.region
            )
        })?;
        Ok((ami.require("imageId")?.to_owned(), image.to_owned()))
    }
}

/// The instance's user-data: who it is and where its layer waits (with `ssm_endpoint`, at the stand-in
/// this command talks to). Nothing in it is secret; EC2 shows user-data to anyone who may describe the
/// instance.
pub fn user_data(host: &Host, cloud: &CloudPlan, ssm_endpoint: Option<&str>) -> String {
    let mut text = format!(
        "{USER_DATA_MAGIC}\nhost={}\nregion={}\nlayer_parameter={}\n",
        host.hostname, cloud.region, cloud.layer_parameter
    );
    if let Some(endpoint) = ssm_endpoint {
        text.push_str(&format!("ssm_endpoint={endpoint}\n"));
    }
    text
}

/// The host's current layer as the parameter holds it: the cpio, gzipped, in base64.
fn layer_parameter_value(store: &Store, hostname: &str) -> Result<String> {
    let layer = store.host_layer(hostname)?.with_context(|| {
        format!("{hostname} has no host layer in the store: run `imgbuild all`")
    })?;
    let cpio = std::fs::read(store.blob_path(&layer.blob.sha256))
        .with_context(|| format!("reading {hostname}'s host layer"))?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&cpio)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gzip.finish()?))
}

impl RoomSwitch for CloudEncoders<'_> {
    fn up(&self, room: &str) -> Result<()> {
        for started in CloudEncoders::up(self, room)? {
            tracing::info!(?started, "cloud encoder up");
        }
        Ok(())
    }

    fn down(&self, room: &str) -> Result<()> {
        let terminated = CloudEncoders::down(self, room)?;
        tracing::info!(%room, ?terminated, "cloud encoders down");
        Ok(())
    }
}

impl CloudEncoders<'_> {
    /// `(slug, name)` of every room with cloud hosts, for the schedule mode.
    pub fn rooms(&self) -> Vec<(String, String)> {
        (self.plan.rooms.iter())
            .filter(|room| self.hosts(&room.slug).is_ok())
            .map(|room| (room.slug.clone(), room.name.clone()))
            .collect()
    }
}
