//! Booting a reserved session: join its networks, copy its files in, start it and wait until
//! sshd accepts the user's key; then mark it ready.

use super::*;

/// How long a create waits for the egress resolver to hold a restricted session (it looks on
/// every start event and every second besides).
const EGRESS_HELD_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

impl LocalBackend {
    /// Steps 4-8 of a create, after the reservation: anything failing here is undone by the
    /// caller through the reservation.
    pub(super) async fn boot(
        &self,
        reservation: &mut Reservation,
        spec: &SessionSpec,
        plan: &Plan,
        host_key: &PrivateKey,
        progress: &dyn Progress,
    ) -> Result<(), BootError> {
        let id = reservation.id.clone();
        let id = id.as_str();
        let session_labels = &reservation.labels.clone();
        progress.step(CreateStep::CopyingFiles);
        for network in plan.networks.iter().skip(1) {
            self.docker
                .connect_network(network, id)
                .await
                .map_err(|err| BootError::Step {
                    step: CreateStep::CreatingContainer,
                    reason: format!("joining {network}: {err}"),
                })?;
        }
        let host_private = keys::private_openssh(host_key)
            .map_err(|e| BootError::at(CreateStep::PreparingKeys)(e.to_string()))?;
        let host_public = session_labels.host_key.clone();
        for archive in self.session_archives(spec, plan, Some((&host_private, &host_public)))? {
            self.docker
                .upload_archive(id, archive)
                .await
                .map_err(|e| BootError::at(CreateStep::CopyingFiles)(e.to_string()))?;
        }

        progress.step(CreateStep::Starting);
        if let Err(err) = self.docker.start_container(id).await {
            // Our container failed to start, so it holds no port: if the port cannot be bound
            // now, something outside the lock took it.
            let address = std::net::SocketAddr::new(spec.ssh_bind, session_labels.ssh_port);
            if !ports::can_bind(address) {
                return Err(BootError::PortTaken(session_labels.ssh_port));
            }
            let reason = err.to_string();
            if reason.contains("programming external connectivity") {
                return Err(BootError::Publishing {
                    port: session_labels.ssh_port,
                    reason,
                });
            }
            return Err(BootError::at(CreateStep::Starting)(reason));
        }

        progress.step(CreateStep::WaitingForSsh);
        let target = SshTarget {
            address: format!(
                "{}:{}",
                session_labels.connect_host(),
                session_labels.ssh_port
            ),
            user: labels::AGENT_USER.to_string(),
            client_key: self.options.client_key.clone(),
            host_key: host_key.public_key().clone(),
        };
        // A container restarting under its restart policy is not booting: it died.
        let ready = self.wait_for_sshd(&target, id, 0).await;
        if let Err(err) = ready {
            return Err(BootError::Step {
                step: CreateStep::WaitingForSsh,
                reason: self.explain_boot_failure(id, err.to_string()).await,
            });
        }

        if plan
            .egress
            .as_ref()
            .is_some_and(|policy| policy.mode() != crate::egress::EgressMode::Open)
        {
            self.wait_until_egress_held(id).await?;
        }

        if let Some(files) = &self.options.ssh_files {
            progress.step(CreateStep::WritingSshConfig);
            let endpoint = session_labels
                .clone()
                .into_session(id.to_string(), SessionState::Ready)
                .ssh;
            // Set first: a write that fails half-way is undone too.
            reservation.ssh_files_written = true;
            files
                .write_session(&plan.name, &endpoint)
                .map_err(|e| BootError::at(CreateStep::WritingSshConfig)(e.to_string()))?;
        }
        Ok(())
    }

