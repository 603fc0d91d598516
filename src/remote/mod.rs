//! The client side of `cubbi serve`: the backend over HTTP (and, beside it, the remotes the
//! user configured and their tokens).

pub mod client;
pub mod remotes;
