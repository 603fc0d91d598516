//! What a session reports about itself (its status files) and its state when Docker's health
//! check and those files disagree.

use super::*;

impl LocalBackend {
    /// What the container reported back (runtime/CONTRACT.md): cubbi-init's and the project
    /// clone's status lines, read with one exec; `None` for a file not written yet.
    pub(super) async fn reported_status(&self, id: &str) -> (Option<String>, Option<String>) {
        let script = "for f in init-status project-status; do \
                      s=$(head -n 1 \"/var/lib/cubbi/$f\" 2>/dev/null); printf '%s=%s\\n' \"$f\" \"$s\"; \
                      done";
        // The session's root controls what this runs: bounded, and unknown when it misbehaves.
        match session_exec::run_bounded(
            self.docker.as_ref(),
            id,
            vec!["sh", "-c", script],
            None,
            ExecBounds::STATUS,
        )
        .await
        {
            Ok(captured) => parse_reported_status(&captured.stdout),
            Err(err) => {
                tracing::debug!(session = id, "reading the session's status: {err}");
                (None, None)
            }
        }
    }

    /// A session Docker calls unhealthy whose status files report no failure: the check's
    /// exec timed out (a host busy booting many sessions), so its state is what Docker's state
    /// and the container's name say, as if it had no health check.
    pub(super) async fn state_despite_health(&self, id: &str, name: &str) -> SessionState {
        let Ok(container) = self.docker.inspect_container(id).await else {
            return SessionState::Exited;
        };
        let running = container
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        let booted = container.name.as_deref().map(|n| n.trim_start_matches('/'))
            == Some(labels::container_name(name).as_str());
        match (running, booted) {
            (true, true) => SessionState::Ready,
            (true, false) => SessionState::Starting,
            (false, _) => SessionState::Exited,
        }
    }
}

/// Whether cubbi-init or the project clone wrote a `failed` status.
pub(super) fn reports_failure(init: &Option<String>, project: &Option<String>) -> bool {
    [init, project]
        .iter()
        .any(|status| status.as_deref().is_some_and(|s| s.starts_with("failed")))
}

/// `init-status=LINE` and `project-status=LINE`, as [`LocalBackend::reported_status`] prints
/// them; an empty line is a file not written yet.
pub(super) fn parse_reported_status(text: &str) -> (Option<String>, Option<String>) {
    let mut init = None;
    let mut project = None;
    for line in text.lines() {
        let Some((file, status)) = line.split_once('=') else {
            continue;
        };
        let status = status.trim();
        let status = (!status.is_empty()).then(|| status.to_string());
        match file {
            "init-status" => init = status,
            "project-status" => project = status,
            _ => {}
        }
    }
    (init, project)
}

#[cfg(test)]
mod tests {
    use super::parse_reported_status;

    #[test]
    fn reported_status_lines() {
        assert_eq!(
            parse_reported_status(
                "init-status=done\nproject-status=failed: git clone (exit 128): fatal: x=y\n"
            ),
            (
                Some("done".into()),
                Some("failed: git clone (exit 128): fatal: x=y".into())
            )
        );
        assert_eq!(
            parse_reported_status("init-status=done\nproject-status=\n"),
            (Some("done".into()), None)
        );
        assert_eq!(parse_reported_status(""), (None, None));
    }
}
