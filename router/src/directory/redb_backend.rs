//! `RedbDirectory`: the default directory backend, one embedded redb file
//! (`DIR/directory.redb`).
//!
//! Tables (layout mirrored in `docs/FORMAT.md`, "Directory (router)"):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `"format"` → `"hayloft-directory"`; `"counters"` → `{next_volume_id}` |
//! | `nodes` | node id `&str` | [`NodeRecord`] |
//! | `volumes` | volume id `u32` | [`LogicalVolume`] |
//! | `leases` | volume id `u32` | `{next_key}`: first key of the next lease |
//! | `warm_volumes` | volume id `u32` | reserved for the warm tier (empty) |
//! | `migration_jobs` | volume id `u32` | [`MigrationJob`]: a volume's move to the warm tier |
//! | `damaged_needles` | `(volume u32, key u64)` | [`DamagedNeedle`](super::DamagedNeedle): a needle whose copy failed its checks on some replicas |
//!
//! Every value is JSON in a version envelope `{"v":1,"data":...}`; a reader
//! refuses a version it does not know (`Corrupt`) rather than guess. A new
//! version adds a decode arm that migrates the old shape forward. Every
//! mutation is one write transaction committed with redb's default
//! `Durability::Immediate`, so it is on disk before the call returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::valid_node_id;
use super::types::{
    CompanionRequest, DamagedBlock, DamagedBlockRequest, EndRequest, KeyLease, LogicalVolume,
    MigrationJob, MigrationStep, NodeRecord, NodeRegistration, NodeRole, NodeState,
    OWNERSHIP_CLAIMS_MAX, PlaceRequest, RebuildClaimRequest, RebuildJob, RebuiltBlockRequest,
    RenewRequest, ReplaceHolderRequest, StepRequest, VolumeClaim, VolumeOwner, VolumeState,
    WarmVolume,
};
use super::{DamagedNeedle, Directory, DirectoryError, FIRST_KEY, REPLICA_COUNT};

mod damaged;
mod geo;
mod rebuilds;

/// File name of the database inside the directory's data dir.
pub const DIRECTORY_FILE_NAME: &str = "directory.redb";

/// Version of the JSON envelope of every stored value. Bump it on any
/// incompatible change of a stored shape and add a migration arm.
pub const DIRECTORY_FORMAT_VERSION: u32 = 1;

/// Value of `meta["format"]`, identifying a Hayloft directory file.
pub const DIRECTORY_FORMAT_NAME: &str = "hayloft-directory";

/// Largest key count one lease may ask for.
pub const MAX_LEASE_COUNT: u64 = 1 << 40;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const VOLUMES: TableDefinition<u32, &[u8]> = TableDefinition::new("volumes");
const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const WARM_VOLUMES: TableDefinition<u32, &[u8]> = TableDefinition::new("warm_volumes");
const MIGRATION_JOBS: TableDefinition<u32, &[u8]> = TableDefinition::new("migration_jobs");

const META_FORMAT: &str = "format";
const META_COUNTERS: &str = "counters";

#[derive(Debug, Serialize, Deserialize)]
struct Counters {
    next_volume_id: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    next_key: u64,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    data: serde_json::Value,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut {
        v: DIRECTORY_FORMAT_VERSION,
        data: value,
    })
    .expect("directory records serialise to JSON infallibly")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, DirectoryError> {
    let corrupt = |message: String| DirectoryError::Corrupt { table, message };
    let envelope: EnvelopeIn =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("envelope: {e}")))?;
    match envelope.v {
        DIRECTORY_FORMAT_VERSION => {
            serde_json::from_value(envelope.data).map_err(|e| corrupt(format!("record: {e}")))
        }
        v => Err(corrupt(format!("unknown record version {v}"))),
    }
}

/// The entries of a volume-keyed table after volume `after` (all, if
/// none), in order.
fn range_after<V: redb::Value + 'static>(
    table: &impl ReadableTable<u32, V>,
    after: Option<u32>,
) -> Result<redb::Range<'_, u32, V>, DirectoryError> {
    Ok(match after {
        Some(after) => match after.checked_add(1) {
            Some(next) => table.range(next..)?,
            // Nothing comes after the last id: an empty range.
            None => table.range(u32::MAX..u32::MAX)?,
        },
        None => table.range::<u32>(..)?,
    })
}

/// Up to `limit` values of a volume-keyed table after volume `after`,
/// decoded.
fn volume_page<T: DeserializeOwned>(
    table: &impl ReadableTable<u32, &'static [u8]>,
    name: &'static str,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<T>, DirectoryError> {
    let mut values = Vec::new();
    for entry in range_after(table, after)?.take(limit) {
        let (_, value) = entry?;
        values.push(decode(name, value.value())?);
    }
    Ok(values)
}

/// Up to `limit` values of a `(volume, u64)`-keyed table after key
/// `after`, decoded.
fn page_after<T: DeserializeOwned>(
    table: &impl ReadableTable<(u32, u64), &'static [u8]>,
    name: &'static str,
    after: Option<(u32, u64)>,
    limit: usize,
) -> Result<Vec<T>, DirectoryError> {
    let range = match after {
        Some((volume, key)) => match key.checked_add(1) {
            Some(next) => table.range((volume, next)..)?,
            None => match volume.checked_add(1) {
                Some(next) => table.range((next, 0)..)?,
                None => return Ok(Vec::new()),
            },
        },
        None => table.range::<(u32, u64)>(..)?,
    };
    let mut values = Vec::new();
    for entry in range.take(limit) {
        let (_, value) = entry?;
        values.push(decode(name, value.value())?);
    }
    Ok(values)
}

