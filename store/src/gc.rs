use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{
    Digest, HostLayer, LayerRecord, Manifest, Records, Result, Store, io_err, list_dir, read_json,
};

/// What [`Store::gc`] removed.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub manifests: usize,
    pub host_layers: usize,
    pub layers: usize,
    pub blobs: usize,
    pub bytes: u64,
}

pub(crate) fn run(store: &Store, keep: usize, grace: Duration) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut live_blobs = BTreeSet::new();
    let mut live_layers = BTreeSet::new();

    for role in store.roles()? {
        let history = store.history::<Manifest>(Records::Manifests, &role)?;
        let split = history.len().saturating_sub(keep);
        for (path, _) in &history[..split] {
            fs::remove_file(path).map_err(io_err("removing", path))?;
            report.manifests += 1;
        }
        for (_, manifest) in &history[split..] {
            live_blobs.extend(manifest.blobs().map(|blob| blob.sha256.clone()));
            live_layers.extend(manifest.layers.iter().map(|layer| layer.key.clone()));
        }
    }
    for host in store.hosts()? {
        let history = store.history::<HostLayer>(Records::Hosts, &host)?;
        let split = history.len().saturating_sub(keep);
        for (path, _) in &history[..split] {
            fs::remove_file(path).map_err(io_err("removing", path))?;
            report.host_layers += 1;
        }
        live_blobs.extend(
            history[split..]
                .iter()
                .flat_map(|(_, layer)| std::iter::once(&layer.blob).chain(&layer.secrets))
                .map(|blob| blob.sha256.clone()),
        );
    }

    let layers_dir = store.root.join("layers");
    for name in list_dir(&layers_dir)? {
        let path = layers_dir.join(&name);
        let Some(key) = name
            .strip_suffix(".json")
            .and_then(|key| key.parse::<Digest>().ok())
        else {
            continue;
        };
        if live_layers.contains(&key) {
            continue;
        }
        // A layer cached by a build that has not written its manifest yet is still wanted.
        if is_young(&path, grace)? {
            if let Some(record) = read_json::<LayerRecord>(&path)? {
                live_blobs.extend(record.outputs.into_values().map(|blob| blob.sha256));
            }
            continue;
        }
        fs::remove_file(&path).map_err(io_err("removing", &path))?;
        report.layers += 1;
    }

    let blobs_dir = store.root.join("blobs/sha256");
    for name in list_dir(&blobs_dir)? {
        let path = blobs_dir.join(&name);
        let live = name
            .parse::<Digest>()
            .is_ok_and(|digest| live_blobs.contains(&digest));
        if live || is_young(&path, grace)? {
            continue;
        }
        report.bytes += remove(&path)?;
        report.blobs += 1;
    }

    let tmp_dir = store.root.join("tmp");
    for name in list_dir(&tmp_dir)? {
        let path = tmp_dir.join(name);
        if !is_young(&path, grace)? {
            report.bytes += remove(&path)?;
        }
    }
    Ok(report)
}

fn is_young(path: &Path, grace: Duration) -> Result<bool> {
    let modified = fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .map_err(io_err("inspecting", path))?;
    Ok(SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age < grace))
}

/// Removes a file or a whole scratch directory; returns the bytes freed.
fn remove(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("removing", path))?;
        Ok(0)
    } else {
        fs::remove_file(path).map_err(io_err("removing", path))?;
        Ok(meta.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{BlobRef, LayerKind};

    fn release(store: &Store, role: &str, content: &[u8]) -> Manifest {
        let tar = store.put_blob(&[content, b" tar"].concat()).unwrap();
        let squashfs = store.put_blob(&[content, b" squashfs"].concat()).unwrap();
        let layer = LayerRecord {
            kind: LayerKind::Role,
            key: Digest::of_bytes(content),
            outputs: BTreeMap::from([("rootfs.tar".to_owned(), tar)]),
        };
        store.put_layer(&layer).unwrap();
        let artifacts = BTreeMap::from([("root.squashfs".to_owned(), squashfs)]);
        let manifest = Manifest::new(
            role,
            vec![layer],
            artifacts,
            BTreeMap::new(),
            BTreeMap::new(),
        );
        store.add_manifest(&manifest).unwrap();
        manifest
    }

    fn present(store: &Store, manifest: &Manifest) -> bool {
        manifest.blobs().all(|blob: &BlobRef| store.has_blob(blob))
    }

    #[test]
    fn keeps_newest_releases_and_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let releases: Vec<Manifest> = (0..4)
            .map(|i| release(&store, "mixer", format!("v{i}").as_bytes()))
            .collect();
        let encoder = release(&store, "encoder", b"enc");
        let shared = store.put_blob(b"host cpio").unwrap();
        let key = Digest::of_bytes(b"host inputs");
        store
            .add_host_layer(&HostLayer::new(
                "h1",
                "mixer",
                key.clone(),
                store.put_blob(b"old").unwrap(),
            ))
            .unwrap();
        store
            .add_host_layer(&HostLayer::new("h1", "mixer", key, shared.clone()))
            .unwrap();
        fs::write(store.temp_path("abandoned"), b"partial build").unwrap();

        let report = store.gc(2, Duration::ZERO).unwrap();

        assert_eq!(report.manifests, 2);
        assert_eq!(
            report.host_layers, 0,
            "keep=2 keeps both host layer records"
        );
        assert_eq!(report.layers, 2);
        assert_eq!(report.blobs, 4);
        assert_eq!(store.manifests("mixer").unwrap(), releases[2..].to_vec());
        assert!(releases[2..].iter().all(|m| present(&store, m)));
        assert!(!present(&store, &releases[0]));
        assert!(present(&store, &encoder));
        assert!(store.layer(&releases[3].layers[0].key).unwrap().is_some());
        assert!(store.layer(&releases[0].layers[0].key).unwrap().is_none());
        assert!(store.has_blob(&shared));
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);

        let again = store.gc(1, Duration::ZERO).unwrap();
        assert_eq!((again.manifests, again.host_layers), (1, 1));
        assert_eq!(store.manifests("mixer").unwrap(), releases[3..].to_vec());
        assert!(store.has_blob(&shared));
    }

    #[test]
    fn grace_protects_fresh_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let orphan = store
            .put_blob(b"just built, manifest not yet written")
            .unwrap();
        let report = store.gc(1, Duration::from_secs(3600)).unwrap();
        assert_eq!(report, GcReport::default());
        assert!(store.has_blob(&orphan));
    }
}
