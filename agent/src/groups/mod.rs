//! Consumer groups: which agent coordinates a group, and the groups this agent runs.
//!
//! A group's coordinator is the live agent with the highest rendezvous score for the group
//! id (the same answer on every agent). It runs the group only while it holds the group's
//! lease in the sequencer, so two agents never run one group: an agent that is no longer the
//! chosen one saves the group and releases the lease, and the next one takes it over from
//! the saved state. Committed offsets and state are written through to the sequencer, under
//! the lease, before they are acknowledged.

mod group;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_metadata::{AgentInfo, MetadataError, MetadataStore};
use tokio::sync::watch;

pub use group::{CommitRequest, GroupHandle, JoinRequest, Membership, SyncRequest};

use shoal_metadata::CommittedOffset;

use crate::fleet::{Fleet, LEASE, rendezvous};

/// How often held group leases are renewed and ownership is checked.
const RENEW_INTERVAL: Duration = Duration::from_secs(2);

/// Why a group cannot be served here.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("another agent coordinates this group")]
    NotCoordinator,
    #[error("the group is being taken over from another agent")]
    LoadInProgress,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl GroupError {
    /// The Kafka error code clients act on.
    pub fn code(&self) -> i16 {
        use kafka_protocol::error::ResponseError as E;
        match self {
            GroupError::NotCoordinator
            | GroupError::Metadata(MetadataError::NotGroupCoordinator(_)) => {
                E::NotCoordinator.code()
            }
            GroupError::LoadInProgress => E::CoordinatorLoadInProgress.code(),
            GroupError::Metadata(_) => E::CoordinatorNotAvailable.code(),
        }
    }
}

/// Settings of group coordination (Kafka's `group.*` broker configs).
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    /// How long the first rebalance of an empty group waits for more members.
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub state: &'static str,
    pub protocol_type: String,
}

/// The groups this agent coordinates.
pub struct Groups {
    store: Arc<dyn MetadataStore>,
    fleet: Arc<Fleet>,
    config: GroupConfig,
    held: Mutex<HashMap<String, GroupHandle>>,
    /// Serializes takeovers, so one group is never loaded twice.
    loading: tokio::sync::Mutex<()>,
}

