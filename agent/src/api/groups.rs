//! Consumer group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//! They translate between the wire and the group service (`crate::groups`).

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shoal_metadata::{CommittedOffset, TopicId};

use super::{Context, RequestContext, str_bytes};
use crate::groups::{CommitRequest, GroupHandle, JoinRequest, Membership, SyncRequest};

/// Kafka's `offset.metadata.max.bytes`.
const MAX_OFFSET_METADATA: usize = 4096;
/// FindCoordinator key type of consumer groups (1 is transactions).
const KEY_TYPE_GROUP: i8 = 0;

pub fn find_coordinator(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if request_ctx.version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            if request.key_type != KEY_TYPE_GROUP {
                return Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                    .with_error_message(Some(str_bytes("transactions are not supported")));
            }
            let agent = ctx.groups.coordinator(key.as_str());
            Coordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(agent.id))
                .with_host(str_bytes(agent.host))
                .with_port(agent.port)
        })
        .collect();
    if request_ctx.version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let first = coordinators.into_iter().next().unwrap_or_default();
    FindCoordinatorResponse::default()
        .with_error_code(first.error_code)
        .with_error_message(first.error_message)
        .with_node_id(first.node_id)
        .with_host(first.host)
        .with_port(first.port)
}

/// The running group, or the error code that tells the client to look again.
async fn group(ctx: &Context, group: &GroupId) -> Result<GroupHandle, i16> {
    if group.is_empty() {
        return Err(ResponseError::InvalidGroupId.code());
    }
    ctx.groups.get(group.as_str()).await.map_err(|e| {
        tracing::debug!(group = %group.as_str(), error = %e, "group not served here");
        e.code()
    })
}

