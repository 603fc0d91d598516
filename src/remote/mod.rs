//! The client side of `cubbi serve`: remotes, their tokens, and the backend over HTTP.

pub mod remotes;
