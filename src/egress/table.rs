//! What the resolver knows of each session: its address, its policy, what it was handed and
//! what it was refused. Filled from Docker (labels) and the live changes (`session egress`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::EgressPolicy;

/// The last refused names kept per session (`session show` prints them).
pub const DENIED_KEPT: usize = 20;
/// Most addresses remembered per session for a later `--deny`; past it the oldest are
/// forgotten here (the kernel still drops them when their timeout runs out).
const HELD_KEPT: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionEntry {
    /// The container's id.
    pub id: String,
    pub policy: EgressPolicy,
    /// Names refused, oldest first, at most [`DENIED_KEPT`], each a checked DNS name.
    pub denied: VecDeque<String>,
    /// How many lookups were refused in all.
    pub denied_count: u64,
    /// Addresses handed out and when the kernel forgets them, so a narrowed policy takes
    /// them back at once and a repeated answer needs no new kernel transaction.
    pub held: BTreeMap<Ipv4Addr, Instant>,
}

impl SessionEntry {
    pub fn new(id: String, policy: EgressPolicy) -> Self {
        Self {
            id,
            policy,
            denied: VecDeque::new(),
            denied_count: 0,
            held: BTreeMap::new(),
        }
    }
}

/// The sessions by address, shared between the resolver's tasks.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    inner: Arc<RwLock<HashMap<Ipv4Addr, SessionEntry>>>,
}

impl PolicyTable {
    pub fn policy(&self, source: Ipv4Addr) -> Option<EgressPolicy> {
        let map = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&source).map(|entry| entry.policy.clone())
    }

    pub fn get(&self, source: Ipv4Addr) -> Option<SessionEntry> {
        let map = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&source).cloned()
    }

    /// The addresses of sessions held to a policy (the kernel's `restricted` set).
    pub fn restricted(&self) -> Vec<Ipv4Addr> {
        let map = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut list: Vec<Ipv4Addr> = map
            .iter()
            .filter(|(_, entry)| entry.policy.restricted())
            .map(|(address, _)| *address)
            .collect();
        list.sort();
        list
    }

    /// Records a refused lookup.
    pub fn deny(&self, source: Ipv4Addr, name: &str) {
        let mut map = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = map.get_mut(&source) {
            entry.denied_count += 1;
            entry.denied.retain(|known| known != name);
            entry.denied.push_back(name.to_string());
            while entry.denied.len() > DENIED_KEPT {
                entry.denied.pop_front();
            }
        }
    }

    /// Records addresses handed out, each allowed for its seconds from now.
    pub fn hold(&self, source: Ipv4Addr, addresses: &[(Ipv4Addr, u32)]) {
        let now = Instant::now();
        let mut map = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = map.get_mut(&source) {
            for (address, secs) in addresses {
                entry
                    .held
                    .insert(*address, now + Duration::from_secs(u64::from(*secs)));
            }
            while entry.held.len() > HELD_KEPT {
                entry.held.pop_first();
            }
        }
    }

    /// Of `addresses`, those the kernel must be told again: not held, or held for less than
    /// their seconds minus `slack` (so a name asked a thousand times a minute costs one
    /// kernel transaction every `slack` seconds, not a thousand).
    pub fn to_tell(
        &self,
        source: Ipv4Addr,
        addresses: &[(Ipv4Addr, u32)],
        slack: u32,
    ) -> Vec<(Ipv4Addr, u32)> {
        let now = Instant::now();
        let map = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = map.get(&source).map(|entry| &entry.held);
        addresses
            .iter()
            .filter(|(address, secs)| {
                let wanted = now + Duration::from_secs(u64::from(secs.saturating_sub(slack)));
                held.and_then(|held| held.get(address))
                    .is_none_or(|until| *until < wanted)
            })
            .copied()
            .collect()
    }

    /// Puts the sessions Docker reports in place: a session keeps what it was refused and
    /// handed while its address and id stay. Returns the entries whose policy narrowed or
    /// that went away, with what they held (to take back from the kernel).
    pub fn replace(
        &self,
        sessions: Vec<(Ipv4Addr, String, EgressPolicy)>,
    ) -> Vec<(Ipv4Addr, Vec<Ipv4Addr>)> {
        let mut map = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut old = std::mem::take(&mut *map);
        let mut forget = Vec::new();
        for (address, id, policy) in sessions {
            let entry = match old.remove(&address) {
                Some(mut entry) if entry.id == id => {
                    if entry.policy != policy {
                        forget.push((
                            address,
                            std::mem::take(&mut entry.held).into_keys().collect(),
                        ));
                        entry.policy = policy;
                    }
                    entry
                }
                Some(entry) => {
                    forget.push((address, entry.held.into_keys().collect()));
                    SessionEntry::new(id, policy)
                }
                None => SessionEntry::new(id, policy),
            };
            map.insert(address, entry);
        }
        for (address, entry) in old {
            forget.push((address, entry.held.into_keys().collect()));
        }
        forget.retain(|(_, held): &(Ipv4Addr, Vec<Ipv4Addr>)| !held.is_empty());
        forget
    }

    /// Every entry with its address, for the denied files.
    pub fn addressed(&self) -> Vec<(Ipv4Addr, SessionEntry)> {
        let map = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter()
            .map(|(address, entry)| (*address, entry.clone()))
            .collect()
    }
}
