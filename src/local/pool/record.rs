//! The claim record: what makes a claimed member a session. Labels cannot change after
//! create, and a file inside the container is writable by the session's root (who could then
//! name another owner), so the record is a Docker object only a Docker client can make: an
//! empty volume, `cubbi-claim.NAME`, whose labels say which container it claims and for whom.
//! One `list volumes` call reads every claim, so `list` costs no exec or copy per session.

use std::collections::HashMap;

use crate::local::labels::{self, SessionLabels};

/// Marks a claim record volume; the value is the claimed container's id.
pub const CLAIM_OF: &str = "io.cubbi.claim-of";

/// The personal half of a claimed session; the member's labels give the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The claimed container's full id (a record for another container is ignored).
    pub container: String,
    pub name: String,
    pub owner: String,
    pub created: i64,
    pub idle_stop_secs: Option<u64>,
}

impl ClaimRecord {
    /// The record volume's name, one per member (`cubbi-claim.` + the member's container
    /// name): Docker creates a volume under a per-name lock and hands an existing one back as
    /// it is, so whoever's labels the volume carries holds the member. (A rename is no lock:
    /// Docker resolves the old name before it locks the container, so racing renames of one
    /// member all succeed, one after another; the integration test showed it.)
    pub fn volume_name(member_container: &str) -> String {
        format!("cubbi-claim.{}", member_container.trim_start_matches('/'))
    }

    /// Whether a record read back from Docker is this one (the claimer holds the member).
    pub fn held_by(&self, labels: &HashMap<String, String>) -> bool {
        Self::from_labels(labels).is_some_and(|theirs| {
            theirs.container == self.container
                && theirs.name == self.name
                && theirs.owner == self.owner
        })
    }

    pub fn to_labels(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            (CLAIM_OF.to_string(), self.container.clone()),
            (labels::NAME.to_string(), self.name.clone()),
            (labels::OWNER.to_string(), self.owner.clone()),
            (labels::CREATED.to_string(), self.created.to_string()),
            (labels::MANAGED.to_string(), "true".to_string()),
        ]);
        if let Some(secs) = self.idle_stop_secs {
            map.insert(labels::IDLE_STOP.to_string(), secs.to_string());
        }
        map
    }

    /// Reads a record volume's labels back; `None` for anything else or a damaged record.
    pub fn from_labels(map: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            container: map.get(CLAIM_OF).filter(|id| !id.is_empty())?.clone(),
            name: map.get(labels::NAME)?.clone(),
            owner: map.get(labels::OWNER)?.clone(),
            created: map.get(labels::CREATED)?.parse().ok()?,
            idle_stop_secs: match map.get(labels::IDLE_STOP) {
                Some(secs) => Some(secs.parse().ok()?),
                None => None,
            },
        })
    }

    /// The session a claimed container is: the member's SSH labels plus this record. `None`
    /// when the record is for another container or the container is not a (claimed) member,
    /// so a stale record never turns anything into a session.
    pub fn session_labels(
        &self,
        container_id: &str,
        container_labels: &HashMap<String, String>,
    ) -> Option<SessionLabels> {
        if self.container != container_id || !container_labels.contains_key(super::member::POOL) {
            return None;
        }
        let mut map = container_labels.clone();
        map.insert(labels::SESSION.to_string(), "true".to_string());
        map.insert(labels::NAME.to_string(), self.name.clone());
        map.insert(labels::OWNER.to_string(), self.owner.clone());
        map.insert(labels::CREATED.to_string(), self.created.to_string());
        SessionLabels::from_map(&map)
    }
}

/// The claimed sessions among containers labelled [`POOL`](super::member::POOL), each as the
/// `docker ps` row a cold session's container would give (its labels made whole from its
/// record), so one reading turns both into sessions. A member still named `cubbi-pool.*`, or a
/// container without a record of its own, is no session.
pub fn claimed_rows(
    containers: &[bollard::models::ContainerSummary],
    records: &[ClaimRecord],
) -> Vec<bollard::models::ContainerSummary> {
    containers
        .iter()
        .filter(|c| super::member::MemberName::of_container(c).is_none())
        .filter_map(|container| {
            let id = container.id.as_deref()?;
            let session = records
                .iter()
                .find(|record| record.container == id)?
                .session_labels(id, container.labels.as_ref()?)?;
            let mut row = container.clone();
            let mut labels = container.labels.clone().unwrap_or_default();
            labels.extend(session.to_map());
            row.labels = Some(labels);
            Some(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::pool::member::member_labels;

    fn record() -> ClaimRecord {
        ClaimRecord {
            container: "abc123".into(),
            name: "demo".into(),
            owner: "alice".into(),
            created: 1_700_000_000,
            idle_stop_secs: Some(600),
        }
    }

    #[test]
    fn records_round_trip_through_labels() {
        let back = ClaimRecord::from_labels(&record().to_labels());
        assert_eq!(back, Some(record()));
        let mut damaged = record().to_labels();
        damaged.insert(labels::CREATED.into(), "soon".into());
        assert_eq!(ClaimRecord::from_labels(&damaged), None);
        assert_eq!(
            ClaimRecord::volume_name("/cubbi-pool.base.0123456789ab"),
            "cubbi-claim.cubbi-pool.base.0123456789ab"
        );
        assert!(record().held_by(&record().to_labels()));
        let other = ClaimRecord {
            name: "other".into(),
            ..record()
        };
        assert!(!record().held_by(&other.to_labels()));
    }

    #[test]
    fn a_record_makes_only_its_own_member_a_session() {
        let member = member_labels(
            "base",
            "cubbi-base",
            2305,
            "127.0.0.1",
            "ssh-ed25519 K",
            &["bash".into()],
        );
        let session = record().session_labels("abc123", &member).unwrap();
        assert_eq!(
            (session.name.as_str(), session.owner.as_str()),
            ("demo", "alice")
        );
        assert_eq!(session.ssh_port, 2305);
        assert_eq!(session.host_key, "ssh-ed25519 K");
        assert!(record().session_labels("other", &member).is_none());
        // A cold session's container is not a member: a record cannot re-own it.
        let cold = HashMap::from([(labels::SESSION.to_string(), "true".to_string())]);
        assert!(record().session_labels("abc123", &cold).is_none());
    }
}
