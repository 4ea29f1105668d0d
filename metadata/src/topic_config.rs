//! Topic configs under Kafka's names: which exist, their defaults, how they are validated,
//! and the typed settings the produce path reads. The catalog owns them, so the agent and
//! the compactor read the same defaults.

use std::collections::BTreeMap;

/// Kafka's default `max.message.bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: i64 = 1_048_588;

/// How a config value is checked and described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    Int,
    Long,
    Double,
    String,
    List,
}

impl ConfigType {
    /// Kafka's DescribeConfigs `config_type` code.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

/// A topic config Shoal knows: its name, type, default and meaning here.
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: ConfigType,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every topic config accepted. Those Shoal acts on come first; the rest are Kafka configs
/// about local log segments and replication, accepted so existing tooling keeps working,
/// and stored without effect.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def(
        "cleanup.policy",
        ConfigType::List,
        "delete",
        "delete, compact, or both",
    ),
    def(
        "retention.ms",
        ConfigType::Long,
        "604800000",
        "Age after which records may be deleted (-1: never)",
    ),
    def(
        "retention.bytes",
        ConfigType::Long,
        "-1",
        "Partition size beyond which old records may be deleted (-1: no limit)",
    ),
    def(
        "shoal.parquet.export",
        ConfigType::Boolean,
        "false",
        "Whether the compactor exports the topic's records as Parquet files",
    ),
    def(
        "max.message.bytes",
        ConfigType::Int,
        "1048588",
        "Largest record batch accepted",
    ),
    def(
        "message.timestamp.type",
        ConfigType::String,
        "CreateTime",
        "CreateTime keeps the producer's timestamps; LogAppendTime stamps batches on arrival",
    ),
    def(
        "delete.retention.ms",
        ConfigType::Long,
        "86400000",
        "How long tombstones stay in compacted topics",
    ),
    def(
        "min.compaction.lag.ms",
        ConfigType::Long,
        "0",
        "Minimum age of a record before compaction",
    ),
    def(
        "max.compaction.lag.ms",
        ConfigType::Long,
        "9223372036854775807",
        "Maximum age of an uncompacted record",
    ),
    def(
        "compression.type",
        ConfigType::String,
        "producer",
        "Stored batches keep the producer's compression",
    ),
    def(
        "min.cleanable.dirty.ratio",
        ConfigType::Double,
        "0.5",
        "Accepted for compatibility",
    ),
    def(
        "message.timestamp.before.max.ms",
        ConfigType::Long,
        "9223372036854775807",
        "Accepted for compatibility",
    ),
    def(
        "message.timestamp.after.max.ms",
        ConfigType::Long,
        "9223372036854775807",
        "Accepted for compatibility",
    ),
    def(
        "message.timestamp.difference.max.ms",
        ConfigType::Long,
        "9223372036854775807",
        "Accepted for compatibility",
    ),
    def(
        "min.insync.replicas",
        ConfigType::Int,
        "1",
        "Accepted for compatibility: the object store is the replication",
    ),
    def(
        "segment.bytes",
        ConfigType::Int,
        "1073741824",
        "Accepted for compatibility",
    ),
    def(
        "segment.ms",
        ConfigType::Long,
        "604800000",
        "Accepted for compatibility",
    ),
    def(
        "segment.index.bytes",
        ConfigType::Int,
        "10485760",
        "Accepted for compatibility",
    ),
    def(
        "segment.jitter.ms",
        ConfigType::Long,
        "0",
        "Accepted for compatibility",
    ),
    def(
        "index.interval.bytes",
        ConfigType::Int,
        "4096",
        "Accepted for compatibility",
    ),
    def(
        "file.delete.delay.ms",
        ConfigType::Long,
        "60000",
        "Accepted for compatibility",
    ),
    def(
        "flush.messages",
        ConfigType::Long,
        "9223372036854775807",
        "Accepted for compatibility",
    ),
    def(
        "flush.ms",
        ConfigType::Long,
        "9223372036854775807",
        "Accepted for compatibility",
    ),
    def(
        "preallocate",
        ConfigType::Boolean,
        "false",
        "Accepted for compatibility",
    ),
    def(
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        "false",
        "Accepted for compatibility",
    ),
    def(
        "local.retention.ms",
        ConfigType::Long,
        "-2",
        "Accepted for compatibility",
    ),
    def(
        "local.retention.bytes",
        ConfigType::Long,
        "-2",
        "Accepted for compatibility",
    ),
    def(
        "remote.storage.enable",
        ConfigType::Boolean,
        "false",
        "Accepted for compatibility",
    ),
    def(
        "message.downconversion.enable",
        ConfigType::Boolean,
        "true",
        "Accepted for compatibility",
    ),
    def(
        "leader.replication.throttled.replicas",
        ConfigType::List,
        "",
        "Accepted for compatibility",
    ),
    def(
        "follower.replication.throttled.replicas",
        ConfigType::List,
        "",
        "Accepted for compatibility",
    ),
];

