//! The embedded single-node backend: one SQLite database file.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, Transaction};

use tokio::sync::mpsc;

use crate::{
    AgentInfo, AgentRegistration, Announcement, BatchBudget, BatchIndexEntry, CommitOutcome,
    CommittedOffset, HighWatermark, IndexSwap, MetadataError, MetadataStore, ObjectCommit,
    PartitionBatch, PartitionOffsets, Result, StoredObject, Topic, TopicId, Upload,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite sequencer. Writers take the database lock up front (`BEGIN IMMEDIATE`), so
/// concurrent commits queue instead of failing on a lock upgrade.
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url`
    /// (`sqlite://path/metadata.db` or `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| MetadataError::InvalidUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Acknowledged means committed: every commit reaches the disk before we answer.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        if let Some(dir) = std::path::Path::new(options.get_filename()).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| MetadataError::InvalidUrl {
                url: url.to_string(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let in_memory = url.contains(":memory:");
        if !in_memory {
            // Create, switch to WAL and migrate on one connection before the pool opens
            // others: connections racing to change the journal mode of a new database get
            // SQLITE_BUSY without waiting.
            let mut conn = SqliteConnection::connect_with(&options).await?;
            MIGRATOR.run(&mut conn).await?;
            conn.close().await?;
        }
        let pool = SqlitePoolOptions::new()
            // An in-memory database lives in one connection only.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        if in_memory {
            MIGRATOR.run(&pool).await?;
        }
        Ok(Self { pool })
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn topic_id_from(bytes: &[u8]) -> Result<TopicId> {
    TopicId::from_slice(bytes).map_err(|e| MetadataError::Corrupt(format!("topic id: {e}")))
}

async fn load_topic(
    conn: &mut sqlx::SqliteConnection,
    row: sqlx::sqlite::SqliteRow,
) -> Result<Topic> {
    let id = topic_id_from(row.try_get::<&[u8], _>("id")?)?;
    let configs = sqlx::query("SELECT name, value FROM topic_configs WHERE topic_id = ?")
        .bind(id.as_bytes().as_slice())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
        .collect::<Result<BTreeMap<String, String>>>()?;
    Ok(Topic {
        id,
        name: row.try_get("name")?,
        partitions: row.try_get("partitions")?,
        configs,
    })
}

async fn topic_by_name(conn: &mut sqlx::SqliteConnection, name: &str) -> Result<Option<Topic>> {
    let row = sqlx::query("SELECT id, name, partitions FROM topics WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(load_topic(conn, row).await?)),
        None => Ok(None),
    }
}

async fn insert_partitions(
    conn: &mut sqlx::SqliteConnection,
    topic: TopicId,
    range: std::ops::Range<i32>,
) -> Result<()> {
    for partition in range {
        sqlx::query("INSERT INTO partitions (topic_id, partition) VALUES (?, ?)")
            .bind(topic.as_bytes().as_slice())
            .bind(partition)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn replace_configs(
    conn: &mut sqlx::SqliteConnection,
    topic: TopicId,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("DELETE FROM topic_configs WHERE topic_id = ?")
        .bind(topic.as_bytes().as_slice())
        .execute(&mut *conn)
        .await?;
    for (name, value) in configs {
        sqlx::query("INSERT INTO topic_configs (topic_id, name, value) VALUES (?, ?, ?)")
            .bind(topic.as_bytes().as_slice())
            .bind(name)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn entry_from(row: &sqlx::sqlite::SqliteRow) -> Result<BatchIndexEntry> {
    Ok(BatchIndexEntry {
        base_offset: row.try_get("base_offset")?,
        last_offset: row.try_get("last_offset")?,
        max_timestamp: row.try_get("max_timestamp")?,
        object_id: row.try_get("object_id")?,
        position: row.try_get::<i64, _>("position")? as u64,
        size: row.try_get::<i64, _>("size")? as u64,
    })
}

/// A Kafka-style cluster id: a random UUID in URL-safe base64 without padding.
pub(crate) fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = uuid::Uuid::new_v4().as_u128();
    // 22 digits of 6 bits cover 132 bits; the top 4 are zero.
    (0..22)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 6)) & 0x3f) as usize] as char)
        .collect()
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn cluster_id(&self) -> Result<String> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO cluster (singleton, id) VALUES (1, ?) ON CONFLICT DO NOTHING")
            .bind(new_cluster_id())
            .execute(&mut *tx)
            .await?;
        let id: String = sqlx::query("SELECT id FROM cluster WHERE singleton = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic> {
        if partitions < 1 {
            return Err(MetadataError::InvalidPartitions(format!(
                "a topic needs at least one partition, got {partitions}"
            )));
        }
        let mut tx = self.write().await?;
        if topic_by_name(&mut tx, name).await?.is_some() {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
        let id = TopicId::new_v4();
        sqlx::query("INSERT INTO topics (id, name, partitions, created_at_ms) VALUES (?, ?, ?, ?)")
            .bind(id.as_bytes().as_slice())
            .bind(name)
            .bind(partitions)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        insert_partitions(&mut tx, id, 0..partitions).await?;
        replace_configs(&mut tx, id, &configs).await?;
        tx.commit().await?;
        Ok(Topic {
            id,
            name: name.to_string(),
            partitions,
            configs,
        })
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM topics WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(MetadataError::UnknownTopic(name.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<Topic>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query("SELECT id, name, partitions FROM topics ORDER BY name")
            .fetch_all(&mut *conn)
            .await?;
        let mut topics = Vec::with_capacity(rows.len());
        for row in rows {
            topics.push(load_topic(&mut conn, row).await?);
        }
        Ok(topics)
    }

    async fn topic(&self, name: &str) -> Result<Option<Topic>> {
        let mut conn = self.pool.acquire().await?;
        topic_by_name(&mut conn, name).await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<Topic> {
        let mut tx = self.write().await?;
        let mut topic = topic_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        if total <= topic.partitions {
            return Err(MetadataError::InvalidPartitions(format!(
                "topic `{name}` has {} partitions; the new count {total} must be larger",
                topic.partitions
            )));
        }
        insert_partitions(&mut tx, topic.id, topic.partitions..total).await?;
        sqlx::query("UPDATE topics SET partitions = ? WHERE id = ?")
            .bind(total)
            .bind(topic.id.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        topic.partitions = total;
        Ok(topic)
    }

    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic> {
        let mut tx = self.write().await?;
        let mut topic = topic_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        replace_configs(&mut tx, topic.id, &configs).await?;
        tx.commit().await?;
        topic.configs = configs;
        Ok(topic)
    }

    async fn commit_object(&self, object: &ObjectCommit) -> Result<Vec<CommitOutcome>> {
        let mut tx = self.write().await?;
        let seen = sqlx::query("SELECT 1 FROM objects WHERE id = ?")
            .bind(&object.object_id)
            .fetch_optional(&mut *tx)
            .await?;
        if seen.is_some() {
            // A retry of a commit that went through: answer with the first outcome.
            let rows = sqlx::query(
                "SELECT chunk_index, base_offset FROM batches WHERE object_id = ? \
                 ORDER BY chunk_index",
            )
            .bind(&object.object_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut outcomes = vec![CommitOutcome::UnknownPartition; object.chunks.len()];
            for row in rows {
                let index: i64 = row.try_get("chunk_index")?;
                if let Some(slot) = outcomes.get_mut(index as usize) {
                    *slot = CommitOutcome::Committed {
                        base_offset: row.try_get("base_offset")?,
                    };
                }
            }
            return Ok(outcomes);
        }
        sqlx::query("INSERT INTO objects (id, size, committed_at_ms) VALUES (?, ?, ?)")
            .bind(&object.object_id)
            .bind(object.size as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(&object.object_id)
            .execute(&mut *tx)
            .await?;
        let mut outcomes = Vec::with_capacity(object.chunks.len());
        for (index, chunk) in object.chunks.iter().enumerate() {
            let advanced = sqlx::query(
                "UPDATE partitions SET next_offset = next_offset + ? \
                 WHERE topic_id = ? AND partition = ? RETURNING next_offset",
            )
            .bind(chunk.offset_count)
            .bind(chunk.topic.as_bytes().as_slice())
            .bind(chunk.partition)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = advanced else {
                outcomes.push(CommitOutcome::UnknownPartition);
                continue;
            };
            let next: i64 = row.try_get("next_offset")?;
            let base_offset = next - chunk.offset_count;
            sqlx::query(
                "INSERT INTO batches (topic_id, partition, base_offset, last_offset, \
                 max_timestamp, object_id, position, size, chunk_index) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(chunk.topic.as_bytes().as_slice())
            .bind(chunk.partition)
            .bind(base_offset)
            .bind(next - 1)
            .bind(chunk.max_timestamp)
            .bind(&object.object_id)
            .bind(chunk.position as i64)
            .bind(chunk.size as i64)
            .bind(index as i64)
            .execute(&mut *tx)
            .await?;
            outcomes.push(CommitOutcome::Committed { base_offset });
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn partition_offsets(&self, topic: TopicId, partition: i32) -> Result<PartitionOffsets> {
        let row = sqlx::query(
            "SELECT next_offset, log_start_offset FROM partitions \
             WHERE topic_id = ? AND partition = ?",
        )
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| MetadataError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })?;
        Ok(PartitionOffsets {
            log_start_offset: row.try_get("log_start_offset")?,
            high_watermark: row.try_get("next_offset")?,
        })
    }

    async fn batches(
        &self,
        topic: TopicId,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<BatchIndexEntry>> {
        // Rows are contiguous in offsets, so a byte budget bounds the row count; fetch in
        // pages until the budget is spent.
        const PAGE: i64 = 64;
        let mut budget = BatchBudget::new(max_bytes);
        loop {
            let from = budget.next_offset().unwrap_or(from_offset);
            let rows = sqlx::query(
                "SELECT base_offset, last_offset, max_timestamp, object_id, position, size \
                 FROM batches WHERE topic_id = ? AND partition = ? AND last_offset >= ? \
                 ORDER BY base_offset LIMIT ?",
            )
            .bind(topic.as_bytes().as_slice())
            .bind(partition)
            .bind(from)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let page = rows.iter().map(entry_from).collect::<Result<Vec<_>>>()?;
            if budget.take_page(page, PAGE as usize) {
                return Ok(budget.into_entries());
            }
        }
    }

    async fn batch_for_timestamp(
        &self,
        topic: TopicId,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<BatchIndexEntry>> {
        let row = sqlx::query(
            "SELECT b.base_offset, b.last_offset, b.max_timestamp, b.object_id, b.position, \
             b.size FROM batches b JOIN partitions p \
             ON p.topic_id = b.topic_id AND p.partition = b.partition \
             WHERE b.topic_id = ? AND b.partition = ? AND b.max_timestamp >= ? \
             AND b.last_offset >= p.log_start_offset ORDER BY b.base_offset LIMIT 1",
        )
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .bind(timestamp)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from).transpose()
    }

    async fn batch_with_max_timestamp(
        &self,
        topic: TopicId,
        partition: i32,
    ) -> Result<Option<BatchIndexEntry>> {
        let row = sqlx::query(
            "SELECT b.base_offset, b.last_offset, b.max_timestamp, b.object_id, b.position, \
             b.size FROM batches b JOIN partitions p \
             ON p.topic_id = b.topic_id AND p.partition = b.partition \
             WHERE b.topic_id = ? AND b.partition = ? AND b.last_offset >= p.log_start_offset \
             ORDER BY b.max_timestamp DESC, b.base_offset ASC LIMIT 1",
        )
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from).transpose()
    }

    async fn register_agent(&self, agent: &AgentRegistration, ttl: Duration) -> Result<i32> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM agents WHERE expires_at_ms < ?")
            .bind(now - EXPIRED_AGENT_KEPT_MS)
            .execute(&mut *tx)
            .await?;
        let id: i32 = sqlx::query(
            "INSERT INTO agents (zone, host, port, registered_at_ms, renewed_at_ms, \
             expires_at_ms) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&agent.zone)
        .bind(&agent.host)
        .bind(agent.port)
        .bind(now)
        .bind(now)
        .bind(now + ttl_ms(ttl))
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn renew_agent(&self, id: i32, agent: &AgentRegistration, ttl: Duration) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agents (id, zone, host, port, registered_at_ms, renewed_at_ms, \
             expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
             zone = excluded.zone, host = excluded.host, port = excluded.port, \
             renewed_at_ms = excluded.renewed_at_ms, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(id)
        .bind(&agent.zone)
        .bind(&agent.host)
        .bind(agent.port)
        .bind(now)
        .bind(now)
        .bind(now + ttl_ms(ttl))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_agent(&self, id: i32) -> Result<()> {
        sqlx::query("DELETE FROM agents WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn live_agents(&self) -> Result<Vec<AgentInfo>> {
        sqlx::query(
            "SELECT id, zone, host, port, renewed_at_ms FROM agents WHERE expires_at_ms > ? \
             ORDER BY id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AgentInfo {
                id: row.try_get("id")?,
                zone: row.try_get("zone")?,
                host: row.try_get("host")?,
                port: row.try_get("port")?,
                last_heartbeat_ms: row.try_get("renewed_at_ms")?,
            })
        })
        .collect()
    }

    async fn reserve_uploads(&self, agent: i32, object_ids: &[String]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write().await?;
        for id in object_ids {
            sqlx::query("INSERT INTO uploads (id, agent_id, reserved_at_ms) VALUES (?, ?, ?)")
                .bind(id)
                .bind(agent)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_uploads(&self, object_ids: &[String]) -> Result<()> {
        let mut tx = self.write().await?;
        for id in object_ids {
            sqlx::query("DELETE FROM uploads WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stale_uploads(&self, age: Duration) -> Result<Vec<Upload>> {
        sqlx::query(
            "SELECT id, agent_id, reserved_at_ms FROM uploads WHERE reserved_at_ms <= ? \
             ORDER BY reserved_at_ms, id",
        )
        .bind(now_ms() - ttl_ms(age))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Upload {
                object_id: row.try_get("id")?,
                agent_id: row.try_get("agent_id")?,
                reserved_at_ms: row.try_get("reserved_at_ms")?,
            })
        })
        .collect()
    }

    async fn announce(&self, _from: i32, _marks: &[HighWatermark]) -> Result<()> {
        // One node: the agent that committed is the only reader.
        Ok(())
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Announcement>>> {
        Ok(None)
    }

    async fn acquire_group(&self, group: &str, agent: i32, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let taken = sqlx::query(
            "INSERT INTO group_leases (group_id, agent_id, expires_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (group_id) DO UPDATE SET agent_id = excluded.agent_id, \
             expires_at_ms = excluded.expires_at_ms \
             WHERE group_leases.agent_id = excluded.agent_id OR group_leases.expires_at_ms <= ?",
        )
        .bind(group)
        .bind(agent)
        .bind(now + ttl_ms(ttl))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    async fn renew_groups(
        &self,
        agent: i32,
        groups: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let expires = now_ms() + ttl_ms(ttl);
        let mut lost = Vec::new();
        let mut tx = self.write().await?;
        for group in groups {
            let renewed = sqlx::query(
                "UPDATE group_leases SET expires_at_ms = ? WHERE group_id = ? AND agent_id = ?",
            )
            .bind(expires)
            .bind(group)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
            if renewed.rows_affected() == 0 {
                lost.push(group.clone());
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn release_group(&self, group: &str, agent: i32) -> Result<()> {
        sqlx::query("DELETE FROM group_leases WHERE group_id = ? AND agent_id = ?")
            .bind(group)
            .bind(agent)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn commit_offsets(
        &self,
        group: &str,
        agent: i32,
        offsets: &[CommittedOffset],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        check_group_lease(&mut tx, group, agent).await?;
        for o in offsets {
            sqlx::query(
                "INSERT INTO group_offsets (group_id, topic_id, partition, committed_offset, \
                 leader_epoch, metadata, commit_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET \
                 committed_offset = excluded.committed_offset, \
                 leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                 commit_time_ms = excluded.commit_time_ms",
            )
            .bind(group)
            .bind(o.topic.as_bytes().as_slice())
            .bind(o.partition)
            .bind(o.offset)
            .bind(o.leader_epoch)
            .bind(&o.metadata)
            .bind(o.commit_time_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        sqlx::query(
            "SELECT topic_id, partition, committed_offset, leader_epoch, metadata, \
             commit_time_ms FROM group_offsets WHERE group_id = ? ORDER BY topic_id, partition",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(CommittedOffset {
                topic: topic_id_from(row.try_get::<&[u8], _>("topic_id")?)?,
                partition: row.try_get("partition")?,
                offset: row.try_get("committed_offset")?,
                leader_epoch: row.try_get("leader_epoch")?,
                metadata: row.try_get("metadata")?,
                commit_time_ms: row.try_get("commit_time_ms")?,
            })
        })
        .collect()
    }

    async fn delete_offsets(
        &self,
        group: &str,
        agent: i32,
        partitions: &[(TopicId, i32)],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        check_group_lease(&mut tx, group, agent).await?;
        for (topic, partition) in partitions {
            sqlx::query(
                "DELETE FROM group_offsets WHERE group_id = ? AND topic_id = ? AND partition = ?",
            )
            .bind(group)
            .bind(topic.as_bytes().as_slice())
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn save_group(&self, group: &str, agent: i32, state: &[u8]) -> Result<()> {
        let mut tx = self.write().await?;
        check_group_lease(&mut tx, group, agent).await?;
        sqlx::query(
            "INSERT INTO consumer_groups (group_id, state, updated_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (group_id) DO UPDATE SET state = excluded.state, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(group)
        .bind(state)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query("SELECT state FROM consumer_groups WHERE group_id = ?")
                .bind(group)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?,
        )
    }

    async fn delete_group(&self, group: &str, agent: i32) -> Result<()> {
        let mut tx = self.write().await?;
        check_group_lease(&mut tx, group, agent).await?;
        for sql in [
            "DELETE FROM consumer_groups WHERE group_id = ?",
            "DELETE FROM group_offsets WHERE group_id = ?",
        ] {
            sqlx::query(sql).bind(group).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT group_id FROM consumer_groups UNION \
             SELECT group_id FROM group_offsets ORDER BY group_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok(row.try_get("group_id")?))
        .collect()
    }

    async fn advance_log_start(&self, topic: TopicId, partition: i32, offset: i64) -> Result<i64> {
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "UPDATE partitions SET log_start_offset = \
             MAX(log_start_offset, MIN(?, next_offset)) \
             WHERE topic_id = ? AND partition = ? RETURNING log_start_offset",
        )
        .bind(offset)
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| MetadataError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })?;
        let start: i64 = row.try_get("log_start_offset")?;
        sqlx::query("DELETE FROM batches WHERE topic_id = ? AND partition = ? AND last_offset < ?")
            .bind(topic.as_bytes().as_slice())
            .bind(partition)
            .bind(start)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(start)
    }

    async fn merge_candidates(
        &self,
        max_size: u64,
        min_age: Duration,
        limit: usize,
    ) -> Result<Vec<StoredObject>> {
        sqlx::query(
            "SELECT id, size, level, committed_at_ms FROM objects \
             WHERE deleted_at_ms IS NULL AND unreferenced_at_ms IS NULL \
             AND size < ? AND committed_at_ms <= ? ORDER BY committed_at_ms, id LIMIT ?",
        )
        .bind(max_size.min(i64::MAX as u64) as i64)
        .bind(now_ms() - ttl_ms(min_age))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(stored_object_from)
        .collect()
    }

    async fn object_batches(&self, object_ids: &[String]) -> Result<Vec<PartitionBatch>> {
        let mut rows = Vec::new();
        for id in object_ids {
            let found = sqlx::query(
                "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, \
                 object_id, position, size FROM batches WHERE object_id = ?",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
            for row in &found {
                rows.push(PartitionBatch {
                    topic: topic_id_from(row.try_get::<&[u8], _>("topic_id")?)?,
                    partition: row.try_get("partition")?,
                    entry: entry_from(row)?,
                });
            }
        }
        rows.sort_by_key(|r| (r.topic, r.partition, r.entry.base_offset));
        Ok(rows)
    }

    async fn swap_batches(&self, swap: &IndexSwap) -> Result<bool> {
        let mut tx = self.write().await?;
        for old in &swap.replaced {
            let gone = sqlx::query(
                "DELETE FROM batches WHERE topic_id = ? AND partition = ? AND base_offset = ? \
                 AND last_offset = ? AND object_id = ?",
            )
            .bind(old.topic.as_bytes().as_slice())
            .bind(old.partition)
            .bind(old.entry.base_offset)
            .bind(old.entry.last_offset)
            .bind(&old.entry.object_id)
            .execute(&mut *tx)
            .await?;
            if gone.rows_affected() != 1 {
                // Dropping the transaction rolls back what was deleted so far.
                return Ok(false);
            }
        }
        sqlx::query("INSERT INTO objects (id, size, committed_at_ms, level) VALUES (?, ?, ?, ?)")
            .bind(&swap.object_id)
            .bind(swap.size as i64)
            .bind(now_ms())
            .bind(swap.level)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(&swap.object_id)
            .execute(&mut *tx)
            .await?;
        for (index, new) in swap.rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO batches (topic_id, partition, base_offset, last_offset, \
                 max_timestamp, object_id, position, size, chunk_index) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(new.topic.as_bytes().as_slice())
            .bind(new.partition)
            .bind(new.entry.base_offset)
            .bind(new.entry.last_offset)
            .bind(new.entry.max_timestamp)
            .bind(&swap.object_id)
            .bind(new.entry.position as i64)
            .bind(new.entry.size as i64)
            .bind(index as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE objects SET unreferenced_at_ms = ? WHERE unreferenced_at_ms IS NULL \
             AND deleted_at_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.id)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM objects WHERE deleted_at_ms <= ?")
            .bind(now - OBJECT_TOMBSTONE_KEPT_MS)
            .execute(&mut *tx)
            .await?;
        let ids = sqlx::query(
            "SELECT id FROM objects WHERE deleted_at_ms IS NULL AND unreferenced_at_ms <= ? \
             ORDER BY unreferenced_at_ms, id LIMIT ?",
        )
        .bind(now - ttl_ms(grace))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<Vec<String>, _>>()?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn forget_objects(&self, object_ids: &[String]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write().await?;
        for id in object_ids {
            sqlx::query("UPDATE objects SET deleted_at_ms = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at_ms = excluded.expires_at_ms \
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms(ttl))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn partition_progress(
        &self,
        job: &str,
        topic: TopicId,
        partition: i32,
    ) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT next_offset FROM partition_progress \
             WHERE job = ? AND topic_id = ? AND partition = ?",
        )
        .bind(job)
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.try_get("next_offset"))
        .transpose()?)
    }

    async fn set_partition_progress(
        &self,
        job: &str,
        topic: TopicId,
        partition: i32,
        next_offset: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO partition_progress (job, topic_id, partition, next_offset) \
             VALUES (?, ?, ?, ?) ON CONFLICT (job, topic_id, partition) \
             DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(job)
        .bind(topic.as_bytes().as_slice())
        .bind(partition)
        .bind(next_offset)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn stored_object_from(row: &sqlx::sqlite::SqliteRow) -> Result<StoredObject> {
    Ok(StoredObject {
        id: row.try_get("id")?,
        size: row.try_get::<i64, _>("size")? as u64,
        level: row.try_get("level")?,
        committed_at_ms: row.try_get("committed_at_ms")?,
    })
}

/// How long the row of a deleted object is kept, so a very late commit retry of its key is
/// answered as a retry instead of committing a missing object.
pub(crate) const OBJECT_TOMBSTONE_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Fails unless agent `agent` holds the lease on `group`. Taking a lease over changes its
/// agent, so a lapsed lease that nobody took is still safe to write under.
async fn check_group_lease(conn: &mut SqliteConnection, group: &str, agent: i32) -> Result<()> {
    let held = sqlx::query("SELECT 1 FROM group_leases WHERE group_id = ? AND agent_id = ?")
        .bind(group)
        .bind(agent)
        .fetch_optional(&mut *conn)
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(MetadataError::NotGroupCoordinator(group.to_string())),
    }
}

/// How long the row of an agent whose lease lapsed is kept (for operators looking back).
pub(crate) const EXPIRED_AGENT_KEPT_MS: i64 = 24 * 3600 * 1000;

/// A duration in whole milliseconds, as the agent and upload tables keep time.
pub(crate) fn ttl_ms(d: Duration) -> i64 {
    d.as_millis().try_into().unwrap_or(i64::MAX)
}
