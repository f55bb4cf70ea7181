//! The actors of a node: the channel registry and one supervised actor per channel.

pub mod broker;
pub mod channel;
pub mod close_code;
pub mod delivery;
pub mod event_session;
pub mod handle;
pub mod registry;
pub mod scenario_host;
pub mod sessions;
pub mod stats;
pub mod stats_history;
pub mod ws_backlog;
pub mod ws_heartbeat;
pub mod ws_session;

pub use channel::ChannelActor;
pub use handle::{ChannelHandle, ChannelStats, ScriptKind};
pub use registry::ChannelRegistry;
