//! Finding sessions: by label or name in `docker ps`, by a prefix of id or name, and the ready
//! ones a user can log in to.

use super::*;

impl LocalBackend {
    /// Containers in any state matching every `key` (`label`, `name`) filter in `values`.
    pub(super) async fn containers(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        let filter = HashMap::from([(key.to_string(), values.to_vec())]);
        self.docker
            .list_containers(&filter)
            .await
            .map_err(Self::docker_error("cannot list containers"))
    }

    /// Refuses a name a session of any owner has, or a container Docker knows as
    /// `cubbi-NAME` or `cubbi-NAME.booting` (cubbi's or not).
    pub(super) async fn check_name_free(&self, name: &str) -> Result<(), ApiError> {
        let by_label = self
            .containers(
                "label",
                &[
                    format!("{}={name}", labels::NAME),
                    format!("{}=true", labels::SESSION),
                ],
            )
            .await?;
        if !by_label.is_empty() {
            return Err(ApiError::Conflict(format!(
                "a session named `{name}` exists already; pick another --name or close it first"
            )));
        }
        let wanted = [
            format!("/{}", labels::container_name(name)),
            format!("/{}", labels::booting_container_name(name)),
        ];
        // Docker's name filter is a substring/regex match; compare exactly here.
        let by_name = self
            .containers("name", &[labels::container_name(name)])
            .await?;
        if let Some(taken) = by_name
            .iter()
            .flat_map(|c| c.names.iter().flatten())
            .find(|n| wanted.contains(n))
        {
            return Err(ApiError::Conflict(format!(
                "a container named {} exists already on this endpoint; pick another --name, or \
                 remove that container",
                taken.trim_start_matches('/')
            )));
        }
        Ok(())
    }

    /// Ports held by any cubbi session, in any state and of any owner.
    pub(super) async fn taken_ports(&self) -> Result<BTreeSet<u16>, ApiError> {
        Ok(self
            .containers("label", &[labels::SSH_PORT.to_string()])
            .await?
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(labels::SSH_PORT)?.parse().ok())
            .collect())
    }

    /// One session by exact name or id, else by a unique prefix of either: one `docker ps`,
    /// without the exec `get` spends on the init status (connect, exec, logs and close do not
    /// need it).
    pub(super) async fn find(&self, id_or_name: &str) -> Result<Session, ApiError> {
        if id_or_name.is_empty() {
            return Err(ApiError::invalid("give a session id or name"));
        }
        pick(self.list().await?, id_or_name)
    }

    pub(super) fn ssh_target(&self, session: &Session) -> Result<SshTarget, ApiError> {
        ssh_target(session, &self.options.client_key)
    }

    /// A session one can log in to (ready, or ready with a failed init).
    pub(super) async fn ready(&self, id_or_name: &str) -> Result<Session, ApiError> {
        let session = self.find(id_or_name).await?;
        if !matches!(
            session.state,
            SessionState::Ready | SessionState::InitFailed
        ) {
            return Err(ApiError::Conflict(format!(
                "session {} is {}, not ready; `cubbi session logs {}` shows why",
                session.name, session.state, session.name
            )));
        }
        Ok(session)
    }

    /// Appends a canonical key line to the agent's authorized_keys, once. The key is an
    /// argument of the script, never part of its text.
    pub(super) async fn authorize(&self, id: &str, key: &str) -> Result<(), ApiError> {
        let failed =
            |err: String| ApiError::unavailable(format!("cannot authorize the key: {err}"));
        let captured = session_exec::run_bounded(
            self.docker.as_ref(),
            id,
            vec!["sh", "-c", AUTHORIZE_SCRIPT, "sh", key],
            Some("1000:1000"),
            ExecBounds::AUTHORIZE,
        )
        .await
        .map_err(|err| failed(format!("the session's shell: {err}")))?;
        match captured.exit_code {
            Some(0) => Ok(()),
            other => Err(failed(format!("the session's shell exited with {other:?}"))),
        }
    }

    /// Connects to a ready session over SSH (for `exec`).
    pub async fn ssh(&self, id_or_name: &str) -> Result<(Session, SshSession), ApiError> {
        let session = self.ready(id_or_name).await?;
        let target = self.ssh_target(&session)?;
        let connected = SshSession::connect(&target, Duration::from_secs(10))
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))?;
        Ok((session, connected))
    }
}

