//! Commits made through one agent wake the long-polls parked on the others.
//!
//! After each commit the batcher hands the partitions' new high watermarks to the
//! [`Announcer`], which sends them through the sequencer (PostgreSQL NOTIFY), merging what
//! piles up while one announcement is on its way. [`follow`] receives the other agents'
//! announcements, marks those partitions stale in the recent index and wakes parked fetches.
//! Announcements are best effort: parked fetches also look again on a timer.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_metadata::{Announcement, HighWatermark, MetadataStore, TopicId};
use tokio::sync::{mpsc, watch};

use crate::index::RecentIndex;

/// Sends this agent's commits to the other agents.
#[derive(Clone)]
pub struct Announcer {
    tx: mpsc::UnboundedSender<Vec<HighWatermark>>,
}

impl Announcer {
    /// Starts the sending task of agent `me`; it ends when the last handle is dropped.
    pub fn start(store: Arc<dyn MetadataStore>, me: i32) -> Announcer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send(store, me, rx));
        Announcer { tx }
    }

    /// Queues new high watermarks; never waits.
    pub fn announce(&self, marks: Vec<HighWatermark>) {
        if !marks.is_empty() {
            let _ = self.tx.send(marks);
        }
    }
}

/// Sends what is queued, merged per partition: while one announcement is on its way, the
/// commits behind it pile up and go out together.
async fn send(
    store: Arc<dyn MetadataStore>,
    me: i32,
    mut rx: mpsc::UnboundedReceiver<Vec<HighWatermark>>,
) {
    while let Some(first) = rx.recv().await {
        let mut merged: HashMap<(TopicId, i32), i64> = HashMap::new();
        let mut add = |marks: Vec<HighWatermark>| {
            for mark in marks {
                let hwm = merged
                    .entry((mark.topic, mark.partition))
                    .or_insert(mark.high_watermark);
                *hwm = (*hwm).max(mark.high_watermark);
            }
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        let marks: Vec<HighWatermark> = merged
            .into_iter()
            .map(|((topic, partition), high_watermark)| HighWatermark {
                topic,
                partition,
                high_watermark,
            })
            .collect();
        if let Err(e) = store.announce(me, &marks).await {
            tracing::debug!(error = %e, "cannot announce commits; other agents will poll");
        }
    }
}

/// Applies other agents' announcements until the agent stops. Returns at once when the
/// sequencer has no announcements.
pub async fn follow(
    store: Arc<dyn MetadataStore>,
    me: i32,
    index: Arc<RecentIndex>,
    commits: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut feed = match store.subscribe().await {
        Ok(Some(feed)) => feed,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for other agents' commits; polling only");
            return;
        }
    };
    loop {
        let announcement = tokio::select! {
            next = feed.recv() => match next {
                Some(announcement) => announcement,
                None => return,
            },
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        match announcement {
            Announcement::Moved { from, .. } if from == me => continue,
            Announcement::Moved { marks, .. } => {
                for mark in marks {
                    index.moved(mark.topic, mark.partition, mark.high_watermark);
                }
            }
            Announcement::Gap => index.forget_offsets(),
        }
        commits.send_modify(|n| *n += 1);
    }
}
