//! Agent data on a cubbi service (`cubbi -r NAME data export|import`). What the service sends
//! is checked like any archive before the client writes a byte of it: a service is as hostile
//! as any other input.

use std::path::Path;

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use super::client::{RemoteBackend, read_limited};
use crate::api::{ApiError, DataSummary};
use crate::local::agent_data::{self, ArchiveLimits};

impl RemoteBackend {
    pub(super) async fn export_remote_data(
        &self,
        image: Option<&str>,
    ) -> Result<(Vec<u8>, DataSummary), ApiError> {
        let path = match image {
            Some(image) if crate::images::metadata::is_image_name(image) => {
                format!("/v1/data?image={image}")
            }
            Some(image) => {
                return Err(ApiError::invalid(format!("`{image}` is not an image name")));
            }
            None => "/v1/data".to_string(),
        };
        let limits = ArchiveLimits::default();
        let response = self.send(self.request(Method::GET, &path)).await?;
        let body = read_limited(response, (ArchiveLimits::DEFAULT_MAX_BYTES + (64 << 20)) as usize)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the cubbi service `{}` sent an archive this client refuses (too large or broken off)",
                    self.name()
                ))
            })?;
        agent_data::rewrite(body.as_slice(), 0, Path::new(""), limits).map_err(|err| {
            ApiError::unavailable(format!(
                "the cubbi service `{}` sent an archive this client refuses: {err}",
                self.name()
            ))
        })
    }

    pub(super) async fn import_remote_data(
        &self,
        archive: Vec<u8>,
    ) -> Result<DataSummary, ApiError> {
        // Checked here too, so a hostile archive is refused before it is sent.
        agent_data::rewrite(
            archive.as_slice(),
            0,
            Path::new(""),
            ArchiveLimits::default(),
        )
        .map_err(|err| {
            ApiError::invalid(format!("refused the archive, nothing was sent: {err}"))
        })?;
        self.json(
            self.request(Method::POST, "/v1/data")
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(archive),
        )
        .await
    }
}
