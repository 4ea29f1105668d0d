//! `shoal admin`: topics, consumer groups and agents, managed over the Kafka protocol so the
//! same commands work against any agent (or any Kafka broker).

mod agents;
mod client;
mod cluster;
mod error;
mod groups;
mod output;
mod topics;

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

pub use error::AdminError;
pub use output::Format;

use client::Client;

/// Manage topics, consumer groups and agents through any agent's Kafka listener.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Kafka address of any agent (several may be given, comma-separated).
    #[arg(
        long,
        env = "SHOAL_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Format,
    /// How long to wait for a connection or an answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// List, describe, reset the offsets of, and delete consumer groups.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// List the live agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions (default: the agent's `num.partitions`).
        #[arg(long)]
        partitions: Option<i32>,
        /// A topic config, as `retention.ms=86400000`; repeat for more.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// List the topics with their partition counts.
    List,
    /// Partitions (leader, log start offset, high watermark) and configs of topics.
    Describe {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set or delete topic configs (IncrementalAlterConfigs); deleted configs return to
    /// their defaults.
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args(["set", "delete"]))]
    AlterConfig {
        name: String,
        /// A config to set, as `retention.ms=3600000`; repeat for more.
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A config to return to its default; repeat for more.
        #[arg(long, value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Delete topics and their records.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Raise a topic's partition count (CreatePartitions).
    AddPartitions {
        name: String,
        /// The new total number of partitions.
        #[arg(long)]
        total: i32,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List the consumer groups with their state.
    List,
    /// State, members and per-partition committed offset, log end offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets. Without --execute, prints the plan only. The group
    /// must have no active members.
    #[command(group = clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"]))]
    ResetOffsets {
        group: String,
        /// A topic (all its partitions) or `TOPIC:P,P,...`; repeat for more.
        #[arg(long = "topic", value_name = "TOPIC[:P,...]", required = true, value_parser = topic_partitions)]
        topics: Vec<TopicPartitions>,
        /// The log start offset.
        #[arg(long)]
        to_earliest: bool,
        /// The log end offset (nothing left to read).
        #[arg(long)]
        to_latest: bool,
        /// The first offset at or after a time, in UTC: `2024-05-01T12:00:00Z`.
        #[arg(long, value_name = "RFC3339", value_parser = humantime::parse_rfc3339_weak)]
        to_datetime: Option<SystemTime>,
        /// An absolute offset (kept within the log's range).
        #[arg(long, value_name = "N")]
        to_offset: Option<i64>,
        /// The committed offset moved by N (negative: back), kept within the log's range.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (without it the plan is only printed).
        #[arg(long)]
        execute: bool,
    },
    /// Delete groups and their committed offsets; groups must have no active members.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Node id, address and zone of every live agent. Heartbeats are not part of the Kafka
    /// protocol: the LAST-HEARTBEAT column shows "-" (null in JSON) unless --metadata names
    /// the sequencer to read them from.
    List {
        /// The sequencer URL the agents use (`postgres://...` or `sqlite://...`), to show
        /// when each agent last renewed its lease.
        #[arg(long, env = "SHOAL_METADATA", value_name = "URL")]
        metadata: Option<String>,
    },
}

/// A `--topic` argument: a topic and the partitions named (`None`: all of them).
#[derive(Debug, Clone)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Option<Vec<i32>>,
}

fn topic_partitions(arg: &str) -> Result<TopicPartitions, String> {
    let (topic, partitions) = match arg.split_once(':') {
        None => (arg, None),
        Some((topic, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|p| *p >= 0)
                        .ok_or_else(|| format!("`{p}` is not a partition number"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (topic, Some(partitions))
        }
    };
    if topic.is_empty() {
        return Err("the topic name is empty".into());
    }
    Ok(TopicPartitions {
        topic: topic.to_string(),
        partitions,
    })
}

fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{arg}` is not KEY=VALUE")),
    }
}

/// Runs one admin command, printing its answer on stdout.
pub async fn run(args: AdminArgs) -> Result<(), AdminError> {
    let format = args.output;
    let mut client = Client::connect(&args.bootstrap, args.timeout).await?;
    match args.command {
        AdminCommand::Topics(command) => topics::run(&mut client, format, command).await,
        AdminCommand::Groups(command) => groups::run(&mut client, format, command).await,
        AdminCommand::Agents(AgentsCommand::List { metadata }) => {
            agents::list(&mut client, format, metadata.as_deref()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_partition_arguments() {
        let all = topic_partitions("orders").unwrap();
        assert_eq!((all.topic.as_str(), all.partitions), ("orders", None));
        let some = topic_partitions("orders:0,2").unwrap();
        assert_eq!(some.partitions, Some(vec![0, 2]));
        assert!(topic_partitions("orders:x").is_err());
        assert!(topic_partitions("orders:-1").is_err());
        assert!(topic_partitions(":1").is_err());
    }

    #[test]
    fn config_arguments() {
        assert_eq!(
            key_value("retention.ms=10").unwrap(),
            ("retention.ms".to_string(), "10".to_string())
        );
        assert_eq!(key_value("a=").unwrap(), ("a".to_string(), String::new()));
        assert!(key_value("novalue").is_err());
        assert!(key_value("=1").is_err());
    }
}