/// A session's state from one `docker ps` row: the container name says whether its create
/// saw sshd accept the key (see [`Self::mark_ready`]).
pub(in crate::local) fn session_from(summary: &ContainerSummary) -> Option<Session> {
    let labels = SessionLabels::from_map(summary.labels.as_ref()?)?;
    let booted = summary
        .names
        .iter()
        .flatten()
        .any(|name| name.trim_start_matches('/') == labels::container_name(&labels.name));
    let docker_state = state::docker_state(
        &summary
            .state
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        summary.status.as_deref().unwrap_or_default(),
    );
    let session_state = state::session_state(docker_state, booted);
    let mut session = labels.into_session(summary.id.clone()?, session_state);
    session.pool = summary
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(pool::member::POOL));
    Some(session)
}

impl LocalBackend {
    /// Sessions made from pool members: their container carries the member's labels, and the
    /// claim record (a volume) says whose session it is. One `docker ps` of the pool's
    /// containers, and one volume list only when some container is not a member.
    pub(super) async fn claimed_sessions(&self) -> Result<Vec<Session>, ApiError> {
        let containers = self
            .containers("label", &[pool::member::POOL.to_string()])
            .await?;
        let any_claimed = containers
            .iter()
            .any(|c| pool::MemberName::of_container(c).is_none());
        if !any_claimed {
            return Ok(Vec::new());
        }
        let records = self.claim_records().await?;
        Ok(pool::record::claimed_rows(&containers, &records)
            .iter()
            .filter_map(session_from)
            .collect())
    }
}

impl LocalBackend {
    /// Every claim record on the endpoint (one volume list).
    pub(super) async fn claim_records(&self) -> Result<Vec<pool::ClaimRecord>, ApiError> {
        Ok(self
            .docker
            .list_volumes(pool::record::CLAIM_OF)
            .await
            .map_err(Self::docker_error("cannot list claim records"))?
            .iter()
            .filter_map(|volume| pool::ClaimRecord::from_labels(&volume.labels))
            .collect())
    }
}

/// Appends the key given as `$1` to the agent's authorized_keys, once; the key is never part
/// of the script's text.
pub const AUTHORIZE_SCRIPT: &str = "f=/home/agent/.ssh/authorized_keys; grep -qxF -- \"$1\" \"$f\" \
                                    2>/dev/null || printf '%s\\n' \"$1\" >> \"$f\"";

/// The one session `id_or_name` names among `sessions`: an exact name or id first, else a
/// unique prefix of either.
pub fn pick(sessions: Vec<Session>, id_or_name: &str) -> Result<Session, ApiError> {
    let exact: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.name == id_or_name || s.id == id_or_name)
        .collect();
    let matches: Vec<&Session> = if exact.is_empty() {
        sessions
            .iter()
            .filter(|s| s.id.starts_with(id_or_name) || s.name.starts_with(id_or_name))
            .collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [] => Err(ApiError::NotFound(id_or_name.to_string())),
        [one] => Ok((*one).clone()),
        many => Err(ApiError::Ambiguous {
            prefix: id_or_name.to_string(),
            candidates: many
                .iter()
                .map(|s| format!("{} ({})", &s.id[..s.id.len().min(12)], s.name))
                .collect(),
        }),
    }
}

/// Where and how to reach `session` over SSH, its host key pinned.
pub fn ssh_target(session: &Session, client_key: &Arc<PrivateKey>) -> Result<SshTarget, ApiError> {
    let host_key = keys::parse_public(&session.ssh.host_key).map_err(|err| {
        ApiError::unavailable(format!(
            "the session's pinned host key is unreadable: {err}"
        ))
    })?;
    Ok(SshTarget {
        address: format!("{}:{}", session.ssh.host, session.ssh.port),
        user: session.ssh.user.clone(),
        client_key: Arc::clone(client_key),
        host_key,
    })
}

/// Whether the canonical key line `key` is the service's (or CLI's) own, which every session
/// authorizes from its creation.
pub fn is_own_key(client_key: &PrivateKey, key: &str) -> Result<bool, ApiError> {
    let own = keys::canonical_public(
        &keys::public_openssh(client_key.public_key())
            .map_err(|err| ApiError::unavailable(err.to_string()))?,
    )
    .map_err(|err| ApiError::unavailable(err.to_string()))?;
    Ok(key == own)
}
