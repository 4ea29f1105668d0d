//! The fleet backend: one PostgreSQL database shared by every agent.
//!
//! Topic ids are `uuid` columns bound as text (`$1::uuid`), so sqlx needs no uuid feature.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use crate::announce;
use crate::sqlite::{
    EXPIRED_AGENT_KEPT_MS, OBJECT_TOMBSTONE_KEPT_MS, new_cluster_id, now_ms, ttl_ms,
};
use crate::{
    AgentInfo, AgentRegistration, Announcement, BatchBudget, BatchIndexEntry, CommitOutcome,
    CommittedOffset, HighWatermark, IndexSwap, MetadataError, MetadataStore, ObjectCommit,
    PartitionBatch, PartitionOffsets, Result, StoredObject, Topic, TopicId, Upload,
};

/// The database's clock in ms since the epoch: leases and upload ages are judged by one clock
/// for the whole fleet.
macro_rules! db_now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::int8"
    };
}

/// The lease row of group `$1` if agent `$2` holds it, locked `FOR SHARE` until the statement
/// commits, so a takeover (an UPDATE of that row) waits for the write it fences.
macro_rules! lease_held {
    () => {
        "SELECT 1 FROM group_leases WHERE group_id = $1 AND agent_id = $2 FOR SHARE"
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Commits one object in one statement, so one round trip whatever the number of chunks.
///
/// Runs at READ COMMITTED, made safe by row locks: `locked` takes the partition rows with
/// `FOR UPDATE` in (topic_id, partition) order, so two commits touching the same partitions
/// queue on the first shared row instead of deadlocking; a waiter reads the next offset the
/// holder committed (PostgreSQL re-reads a locked row's newest version), and the `UPDATE`
/// re-checks that same newest version. Chunks of partitions with no row (deleted or never
/// made) get no offsets and come back with a NULL base offset. Several chunks of one
/// partition (the batcher never sends them, but nothing breaks) take consecutive ranges in
/// chunk order (`skip`). `ON CONFLICT DO NOTHING` on the object id turns a retry into a
/// no-op: nothing is locked or written, and `fresh` is false. The
/// object's upload reservation (if any) is released in the same statement.
const COMMIT: &str = "\
WITH object AS (
    INSERT INTO objects (id, size, committed_at_ms) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
),
released AS (
    DELETE FROM uploads WHERE id = $1
),
chunks AS (
    SELECT (c.ord - 1)::int4 AS chunk_index, c.topic_id::uuid AS topic_id, c.partition,
           c.offset_count, c.max_timestamp, c.position, c.size,
           (SUM(c.offset_count) OVER (PARTITION BY c.topic_id, c.partition ORDER BY c.ord)
               - c.offset_count)::int8 AS skip
    FROM UNNEST($4::text[], $5::int4[], $6::int8[], $7::int8[], $8::int8[], $9::int8[])
        WITH ORDINALITY AS c (topic_id, partition, offset_count, max_timestamp, position, size, ord)
),
totals AS (
    SELECT topic_id, partition, SUM(offset_count)::int8 AS total
    FROM chunks GROUP BY topic_id, partition
),
locked AS MATERIALIZED (
    SELECT p.topic_id, p.partition, p.next_offset
    FROM partitions p
    WHERE (p.topic_id, p.partition) IN (SELECT topic_id, partition FROM totals)
      AND EXISTS (SELECT 1 FROM object)
    ORDER BY p.topic_id, p.partition
    FOR UPDATE
),
advanced AS (
    UPDATE partitions p SET next_offset = l.next_offset + t.total
    FROM locked l JOIN totals t ON t.topic_id = l.topic_id AND t.partition = l.partition
    WHERE p.topic_id = l.topic_id AND p.partition = l.partition
    RETURNING p.topic_id, p.partition, l.next_offset AS start
),
inserted AS (
    INSERT INTO batches (topic_id, partition, base_offset, last_offset, max_timestamp,
                         object_id, position, size, chunk_index)
    SELECT c.topic_id, c.partition, a.start + c.skip, a.start + c.skip + c.offset_count - 1,
           c.max_timestamp, $1, c.position, c.size, c.chunk_index
    FROM chunks c JOIN advanced a ON a.topic_id = c.topic_id AND a.partition = c.partition
    RETURNING chunk_index, base_offset
)
SELECT EXISTS (SELECT 1 FROM object) AS fresh, c.chunk_index, i.base_offset
FROM chunks c LEFT JOIN inserted i ON i.chunk_index = c.chunk_index
ORDER BY c.chunk_index";

/// PostgreSQL sequencer, for many agents sharing one database.
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to and migrates the database at `url` (`postgres://user@host/db`).
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| MetadataError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

fn topic_id_from(text: &str) -> Result<TopicId> {
    TopicId::parse_str(text).map_err(|e| MetadataError::Corrupt(format!("topic id: {e}")))
}

async fn load_topic(conn: &mut PgConnection, row: PgRow) -> Result<Topic> {
    let id = topic_id_from(row.try_get("id")?)?;
    let configs = sqlx::query("SELECT name, value FROM topic_configs WHERE topic_id = $1::uuid")
        .bind(id.to_string())
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

/// One topic by name; `lock` takes its row `FOR NO KEY UPDATE`, so concurrent catalog changes
/// of the topic queue while commits (whose batch rows only key-share it) go on.
async fn topic_by_name(conn: &mut PgConnection, name: &str, lock: bool) -> Result<Option<Topic>> {
    let sql = if lock {
        "SELECT id::text AS id, name, partitions FROM topics WHERE name = $1 FOR NO KEY UPDATE"
    } else {
        "SELECT id::text AS id, name, partitions FROM topics WHERE name = $1"
    };
    let row = sqlx::query(sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(load_topic(conn, row).await?)),
        None => Ok(None),
    }
}

async fn insert_partitions(
    conn: &mut PgConnection,
    topic: TopicId,
    range: std::ops::Range<i32>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO partitions (topic_id, partition) \
         SELECT $1::uuid, generate_series($2::int4, $3::int4 - 1)",
    )
    .bind(topic.to_string())
    .bind(range.start)
    .bind(range.end)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn replace_configs(
    conn: &mut PgConnection,
    topic: TopicId,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("DELETE FROM topic_configs WHERE topic_id = $1::uuid")
        .bind(topic.to_string())
        .execute(&mut *conn)
        .await?;
    let (names, values): (Vec<&str>, Vec<&str>) = configs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .unzip();
    sqlx::query(
        "INSERT INTO topic_configs (topic_id, name, value) \
         SELECT $1::uuid, n, v FROM UNNEST($2::text[], $3::text[]) AS c (n, v)",
    )
    .bind(topic.to_string())
    .bind(names)
    .bind(values)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn entry_from(row: &PgRow) -> Result<BatchIndexEntry> {
    Ok(BatchIndexEntry {
        base_offset: row.try_get("base_offset")?,
        last_offset: row.try_get("last_offset")?,
        max_timestamp: row.try_get("max_timestamp")?,
        object_id: row.try_get("object_id")?,
        position: row.try_get::<i64, _>("position")? as u64,
        size: row.try_get::<i64, _>("size")? as u64,
    })
}

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn cluster_id(&self) -> Result<String> {
        // One statement: concurrent first calls race on the primary key; the loser's
        // DO NOTHING leaves the winner's id, which the second statement reads.
        sqlx::query("INSERT INTO cluster (singleton, id) VALUES (1, $1) ON CONFLICT DO NOTHING")
            .bind(new_cluster_id())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query("SELECT id FROM cluster WHERE singleton = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("id")?)
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
        let mut tx = self.pool.begin().await?;
        let id = TopicId::new_v4();
        // ON CONFLICT on the name: a concurrent create of the same name waits for the first
        // and then finds it, rather than failing on the unique index.
        let inserted = sqlx::query(
            "INSERT INTO topics (id, name, partitions, created_at_ms) \
             VALUES ($1::uuid, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(partitions)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
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
        let mut tx = self.pool.begin().await?;
        // Lock the partition rows first, in the order commits lock them: a commit holds
        // partition rows before its batch rows lock the topic row (foreign key), so taking
        // the topic row first could deadlock with it.
        sqlx::query(
            "SELECT 1 FROM partitions p JOIN topics t ON t.id = p.topic_id \
             WHERE t.name = $1 ORDER BY p.topic_id, p.partition FOR UPDATE OF p",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM topics WHERE name = $1")
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
        // One transaction, so topics and their configs come from one snapshot.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id::text AS id, name, partitions FROM topics ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let mut topics = Vec::with_capacity(rows.len());
        for row in rows {
            topics.push(load_topic(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(topics)
    }

    async fn topic(&self, name: &str) -> Result<Option<Topic>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let topic = topic_by_name(&mut tx, name, false).await?;
        tx.commit().await?;
        Ok(topic)
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<Topic> {
        let mut tx = self.pool.begin().await?;
        let mut topic = topic_by_name(&mut tx, name, true)
            .await?
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        if total <= topic.partitions {
            return Err(MetadataError::InvalidPartitions(format!(
                "topic `{name}` has {} partitions; the new count {total} must be larger",
                topic.partitions
            )));
        }
        insert_partitions(&mut tx, topic.id, topic.partitions..total).await?;
        sqlx::query("UPDATE topics SET partitions = $1 WHERE id = $2::uuid")
            .bind(total)
            .bind(topic.id.to_string())
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
        let mut tx = self.pool.begin().await?;
        let mut topic = topic_by_name(&mut tx, name, true)
            .await?
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        replace_configs(&mut tx, topic.id, &configs).await?;
        tx.commit().await?;
        topic.configs = configs;
        Ok(topic)
    }

    async fn commit_object(&self, object: &ObjectCommit) -> Result<Vec<CommitOutcome>> {
        let chunks = &object.chunks;
        let rows = sqlx::query(COMMIT)
            .bind(&object.object_id)
            .bind(object.size as i64)
            .bind(now_ms())
            .bind(
                chunks
                    .iter()
                    .map(|c| c.topic.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(chunks.iter().map(|c| c.partition).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.offset_count).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.max_timestamp).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.position as i64).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.size as i64).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        let fresh = match rows.first() {
            Some(row) => row.try_get::<bool, _>("fresh")?,
            None => return Ok(Vec::new()),
        };
        let mut outcomes = vec![CommitOutcome::UnknownPartition; chunks.len()];
        let rows = if fresh {
            rows
        } else {
            // A retry of a commit that went through: answer with the first outcome.
            sqlx::query("SELECT chunk_index, base_offset FROM batches WHERE object_id = $1")
                .bind(&object.object_id)
                .fetch_all(&self.pool)
                .await?
        };
        for row in rows {
            let index: i32 = row.try_get("chunk_index")?;
            if let (Some(slot), Some(base_offset)) = (
                outcomes.get_mut(index as usize),
                row.try_get::<Option<i64>, _>("base_offset")?,
            ) {
                *slot = CommitOutcome::Committed { base_offset };
            }
        }
        Ok(outcomes)
    }

    async fn partition_offsets(&self, topic: TopicId, partition: i32) -> Result<PartitionOffsets> {
        let row = sqlx::query(
            "SELECT next_offset, log_start_offset FROM partitions \
             WHERE topic_id = $1::uuid AND partition = $2",
        )
        .bind(topic.to_string())
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
        let sql = "SELECT b.base_offset, b.last_offset, b.max_timestamp, b.object_id, \
             b.position, b.size FROM batches b \
             WHERE b.topic_id = $1::uuid AND b.partition = $2 AND b.last_offset >= $3 \
             ORDER BY b.base_offset LIMIT $4";
        let mut budget = BatchBudget::new(max_bytes);
        loop {
            let from = budget.next_offset().unwrap_or(from_offset);
            let rows = sqlx::query(sql)
                .bind(topic.to_string())
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
             WHERE b.topic_id = $1::uuid AND b.partition = $2 AND b.max_timestamp >= $3 \
             AND b.last_offset >= p.log_start_offset ORDER BY b.base_offset LIMIT 1",
        )
        .bind(topic.to_string())
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
             WHERE b.topic_id = $1::uuid AND b.partition = $2 \
             AND b.last_offset >= p.log_start_offset \
             ORDER BY b.max_timestamp DESC, b.base_offset ASC LIMIT 1",
        )
        .bind(topic.to_string())
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from).transpose()
    }
    async fn register_agent(&self, agent: &AgentRegistration, ttl: Duration) -> Result<i32> {
        sqlx::query(concat!(
            "DELETE FROM agents WHERE expires_at_ms < ",
            db_now_ms!(),
            " - $1"
        ))
        .bind(EXPIRED_AGENT_KEPT_MS)
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query(concat!(
            "INSERT INTO agents (zone, host, port, registered_at_ms, renewed_at_ms, ",
            "expires_at_ms) SELECT $1, $2, $3, now_ms, now_ms, now_ms + $4 FROM (SELECT ",
            db_now_ms!(),
            " AS now_ms) t RETURNING id"
        ))
        .bind(&agent.zone)
        .bind(&agent.host)
        .bind(agent.port)
        .bind(ttl_ms(ttl))
        .fetch_one(&self.pool)
        .await?
        .try_get("id")?)
    }

    async fn renew_agent(&self, id: i32, agent: &AgentRegistration, ttl: Duration) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO agents (id, zone, host, port, registered_at_ms, renewed_at_ms, ",
            "expires_at_ms) SELECT $1, $2, $3, $4, now_ms, now_ms, now_ms + $5 FROM (SELECT ",
            db_now_ms!(),
            " AS now_ms) t ON CONFLICT (id) DO UPDATE SET zone = excluded.zone, ",
            "host = excluded.host, port = excluded.port, ",
            "renewed_at_ms = excluded.renewed_at_ms, expires_at_ms = excluded.expires_at_ms"
        ))
        .bind(id)
        .bind(&agent.zone)
        .bind(&agent.host)
        .bind(agent.port)
        .bind(ttl_ms(ttl))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_agent(&self, id: i32) -> Result<()> {
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn live_agents(&self) -> Result<Vec<AgentInfo>> {
        sqlx::query(concat!(
            "SELECT id, zone, host, port, renewed_at_ms FROM agents WHERE expires_at_ms > ",
            db_now_ms!(),
            " ORDER BY id"
        ))
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
        sqlx::query(concat!(
            "INSERT INTO uploads (id, agent_id, reserved_at_ms) SELECT id, $2, ",
            db_now_ms!(),
            " FROM UNNEST($1::text[]) AS u (id)"
        ))
        .bind(object_ids)
        .bind(agent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_uploads(&self, object_ids: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = ANY($1::text[])")
            .bind(object_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn stale_uploads(&self, age: Duration) -> Result<Vec<Upload>> {
        sqlx::query(concat!(
            "SELECT id, agent_id, reserved_at_ms FROM uploads WHERE reserved_at_ms <= ",
            db_now_ms!(),
            " - $1 ORDER BY reserved_at_ms, id"
        ))
        .bind(ttl_ms(age))
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

    async fn announce(&self, from: i32, marks: &[HighWatermark]) -> Result<()> {
        let payloads = announce::encode(from, marks);
        if payloads.is_empty() {
            return Ok(());
        }
        // NOTIFY gives the transaction an id and so a commit record; not waiting for that
        // record to reach the disk keeps announcements off the WAL flush that commits queue
        // on. A notification lost in a crash is covered by the listeners' polling.
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, p) \
             FROM UNNEST($2::text[]) AS p",
        )
        .bind(announce::CHANNEL)
        .bind(payloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Announcement>>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(announce::CHANNEL).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(forward_announcements(listener, tx));
        Ok(Some(rx))
    }

    async fn acquire_group(&self, group: &str, agent: i32, ttl: Duration) -> Result<bool> {
        let taken = sqlx::query(concat!(
            "INSERT INTO group_leases (group_id, agent_id, expires_at_ms) ",
            "SELECT $1, $2, now_ms + $3 FROM (SELECT ",
            db_now_ms!(),
            " AS now_ms) t ON CONFLICT (group_id) DO UPDATE SET agent_id = EXCLUDED.agent_id, ",
            "expires_at_ms = EXCLUDED.expires_at_ms ",
            "WHERE group_leases.agent_id = EXCLUDED.agent_id OR group_leases.expires_at_ms <= ",
            db_now_ms!()
        ))
        .bind(group)
        .bind(agent)
        .bind(ttl_ms(ttl))
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
        let renewed: Vec<String> = sqlx::query(concat!(
            "UPDATE group_leases SET expires_at_ms = ",
            db_now_ms!(),
            " + $3 WHERE agent_id = $1 AND group_id = ANY($2::text[]) RETURNING group_id"
        ))
        .bind(agent)
        .bind(groups)
        .bind(ttl_ms(ttl))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| row.try_get("group_id"))
        .collect::<Result<_, _>>()?;
        Ok(groups
            .iter()
            .filter(|g| !renewed.contains(g))
            .cloned()
            .collect())
    }

    async fn release_group(&self, group: &str, agent: i32) -> Result<()> {
        sqlx::query("DELETE FROM group_leases WHERE group_id = $1 AND agent_id = $2")
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
        let topics: Vec<String> = offsets.iter().map(|o| o.topic.to_string()).collect();
        let partitions: Vec<i32> = offsets.iter().map(|o| o.partition).collect();
        let committed: Vec<i64> = offsets.iter().map(|o| o.offset).collect();
        let epochs: Vec<i32> = offsets.iter().map(|o| o.leader_epoch).collect();
        let metadata: Vec<Option<String>> = offsets.iter().map(|o| o.metadata.clone()).collect();
        let times: Vec<i64> = offsets.iter().map(|o| o.commit_time_ms).collect();
        let leased: bool = sqlx::query(concat!(
            "WITH lease AS (",
            lease_held!(),
            "), written AS (",
            "INSERT INTO group_offsets (group_id, topic_id, partition, committed_offset, ",
            "leader_epoch, metadata, commit_time_ms) ",
            "SELECT $1, o.t::uuid, o.p, o.c, o.e, o.m, o.ts ",
            "FROM UNNEST($3::text[], $4::int4[], $5::int8[], $6::int4[], $7::text[], $8::int8[]) ",
            "AS o (t, p, c, e, m, ts) WHERE EXISTS (SELECT 1 FROM lease) ",
            "ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET ",
            "committed_offset = EXCLUDED.committed_offset, leader_epoch = EXCLUDED.leader_epoch, ",
            "metadata = EXCLUDED.metadata, commit_time_ms = EXCLUDED.commit_time_ms ",
            "RETURNING 1) SELECT EXISTS (SELECT 1 FROM lease) AS leased"
        ))
        .bind(group)
        .bind(agent)
        .bind(topics)
        .bind(partitions)
        .bind(committed)
        .bind(epochs)
        .bind(metadata)
        .bind(times)
        .fetch_one(&self.pool)
        .await?
        .try_get("leased")?;
        leased_or_fenced(leased, group)
    }

    async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        sqlx::query(
            "SELECT topic_id::text AS topic_id, partition, committed_offset, leader_epoch, \
             metadata, commit_time_ms FROM group_offsets WHERE group_id = $1 \
             ORDER BY topic_id, partition",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(CommittedOffset {
                topic: topic_id_from(row.try_get("topic_id")?)?,
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
        let topics: Vec<String> = partitions.iter().map(|(t, _)| t.to_string()).collect();
        let indexes: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let leased: bool = sqlx::query(concat!(
            "WITH lease AS (",
            lease_held!(),
            "), deleted AS (DELETE FROM group_offsets g USING UNNEST($3::text[], $4::int4[]) ",
            "AS d (t, p) WHERE EXISTS (SELECT 1 FROM lease) AND g.group_id = $1 ",
            "AND g.topic_id = d.t::uuid AND g.partition = d.p RETURNING 1) ",
            "SELECT EXISTS (SELECT 1 FROM lease) AS leased"
        ))
        .bind(group)
        .bind(agent)
        .bind(topics)
        .bind(indexes)
        .fetch_one(&self.pool)
        .await?
        .try_get("leased")?;
        leased_or_fenced(leased, group)
    }

    async fn save_group(&self, group: &str, agent: i32, state: &[u8]) -> Result<()> {
        let leased: bool = sqlx::query(concat!(
            "WITH lease AS (",
            lease_held!(),
            "), saved AS (INSERT INTO consumer_groups (group_id, state, updated_at_ms) ",
            "SELECT $1, $3, ",
            db_now_ms!(),
            " WHERE EXISTS (SELECT 1 FROM lease) ON CONFLICT (group_id) DO UPDATE SET ",
            "state = EXCLUDED.state, updated_at_ms = EXCLUDED.updated_at_ms RETURNING 1) ",
            "SELECT EXISTS (SELECT 1 FROM lease) AS leased"
        ))
        .bind(group)
        .bind(agent)
        .bind(state)
        .fetch_one(&self.pool)
        .await?
        .try_get("leased")?;
        leased_or_fenced(leased, group)
    }

    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query("SELECT state FROM consumer_groups WHERE group_id = $1")
                .bind(group)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?,
        )
    }

    async fn delete_group(&self, group: &str, agent: i32) -> Result<()> {
        let leased: bool = sqlx::query(concat!(
            "WITH lease AS (",
            lease_held!(),
            "), states AS (DELETE FROM consumer_groups WHERE group_id = $1 ",
            "AND EXISTS (SELECT 1 FROM lease) RETURNING 1), ",
            "offsets AS (DELETE FROM group_offsets WHERE group_id = $1 ",
            "AND EXISTS (SELECT 1 FROM lease) RETURNING 1) ",
            "SELECT EXISTS (SELECT 1 FROM lease) AS leased"
        ))
        .bind(group)
        .bind(agent)
        .fetch_one(&self.pool)
        .await?
        .try_get("leased")?;
        leased_or_fenced(leased, group)
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE partitions SET log_start_offset = \
             GREATEST(log_start_offset, LEAST($3, next_offset)) \
             WHERE topic_id = $1::uuid AND partition = $2 RETURNING log_start_offset",
        )
        .bind(topic.to_string())
        .bind(partition)
        .bind(offset)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| MetadataError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })?;
        let start: i64 = row.try_get("log_start_offset")?;
        sqlx::query(
            "DELETE FROM batches WHERE topic_id = $1::uuid AND partition = $2 \
             AND last_offset < $3",
        )
        .bind(topic.to_string())
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
             AND size < $1 AND committed_at_ms <= $2 ORDER BY committed_at_ms, id LIMIT $3",
        )
        .bind(max_size.min(i64::MAX as u64) as i64)
        .bind(now_ms() - ttl_ms(min_age))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredObject {
                id: row.try_get("id")?,
                size: row.try_get::<i64, _>("size")? as u64,
                level: row.try_get("level")?,
                committed_at_ms: row.try_get("committed_at_ms")?,
            })
        })
        .collect()
    }

    async fn object_batches(&self, object_ids: &[String]) -> Result<Vec<PartitionBatch>> {
        sqlx::query(
            "SELECT topic_id::text AS topic_id, partition, base_offset, last_offset, \
             max_timestamp, object_id, position, size FROM batches \
             WHERE object_id = ANY($1::text[]) ORDER BY topic_id, partition, base_offset",
        )
        .bind(object_ids)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(PartitionBatch {
                topic: topic_id_from(row.try_get("topic_id")?)?,
                partition: row.try_get("partition")?,
                entry: entry_from(row)?,
            })
        })
        .collect()
    }

    async fn swap_batches(&self, swap: &IndexSwap) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let old = &swap.replaced;
        // Row locks taken by the DELETE make a concurrent retention or swap of the same rows
        // wait, then find them gone.
        let gone = sqlx::query(
            "DELETE FROM batches b USING UNNEST($1::uuid[], $2::int4[], $3::int8[], \
             $4::int8[], $5::text[]) AS r(topic_id, partition, base_offset, last_offset, \
             object_id) WHERE b.topic_id = r.topic_id AND b.partition = r.partition \
             AND b.base_offset = r.base_offset AND b.last_offset = r.last_offset \
             AND b.object_id = r.object_id",
        )
        .bind(old.iter().map(|r| r.topic.to_string()).collect::<Vec<_>>())
        .bind(old.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(old.iter().map(|r| r.entry.base_offset).collect::<Vec<_>>())
        .bind(old.iter().map(|r| r.entry.last_offset).collect::<Vec<_>>())
        .bind(
            old.iter()
                .map(|r| r.entry.object_id.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() != old.len() as u64 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO objects (id, size, committed_at_ms, level) VALUES ($1, $2, $3, $4)",
        )
        .bind(&swap.object_id)
        .bind(swap.size as i64)
        .bind(now_ms())
        .bind(swap.level)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(&swap.object_id)
            .execute(&mut *tx)
            .await?;
        let new = &swap.rows;
        sqlx::query(
            "INSERT INTO batches (topic_id, partition, base_offset, last_offset, \
             max_timestamp, object_id, position, size, chunk_index) \
             SELECT r.topic_id, r.partition, r.base_offset, r.last_offset, r.max_timestamp, \
             $6, r.position, r.size, (r.ord - 1)::int4 \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], \
             $7::int8[], $8::int8[]) WITH ORDINALITY \
             AS r(topic_id, partition, base_offset, last_offset, max_timestamp, position, size, ord)",
        )
        .bind(new.iter().map(|r| r.topic.to_string()).collect::<Vec<_>>())
        .bind(new.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(new.iter().map(|r| r.entry.base_offset).collect::<Vec<_>>())
        .bind(new.iter().map(|r| r.entry.last_offset).collect::<Vec<_>>())
        .bind(new.iter().map(|r| r.entry.max_timestamp).collect::<Vec<_>>())
        .bind(&swap.object_id)
        .bind(new.iter().map(|r| r.entry.position as i64).collect::<Vec<_>>())
        .bind(new.iter().map(|r| r.entry.size as i64).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(concat!(
            "UPDATE objects SET unreferenced_at_ms = ",
            db_now_ms!(),
            " WHERE unreferenced_at_ms IS NULL AND deleted_at_ms IS NULL ",
            "AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.id)"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(concat!(
            "DELETE FROM objects WHERE deleted_at_ms <= ",
            db_now_ms!(),
            " - $1"
        ))
        .bind(OBJECT_TOMBSTONE_KEPT_MS)
        .execute(&mut *tx)
        .await?;
        let ids = sqlx::query(concat!(
            "SELECT id FROM objects WHERE deleted_at_ms IS NULL AND unreferenced_at_ms <= ",
            db_now_ms!(),
            " - $1 ORDER BY unreferenced_at_ms, id LIMIT $2"
        ))
        .bind(ttl_ms(grace))
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
        sqlx::query(concat!(
            "UPDATE objects SET deleted_at_ms = ",
            db_now_ms!(),
            " WHERE id = ANY($1::text[])"
        ))
        .bind(object_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let taken = sqlx::query(concat!(
            "INSERT INTO leases (name, holder, expires_at_ms) ",
            "SELECT $1, $2, now_ms + $3 FROM (SELECT ",
            db_now_ms!(),
            " AS now_ms) t ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, ",
            "expires_at_ms = EXCLUDED.expires_at_ms ",
            "WHERE leases.holder = EXCLUDED.holder OR leases.expires_at_ms <= ",
            db_now_ms!()
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl_ms(ttl))
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
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
             WHERE job = $1 AND topic_id = $2::uuid AND partition = $3",
        )
        .bind(job)
        .bind(topic.to_string())
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
             VALUES ($1, $2::uuid, $3, $4) ON CONFLICT (job, topic_id, partition) \
             DO UPDATE SET next_offset = EXCLUDED.next_offset",
        )
        .bind(job)
        .bind(topic.to_string())
        .bind(partition)
        .bind(next_offset)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Turns a lease check's answer into the error a fenced coordinator gets.
fn leased_or_fenced(leased: bool, group: &str) -> Result<()> {
    if leased {
        Ok(())
    } else {
        Err(MetadataError::NotGroupCoordinator(group.to_string()))
    }
}

/// Passes notifications on until the receiver goes away. A lost connection becomes
/// [`Announcement::Gap`]: notifications sent meanwhile are gone, so listeners look again.
async fn forward_announcements(mut listener: PgListener, tx: mpsc::Sender<Announcement>) {
    loop {
        let announcement = tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => match announce::decode(notification.payload()) {
                    Some(announcement) => announcement,
                    None => continue,
                },
                Ok(None) => Announcement::Gap,
                Err(e) => {
                    tracing::debug!(error = %e, "commit notifications unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Announcement::Gap
                }
            },
            _ = tx.closed() => return,
        };
        if tx.send(announcement).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::testing::TestPostgres;
    use crate::{ChunkCommit, CommitOutcome, MetadataStore, ObjectCommit, PostgresStore};

    /// What only the single-statement commit can get wrong: two chunks of one partition in
    /// one object, mixed with an unknown partition, then retried.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_of_one_partition_take_consecutive_ranges() {
        let Some(pg) = TestPostgres::start_unless_skipped().unwrap() else {
            return;
        };
        let store = PostgresStore::open(&pg.create_database().await.unwrap())
            .await
            .unwrap();
        let t = store.create_topic("t", 1, BTreeMap::new()).await.unwrap();
        let chunk = |partition, offset_count| ChunkCommit {
            topic: t.id,
            partition,
            offset_count,
            max_timestamp: 1,
            position: 0,
            size: 10,
        };
        let object = ObjectCommit {
            object_id: "obj-dup".to_string(),
            size: 30,
            chunks: vec![chunk(0, 3), chunk(9, 1), chunk(0, 2)],
        };
        let expected = vec![
            CommitOutcome::Committed { base_offset: 0 },
            CommitOutcome::UnknownPartition,
            CommitOutcome::Committed { base_offset: 3 },
        ];
        assert_eq!(store.commit_object(&object).await.unwrap(), expected);
        assert_eq!(store.commit_object(&object).await.unwrap(), expected);
        let offsets = store.partition_offsets(t.id, 0).await.unwrap();
        assert_eq!(offsets.high_watermark, 5);
        let rows = store.batches(t.id, 0, 0, u64::MAX).await.unwrap();
        assert_eq!(
            rows.iter()
                .map(|b| (b.base_offset, b.last_offset))
                .collect::<Vec<_>>(),
            vec![(0, 2), (3, 4)]
        );
    }
}
