//! The sessions of an endpoint held in memory, for a service that answers `list` many times a
//! second: filled from one `docker ps` at start and kept current from Docker's event stream,
//! re-read whole whenever that stream breaks (a daemon restart). Docker stays the record; the
//! index is a cache of it that says when it cannot be trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::StreamExt;

use super::backend::session_from;
use super::docker_api::DockerApi;
use super::labels;
use super::pool::member::{MemberName, POOL};
use super::pool::record::{CLAIM_OF, ClaimRecord, claimed_rows};
use crate::api::{ApiError, Session};

/// How long the watcher waits before it reconnects to a daemon that went away.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

pub struct SessionIndex {
    docker: Docker,
    sessions: RwLock<HashMap<String, Session>>,
    /// False while the event stream is broken: readers then ask Docker themselves.
    live: AtomicBool,
}

impl SessionIndex {
    /// Reads every session once and starts following Docker's events.
    pub async fn start(docker: Docker) -> Result<Arc<Self>, ApiError> {
        let index = Arc::new(Self {
            docker,
            sessions: RwLock::new(HashMap::new()),
            live: AtomicBool::new(false),
        });
        let since = unix_now();
        index.resync().await?;
        tokio::spawn(Arc::clone(&index).follow(since));
        Ok(index)
    }

    /// Every session of every owner, or `None` while the index is not current.
    pub fn sessions(&self) -> Option<Vec<Session>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let sessions = self.sessions.read().ok()?;
        Some(sessions.values().cloned().collect())
    }

    /// Reads one container again (after a create or close, so the answer that follows it is
    /// already current without waiting for the event).
    pub async fn refresh(&self, id: &str) {
        match self.read_one(id).await {
            Ok(session) => {
                if let Ok(mut sessions) = self.sessions.write() {
                    match session {
                        Some(session) => {
                            sessions.insert(session.id.clone(), session);
                        }
                        None => {
                            sessions.retain(|known, _| !known.starts_with(id));
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!("cannot re-read session {id}: {err}; asking Docker until resynced");
                self.live.store(false, Ordering::Release);
            }
        }
    }

    /// One container as a session: a cold one by its labels, a claimed pool member by its
    /// labels and its claim record; `None` for anything else (a member, a stranger, gone).
    async fn read_one(&self, id: &str) -> Result<Option<Session>, bollard::errors::Error> {
        let filters = HashMap::from([("id".to_string(), vec![id.to_string()])]);
        let found = DockerApi::list_containers(&self.docker, &filters).await?;
        if let Some(session) = found.iter().find_map(session_from) {
            return Ok(Some(session));
        }
        // A member's events (a fill's create, start, renames) are no session's: no record is
        // read for them.
        let pooled: Vec<_> = found
            .into_iter()
            .filter(|c| c.labels.as_ref().is_some_and(|l| l.contains_key(POOL)))
            .filter(|c| MemberName::of_container(c).is_none())
            .collect();
        if pooled.is_empty() {
            return Ok(None);
        }
        Ok(claimed_rows(&pooled, &self.claim_records().await?)
            .iter()
            .find_map(session_from))
    }

    async fn claim_records(&self) -> Result<Vec<ClaimRecord>, bollard::errors::Error> {
        Ok(DockerApi::list_volumes(&self.docker, CLAIM_OF)
            .await?
            .iter()
            .filter_map(|volume| ClaimRecord::from_labels(&volume.labels))
            .collect())
    }

    async fn resync(&self) -> Result<(), ApiError> {
        let filters = HashMap::from([("label", vec![format!("{}=true", labels::SESSION)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| ApiError::unavailable(format!("cannot list sessions: {err}")))?;
        let unavailable = |err: bollard::errors::Error| {
            ApiError::unavailable(format!("cannot list sessions: {err}"))
        };
        let pool_filter = HashMap::from([("label".to_string(), vec![POOL.to_string()])]);
        let pooled = DockerApi::list_containers(&self.docker, &pool_filter)
            .await
            .map_err(unavailable)?;
        let claimed = claimed_rows(&pooled, &self.claim_records().await.map_err(unavailable)?);
        let fresh: HashMap<String, Session> = found
            .iter()
            .chain(claimed.iter())
            .filter_map(session_from)
            .map(|session| (session.id.clone(), session))
            .collect();
        if let Ok(mut sessions) = self.sessions.write() {
            *sessions = fresh;
        }
        self.live.store(true, Ordering::Release);
        Ok(())
    }

    /// Follows container events from `since` (so nothing between the first read and the
    /// subscription is missed), reconnecting and re-reading everything when the stream ends.
    async fn follow(self: Arc<Self>, mut since: i64) {
        loop {
            // Sessions and pool members (a claimed member is a session without the session
            // label): Docker ANDs label filters, so the choice is made here.
            let filters = HashMap::from([("type", vec!["container".to_string()])]);
            let options = EventsOptionsBuilder::new()
                .since(&since.to_string())
                .filters(&filters)
                .build();
            let mut events = self.docker.events(Some(options));
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        // Every health check is an exec (three events each few seconds per
                        // session) that changes nothing `docker ps` shows; its verdict comes
                        // as its own `health_status` event.
                        if event
                            .action
                            .as_deref()
                            .is_some_and(|a| a.starts_with("exec_"))
                        {
                            continue;
                        }
                        let ours = event
                            .actor
                            .as_ref()
                            .and_then(|actor| actor.attributes.as_ref())
                            .is_some_and(|attributes| {
                                attributes.contains_key(labels::SESSION)
                                    || attributes.contains_key(POOL)
                            });
                        if !ours {
                            continue;
                        }
                        if let Some(id) = event.actor.and_then(|actor| actor.id) {
                            self.refresh(&id).await;
                        }
                    }
                    Err(err) => {
                        tracing::warn!("Docker's event stream broke: {err}");
                        break;
                    }
                }
            }
            self.live.store(false, Ordering::Release);
            loop {
                tokio::time::sleep(RECONNECT_DELAY).await;
                since = unix_now();
                match self.resync().await {
                    Ok(()) => {
                        tracing::info!("following Docker's events again");
                        break;
                    }
                    Err(err) => tracing::debug!("still cannot reach Docker: {err}"),
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
