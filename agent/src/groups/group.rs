//! One consumer group run by this agent: Kafka's classic group membership protocol
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a task that owns the group's state, and
//! the group's offset commits, which it writes through to the sequencer.
//!
//! States follow Kafka's coordinator: Empty, PreparingRebalance (members rejoin until all
//! have, or the rebalance timeout passes), CompletingRebalance (the leader's assignment is
//! awaited), Stable. Assignment is the clients' business: the coordinator relays the
//! leader's. The state is saved in the sequencer at every stable point, so the next
//! coordinator carries on with the same generation and members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use shoal_metadata::{CommittedOffset, MetadataError, MetadataStore, TopicId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::GroupConfig;

/// A JoinGroup, as the coordinator needs it.
#[derive(Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// Clients from JoinGroup v4 on must first learn their member id (MEMBER_ID_REQUIRED).
    pub requires_known_member_id: bool,
}

/// What a JoinGroup is answered with.
#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol, for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader already has an assignment for this generation (a static leader rejoined).
    pub skip_assignment: bool,
}

/// A SyncGroup, as the coordinator needs it.
#[derive(Debug)]
pub struct SyncRequest {
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// What a SyncGroup is answered with.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// Who sends a heartbeat or a commit.
#[derive(Debug, Clone)]
pub struct Membership {
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

/// An OffsetCommit of validated partitions.
#[derive(Debug)]
pub struct CommitRequest {
    pub membership: Membership,
    pub offsets: Vec<CommittedOffset>,
}

/// One LeaveGroup member's result.
pub type LeaveOutcome = Vec<(String, Option<String>, i16)>;

/// A group as DescribeGroups and ListGroups show it.
#[derive(Debug, Clone, Default)]
pub struct Description {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

/// One member of a described group.
#[derive(Debug, Clone, Default)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

enum Command {
    Join(JoinRequest, oneshot::Sender<JoinOutcome>),
    Sync(SyncRequest, oneshot::Sender<SyncOutcome>),
    Heartbeat(Membership, oneshot::Sender<i16>),
    Leave(Vec<(String, Option<String>)>, oneshot::Sender<LeaveOutcome>),
    Commit(CommitRequest, oneshot::Sender<i16>),
    Describe(oneshot::Sender<Description>),
    Delete(oneshot::Sender<i16>),
    DeleteOffsets(Vec<(TopicId, i32)>, oneshot::Sender<i16>),
}

/// A running group; commands are served in order by its task.
#[derive(Clone)]
pub struct GroupHandle {
    tx: mpsc::Sender<Command>,
    stop: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

fn not_coordinator() -> i16 {
    ResponseError::NotCoordinator.code()
}

impl GroupHandle {
    /// Starts group `id`, from its saved state if any.
    pub fn start(
        id: String,
        agent: i32,
        store: Arc<dyn MetadataStore>,
        config: GroupConfig,
        saved: Option<&[u8]>,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::channel(256);
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let mut group = Group::new(id, agent, store, config);
        if let Some(saved) = saved {
            group.restore(saved);
        }
        tokio::spawn(async move {
            group.run(rx, stop_rx).await;
            let _ = done_tx.send(true);
        });
        GroupHandle {
            tx,
            stop: Arc::new(stop),
            done,
        }
    }

    /// Whether the group still runs here (it stops when its lease is lost or it is deleted).
    pub fn is_running(&self) -> bool {
        !*self.done.borrow() && !self.tx.is_closed()
    }

    /// Asks the group to stop; pending requests are answered with NOT_COORDINATOR.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once the group's task has ended.
    pub async fn stopped(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|done| *done).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    pub async fn join(&self, request: JoinRequest) -> JoinOutcome {
        let member_id = request.member_id.clone();
        self.ask(|reply| Command::Join(request, reply))
            .await
            .unwrap_or_else(|| JoinOutcome {
                error: not_coordinator(),
                generation: -1,
                member_id,
                ..JoinOutcome::default()
            })
    }

    pub async fn sync(&self, request: SyncRequest) -> SyncOutcome {
        self.ask(|reply| Command::Sync(request, reply))
            .await
            .unwrap_or_else(|| SyncOutcome {
                error: not_coordinator(),
                ..SyncOutcome::default()
            })
    }

    pub async fn heartbeat(&self, membership: Membership) -> i16 {
        self.ask(|reply| Command::Heartbeat(membership, reply))
            .await
            .unwrap_or_else(not_coordinator)
    }

