//! `cubbi serve`: the session API over HTTP for a shared Sysbox host.

pub mod store;
