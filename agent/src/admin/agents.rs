//! `shoal admin agents list`: the agents the cluster lists (DescribeCluster, whose rack is
//! the zone), with heartbeats read from the sequencer when its URL is given, since the Kafka
//! protocol has no word for them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::client::Client;
use super::cluster::{self, address};
use super::error::AdminError;
use super::output::{Format, Report, Table, cell, print};

#[derive(Serialize)]
struct Agent {
    node_id: i32,
    address: String,
    zone: Option<String>,
    /// When the agent last renewed its lease, in ms since the epoch (sequencer clock);
    /// `None` without `--metadata`.
    last_heartbeat_ms: Option<i64>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct AgentList(Vec<Agent>);

impl Report for AgentList {
    fn table(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut table = Table::new(&["NODE-ID", "ADDRESS", "ZONE", "LAST-HEARTBEAT"]);
        for a in &self.0 {
            table.row(vec![
                a.node_id.to_string(),
                a.address.clone(),
                cell(a.zone.as_ref()),
                cell(a.last_heartbeat_ms.map(|ms| heartbeat(ms, now))),
            ]);
        }
        table.render()
    }
}

/// `2024-05-01T12:00:03Z (2s ago)`.
fn heartbeat(ms: i64, now_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let ago = Duration::from_secs((now_ms - ms).max(0) as u64 / 1000);
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(at),
        humantime::format_duration(ago)
    )
}

pub async fn list(
    client: &mut Client,
    format: Format,
    metadata: Option<&str>,
) -> Result<(), AdminError> {
    let mut agents: BTreeMap<i32, Agent> = cluster::agents(client)
        .await?
        .into_iter()
        .map(|b| {
            (
                b.node_id,
                Agent {
                    node_id: b.node_id,
                    address: b.addr(),
                    zone: b.zone,
                    last_heartbeat_ms: None,
                },
            )
        })
        .collect();
    if let Some(url) = metadata {
        // Agents the sequencer holds leases for but the answering agent has not seen yet
        // (it learns of others on its next renewal) are listed too.
        for live in sequencer_agents(url).await? {
            agents
                .entry(live.id)
                .or_insert_with(|| Agent {
                    node_id: live.id,
                    address: address(&live.host, live.port),
                    zone: live.zone.clone(),
                    last_heartbeat_ms: None,
                })
                .last_heartbeat_ms = Some(live.last_heartbeat_ms);
        }
    }
    print(format, &AgentList(agents.into_values().collect()));
    Ok(())
}

/// The live agents in the sequencer at `url`. A SQLite file must exist: opening a missing
/// one would create an empty sequencer.
async fn sequencer_agents(url: &str) -> Result<Vec<shoal_metadata::AgentInfo>, AdminError> {
    let failed = |reason: String| AdminError::Metadata {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or_default();
        if !path.contains(":memory:") && !std::path::Path::new(path).exists() {
            return Err(failed(format!("no sequencer database at {path}")));
        }
    }
    let store = shoal_metadata::open(url)
        .await
        .map_err(|e| failed(e.to_string()))?;
    store.live_agents().await.map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::heartbeat;

    #[test]
    fn heartbeats_read_as_time_and_age() {
        assert_eq!(
            heartbeat(1_700_000_000_000, 1_700_000_002_500),
            "2023-11-14T22:13:20Z (2s ago)"
        );
    }
}
