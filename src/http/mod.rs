//! HTTP: the accept loop, the route table, response bodies, TLS and the
//! admin listener. Knows requests and responses; asks [`crate::service`]
//! what to do and never touches storage itself.

pub mod admin;
pub mod body;
pub mod certificate;
pub mod ranges;
pub mod routes;
pub mod server;
pub mod tls;
pub mod zerocopy;
