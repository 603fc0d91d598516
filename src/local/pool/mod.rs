//! The warm pool (issue #24): booted system containers per image, owned by nobody, that a
//! create claims instead of booting a new one. See "Warm pool" in docs/architecture.md for the
//! design; this module owns the parts every step shares: the configured targets, how a member
//! is named and labelled, the claim record a claimed member carries, and which requests fit.

pub mod claim;
#[cfg(test)]
mod claim_tests;
pub mod demand;
pub mod fit;
pub mod inventory;
pub mod member;
pub mod ops;
pub mod record;
pub mod settings;
pub mod targets;

pub use demand::PoolDemand;
pub use fit::{PoolRequest, WhyCold};
pub use member::MemberName;
pub use record::ClaimRecord;
pub use settings::{OwnerData, POOL_INNER_NETWORK, POOL_NETWORK, PoolRefill, PoolSettings};
pub use targets::PoolTargets;