    pub async fn leave(&self, members: Vec<(String, Option<String>)>) -> LeaveOutcome {
        let fallback = members
            .iter()
            .map(|(m, i)| (m.clone(), i.clone(), not_coordinator()))
            .collect();
        self.ask(|reply| Command::Leave(members, reply))
            .await
            .unwrap_or(fallback)
    }

    pub async fn commit(&self, request: CommitRequest) -> i16 {
        self.ask(|reply| Command::Commit(request, reply))
            .await
            .unwrap_or_else(not_coordinator)
    }

    pub async fn describe(&self) -> Option<Description> {
        self.ask(Command::Describe).await
    }

    pub async fn delete(&self) -> i16 {
        self.ask(Command::Delete)
            .await
            .unwrap_or_else(not_coordinator)
    }

    /// OffsetDelete: only while the group has no members, which may be reading the topics.
    pub async fn delete_offsets(&self, partitions: Vec<(TopicId, i32)>) -> i16 {
        self.ask(|reply| Command::DeleteOffsets(partitions, reply))
            .await
            .unwrap_or_else(not_coordinator)
    }
}

/// State and protocol type of a group from its saved state, for a group not running here.
pub fn summarise(saved: Option<&[u8]>) -> (&'static str, String) {
    let saved: Option<Saved> = saved.and_then(|s| serde_json::from_slice(s).ok());
    match saved {
        Some(saved) if !saved.members.is_empty() => (
            State::Stable.name(),
            saved.protocol_type.unwrap_or_default(),
        ),
        Some(saved) => (State::Empty.name(), saved.protocol_type.unwrap_or_default()),
        None => (State::Empty.name(), String::new()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Session expiry, pushed back by every request of the member.
    expires: Instant,
    /// Order of joining, for choosing a leader.
    joined: u64,
    awaiting_join: Option<oneshot::Sender<JoinOutcome>>,
    awaiting_sync: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

/// What is saved in the sequencer: enough to carry on with the same members.
#[derive(Serialize, Deserialize)]
struct Saved {
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: Vec<SavedMember>,
}

#[derive(Serialize, Deserialize)]
struct SavedMember {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocol_type: String,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
}

struct Group {
    id: String,
    agent: i32,
    store: Arc<dyn MetadataStore>,
    config: GroupConfig,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until they expire.
    pending: HashMap<String, Instant>,
    /// When the current rebalance ends at the latest.
    rebalance_deadline: Option<Instant>,
    joins: u64,
    /// The lease was lost: answer everything with NOT_COORDINATOR and stop.
    fenced: bool,
}

impl Group {
    fn new(id: String, agent: i32, store: Arc<dyn MetadataStore>, config: GroupConfig) -> Group {
        Group {
            id,
            agent,
            store,
            config,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            joins: 0,
            fenced: false,
        }
    }

    /// Carries on from a saved state: members keep their ids and assignments and get a full
    /// session to find this coordinator.
    fn restore(&mut self, saved: &[u8]) {
        let saved: Saved = match serde_json::from_slice(saved) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(group = %self.id, error = %e, "unreadable saved group state; starting empty");
                return;
            }
        };
        let now = Instant::now();
        self.generation = saved.generation;
        self.protocol_type = saved.protocol_type;
        self.protocol = saved.protocol;
        self.leader = saved.leader;
        for m in saved.members {
            self.joins += 1;
            let session_timeout = Duration::from_millis(m.session_timeout_ms);
            self.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocol_type: m.protocol_type,
                    protocols: m
                        .protocols
                        .into_iter()
                        .map(|(n, meta)| (n, Bytes::from(meta)))
                        .collect(),
                    assignment: Bytes::from(m.assignment),
                    expires: now + session_timeout,
                    joined: self.joins,
                    awaiting_join: None,
                    awaiting_sync: None,
                },
            );
        }
        self.state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
    }