/// The redb-backed directory. Cheap to share behind an `Arc`.
///
/// redb poisons a `Database` after any IO error (every later transaction
/// fails with `PreviousIo`), so a full disk would otherwise break the
/// directory until the process restarts. The backend therefore drops and
/// reopens the database after such an error (redb repairs the file on open)
/// and retries the operation once; while the disk is still full the caller
/// gets the IO error (507).
///
/// redb only checks for that poison in `begin_write` for errors that broke
/// the file itself, not for a failed commit or a failed file growth (it sets
/// its internal `needs_recovery` flag instead): a write transaction begun on
/// such a `Database` *panics* in `commit` (`assert!(!needs_recovery)`). So
/// the backend runs write transactions one at a time under
/// [`OpenDb::writer`], which also records that the handle is poisoned before
/// the next writer may begin; that writer then refuses without touching redb
/// and triggers the reopen.
#[derive(Debug)]
pub struct RedbDirectory {
    /// Every transaction holds a read guard for its whole life; a reopen takes
    /// the write guard, so no transaction (which would keep the old file and
    /// its lock open) is in flight when the old `Database` is dropped.
    state: RwLock<DbState>,
    path: PathBuf,
}

#[derive(Debug)]
struct DbState {
    /// `None` after a reopen failed (disk still full); the next operation
    /// tries again.
    db: Option<OpenDb>,
    /// Bumped on every reopen, so that callers which failed on the same
    /// poisoned instance reopen it only once between them.
    generation: u64,
}

/// One opened `Database` and its writer lock.
#[derive(Debug)]
struct OpenDb {
    db: Database,
    /// Held from before `begin_write` until the transaction's outcome is
    /// known (redb allows one writer at a time anyway, so this costs no
    /// concurrency). `Some(kind)` once a write failed in a way that poisons
    /// `db`, with the kind of the IO error that did it; only a reopen (a new
    /// `OpenDb`) clears it.
    writer: Mutex<Option<ErrorKind>>,
}

impl OpenDb {
    fn new(db: Database) -> Self {
        Self {
            db,
            writer: Mutex::new(None),
        }
    }
}

/// Whether `err` leaves redb's `Database` poisoned (or is the poison itself),
/// so that only dropping and reopening it can make progress.
fn needs_reopen(err: &DirectoryError) -> bool {
    matches!(
        err,
        DirectoryError::Database(e) if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo)
    )
}

