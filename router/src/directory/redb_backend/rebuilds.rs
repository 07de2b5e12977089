//! The `rebuild_jobs` table of [`RedbDirectory`]: key `(volume, stripe)`,
//! value a [`RebuildJob`] in the version envelope.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{
    RedbDirectory, all_nodes, check_claim, decode, encode, ensure_storage_node, get_volume,
    page_after,
};
use crate::directory::DirectoryError;
use crate::directory::types::{
    EndRequest, RebuildClaimRequest, RebuildJob, RebuiltBlockRequest, RenewRequest,
};

pub(super) const REBUILD_JOBS: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("rebuild_jobs");

const TABLE: &str = "rebuild_jobs";

fn get(txn: &WriteTransaction, id: u32, stripe: u64) -> Result<Option<RebuildJob>, DirectoryError> {
    let table = txn.open_table(REBUILD_JOBS)?;
    let value = table.get((id, stripe))?;
    value.map(|v| decode(TABLE, v.value())).transpose()
}

fn put(txn: &WriteTransaction, job: &RebuildJob) -> Result<(), DirectoryError> {
    txn.open_table(REBUILD_JOBS)?
        .insert((job.volume, job.stripe), encode(job).as_slice())?;
    Ok(())
}

fn claimed(job: &RebuildJob) -> DirectoryError {
    DirectoryError::JobClaimed {
        volume: job.volume,
        job: format!("stripe {} rebuild", job.stripe),
        owner: job.owner.clone(),
        until_ms: job.lease_until_ms,
    }
}

/// `owner`'s live job of stripe `stripe` of volume `id`.
fn held(
    txn: &WriteTransaction,
    id: u32,
    stripe: u64,
    owner: &str,
    now_ms: u64,
) -> Result<RebuildJob, DirectoryError> {
    let job = get(txn, id, stripe)?.ok_or_else(|| {
        DirectoryError::BadRequest(format!(
            "volume {id} has no rebuild job for stripe {stripe}"
        ))
    })?;
    if job.owner != owner || !job.is_claimed(now_ms) {
        return Err(claimed(&job));
    }
    Ok(job)
}

impl RedbDirectory {
    pub(super) fn claim_rebuild_job(
        &self,
        id: u32,
        stripe: u64,
        request: &RebuildClaimRequest,
        now_ms: u64,
    ) -> Result<RebuildJob, DirectoryError> {
        check_claim(&request.owner, request.lease_ms)?;
        self.write(|txn| {
            let volume = get_volume(txn, id)?;
            let nodes = all_nodes(&txn.open_table(super::NODES)?)?;
            let warm = volume
                .warm
                .as_ref()
                .filter(|w| w.generation == request.generation)
                .ok_or_else(|| {
                    DirectoryError::BadRequest(format!(
                        "volume {id} has no warm record of generation {}",
                        request.generation
                    ))
                })?;
            let members = warm.stripes.get(stripe as usize).ok_or_else(|| {
                DirectoryError::BadRequest(format!("volume {id} has no stripe {stripe}"))
            })?;
            if request.blocks.len() > members.len() {
                return Err(DirectoryError::BadRequest(format!(
                    "a rebuild names at most {} blocks",
                    members.len()
                )));
            }
            let conflict =
                |reason: String| DirectoryError::PlacementConflict { volume: id, reason };
            for (i, planned) in request.blocks.iter().enumerate() {
                let current = members.get(planned.block as usize).ok_or_else(|| {
                    DirectoryError::BadRequest(format!(
                        "stripe {stripe} of volume {id} has no block {}",
                        planned.block
                    ))
                })?;
                if request.blocks[..i].iter().any(|b| b.block == planned.block) {
                    return Err(DirectoryError::BadRequest(format!(
                        "block {} is named twice",
                        planned.block
                    )));
                }
                if *current != planned.from {
                    return Err(conflict(format!(
                        "block {stripe}.{} is on {current} now, not {}",
                        planned.block, planned.from
                    )));
                }
                ensure_storage_node(&nodes, &planned.to)?;
                let elsewhere = warm
                    .other_block_on(stripe, planned.block, &planned.to)
                    .is_some()
                    || request
                        .blocks
                        .iter()
                        .any(|b| b.block != planned.block && b.to == planned.to);
                if elsewhere {
                    return Err(conflict(format!(
                        "{} would hold two blocks of stripe {stripe}",
                        planned.to
                    )));
                }
            }
            let job = match get(txn, id, stripe)? {
                Some(job) if job.is_claimed(now_ms) => return Err(claimed(&job)),
                // A fence never replaces a job's plan.
                Some(job) if request.blocks.is_empty() => return Err(claimed(&job)),
                // Taken up again (it failed, or its claim ran out): the
                // caller resumes its plan when it still fits.
                Some(job) => RebuildJob {
                    generation: request.generation,
                    blocks: request.blocks.clone(),
                    balance: request.balance,
                    owner: request.owner.clone(),
                    lease_until_ms: now_ms.saturating_add(request.lease_ms),
                    updated_ms: now_ms,
                    attempts: job.attempts.saturating_add(1),
                    ..job
                },
                None => RebuildJob {
                    volume: id,
                    stripe,
                    generation: request.generation,
                    blocks: request.blocks.clone(),
                    balance: request.balance,
                    owner: request.owner.clone(),
                    lease_until_ms: now_ms.saturating_add(request.lease_ms),
                    started_ms: now_ms,
                    updated_ms: now_ms,
                    attempts: 1,
                    last_error: None,
                },
            };
            put(txn, &job)?;
            Ok(job)
        })
    }