    fn saved(&self) -> Vec<u8> {
        let saved = Saved {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| SavedMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocol_type: m.protocol_type.clone(),
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, meta)| (n.clone(), meta.to_vec()))
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// Saves the state at a stable point; a lost lease fences the group.
    async fn save(&mut self) {
        let state = self.saved();
        match self.store.save_group(&self.id, self.agent, &state).await {
            Ok(()) => {}
            Err(MetadataError::NotGroupCoordinator(_)) => self.fenced = true,
            Err(e) => tracing::warn!(group = %self.id, error = %e, "cannot save group state"),
        }
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Command>, mut stop: watch::Receiver<bool>) {
        loop {
            let wake = self.next_deadline();
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                _ = sleep_until(wake) => self.expire().await,
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
            }
            if self.fenced || self.state == State::Dead {
                break;
            }
        }
        // Whoever waits gets NOT_COORDINATOR and looks the coordinator up again.
        rx.close();
        for member in self.members.values_mut() {
            if let Some(reply) = member.awaiting_join.take() {
                let _ = reply.send(JoinOutcome {
                    error: not_coordinator(),
                    generation: -1,
                    member_id: member.id.clone(),
                    ..JoinOutcome::default()
                });
            }
            if let Some(reply) = member.awaiting_sync.take() {
                let _ = reply.send(SyncOutcome {
                    error: not_coordinator(),
                    ..SyncOutcome::default()
                });
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join(request, reply) => self.join(request, reply).await,
            Command::Sync(request, reply) => self.sync(request, reply).await,
            Command::Heartbeat(membership, reply) => {
                let _ = reply.send(self.heartbeat(&membership));
            }
            Command::Leave(members, reply) => {
                let outcome = self.leave(members).await;
                let _ = reply.send(outcome);
            }
            Command::Commit(request, reply) => {
                let code = self.commit(request).await;
                let _ = reply.send(code);
            }
            Command::Describe(reply) => {
                let _ = reply.send(self.describe());
            }
            Command::Delete(reply) => {
                let code = self.delete().await;
                let _ = reply.send(code);
            }
            Command::DeleteOffsets(partitions, reply) => {
                let code = self.delete_offsets(&partitions).await;
                let _ = reply.send(code);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.expires);
        let pending = self.pending.values().copied();
        sessions.chain(pending).chain(self.rebalance_deadline).min()
    }

    /// Removes members whose session lapsed, and ends a rebalance whose time is up.
    async fn expire(&mut self) {
        let now = Instant::now();
        self.pending.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.expires <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.members_changed().await;
        }
        if self.state == State::PreparingRebalance
            && self.rebalance_deadline.is_some_and(|d| d <= now)
        {
            self.complete_join().await;
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut member) = self.members.remove(id) {
            if let Some(reply) = member.awaiting_join.take() {
                let _ = reply.send(JoinOutcome {
                    error: ResponseError::UnknownMemberId.code(),
                    generation: -1,
                    member_id: id.to_string(),
                    ..JoinOutcome::default()
                });
            }
            if let Some(reply) = member.awaiting_sync.take() {
                let _ = reply.send(SyncOutcome {
                    error: ResponseError::UnknownMemberId.code(),
                    ..SyncOutcome::default()
                });
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Members left or expired: the rest rebalance, or the group empties.
    async fn members_changed(&mut self) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance();
                // With nobody left to rejoin, the group empties at once.
                self.maybe_complete_join().await;
            }
            State::PreparingRebalance => self.maybe_complete_join().await,
            State::Empty | State::Dead => {}
        }
        if self.members.is_empty() && self.state != State::PreparingRebalance {
            self.become_empty().await;
        }
    }

    async fn become_empty(&mut self) {
        if self.state != State::Empty {
            self.state = State::Empty;
            self.generation += 1;
            self.protocol = None;
            self.leader = None;
            self.rebalance_deadline = None;
            self.save().await;
        }
    }

    fn prepare_rebalance(&mut self) {
        let now = Instant::now();
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let deadline = if self.state == State::Empty {
            now + self.config.initial_rebalance_delay.min(timeout)
        } else {
            now + timeout
        };
        // Members wait for new assignments; answer parked syncs so they rejoin.
        for member in self.members.values_mut() {
            if let Some(reply) = member.awaiting_sync.take() {
                let _ = reply.send(SyncOutcome {
                    error: ResponseError::RebalanceInProgress.code(),
                    ..SyncOutcome::default()
                });
            }
        }
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(deadline);
        tracing::info!(group = %self.id, generation = self.generation, "preparing rebalance");
    }

