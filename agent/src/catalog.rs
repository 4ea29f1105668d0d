//! The agent's in-memory view of the topic catalog, so the produce and fetch paths do not ask
//! the sequencer for a topic on every request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use shoal_metadata::{MetadataError, MetadataStore, Topic, TopicId};

use shoal_metadata::topic_config::TopicSettings;

/// A topic with its configs parsed for the hot paths.
#[derive(Debug)]
pub struct TopicEntry {
    pub topic: Topic,
    pub settings: TopicSettings,
}

/// How long a cached view may lag changes made by other agents.
const REFRESH_AFTER: Duration = Duration::from_secs(2);
/// Least time between reloads caused by lookups of unknown topics, so clients asking for
/// topics that do not exist cannot make every request reload the catalog.
const MISS_RELOAD_AFTER: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Snapshot {
    by_name: HashMap<String, Arc<TopicEntry>>,
    by_id: HashMap<TopicId, Arc<TopicEntry>>,
    loaded_at: Option<Instant>,
}

/// Cached topics, reloaded from the sequencer after changes and when older than
/// [`REFRESH_AFTER`].
pub struct Catalog {
    store: Arc<dyn MetadataStore>,
    snapshot: RwLock<Snapshot>,
}

impl Catalog {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self {
            store,
            snapshot: RwLock::new(Snapshot::default()),
        }
    }

    fn fresh(&self) -> bool {
        self.snapshot
            .read()
            .loaded_at
            .is_some_and(|t| t.elapsed() < REFRESH_AFTER)
    }

    /// Reloads every topic from the sequencer.
    pub async fn reload(&self) -> Result<(), MetadataError> {
        let topics = self.store.list_topics().await?;
        let mut snapshot = Snapshot {
            loaded_at: Some(Instant::now()),
            ..Snapshot::default()
        };
        for topic in topics {
            let entry = Arc::new(TopicEntry {
                settings: TopicSettings::from_configs(&topic.configs),
                topic,
            });
            snapshot.by_id.insert(entry.topic.id, entry.clone());
            snapshot.by_name.insert(entry.topic.name.clone(), entry);
        }
        *self.snapshot.write() = snapshot;
        Ok(())
    }

    async fn refresh_if_stale(&self) -> Result<(), MetadataError> {
        if self.fresh() {
            Ok(())
        } else {
            self.reload().await
        }
    }

    /// Reloads after a lookup missed, unless a reload happened a moment ago; reports whether
    /// it reloaded.
    async fn reload_after_miss(&self) -> Result<bool, MetadataError> {
        let recent = self
            .snapshot
            .read()
            .loaded_at
            .is_some_and(|t| t.elapsed() < MISS_RELOAD_AFTER);
        if recent {
            return Ok(false);
        }
        self.reload().await.map(|_| true)
    }

    /// The topic named `name`; a miss reloads (at most every [`MISS_RELOAD_AFTER`]), since
    /// another agent may have created it.
    pub async fn by_name(&self, name: &str) -> Result<Option<Arc<TopicEntry>>, MetadataError> {
        self.refresh_if_stale().await?;
        if let Some(entry) = self.snapshot.read().by_name.get(name) {
            return Ok(Some(entry.clone()));
        }
        if !self.reload_after_miss().await? {
            return Ok(None);
        }
        Ok(self.snapshot.read().by_name.get(name).cloned())
    }

    /// The topic with id `id`; a miss reloads as [`Catalog::by_name`] does.
    pub async fn by_id(&self, id: TopicId) -> Result<Option<Arc<TopicEntry>>, MetadataError> {
        self.refresh_if_stale().await?;
        if let Some(entry) = self.snapshot.read().by_id.get(&id) {
            return Ok(Some(entry.clone()));
        }
        if !self.reload_after_miss().await? {
            return Ok(None);
        }
        Ok(self.snapshot.read().by_id.get(&id).cloned())
    }

    /// Every topic, ordered by name.
    pub async fn all(&self) -> Result<Vec<Arc<TopicEntry>>, MetadataError> {
        self.refresh_if_stale().await?;
        let mut all: Vec<_> = self.snapshot.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.topic.name.cmp(&b.topic.name));
        Ok(all)
    }

    /// Creates a topic through the sequencer and refreshes the view.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic, MetadataError> {
        let result = self.store.create_topic(name, partitions, configs).await;
        self.reload().await?;
        result
    }

    /// Runs a catalog change through the sequencer, then refreshes the view whatever the
    /// outcome (a failed change may still mean the view was stale).
    pub async fn change<T>(
        &self,
        change: impl Future<Output = Result<T, MetadataError>>,
    ) -> Result<T, MetadataError> {
        let result = change.await;
        self.reload().await?;
        result
    }

    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }
}
