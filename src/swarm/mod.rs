//! Sessions on a Docker Swarm of cubbi engines (`[backend] kind = "swarm"` in service.toml):
//! the same [`crate::api::Backend`] as the local engine, each session a one-replica service
//! pinned to the node placement chose. Joining nodes is `crate::engine::swarm`'s.

pub mod api;
pub mod backend;
#[cfg(test)]
mod backend_tests;
pub mod placement;
pub mod record;
pub mod service_spec;

pub use backend::{SessionsCache, SwarmBackend, SwarmOptions};