/// The IO error kind behind a [`needs_reopen`] error, remembered as the
/// poison of the handle.
fn poison_kind(err: &DirectoryError) -> ErrorKind {
    match err {
        DirectoryError::Database(e) => match &**e {
            redb::Error::Io(io) => io.kind(),
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    }
}

/// The answer of a write refused because an earlier write poisoned the
/// handle: an IO error of the same kind (so a full disk stays a 507), which
/// [`needs_reopen`] recognises, so `with_db` reopens and retries.
fn poisoned_error(kind: ErrorKind) -> DirectoryError {
    DirectoryError::Database(Box::new(redb::Error::Io(std::io::Error::new(
        kind,
        format!("an earlier directory write failed ({kind}); the database must be reopened"),
    ))))
}

/// Describes a caught panic payload for the log.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

impl RedbDirectory {
    /// Opens (or creates) `data_dir/directory.redb`, creating `data_dir` if
    /// needed, and checks the file's format marker.
    pub fn open(data_dir: &Path) -> Result<Self, DirectoryError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DIRECTORY_FILE_NAME);
        let db = Database::create(&path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let existing = meta
                .get(META_FORMAT)?
                .map(|v| decode::<String>("meta", v.value()));
            match existing {
                None => {
                    meta.insert(META_FORMAT, encode(&DIRECTORY_FORMAT_NAME).as_slice())?;
                }
                Some(Ok(name)) if name == DIRECTORY_FORMAT_NAME => {}
                Some(Ok(name)) => {
                    return Err(DirectoryError::Corrupt {
                        table: "meta",
                        message: format!("not a directory file (format {name:?})"),
                    });
                }
                Some(Err(e)) => return Err(e),
            }
            txn.open_table(NODES)?;
            txn.open_table(VOLUMES)?;
            txn.open_table(LEASES)?;
            txn.open_table(WARM_VOLUMES)?;
            txn.open_table(MIGRATION_JOBS)?;
            txn.open_table(damaged::DAMAGED_NEEDLES)?;
            txn.open_table(rebuilds::REBUILD_JOBS)?;
            txn.open_table(geo::DROPPED_COMPANIONS)?;
        }
        txn.commit()?;
        Ok(Self {
            state: RwLock::new(DbState {
                db: Some(OpenDb::new(db)),
                generation: 0,
            }),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the database; if it fails with an error that poisons
    /// redb, reopens the database and runs `op` once more.
    ///
    /// Retrying is safe: `op` is one whole transaction that re-reads its
    /// inputs, so even if the failed commit did reach the disk the retry
    /// builds on it instead of repeating it blindly, and the caller was
    /// never told that the first attempt succeeded.
    fn with_db<T>(
        &self,
        op: impl Fn(&OpenDb) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let failed_generation = {
            let state = self.state.read();
            match &state.db {
                Some(db) => match self.run(db, &op) {
                    Err(e) if needs_reopen(&e) => {
                        tracing::warn!(
                            path = %self.path.display(),
                            error = %e,
                            "directory database failed; reopening it"
                        );
                        state.generation
                    }
                    result => return result,
                },
                None => state.generation,
            }
        };
        let mut state = self.state.write();
        // Someone else may have reopened it meanwhile; a failed reopen left
        // `None`, so that one is tried again.
        if state.generation == failed_generation || state.db.is_none() {
            // Drop first: the old handle holds redb's file lock.
            state.db = None;
            state.generation += 1;
            // `open`, not `create`: a vanished file must not come back empty.
            state.db = Some(OpenDb::new(Database::open(&self.path)?));
            tracing::info!(path = %self.path.display(), "directory database reopened");
        }
        let state = RwLockWriteGuard::downgrade(state);
        match &state.db {
            Some(db) => self.run(db, &op),
            None => Err(DirectoryError::Internal(
                "directory database is closed after a failed reopen".into(),
            )),
        }
    }

    /// Runs `op`, turning a panic inside redb into an error that makes
    /// `with_db` reopen the database.
    ///
    /// redb asserts (panics) instead of returning `PreviousIo` when a write
    /// transaction commits on a `Database` that an earlier IO error left in
    /// need of recovery. `write` keeps such a transaction from beginning, but
    /// should any path still reach redb's assertion, the caller gets the
    /// reopen-and-retry (or a clean error), not a panic that kills the
    /// blocking task and answers "panicked". Unwind safety: after a panic
    /// the handle is always dropped and reopened, nothing of it is reused.
    fn run<T>(
        &self,
        db: &OpenDb,
        op: &impl Fn(&OpenDb) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        catch_unwind(AssertUnwindSafe(|| op(db))).unwrap_or_else(|payload| {
            // Whatever redb was doing, the handle may be inconsistent: make
            // every later writer on it refuse until the reopen.
            db.writer.lock().get_or_insert(ErrorKind::Other);
            Err(self.panicked(&*payload))
        })
    }

    /// Logs a panic caught from redb and returns the error that makes
    /// `with_db` reopen the database.
    fn panicked(&self, payload: &(dyn std::any::Any + Send)) -> DirectoryError {
        tracing::warn!(
            path = %self.path.display(),
            panic = %panic_message(payload),
            "redb panicked on a directory operation; reopening the database"
        );
        DirectoryError::Database(Box::new(redb::Error::PreviousIo))
    }

    /// Runs `f` in one write transaction and commits it if `f` succeeds.
    /// A failed commit is an error: nothing is acknowledged.
    fn write<T>(
        &self,
        f: impl Fn(&WriteTransaction) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.with_db(|open| {
            // Held until the outcome is known: a writer that failed marks the
            // handle poisoned before the next one can begin on it.
            let mut poison = open.writer.lock();
            if let Some(kind) = *poison {
                return Err(poisoned_error(kind));
            }
            // redb marks the handle for recovery after any failed commit,
            // whatever the error.
            let mut commit_failed = false;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let txn = open.db.begin_write()?;
                let value = f(&txn)?;
                txn.commit().inspect_err(|_| commit_failed = true)?;
                Ok(value)
            }));
            match result {
                Ok(Err(e)) if commit_failed || needs_reopen(&e) => {
                    *poison = Some(poison_kind(&e));
                    Err(e)
                }
                Ok(result) => result,
                // redb asserted (see `run`): poison the handle before the
                // writer lock is released.
                Err(payload) => {
                    *poison = Some(ErrorKind::Other);
                    Err(self.panicked(&*payload))
                }
            }
        })
    }

    /// Runs `f` in one read transaction.
    fn read<T>(
        &self,
        f: impl Fn(&ReadTransaction) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.with_db(|open| f(&open.db.begin_read()?))
    }
}

fn get_node(txn: &WriteTransaction, id: &str) -> Result<Option<NodeRecord>, DirectoryError> {
    let table = txn.open_table(NODES)?;
    let value = table.get(id)?;
    value.map(|v| decode("nodes", v.value())).transpose()
}

fn put_node(txn: &WriteTransaction, node: &NodeRecord) -> Result<(), DirectoryError> {
    txn.open_table(NODES)?
        .insert(node.id.as_str(), encode(node).as_slice())?;
    Ok(())
}

fn all_nodes(table: &impl ReadableTable<&'static str, &'static [u8]>) -> NodesResult {
    let mut nodes = Vec::new();
    for entry in table.iter()? {
        let (_, v) = entry?;
        nodes.push(decode("nodes", v.value())?);
    }
    Ok(nodes)
}

type NodesResult = Result<Vec<NodeRecord>, DirectoryError>;
type VolumesResult = Result<Vec<LogicalVolume>, DirectoryError>;

fn all_volumes(table: &impl ReadableTable<u32, &'static [u8]>) -> VolumesResult {
    let mut volumes = Vec::new();
    for entry in table.iter()? {
        let (_, v) = entry?;
        volumes.push(decode("volumes", v.value())?);
    }
    Ok(volumes)
}

/// Takes the next volume id.
fn next_volume_id(txn: &WriteTransaction) -> Result<u32, DirectoryError> {
    let mut meta = txn.open_table(META)?;
    let counters = match meta.get(META_COUNTERS)? {
        Some(v) => decode::<Counters>("meta", v.value())?,
        None => Counters { next_volume_id: 1 },
    };
    let id = counters.next_volume_id;
    let next_volume_id = id
        .checked_add(1)
        .ok_or_else(|| DirectoryError::Exhausted("volume ids".into()))?;
    meta.insert(
        META_COUNTERS,
        encode(&Counters { next_volume_id }).as_slice(),
    )?;
    Ok(id)
}

fn get_volume(txn: &WriteTransaction, id: u32) -> Result<LogicalVolume, DirectoryError> {
    let table = txn.open_table(VOLUMES)?;
    let value = table.get(id)?;
    match value {
        Some(v) => decode("volumes", v.value()),
        None => Err(DirectoryError::UnknownVolume { id }),
    }
}

