//! The agent's place in the fleet: its registration in the sequencer, the live agents it
//! knows of, and which of them a client should see.
//!
//! Clients stay in their own zone: Metadata lists the live agents of the zone named in the
//! client's `client.id` (every agent when there is no hint or no agent there), and spreads
//! partition leadership over them by rendezvous hashing, so answers are the same from every
//! agent while the fleet is unchanged, and an agent joining or leaving moves only its share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use shoal_metadata::{AgentInfo, AgentRegistration, MetadataError, MetadataStore, TopicId};
use tokio::sync::watch;

/// How often an agent renews its lease and reloads the live agents.
const RENEW_INTERVAL: Duration = Duration::from_secs(2);
/// How long an agent stays listed without renewing: a killed agent leaves the Metadata
/// answers after at most this long plus one renewal interval.
pub const LEASE: Duration = Duration::from_secs(10);

/// `client.id` keys that name the client's zone: ours, and those that users of other
/// diskless Kafka systems already have in their configs.
const ZONE_HINT_KEYS: [&str; 5] = ["shoal_az", "ws_az", "warpstream_az", "diskless_az", "zone"];

/// This agent's membership and its view of the live agents.
pub struct Fleet {
    store: Arc<dyn MetadataStore>,
    me: AgentInfo,
    registration: AgentRegistration,
    live: RwLock<Arc<Vec<AgentInfo>>>,
    leaving: watch::Sender<bool>,
    /// When the sequencer last accepted this agent's registration or renewal.
    renewed: parking_lot::Mutex<Instant>,
    /// When a client was last sent to another agent (see [`Fleet::redirect`]), or when this
    /// agent began to leave.
    redirected: parking_lot::Mutex<Option<Instant>>,
}

impl Fleet {
    /// Registers this agent and loads the live agents.
    pub async fn join(
        store: Arc<dyn MetadataStore>,
        registration: AgentRegistration,
    ) -> Result<Arc<Fleet>, MetadataError> {
        let id = store.register_agent(&registration, LEASE).await?;
        let me = AgentInfo {
            id,
            zone: registration.zone.clone(),
            host: registration.host.clone(),
            port: registration.port,
            last_heartbeat_ms: crate::now_ms(),
        };
        let live = store.live_agents().await?;
        let fleet = Arc::new(Fleet {
            store,
            me,
            registration,
            live: RwLock::new(Arc::new(Vec::new())),
            leaving: watch::channel(false).0,
            renewed: parking_lot::Mutex::new(Instant::now()),
            redirected: parking_lot::Mutex::new(None),
        });
        fleet.set_live(live);
        tokio::spawn(fleet.clone().renew());
        Ok(fleet)
    }

    /// This agent as clients see it.
    pub fn me(&self) -> &AgentInfo {
        &self.me
    }

    /// Live agents by id. This agent is listed while it serves (even if the sequencer has
    /// not seen a renewal lately) and unlisted once it leaves, unless it is the only one.
    pub fn live(&self) -> Arc<Vec<AgentInfo>> {
        self.live.read().clone()
    }

    /// The agents a client should talk to: those of the zone its `client.id` names, or all.
    pub fn for_client(&self, client_id: Option<&str>) -> Vec<AgentInfo> {
        let live = self.live();
        let zone = client_id.and_then(zone_hint);
        if let Some(zone) = zone {
            let local: Vec<AgentInfo> = live
                .iter()
                .filter(|agent| agent.zone.as_deref() == Some(zone))
                .cloned()
                .collect();
            if !local.is_empty() {
                return local;
            }
        }
        live.as_ref().clone()
    }

    /// Whether the sequencer lists this agent: its lease was renewed within [`LEASE`].
    pub fn is_registered(&self) -> bool {
        self.renewed.lock().elapsed() < LEASE
    }

    /// Whether this agent is leaving (draining before it stops).
    pub fn is_leaving(&self) -> bool {
        *self.leaving.borrow()
    }

    /// Whether a produce or fetch should send its client to another agent: true once this
    /// agent has left and others serve its clients. Each redirect is remembered, so the drain
    /// can tell when clients have moved.
    pub fn redirect(&self) -> bool {
        let left = self.is_leaving() && !self.live().iter().any(|agent| agent.id == self.me.id);
        if left {
            *self.redirected.lock() = Some(Instant::now());
        }
        left
    }

