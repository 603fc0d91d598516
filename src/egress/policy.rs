//! A session's egress policy as typed values: the names it may reach and how strictly.
//!
//! Parsed once where a name enters (a flag, a config key, an image's metadata, a request body),
//! so the resolver and the service compare typed rules and never parse text again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most rules one policy holds: every rule is checked on every lookup, and the policy travels
/// as one Docker label.
pub const MAX_DOMAINS: usize = 256;
/// DNS's own limits (RFC 1035): a name of at most 253 characters, labels of at most 63.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0:?} is not a DNS name: {1}")]
    BadName(String, &'static str),
    #[error(
        "{0:?}: a wildcard may only stand first, as `*.NAME` (the same as `NAME`, which covers \
         its subdomains); write `=NAME` for the name alone"
    )]
    Wildcard(String),
    #[error("{0} domains is over the limit of {MAX_DOMAINS} per session")]
    TooMany(usize),
    #[error("{0:?} is not an egress mode: give allow-list, open or none")]
    BadMode(String),
}

/// One allowed name: `NAME` covers the name and every name under it, `=NAME` the name alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainRule {
    /// Lowercase, without the root's trailing dot.
    name: String,
    exact: bool,
}

impl DomainRule {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn exact(&self) -> bool {
        self.exact
    }

    /// Whether `name` (any case, with or without the trailing dot) is covered by this rule.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name == self.name {
            return true;
        }
        !self.exact
            && name
                .strip_suffix(self.name.as_str())
                .is_some_and(|head| head.ends_with('.'))
    }
}

impl FromStr for DomainRule {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (exact, rest) = match text.strip_prefix('=') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        // `*.NAME` is how other tools spell "NAME and below"; it means what `NAME` means here.
        let rest = match rest.strip_prefix("*.") {
            Some(rest) if !exact => rest,
            _ => rest,
        };
        if rest.contains('*') {
            return Err(EgressError::Wildcard(text.to_string()));
        }
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        let bad = |why| Err(EgressError::BadName(text.to_string(), why));
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > MAX_NAME {
            return bad("it is longer than 253 characters");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return bad("it has an empty label (two dots in a row, or a leading dot)");
            }
            if label.len() > MAX_LABEL {
                return bad("a label is longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("only letters, digits, `-` and `_` may stand between the dots");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label may not begin or end with `-`");
            }
        }
        // The last label of a name is never all digits, so this is an address: egress is
        // allowed by name, and an address says nothing about who answers there.
        if name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
        {
            return bad("it is an address; egress is allowed by name");
        }
        Ok(Self { name, exact })
    }
}

impl TryFrom<String> for DomainRule {
    type Error = EgressError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DomainRule> for String {
    fn from(rule: DomainRule) -> Self {
        rule.to_string()
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exact {
            f.write_str("=")?;
        }
        f.write_str(&self.name)
    }
}

/// How a session's traffic to the internet is decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// Anything public (the egress guard still keeps private networks out).
    #[default]
    Open,
    /// Only the listed names, on the allowed ports.
    AllowList,
    /// Nothing leaves the session (its own networks still work).
    None,
}

impl FromStr for EgressMode {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "open" => Ok(Self::Open),
            "allow-list" | "allowlist" => Ok(Self::AllowList),
            "none" => Ok(Self::None),
            other => Err(EgressError::BadMode(other.to_string())),
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::AllowList => "allow-list",
            Self::None => "none",
        })
    }
}

/// The policy in force for one session: its mode and, for an allow-list, its rules (sorted,
/// without duplicates, at most [`MAX_DOMAINS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyWire", into = "PolicyWire")]
pub struct EgressPolicy {
    mode: EgressMode,
    domains: Vec<DomainRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyWire {
    mode: EgressMode,
    #[serde(default)]
    domains: Vec<DomainRule>,
}

impl TryFrom<PolicyWire> for EgressPolicy {
    type Error = EgressError;

    fn try_from(wire: PolicyWire) -> Result<Self, Self::Error> {
        Self::new(wire.mode, wire.domains)
    }
}

impl From<EgressPolicy> for PolicyWire {
    fn from(policy: EgressPolicy) -> Self {
        Self {
            mode: policy.mode,
            domains: policy.domains,
        }
    }
}

impl EgressPolicy {
    pub fn new(
        mode: EgressMode,
        domains: impl IntoIterator<Item = DomainRule>,
    ) -> Result<Self, EgressError> {
        let mut domains: Vec<DomainRule> = domains.into_iter().collect();
        domains.sort();
        domains.dedup();
        if domains.len() > MAX_DOMAINS {
            return Err(EgressError::TooMany(domains.len()));
        }
        Ok(Self { mode, domains })
    }

    pub fn mode(&self) -> EgressMode {
        self.mode
    }

    pub fn domains(&self) -> &[DomainRule] {
        &self.domains
    }

    /// Whether a lookup of `name` is answered.
    pub fn allows(&self, name: &str) -> bool {
        match self.mode {
            EgressMode::Open => true,
            EgressMode::None => false,
            EgressMode::AllowList => self.domains.iter().any(|rule| rule.matches(name)),
        }
    }

    /// Whether the kernel must hold this session to the addresses its lookups returned.
    pub fn restricted(&self) -> bool {
        self.mode != EgressMode::Open
    }

