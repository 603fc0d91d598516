//! Whose data a service's members of a tool image hold. Such a member boots with one owner's
//! data volume and serves that owner only (Docker cannot add a volume to a running container),
//! so a service keeps the image's target for each owner who created a session of it lately,
//! and its fill drains the members of owners who have not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after an owner's last create of a tool image the service keeps members for them.
pub const KEEP_FOR: Duration = Duration::from_secs(3600);

/// Owners per image the service keeps members for at once (the most recent ones): what one
/// image's pool costs the host stays bounded however many owners use it.
pub const MAX_OWNERS: usize = 8;

/// Entries kept at most (oldest dropped first), whatever creates arrive.
const MAX_ENTRIES: usize = 1024;

/// The owners' latest creates of pooled tool images, since the service started.
#[derive(Debug)]
pub struct PoolDemand {
    started: Instant,
    /// `(image, owner)` to the last create that could have claimed a member.
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl Default for PoolDemand {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl PoolDemand {
    /// `owner` created (or tried to claim) a session of `image`.
    pub fn note(&self, image: &str, owner: &str) {
        self.note_at(image, owner, Instant::now());
    }

    /// The owners to keep `image`'s members for: a create within [`KEEP_FOR`], the most
    /// recent first, at most [`MAX_OWNERS`].
    pub fn owners(&self, image: &str) -> Vec<String> {
        self.owners_at(image, Instant::now())
    }

    /// Whether members of `image` holding `owner`'s data stay: the owner is one of
    /// [`Self::owners`], or has not been seen since the service started and that was within
    /// [`KEEP_FOR`] (members that outlived a restart get the same time as after a create).
    pub fn keeps(&self, image: &str, owner: &str) -> bool {
        self.keeps_at(image, owner, Instant::now())
    }

    fn note_at(&self, image: &str, owner: &str, now: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|_, at| now.saturating_duration_since(*at) < KEEP_FOR);
        last.insert((image.to_string(), owner.to_string()), now);
        while last.len() > MAX_ENTRIES {
            let Some(oldest) = last
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            last.remove(&oldest);
        }
    }

    fn owners_at(&self, image: &str, now: Instant) -> Vec<String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut recent: Vec<(Instant, &String)> = last
            .iter()
            .filter(|((i, _), at)| i == image && now.saturating_duration_since(**at) < KEEP_FOR)
            .map(|((_, owner), at)| (*at, owner))
            .collect();
        recent.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        recent
            .into_iter()
            .take(MAX_OWNERS)
            .map(|(_, owner)| owner.clone())
            .collect()
    }

    fn keeps_at(&self, image: &str, owner: &str, now: Instant) -> bool {
        let seen = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(image.to_string(), owner.to_string()));
        if seen {
            self.owners_at(image, now).iter().any(|o| o == owner)
        } else {
            now.saturating_duration_since(self.started) < KEEP_FOR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_kept_for_an_hour_after_their_last_create() {
        let demand = PoolDemand::default();
        let start = demand.started;
        demand.note_at("claude-code", "alice", start);
        demand.note_at("codex", "bob", start);
        let soon = start + Duration::from_secs(60);
        assert_eq!(demand.owners_at("claude-code", soon), vec!["alice"]);
        assert!(demand.keeps_at("claude-code", "alice", soon));
        let later = start + KEEP_FOR + Duration::from_secs(1);
        assert!(demand.owners_at("claude-code", later).is_empty());
        assert!(!demand.keeps_at("claude-code", "alice", later));
        // A new create starts the hour again.
        demand.note_at("claude-code", "alice", later);
        assert!(demand.keeps_at("claude-code", "alice", later));
    }

    #[test]
    fn members_that_outlived_a_restart_stay_an_hour_when_their_owner_is_not_seen() {
        let demand = PoolDemand::default();
        let start = demand.started;
        assert!(demand.keeps_at("claude-code", "carol", start + Duration::from_secs(60)));
        assert!(
            demand.owners_at("claude-code", start).is_empty(),
            "kept, not filled"
        );
        assert!(!demand.keeps_at("claude-code", "carol", start + KEEP_FOR));
    }

    #[test]
    fn at_most_the_most_recent_owners_are_served_per_image() {
        let demand = PoolDemand::default();
        let start = demand.started;
        for i in 0..(MAX_OWNERS as u64 + 3) {
            demand.note_at(
                "claude-code",
                &format!("u{i}"),
                start + Duration::from_secs(i),
            );
        }
        let now = start + Duration::from_secs(100);
        let owners = demand.owners_at("claude-code", now);
        assert_eq!(owners.len(), MAX_OWNERS);
        assert_eq!(owners[0], format!("u{}", MAX_OWNERS + 2), "newest first");
        assert!(
            !demand.keeps_at("claude-code", "u0", now),
            "the oldest is dropped"
        );
    }

    #[test]
    fn the_record_is_bounded() {
        let demand = PoolDemand::default();
        let start = demand.started;
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            demand.note_at(
                "claude-code",
                &format!("u{i}"),
                start + Duration::from_millis(i),
            );
        }
        assert_eq!(demand.last.lock().unwrap().len(), MAX_ENTRIES);
    }
}
