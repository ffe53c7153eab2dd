//! `netbootd cloud up|down` against moto: the example's cloud encoder runs from the role's published AMI
//! with user-data that names it and holds no secret, its layer waits in SSM as a SecureString, a second
//! `up` starts nothing, and `down` terminates it and deletes the layer.

// Shared with the cloud crate's tests; this one needs moto, not the faulty proxy.
#[allow(dead_code)]
#[path = "../../cloud/tests/stand_in/mod.rs"]
mod stand_in;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use lectern_cloud::ami::{self, AmiSpec};
use lectern_cloud::{ec2, ssm};
use lectern_netboot::cloud::{CloudEncoders, Started, USER_DATA_MAGIC};
use lectern_store::{HostLayer, Manifest, Store};
use stand_in::{FakeImds, Moto, create_instance_profile};

const ROOM: &str = "lameere";
const HOST: &str = "lameere-enc";
/// A stand-in for the stream key in the host's layer.
const LAYER_SECRET: &str = "rtmp://ingest/live/lameere?key=layer-secret-41f9";

/// A host layer as imgbuild writes it: a cpio of `lectern-host/…`, the secret file private.
fn host_layer_cpio(dir: &Path) -> Vec<u8> {
    let tree = dir.join("layer");
    std::fs::create_dir_all(tree.join("lectern-host/etc/lectern")).unwrap();
    std::fs::write(tree.join("lectern-host/etc/hostname"), format!("{HOST}\n")).unwrap();
    let args = tree.join("lectern-host/etc/lectern/encoder.args");
    std::fs::write(&args, LAYER_SECRET).unwrap();
    std::fs::set_permissions(&args, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("sh")
        .args(["-c", "find lectern-host | sort | cpio -o -H newc --quiet"])
        .current_dir(&tree)
        .output()
        .expect("cpio runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The example master file and secrets in `dir`, with a store holding an encoder image and the cloud
/// encoder's layer.
fn example_with_store(dir: &Path) -> (lectern_master::Plan, Store, Manifest) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::copy(examples.join("master.toml"), dir.join("master.toml")).unwrap();
    let secrets = dir.join("secrets.toml");
    std::fs::copy(examples.join("secrets.toml.example"), &secrets).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plan = lectern_master::load(&dir.join("master.toml")).unwrap();
    let store = Store::create(&plan.netboot.store).unwrap();
    let kernel = store.put_blob(b"kernel").unwrap();
    let manifest = Manifest::new(
        "encoder",
        vec![],
        BTreeMap::from([("vmlinuz".to_owned(), kernel)]),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    store.add_manifest(&manifest).unwrap();
    let layer = store.put_blob(&host_layer_cpio(dir)).unwrap();
    let key = lectern_store::Digest::of_bytes(b"layer key");
    store
        .add_host_layer(&HostLayer::new(HOST, "encoder", key, layer))
        .unwrap();
    (plan, store, manifest)
}

/// An AMI of `manifest`'s image, as `imgbuild publish ec2` tags it.
fn publish_ami(moto: &Moto, dir: &Path, manifest: &Manifest) -> String {
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![7u8; 4096]).unwrap();
    let spec = AmiSpec {
        name: "lectern-encoder-test".into(),
        description: "test".into(),
        disk: &disk,
        disk_sha256: "00".into(),
        tags: vec![("lectern:image".into(), manifest.image.as_str().to_owned())],
        workers: 1,
    };
    ami::publish(&moto.aws(), &spec, &|_| {})
        .unwrap()
        .ami()
        .to_owned()
}

fn running(moto: &Moto) -> Vec<ec2::Item> {
    ec2::instances(
        &moto.aws(),
        &[
            ("tag:lectern:host", &[HOST]),
            ("instance-state-name", &["pending", "running"]),
        ],
    )
    .unwrap()
}

#[test]
fn a_rooms_cloud_encoder_runs_from_its_ami_with_its_layer_in_ssm_and_stops_again() {
    let Some(moto) = Moto::start() else { return };
    // SAFETY: the only test of this binary, and it sets these before it starts any thread.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDLECTERNTEST");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "lectern-test-secret");
    }
    let dir = tempfile::tempdir().unwrap();
    let (plan, store, manifest) = example_with_store(dir.path());
    let fleet = CloudEncoders {
        plan: &plan,
        store: &store,
        endpoint: Some(moto.url.clone()),
    };

    let err = fleet.up(ROOM).unwrap_err().to_string();
    assert!(
        err.contains("imgbuild publish ec2 --role encoder"),
        "no AMI yet: {err}"
    );
    let unknown = fleet.up("aula").unwrap_err().to_string();
    assert!(
        unknown.contains("no room \"aula\"") && unknown.contains("lameere"),
        "{unknown}"
    );
    let on_lan = fleet.up("cornil").unwrap_err().to_string();
    assert!(on_lan.contains("has no cloud"), "{on_lan}");

    let ami = publish_ami(&moto, dir.path(), &manifest);
    create_instance_profile(&moto.url, "lectern-encoder");
    let started = fleet.up(ROOM).unwrap();
    let [
        Started::Launched {
            hostname,
            instance,
            ami: from,
        },
    ] = started.as_slice()
    else {
        panic!("one instance started: {started:?}");
    };
    assert_eq!((hostname.as_str(), from.as_str()), (HOST, ami.as_str()));

    let host = plan.host(HOST).unwrap();
    let cloud = host.cloud().unwrap();
    let live = running(&moto);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].get("instanceId"), Some(instance.as_str()));
    assert_eq!(
        live[0].get("instanceType"),
        Some(cloud.instance_type.as_str())
    );
    assert_eq!(live[0].tag("lectern:room"), Some(ROOM));
    assert_eq!(live[0].tag("lectern:image"), Some(manifest.image.as_str()));

    // The user-data names the host and its parameter, and nothing secret.
    let answer = ec2::call(
        &moto.aws(),
        "DescribeInstanceAttribute",
        &ec2::Params::new()
            .set("InstanceId", instance)
            .set("Attribute", "userData"),
    )
    .unwrap();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(ec2::text(&answer, "value").unwrap())
        .unwrap();
    let user_data = String::from_utf8(user_data).unwrap();
    assert_eq!(
        user_data,
        format!(
            "{USER_DATA_MAGIC}\nhost={HOST}\nregion=eu-west-1\nlayer_parameter=/lectern/fosdem2027/{HOST}/layer\nssm_endpoint={}\n",
            moto.url
        )
    );
    let secrets = std::fs::read_to_string(dir.path().join("secrets.toml")).unwrap();
    for line in secrets.lines().filter_map(|l| l.split_once('=')) {
        let value = line.1.trim().trim_matches('"');
        assert!(
            value.len() < 8 || !user_data.contains(value),
            "a secret in the user-data"
        );
    }

    // The layer in SSM is the store's, gzipped, in base64.
    let stored = ssm::get_decrypted(&moto.aws(), &cloud.layer_parameter).unwrap();
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .unwrap();
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_end(&mut layer)
        .unwrap();
    assert_eq!(
        layer,
        std::fs::read(store.blob_path(&store.host_layer(HOST).unwrap().unwrap().blob.sha256))
            .unwrap()
    );

    // The image's cloud-layer unit, as the instance runs it at boot: IMDSv2 only, the layer from SSM
    // with the role's credentials, applied with its modes; nothing secret in what it prints.
    let imds = FakeImds::start(user_data.clone());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/base/config/usr/lib/lectern/cloud-layer");
    let output = Command::new("bash")
        .arg(&script)
        .env("LECTERN_IMDS", &imds.url)
        .env("LECTERN_ROOT", &root)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "cloud-layer failed: {printed}");
    assert!(
        printed.contains(&format!("applied {HOST}'s layer")),
        "{printed}"
    );
    assert!(
        !printed.contains("layer-secret") && !printed.contains("imds-secret"),
        "{printed}"
    );
    assert_eq!(
        imds.tokenless.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "IMDSv1 was used"
    );
    let args = root.join("etc/lectern/encoder.args");
    assert_eq!(std::fs::read_to_string(&args).unwrap(), LAYER_SECRET);
    assert_eq!(
        std::fs::metadata(&args).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        format!("{HOST}\n")
    );

    let again = fleet.up(ROOM).unwrap();
    assert_eq!(
        again,
        vec![Started::AlreadyRunning {
            hostname: HOST.into(),
            instance: instance.clone()
        }]
    );
    assert_eq!(running(&moto).len(), 1, "a second up starts nothing");

    assert_eq!(fleet.down(ROOM).unwrap(), vec![instance.clone()]);
    assert!(running(&moto).is_empty(), "down terminates the instance");
    let gone = ssm::get_decrypted(&moto.aws(), &cloud.layer_parameter).unwrap_err();
    assert!(
        format!("{gone:#}").contains("ParameterNotFound"),
        "{gone:#}"
    );
    assert!(
        fleet.down(ROOM).unwrap().is_empty(),
        "a stopped room stays stopped"
    );
}