fn put_volume(txn: &WriteTransaction, volume: &LogicalVolume) -> Result<(), DirectoryError> {
    debug_assert!(
        volume
            .stale_replicas
            .iter()
            .all(|n| volume.replicas.contains(n))
    );
    debug_assert!(volume.missed_deletes.iter().all(|n| volume.is_stale(n)));
    txn.open_table(VOLUMES)?
        .insert(volume.id, encode(volume).as_slice())?;
    Ok(())
}

/// `NotAReplica` unless `node` holds a replica of `volume`.
/// `Ok` if `volume` is being sealed under attempt `generation`.
fn check_attempt(volume: &LogicalVolume, generation: u64) -> Result<(), DirectoryError> {
    if volume.state != VolumeState::Sealing || volume.last_generation != generation {
        return Err(DirectoryError::InvalidTransition {
            volume: volume.id,
            from: volume.state,
            to: VolumeState::Warm,
            reason: format!(
                "generation {generation} is not the seal attempt in progress (latest {})",
                volume.last_generation
            ),
        });
    }
    Ok(())
}

/// The warm record of `volume` if it is of `generation`.
fn warm_of(volume: &mut LogicalVolume, generation: u64) -> Result<&mut WarmVolume, DirectoryError> {
    let id = volume.id;
    volume
        .warm
        .as_mut()
        .filter(|w| w.generation == generation)
        .ok_or_else(|| {
            DirectoryError::BadRequest(format!(
                "volume {id} has no warm record of generation {generation}"
            ))
        })
}

/// Refuses a job claim without an owner of 1 to 128 bytes or a lease.
fn check_claim(owner: &str, lease_ms: u64) -> Result<(), DirectoryError> {
    if owner.is_empty() || owner.len() > 128 || lease_ms == 0 {
        return Err(DirectoryError::BadRequest(
            "a claim needs an owner of 1 to 128 bytes and a positive lease".into(),
        ));
    }
    Ok(())
}

/// Refuses a node that is not a registered f4 storage node.
fn ensure_storage_node(nodes: &[NodeRecord], node: &str) -> Result<(), DirectoryError> {
    if nodes
        .iter()
        .any(|n| n.id == node && n.role == NodeRole::F4Storage)
    {
        return Ok(());
    }
    Err(DirectoryError::BadRequest(format!(
        "{node} is not a registered f4 storage node"
    )))
}

fn ensure_replica(volume: &LogicalVolume, node: &str) -> Result<(), DirectoryError> {
    if volume.replicas.iter().any(|r| r == node) {
        Ok(())
    } else {
        Err(DirectoryError::NotAReplica {
            volume: volume.id,
            node: node.to_owned(),
        })
    }
}

/// Adds `node` to the volume's stale set (and its missed-delete set, with
/// `missed_delete`), demotes a writable volume and bumps the repair epoch.
/// Returns whether a mark or the state changed.
fn make_stale(volume: &mut LogicalVolume, node: &str, missed_delete: bool) -> bool {
    let mut changed = false;
    volume.repair_epoch += 1;
    if !volume.is_stale(node) {
        volume.stale_replicas.push(node.to_owned());
        changed = true;
    }
    if missed_delete && !volume.missed_delete(node) {
        volume.missed_deletes.push(node.to_owned());
        changed = true;
    }
    if volume.state == VolumeState::Writable {
        volume.state = VolumeState::ReadOnly;
        changed = true;
    }
    changed
}

/// Picks one store node in each of [`REPLICA_COUNT`] racks: in each rack the
/// node with the fewest replicas, then the racks whose pick has the fewest.
/// Ties break by id and rack name, so placement is deterministic.
fn place_replicas(
    nodes: &[NodeRecord],
    volumes: &[LogicalVolume],
) -> Result<Vec<String>, DirectoryError> {
    let mut load: HashMap<&str, usize> = HashMap::new();
    for volume in volumes {
        for replica in &volume.replicas {
            *load.entry(replica.as_str()).or_default() += 1;
        }
    }
    let mut best_per_rack: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for node in nodes {
        if node.role != NodeRole::Store || !node.is_up() {
            continue;
        }
        let candidate = (
            load.get(node.id.as_str()).copied().unwrap_or(0),
            node.id.as_str(),
        );
        let best = best_per_rack.entry(node.rack.as_str()).or_insert(candidate);
        if candidate < *best {
            *best = candidate;
        }
    }
    if best_per_rack.len() < REPLICA_COUNT {
        return Err(DirectoryError::NotEnoughRacks {
            needed: REPLICA_COUNT,
            available: best_per_rack.len(),
        });
    }
    let mut picks: Vec<((usize, &str), &str)> = best_per_rack
        .into_iter()
        .map(|(rack, best)| (best, rack))
        .collect();
    picks.sort_by(|a, b| (a.0.0, a.1).cmp(&(b.0.0, b.1)));
    Ok(picks
        .into_iter()
        .take(REPLICA_COUNT)
        .map(|((_, id), _)| id.to_owned())
        .collect())
}

impl Directory for RedbDirectory {
    fn register_node(
        &self,
        node: NodeRegistration,
        now_ms: u64,
    ) -> Result<NodeRecord, DirectoryError> {
        if !valid_node_id(&node.id) {
            return Err(DirectoryError::BadRequest(format!(
                "node id {:?}: 1 to 128 of [A-Za-z0-9._-]",
                node.id
            )));
        }
        if node.address.is_empty() {
            return Err(DirectoryError::BadRequest("empty node address".into()));
        }
        let record = NodeRecord {
            id: node.id,
            role: node.role,
            rack: node.rack,
            datacenter: node.datacenter,
            address: node.address,
            last_heartbeat_ms: now_ms,
            state: NodeState::Up,
        };
        self.write(|txn| put_node(txn, &record))?;
        Ok(record)
    }

