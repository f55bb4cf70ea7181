//! Websocket close codes (RFC 6455 §7.4.1) the sessions send.

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL: u16 = 1002;
pub const UNSUPPORTED: u16 = 1003;
pub const INVALID_DATA: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
