//! The owner's agent data volume as a tar (`cubbi data export|import`). The volume is reached
//! through a container that is created and never started (Docker copies into and out of the
//! volumes of a created container), so no session has to run and nothing runs in it. Both
//! ways go through [`agent_data::rewrite`]: what enters or leaves is checked entry by entry.

use super::*;
use crate::api::DataSummary;
use crate::local::agent_data::{self, ArchiveLimits};

/// The image of the container the volume is reached through; it is never started.
const IO_IMAGE: &str = "cubbi-base";

impl LocalBackend {
    pub(super) async fn export_agent_data(
        &self,
        image: Option<&str>,
    ) -> Result<(Vec<u8>, DataSummary), ApiError> {
        if let Some(image) = image
            && !crate::images::metadata::is_image_name(image)
        {
            return Err(ApiError::invalid(format!("`{image}` is not an image name")));
        }
        let limits = ArchiveLimits::default();
        let path = match image {
            Some(image) => format!("{DATA_VOLUME_PATH}/{image}"),
            None => DATA_VOLUME_PATH.to_string(),
        };
        let raw = self
            .with_data_container(|id| {
                let path = path.clone();
                async move {
                    let archive = self
                        .docker
                        .download_archive(&id, &path, 2 * limits.max_bytes as usize)
                        .await;
                    match archive {
                        Ok(Some(archive)) => Ok(archive),
                        Ok(None) => Err(ApiError::invalid(format!(
                            "the agent data is over {} bytes; export one image at a time \
                             (--image NAME)",
                            limits.max_bytes
                        ))),
                        Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 404,
                            ..
                        }) => Err(ApiError::NotFound(format!(
                            "there is no agent data for image `{}` yet",
                            image.unwrap_or("?")
                        ))),
                        Err(err) => Err(ApiError::unavailable(format!(
                            "cannot read the data volume: {err}"
                        ))),
                    }
                }
            })
            .await?;
        // Docker names entries after the folder asked for: `agent-data/...` for the whole
        // volume (dropped), `IMAGE/...` for one image's folder (kept).
        let strip = usize::from(image.is_none());
        agent_data::rewrite(raw.as_slice(), strip, Path::new(""), limits).map_err(|err| {
            ApiError::invalid(format!(
                "the data volume holds what an export refuses to carry: {err}"
            ))
        })
    }

    pub(super) async fn import_agent_data(
        &self,
        archive: Vec<u8>,
    ) -> Result<DataSummary, ApiError> {
        let prefix = Path::new(DATA_VOLUME_PATH.trim_start_matches('/'));
        let (checked, summary) =
            agent_data::rewrite(archive.as_slice(), 0, prefix, ArchiveLimits::default()).map_err(
                |err| ApiError::invalid(format!("refused the archive, nothing was written: {err}")),
            )?;
        self.with_data_container(|id| async move {
            self.docker
                .upload_archive(&id, checked)
                .await
                .map_err(|err| {
                    ApiError::unavailable(format!("cannot write the data volume: {err}"))
                })
        })
        .await?;
        Ok(summary)
    }

    /// Runs `work` with a created (never started) container that mounts the owner's data
    /// volume, and removes the container whatever `work` did.
    async fn with_data_container<T, F, Fut>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        if self.docker.inspect_image(IO_IMAGE).await.is_err() {
            return Err(ApiError::unavailable(format!(
                "the data volume is reached through the {IO_IMAGE} image, which is not built: \
                 run `cubbi image build base`"
            )));
        }
        let volume = self.ensure_data_volume().await?;
        let mut labels = self.options.extra_labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::OWNER.into(), self.options.owner.clone());
        let body = ContainerCreateBody {
            image: Some(IO_IMAGE.to_string()),
            cmd: Some(vec!["true".to_string()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{volume}:{DATA_VOLUME_PATH}")]),
                network_mode: Some("none".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("cubbi-data-io-{:012x}", rand::random::<u64>() >> 16);
        let created = self
            .docker
            .create_container(&name, body)
            .await
            .map_err(Self::docker_error("cannot reach the data volume"))?;
        let outcome = work(created.id.clone()).await;
        let removed = self.remove(&created.id).await;
        let value = outcome?;
        removed?;
        Ok(value)
    }
}
