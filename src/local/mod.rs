//! The session backend over the local Docker endpoint.

pub mod agent_data;
pub mod backend;
pub mod docker_api;
pub mod index;
pub mod labels;
pub mod langfuse;
pub mod limits;
pub mod log_driver;
pub mod mounts;
pub mod naming;
pub mod pool;
pub mod ports;
pub mod project;
pub mod runtime;
pub mod session_exec;
pub mod snapshot;
pub mod state;
pub mod upload;