    fn heartbeat(&self, id: &str, now_ms: u64) -> Result<NodeRecord, DirectoryError> {
        self.write(|txn| {
            let mut node = get_node(txn, id)?
                .ok_or_else(|| DirectoryError::UnknownNode { id: id.to_owned() })?;
            node.last_heartbeat_ms = node.last_heartbeat_ms.max(now_ms);
            node.state = NodeState::Up;
            put_node(txn, &node)?;
            Ok(node)
        })
    }

    fn list_nodes(&self) -> Result<Vec<NodeRecord>, DirectoryError> {
        self.read(|txn| all_nodes(&txn.open_table(NODES)?))
    }

    fn remove_node(&self, id: &str) -> Result<NodeRecord, DirectoryError> {
        self.write(|txn| {
            let node = get_node(txn, id)?
                .ok_or_else(|| DirectoryError::UnknownNode { id: id.to_owned() })?;
            let in_use = |reason: String| DirectoryError::NodeInUse {
                id: id.to_owned(),
                reason,
            };
            if node.is_up() {
                return Err(in_use(
                    "it is up: stop it first, and remove it once the directory has marked it down"
                        .into(),
                ));
            }
            // Bind first: the table must be closed before the node's is written.
            let volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            if let Some((volume, part)) = volumes
                .iter()
                .find_map(|v| v.part_on(id).map(|part| (v.id, part)))
            {
                return Err(in_use(format!("volume {volume} keeps {part} on it")));
            }
            txn.open_table(NODES)?.remove(id)?;
            Ok(node)
        })
    }

