//! cubbi: system containers for AI coding agents, on a dedicated Docker endpoint.

pub mod cli;
pub mod config;
pub mod docker;
