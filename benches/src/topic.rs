//! Topic setup and consumer start offsets before the run, each step bounded in time.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset};

/// Bound on each setup request, so an unreachable broker fails fast with a clear message.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the topic's partition count, creating it with `partitions` if the broker lacks it.
pub fn ensure(bootstrap: &str, topic: &str, partitions: i32) -> Result<usize> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating metadata client")?;
    if let Some(count) = partition_count(&probe, bootstrap, topic)? {
        return Ok(count);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating admin client")?;
    let options = AdminOptions::new()
        .request_timeout(Some(SETUP_TIMEOUT))
        .operation_timeout(Some(SETUP_TIMEOUT));
    // Replication -1 takes the broker's default, which every broker accepts.
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let results = futures::executor::block_on(admin.create_topics([&new_topic], &options))
        .with_context(|| format!("creating topic {topic} (10s timeout)"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    // Metadata may trail creation for a moment.
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Some(count) = partition_count(&probe, bootstrap, topic)? {
            return Ok(count);
        }
        if Instant::now() >= deadline {
            bail!("topic {topic} was created but is missing from metadata after 10s");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn partition_count(probe: &BaseConsumer, bootstrap: &str, topic: &str) -> Result<Option<usize>> {
    // All topics are listed rather than asking for this one, which could auto-create it.
    let metadata = probe.fetch_metadata(None, SETUP_TIMEOUT).with_context(|| {
        format!("no broker at {bootstrap} answered a Metadata request within 10s")
    })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Where each partition's reading starts, indexed by partition: its beginning, or its
/// current end (high watermark) so that only records produced from now on are read.
pub fn start_offsets(
    bootstrap: &str,
    topic: &str,
    partitions: usize,
    from_beginning: bool,
) -> Result<Vec<Offset>> {
    if from_beginning {
        return Ok(vec![Offset::Beginning; partitions]);
    }
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating offset client")?;
    (0..partitions as i32)
        .map(|partition| {
            let (_, high) = client
                .fetch_watermarks(topic, partition, SETUP_TIMEOUT)
                .with_context(|| format!("listing the end offset of {topic}/{partition}"))?;
            Ok(Offset::Offset(high))
        })
        .collect()
}
