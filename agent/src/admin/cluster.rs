//! Lookups every command shares: the agents and topics (Metadata, DescribeCluster), the
//! offsets of partitions (ListOffsets, sent to each partition's leader) and a group's
//! coordinator (FindCoordinator).

use std::collections::BTreeMap;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest,
    TopicName,
};
use serde::Serialize;
use uuid::Uuid;

use super::client::Client;
use super::error::{AdminError, Refusal};
use crate::api::str_bytes;

/// An agent as the cluster lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Broker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    /// The rack, which is the agent's availability zone.
    pub zone: Option<String>,
}

impl Broker {
    pub fn addr(&self) -> String {
        address(&self.host, self.port)
    }
}

/// `HOST:PORT`, with IPv6 hosts in brackets.
pub fn address(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A topic as Metadata describes it.
#[derive(Debug, Clone)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    /// (partition, leader node id) in partition order.
    pub partitions: Vec<(i32, i32)>,
}

/// What Metadata said: the agents, the topics found, and the topics it refused.
pub struct ClusterView {
    pub brokers: BTreeMap<i32, Broker>,
    pub topics: Vec<TopicMeta>,
    pub refused: Vec<Refusal>,
}

impl ClusterView {
    /// The address of a partition's leader; `None` (the bootstrap agent) when the leader
    /// is unknown, since any agent serves any partition.
    pub fn leader_addr(&self, topic: &str, partition: i32) -> Option<String> {
        let topic = self.topics.iter().find(|t| t.name == topic)?;
        let (_, leader) = topic.partitions.iter().find(|(p, _)| *p == partition)?;
        self.brokers.get(leader).map(Broker::addr)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Metadata for `topics` (every topic when `None`), never creating any.
pub async fn metadata(
    client: &mut Client,
    topics: Option<&[String]>,
) -> Result<ClusterView, AdminError> {
    let (_, response) = client
        .send(None, 4..=12, |_| {
            MetadataRequest::default()
                .with_allow_auto_topic_creation(false)
                .with_topics(topics.map(|names| {
                    names
                        .iter()
                        .map(|n| {
                            MetadataRequestTopic::default()
                                .with_name(Some(TopicName(str_bytes(n.clone()))))
                        })
                        .collect()
                }))
        })
        .await?;
    let brokers = response
        .brokers
        .iter()
        .map(|b| {
            (
                b.node_id.0,
                Broker {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    zone: b.rack.as_ref().map(|r| r.to_string()),
                },
            )
        })
        .collect();
    let mut view = ClusterView {
        brokers,
        topics: Vec::new(),
        refused: Vec::new(),
    };
    for topic in response.topics {
        let name = topic
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| topic.topic_id.to_string());
        if topic.error_code != 0 {
            view.refused.push(Refusal::new(
                format!("topic `{name}`"),
                topic.error_code,
                None,
            ));
            continue;
        }
        let mut partitions: Vec<(i32, i32)> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        partitions.sort_unstable();
        view.topics.push(TopicMeta {
            name,
            id: topic.topic_id,
            partitions,
        });
    }
    view.topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(view)
}

/// Every agent of the cluster (DescribeCluster lists all zones; Metadata, for brokers that
/// lack it, lists those the cluster shows this client).
pub async fn agents(client: &mut Client) -> Result<Vec<Broker>, AdminError> {
    let described = client
        .send(None, 0..=2, |_| DescribeClusterRequest::default())
        .await;
    let brokers = match described {
        Ok((_, response)) => {
            if response.error_code != 0 {
                return Err(AdminError::refused(
                    "DescribeCluster",
                    response.error_code,
                    response.error_message.map(|m| m.to_string()),
                ));
            }
            response
                .brokers
                .into_iter()
                .map(|b| Broker {
                    node_id: b.broker_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    zone: b.rack.map(|r| r.to_string()),
                })
                .collect()
        }
        Err(AdminError::Unsupported { .. }) => metadata(client, Some(&[]))
            .await?
            .brokers
            .into_values()
            .collect(),
        Err(e) => return Err(e),
    };
    let mut brokers: Vec<Broker> = brokers;
    brokers.sort_by_key(|b| b.node_id);
    Ok(brokers)
}

/// ListOffsets' special timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// The offset for `timestamp` (or [`LATEST`], [`EARLIEST`]) of each partition, asking
/// each partition's leader. A partition the leader refuses maps to its refusal; `-1` means
/// no record at or after the timestamp.
pub async fn list_offsets(
    client: &mut Client,
    view: &ClusterView,
    partitions: &[(String, i32)],
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), Result<i64, Refusal>>, AdminError> {
    let mut by_leader: BTreeMap<Option<String>, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_leader
            .entry(view.leader_addr(topic, *partition))
            .or_default()
            .entry(topic.clone())
            .or_default()
            .push(*partition);
    }
    let mut offsets = BTreeMap::new();
    for (leader, topics) in by_leader {
        let (_, response) = client
            .send(leader.as_deref(), 1..=10, |_| {
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        topics
                            .iter()
                            .map(|(name, partitions)| {
                                ListOffsetsTopic::default()
                                    .with_name(TopicName(str_bytes(name.clone())))
                                    .with_partitions(
                                        partitions
                                            .iter()
                                            .map(|&p| {
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(p)
                                                    .with_timestamp(timestamp)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .await?;
        for topic in response.topics {
            let name = topic.name.to_string();
            for p in topic.partitions {
                let result = if p.error_code == 0 {
                    Ok(p.offset)
                } else {
                    Err(Refusal::new(
                        format!("partition {name}/{}", p.partition_index),
                        p.error_code,
                        None,
                    ))
                };
                offsets.insert((name.clone(), p.partition_index), result);
            }
        }
    }
    Ok(offsets)
}

/// The coordinator of `group`, as an address to send group requests to.
pub async fn coordinator(client: &mut Client, group: &str) -> Result<String, AdminError> {
    let (version, response) = client
        .send(None, 0..=6, |version| {
            let request = FindCoordinatorRequest::default();
            if version >= 4 {
                request.with_coordinator_keys(vec![str_bytes(group)])
            } else {
                request.with_key(str_bytes(group))
            }
        })
        .await?;
    let (code, message, host, port) = if version >= 4 {
        match response.coordinators.into_iter().next() {
            Some(c) => (c.error_code, c.error_message, c.host, c.port),
            None => {
                return Err(AdminError::BadAnswer {
                    addr: client.bootstrap().to_string(),
                    api: kafka_protocol::messages::ApiKey::FindCoordinator,
                    reason: "no coordinator in the answer".into(),
                });
            }
        }
    } else {
        (
            response.error_code,
            response.error_message,
            response.host,
            response.port,
        )
    };
    if code != 0 {
        return Err(AdminError::refused(
            format!("group `{group}`"),
            code,
            message.map(|m| m.to_string()),
        ));
    }
    Ok(address(&host, port))
}