    /// Waits, at most `limit`, until no client has been redirected for `quiet`: producers and
    /// consumers of a draining agent have refreshed their metadata and moved to other agents.
    pub async fn clients_moved(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let since = self.redirected.lock().map_or(quiet, |at| at.elapsed());
            let now = Instant::now();
            if since >= quiet || now >= deadline {
                return;
            }
            let wait = (quiet - since).min(deadline - now);
            tokio::time::sleep(wait).await;
        }
    }

    /// Deregisters at once, so other agents stop listing this one; this agent's own answers
    /// list the others from now on.
    pub async fn leave(&self) {
        self.leaving.send_replace(true);
        // Clients get at least one quiet period to show up and be redirected.
        *self.redirected.lock() = Some(Instant::now());
        if let Err(e) = self.store.deregister_agent(self.me.id).await {
            tracing::warn!(error = %e, "cannot deregister; the lease will lapse instead");
        }
        let others: Vec<AgentInfo> = self.live().iter().cloned().collect();
        self.set_live(others);
    }

    fn set_live(&self, mut agents: Vec<AgentInfo>) {
        let leaving = *self.leaving.borrow();
        agents.retain(|agent| agent.id != self.me.id);
        if !leaving || agents.is_empty() {
            agents.push(self.me.clone());
            agents.sort_by_key(|agent| agent.id);
        }
        *self.live.write() = Arc::new(agents);
    }

    async fn renew(self: Arc<Self>) {
        let mut leaving = self.leaving.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
                _ = leaving.wait_for(|leaving| *leaving) => return,
            }
            match self
                .store
                .renew_agent(self.me.id, &self.registration, LEASE)
                .await
            {
                Ok(()) => *self.renewed.lock() = Instant::now(),
                Err(e) => tracing::warn!(error = %e, "cannot renew this agent's lease"),
            }
            match self.store.live_agents().await {
                // Leaving may have begun while the list was loading: never list us again then.
                Ok(live) if !*self.leaving.borrow() => self.set_live(live),
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "cannot load the live agents"),
            }
        }
    }
}

/// The zone a `client.id` names: `KEY=ZONE` among items separated by commas, semicolons,
/// ampersands or spaces, with KEY one of [`ZONE_HINT_KEYS`] (case-insensitive).
pub fn zone_hint(client_id: &str) -> Option<&str> {
    client_id
        .split([',', ';', '&', ' '])
        .filter_map(|item| item.split_once('='))
        .find(|(key, zone)| {
            !zone.is_empty()
                && ZONE_HINT_KEYS
                    .iter()
                    .any(|hint| key.trim().eq_ignore_ascii_case(hint))
        })
        .map(|(_, zone)| zone.trim())
}

/// The leader to report for a partition among `agents`: the one with the highest
/// rendezvous score, so each agent's share moves only when it joins or leaves.
pub fn leader(agents: &[AgentInfo], topic: TopicId, partition: i32) -> Option<i32> {
    agents
        .iter()
        .max_by_key(|agent| score(topic, partition, agent.id))
        .map(|agent| agent.id)
}

/// The agent with the highest rendezvous score for `key` (a consumer group id): the same on
/// every agent, and moved only when that agent leaves.
pub fn rendezvous<'a>(agents: &'a [AgentInfo], key: &[u8]) -> Option<&'a AgentInfo> {
    // FNV-1a over the key, then the same finalizer as partition scores.
    let hashed = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    agents
        .iter()
        .max_by_key(|agent| mix(mix(hashed) ^ u64::from(agent.id as u32).rotate_left(32)))
}

fn score(topic: TopicId, partition: i32, agent: i32) -> u64 {
    let (high, low) = topic.as_u64_pair();
    let mut h = mix(high ^ mix(low));
    h = mix(h ^ u64::from(partition as u32));
    mix(h ^ u64::from(agent as u32).rotate_left(32))
}

/// SplitMix64's finalizer: a fixed, well-spread hash (the same on every agent and release).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_hints_in_every_known_format() {
        for (client_id, zone) in [
            ("shoal_az=us-east-1a", Some("us-east-1a")),
            ("vector,ws_az=eu-west-1b", Some("eu-west-1b")),
            ("warpstream_az=az2;app=billing", Some("az2")),
            ("app=x&diskless_az=zone-c", Some("zone-c")),
            ("zone=a logs", Some("a")),
            ("ZONE=b", Some("b")),
            ("rdkafka", None),
            ("shoal_az=", None),
            ("myzone=a", None),
            ("", None),
        ] {
            assert_eq!(zone_hint(client_id), zone, "{client_id}");
        }
    }

    fn agents(ids: &[i32]) -> Vec<AgentInfo> {
        ids.iter()
            .map(|&id| AgentInfo {
                id,
                zone: None,
                host: "127.0.0.1".into(),
                port: 9092,
                last_heartbeat_ms: 0,
            })
            .collect()
    }

    #[test]
    fn leadership_is_spread_and_moves_only_with_its_agent() {
        let topic = TopicId::from_u128(0x5ca1ab1e);
        let three = agents(&[1, 2, 3]);
        let before: Vec<i32> = (0..3000)
            .map(|p| leader(&three, topic, p).unwrap())
            .collect();
        for id in 1..=3 {
            let share = before.iter().filter(|&&l| l == id).count();
            assert!((800..1200).contains(&share), "agent {id} leads {share}");
        }
        let two = agents(&[1, 3]);
        for (p, &was) in before.iter().enumerate() {
            let now = leader(&two, topic, p as i32).unwrap();
            if was != 2 {
                assert_eq!(now, was, "partition {p} moved though its leader stayed");
            }
        }
        assert_eq!(leader(&[], topic, 0), None);
    }
}
