//! Garbage collection: deletes objects only once nothing can read them.
//!
//! An object goes when no index row has referred to it for the grace period (merges,
//! cleaning, retention and topic deletion leave such objects; a reader that listed an old
//! row just before a swap finishes long before the grace period ends). An upload reserved
//! but never committed (its agent died between PUT and commit, or a compactor between PUT
//! and swap) goes once it is older than the grace period and its agent is no longer live.

use std::collections::HashSet;

use crate::{Compactor, CompactorError, PassReport};

/// Objects deleted per round trip to the sequencer.
const BATCH: usize = 1000;

/// One garbage collection round.
pub async fn collect(compactor: &Compactor, report: &mut PassReport) -> Result<(), CompactorError> {
    let (store, storage) = (&compactor.store, &compactor.storage);
    let grace = compactor.config().gc_grace;
    loop {
        let ids = store.unreferenced_objects(grace, BATCH).await?;
        for id in &ids {
            storage.delete(id).await?;
        }
        store.forget_objects(&ids).await?;
        report.objects_deleted += ids.len() as u64;
        if ids.len() < BATCH {
            break;
        }
    }
    let live: HashSet<i32> = store.live_agents().await?.iter().map(|a| a.id).collect();
    let stale: Vec<String> = store
        .stale_uploads(grace)
        .await?
        .into_iter()
        .filter(|u| !live.contains(&u.agent_id))
        .map(|u| u.object_id)
        .collect();
    for id in &stale {
        storage.delete(id).await?;
    }
    store.release_uploads(&stale).await?;
    report.uploads_deleted += stale.len() as u64;
    Ok(())
}