    /// The policy with `rule` added (a live `--allow`).
    pub fn allow(&self, rule: DomainRule) -> Result<Self, EgressError> {
        Self::new(self.mode, self.domains.iter().cloned().chain([rule]))
    }

    /// The policy without `rule` (a live `--deny`). Denying `NAME` also takes away `=NAME`.
    pub fn deny(&self, rule: &DomainRule) -> Self {
        let domains = self
            .domains
            .iter()
            .filter(|kept| kept.name != rule.name || (rule.exact && !kept.exact))
            .cloned()
            .collect();
        Self {
            mode: self.mode,
            domains,
        }
    }

    /// One line for the session's Docker label (JSON).
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a label back; the label is the container's, written by cubbi, but a label that
    /// does not parse is refused rather than read as "open".
    pub fn from_label(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|err| format!("bad egress label: {err}"))
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            EgressMode::AllowList if !self.domains.is_empty() => {
                let names: Vec<String> = self.domains.iter().map(|r| r.to_string()).collect();
                write!(f, "allow-list: {}", names.join(", "))
            }
            EgressMode::AllowList => f.write_str("allow-list (empty: nothing is reachable)"),
            mode => write!(f, "{mode}"),
        }
    }
}

/// Parses a list of rules, as flags and config give them.
pub fn parse_rules<S: AsRef<str>>(texts: &[S]) -> Result<Vec<DomainRule>, EgressError> {
    if texts.len() > MAX_DOMAINS {
        return Err(EgressError::TooMany(texts.len()));
    }
    texts.iter().map(|text| text.as_ref().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> DomainRule {
        text.parse().expect(text)
    }

    #[test]
    fn a_name_covers_its_subdomains_and_an_exact_one_does_not() {
        let wide = rule("Allowed.Test.");
        assert_eq!(wide.to_string(), "allowed.test");
        assert!(wide.matches("allowed.test"));
        assert!(wide.matches("SUB.allowed.test."));
        assert!(!wide.matches("notallowed.test"));
        assert!(!wide.matches("test"));
        let exact = rule("=allowed.test");
        assert!(exact.matches("allowed.test."));
        assert!(!exact.matches("sub.allowed.test"));
        assert_eq!(rule("*.allowed.test"), wide);
    }

    #[test]
    fn names_that_are_not_dns_names_are_refused() {
        for bad in [
            "",
            "=",
            "a..b",
            ".a",
            "a b",
            "-a.test",
            "a-.test",
            "1.2.3.4",
            "exa$mple.com",
            "é.test",
        ] {
            assert!(
                matches!(bad.parse::<DomainRule>(), Err(EgressError::BadName(..))),
                "{bad:?}"
            );
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(long.parse::<DomainRule>().is_err());
        assert!(
            format!("{}.test", "a".repeat(63))
                .parse::<DomainRule>()
                .is_ok()
        );
    }

    #[test]
    fn wildcards_stand_only_first() {
        for bad in ["a.*.test", "*test", "a*.test", "*", "=*.a.test", "*.*.test"] {
            assert!(
                matches!(bad.parse::<DomainRule>(), Err(EgressError::Wildcard(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lists_over_the_limit_are_refused() {
        let many: Vec<String> = (0..=MAX_DOMAINS).map(|n| format!("n{n}.test")).collect();
        assert_eq!(
            parse_rules(&many),
            Err(EgressError::TooMany(MAX_DOMAINS + 1))
        );
        let rules: Vec<DomainRule> = many.iter().map(|n| rule(n)).collect();
        assert!(EgressPolicy::new(EgressMode::AllowList, rules.clone()).is_err());
        assert!(EgressPolicy::new(EgressMode::AllowList, rules[..MAX_DOMAINS].to_vec()).is_ok());
    }

    #[test]
    fn modes_decide_lookups() {
        let rules = vec![rule("allowed.test"), rule("=exact.test")];
        let list = EgressPolicy::new(EgressMode::AllowList, rules.clone()).unwrap();
        assert!(list.allows("sub.allowed.test"));
        assert!(list.allows("exact.test"));
        assert!(!list.allows("sub.exact.test"));
        assert!(!list.allows("other.test"));
        assert!(
            EgressPolicy::new(EgressMode::Open, vec![])
                .unwrap()
                .allows("x.test")
        );
        assert!(
            !EgressPolicy::new(EgressMode::None, rules)
                .unwrap()
                .allows("allowed.test")
        );
        assert_eq!("allow-list".parse(), Ok(EgressMode::AllowList));
        assert!(matches!(
            "closed".parse::<EgressMode>(),
            Err(EgressError::BadMode(_))
        ));
    }

    #[test]
    fn live_changes_and_labels_round_trip() {
        let policy = EgressPolicy::new(EgressMode::AllowList, vec![rule("a.test")]).unwrap();
        let more = policy.allow(rule("=b.test")).unwrap();
        assert!(more.allows("b.test"));
        let less = more.deny(&rule("b.test"));
        assert!(!less.allows("b.test"));
        assert_eq!(less, policy);
        let label = more.to_label();
        assert_eq!(EgressPolicy::from_label(&label), Ok(more));
        assert!(EgressPolicy::from_label(r#"{"mode":"allow-list","domains":["*x"]}"#).is_err());
        assert!(EgressPolicy::from_label(r#"{"mode":"shut"}"#).is_err());
    }
}
