//! `cubbi serve` as a system service, installed by `cubbi setup --service`: the names it runs
//! under, its unit ([`unit`]), its default config ([`config`]) and the health probe setup and
//! doctor use ([`health`]).

pub mod config;
pub mod health;
pub mod install;
pub mod steps;
pub mod unit;

/// The systemd unit name of the service.
pub const SERVE_UNIT_NAME: &str = "cubbi-serve.service";

/// Where setup installs the unit (the service exists only beside the system engine).
pub const SERVE_UNIT_FILE: &str = "/etc/systemd/system/cubbi-serve.service";

/// The system user (and its own group) the service runs as; it joins [`super::SOCKET_GROUP`]
/// for the engine's socket and the port lock.
pub const SERVE_USER: &str = "cubbi-serve";

/// The service's config, which setup writes once and never overwrites.
pub const SERVICE_CONFIG: &str = "/etc/cubbi/service.toml";

/// The service's state (its SQLite db); the unit's StateDirectory makes it.
pub const SERVE_STATE_DIR: &str = "/var/lib/cubbi";