const fn def(
    name: &'static str,
    kind: ConfigType,
    default: &'static str,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        default,
        doc,
    }
}

/// Looks a topic config up by name.
pub fn config_def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one config value; the error is the message for INVALID_CONFIG.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let def = config_def(name).ok_or_else(|| format!("unknown topic config `{name}`"))?;
    let bad = |what: &str| format!("invalid value `{value}` for `{name}`: {what}");
    match def.kind {
        ConfigType::Boolean => value
            .parse::<bool>()
            .map(drop)
            .map_err(|_| bad("expected true or false")),
        ConfigType::Int => value
            .parse::<i32>()
            .map_err(|_| bad("expected a 32-bit integer"))
            .and_then(|v| {
                if v < 0 {
                    Err(bad("must not be negative"))
                } else {
                    Ok(())
                }
            }),
        ConfigType::Long => value
            .parse::<i64>()
            .map_err(|_| bad("expected a 64-bit integer"))
            .and_then(|v| {
                let min = if name.starts_with("local.retention") {
                    -2
                } else {
                    -1
                };
                if v < min {
                    Err(bad(&format!("must be at least {min}")))
                } else {
                    Ok(())
                }
            }),
        ConfigType::Double => value
            .parse::<f64>()
            .map(drop)
            .map_err(|_| bad("expected a number")),
        ConfigType::String => match name {
            "message.timestamp.type" if !matches!(value, "CreateTime" | "LogAppendTime") => {
                Err(bad("expected CreateTime or LogAppendTime"))
            }
            "compression.type"
                if !matches!(
                    value,
                    "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd"
                ) =>
            {
                Err(bad(
                    "expected producer, uncompressed, gzip, snappy, lz4 or zstd",
                ))
            }
            _ => Ok(()),
        },
        ConfigType::List => {
            if name == "cleanup.policy" {
                let items: Vec<&str> = value.split(',').map(str::trim).collect();
                if items.is_empty() || items.iter().any(|i| !matches!(*i, "delete" | "compact")) {
                    return Err(bad("expected delete, compact, or both"));
                }
            }
            Ok(())
        }
    }
}

/// Validates a whole set of configs, as CreateTopics and AlterConfigs need.
pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
}

/// The settings the produce path applies, parsed once per catalog load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub max_message_bytes: usize,
    pub log_append_time: bool,
}

impl TopicSettings {
    pub fn from_configs(configs: &BTreeMap<String, String>) -> Self {
        let max_message_bytes = configs
            .get("max.message.bytes")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
            .max(0) as usize;
        let log_append_time = configs
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime");
        Self {
            max_message_bytes,
            log_append_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-5").is_err());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Now").is_err());
        assert!(validate("no.such.config", "1").is_err());
        assert!(validate("max.message.bytes", "-1").is_err());
    }

    #[test]
    fn settings() {
        let s = TopicSettings::from_configs(&BTreeMap::from([
            ("max.message.bytes".into(), "2048".into()),
            ("message.timestamp.type".into(), "LogAppendTime".into()),
        ]));
        assert_eq!(s.max_message_bytes, 2048);
        assert!(s.log_append_time);
        assert_eq!(
            TopicSettings::from_configs(&BTreeMap::new()).max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES as usize
        );
    }
}
