//! Placeholder until the remotes module lands.
#[derive(Debug)]
pub struct Remote {
    pub name: String,
    pub url: String,
    pub token: Option<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no token for {name}; run `cubbi -r {name} auth`")]
    NoToken { name: String },
    #[error("unknown remote {name}")]
    Unknown { name: String },
}
pub fn resolve(config: &crate::config::Config, name: &str) -> Result<Remote, RemoteError> {
    let endpoint = config.remote.endpoints.get(name).ok_or_else(|| RemoteError::Unknown { name: name.into() })?;
    Ok(Remote { name: name.into(), url: endpoint.url.clone(), token: std::env::var("CUBBI_TOKEN").ok() })
}
