//! The service's own state (placeholder until the SQLite store lands on this branch).

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(String),
}

pub trait Store: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> Result<Option<Caller>, StoreError>;
}
