//! cubbi: system containers for AI coding agents, on a dedicated Docker endpoint.

pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod docker;
pub mod doctor;
pub mod egress;
pub mod engine;
pub mod images;
pub mod local;
pub mod mcp;
pub mod projects;
pub mod remote;
pub mod run;
pub mod service;
pub mod ssh;
pub mod swarm;
pub mod token_text;
