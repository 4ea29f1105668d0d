//! `shoal admin groups ...`: ListGroups (asked of every agent, since each lists the groups
//! it coordinates), DescribeGroups, OffsetFetch, OffsetCommit and DeleteGroups (sent to the
//! group's coordinator).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::Decodable;
use serde::Serialize;

use super::client::Client;
use super::cluster::{self, EARLIEST, LATEST};
use super::error::{AdminError, Refusal, coordinator_moved};
use super::output::{Format, Report, Table, cell, finish, print};
use super::{GroupsCommand, TopicPartitions};
use crate::api::str_bytes;

/// Lookups of a coordinator that moved (a lease changing hands) before giving up.
const ATTEMPTS: u32 = 10;
const PAUSE: Duration = Duration::from_millis(300);

pub async fn run(
    client: &mut Client,
    format: Format,
    command: GroupsCommand,
) -> Result<(), AdminError> {
    match command {
        GroupsCommand::List => list(client, format).await,
        GroupsCommand::Describe { group } => describe(client, format, &group).await,
        GroupsCommand::ResetOffsets {
            group,
            topics,
            to_earliest,
            to_latest,
            to_datetime,
            to_offset,
            shift_by,
            execute,
        } => {
            let target = match (to_earliest, to_latest, to_datetime, to_offset, shift_by) {
                (true, ..) => Target::Earliest,
                (_, true, ..) => Target::Latest,
                (_, _, Some(time), ..) => Target::Datetime(time),
                (_, _, _, Some(offset), _) => Target::Offset(offset),
                (_, _, _, _, Some(shift)) => Target::Shift(shift),
                _ => {
                    return Err(AdminError::Usage(
                        "name where to reset the offsets to".into(),
                    ));
                }
            };
            reset_offsets(client, format, &group, &topics, target, execute).await
        }
        GroupsCommand::Delete { groups } => delete(client, format, &groups).await,
    }
}

/// Whether to ask again after `code`: the coordinator moved and attempts remain.
async fn moved(code: i16, attempt: u32) -> bool {
    if coordinator_moved(code) && attempt + 1 < ATTEMPTS {
        tokio::time::sleep(PAUSE).await;
        return true;
    }
    false
}