    pub(super) fn renew_rebuild_job(
        &self,
        id: u32,
        stripe: u64,
        request: &RenewRequest,
        now_ms: u64,
    ) -> Result<RebuildJob, DirectoryError> {
        self.write(|txn| {
            let mut job = held(txn, id, stripe, &request.owner, now_ms)?;
            job.lease_until_ms = now_ms.saturating_add(request.lease_ms);
            job.updated_ms = now_ms;
            put(txn, &job)?;
            Ok(job)
        })
    }

    pub(super) fn end_rebuild_job(
        &self,
        id: u32,
        stripe: u64,
        request: &EndRequest,
        now_ms: u64,
    ) -> Result<Option<RebuildJob>, DirectoryError> {
        self.write(|txn| {
            let mut job = held(txn, id, stripe, &request.owner, now_ms)?;
            let Some(error) = &request.error else {
                txn.open_table(REBUILD_JOBS)?.remove((id, stripe))?;
                return Ok(None);
            };
            job.owner.clear();
            job.lease_until_ms = 0;
            job.updated_ms = now_ms;
            job.last_error = Some(error.clone());
            put(txn, &job)?;
            Ok(Some(job))
        })
    }

    pub(super) fn drop_rebuild_job(
        &self,
        id: u32,
        stripe: u64,
        attempts: Option<u32>,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        self.write(|txn| {
            match get(txn, id, stripe)? {
                Some(job)
                    if job.is_claimed(now_ms) || attempts.is_some_and(|a| a != job.attempts) =>
                {
                    return Err(claimed(&job));
                }
                Some(_) => {
                    txn.open_table(REBUILD_JOBS)?.remove((id, stripe))?;
                }
                None => {}
            }
            Ok(())
        })
    }

    pub(super) fn list_rebuild_jobs(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<RebuildJob>, DirectoryError> {
        self.read(|txn| page_after(&txn.open_table(REBUILD_JOBS)?, TABLE, after, limit))
    }
}

/// Refuses to record `request` unless its owner holds the stripe's job
/// and the job's plan moves this block from `request.from` to
/// `request.node`: a rebuild whose claim was taken over records nothing.
pub(super) fn ensure_planned(
    txn: &WriteTransaction,
    id: u32,
    request: &RebuiltBlockRequest,
    now_ms: u64,
) -> Result<(), DirectoryError> {
    let job = held(txn, id, request.stripe, &request.owner, now_ms)?;
    let planned = job.generation == request.generation
        && job.blocks.iter().any(|b| {
            (b.block, b.from.as_str(), b.to.as_str())
                == (request.block, request.from.as_str(), request.node.as_str())
        });
    if planned {
        Ok(())
    } else {
        Err(DirectoryError::BadRequest(format!(
            "the rebuild job of stripe {} does not move block {} from {} to {}",
            request.stripe, request.block, request.from, request.node
        )))
    }
}
