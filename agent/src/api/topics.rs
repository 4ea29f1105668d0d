//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};

use super::{Context, RequestContext, metadata_error_code, str_bytes};
use crate::names::validate_topic_name;
use shoal_metadata::topic_config::{self, TOPIC_CONFIGS};

/// Kafka's DescribeConfigs/CreateTopics config source codes.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_DEFAULT: i8 = 5;

pub async fn create_topics(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.to_string();
        let mut result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let partitions = if !topic.assignments.is_empty() {
            topic.assignments.len() as i32
        } else if topic.num_partitions == -1 {
            ctx.config.num_partitions
        } else {
            topic.num_partitions
        };
        // The object store is the replication; any requested factor is accepted and
        // reported back so tools that insist on 3 keep working.
        let replication = if topic.replication_factor == -1 {
            1
        } else {
            topic.replication_factor
        };
        let mut configs = BTreeMap::new();
        let mut invalid = None;
        for config in &topic.configs {
            match &config.value {
                Some(value) => {
                    configs.insert(config.name.to_string(), value.to_string());
                }
                None => invalid = Some(format!("config `{}` has no value", config.name)),
            }
        }
        let checked = validate_topic_name(&name)
            .map_err(|m| (ResponseError::InvalidTopicException.code(), m))
            .and_then(|_| {
                if partitions < 1 {
                    Err((
                        ResponseError::InvalidPartitions.code(),
                        format!("number of partitions must be at least 1, got {partitions}"),
                    ))
                } else if replication < 1 {
                    Err((
                        ResponseError::InvalidReplicationFactor.code(),
                        format!("replication factor must be at least 1, got {replication}"),
                    ))
                } else {
                    Ok(())
                }
            })
            .and_then(|_| match invalid.take() {
                Some(m) => Err((ResponseError::InvalidConfig.code(), m)),
                None => topic_config::validate_all(&configs)
                    .map_err(|m| (ResponseError::InvalidConfig.code(), m)),
            });
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(()) if request.validate_only => match ctx.catalog.by_name(&name).await {
                Ok(Some(_)) => Err((
                    ResponseError::TopicAlreadyExists.code(),
                    format!("topic `{name}` already exists"),
                )),
                Ok(None) => Ok(None),
                Err(e) => Err((metadata_error_code(&e), e.to_string())),
            },
            Ok(()) => match ctx.catalog.create(&name, partitions, configs.clone()).await {
                Ok(created) => {
                    tracing::info!(topic = %name, partitions, "created topic");
                    Ok(Some(created.id))
                }
                Err(e) => Err((metadata_error_code(&e), e.to_string())),
            },
        };
        result = match outcome {
            Ok(id) => {
                let mut result = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication);
                if let Some(id) = id {
                    result = result.with_topic_id(id);
                }
                if request_ctx.version >= 5 {
                    result = result.with_configs(Some(described_configs(&configs)));
                }
                result
            }
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message))),
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Every topic config with its effective value, as CreateTopics v5+ reports them.
fn described_configs(set: &BTreeMap<String, String>) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = match set.get(def.name) {
                Some(v) => (v.clone(), SOURCE_TOPIC),
                None => (def.default.to_string(), SOURCE_DEFAULT),
            };
            CreatableTopicConfigs::default()
                .with_name(str_bytes(def.name))
                .with_value(Some(str_bytes(value)))
                .with_config_source(source)
        })
        .collect()
}

pub async fn delete_topics(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; earlier versions by name only.
    let targets: Vec<(Option<TopicName>, uuid::Uuid)> = if request_ctx.version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let entry = match &name {
            Some(name) => ctx.catalog.by_name(name.as_str()).await,
            None => ctx.catalog.by_id(id).await,
        };
        let result = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(id);
        let outcome = match entry {
            Ok(Some(entry)) => {
                let topic_name = entry.topic.name.clone();
                ctx.catalog
                    .change(ctx.catalog.store().delete_topic(&topic_name))
                    .await
                    .map(|_| {
                        tracing::info!(topic = %topic_name, "deleted topic");
                        (topic_name, entry.topic.id)
                    })
                    .map_err(|e| metadata_error_code(&e))
            }
            Ok(None) if name.is_none() => Err(ResponseError::UnknownTopicId.code()),
            Ok(None) => Err(ResponseError::UnknownTopicOrPartition.code()),
            Err(e) => Err(metadata_error_code(&e)),
        };
        responses.push(match outcome {
            Ok((topic_name, topic_id)) => result
                .with_name(Some(TopicName(str_bytes(topic_name))))
                .with_topic_id(topic_id),
            Err(code) => result.with_error_code(code),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    ctx: &Context,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.to_string();
        let outcome = match ctx.catalog.by_name(&name).await {
            Ok(None) => Err((
                ResponseError::UnknownTopicOrPartition.code(),
                format!("unknown topic `{name}`"),
            )),
            Err(e) => Err((metadata_error_code(&e), e.to_string())),
            Ok(Some(entry)) if topic.count <= entry.topic.partitions => Err((
                ResponseError::InvalidPartitions.code(),
                format!(
                    "topic `{name}` has {} partitions; the new count {} must be larger",
                    entry.topic.partitions, topic.count
                ),
            )),
            Ok(Some(_)) if request.validate_only => Ok(()),
            Ok(Some(_)) => ctx
                .catalog
                .change(ctx.catalog.store().create_partitions(&name, topic.count))
                .await
                .map(drop)
                .map_err(|e| (metadata_error_code(&e), e.to_string())),
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name);
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
