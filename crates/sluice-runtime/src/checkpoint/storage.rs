//! Checkpoint files through `object_store`: a local directory (the default) or, built
//! with the `s3` feature, any S3-compatible store by URL.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_types::{Result, SluiceError};

use super::{MANIFEST, Manifest};

/// A directory of checkpoints (or savepoints), or one checkpoint's directory.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
    /// The directory on this machine, for a local store: files and directories are
    /// synced to disk after each write.
    local: Option<std::path::PathBuf>,
}

/// The end of a sealed file: its xxHash64 (little-endian), then this mark.
const SEAL: &[u8; 8] = b"SLCSUM01";

fn xxh64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0x5EED, bytes)
}

fn io_err(what: String) -> impl FnOnce(object_store::Error) -> SluiceError {
    move |e| SluiceError::external(what).with_source(e)
}

impl CheckpointStorage {
    /// Opens `location`: a local path (created if missing), `file:///path`, or with the
    /// `s3` feature `s3://bucket/prefix` (credentials from the usual AWS variables).
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, Vec::new())
    }

    /// [`Self::open`] with store options (`aws_endpoint`, `aws_region`, …) besides the
    /// environment's, for a remote `location`.
    pub fn open_with(location: &str, options: Vec<(String, String)>) -> Result<Self> {
        match crate::source::Location::parse(location) {
            crate::source::Location::Local(p) => Self::local(&p.to_string_lossy()),
            crate::source::Location::Remote(url) => Self::remote(&url, options),
        }
    }

    fn local(dir: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SluiceError::user(format!("cannot create checkpoint directory {dir}")).with_source(e)
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| {
                SluiceError::user(format!("cannot use checkpoint directory {dir}")).with_source(e)
            })?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            root: Path::default(),
            display: dir.to_string(),
            local: Some(std::path::PathBuf::from(dir)),
        })
    }

    #[cfg(feature = "s3")]
    fn remote(url: &str, options: Vec<(String, String)>) -> Result<Self> {
        let parsed = url.parse::<url::Url>().map_err(|e| {
            SluiceError::user(format!("checkpoint location `{url}` is not a URL")).with_source(e)
        })?;
        let (store, root) = object_store::parse_url_opts(&parsed, std::env::vars().chain(options))
            .map_err(|e| {
                SluiceError::user(format!("cannot open checkpoint store `{url}`")).with_source(e)
            })?;
        Ok(Self {
            store: Arc::from(store),
            root,
            display: url.to_string(),
            local: None,
        })
    }

    #[cfg(not(feature = "s3"))]
    fn remote(url: &str, _options: Vec<(String, String)>) -> Result<Self> {
        Err(SluiceError::user(format!(
            "checkpoint location `{url}` needs object-store support: build with `--features s3`, or use a local directory"
        )))
    }

    /// The location as given.
    pub fn location(&self) -> &str {
        &self.display
    }

    /// A sub-directory of this location.
    pub fn child(&self, name: &str) -> Self {
        Self {
            store: Arc::clone(&self.store),
            root: self.root.clone().join(name),
            display: format!("{}/{name}", self.display.trim_end_matches('/')),
            local: self.local.clone(),
        }
    }

    fn path(&self, dir: &str, name: &str) -> Path {
        let mut p = self.root.clone();
        if !dir.is_empty() {
            p = p.join(dir);
        }
        p.join(name)
    }

    /// Writes a file (atomically; on a local disk, synced with its directory before
    /// this returns).
    pub async fn put(&self, dir: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(dir, name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(io_err(format!("writing checkpoint file {path} failed")))?;
        if let Some(local) = &self.local {
            let file = local.join(path.as_ref());
            tokio::task::spawn_blocking(move || sync_file_and_dir(&file))
                .await
                .map_err(|e| {
                    SluiceError::internal("syncing a checkpoint file failed").with_source(e)
                })?
                .map_err(|e| {
                    SluiceError::external(format!("syncing checkpoint file {path} failed"))
                        .with_source(e)
                })?;
        }
        Ok(())
    }

    /// Writes a file with its checksum at the end, for [`CheckpointStorage::get_sealed`].
    pub async fn put_sealed(&self, dir: &str, name: &str, mut bytes: Vec<u8>) -> Result<()> {
        let sum = xxh64(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        bytes.extend_from_slice(SEAL);
        self.put(dir, name, bytes).await
    }

    /// Reads a file written by [`CheckpointStorage::put_sealed`]: fails if it was cut
    /// short or changed since.
    pub async fn get_sealed(&self, dir: &str, name: &str) -> Result<Vec<u8>> {
        let mut bytes = self.get(dir, name).await?;
        let damaged = || {
            SluiceError::user(format!(
                "checkpoint file {}/{dir}/{name} is damaged (its checksum does not match)",
                self.display
            ))
        };
        let n = bytes.len();
        if n < 16 || &bytes[n - 8..] != SEAL {
            return Err(damaged());
        }
        let sum = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().map_err(|_| damaged())?);
        bytes.truncate(n - 16);
        match xxh64(&bytes) == sum {
            true => Ok(bytes),
            false => Err(damaged()),
        }
    }

    /// Reads a file.
    pub async fn get(&self, dir: &str, name: &str) -> Result<Vec<u8>> {
        let path = self.path(dir, name);
        let r = self
            .store
            .get(&path)
            .await
            .map_err(io_err(format!("reading checkpoint file {path} failed")))?;
        let bytes = r
            .bytes()
            .await
            .map_err(io_err(format!("reading checkpoint file {path} failed")))?;
        Ok(bytes.to_vec())
    }

    /// Writes the manifest, with its own checksum: the checkpoint in `dir` is complete
    /// from now on.
    pub async fn write_manifest(&self, dir: &str, manifest: &Manifest) -> Result<()> {
        let mut m = manifest.clone();
        m.checksum = None;
        let unsummed = serde_json::to_vec_pretty(&m)
            .map_err(|e| SluiceError::internal("encoding a manifest failed").with_source(e))?;
        m.checksum = Some(format!("{:016x}", xxh64(&unsummed)));
        let bytes = serde_json::to_vec_pretty(&m)
            .map_err(|e| SluiceError::internal("encoding a manifest failed").with_source(e))?;
        self.put(dir, MANIFEST, bytes).await
    }

    /// Reads the manifest of the checkpoint in `dir` (`""`: this location is one).
    pub async fn read_manifest(&self, dir: &str) -> Result<Manifest> {
        let bytes = self.get(dir, MANIFEST).await.map_err(|e| {
            SluiceError::user(format!(
                "{}/{dir} is not a complete checkpoint (no {MANIFEST})",
                self.display
            ))
            .with_source(e)
        })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            SluiceError::user(format!("{}/{dir}/{MANIFEST} is corrupt", self.display))
                .with_source(e)
        })?;
        if let Some(sum) = &m.checksum {
            let mut unsummed = m.clone();
            unsummed.checksum = None;
            let bytes = serde_json::to_vec_pretty(&unsummed)
                .map_err(|e| SluiceError::internal("encoding a manifest failed").with_source(e))?;
            if *sum != format!("{:016x}", xxh64(&bytes)) {
                return Err(SluiceError::user(format!(
                    "{}/{dir}/{MANIFEST} is damaged (its checksum does not match)",
                    self.display
                )));
            }
        }
        if m.version != Manifest::VERSION {
            return Err(SluiceError::user(format!(
                "checkpoint format version {} is not supported (this build reads {})",
                m.version,
                Manifest::VERSION
            )));
        }
        Ok(m)
    }

    async fn has_manifest(&self, dir: &str) -> bool {
        self.store.head(&self.path(dir, MANIFEST)).await.is_ok()
    }

    /// Checkpoint directories (`<prefix>-<epoch>`) here, by epoch.
    async fn epochs(&self, prefix: &str) -> Result<Vec<(u64, String)>> {
        let mut out: Vec<(u64, String)> = self
            .children()
            .await?
            .into_iter()
            .filter_map(|name| {
                let epoch = name.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()?;
                Some((epoch, name))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The directory of the latest complete checkpoint named `<prefix>-<epoch>`.
    pub async fn latest(&self, prefix: &str) -> Result<Option<String>> {
        Ok(self.complete(prefix).await?.into_iter().next())
    }

    /// The directories of the complete checkpoints named `<prefix>-<epoch>`, newest
    /// first.
    pub async fn complete(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (_, dir) in self.epochs(prefix).await?.into_iter().rev() {
            if self.has_manifest(&dir).await {
                out.push(dir);
            }
        }
        Ok(out)
    }

    /// The highest epoch of any directory here, complete or not.
    pub async fn highest_epoch(&self, prefix: &str) -> Result<Option<u64>> {
        Ok(self.epochs(prefix).await?.last().map(|(e, _)| *e))
    }

    /// Keeps the `retained` latest complete checkpoints; deletes the older ones and any
    /// incomplete one older than the newest complete.
    pub async fn retain(&self, prefix: &str, retained: usize) -> Result<()> {
        let all = self.epochs(prefix).await?;
        let mut complete = Vec::new();
        for (epoch, dir) in &all {
            if self.has_manifest(dir).await {
                complete.push(*epoch);
            }
        }
        let Some(&newest) = complete.last() else {
            return Ok(());
        };
        let keep_from = complete[complete.len().saturating_sub(retained.max(1))];
        for (epoch, dir) in all {
            if epoch < keep_from || (epoch < newest && !complete.contains(&epoch)) {
                self.delete_dir(&dir).await?;
            }
        }
        Ok(())
    }

    /// The names of the directories directly under this location.
    pub async fn children(&self) -> Result<Vec<String>> {
        let root = (!self.root.as_ref().is_empty()).then_some(&self.root);
        let listing = self
            .store
            .list_with_delimiter(root)
            .await
            .map_err(io_err(format!("listing {} failed", self.display)))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| Some(p.filename()?.to_string()))
            .collect())
    }

    /// Deletes every checkpoint named `<prefix>-<epoch>` here.
    pub async fn delete_all(&self, prefix: &str) -> Result<()> {
        for (_, dir) in self.epochs(prefix).await? {
            self.delete_dir(&dir).await?;
        }
        Ok(())
    }

    /// Deletes every file of `dir` (the manifest last is not needed: it goes first, so
    /// a half-deleted checkpoint is never taken for a complete one).
    pub async fn delete_dir(&self, dir: &str) -> Result<()> {
        let _ = self.store.delete(&self.path(dir, MANIFEST)).await;
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root.clone().join(dir)))
            .await
            .map_err(io_err(format!("listing {}/{dir} failed", self.display)))?;
        for o in listing.objects {
            self.store
                .delete(&o.location)
                .await
                .map_err(io_err(format!("deleting {} failed", o.location)))?;
        }
        Ok(())
    }
}

