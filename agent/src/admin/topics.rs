//! `shoal admin topics ...`: CreateTopics, Metadata, ListOffsets, DescribeConfigs,
//! IncrementalAlterConfigs, DeleteTopics and CreatePartitions.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, TopicName,
};
use std::collections::BTreeMap;

use serde::Serialize;

use super::TopicsCommand;
use super::client::Client;
use super::cluster::{self, EARLIEST, LATEST};
use super::error::{AdminError, Refusal};
use super::output::{Format, Report, Table, cell, finish, print};
use crate::api::str_bytes;

/// Kafka's resource type of topics in the config APIs.
const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub async fn run(
    client: &mut Client,
    format: Format,
    command: TopicsCommand,
) -> Result<(), AdminError> {
    match command {
        TopicsCommand::Create {
            name,
            partitions,
            configs,
        } => create(client, format, name, partitions, configs).await,
        TopicsCommand::List => list(client, format).await,
        TopicsCommand::Describe { names } => describe(client, format, names).await,
        TopicsCommand::AlterConfig { name, set, delete } => {
            alter_config(client, format, name, set, delete).await
        }
        TopicsCommand::Delete { names } => delete_topics(client, format, names).await,
        TopicsCommand::AddPartitions { name, total } => {
            add_partitions(client, format, name, total).await
        }
    }
}

/// How long the agent may take over a topic change, as the request states it.
const OPERATION_TIMEOUT_MS: i32 = 30_000;

#[derive(Serialize)]
struct Created {
    topic: String,
    topic_id: Option<String>,
    partitions: i32,
}

impl Report for Created {
    fn table(&self) -> String {
        format!(
            "Created topic {} with {}.\n",
            self.topic,
            partitions(self.partitions)
        )
    }
}

async fn create(
    client: &mut Client,
    format: Format,
    name: String,
    partitions: Option<i32>,
    configs: Vec<(String, String)>,
) -> Result<(), AdminError> {
    let (_, response) = client
        .send(None, 2..=7, |version| {
            // -1 (the agent's default) is understood from v4.
            let default = if version >= 4 { -1 } else { 1 };
            CreateTopicsRequest::default()
                .with_timeout_ms(OPERATION_TIMEOUT_MS)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(TopicName(str_bytes(name.clone())))
                        .with_num_partitions(partitions.unwrap_or(default))
                        .with_replication_factor(default as i16)
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    CreatableTopicConfig::default()
                                        .with_name(str_bytes(k.clone()))
                                        .with_value(Some(str_bytes(v.clone())))
                                })
                                .collect(),
                        ),
                ])
        })
        .await?;
    let result = response
        .topics
        .into_iter()
        .find(|t| t.name.as_str() == name)
        .ok_or_else(|| missing(client, ApiKey::CreateTopics, &name))?;
    if result.error_code != 0 {
        return Err(AdminError::refused(
            format!("topic `{name}`"),
            result.error_code,
            result.error_message.map(|m| m.to_string()),
        ));
    }
    // Before v5 the answer has no partition count: ask.
    let partitions = if result.num_partitions > 0 {
        result.num_partitions
    } else {
        cluster::metadata(client, Some(std::slice::from_ref(&name)))
            .await?
            .topic(&name)
            .map_or(-1, |t| t.partitions.len() as i32)
    };
    print(
        format,
        &Created {
            topic: name,
            topic_id: (!result.topic_id.is_nil()).then(|| result.topic_id.to_string()),
            partitions,
        },
    );
    Ok(())
}

fn partitions(n: i32) -> String {
    if n == 1 {
        "1 partition".to_string()
    } else {
        format!("{n} partitions")
    }
}

/// An answer that leaves out the topic asked about.
fn missing(client: &Client, api: ApiKey, name: &str) -> AdminError {
    AdminError::BadAnswer {
        addr: client.bootstrap().to_string(),
        api,
        reason: format!("no result for topic `{name}`"),
    }
}

#[derive(Serialize)]
struct Listed {
    topic: String,
    topic_id: String,
    partitions: usize,
}

#[derive(Serialize)]
#[serde(transparent)]
struct TopicList(Vec<Listed>);

impl Report for TopicList {
    fn table(&self) -> String {
        let mut table = Table::new(&["TOPIC", "PARTITIONS", "TOPIC-ID"]);
        for t in &self.0 {
            table.row(vec![
                t.topic.clone(),
                t.partitions.to_string(),
                t.topic_id.clone(),
            ]);
        }
        table.render()
    }
}

async fn list(client: &mut Client, format: Format) -> Result<(), AdminError> {
    let view = cluster::metadata(client, None).await?;
    let topics = view
        .topics
        .into_iter()
        .map(|t| Listed {
            topic: t.name,
            topic_id: t.id.to_string(),
            partitions: t.partitions.len(),
        })
        .collect();
    print(format, &TopicList(topics));
    Ok(())
}

