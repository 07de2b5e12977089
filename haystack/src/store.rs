//! The set of volumes of one store node, all in one directory.
//!
//! Volumes are found by their data file names (`volume-NNNNNNNNNN.data`). A bulk sync
//! downloads a replica's files to the staging paths and installs them with
//! [`Store::install_volume`]: fsync the staged files, rename them into place (data first),
//! fsync the directory, reopen, and swap the new volume into the map.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tracing::{error, info};

use crate::error::{Error, Result};
use crate::file::{FileBackend, StorageBackend, remove_if_exists, sync_dir};
use crate::format::{self, SUPERBLOCK_SIZE};
use crate::volume::{Volume, VolumeOptions, VolumePaths, parse_data_file_name};

/// The volumes of one store node. `Send + Sync`.
pub struct Store {
    dir: PathBuf,
    opts: VolumeOptions,
    backend: Arc<dyn StorageBackend>,
    volumes: RwLock<BTreeMap<u32, Arc<Volume>>>,
    /// Serialises creating and installing volumes.
    admin: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating the directory if needed) and recovers every volume found in `dir`.
    /// A volume that fails to open is logged and left out; its files stay untouched.
    pub fn open(dir: &Path, opts: VolumeOptions) -> Result<Store> {
        Self::open_with_backend(dir, opts, Arc::new(FileBackend))
    }

    /// [`Store::open`] over a chosen storage backend.
    pub fn open_with_backend(
        dir: &Path,
        opts: VolumeOptions,
        backend: Arc<dyn StorageBackend>,
    ) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_data_file_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut volumes = BTreeMap::new();
        for id in ids {
            match Volume::open_with_backend(dir, id, opts.clone(), backend.clone()) {
                Ok(v) => {
                    volumes.insert(id, Arc::new(v));
                }
                Err(e) => error!(volume = id, error = %e, "cannot open volume; leaving it out"),
            }
        }
        info!(dir = %dir.display(), volumes = volumes.len(), "opened store");
        Ok(Store {
            dir: dir.to_path_buf(),
            opts,
            backend,
            volumes: RwLock::new(volumes),
            admin: Mutex::new(()),
        })
    }

    /// Creates an empty volume. `VolumeExists` if present (open or only on disk).
    pub fn create_volume(&self, id: u32) -> Result<Arc<Volume>> {
        let _admin = self.admin.lock();
        if self.volumes.read().contains_key(&id) {
            return Err(Error::VolumeExists { volume: id });
        }
        let v = Arc::new(Volume::create_with_backend(
            &self.dir,
            id,
            self.opts.clone(),
            self.backend.clone(),
        )?);
        self.volumes.write().insert(id, v.clone());
        Ok(v)
    }

    /// The open volume `id`, or `UnknownVolume`.
    pub fn volume(&self, id: u32) -> Result<Arc<Volume>> {
        self.volumes
            .read()
            .get(&id)
            .cloned()
            .ok_or(Error::UnknownVolume { volume: id })
    }

    /// Removes volume `id` if it never held a needle (a replica created for
    /// a volume whose allocation failed): its files go, durably. `Ok(false)`
    /// if there is no such volume; `InvalidInput` if it holds needles.
    pub fn remove_empty_volume(&self, id: u32) -> Result<bool> {
        let _admin = self.admin.lock();
        let Some(volume) = self.volumes.read().get(&id).cloned() else {
            return Ok(false);
        };
        let status = volume.status();
        if status.size_bytes > SUPERBLOCK_SIZE || status.last_key.is_some() {
            return Err(Error::InvalidInput(format!(
                "volume {id} holds needles; only an empty volume is removed"
            )));
        }
        self.remove_files(&volume)?;
        info!(volume = id, "removed empty volume");
        Ok(true)
    }

    /// Removes the locked replica of volume `id` once the warm tier holds
    /// the volume: its files go, durably. `Ok(false)` if there is no such
    /// volume; `InvalidInput` if it is not locked.
    pub fn remove_locked_volume(&self, id: u32) -> Result<bool> {
        let _admin = self.admin.lock();
        let Some(volume) = self.volumes.read().get(&id).cloned() else {
            return Ok(false);
        };
        if !volume.status().locked {
            return Err(Error::InvalidInput(format!(
                "volume {id} is not locked; only a locked replica is retired"
            )));
        }
        self.remove_files(&volume)?;
        info!(volume = id, "retired locked volume");
        // The last close of the unlinked files frees their extents, seconds
        // for a large volume on a busy disk: the answer need not wait.
        let closing = std::thread::Builder::new()
            .name("retired-volume-close".into())
            .spawn(move || drop(volume));
        if let Err(e) = closing {
            tracing::debug!(volume = id, error = %e, "closing the retired volume here");
        }
        Ok(true)
    }

    /// Retires `volume` (no more reads or writes), forgets it and removes
    /// its files durably. The caller holds the admin lock.
    fn remove_files(&self, volume: &Volume) -> Result<()> {
        let id = volume.id();
        volume.retire();
        self.volumes.write().remove(&id);
        let paths = VolumePaths::new(&self.dir, id);
        remove_if_exists(&paths.data)?;
        remove_if_exists(&paths.index)?;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Every open volume, by increasing id.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes.read().values().cloned().collect()
    }

    /// Up to `limit` open volumes after volume `after`, by id.
    pub fn volumes_after(&self, after: Option<u32>, limit: usize) -> Vec<Arc<Volume>> {
        let first = after.map_or(Some(0), |a| a.checked_add(1));
        let volumes = self.volumes.read();
        first
            .map(|first| {
                volumes
                    .range(first..)
                    .take(limit)
                    .map(|(_, v)| Arc::clone(v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Temporary data and index paths in the store directory where a bulk sync writes the
    /// downloaded files of volume `id` before [`Store::install_volume`].
    pub fn staging_paths(&self, id: u32) -> (PathBuf, PathBuf) {
        let p = VolumePaths::new(&self.dir, id);
        (p.data_staging, p.index_staging)
    }

    /// Installs the staged files of volume `id`: checks the staged superblock, fsyncs the
    /// files, renames them into place (data, then index; a missing staged index means the
    /// index is rebuilt by a scan), fsyncs the directory, reopens the volume (recovering it)
    /// and swaps it into the map. Any open replica it replaces refuses writes from then on.
    pub fn install_volume(&self, id: u32) -> Result<Arc<Volume>> {
        let _admin = self.admin.lock();
        let paths = VolumePaths::new(&self.dir, id);
        let staged = File::open(&paths.data_staging).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::InvalidInput(format!("no staged data for volume {id}"))
            }
            _ => Error::Io(e),
        })?;
        let mut sb = [0u8; SUPERBLOCK_SIZE as usize];
        std::os::unix::fs::FileExt::read_exact_at(&staged, &mut sb, 0)
            .map_err(|_| Error::corrupt(id, 0, "staged data file shorter than a superblock"))?;
        let superblock = format::decode_superblock(&sb, id)?;
        if superblock.volume_id != id {
            return Err(Error::corrupt(
                id,
                0,
                "staged data file is of another volume",
            ));
        }
        staged.sync_all()?;
        drop(staged);
        let has_index = paths.index_staging.exists();
        if has_index {
            File::open(&paths.index_staging)?.sync_all()?;
        }
        if let Some(old) = self.volumes.read().get(&id) {
            old.retire();
        }
        // Data first: a crash before the index rename leaves the new data with the old
        // index, which either names another instance (rebuilt) or is a valid prefix.
        std::fs::rename(&paths.data_staging, &paths.data)?;
        if has_index {
            std::fs::rename(&paths.index_staging, &paths.index)?;
        } else {
            remove_if_exists(&paths.index)?;
        }
        sync_dir(&self.dir)?;
        let v = Arc::new(Volume::open_with_backend(
            &self.dir,
            id,
            self.opts.clone(),
            self.backend.clone(),
        )?);
        self.volumes.write().insert(id, v.clone());
        info!(volume = id, "installed volume from staged files");
        Ok(v)
    }
}