/// Syncs a file and the directory that holds it (so that its rename into place lasts).
fn sync_file_and_dir(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The directory name of a checkpoint: `chk-00000012`.
pub fn checkpoint_dir(prefix: &str, epoch: u64) -> String {
    format!("{prefix}-{epoch:08}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(epoch: u64) -> Manifest {
        Manifest {
            version: Manifest::VERSION,
            job: "j".into(),
            epoch,
            kind: "checkpoint".into(),
            completed_at_ms: 0,
            duration_ms: 0,
            state_bytes: 0,
            max_parallelism: 128,
            nodes: Vec::new(),
            subtasks: Vec::new(),
            sealed: true,
            checksum: None,
        }
    }

    #[tokio::test]
    async fn damage_to_a_sealed_file_or_a_manifest_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let s = CheckpointStorage::open(tmp.path().to_str().unwrap()).unwrap();
        let dir = checkpoint_dir("chk", 1);
        s.put_sealed(&dir, "t.arrow", b"state bytes".to_vec())
            .await
            .unwrap();
        assert_eq!(s.get_sealed(&dir, "t.arrow").await.unwrap(), b"state bytes");
        let file = tmp.path().join(&dir).join("t.arrow");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let e = s.get_sealed(&dir, "t.arrow").await.unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        std::fs::write(&file, &bytes[..5]).unwrap();
        assert!(s.get_sealed(&dir, "t.arrow").await.is_err());
        // The manifest: a changed number is found too, not only broken JSON.
        s.write_manifest(&dir, &manifest(1)).await.unwrap();
        assert_eq!(s.read_manifest(&dir).await.unwrap().epoch, 1);
        let m = tmp.path().join(&dir).join(MANIFEST);
        let text = std::fs::read_to_string(&m).unwrap();
        std::fs::write(
            &m,
            text.replace("\"max_parallelism\": 128", "\"max_parallelism\": 129"),
        )
        .unwrap();
        let e = s.read_manifest(&dir).await.unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    /// Checkpoints 1-5 (4 without a manifest) and an in-progress 6 in `s`: the latest
    /// complete one, and retention keeping 2 (3 and 5, the in-progress 6).
    async fn latest_and_retention_in(s: &CheckpointStorage) {
        assert_eq!(s.latest("chk").await.unwrap(), None);
        for e in 1..=5 {
            let dir = checkpoint_dir("chk", e);
            s.put(&dir, "n0-s0-t.arrow", vec![1, 2, 3]).await.unwrap();
            if e != 4 {
                s.write_manifest(&dir, &manifest(e)).await.unwrap();
            }
        }
        // Epoch 6 is in progress: no manifest yet.
        s.put(&checkpoint_dir("chk", 6), "x", vec![0])
            .await
            .unwrap();
        assert_eq!(
            s.latest("chk").await.unwrap().as_deref(),
            Some("chk-00000005")
        );
        s.retain("chk", 2).await.unwrap();
        let left: Vec<u64> = s
            .epochs("chk")
            .await
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            left,
            [3, 5, 6],
            "kept 3 and 5, the in-progress 6; dropped 1, 2 and 4"
        );
        assert_eq!(s.read_manifest("chk-00000003").await.unwrap().epoch, 3);
        assert!(s.read_manifest("chk-00000004").await.is_err());
    }

    #[tokio::test]
    async fn latest_complete_and_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let s = CheckpointStorage::open(tmp.path().to_str().unwrap()).unwrap();
        latest_and_retention_in(&s).await;
        // A checkpoint directory opened directly.
        let one =
            CheckpointStorage::open(tmp.path().join("chk-00000005").to_str().unwrap()).unwrap();
        assert_eq!(one.read_manifest("").await.unwrap().epoch, 5);
    }

    /// Checkpoints through a real S3 API (moto): sealed files read back and checked,
    /// manifests, the latest complete checkpoint, retention, a checkpoint opened by its
    /// own URL.
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn checkpoints_round_trip_through_an_s3_api() {
        let moto = sluice_testkit::moto::Moto::start("sluice-checkpoints");
        let s = CheckpointStorage::open_with("s3://sluice-checkpoints/jobs/j1", moto.options())
            .unwrap();
        let dir = checkpoint_dir("chk", 0);
        s.put_sealed(&dir, "t.arrow", b"state bytes".to_vec())
            .await
            .unwrap();
        assert_eq!(s.get_sealed(&dir, "t.arrow").await.unwrap(), b"state bytes");
        latest_and_retention_in(&s).await;
        assert!(
            s.get_sealed(&dir, "t.arrow").await.is_err(),
            "0 dropped too"
        );
        let one = CheckpointStorage::open_with(
            "s3://sluice-checkpoints/jobs/j1/chk-00000005",
            moto.options(),
        )
        .unwrap();
        assert_eq!(one.read_manifest("").await.unwrap().epoch, 5);
        // Another bucket does not exist: a clear error, not a panic.
        let other = CheckpointStorage::open_with("s3://no-such-bucket/x", moto.options()).unwrap();
        assert!(other.latest("chk").await.is_err());
    }

    #[test]
    fn remote_urls_need_the_feature_or_fail_clearly() {
        if cfg!(not(feature = "s3")) {
            let e = CheckpointStorage::open("s3://bucket/x").unwrap_err();
            assert!(e.to_string().contains("--features s3"), "{e}");
        }
    }
}