#[derive(Serialize)]
struct Described {
    topic: String,
    topic_id: String,
    partitions: Vec<DescribedPartition>,
    configs: Vec<DescribedConfig>,
}

#[derive(Serialize)]
struct DescribedPartition {
    partition: i32,
    leader: i32,
    log_start_offset: Option<i64>,
    high_watermark: Option<i64>,
}

#[derive(Serialize)]
struct DescribedConfig {
    name: String,
    value: Option<String>,
    source: &'static str,
    read_only: bool,
}

#[derive(Serialize)]
#[serde(transparent)]
struct Descriptions(Vec<Described>);

impl Report for Descriptions {
    fn table(&self) -> String {
        let mut out = String::new();
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!(
                "Topic: {}  Id: {}  Partitions: {}\n",
                t.topic,
                t.topic_id,
                t.partitions.len()
            ));
            let mut partitions =
                Table::new(&["PARTITION", "LEADER", "LOG-START-OFFSET", "HIGH-WATERMARK"]);
            for p in &t.partitions {
                partitions.row(vec![
                    p.partition.to_string(),
                    p.leader.to_string(),
                    cell(p.log_start_offset),
                    cell(p.high_watermark),
                ]);
            }
            out.push_str(&partitions.render());
            // As Kafka's tools: the configs set on the topic; JSON lists every one.
            let set: Vec<&DescribedConfig> = t
                .configs
                .iter()
                .filter(|c| c.source != DEFAULT_SOURCE)
                .collect();
            out.push('\n');
            if set.is_empty() {
                out.push_str("No configs set: every config has its default.\n");
            } else {
                let mut configs = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
                for c in set {
                    configs.row(vec![
                        c.name.clone(),
                        cell(c.value.as_ref()),
                        c.source.to_string(),
                    ]);
                }
                out.push_str(&configs.render());
            }
        }
        out
    }
}

const DEFAULT_SOURCE: &str = "DEFAULT_CONFIG";

/// Kafka's config source codes, named as its tools name them.
fn config_source(code: i8) -> &'static str {
    match code {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => DEFAULT_SOURCE,
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

async fn describe(
    client: &mut Client,
    format: Format,
    names: Vec<String>,
) -> Result<(), AdminError> {
    let view = cluster::metadata(client, Some(&names)).await?;
    let mut refused = view.refused.clone();
    let partitions: Vec<(String, i32)> = view
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|(p, _)| (t.name.clone(), *p)))
        .collect();
    let earliest = cluster::list_offsets(client, &view, &partitions, EARLIEST).await?;
    let latest = cluster::list_offsets(client, &view, &partitions, LATEST).await?;
    let mut configs = if view.topics.is_empty() {
        Default::default()
    } else {
        describe_configs(
            client,
            &view
                .topics
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
        )
        .await?
    };
    let mut described = Vec::new();
    // In the order asked for, as Kafka's tools print them.
    for name in &names {
        let Some(topic) = view.topic(name) else {
            continue;
        };
        let mut offset = |offsets: &BTreeMap<_, Result<i64, Refusal>>, p: i32| match offsets
            .get(&(topic.name.clone(), p))
        {
            Some(Ok(o)) => Some(*o),
            Some(Err(r)) => {
                refused.push(r.clone());
                None
            }
            None => None,
        };
        let partitions = topic
            .partitions
            .iter()
            .map(|&(p, leader)| DescribedPartition {
                partition: p,
                leader,
                log_start_offset: offset(&earliest, p),
                high_watermark: offset(&latest, p),
            })
            .collect();
        let topic_configs = match configs.remove(&topic.name) {
            Some(Ok(c)) => c,
            Some(Err(r)) => {
                refused.push(r);
                Vec::new()
            }
            None => Vec::new(),
        };
        described.push(Described {
            topic: topic.name.clone(),
            topic_id: topic.id.to_string(),
            partitions,
            configs: topic_configs,
        });
    }
    refused.dedup_by(|a, b| a.subject == b.subject && a.code == b.code);
    finish(format, &Descriptions(described), refused)
}

type ConfigResults = BTreeMap<String, Result<Vec<DescribedConfig>, Refusal>>;

async fn describe_configs(
    client: &mut Client,
    names: &[String],
) -> Result<ConfigResults, AdminError> {
    let (_, response) = client
        .send(None, 1..=4, |_| {
            DescribeConfigsRequest::default().with_resources(
                names
                    .iter()
                    .map(|n| {
                        DescribeConfigsResource::default()
                            .with_resource_type(RESOURCE_TOPIC)
                            .with_resource_name(str_bytes(n.clone()))
                            // None asks for every config; an empty list for none.
                            .with_configuration_keys(None)
                    })
                    .collect(),
            )
        })
        .await?;
    let mut results = ConfigResults::new();
    for result in response.results {
        let name = result.resource_name.to_string();
        let outcome = if result.error_code != 0 {
            Err(Refusal::new(
                format!("topic `{name}`"),
                result.error_code,
                result.error_message.map(|m| m.to_string()),
            ))
        } else {
            let mut configs: Vec<DescribedConfig> = result
                .configs
                .into_iter()
                .map(|c| DescribedConfig {
                    name: c.name.to_string(),
                    value: if c.is_sensitive {
                        None
                    } else {
                        c.value.map(|v| v.to_string())
                    },
                    source: config_source(c.config_source),
                    read_only: c.read_only,
                })
                .collect();
            configs.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(configs)
        };
        results.insert(name, outcome);
    }
    Ok(results)
}

