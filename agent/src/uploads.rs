//! Object keys reserved in the sequencer before their upload, so that an object uploaded by
//! an agent killed before its commit is on record and can be deleted later.
//!
//! Keys are reserved in blocks, so a flush rarely waits for the sequencer; a key not used
//! soon is released rather than used late (the garbage collector treats old reservations as
//! abandoned uploads).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shoal_metadata::{MetadataError, MetadataStore};
use shoal_storage::store::new_object_id;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Keys reserved per round trip to the sequencer.
const BLOCK: usize = 32;
/// A reserved key older than this is released instead of used.
const MAX_KEY_AGE: Duration = Duration::from_secs(60);

/// This agent's reserved, unused object keys.
pub struct UploadKeys {
    store: Arc<dyn MetadataStore>,
    agent: i32,
    keys: Mutex<VecDeque<(String, Instant)>>,
}

impl UploadKeys {
    pub fn new(store: Arc<dyn MetadataStore>, agent: i32) -> Self {
        Self {
            store,
            agent,
            keys: Mutex::new(VecDeque::new()),
        }
    }

    /// A fresh key, on record in the sequencer before anything is uploaded under it.
    pub async fn next(&self) -> Result<String, MetadataError> {
        let mut keys = self.keys.lock().await;
        let expired: Vec<String> = std::iter::from_fn(|| {
            keys.front()
                .is_some_and(|(_, at)| at.elapsed() > MAX_KEY_AGE)
                .then(|| keys.pop_front().map(|(key, _)| key))
                .flatten()
        })
        .collect();
        if !expired.is_empty() {
            self.release(&expired).await;
        }
        if let Some((key, _)) = keys.pop_front() {
            return Ok(key);
        }
        let mut block: Vec<String> = (0..BLOCK).map(|_| new_object_id()).collect();
        self.store.reserve_uploads(self.agent, &block).await?;
        let key = block.swap_remove(0);
        let now = Instant::now();
        keys.extend(block.into_iter().map(|key| (key, now)));
        Ok(key)
    }

    /// Releases every unused key (a clean stop).
    pub async fn release_all(&self) {
        let unused: Vec<String> = self.keys.lock().await.drain(..).map(|(k, _)| k).collect();
        if !unused.is_empty() {
            self.release(&unused).await;
        }
    }

    async fn release(&self, keys: &[String]) {
        if let Err(e) = self.store.release_uploads(keys).await {
            tracing::debug!(error = %e, "cannot release unused object keys; they will expire");
        }
    }
}