    fn mark_down_expired(
        &self,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<Vec<LogicalVolume>, DirectoryError> {
        self.write(|txn| {
            let nodes = all_nodes(&txn.open_table(NODES)?)?;
            let mut expired = BTreeSet::new();
            for mut node in nodes {
                if node.is_up() && now_ms.saturating_sub(node.last_heartbeat_ms) > timeout_ms {
                    node.state = NodeState::Down;
                    put_node(txn, &node)?;
                    expired.insert(node.id);
                }
            }
            if expired.is_empty() {
                return Ok(Vec::new());
            }
            let mut changed = Vec::new();
            // Bind first: the table must be closed before `put_volume` reopens it.
            let volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            for mut volume in volumes {
                let down: Vec<String> = volume
                    .replicas
                    .iter()
                    .filter(|r| expired.contains(*r))
                    .cloned()
                    .collect();
                let mut dirty = false;
                for node in &down {
                    dirty |= make_stale(&mut volume, node, false);
                }
                if dirty {
                    put_volume(txn, &volume)?;
                    changed.push(volume);
                }
            }
            Ok(changed)
        })
    }

    fn allocate_volume(&self, now_ms: u64) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let nodes = all_nodes(&txn.open_table(NODES)?)?;
            let volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            let replicas = place_replicas(&nodes, &volumes)?;
            let id = next_volume_id(txn)?;
            let volume = LogicalVolume::writable(id, replicas, now_ms);
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn volume(&self, id: u32) -> Result<LogicalVolume, DirectoryError> {
        self.read(|txn| {
            let table = txn.open_table(VOLUMES)?;
            let value = table.get(id)?;
            match value {
                Some(v) => decode("volumes", v.value()),
                None => Err(DirectoryError::UnknownVolume { id }),
            }
        })
    }

    fn volumes(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<LogicalVolume>, DirectoryError> {
        self.read(|txn| volume_page(&txn.open_table(VOLUMES)?, "volumes", after, limit))
    }

    fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            let refuse = |reason: &str| DirectoryError::InvalidTransition {
                volume: id,
                from: volume.state,
                to: state,
                reason: reason.to_owned(),
            };
            match (volume.state, state) {
                (from, to) if from == to => return Ok(volume),
                (VolumeState::Sealing | VolumeState::Warm, _)
                | (_, VolumeState::Sealing | VolumeState::Warm) => {
                    return Err(refuse("the seal calls move a volume into the warm tier"));
                }
                (VolumeState::Locked, _) => return Err(refuse("locked is final")),
                (_, VolumeState::Locked) => volume.locked_ms = Some(now_ms),
                (_, VolumeState::Writable) => {
                    if !volume.stale_replicas.is_empty() {
                        return Err(refuse("a replica is stale"));
                    }
                    for replica in &volume.replicas {
                        let up = get_node(txn, replica)?.is_some_and(|n| n.is_up());
                        if !up {
                            return Err(refuse(&format!("replica node {replica} is not up")));
                        }
                    }
                }
                (_, VolumeState::ReadOnly) => {}
            }
            volume.state = state;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn mark_replica_stale(
        &self,
        id: u32,
        node: &str,
        missed_delete: bool,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            ensure_replica(&volume, node)?;
            // The epoch moves even when the marks do not: a resync running
            // now must not clear what this report is about.
            make_stale(&mut volume, node, missed_delete);
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn clear_replica_stale(
        &self,
        id: u32,
        node: &str,
        epoch: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            ensure_replica(&volume, node)?;
            if volume.repair_epoch == epoch && volume.is_stale(node) {
                volume.stale_replicas.retain(|r| r != node);
                volume.missed_deletes.retain(|r| r != node);
                put_volume(txn, &volume)?;
            }
            Ok(volume)
        })
    }

    fn discard_volume(&self, id: u32) -> Result<(), DirectoryError> {
        self.write(|txn| {
            get_volume(txn, id)?;
            if txn.open_table(LEASES)?.get(id)?.is_some() {
                return Err(DirectoryError::VolumeInUse { volume: id });
            }
            txn.open_table(VOLUMES)?.remove(id)?;
            Ok(())
        })
    }

    fn report_damaged_needle(
        &self,
        id: u32,
        key: u64,
        node: &str,
        cookie: Option<u32>,
        now_ms: u64,
    ) -> Result<DamagedNeedle, DirectoryError> {
        self.report_damaged(id, key, node, cookie, now_ms)
    }

    fn damaged_needles(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<DamagedNeedle>, DirectoryError> {
        self.list_damaged(after, limit)
    }

    fn resolve_damaged_needle(
        &self,
        id: u32,
        key: u64,
        node: &str,
    ) -> Result<Option<DamagedNeedle>, DirectoryError> {
        self.resolve_damaged(id, key, node)
    }

    fn mark_needle_lost(&self, id: u32, key: u64) -> Result<DamagedNeedle, DirectoryError> {
        self.mark_lost(id, key)
    }

    fn own_volumes(
        &self,
        owner: &str,
        instance: &str,
        claims: &[VolumeClaim],
        lease_ms: u64,
        now: u64,
    ) -> Result<Vec<LogicalVolume>, DirectoryError> {
        if owner.is_empty() || claims.len() > OWNERSHIP_CLAIMS_MAX || lease_ms == 0 {
            return Err(DirectoryError::BadRequest(format!(
                "an ownership claim names its owner, a positive lease and at most \
                 {OWNERSHIP_CLAIMS_MAX} volumes"
            )));
        }
        let until_ms = now.saturating_add(lease_ms);
        self.write(|txn| {
            let mut volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            let mut owned = Vec::new();
            for volume in &mut volumes {
                if volume.state != VolumeState::Writable {
                    continue;
                }
                let claim = claims.iter().find(|c| c.volume == volume.id);
                let expired = volume.owner.as_ref().is_none_or(|o| o.until_ms <= now);
                let ours = volume
                    .owner
                    .as_ref()
                    .is_some_and(|o| o.id == owner && (o.instance == instance || expired));
                if !(ours || (claim.is_some() && expired)) {
                    continue;
                }
                volume.owner = Some(VolumeOwner {
                    id: owner.to_owned(),
                    instance: instance.to_owned(),
                    until_ms,
                });
                if let Some(claim) = claim {
                    volume.last_write_ms = volume.last_write_ms.max(claim.last_write_ms);
                }
                put_volume(txn, volume)?;
                owned.push(volume.clone());
            }
            Ok(owned)
        })
    }

    fn lease_keys(&self, id: u32, count: u64) -> Result<KeyLease, DirectoryError> {
        if count == 0 || count > MAX_LEASE_COUNT {
            return Err(DirectoryError::BadRequest(format!(
                "lease count {count}: must be 1 to {MAX_LEASE_COUNT}"
            )));
        }
        self.write(|txn| {
            let volume = get_volume(txn, id)?;
            if volume.state != VolumeState::Writable {
                return Err(DirectoryError::NotWritable {
                    volume: id,
                    state: volume.state,
                });
            }
            let mut leases = txn.open_table(LEASES)?;
            let start = match leases.get(id)? {
                Some(v) => decode::<LeaseRecord>("leases", v.value())?.next_key,
                None => FIRST_KEY,
            };
            let end = start
                .checked_add(count)
                .ok_or_else(|| DirectoryError::Exhausted(format!("keys of volume {id}")))?;
            leases.insert(id, encode(&LeaseRecord { next_key: end }).as_slice())?;
            Ok(KeyLease { start, end })
        })
    }

    fn update_volume_sizes(
        &self,
        id: u32,
        size_bytes: u64,
        needle_count: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            volume.size_bytes = size_bytes;
            volume.needle_count = needle_count;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn begin_seal(&self, id: u32) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            if !matches!(volume.state, VolumeState::Locked | VolumeState::Sealing) {
                return Err(DirectoryError::InvalidTransition {
                    volume: id,
                    from: volume.state,
                    to: VolumeState::Sealing,
                    reason: "only a locked volume is sealed".into(),
                });
            }
            volume.state = VolumeState::Sealing;
            volume.last_generation += 1;
            volume.warm = None;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn place_warm(
        &self,
        id: u32,
        request: PlaceRequest,
        allow_fewer_racks: bool,
    ) -> Result<LogicalVolume, DirectoryError> {
        let layout = request
            .geometry
            .layout()
            .map_err(|e| DirectoryError::BadRequest(e.to_string()))?;
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            check_attempt(&volume, request.generation)?;
            let nodes = all_nodes(&txn.open_table(NODES)?)?;
            let volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            let placed = super::warm::place(
                &nodes,
                &volumes,
                super::warm::Wanted {
                    stripe_count: layout.stripe_count(),
                    k: usize::from(request.geometry.data_blocks),
                    m: usize::from(request.geometry.parity_blocks),
                    holder_count: usize::from(request.geometry.parity_blocks) + 1,
                    datacenters: &request.datacenters,
                    allow_fewer_racks,
                },
            )?;
            let mut holders = placed.holders;
            holders.extend(super::warm::remote_holders(
                &nodes,
                &volumes,
                &placed.datacenter,
                f4::node::seal::REMOTE_JOURNAL_HOLDERS,
            ));
            volume.warm = Some(WarmVolume {
                generation: request.generation,
                geometry: request.geometry,
                stripes: placed.stripes,
                journal_holders: holders,
                stale_holders: Vec::new(),
                tolerated_rack_losses: placed.tolerated_rack_losses,
                needle_count: request.needle_count,
                damaged_blocks: Vec::new(),
                journal_open: false,
                datacenter: placed.datacenter,
            });
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn commit_warm(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            if volume.state == VolumeState::Warm
                && volume
                    .warm
                    .as_ref()
                    .is_some_and(|w| w.generation == generation)
            {
                return Ok(volume);
            }
            check_attempt(&volume, generation)?;
            if volume.warm.is_none() {
                return Err(DirectoryError::BadRequest(format!(
                    "volume {id} generation {generation} is not placed yet"
                )));
            }
            volume.state = VolumeState::Warm;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn open_journal(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            check_attempt(&volume, generation)?;
            let warm = volume.warm.as_mut().ok_or_else(|| {
                DirectoryError::BadRequest(format!(
                    "volume {id} generation {generation} is not placed yet"
                ))
            })?;
            if !warm.journal_open {
                warm.journal_open = true;
                put_volume(txn, &volume)?;
            }
            Ok(volume)
        })
    }

    fn abort_seal(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            check_attempt(&volume, generation)?;
            volume.state = VolumeState::Locked;
            volume.warm = None;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn set_holder_stale(
        &self,
        id: u32,
        node: &str,
        fresh_at: Option<u64>,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            let stale = match fresh_at {
                None => {
                    volume.repair_epoch += 1;
                    true
                }
                Some(epoch) if epoch == volume.repair_epoch => false,
                Some(_) => return Ok(volume),
            };
            let warm = volume.warm.as_mut().ok_or_else(|| {
                DirectoryError::BadRequest(format!("volume {id} has no warm record"))
            })?;
            if !warm.journal_holders.iter().any(|h| h == node) {
                return Err(DirectoryError::NotAReplica {
                    volume: id,
                    node: node.to_owned(),
                });
            }
            let marked = warm.stale_holders.iter().any(|h| h == node);
            if stale && !marked {
                warm.stale_holders.push(node.to_owned());
            } else if !stale && marked {
                warm.stale_holders.retain(|h| h != node);
            }
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn report_damaged_block(
        &self,
        id: u32,
        request: &DamagedBlockRequest,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            let warm = warm_of(&mut volume, request.generation)?;
            let known = warm
                .stripes
                .get(request.stripe as usize)
                .and_then(|s| s.get(request.block as usize));
            if known.is_none() {
                return Err(DirectoryError::BadRequest(format!(
                    "volume {id} has no block {} in stripe {}",
                    request.block, request.stripe
                )));
            }
            // A report about a copy the record no longer names (read before
            // a rebuild moved the block) is about nothing that is served.
            if known.is_some_and(|node| *node != request.node) {
                return Ok(volume);
            }
            let recorded = warm
                .damaged_blocks
                .iter_mut()
                .find(|d| (d.stripe, d.block) == (request.stripe, request.block));
            match recorded {
                // Silent damage found later makes the block no source.
                Some(damage) if request.silent && !damage.silent => damage.silent = true,
                Some(_) => return Ok(volume),
                None => warm.damaged_blocks.push(DamagedBlock {
                    stripe: request.stripe,
                    block: request.block,
                    node: request.node.clone(),
                    reported_ms: now_ms,
                    silent: request.silent,
                }),
            }
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn record_rebuilt_block(
        &self,
        id: u32,
        request: &RebuiltBlockRequest,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            rebuilds::ensure_planned(txn, id, request, now_ms)?;
            let nodes = all_nodes(&txn.open_table(NODES)?)?;
            ensure_storage_node(&nodes, &request.node)?;
            let warm = warm_of(&mut volume, request.generation)?;
            let conflict =
                |reason: String| DirectoryError::PlacementConflict { volume: id, reason };
            if let Some(other) = warm.other_block_on(request.stripe, request.block, &request.node) {
                return Err(conflict(format!(
                    "{} holds block {}.{other} already",
                    request.node, request.stripe
                )));
            }
            let stripe = warm
                .stripes
                .get_mut(request.stripe as usize)
                .filter(|s| (request.block as usize) < s.len())
                .ok_or_else(|| {
                    DirectoryError::BadRequest(format!(
                        "volume {id} has no block {} in stripe {}",
                        request.block, request.stripe
                    ))
                })?;
            let current = &stripe[request.block as usize];
            if *current != request.from {
                return Err(conflict(format!(
                    "block {}.{} is on {current} now, not {}",
                    request.stripe, request.block, request.from
                )));
            }
            stripe[request.block as usize].clone_from(&request.node);
            warm.damaged_blocks.retain(|d| {
                (d.stripe, d.block) != (request.stripe, request.block)
                    || d.reported_ms > request.started_ms
            });
            warm.tolerated_rack_losses = super::warm::stripes_tolerance(warm, &nodes);
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn replace_holder(
        &self,
        id: u32,
        node: &str,
        request: &ReplaceHolderRequest,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.write(|txn| {
            let mut volume = get_volume(txn, id)?;
            ensure_storage_node(&all_nodes(&txn.open_table(NODES)?)?, &request.node)?;
            let warm = warm_of(&mut volume, request.generation)?;
            if warm.journal_holders.contains(&request.node) {
                return Err(DirectoryError::PlacementConflict {
                    volume: id,
                    reason: format!("{} is a journal holder already", request.node),
                });
            }
            if !warm.journal_holders.iter().any(|h| h == node) {
                return Err(DirectoryError::NotAReplica {
                    volume: id,
                    node: node.to_owned(),
                });
            }
            // The fresh holders are the ones known to hold every
            // acknowledged delete: the last of them is never dropped, or
            // merging the others (stale, or new) could bring a delete back;
            // with none left, the union of all holders is, and none goes.
            if warm.fresh_holders().all(|h| h == node) {
                return Err(DirectoryError::PlacementConflict {
                    volume: id,
                    reason: format!(
                        "{node} is the last fresh journal holder (or none is fresh): deletes \
                         only it holds would be lost"
                    ),
                });
            }
            let holder = warm
                .journal_holders
                .iter_mut()
                .find(|h| *h == node)
                .expect("checked above");
            holder.clone_from(&request.node);
            warm.stale_holders.retain(|h| h != node);
            warm.stale_holders.push(request.node.clone());
            volume.repair_epoch += 1;
            put_volume(txn, &volume)?;
            Ok(volume)
        })
    }

    fn claim_migration(
        &self,
        id: u32,
        owner: &str,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<MigrationJob, DirectoryError> {
        check_claim(owner, lease_ms)?;
        self.write(|txn| {
            get_volume(txn, id)?;
            let mut table = txn.open_table(MIGRATION_JOBS)?;
            let held: Option<MigrationJob> = match table.get(id)? {
                Some(v) => Some(decode("migration_jobs", v.value())?),
                None => None,
            };
            let job = match held {
                // A live claim, whoever holds it (the same owner asking
                // twice would run the job twice): renewals are steps.
                Some(job) if !job.step.is_final() && job.lease_until_ms > now_ms => {
                    return Err(DirectoryError::JobClaimed {
                        volume: id,
                        job: "migration".into(),
                        owner: job.owner,
                        until_ms: job.lease_until_ms,
                    });
                }
                // Taken over where the last owner left it (its claim ran
                // out), or started again once over.
                Some(job) => MigrationJob {
                    step: if job.step.is_final() {
                        MigrationStep::Locked
                    } else {
                        job.step
                    },
                    owner: owner.to_owned(),
                    lease_until_ms: now_ms.saturating_add(lease_ms),
                    updated_ms: now_ms,
                    attempts: job.attempts.saturating_add(1),
                    ..job
                },
                None => MigrationJob {
                    volume: id,
                    step: MigrationStep::Locked,
                    owner: owner.to_owned(),
                    lease_until_ms: now_ms.saturating_add(lease_ms),
                    started_ms: now_ms,
                    updated_ms: now_ms,
                    attempts: 1,
                    last_error: None,
                },
            };
            table.insert(id, encode(&job).as_slice())?;
            Ok(job)
        })
    }

    fn update_migration(
        &self,
        id: u32,
        request: &StepRequest,
        now_ms: u64,
    ) -> Result<MigrationJob, DirectoryError> {
        self.write(|txn| {
            let mut table = txn.open_table(MIGRATION_JOBS)?;
            let mut job: MigrationJob = match table.get(id)? {
                Some(v) => decode("migration_jobs", v.value())?,
                None => {
                    return Err(DirectoryError::BadRequest(format!(
                        "volume {id} has no migration job"
                    )));
                }
            };
            if job.owner != request.owner || job.step.is_final() {
                return Err(DirectoryError::JobClaimed {
                    volume: id,
                    job: "migration".into(),
                    owner: job.owner,
                    until_ms: job.lease_until_ms,
                });
            }
            job.step = request.step;
            job.updated_ms = now_ms;
            if request.step.is_final() {
                job.owner.clear();
                job.lease_until_ms = 0;
                job.last_error = request.error.clone();
            } else {
                job.lease_until_ms = now_ms.saturating_add(request.lease_ms);
            }
            table.insert(id, encode(&job).as_slice())?;
            Ok(job)
        })
    }

    fn create_companion(
        &self,
        request: &CompanionRequest,
        allow_fewer_racks: bool,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        self.create_companion_record(request, allow_fewer_racks, now_ms)
    }

    fn drop_companion(
        &self,
        id: u32,
        owner: Option<&str>,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        self.drop_companion_record(id, owner, now_ms)
    }

    fn dropped_companions(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<u32>, DirectoryError> {
        self.dropped_companion_ids(after, limit)
    }

    fn claim_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &RebuildClaimRequest,
        now_ms: u64,
    ) -> Result<RebuildJob, DirectoryError> {
        self.claim_rebuild_job(id, stripe, request, now_ms)
    }

    fn renew_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &RenewRequest,
        now_ms: u64,
    ) -> Result<RebuildJob, DirectoryError> {
        self.renew_rebuild_job(id, stripe, request, now_ms)
    }

    fn end_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &EndRequest,
        now_ms: u64,
    ) -> Result<Option<RebuildJob>, DirectoryError> {
        self.end_rebuild_job(id, stripe, request, now_ms)
    }

    fn drop_rebuild(
        &self,
        id: u32,
        stripe: u64,
        attempts: Option<u32>,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        self.drop_rebuild_job(id, stripe, attempts, now_ms)
    }

    fn rebuilds(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<RebuildJob>, DirectoryError> {
        self.list_rebuild_jobs(after, limit)
    }

    fn migrations(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<MigrationJob>, DirectoryError> {
        self.read(|txn| {
            volume_page(
                &txn.open_table(MIGRATION_JOBS)?,
                "migration_jobs",
                after,
                limit,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_record_version_is_corrupt() {
        let bytes = br#"{"v":99,"data":{"next_key":5}}"#;
        let err = decode::<LeaseRecord>("leases", bytes).expect_err("must refuse");
        assert!(matches!(
            err,
            DirectoryError::Corrupt {
                table: "leases",
                ..
            }
        ));
        let ok: LeaseRecord =
            decode("leases", &encode(&LeaseRecord { next_key: 5 })).expect("roundtrip");
        assert_eq!(ok.next_key, 5);
    }
}
