//! `cubbi -r NAME mcp ...`: the caller's MCP servers on a service (`/v1/mcp`). What comes
//! back is checked like any answer of a server: names are MCP names, kinds are known, lists
//! are bounded; the values of headers never travel down at all.

use reqwest::Method;

use super::client::RemoteBackend;
use crate::api::ApiError;
use crate::mcp::{McpServer, McpSummary};

/// The most servers, header names or words an answer may carry.
const MAX_ITEMS: usize = 64;

fn checked(summary: McpSummary) -> Result<McpSummary, ApiError> {
    crate::mcp::check_name(&summary.name)
        .map_err(|err| ApiError::invalid(format!("the service answered a bad server: {err}")))?;
    if !matches!(summary.kind.as_str(), "remote" | "stdio") {
        return Err(ApiError::invalid(
            "the service answered a server of an unknown type".to_string(),
        ));
    }
    if [&summary.headers, &summary.command, &summary.env]
        .iter()
        .any(|list| list.len() > MAX_ITEMS)
    {
        return Err(ApiError::invalid(
            "the service answered a server with too many headers or words".to_string(),
        ));
    }
    Ok(summary)
}

fn path(name: &str) -> Result<String, ApiError> {
    crate::mcp::check_name(name).map_err(|err| ApiError::invalid(err.to_string()))?;
    Ok(format!("/v1/mcp/{name}"))
}

impl RemoteBackend {
    pub async fn mcp_list(&self) -> Result<Vec<McpSummary>, ApiError> {
        let servers: Vec<McpSummary> = self.json(self.request(Method::GET, "/v1/mcp")).await?;
        if servers.len() > MAX_ITEMS {
            return Err(ApiError::invalid(
                "the service answered more MCP servers than a user may keep".to_string(),
            ));
        }
        servers.into_iter().map(checked).collect()
    }

    /// Sends the server once, secrets included (over the remote's TLS); only its summary
    /// comes back.
    pub async fn mcp_add(&self, server: &McpServer) -> Result<McpSummary, ApiError> {
        checked(
            self.json(self.request(Method::POST, "/v1/mcp").json(server))
                .await?,
        )
    }

    pub async fn mcp_show(&self, name: &str) -> Result<McpSummary, ApiError> {
        checked(self.json(self.request(Method::GET, &path(name)?)).await?)
    }

    pub async fn mcp_remove(&self, name: &str) -> Result<McpSummary, ApiError> {
        checked(
            self.json(self.request(Method::DELETE, &path(name)?))
                .await?,
        )
    }
}