/// The coordinator's address; asks again while no agent holds the group yet.
async fn coordinator(client: &mut Client, group: &str) -> Result<String, AdminError> {
    let mut attempt = 0;
    loop {
        match cluster::coordinator(client, group).await {
            Err(AdminError::Refused(r)) if r.len() == 1 && moved(r[0].code, attempt).await => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn group_subject(group: &str) -> String {
    format!("group `{group}`")
}

#[derive(Serialize)]
struct ListedGroup {
    group: String,
    state: Option<String>,
    protocol_type: String,
    coordinator: i32,
}

#[derive(Serialize)]
#[serde(transparent)]
struct GroupList(Vec<ListedGroup>);

impl Report for GroupList {
    fn table(&self) -> String {
        let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "COORDINATOR"]);
        for g in &self.0 {
            table.row(vec![
                g.group.clone(),
                cell(g.state.as_ref()),
                g.protocol_type.clone(),
                g.coordinator.to_string(),
            ]);
        }
        table.render()
    }
}

async fn list(client: &mut Client, format: Format) -> Result<(), AdminError> {
    let mut groups: BTreeMap<String, ListedGroup> = BTreeMap::new();
    for agent in cluster::agents(client).await? {
        let (version, response) = client
            .send(Some(&agent.addr()), 0..=5, |_| ListGroupsRequest::default())
            .await?;
        if response.error_code != 0 {
            return Err(AdminError::refused(
                format!("agent {} ({})", agent.node_id, agent.addr()),
                response.error_code,
                None,
            ));
        }
        for g in response.groups {
            let name = g.group_id.to_string();
            groups.entry(name.clone()).or_insert(ListedGroup {
                group: name,
                // States are listed from v4.
                state: (version >= 4).then(|| g.group_state.to_string()),
                protocol_type: g.protocol_type.to_string(),
                coordinator: agent.node_id,
            });
        }
    }
    print(format, &GroupList(groups.into_values().collect()));
    Ok(())
}

/// A group as its coordinator describes it, with its committed offsets.
struct GroupView {
    coordinator: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
    committed: BTreeMap<(String, i32), i64>,
}

#[derive(Serialize)]
struct Member {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    assignment: Vec<Assigned>,
}

#[derive(Serialize)]
struct Assigned {
    topic: String,
    partitions: Vec<i32>,
}

/// DescribeGroups and OffsetFetch at the coordinator, looked up again if it moves.
async fn load(client: &mut Client, group: &str) -> Result<GroupView, AdminError> {
    let mut attempt = 0;
    loop {
        let addr = coordinator(client, group).await?;
        let (_, described) = client
            .send(Some(&addr), 0..=5, |_| {
                DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))])
            })
            .await?;
        let Some(g) = described.groups.into_iter().next() else {
            return Err(AdminError::BadAnswer {
                addr,
                api: ApiKey::DescribeGroups,
                reason: format!("no description of group `{group}`"),
            });
        };
        if moved(g.error_code, attempt).await {
            attempt += 1;
            continue;
        }
        if g.error_code != 0 {
            return Err(AdminError::refused(
                group_subject(group),
                g.error_code,
                g.error_message.map(|m| m.to_string()),
            ));
        }
        let committed = match committed_offsets(client, &addr, group).await? {
            Ok(committed) => committed,
            Err(code) if moved(code, attempt).await => {
                attempt += 1;
                continue;
            }
            Err(code) => return Err(AdminError::refused(group_subject(group), code, None)),
        };
        let consumer = g.protocol_type.as_str() == "consumer";
        let members = g
            .members
            .into_iter()
            .map(|m| Member {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment: if consumer {
                    decode_assignment(m.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect();
        return Ok(GroupView {
            coordinator: addr,
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members,
            committed,
        });
    }
}

/// A consumer's assignment: a version, then the assignment in that version. Versions this
/// codec does not know are read as the newest it knows, as Kafka's clients do; bytes that do
/// not decode show as no assignment.
fn decode_assignment(mut bytes: Bytes) -> Vec<Assigned> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = bytes.get_i16().clamp(0, 3);
    match ConsumerProtocolAssignment::decode(&mut bytes, version) {
        Ok(assignment) => assignment
            .assigned_partitions
            .into_iter()
            .map(|tp| Assigned {
                topic: tp.topic.to_string(),
                partitions: tp.partitions,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every committed offset of the group (OffsetFetch with null topics; the codec's default
/// is an empty list, which asks for none), or the error code the coordinator answered.
async fn committed_offsets(
    client: &mut Client,
    addr: &str,
    group: &str,
) -> Result<Result<BTreeMap<(String, i32), i64>, i16>, AdminError> {
    let (version, response) = client
        .send(Some(addr), 2..=9, |version| {
            if version >= 8 {
                OffsetFetchRequest::default().with_groups(vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(str_bytes(group)))
                        .with_topics(None),
                ])
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(str_bytes(group)))
                    .with_topics(None)
            }
        })
        .await?;
    let mut committed = BTreeMap::new();
    let mut add = |topic: &TopicName, partition: i32, offset: i64, code: i16| {
        if code == 0 && offset >= 0 {
            committed.insert((topic.to_string(), partition), offset);
        }
    };
    if version >= 8 {
        let Some(g) = response.groups.into_iter().next() else {
            return Ok(Err(ResponseError::UnknownServerError.code()));
        };
        if g.error_code != 0 {
            return Ok(Err(g.error_code));
        }
        for t in &g.topics {
            for p in &t.partitions {
                add(&t.name, p.partition_index, p.committed_offset, p.error_code);
            }
        }
    } else {
        if response.error_code != 0 {
            return Ok(Err(response.error_code));
        }
        for t in &response.topics {
            for p in &t.partitions {
                add(&t.name, p.partition_index, p.committed_offset, p.error_code);
            }
        }
    }
    Ok(Ok(committed))
}

#[derive(Serialize)]
struct Described {
    group: String,
    coordinator: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
    offsets: Vec<PartitionLag>,
}

#[derive(Serialize)]
struct PartitionLag {
    topic: String,
    partition: i32,
    committed_offset: Option<i64>,
    log_end_offset: Option<i64>,
    lag: Option<i64>,
    member_id: Option<String>,
}

impl Report for Described {
    fn table(&self) -> String {
        let mut out = format!(
            "Group: {}  State: {}  Protocol: {}  Members: {}  Coordinator: {}\n",
            self.group,
            self.state,
            if self.protocol.is_empty() {
                "-"
            } else {
                &self.protocol
            },
            self.members.len(),
            self.coordinator
        );
        if !self.members.is_empty() {
            let mut members = Table::new(&["MEMBER-ID", "CLIENT-ID", "HOST", "ASSIGNMENT"]);
            for m in &self.members {
                let assignment: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|a| {
                        let partitions: Vec<String> =
                            a.partitions.iter().map(i32::to_string).collect();
                        format!("{}:{}", a.topic, partitions.join(","))
                    })
                    .collect();
                members.row(vec![
                    m.member_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    if assignment.is_empty() {
                        "-".to_string()
                    } else {
                        assignment.join(" ")
                    },
                ]);
            }
            out.push('\n');
            out.push_str(&members.render());
        }
        let mut offsets = Table::new(&[
            "TOPIC",
            "PARTITION",
            "COMMITTED-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "MEMBER-ID",
        ]);
        for p in &self.offsets {
            offsets.row(vec![
                p.topic.clone(),
                p.partition.to_string(),
                cell(p.committed_offset),
                cell(p.log_end_offset),
                cell(p.lag),
                cell(p.member_id.as_ref()),
            ]);
        }
        out.push('\n');
        out.push_str(&offsets.render());
        out
    }
}

async fn describe(client: &mut Client, format: Format, group: &str) -> Result<(), AdminError> {
    let view = load(client, group).await?;
    if view.state == "Dead" {
        return Err(AdminError::refused(
            group_subject(group),
            ResponseError::GroupIdNotFound.code(),
            Some("the group does not exist".into()),
        ));
    }
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in &view.members {
        for a in &m.assignment {
            for p in &a.partitions {
                owners.insert((a.topic.clone(), *p), m.member_id.clone());
            }
        }
    }
    let partitions: BTreeSet<(String, i32)> = view
        .committed
        .keys()
        .chain(owners.keys())
        .cloned()
        .collect();
    let partitions: Vec<(String, i32)> = partitions.into_iter().collect();
    let topics: Vec<String> = partitions
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (ends, mut refused) = if topics.is_empty() {
        (BTreeMap::new(), Vec::new())
    } else {
        let cluster_view = cluster::metadata(client, Some(&topics)).await?;
        let known: Vec<(String, i32)> = partitions
            .iter()
            .filter(|(t, _)| cluster_view.topic(t).is_some())
            .cloned()
            .collect();
        let ends = cluster::list_offsets(client, &cluster_view, &known, LATEST).await?;
        (ends, cluster_view.refused)
    };
    let offsets = partitions
        .into_iter()
        .map(|(topic, partition)| {
            let key = (topic.clone(), partition);
            let committed = view.committed.get(&key).copied();
            let end = match ends.get(&key) {
                Some(Ok(end)) => Some(*end),
                Some(Err(r)) => {
                    refused.push(r.clone());
                    None
                }
                None => None,
            };
            PartitionLag {
                lag: committed.zip(end).map(|(c, e)| (e - c).max(0)),
                member_id: owners.get(&key).cloned(),
                topic,
                partition,
                committed_offset: committed,
                log_end_offset: end,
            }
        })
        .collect();
    let report = Described {
        group: group.to_string(),
        coordinator: view.coordinator,
        state: view.state,
        protocol_type: view.protocol_type,
        protocol: view.protocol,
        members: view.members,
        offsets,
    };
    finish(format, &report, refused)
}

/// Where `reset-offsets` moves each partition's committed offset.
#[derive(Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Datetime(SystemTime),
    Offset(i64),
    Shift(i64),
}

#[derive(Serialize)]
struct ResetPlan {
    group: String,
    executed: bool,
    partitions: Vec<Reset>,
}

#[derive(Serialize)]
struct Reset {
    topic: String,
    partition: i32,
    current_offset: Option<i64>,
    new_offset: i64,
}

impl Report for ResetPlan {
    fn table(&self) -> String {
        let mut table = Table::new(&[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET",
        ]);
        for r in &self.partitions {
            table.row(vec![
                self.group.clone(),
                r.topic.clone(),
                r.partition.to_string(),
                cell(r.current_offset),
                r.new_offset.to_string(),
            ]);
        }
        let mut out = table.render();
        if !self.executed {
            out.push_str("\nNot executed: add --execute to commit these offsets.\n");
        }
        out
    }
}

async fn reset_offsets(
    client: &mut Client,
    format: Format,
    group: &str,
    topics: &[TopicPartitions],
    target: Target,
    execute: bool,
) -> Result<(), AdminError> {
    let view = load(client, group).await?;
    if !view.members.is_empty() {
        return Err(AdminError::refused(
            group_subject(group),
            ResponseError::NonEmptyGroup.code(),
            Some(format!(
                "offsets can only be reset while the group is inactive, but it is {} with {} \
                 active member(s); stop its consumers first",
                view.state,
                view.members.len()
            )),
        ));
    }
    let names: Vec<String> = topics.iter().map(|t| t.topic.clone()).collect();
    let cluster_view = cluster::metadata(client, Some(&names)).await?;
    if !cluster_view.refused.is_empty() {
        return Err(AdminError::Refused(cluster_view.refused));
    }
    let mut partitions = Vec::new();
    let mut refused = Vec::new();
    for wanted in topics {
        let Some(topic) = cluster_view.topic(&wanted.topic) else {
            continue;
        };
        let all: Vec<i32> = topic.partitions.iter().map(|(p, _)| *p).collect();
        for p in wanted.partitions.as_ref().unwrap_or(&all) {
            if all.contains(p) {
                partitions.push((topic.name.clone(), *p));
            } else {
                refused.push(Refusal::new(
                    format!("partition {}/{p}", topic.name),
                    ResponseError::UnknownTopicOrPartition.code(),
                    Some(format!(
                        "topic `{}` has {} partitions",
                        topic.name,
                        all.len()
                    )),
                ));
            }
        }
    }
    partitions.sort();
    partitions.dedup();
    if !refused.is_empty() {
        return Err(AdminError::Refused(refused));
    }
    let earliest = cluster::list_offsets(client, &cluster_view, &partitions, EARLIEST).await?;
    let latest = cluster::list_offsets(client, &cluster_view, &partitions, LATEST).await?;
    let by_time = match target {
        Target::Datetime(time) => {
            let ms = time
                .duration_since(UNIX_EPOCH)
                .map_err(|_| AdminError::Usage("--to-datetime is before 1970".into()))?
                .as_millis() as i64;
            Some(cluster::list_offsets(client, &cluster_view, &partitions, ms).await?)
        }
        _ => None,
    };
    let mut plan = Vec::new();
    for (topic, partition) in partitions {
        let key = (topic.clone(), partition);
        let (start, end) = match (earliest.get(&key), latest.get(&key)) {
            (Some(Ok(start)), Some(Ok(end))) => (*start, *end),
            (Some(Err(r)), _) | (_, Some(Err(r))) => {
                refused.push(r.clone());
                continue;
            }
            _ => {
                refused.push(Refusal::new(
                    format!("partition {topic}/{partition}"),
                    ResponseError::UnknownTopicOrPartition.code(),
                    Some("no offsets in the answer".into()),
                ));
                continue;
            }
        };
        let current = view.committed.get(&key).copied();
        let new_offset = match target {
            Target::Earliest => start,
            Target::Latest => end,
            // No record at or after the time: nothing to read, as Kafka's tool does.
            Target::Datetime(_) => match by_time.as_ref().and_then(|t| t.get(&key)) {
                Some(Ok(offset)) if *offset >= 0 => *offset,
                Some(Err(r)) => {
                    refused.push(r.clone());
                    continue;
                }
                _ => end,
            },
            Target::Offset(offset) => offset.clamp(start, end),
            Target::Shift(shift) => match current {
                Some(current) => current.saturating_add(shift).clamp(start, end),
                None => {
                    refused.push(Refusal::new(
                        format!("partition {topic}/{partition}"),
                        ResponseError::UnknownTopicOrPartition.code(),
                        Some(format!(
                            "group `{group}` has no committed offset here to shift"
                        )),
                    ));
                    continue;
                }
            },
        };
        plan.push(Reset {
            topic,
            partition,
            current_offset: current,
            new_offset,
        });
    }
    if !refused.is_empty() {
        return Err(AdminError::Refused(refused));
    }
    if execute {
        commit(client, group, &plan).await?;
    }
    print(
        format,
        &ResetPlan {
            group: group.to_string(),
            executed: execute,
            partitions: plan,
        },
    );
    Ok(())
}

/// Commits `plan` from outside the group (no member id, generation -1), which the
/// coordinator accepts only while the group has no members.
async fn commit(client: &mut Client, group: &str, plan: &[Reset]) -> Result<(), AdminError> {
    let mut by_topic: BTreeMap<&str, Vec<&Reset>> = BTreeMap::new();
    for r in plan {
        by_topic.entry(&r.topic).or_default().push(r);
    }
    let mut attempt = 0;
    loop {
        let addr = coordinator(client, group).await?;
        let (_, response) = client
            .send(Some(&addr), 2..=9, |_| {
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(str_bytes(group)))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(
                        by_topic
                            .iter()
                            .map(|(topic, resets)| {
                                OffsetCommitRequestTopic::default()
                                    .with_name(TopicName(str_bytes(*topic)))
                                    .with_partitions(
                                        resets
                                            .iter()
                                            .map(|r| {
                                                OffsetCommitRequestPartition::default()
                                                    .with_partition_index(r.partition)
                                                    .with_committed_offset(r.new_offset)
                                                    .with_committed_metadata(Some(str_bytes("")))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .await?;
        let mut refused = Vec::new();
        let mut moved_code = None;
        for t in &response.topics {
            for p in &t.partitions {
                if p.error_code == 0 {
                    continue;
                }
                if coordinator_moved(p.error_code) {
                    moved_code = Some(p.error_code);
                }
                let message = (p.error_code == ResponseError::UnknownMemberId.code()).then(|| {
                    "the group gained members; offsets can only be reset while it is inactive"
                        .to_string()
                });
                refused.push(Refusal::new(
                    format!(
                        "group `{group}` partition {}/{}",
                        t.name.as_str(),
                        p.partition_index
                    ),
                    p.error_code,
                    message,
                ));
            }
        }
        if let Some(code) = moved_code
            && moved(code, attempt).await
        {
            attempt += 1;
            continue;
        }
        return if refused.is_empty() {
            Ok(())
        } else {
            Err(AdminError::Refused(refused))
        };
    }
}

#[derive(Serialize)]
struct DeletedGroups {
    deleted: Vec<String>,
    refused: Vec<Refusal>,
}

impl Report for DeletedGroups {
    fn table(&self) -> String {
        self.deleted
            .iter()
            .map(|g| format!("Deleted group {g}.\n"))
            .collect()
    }
}

async fn delete(client: &mut Client, format: Format, groups: &[String]) -> Result<(), AdminError> {
    let mut report = DeletedGroups {
        deleted: Vec::new(),
        refused: Vec::new(),
    };
    for group in groups {
        let mut attempt = 0;
        let code = loop {
            let addr = coordinator(client, group).await?;
            let (_, response) = client
                .send(Some(&addr), 0..=2, |_| {
                    DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(str_bytes(group.as_str()))])
                })
                .await?;
            let code = response
                .results
                .iter()
                .find(|r| r.group_id.as_str() == group)
                .map_or(ResponseError::UnknownServerError.code(), |r| r.error_code);
            if moved(code, attempt).await {
                attempt += 1;
                continue;
            }
            break code;
        };
        if code == 0 {
            report.deleted.push(group.clone());
        } else {
            report
                .refused
                .push(Refusal::new(group_subject(group), code, None));
        }
    }
    let refused = report.refused.clone();
    finish(format, &report, refused)
}