    async fn maybe_complete_join(&mut self) {
        let initial = self.generation == 0 || self.protocol.is_none();
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        // An empty group's first rebalance waits the initial delay for more members.
        if all_joined && !(initial && self.rebalance_deadline > Some(Instant::now())) {
            self.complete_join().await;
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, a protocol and a leader
    /// are chosen, and every joined member is answered with the new generation.
    async fn complete_join(&mut self) {
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id);
        }
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::PreparingRebalance;
            self.become_empty().await;
            return;
        }
        self.generation += 1;
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.joined)
                .map(|m| m.id.clone());
        }
        self.state = State::CompletingRebalance;
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = {
            let mut members: Vec<&Member> = self.members.values().collect();
            members.sort_by_key(|m| m.joined);
            members
                .iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        };
        let now = Instant::now();
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            member.expires = now + member.session_timeout;
            if let Some(reply) = member.awaiting_join.take() {
                let is_leader = member.id == leader;
                let _ = reply.send(JoinOutcome {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: member.id.clone(),
                    members: if is_leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                });
            }
        }
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = %protocol,
            "rebalance: members joined"
        );
    }

    /// The protocol every member supports that most members prefer (ties: the leader
    /// candidate's order), as Kafka's coordinator chooses.
    fn choose_protocol(&self) -> Option<String> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined);
        let first = members.first()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let votes = |name: &String| {
            members
                .iter()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .map(|(n, _)| n)
                        .find(|n| candidates.contains(n))
                        == Some(name)
                })
                .count()
        };
        let mut best: Option<(&String, usize)> = None;
        for name in &candidates {
            let v = votes(name);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((name, v));
            }
        }
        best.map(|(name, _)| name.clone())
    }

    fn supports_protocols(&self, request: &JoinRequest) -> bool {
        if self.members.is_empty() {
            return !request.protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(request.protocol_type.as_str()) {
            return false;
        }
        // Some protocol must be shared by every member and the newcomer.
        request.protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn new_member_id(request: &JoinRequest) -> String {
        let prefix = request.instance_id.as_deref().unwrap_or(&request.client_id);
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    async fn join(&mut self, request: JoinRequest, reply: oneshot::Sender<JoinOutcome>) {
        let fail = |error: ResponseError, member_id: &str| JoinOutcome {
            error: error.code(),
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinOutcome::default()
        };
        if request.session_timeout < self.config.min_session_timeout
            || request.session_timeout > self.config.max_session_timeout
        {
            let _ = reply.send(fail(
                ResponseError::InvalidSessionTimeout,
                &request.member_id,
            ));
            return;
        }
        if !self.supports_protocols(&request) {
            let _ = reply.send(fail(
                ResponseError::InconsistentGroupProtocol,
                &request.member_id,
            ));
            return;
        }
        if request.member_id.is_empty() {
            if let Some(instance) = &request.instance_id
                && let Some(old) = self.member_of_instance(instance)
            {
                self.replace_static_member(old, request, reply).await;
                return;
            }
            let member_id = Self::new_member_id(&request);
            if request.requires_known_member_id && request.instance_id.is_none() {
                // KIP-394: the member comes back with its id, so a client that died before
                // hearing it leaves no ghost member behind.
                self.pending
                    .insert(member_id.clone(), Instant::now() + request.session_timeout);
                let _ = reply.send(JoinOutcome {
                    error: ResponseError::MemberIdRequired.code(),
                    generation: -1,
                    member_id,
                    ..JoinOutcome::default()
                });
                return;
            }
            self.add_member(member_id, request, reply).await;
            return;
        }
        if self.pending.remove(&request.member_id).is_some() {
            let member_id = request.member_id.clone();
            self.add_member(member_id, request, reply).await;
            return;
        }
        let Some(member) = self.members.get(&request.member_id) else {
            let _ = reply.send(fail(ResponseError::UnknownMemberId, &request.member_id));
            return;
        };
        if member.instance_id != request.instance_id {
            let _ = reply.send(fail(ResponseError::FencedInstanceId, &request.member_id));
            return;
        }
        self.rejoin(request, reply).await;
    }

    fn member_of_instance(&self, instance: &str) -> Option<String> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance))
            .map(|m| m.id.clone())
    }

    async fn add_member(
        &mut self,
        member_id: String,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
    ) {
        self.joins += 1;
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        let member = Member {
            id: member_id.clone(),
            instance_id: request.instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocol_type: request.protocol_type,
            protocols: request.protocols,
            assignment: Bytes::new(),
            expires: Instant::now() + request.session_timeout,
            joined: self.joins,
            awaiting_join: Some(reply),
            awaiting_sync: None,
        };
        self.members.insert(member_id, member);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance();
        }
        self.maybe_complete_join().await;
    }

    /// A known member joins again: in a stable group a follower with unchanged protocols is
    /// answered at once; anything else rebalances.
    async fn rejoin(&mut self, request: JoinRequest, reply: oneshot::Sender<JoinOutcome>) {
        let now = Instant::now();
        let leader = self.leader.clone();
        let Some(member) = self.members.get_mut(&request.member_id) else {
            return;
        };
        let unchanged = member.protocols == request.protocols;
        member.expires = now + request.session_timeout;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.protocols = request.protocols;
        let is_leader = leader.as_deref() == Some(member.id.as_str());
        match self.state {
            State::PreparingRebalance => {
                member.awaiting_join = Some(reply);
                self.maybe_complete_join().await;
            }
            State::CompletingRebalance | State::Stable if unchanged && !is_leader => {
                let _ = reply.send(JoinOutcome {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.unwrap_or_default(),
                    member_id: request.member_id,
                    members: Vec::new(),
                    skip_assignment: false,
                });
            }
            _ => {
                member.awaiting_join = Some(reply);
                self.prepare_rebalance();
                self.maybe_complete_join().await;
            }
        }
    }

    /// A static member restarted (same `group.instance.id`, new member id): it takes the old
    /// member's place and assignment without a rebalance when the group is stable.
    async fn replace_static_member(
        &mut self,
        old_id: String,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
    ) {
        let Some(mut member) = self.members.remove(&old_id) else {
            return;
        };
        let fenced = ResponseError::FencedInstanceId.code();
        if let Some(old_reply) = member.awaiting_join.take() {
            let _ = old_reply.send(JoinOutcome {
                error: fenced,
                generation: -1,
                member_id: old_id.clone(),
                ..JoinOutcome::default()
            });
        }
        if let Some(old_reply) = member.awaiting_sync.take() {
            let _ = old_reply.send(SyncOutcome {
                error: fenced,
                ..SyncOutcome::default()
            });
        }
        let new_id = Self::new_member_id(&request);
        let unchanged = member.protocols == request.protocols;
        member.id = new_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.expires = Instant::now() + request.session_timeout;
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        tracing::info!(group = %self.id, old = %old_id, new = %new_id, "static member rejoined");
        if self.state == State::Stable && unchanged {
            self.members.insert(new_id.clone(), member);
            self.save().await;
            let _ = reply.send(JoinOutcome {
                error: 0,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: self.leader.clone().unwrap_or_default(),
                member_id: new_id,
                members: Vec::new(),
                skip_assignment: was_leader,
            });
            return;
        }
        member.protocols = request.protocols;
        member.awaiting_join = Some(reply);
        self.members.insert(new_id, member);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance();
        }
        self.maybe_complete_join().await;
    }

    /// The error for a request from `membership`, or `None` if it may go on.
    fn check_member(&self, membership: &Membership) -> Option<i16> {
        let Some(member) = self.members.get(&membership.member_id) else {
            if let Some(instance) = &membership.instance_id
                && self.member_of_instance(instance).is_some()
            {
                return Some(ResponseError::FencedInstanceId.code());
            }
            return Some(ResponseError::UnknownMemberId.code());
        };
        if membership.instance_id.is_some() && member.instance_id != membership.instance_id {
            return Some(ResponseError::FencedInstanceId.code());
        }
        if membership.generation != self.generation {
            return Some(ResponseError::IllegalGeneration.code());
        }
        None
    }

    async fn sync(&mut self, request: SyncRequest, reply: oneshot::Sender<SyncOutcome>) {
        let membership = Membership {
            generation: request.generation,
            member_id: request.member_id.clone(),
            instance_id: request.instance_id.clone(),
        };
        let fail = |error: i16| SyncOutcome {
            error,
            ..SyncOutcome::default()
        };
        if let Some(error) = self.check_member(&membership) {
            let _ = reply.send(fail(error));
            return;
        }
        match self.state {
            State::PreparingRebalance => {
                let _ = reply.send(fail(ResponseError::RebalanceInProgress.code()));
            }
            State::Stable => {
                let assignment = self
                    .members
                    .get(&request.member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                let _ = reply.send(SyncOutcome {
                    error: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    assignment,
                });
            }
            State::CompletingRebalance => {
                let now = Instant::now();
                if let Some(member) = self.members.get_mut(&request.member_id) {
                    member.expires = now + member.session_timeout;
                    member.awaiting_sync = Some(reply);
                }
                if self.leader.as_deref() == Some(request.member_id.as_str()) {
                    let assignments: HashMap<String, Bytes> =
                        request.assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment =
                            assignments.get(&member.id).cloned().unwrap_or_default();
                    }
                    self.state = State::Stable;
                    self.save().await;
                    let (protocol_type, protocol) =
                        (self.protocol_type.clone(), self.protocol.clone());
                    for member in self.members.values_mut() {
                        if let Some(reply) = member.awaiting_sync.take() {
                            let _ = reply.send(SyncOutcome {
                                error: 0,
                                protocol_type: protocol_type.clone(),
                                protocol: protocol.clone(),
                                assignment: member.assignment.clone(),
                            });
                        }
                    }
                    tracing::info!(group = %self.id, generation = self.generation, "group stable");
                }
            }
            State::Empty | State::Dead => {
                let _ = reply.send(fail(ResponseError::UnknownMemberId.code()));
            }
        }
    }

    fn heartbeat(&mut self, membership: &Membership) -> i16 {
        if let Some(error) = self.check_member(membership) {
            return error;
        }
        let now = Instant::now();
        if let Some(member) = self.members.get_mut(&membership.member_id) {
            member.expires = now + member.session_timeout;
        }
        match self.state {
            State::PreparingRebalance => ResponseError::RebalanceInProgress.code(),
            State::CompletingRebalance | State::Stable => 0,
            State::Empty | State::Dead => ResponseError::UnknownMemberId.code(),
        }
    }

    async fn leave(&mut self, members: Vec<(String, Option<String>)>) -> LeaveOutcome {
        let mut outcome = Vec::with_capacity(members.len());
        let mut left = false;
        for (member_id, instance_id) in members {
            let id = if member_id.is_empty() {
                instance_id
                    .as_deref()
                    .and_then(|instance| self.member_of_instance(instance))
            } else {
                Some(member_id.clone())
            };
            let code = match id.as_ref().and_then(|id| self.members.get(id)) {
                None => ResponseError::UnknownMemberId.code(),
                Some(member) if instance_id.is_some() && member.instance_id != instance_id => {
                    ResponseError::FencedInstanceId.code()
                }
                Some(member) => {
                    let id = member.id.clone();
                    tracing::info!(group = %self.id, member = %id, "member left");
                    self.remove_member(&id);
                    left = true;
                    0
                }
            };
            outcome.push((member_id, instance_id, code));
        }
        if left {
            self.members_changed().await;
        }
        outcome
    }

    async fn commit(&mut self, request: CommitRequest) -> i16 {
        let m = &request.membership;
        let simple = m.generation < 0 && m.member_id.is_empty();
        if simple {
            // Offsets from outside the group (admin tools, simple consumers): only into a
            // group with no members, as Kafka.
            if self.state != State::Empty {
                return ResponseError::UnknownMemberId.code();
            }
        } else {
            if let Some(error) = self.check_member(m) {
                return error;
            }
            if self.state == State::CompletingRebalance {
                return ResponseError::RebalanceInProgress.code();
            }
            let now = Instant::now();
            if let Some(member) = self.members.get_mut(&m.member_id) {
                member.expires = now + member.session_timeout;
            }
        }
        match self
            .store
            .commit_offsets(&self.id, self.agent, &request.offsets)
            .await
        {
            Ok(()) => 0,
            Err(MetadataError::NotGroupCoordinator(_)) => {
                self.fenced = true;
                not_coordinator()
            }
            Err(e) => {
                tracing::warn!(group = %self.id, error = %e, "cannot store committed offsets");
                ResponseError::CoordinatorNotAvailable.code()
            }
        }
    }

    fn describe(&self) -> Description {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined);
        let protocol = self.protocol.clone().unwrap_or_default();
        Description {
            state: self.state.name(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: members
                .into_iter()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    async fn delete(&mut self) -> i16 {
        if self.state != State::Empty {
            return ResponseError::NonEmptyGroup.code();
        }
        match self.store.delete_group(&self.id, self.agent).await {
            Ok(()) => {
                self.state = State::Dead;
                0
            }
            Err(MetadataError::NotGroupCoordinator(_)) => {
                self.fenced = true;
                not_coordinator()
            }
            Err(e) => {
                tracing::warn!(group = %self.id, error = %e, "cannot delete group");
                ResponseError::CoordinatorNotAvailable.code()
            }
        }
    }

    async fn delete_offsets(&mut self, partitions: &[(TopicId, i32)]) -> i16 {
        if !self.members.is_empty() {
            return ResponseError::GroupSubscribedToTopic.code();
        }
        match self
            .store
            .delete_offsets(&self.id, self.agent, partitions)
            .await
        {
            Ok(()) => 0,
            Err(MetadataError::NotGroupCoordinator(_)) => {
                self.fenced = true;
                not_coordinator()
            }
            Err(e) => {
                tracing::warn!(group = %self.id, error = %e, "cannot delete committed offsets");
                ResponseError::CoordinatorNotAvailable.code()
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