impl Groups {
    /// Starts the lease keeper; it saves and releases every group when `shutdown` turns true.
    pub fn start(
        store: Arc<dyn MetadataStore>,
        fleet: Arc<Fleet>,
        config: GroupConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Groups> {
        let groups = Arc::new(Groups {
            store,
            fleet,
            config,
            held: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(groups.clone().keep_leases(shutdown));
        groups
    }

    /// The agent that coordinates `group`.
    pub fn coordinator(&self, group: &str) -> AgentInfo {
        let live = self.fleet.live();
        rendezvous(&live, group.as_bytes())
            .cloned()
            .unwrap_or_else(|| self.fleet.me().clone())
    }

    /// The running group, taken over (lease acquired, state loaded) on first use.
    pub async fn get(&self, group: &str) -> Result<GroupHandle, GroupError> {
        if self.coordinator(group).id != self.fleet.me().id {
            return Err(GroupError::NotCoordinator);
        }
        if let Some(handle) = self.held.lock().get(group).filter(|h| h.is_running()) {
            return Ok(handle.clone());
        }
        let _loading = self.loading.lock().await;
        if let Some(handle) = self.held.lock().get(group).filter(|h| h.is_running()) {
            return Ok(handle.clone());
        }
        let me = self.fleet.me().id;
        if !self.store.acquire_group(group, me, LEASE).await? {
            // The previous coordinator still holds it: it releases the group on its next
            // renewal, or its lease lapses.
            return Err(GroupError::LoadInProgress);
        }
        let saved = self.store.load_group(group).await?;
        let handle = GroupHandle::start(
            group.to_string(),
            me,
            self.store.clone(),
            self.config,
            saved.as_deref(),
        );
        tracing::info!(group, "coordinating consumer group");
        self.held.lock().insert(group.to_string(), handle.clone());
        Ok(handle)
    }

    /// The committed offsets of `group`, which this agent must coordinate (a client asks its
    /// coordinator, so offsets are read where they are written).
    pub async fn committed(&self, group: &str) -> Result<Vec<CommittedOffset>, GroupError> {
        self.get(group).await?;
        Ok(self.store.committed_offsets(group).await?)
    }

    /// Every group the sequencer knows of (with saved state or committed offsets).
    pub async fn known(&self) -> Result<Vec<String>, GroupError> {
        Ok(self.store.list_groups().await?)
    }

    /// The committed offsets of every group this agent coordinates, by group name in order:
    /// the groups running here and those it should run but has not loaded yet (read without
    /// taking their lease, so a scrape never moves a group). Groups now coordinated by another
    /// agent are left out, so that only one agent reports a group's lag.
    pub async fn coordinated_offsets(
        &self,
    ) -> Result<Vec<(String, Vec<CommittedOffset>)>, GroupError> {
        let me = self.fleet.me().id;
        let mut names = self.store.list_groups().await?;
        names.extend(self.held.lock().keys().cloned());
        names.sort();
        names.dedup();
        let mut offsets = Vec::new();
        for name in names {
            if self.coordinator(&name).id != me {
                continue;
            }
            let committed = self.store.committed_offsets(&name).await?;
            if !committed.is_empty() {
                offsets.push((name, committed));
            }
        }
        Ok(offsets)
    }

    /// The groups this agent coordinates, with their state, as ListGroups shows them. A group
    /// not running here is summarised from its saved state: listing takes no lease.
    pub async fn list(&self) -> Result<Vec<Listed>, GroupError> {
        let me = self.fleet.me().id;
        let mut listed = Vec::new();
        for name in self.store.list_groups().await? {
            if self.coordinator(&name).id != me {
                continue;
            }
            let running = self
                .held
                .lock()
                .get(&name)
                .filter(|h| h.is_running())
                .cloned();
            let summary = match running {
                Some(handle) => handle.describe().await.map(|d| (d.state, d.protocol_type)),
                None => None,
            };
            let (state, protocol_type) = match summary {
                Some(summary) => summary,
                None => group::summarise(self.store.load_group(&name).await?.as_deref()),
            };
            listed.push(Listed {
                name,
                state,
                protocol_type,
            });
        }
        Ok(listed)
    }

    /// Renews held leases; drops groups whose lease was lost, and hands over groups another
    /// agent should now coordinate (the fleet changed).
    async fn keep_leases(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = self.fleet.me().id;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            }
            let held: Vec<String> = {
                let mut held = self.held.lock();
                held.retain(|_, handle| handle.is_running());
                held.keys().cloned().collect()
            };
            if held.is_empty() {
                continue;
            }
            match self.store.renew_groups(me, &held, LEASE).await {
                Ok(lost) => {
                    for group in lost {
                        tracing::warn!(group, "lost the lease on a consumer group");
                        if let Some(handle) = self.held.lock().remove(&group) {
                            handle.stop();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew consumer group leases"),
            }
            for group in held {
                if self.coordinator(&group).id != me {
                    self.hand_over(&group).await;
                }
            }
        }
        let all: Vec<String> = self.held.lock().keys().cloned().collect();
        for group in all {
            self.hand_over(&group).await;
        }
    }

    /// Stops running `group` here and releases its lease (its state is saved at every change).
    async fn hand_over(&self, group: &str) {
        let Some(handle) = self.held.lock().remove(group) else {
            return;
        };
        handle.stop();
        handle.stopped().await;
        if let Err(e) = self.store.release_group(group, self.fleet.me().id).await {
            tracing::warn!(group, error = %e, "cannot release a consumer group lease");
        }
        tracing::info!(group, "handed consumer group over");
    }
}
