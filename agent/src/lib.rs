//! The Shoal agent: a Kafka endpoint whose records live in immutable objects and whose
//! order lives in a metadata sequencer.

pub mod admin;
mod agent;
mod announce;
mod api;
mod batcher;
mod catalog;
mod config;
mod connection;
mod fleet;
mod groups;
mod http;
mod index;
mod metrics;
mod names;
mod reader;
mod uploads;

pub use agent::{Agent, StartError};
pub use api::decode_frame;
pub use config::{AgentArgs, AgentConfig, CompactorArgs, HttpListen, StorageArgs};
pub use http::serve_compactor;

/// Milliseconds since the Unix epoch, as Kafka timestamps count.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