pub async fn join_group(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let fail = |code: i16| {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(request.member_id.clone())
    };
    let handle = match group(ctx, &request.group_id).await {
        Ok(handle) => handle,
        Err(code) => return fail(code),
    };
    let session = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance = if request_ctx.version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let outcome = handle
        .join(JoinRequest {
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: request_ctx.client_id.clone().unwrap_or_default(),
            client_host: request_ctx.client_host.clone(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            requires_known_member_id: request_ctx.version >= 4,
        })
        .await;
    JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(outcome.generation)
        .with_protocol_type(outcome.protocol_type.map(str_bytes))
        .with_protocol_name(outcome.protocol.map(str_bytes))
        .with_leader(str_bytes(outcome.leader))
        .with_skip_assignment(outcome.skip_assignment && request_ctx.version >= 9)
        .with_member_id(str_bytes(outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub async fn sync_group(ctx: &Context, request: SyncGroupRequest) -> SyncGroupResponse {
    let handle = match group(ctx, &request.group_id).await {
        Ok(handle) => handle,
        Err(code) => return SyncGroupResponse::default().with_error_code(code),
    };
    let outcome = handle
        .sync(SyncRequest {
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            assignments: request
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect(),
        })
        .await;
    let inconsistent = outcome.error == 0
        && ((request.protocol_type.is_some()
            && request.protocol_type.as_deref() != outcome.protocol_type.as_deref())
            || (request.protocol_name.is_some()
                && request.protocol_name.as_deref() != outcome.protocol.as_deref()));
    if inconsistent {
        return SyncGroupResponse::default()
            .with_error_code(ResponseError::InconsistentGroupProtocol.code());
    }
    SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_protocol_type(outcome.protocol_type.map(str_bytes))
        .with_protocol_name(outcome.protocol.map(str_bytes))
        .with_assignment(outcome.assignment)
}

pub async fn heartbeat(ctx: &Context, request: HeartbeatRequest) -> HeartbeatResponse {
    let code = match group(ctx, &request.group_id).await {
        Ok(handle) => {
            handle
                .heartbeat(Membership {
                    generation: request.generation_id,
                    member_id: request.member_id.to_string(),
                    instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
                })
                .await
        }
        Err(code) => code,
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let handle = match group(ctx, &request.group_id).await {
        Ok(handle) => handle,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    let batched = request_ctx.version >= 3;
    let members: Vec<(String, Option<String>)> = if batched {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let outcome = handle.leave(members).await;
    if !batched {
        let code = outcome.first().map_or(0, |(_, _, code)| *code);
        return LeaveGroupResponse::default().with_error_code(code);
    }
    LeaveGroupResponse::default().with_members(
        outcome
            .into_iter()
            .map(|(member_id, instance_id, code)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(member_id))
                    .with_group_instance_id(instance_id.map(str_bytes))
                    .with_error_code(code)
            })
            .collect(),
    )
}

pub async fn offset_commit(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Every partition is checked first; the valid ones commit together.
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut offsets = Vec::new();
    let now = crate::now_ms();
    for topic in &request.topics {
        let entry = ctx
            .catalog
            .by_name(topic.name.as_str())
            .await
            .ok()
            .flatten();
        let mut partitions = Vec::new();
        for p in &topic.partitions {
            let code = match &entry {
                Some(entry) if (0..entry.topic.partitions).contains(&p.partition_index) => {
                    if p.committed_metadata.as_ref().map_or(0, |m| m.len()) > MAX_OFFSET_METADATA {
                        ResponseError::OffsetMetadataTooLarge.code()
                    } else {
                        offsets.push(CommittedOffset {
                            topic: entry.topic.id,
                            partition: p.partition_index,
                            offset: p.committed_offset,
                            leader_epoch: if request_ctx.version >= 6 {
                                p.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_time_ms: now,
                        });
                        -1
                    }
                }
                _ => ResponseError::UnknownTopicOrPartition.code(),
            };
            partitions.push((p.partition_index, code));
        }
        results.push((topic.name.clone(), partitions));
    }
    let commit_code = if offsets.is_empty() {
        0
    } else {
        match group(ctx, &request.group_id).await {
            Ok(handle) => {
                handle
                    .commit(CommitRequest {
                        membership: Membership {
                            generation: request.generation_id_or_member_epoch,
                            member_id: request.member_id.to_string(),
                            instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
                        },
                        offsets,
                    })
                    .await
            }
            Err(code) => code,
        }
    };
    OffsetCommitResponse::default().with_topics(
        results
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, code)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(if code == -1 { commit_code } else { code })
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// One group's committed offsets by topic name and partition, for the requested topics
/// (`None`: every topic with a committed offset).
async fn fetch_offsets(
    ctx: &Context,
    group_id: &GroupId,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<(TopicName, Vec<(i32, Option<CommittedOffset>)>)>, i16> {
    if group_id.is_empty() {
        return Err(ResponseError::InvalidGroupId.code());
    }
    let committed = ctx
        .groups
        .committed(group_id.as_str())
        .await
        .map_err(|e| e.code())?;
    let mut by_topic: BTreeMap<TopicId, Vec<CommittedOffset>> = BTreeMap::new();
    for offset in committed {
        by_topic.entry(offset.topic).or_default().push(offset);
    }
    let mut out = Vec::new();
    match wanted {
        Some(topics) => {
            for (name, partitions) in topics {
                let entry = ctx.catalog.by_name(name.as_str()).await.ok().flatten();
                let known = entry.and_then(|e| by_topic.get(&e.topic.id));
                let rows = partitions
                    .into_iter()
                    .map(|p| {
                        let found = known.and_then(|k| k.iter().find(|o| o.partition == p));
                        (p, found.cloned())
                    })
                    .collect();
                out.push((name, rows));
            }
        }
        None => {
            for (topic, offsets) in by_topic {
                let Ok(Some(entry)) = ctx.catalog.by_id(topic).await else {
                    continue;
                };
                let name = TopicName(str_bytes(entry.topic.name.clone()));
                out.push((
                    name,
                    offsets
                        .into_iter()
                        .map(|o| (o.partition, Some(o)))
                        .collect(),
                ));
            }
        }
    }
    Ok(out)
}

fn partition_fields(offset: Option<CommittedOffset>) -> (i64, i32, Option<StrBytes>) {
    match offset {
        Some(o) => (
            o.offset,
            o.leader_epoch,
            Some(str_bytes(o.metadata.unwrap_or_default())),
        ),
        None => (-1, -1, Some(str_bytes(""))),
    }
}

pub async fn offset_fetch(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if request_ctx.version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for OffsetFetchRequestGroup {
            group_id, topics, ..
        } in request.groups
        {
            let wanted = topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let response = match fetch_offsets(ctx, &group_id, wanted).await {
                Ok(topics) => OffsetFetchResponseGroup::default().with_topics(
                    topics
                        .into_iter()
                        .map(|(name, partitions)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(name)
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(index, offset)| {
                                            let (committed, epoch, metadata) =
                                                partition_fields(offset);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(index)
                                                .with_committed_offset(committed)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(metadata)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
                Err(code) => OffsetFetchResponseGroup::default().with_error_code(code),
            };
            groups.push(response.with_group_id(group_id));
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    match fetch_offsets(ctx, &request.group_id, wanted).await {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(index, offset)| {
                                    let (committed, epoch, metadata) = partition_fields(offset);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_committed_offset(committed)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(metadata)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(code) => OffsetFetchResponse::default().with_error_code(code),
    }
}

/// Groups this agent coordinates (each agent answers for its own, as Kafka brokers do; admin
/// clients ask every agent and merge).
pub async fn list_groups(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let groups = match ctx.groups.list().await {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list groups");
            return ListGroupsResponse::default().with_error_code(e.code());
        }
    };
    let mut listed = Vec::new();
    for group in groups {
        let (name, state) = (group.name, group.state);
        // Groups known only from committed offsets have no protocol type yet.
        let protocol_type = if group.protocol_type.is_empty() {
            "consumer".to_string()
        } else {
            group.protocol_type
        };
        let wanted_state = request_ctx.version < 4
            || request.states_filter.is_empty()
            || request
                .states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state));
        let wanted_type = request_ctx.version < 5
            || request.types_filter.is_empty()
            || request
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"));
        if wanted_state && wanted_type {
            listed.push(
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(name)))
                    .with_protocol_type(str_bytes(protocol_type))
                    .with_group_state(str_bytes(state))
                    .with_group_type(str_bytes("classic")),
            );
        }
    }
    ListGroupsResponse::default().with_groups(listed)
}

pub async fn describe_groups(
    ctx: &Context,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let base = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_authorized_operations(i32::MIN);
        let handle = match group(ctx, &group_id).await {
            Ok(handle) => handle,
            Err(code) => {
                described.push(base.with_error_code(code).with_group_state(str_bytes("")));
                continue;
            }
        };
        let Some(d) = handle.describe().await else {
            described.push(base.with_error_code(ResponseError::NotCoordinator.code()));
            continue;
        };
        described.push(
            base.with_group_state(str_bytes(d.state))
                .with_protocol_type(str_bytes(d.protocol_type))
                .with_protocol_data(str_bytes(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(m.instance_id.map(str_bytes))
                                .with_client_id(str_bytes(m.client_id))
                                .with_client_host(str_bytes(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
        );
    }
    DescribeGroupsResponse::default().with_groups(described)
}

pub async fn delete_groups(ctx: &Context, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    // One listing for the whole request, not one per group.
    let known = ctx.groups.known().await;
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = match known
            .as_ref()
            .map(|names| names.iter().any(|n| n == group_id.as_str()))
        {
            Ok(false) => ResponseError::GroupIdNotFound.code(),
            Err(_) => ResponseError::CoordinatorNotAvailable.code(),
            Ok(true) => match group(ctx, &group_id).await {
                Ok(handle) => handle.delete().await,
                Err(code) => code,
            },
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(ctx: &Context, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let handle = match group(ctx, &request.group_id).await {
        Ok(handle) => handle,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut partitions = Vec::new();
    let mut topics = Vec::new();
    for topic in &request.topics {
        let entry = ctx
            .catalog
            .by_name(topic.name.as_str())
            .await
            .ok()
            .flatten();
        let codes: Vec<(i32, i16)> = topic
            .partitions
            .iter()
            .map(|p| match &entry {
                Some(entry) if (0..entry.topic.partitions).contains(&p.partition_index) => {
                    partitions.push((entry.topic.id, p.partition_index));
                    (p.partition_index, 0)
                }
                _ => (
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition.code(),
                ),
            })
            .collect();
        topics.push((topic.name.clone(), codes));
    }
    // Valid partitions share the group's answer (GROUP_SUBSCRIBED_TO_TOPIC while it has
    // members, who may be reading them).
    let group_code = if partitions.is_empty() {
        0
    } else {
        handle.delete_offsets(partitions).await
    };
    if group_code == ResponseError::NotCoordinator.code()
        || group_code == ResponseError::CoordinatorNotAvailable.code()
    {
        return OffsetDeleteResponse::default().with_error_code(group_code);
    }
    OffsetDeleteResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, codes)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        codes
                            .into_iter()
                            .map(|(index, code)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(if code == 0 { group_code } else { code })
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
