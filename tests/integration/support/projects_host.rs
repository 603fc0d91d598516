//! For service tests whose session side is not under test: a `SessionHost` whose sessions go
//! to an address nobody listens on while its project store is the real one, and a log
//! subscriber writing into a buffer the test searches (for tokens that must not be there).

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cubbi::api::ApiError;
use cubbi::api::wire::ImageInfo;
use cubbi::projects::ProjectStore;
use cubbi::remote::client::RemoteBackend;
use cubbi::service::projects::ServiceProjects;
use cubbi::service::router::SessionHost;
use cubbi::service::store::Caller;

pub struct ProjectsHost {
    pub projects: ServiceProjects,
}

#[async_trait]
impl SessionHost for ProjectsHost {
    type Sessions = RemoteBackend;

    fn sessions_of(&self, _caller: &Caller) -> RemoteBackend {
        RemoteBackend::new(
            "nowhere",
            "http://127.0.0.1:9",
            String::new(),
            String::new(),
            None,
        )
        .expect("a client for a fixed URL")
    }

    async fn changed(&self, _id: &str) {}

    async fn images(&self) -> Result<Vec<ImageInfo>, ApiError> {
        Ok(Vec::new())
    }

    fn projects_of(&self, caller: &Caller) -> Result<ProjectStore, ApiError> {
        Ok(self.projects.of_user(&caller.user))
    }
}

/// A subscriber logging everything, without colours, into `buffer`.
pub fn subscriber_into(buffer: &Arc<Mutex<Vec<u8>>>) -> impl tracing::Subscriber + Send + Sync {
    let writer = Arc::clone(buffer);
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogWriter(Arc::clone(&writer)))
        .finish()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
