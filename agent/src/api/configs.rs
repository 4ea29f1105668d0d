//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and a read-only
//! view of the agent's own settings as the broker resource).

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};

use super::topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use super::{Context, metadata_error_code, str_bytes};
use shoal_metadata::topic_config::{self, ConfigType, TOPIC_CONFIGS, config_def};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config source of a broker's static configuration.
const SOURCE_STATIC_BROKER: i8 = 4;

pub async fn describe(ctx: &Context, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let keys: Option<Vec<String>> = resource
            .configuration_keys
            .map(|keys| keys.iter().map(|k| k.to_string()).collect());
        let wanted = |config: &str| keys.as_ref().is_none_or(|k| k.iter().any(|n| n == config));
        let result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let configs = match resource.resource_type {
            RESOURCE_TOPIC => match ctx.catalog.by_name(&name).await {
                Ok(Some(entry)) => Ok(TOPIC_CONFIGS
                    .iter()
                    .filter(|def| wanted(def.name))
                    .map(|def| {
                        let (value, source) = match entry.topic.configs.get(def.name) {
                            Some(v) => (v.clone(), SOURCE_TOPIC),
                            None => (def.default.to_string(), SOURCE_DEFAULT),
                        };
                        let mut config = DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(def.name))
                            .with_value(Some(str_bytes(value)))
                            .with_config_source(source)
                            .with_config_type(def.kind.code());
                        if request.include_documentation {
                            config = config.with_documentation(Some(str_bytes(def.doc)));
                        }
                        config
                    })
                    .collect()),
                Ok(None) => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("unknown topic `{name}`"),
                )),
                Err(e) => Err((metadata_error_code(&e), e.to_string())),
            },
            RESOURCE_BROKER => Ok(broker_configs(ctx)
                .into_iter()
                .filter(|(n, _, _)| wanted(n))
                .map(|(n, v, kind)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(n))
                        .with_value(Some(str_bytes(v)))
                        .with_read_only(true)
                        .with_config_source(SOURCE_STATIC_BROKER)
                        .with_config_type(kind.code())
                })
                .collect()),
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!("resource type {other} has no configs here"),
            )),
        };
        results.push(match configs {
            Ok(configs) => result.with_configs(configs),
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn broker_configs(ctx: &Context) -> Vec<(&'static str, String, ConfigType)> {
    let c = &ctx.config;
    vec![
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            ConfigType::Boolean,
        ),
        (
            "num.partitions",
            c.num_partitions.to_string(),
            ConfigType::Int,
        ),
        (
            "socket.request.max.bytes",
            c.max_request_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "message.max.bytes",
            topic_config::DEFAULT_MAX_MESSAGE_BYTES.to_string(),
            ConfigType::Int,
        ),
        (
            "default.replication.factor",
            "1".to_string(),
            ConfigType::Int,
        ),
    ]
}

/// Applies new topic configs: validated, then stored in one sequencer call.
async fn apply(
    ctx: &Context,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String>,
) -> Result<(), (i16, String)> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            ResponseError::InvalidRequest.code(),
            "only topic configs can be altered".to_string(),
        ));
    }
    let entry = match ctx.catalog.by_name(name).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            return Err((
                ResponseError::UnknownTopicOrPartition.code(),
                format!("unknown topic `{name}`"),
            ));
        }
        Err(e) => return Err((metadata_error_code(&e), e.to_string())),
    };
    let configs = change(&entry.topic.configs)
        .and_then(|c| topic_config::validate_all(&c).map(|_| c))
        .map_err(|m| (ResponseError::InvalidConfig.code(), m))?;
    if validate_only {
        return Ok(());
    }
    ctx.catalog
        .change(ctx.catalog.store().set_topic_configs(name, configs))
        .await
        .map(drop)
        .map_err(|e| (metadata_error_code(&e), e.to_string()))
}

pub async fn alter(ctx: &Context, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        // AlterConfigs replaces the whole set: configs not named return to their defaults.
        let outcome = apply(
            ctx,
            resource.resource_type,
            &name,
            request.validate_only,
            |_| {
                resource
                    .configs
                    .iter()
                    .map(|c| match &c.value {
                        Some(v) => Ok((c.name.to_string(), v.to_string())),
                        None => Err(format!("config `{}` has no value", c.name)),
                    })
                    .collect()
            },
        )
        .await;
        let response = alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, message)) => response
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message))),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub async fn incremental_alter(
    ctx: &Context,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let outcome = apply(
            ctx,
            resource.resource_type,
            &name,
            request.validate_only,
            |current| {
                let mut configs = current.clone();
                for op in &resource.configs {
                    let key = op.name.to_string();
                    let value = op.value.as_ref().map(|v| v.to_string());
                    let is_list = config_def(&key).is_some_and(|d| d.kind == ConfigType::List);
                    match (op.config_operation, value) {
                        (OP_SET, Some(v)) => {
                            configs.insert(key, v);
                        }
                        (OP_DELETE, _) => {
                            configs.remove(&key);
                        }
                        (OP_APPEND | OP_SUBTRACT, Some(v)) if is_list => {
                            let default = config_def(&key).map(|d| d.default).unwrap_or("");
                            let existing = configs.get(&key).map(String::as_str).unwrap_or(default);
                            let mut items: Vec<String> = existing
                                .split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect();
                            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                                if op.config_operation == OP_APPEND {
                                    if !items.iter().any(|i| i == item) {
                                        items.push(item.to_string());
                                    }
                                } else {
                                    items.retain(|i| i != item);
                                }
                            }
                            configs.insert(key, items.join(","));
                        }
                        (OP_APPEND | OP_SUBTRACT, Some(_)) => {
                            return Err(format!(
                                "`{key}` is not a list; APPEND and SUBTRACT need one"
                            ));
                        }
                        (OP_SET | OP_APPEND | OP_SUBTRACT, None) => {
                            return Err(format!("config `{key}` has no value"));
                        }
                        (other, _) => return Err(format!("unknown config operation {other}")),
                    }
                }
                Ok(configs)
            },
        )
        .await;
        let response = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, message)) => response
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message))),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
