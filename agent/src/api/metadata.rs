//! Metadata: the agents clients should talk to and the topics they host, creating unknown
//! topics on request as Kafka's `auto.create.topics.enable` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use shoal_metadata::{AgentInfo, MetadataError};

use super::{Context, RequestContext, metadata_error_code, str_bytes};
use crate::catalog::TopicEntry;
use crate::fleet::leader;
use crate::names::validate_topic_name;

pub async fn handle(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: MetadataRequest,
) -> MetadataResponse {
    let version = request_ctx.version;
    let agents = ctx.fleet.for_client(request_ctx.client_id.as_deref());
    // v0 asks for every topic with an empty list; later versions with a null one.
    let wanted = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics),
    };
    let allow_create =
        ctx.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let topics = match wanted {
        None => match ctx.catalog.all().await {
            Ok(all) => all.iter().map(|entry| describe(&agents, entry)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "metadata: cannot list topics");
                Vec::new()
            }
        },
        Some(requested) => {
            let mut topics = Vec::with_capacity(requested.len());
            for topic in requested {
                let found = match (&topic.name, topic.topic_id.is_nil()) {
                    (Some(name), _) => lookup(ctx, name.as_str(), allow_create).await,
                    (None, false) => match ctx.catalog.by_id(topic.topic_id).await {
                        Ok(Some(entry)) => Ok(entry),
                        Ok(None) => Err(ResponseError::UnknownTopicId.code()),
                        Err(e) => Err(metadata_error_code(&e)),
                    },
                    (None, true) => Err(ResponseError::InvalidRequest.code()),
                };
                topics.push(match found {
                    Ok(entry) => describe(&agents, &entry),
                    Err(code) => MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(topic.name.clone())
                        .with_topic_id(topic.topic_id),
                });
            }
            topics
        }
    };
    let brokers = agents
        .iter()
        .map(|agent| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(agent.id))
                .with_host(str_bytes(agent.host.clone()))
                .with_port(agent.port)
                .with_rack(agent.zone.clone().map(str_bytes))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(ctx.cluster_id.clone())))
        .with_controller_id(BrokerId(controller(&agents)))
        .with_topics(topics)
}

/// The agent named as controller: any agent serves admin requests, so the lowest id listed
/// (stable while the fleet is unchanged).
pub fn controller(agents: &[AgentInfo]) -> i32 {
    agents.iter().map(|agent| agent.id).min().unwrap_or(-1)
}

async fn lookup(ctx: &Context, name: &str, allow_create: bool) -> Result<Arc<TopicEntry>, i16> {
    match ctx.catalog.by_name(name).await {
        Ok(Some(entry)) => return Ok(entry),
        Ok(None) if !allow_create => return Err(ResponseError::UnknownTopicOrPartition.code()),
        Ok(None) => {}
        Err(e) => return Err(metadata_error_code(&e)),
    }
    if validate_topic_name(name).is_err() {
        return Err(ResponseError::InvalidTopicException.code());
    }
    match ctx
        .catalog
        .create(name, ctx.config.num_partitions, BTreeMap::new())
        .await
    {
        Ok(_) | Err(MetadataError::TopicExists(_)) => {
            tracing::info!(
                topic = name,
                partitions = ctx.config.num_partitions,
                "auto-created topic"
            );
        }
        Err(e) => return Err(metadata_error_code(&e)),
    }
    match ctx.catalog.by_name(name).await {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => Err(ResponseError::UnknownTopicOrPartition.code()),
        Err(e) => Err(metadata_error_code(&e)),
    }
}

/// A topic with each partition led by one of `agents`; every agent serves every partition,
/// so the leader only tells the client where to send.
fn describe(agents: &[AgentInfo], entry: &TopicEntry) -> MetadataResponseTopic {
    let partitions = (0..entry.topic.partitions)
        .map(|p| {
            let leader = BrokerId(leader(agents, entry.topic.id, p).unwrap_or(-1));
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(leader)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![leader])
                .with_isr_nodes(vec![leader])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(entry.topic.name.clone()))))
        .with_topic_id(entry.topic.id)
        .with_partitions(partitions)
}
