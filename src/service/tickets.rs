//! Single-use tickets for WebSockets. A browser cannot set `Authorization` on a WebSocket, and
//! a long-lived token must never sit in a URL (proxies and histories keep URLs), so a caller
//! first asks `POST /v1/sessions/{id}/tickets` for a ticket: 32 random bytes, good for one
//! upgrade of one kind to one session, within [`TICKET_LIFETIME`]. Only its SHA-256 is kept,
//! in memory; redeeming removes it whether or not it matched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::Caller;
use crate::api::ApiError;

/// How long a ticket may wait for its upgrade.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// Tickets one user may hold unused at once.
const PER_USER: usize = 32;
/// Tickets the whole service holds unused at once.
const TOTAL: usize = 10_000;

/// What a ticket opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// `GET /v1/sessions/{id}/terminal`
    Terminal,
    /// `GET /v1/sessions/{id}/ssh`
    Ssh,
    /// `GET /v1/sessions/{id}/logs/ws`
    Logs,
}

struct Entry {
    caller: Caller,
    session: String,
    purpose: Purpose,
    expires: Instant,
}

/// The unused tickets, by the hash of their secret.
#[derive(Default)]
pub struct Tickets {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(ticket: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(&Sha256::digest(ticket.as_bytes()));
    key
}

impl Tickets {
    /// A new ticket for `caller` to open `purpose` on `session` (an id the caller may see).
    pub fn issue(
        &self,
        caller: &Caller,
        session: &str,
        purpose: Purpose,
    ) -> Result<String, ApiError> {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| ApiError::unavailable("the ticket table failed".to_string()))?;
        entries.retain(|_, entry| entry.expires > now);
        let held = entries
            .values()
            .filter(|entry| entry.caller.user == caller.user)
            .count();
        if held >= PER_USER || entries.len() >= TOTAL {
            return Err(ApiError::Quota(format!(
                "too many unused WebSocket tickets ({PER_USER} per user); use or let one expire \
                 ({}s)",
                TICKET_LIFETIME.as_secs()
            )));
        }
        let secret: [u8; 32] = rand::random();
        let ticket = URL_SAFE_NO_PAD.encode(secret);
        entries.insert(
            digest(&ticket),
            Entry {
                caller: caller.clone(),
                session: session.to_string(),
                purpose,
                expires: now + TICKET_LIFETIME,
            },
        );
        Ok(ticket)
    }

    /// The caller a ticket was issued to, if it is unexpired and for exactly this session and
    /// purpose. The ticket is spent either way.
    pub fn redeem(&self, ticket: &str, session: &str, purpose: Purpose) -> Option<Caller> {
        if ticket.len() > 64 {
            return None;
        }
        let entry = self.entries.lock().ok()?.remove(&digest(ticket))?;
        (entry.expires > Instant::now() && entry.session == session && entry.purpose == purpose)
            .then_some(entry.caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Caller {
        Caller {
            user: "alice".into(),
            admin: false,
        }
    }

    #[test]
    fn a_ticket_opens_once_and_only_what_it_was_issued_for() {
        let tickets = Tickets::default();
        let ticket = tickets.issue(&alice(), "s1", Purpose::Terminal).unwrap();
        assert!(ticket.len() >= 43, "32 random bytes: {ticket}");
        assert_eq!(
            tickets
                .redeem(&ticket, "s1", Purpose::Terminal)
                .map(|c| c.user),
            Some("alice".into())
        );
        assert!(tickets.redeem(&ticket, "s1", Purpose::Terminal).is_none());

        let other = tickets.issue(&alice(), "s1", Purpose::Ssh).unwrap();
        assert!(tickets.redeem(&other, "s2", Purpose::Ssh).is_none());
        // A wrong try spends it too.
        assert!(tickets.redeem(&other, "s1", Purpose::Ssh).is_none());

        let third = tickets.issue(&alice(), "s1", Purpose::Ssh).unwrap();
        assert!(tickets.redeem(&third, "s1", Purpose::Terminal).is_none());
        assert!(tickets.redeem("made-up", "s1", Purpose::Ssh).is_none());
    }

    #[test]
    fn unused_tickets_are_capped_per_user() {
        let tickets = Tickets::default();
        for _ in 0..PER_USER {
            tickets.issue(&alice(), "s1", Purpose::Ssh).unwrap();
        }
        assert!(matches!(
            tickets.issue(&alice(), "s1", Purpose::Ssh),
            Err(ApiError::Quota(_))
        ));
        let bob = Caller {
            user: "bob".into(),
            admin: false,
        };
        assert!(tickets.issue(&bob, "s2", Purpose::Ssh).is_ok());
    }

    #[test]
    fn only_the_hash_is_kept() {
        let tickets = Tickets::default();
        let ticket = tickets.issue(&alice(), "s1", Purpose::Ssh).unwrap();
        let entries = tickets.entries.lock().unwrap();
        assert!(entries.contains_key(&digest(&ticket)));
        assert!(
            !entries
                .keys()
                .any(|key| key.as_slice() == ticket.as_bytes())
        );
    }
}
