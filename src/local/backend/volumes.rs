//! The volumes a session's data lives in: the owner's data volume, or a project's config
//! volume, each labelled with whose it is and never shared.

use super::*;

impl LocalBackend {
    /// The owner's data volume: `cubbi-data-NAME-HASH` (one per exact owner), or the volume of
    /// the old scheme (`cubbi-data-NAME`) when it exists and is labelled with exactly this
    /// owner, so data made before the change stays. A volume of that name owned by someone
    /// else is refused, never shared.
    pub(super) async fn ensure_data_volume(&self) -> Result<String, ApiError> {
        let owner = &self.options.owner;
        let legacy = naming::legacy_data_volume_name(owner);
        if let Ok(existing) = self.docker.inspect_volume(&legacy).await
            && existing.labels.get(labels::OWNER) == Some(owner)
        {
            return Ok(legacy);
        }
        let name = naming::data_volume_name(owner);
        let found = self
            .labelled_volume(&name, &[], "cannot create the data volume")
            .await?;
        match found.get(labels::OWNER) {
            Some(found) if found == owner => Ok(name),
            found => Err(ApiError::Conflict(format!(
                "the data volume {name} belongs to {}, not to {owner}; cubbi will not share it. \
                 Remove or rename it (`docker volume rm {name}`) if it is stale",
                found.map_or_else(
                    || "nobody cubbi knows (it has no owner label)".to_string(),
                    |o| format!("`{o}`")
                )
            ))),
        }
    }

    /// The owner's config volume for one project (`naming::config_volume_name`), made on first
    /// use and labelled with both; one labelled for another owner or project is refused.
    pub(super) async fn ensure_config_volume(&self, project_id: &str) -> Result<String, ApiError> {
        let owner = &self.options.owner;
        let name = naming::config_volume_name(owner, project_id);
        let found = self
            .labelled_volume(
                &name,
                &[(labels::PROJECT, project_id)],
                "cannot create the project's config volume",
            )
            .await?;
        let found_owner = found.get(labels::OWNER);
        let found_project = found.get(labels::PROJECT);
        if found_owner == Some(owner) && found_project.map(String::as_str) == Some(project_id) {
            return Ok(name);
        }
        Err(ApiError::Conflict(format!(
            "the config volume {name} is labelled for owner {:?} and project {:?}, not for {owner} \
             and {project_id}; cubbi will not share it. Remove it (`docker volume rm {name}`) if \
             it is stale",
            found_owner, found_project
        )))
    }

    /// Creates the volume `name` labelled managed, with this owner and `extra`, and returns the
    /// labels it has: creating an existing volume returns it as it is, so the caller checks
    /// whose it is before using it.
    pub(super) async fn labelled_volume(
        &self,
        name: &str,
        extra: &[(&str, &str)],
        failure: &'static str,
    ) -> Result<HashMap<String, String>, ApiError> {
        let mut labels = self.options.extra_labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::OWNER.into(), self.options.owner.clone());
        for (key, value) in extra {
            labels.insert(key.to_string(), value.to_string());
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        let volume = self
            .docker
            .create_volume(request)
            .await
            .map_err(Self::docker_error(failure))?;
        Ok(volume.labels)
    }
}
