//! WebSockets into sessions: a terminal (`/terminal`, a PTY through the session's sshd) and
//! raw SSH (`/ssh`, bytes to the session's sshd, for `cubbi ssh-proxy`), and the log's follow
//! stream (`/logs/ws`, for the browser).
//!
//! Who may upgrade is settled before the upgrade: a single-use ticket in the query (see
//! [`super::tickets`]), an `Authorization: Bearer` header, or the browser login's cookie from
//! a page of this service's own origin (a page of another site can make the browser send the
//! cookie on a WebSocket, but not forge its `Origin`). Then the session must be the caller's:
//! another user's answers 404, without an upgrade.

mod logs;
mod pty;
mod routes;
mod tty;
mod tunnel;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

pub(super) use logs::{__path_logs_ws, logs_ws};
pub(super) use routes::{
    __path_issue_ticket, __path_ssh, __path_terminal, TicketAnswer, TicketRequest, issue_ticket,
    ssh, terminal,
};

use super::auth::{ACCESS_COOKIE, bearer, cookie};
use super::http_error::HttpError;
use super::router::{AppState, SessionHost};
use super::store::Caller;
use super::tickets::{Purpose, Tickets};
use crate::api::{ApiError, ErrorCode, Session};

/// Terminals (live PTYs) one user may have at once.
const TERMINALS_PER_USER: usize = 4;
/// WebSocket connections (terminals and tunnels) one user may hold open at once.
const SOCKETS_PER_USER: usize = 16;
/// A connection that sends nothing this long is closed (the page's keepalive and OpenSSH's
/// traffic keep a live one open).
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Largest WebSocket message taken from a client.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the WebSockets share: the tickets, the live terminals and per-user counts.
#[derive(Default)]
pub struct WsState {
    pub(super) tickets: Tickets,
    terminals: pty::Terminals,
    sockets: Counts,
}

/// Per-user counts of open things; a [`Slot`] gives its one back when dropped.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, usize>>>);

struct Slot {
    counts: Counts,
    user: String,
}

impl Counts {
    fn take(&self, user: &str, limit: usize, what: &str) -> Result<Slot, HttpError> {
        let mut counts = self
            .0
            .lock()
            .map_err(|_| HttpError::new(ErrorCode::Internal, "per-user bookkeeping failed"))?;
        let count = counts.entry(user.to_string()).or_default();
        if *count >= limit {
            return Err(ApiError::Quota(format!(
                "you have {count} {what} open and this service allows {limit} per user; close one \
                 first"
            ))
            .into());
        }
        *count += 1;
        Ok(Slot {
            counts: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.0.lock()
            && let Some(count) = counts.get_mut(&self.user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The `Origin` of a browser request is this service itself (scheme aside: a TLS proxy in
/// front may change it), judged against the `Host` the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(HOST).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

const NO_AUTH: &str = "a WebSocket needs a ticket (`POST /v1/sessions/{id}/tickets`, then \
                       `?ticket=...`), an `Authorization: Bearer` header, or the login cookie \
                       from a page of this service";
const CROSS_ORIGIN: &str = "a WebSocket from a page of another origin is refused";

/// The caller of a WebSocket request and the session it names, refused before any upgrade.
async fn admit<H: SessionHost>(
    state: &AppState<H>,
    headers: &HeaderMap,
    ticket: Option<&str>,
    id: &str,
    purpose: Purpose,
) -> Result<(Caller, Session), HttpError> {
    // A browser always sends `Origin` on a WebSocket; one from another site is refused
    // whatever it authenticates with.
    if headers.contains_key(ORIGIN) && !same_origin(headers) {
        return Err(
            HttpError::unauthorized(CROSS_ORIGIN).with_status(axum::http::StatusCode::FORBIDDEN)
        );
    }
    let caller =
        if let Some(ticket) = ticket {
            state.ws().tickets.redeem(ticket, id, purpose).ok_or_else(|| {
            HttpError::unauthorized(
                "the ticket is unknown, spent, expired or for another session; get a new one",
            )
        })?
        } else {
            let token = match bearer(headers) {
                Some(token) => token,
                None if headers.contains_key(ORIGIN) => cookie(headers, ACCESS_COOKIE)
                    .ok_or_else(|| HttpError::unauthorized(NO_AUTH))?,
                None => return Err(HttpError::unauthorized(NO_AUTH)),
            };
            state
                .store()
                .authenticate(token)
                .await
                .map_err(|err| {
                    tracing::error!("token store: {err}");
                    HttpError::new(ErrorCode::Unavailable, "the service's token store failed")
                })?
                .ok_or_else(|| {
                    HttpError::unauthorized(
                        "the service does not accept this token (unknown, expired or revoked)",
                    )
                })?
        };
    tracing::Span::current().record("user", caller.user.as_str());
    let session = crate::api::Backend::get(&state.host().sessions_of(&caller), id).await?;
    Ok((caller, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::auth::headers;

    #[test]
    fn only_this_services_own_origin_is_same_origin() {
        let host = ("host", "cubbi.example.org:8443");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "https://cubbi.example.org:8443")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://evil.example.com")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://cubbi.example.org:8443.evil.com")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])));
    }

    #[test]
    fn counts_are_capped_and_given_back() {
        let counts = Counts::default();
        let first = counts.take("alice", 1, "terminals").unwrap();
        assert!(counts.take("alice", 1, "terminals").is_err());
        assert!(counts.take("bob", 1, "terminals").is_ok());
        drop(first);
        assert!(counts.take("alice", 1, "terminals").is_ok());
    }
}