    /// The tar archives a session's files travel in (env, init.env, authorized keys, project
    /// credential, MCP configs, and the host key when `host_key` gives one), shared by a cold
    /// boot (before `start`) and a pool claim (into the running member).
    pub(super) fn session_archives(
        &self,
        spec: &SessionSpec,
        plan: &Plan,
        host_key: Option<(&str, &str)>,
    ) -> Result<Vec<Vec<u8>>, BootError> {
        let metadata = plan.image.metadata.clone();
        let mut env = BTreeMap::new();
        for declaration in metadata.iter().flat_map(|m| m.environment.iter()) {
            if let Some(default) = &declaration.default {
                env.insert(declaration.name.clone(), default.clone());
            }
        }
        // Telemetry first, so the session's own env may override any of it.
        if let Some(langfuse) = &self.options.langfuse {
            env.extend(langfuse.session_env(
                &self.options.owner,
                &plan.name,
                &plan.image.reference,
            ));
        }
        env.extend(spec.env.clone());
        env.extend(crate::mcp::tool_config::session_env(&spec.mcp));
        let mut init = BTreeMap::new();
        let mut persistent = metadata
            .as_ref()
            .map(|m| m.persistent_configs.clone())
            .unwrap_or_default();
        let no_credentials = project::CredentialFiles::default();
        let mut credentials = &no_credentials;
        if let Some((checkout, files)) = &plan.project {
            credentials = files;
            init.insert("CUBBI_PROJECT_URL".to_string(), checkout.url.clone());
            if let Some(branch) = &checkout.branch {
                init.insert("CUBBI_PROJECT_BRANCH".to_string(), branch.clone());
            }
            // A registered project's init.sh was vouched for when it was registered; an
            // ad-hoc URL's is anyone's code, run only when asked.
            if checkout.registered || spec.run_init {
                init.insert("CUBBI_PROJECT_RUN_INIT".to_string(), "1".to_string());
            }
            if checkout.registered {
                init.insert("CUBBI_PROJECT_REGISTERED".to_string(), "1".to_string());
            }
            // What the agent sees: the URL without any secret, and where its configs persist.
            let image_name = metadata.as_ref().map_or_else(
                || {
                    naming::sanitize_hostname(&plan.image.reference)
                        .unwrap_or_else(|| "image".into())
                },
                |m| m.name.clone(),
            );
            env.insert(
                "CUBBI_PROJECT_URL".to_string(),
                project::public_url(&checkout.url),
            );
            env.insert("CUBBI_PROJECT_TYPE".to_string(), "git".to_string());
            env.insert(
                "CUBBI_CONFIG_DIR".to_string(),
                CONFIG_VOLUME_PATH.to_string(),
            );
            env.insert(
                "CUBBI_IMAGE_CONFIG_DIR".to_string(),
                format!("{CONFIG_VOLUME_PATH}/{image_name}"),
            );
            persistent = project::retarget(&persistent, &image_name);
        }
        init.insert("CUBBI_SESSION_NAME".to_string(), plan.name.clone());
        let own = keys::public_openssh(self.options.client_key.public_key())
            .map_err(|e| BootError::at(CreateStep::PreparingKeys)(e.to_string()))?;
        let authorized = std::iter::once(own)
            .chain(plan.authorized_keys.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n");
        let archive = upload::archive(&upload::SessionFiles {
            host_key,
            authorized_key: &authorized,
            env: &env,
            init: &init,
            persistent_configs: &persistent,
            project_credentials: credentials,
            inner_docker_bridge: None,
        })
        .map_err(|e| BootError::at(CreateStep::CopyingFiles)(e.to_string()))?;
        let mut archives = vec![archive];
        // Each tool's MCP configuration (header secrets included) as files, like the env.
        if let Some(mcp) = crate::mcp::tool_config::archive(&spec.mcp)
            .map_err(|e| BootError::at(CreateStep::CopyingFiles)(e.to_string()))?
        {
            archives.push(mcp);
        }
        Ok(archives)
    }

    /// A restricted session is handed over only once the egress resolver holds it to its
    /// policy: between its start and the resolver's next look it would be open. Where no
    /// resolver runs, nothing can hold it (the CLI warns).
    async fn wait_until_egress_held(&self, id: &str) -> Result<(), BootError> {
        let store = &self.options.egress_store;
        if !store.resolver_running() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + EGRESS_HELD_WITHIN;
        while !store.is_held(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(BootError::at(CreateStep::Starting)(format!(
                    "the egress resolver did not hold the session to its policy within {} s; \
                     see `journalctl -u cubbi-egress`",
                    EGRESS_HELD_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Records in Docker itself that the session became ready, by renaming its container from
    /// `cubbi-NAME.booting` to `cubbi-NAME`: `list` then reads readiness from one `docker ps`
    /// instead of probing every session, and a create that died half-way stays recognisable.
    pub(super) async fn mark_ready(&self, id: &str, name: &str) -> Result<(), BootError> {
        self.docker
            .rename_container(id, &labels::container_name(name))
            .await
            .map_err(|err| BootError::Step {
                step: CreateStep::WaitingForSsh,
                reason: format!(
                    "session {name} became ready but its container could not take the name {}: {err}",
                    labels::container_name(name)
                ),
            })
    }

    /// Says why a session never answered when its container died while booting.
    pub(super) async fn explain_boot_failure(&self, id: &str, reason: String) -> String {
        let Ok(container) = self.docker.inspect_container(id).await else {
            return reason;
        };
        let restarts = container.restart_count.unwrap_or(0);
        let state = container.state.unwrap_or_default();
        if restarts == 0 && state.running == Some(true) {
            return reason;
        }
        format!(
            "the container exited (code {}) before sshd was up{}; `cubbi doctor` checks the host \
             limits systemd needs",
            state.exit_code.unwrap_or(-1),
            if restarts > 0 {
                format!(" and was restarted {restarts} times")
            } else {
                String::new()
            }
        )
    }

    /// The last lines of a container's console, for failure messages.
    pub(super) async fn console_tail(&self, id: &str, lines: u64) -> Vec<String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let chunks: Vec<_> = self.docker.logs(id, options).take(500).collect().await;
        chunks
            .into_iter()
            .filter_map(Result::ok)
            .map(|chunk| chunk.to_string())
            .collect::<String>()
            .lines()
            .map(|line| line.trim_end().to_string())
            .filter(|line| !line.is_empty())
            .collect()
    }
}
