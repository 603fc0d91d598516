//! The user's MCP servers: one TOML file beside the config (`mcp.toml`), 0600 since header
//! values are secrets, written whole through a temp file and a rename so a refused or
//! interrupted change leaves the old file as it was.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{McpError, McpServer};

/// The file is small; a bigger one is not ours.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    servers: Vec<McpServer>,
}

/// The registry at one path.
pub struct McpRegistry {
    path: PathBuf,
}

impl McpRegistry {
    /// `$XDG_CONFIG_HOME/cubbi/mcp.toml`.
    pub fn open_default() -> Result<Self, McpError> {
        let dir = crate::config::paths::config_dir().map_err(|err| McpError::Registry {
            path: "mcp.toml".into(),
            reason: err.to_string(),
        })?;
        Ok(Self::at(dir.join("mcp.toml")))
    }

    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: impl ToString) -> McpError {
        McpError::Registry {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Every registered server, each checked again (the file may have been edited by hand).
    pub fn list(&self) -> Result<Vec<McpServer>, McpError> {
        let text = match std::fs::metadata(&self.path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(self.error(err)),
            Ok(meta) if meta.len() > MAX_FILE => return Err(self.error("larger than 1 MiB")),
            Ok(_) => std::fs::read_to_string(&self.path).map_err(|e| self.error(e))?,
        };
        let file: RegistryFile = toml::from_str(&text).map_err(|e| self.error(e))?;
        for server in &file.servers {
            server.check().map_err(|e| self.error(e))?;
        }
        Ok(file.servers)
    }

    pub fn get(&self, name: &str) -> Result<McpServer, McpError> {
        super::check_name(name)?;
        self.list()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| McpError::NotFound(name.to_string()))
    }

    pub fn add(&self, server: McpServer) -> Result<(), McpError> {
        server.check()?;
        let mut servers = self.list()?;
        if servers.iter().any(|s| s.name == server.name) {
            return Err(McpError::Exists(server.name));
        }
        servers.push(server);
        self.write(servers)
    }

    pub fn remove(&self, name: &str) -> Result<McpServer, McpError> {
        let found = self.get(name)?;
        let servers = self
            .list()?
            .into_iter()
            .filter(|s| s.name != name)
            .collect();
        self.write(servers)?;
        Ok(found)
    }

    fn write(&self, servers: Vec<McpServer>) -> Result<(), McpError> {
        let text = toml::to_string(&RegistryFile { servers }).map_err(|e| self.error(e))?;
        crate::atomic_file::write(&self.path, text.as_bytes(), 0o600, 0o700)
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn add_list_remove_round_trip_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let registry = McpRegistry::at(dir.path().join("cubbi/mcp.toml"));
        assert!(registry.list().unwrap().is_empty());
        let server =
            McpServer::new("docs", "http://10.0.0.1:8000/mcp", &["X-Key=secret".into()]).unwrap();
        registry.add(server.clone()).unwrap();
        let mode = std::fs::metadata(registry.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(registry.get("docs").unwrap(), server);
        assert_eq!(
            registry.add(server.clone()),
            Err(McpError::Exists("docs".into()))
        );
        assert_eq!(registry.remove("docs").unwrap(), server);
        assert_eq!(registry.get("docs"), Err(McpError::NotFound("docs".into())));
    }

    #[test]
    fn a_hand_edited_bad_entry_is_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.toml");
        std::fs::write(&path, "[[servers]]\nname = \"x\"\nurl = \"file:///etc\"\n").unwrap();
        let err = McpRegistry::at(&path).list().unwrap_err();
        assert!(err.to_string().contains("http"), "{err}");
    }
}