#[derive(Serialize)]
struct Altered {
    topic: String,
    set: BTreeMap<String, String>,
    deleted: Vec<String>,
}

impl Report for Altered {
    fn table(&self) -> String {
        let mut out = format!("Altered configs of topic {}.\n", self.topic);
        for (k, v) in &self.set {
            out.push_str(&format!("  set {k}={v}\n"));
        }
        for k in &self.deleted {
            out.push_str(&format!("  deleted {k} (back to its default)\n"));
        }
        out
    }
}

async fn alter_config(
    client: &mut Client,
    format: Format,
    name: String,
    set: Vec<(String, String)>,
    delete: Vec<String>,
) -> Result<(), AdminError> {
    let ops: Vec<AlterableConfig> = set
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(str_bytes(k.clone()))
                .with_config_operation(OP_SET)
                .with_value(Some(str_bytes(v.clone())))
        })
        .chain(delete.iter().map(|k| {
            AlterableConfig::default()
                .with_name(str_bytes(k.clone()))
                .with_config_operation(OP_DELETE)
        }))
        .collect();
    let (_, response) = client
        .send(None, 0..=1, |_| {
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(str_bytes(name.clone()))
                    .with_configs(ops),
            ])
        })
        .await?;
    let result = response
        .responses
        .into_iter()
        .find(|r| r.resource_name.as_str() == name)
        .ok_or_else(|| missing(client, ApiKey::IncrementalAlterConfigs, &name))?;
    if result.error_code != 0 {
        return Err(AdminError::refused(
            format!("topic `{name}`"),
            result.error_code,
            result.error_message.map(|m| m.to_string()),
        ));
    }
    print(
        format,
        &Altered {
            topic: name,
            set: set.into_iter().collect(),
            deleted: delete,
        },
    );
    Ok(())
}

#[derive(Serialize)]
struct Deleted {
    deleted: Vec<String>,
    refused: Vec<Refusal>,
}

impl Report for Deleted {
    fn table(&self) -> String {
        self.deleted
            .iter()
            .map(|t| format!("Deleted topic {t}.\n"))
            .collect()
    }
}

async fn delete_topics(
    client: &mut Client,
    format: Format,
    names: Vec<String>,
) -> Result<(), AdminError> {
    let (_, response) = client
        .send(None, 1..=6, |version| {
            let request = DeleteTopicsRequest::default().with_timeout_ms(OPERATION_TIMEOUT_MS);
            let topics = names.iter().map(|n| TopicName(str_bytes(n.clone())));
            if version >= 6 {
                request.with_topics(
                    topics
                        .map(|n| DeleteTopicState::default().with_name(Some(n)))
                        .collect(),
                )
            } else {
                request.with_topic_names(topics.collect())
            }
        })
        .await?;
    let mut report = Deleted {
        deleted: Vec::new(),
        refused: Vec::new(),
    };
    for result in response.responses {
        let name = result
            .name
            .map(|n| n.to_string())
            .unwrap_or_else(|| result.topic_id.to_string());
        if result.error_code == 0 {
            report.deleted.push(name);
        } else {
            report.refused.push(Refusal::new(
                format!("topic `{name}`"),
                result.error_code,
                result.error_message.map(|m| m.to_string()),
            ));
        }
    }
    let refused = report.refused.clone();
    finish(format, &report, refused)
}

#[derive(Serialize)]
struct Grown {
    topic: String,
    partitions: i32,
}

impl Report for Grown {
    fn table(&self) -> String {
        format!(
            "Topic {} now has {}.\n",
            self.topic,
            partitions(self.partitions)
        )
    }
}

async fn add_partitions(
    client: &mut Client,
    format: Format,
    name: String,
    total: i32,
) -> Result<(), AdminError> {
    let (_, response) = client
        .send(None, 0..=3, |_| {
            CreatePartitionsRequest::default()
                .with_timeout_ms(OPERATION_TIMEOUT_MS)
                .with_topics(vec![
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(str_bytes(name.clone())))
                        .with_count(total),
                ])
        })
        .await?;
    let result = response
        .results
        .into_iter()
        .find(|r| r.name.as_str() == name)
        .ok_or_else(|| missing(client, ApiKey::CreatePartitions, &name))?;
    if result.error_code != 0 {
        return Err(AdminError::refused(
            format!("topic `{name}`"),
            result.error_code,
            result.error_message.map(|m| m.to_string()),
        ));
    }
    print(
        format,
        &Grown {
            topic: name,
            partitions: total,
        },
    );
    Ok(())
}
