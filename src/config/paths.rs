//! Where cubbi keeps its files, following the XDG base directory spec.

use std::path::PathBuf;

use super::ConfigError;

/// The per-user cubbi folder: `$XDG_CONFIG_HOME/cubbi`, by default `~/.config/cubbi`.
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    dirs::config_dir()
        .map(|dir| dir.join("cubbi"))
        .ok_or(ConfigError::NoHome)
}

/// The user config file, `config.toml` in [`config_dir`].
pub fn config_file() -> Result<PathBuf, ConfigError> {
    Ok(config_dir()?.join("config.toml"))
}
