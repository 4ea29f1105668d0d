//! Admin errors: what went wrong, said so a person can act on it, and the exit code that
//! tells a script whether the cluster refused (1) or could not be asked at all (2).

use std::fmt;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Arguments that make no sense together or name nothing.
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not answer {api:?} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        addr: String,
        api: ApiKey,
        timeout: Duration,
    },
    #[error("connection to {addr} failed during {api:?}: {reason}")]
    Io {
        addr: String,
        api: ApiKey,
        reason: String,
    },
    #[error("{addr} sent an unreadable {api:?} answer: {reason}")]
    BadAnswer {
        addr: String,
        api: ApiKey,
        reason: String,
    },
    #[error("cannot encode {api:?} v{version}: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{addr} speaks {api:?} in versions {offered}; this tool speaks {ours}")]
    Unsupported {
        addr: String,
        api: ApiKey,
        ours: String,
        offered: String,
    },
    #[error("{}", join(.0))]
    Refused(Vec<Refusal>),
    #[error("--metadata {url}: {reason}")]
    Metadata { url: String, reason: String },
}

impl AdminError {
    /// 1 when the cluster refused or answered nonsense, 2 when the command could not be
    /// carried out as given (bad arguments, nothing to connect to).
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Refused(_)
            | AdminError::BadAnswer { .. }
            | AdminError::Unsupported { .. }
            | AdminError::Encode { .. } => 1,
            AdminError::Usage(_)
            | AdminError::Connect { .. }
            | AdminError::Timeout { .. }
            | AdminError::Io { .. }
            | AdminError::Metadata { .. } => 2,
        }
    }

    /// One refusal as an error.
    pub fn refused(subject: impl Into<String>, code: i16, message: Option<String>) -> AdminError {
        AdminError::Refused(vec![Refusal::new(subject, code, message)])
    }
}

fn join(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(Refusal::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Kafka error code the cluster answered for one thing (a topic, a group, a partition).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// What was refused, as `topic `orders``.
    pub subject: String,
    pub code: i16,
    /// Kafka's name of the error, as `UNKNOWN_TOPIC_OR_PARTITION`.
    pub error: String,
    pub message: String,
}

impl Refusal {
    /// `message` is the agent's own explanation when it sent one; otherwise the usual
    /// meaning of the code.
    pub fn new(subject: impl Into<String>, code: i16, message: Option<String>) -> Refusal {
        let message = message
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| meaning(code).to_string());
        Refusal {
            subject: subject.into(),
            code,
            error: error_name(code),
            message,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.error)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Kafka's name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`), from the codec's variant
/// name (`UnknownTopicOrPartition`).
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_ERROR_CODE_{code}"),
        Some(error) => {
            let camel = format!("{error:?}");
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// What the errors an admin meets usually mean.
fn meaning(code: i16) -> &'static str {
    use ResponseError as E;
    match ResponseError::try_from_code(code) {
        Some(E::UnknownTopicOrPartition) => "no such topic or partition",
        Some(E::TopicAlreadyExists) => "a topic of this name exists",
        Some(E::InvalidTopicException) => "not a valid topic name",
        Some(E::InvalidPartitions) => "not a valid number of partitions",
        Some(E::InvalidReplicationFactor) => "not a valid replication factor",
        Some(E::InvalidConfig) => "not a valid configuration",
        Some(E::GroupIdNotFound) => "no such group",
        Some(E::NonEmptyGroup) => "the group has active members",
        Some(E::InvalidGroupId) => "not a valid group id",
        Some(E::UnknownMemberId) => {
            "the group has active members; offsets can only be changed while it is empty"
        }
        Some(E::GroupSubscribedToTopic) => "the group's members are subscribed to the topic",
        Some(E::NotCoordinator) | Some(E::CoordinatorNotAvailable) => {
            "the group's coordinator moved; try again"
        }
        Some(E::CoordinatorLoadInProgress) => "the group's coordinator is loading it; try again",
        Some(E::RebalanceInProgress) => "the group is rebalancing",
        Some(E::KafkaStorageError) => "the agent could not reach its sequencer or object store",
        Some(E::PolicyViolation) => "refused by the cluster's policy",
        Some(E::TopicAuthorizationFailed) | Some(E::GroupAuthorizationFailed) => "not authorized",
        Some(E::UnsupportedVersion) => "the agent does not speak this version",
        _ => "",
    }
}

/// Whether a group request should go to the coordinator again after a fresh lookup.
pub fn coordinator_moved(code: i16) -> bool {
    use ResponseError as E;
    matches!(
        ResponseError::try_from_code(code),
        Some(E::NotCoordinator | E::CoordinatorNotAvailable | E::CoordinatorLoadInProgress)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_error_names() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(68), "NON_EMPTY_GROUP");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn refusals_read_as_sentences() {
        let r = Refusal::new("topic `orders`", 3, None);
        assert_eq!(
            r.to_string(),
            "topic `orders`: UNKNOWN_TOPIC_OR_PARTITION: no such topic or partition"
        );
        let r = Refusal::new("topic `x`", 37, Some("must be at least 1".into()));
        assert_eq!(
            r.to_string(),
            "topic `x`: INVALID_PARTITIONS: must be at least 1"
        );
    }
}
