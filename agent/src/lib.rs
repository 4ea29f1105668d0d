//! The Shoal agent: a Kafka endpoint whose records live in immutable objects and whose
//! order lives in a metadata sequencer.

mod agent;
mod announce;
mod api;
mod batcher;
mod catalog;
mod config;
mod connection;
mod fleet;
mod index;
mod names;
mod reader;
mod topic_config;
mod uploads;

pub use agent::{Agent, StartError};
pub use api::decode_frame;
pub use config::{AgentArgs, AgentConfig};
