//! What the gateway's outgoing connections share: name resolution with timeouts
//! ([`dns`]), the TLS trust of clients ([`tls`]), and the address classes a target may
//! not reach.

pub mod dns;
pub mod targets;
pub mod tls;
