//! Egress by name: sessions reach only the domains their policy allows.
//!
//! - [`policy`]: the typed rules (`NAME`, `=NAME`), modes and limits, parsed at the edge.
//! - [`EgressRequest`]: what a create asks for, turned into the policy recorded on the session
//!   (the `io.cubbi.egress` label) together with the image's own domains.

pub mod daemon;
pub mod nft;
pub mod policy;
pub mod resolver;
#[cfg(test)]
mod resolver_tests;
pub mod service_rules;
pub mod store;
pub mod table;
pub mod unit;

use serde::{Deserialize, Serialize};

pub use policy::{DomainRule, EgressError, EgressMode, EgressPolicy, MAX_DOMAINS};

/// The egress a create asks for: from `--egress`, `--allow-domain`, `defaults.egress`,
/// `defaults.allowed_domains`, or a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// `allow-list`, `open` or `none`; `allow-list` when domains are given, else `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EgressMode>,
    /// `NAME` (with its subdomains) or `=NAME` (that name alone), at most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>, max_items = 256)]
    pub domains: Vec<DomainRule>,
    /// Add the domains the image's tool needs (its model API, its package registry).
    #[serde(default = "yes")]
    pub image_domains: bool,
}

fn yes() -> bool {
    true
}

impl Default for EgressRequest {
    fn default() -> Self {
        Self {
            mode: None,
            domains: Vec::new(),
            image_domains: true,
        }
    }
}

impl EgressRequest {
    pub fn mode(&self) -> EgressMode {
        self.mode.unwrap_or(if self.domains.is_empty() {
            EgressMode::Open
        } else {
            EgressMode::AllowList
        })
    }

    /// The policy in force: the asked domains, plus the image's for an allow-list unless the
    /// request said not to.
    pub fn policy(&self, image_domains: &[DomainRule]) -> Result<EgressPolicy, EgressError> {
        let mode = self.mode();
        let from_image = match mode {
            EgressMode::AllowList if self.image_domains => image_domains,
            _ => &[],
        };
        EgressPolicy::new(mode, self.domains.iter().chain(from_image).cloned())
    }
}

/// The policy a create records, from its request and the image's metadata; `None` for an
/// open session (no label, nothing for the resolver to hold it to).
pub fn session_policy(
    request: Option<&EgressRequest>,
    image: Option<&crate::images::ImageMetadata>,
) -> Result<Option<EgressPolicy>, EgressError> {
    let Some(request) = request else {
        return Ok(None);
    };
    let image_domains = image
        .and_then(|metadata| metadata.egress.as_ref())
        .map(|egress| egress.domains.as_slice())
        .unwrap_or_default();
    let policy = request.policy(image_domains)?;
    Ok(policy.restricted().then_some(policy))
}

/// What `show` reports: the policy in force (a live change's, else the label's) and the names
/// the resolver refused lately.
pub fn view_of_session(
    store: &store::EgressStore,
    id: &str,
    label: &str,
) -> crate::api::EgressView {
    let policy = store.in_force(id, label);
    let denied = store.denied(id);
    crate::api::EgressView {
        mode: policy.mode(),
        domains: policy.domains().to_vec(),
        denied: denied.names,
        denied_lookups: denied.lookups,
        denied_connections: denied.connections,
    }
}

/// A live change of a running session's allow-list (`session egress`, `POST
/// /v1/sessions/{id}/egress`): `deny` rules taken away, then `allow` rules added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressChange {
    /// Rules to add: `NAME` (with subdomains) or `=NAME`, at most 256.
    #[serde(default)]
    #[schema(value_type = Vec<String>, max_items = 256)]
    pub allow: Vec<DomainRule>,
    /// Rules to take away, at most 256.
    #[serde(default)]
    #[schema(value_type = Vec<String>, max_items = 256)]
    pub deny: Vec<DomainRule>,
}

impl EgressChange {
    /// Refuses a change that says nothing or more than a policy can hold.
    pub fn check(&self) -> Result<(), crate::api::ApiError> {
        if self.allow.is_empty() && self.deny.is_empty() {
            return Err(crate::api::ApiError::Invalid(
                "say what changes: --allow NAME or --deny NAME (repeatable)".into(),
            ));
        }
        if self.allow.len() > MAX_DOMAINS || self.deny.len() > MAX_DOMAINS {
            return Err(crate::api::ApiError::Invalid(format!(
                "at most {MAX_DOMAINS} names to allow and {MAX_DOMAINS} to deny at once"
            )));
        }
        Ok(())
    }

    /// The policy after the change, from the one in force (a session held to an allow-list).
    pub fn applied_to(
        &self,
        session_name: &str,
        view: Option<&crate::api::EgressView>,
    ) -> Result<EgressPolicy, crate::api::ApiError> {
        use crate::api::ApiError;
        self.check()?;
        let Some(view) = view else {
            return Err(ApiError::Conflict(format!(
                "session {session_name} is open (it reaches every public name); create it with \
                 --allow-domain or --egress allow-list to hold it to a list"
            )));
        };
        if view.mode != EgressMode::AllowList {
            return Err(ApiError::Conflict(format!(
                "session {session_name}'s egress is {}: only an allow-list takes names",
                view.mode
            )));
        }
        let invalid = |err: EgressError| ApiError::Invalid(err.to_string());
        let mut policy =
            EgressPolicy::new(view.mode, view.domains.iter().cloned()).map_err(invalid)?;
        for rule in &self.deny {
            policy = policy.deny(rule);
        }
        for rule in &self.allow {
            policy = policy.allow(rule.clone()).map_err(invalid)?;
        }
        Ok(policy)
    }
}

/// One line for people: `open`, `none` or `allow-list: a.test, =b.test`.
pub fn describe(view: Option<&crate::api::EgressView>) -> String {
    match view {
        None => EgressMode::Open.to_string(),
        Some(view) => EgressPolicy::new(view.mode, view.domains.iter().cloned())
            .map(|policy| policy.to_string())
            .unwrap_or_else(|err| err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Vec<DomainRule> {
        policy::parse_rules(texts).unwrap()
    }

    #[test]
    fn domains_make_an_allow_list_and_bring_the_images_domains() {
        let image = rules(&["api.anthropic.com", "registry.npmjs.org"]);
        let request = EgressRequest {
            domains: rules(&["allowed.test"]),
            ..Default::default()
        };
        let policy = request.policy(&image).unwrap();
        assert_eq!(policy.mode(), EgressMode::AllowList);
        assert_eq!(policy.domains().len(), 3);
        let without = EgressRequest {
            image_domains: false,
            ..request.clone()
        };
        assert_eq!(
            without.policy(&image).unwrap().domains(),
            &rules(&["allowed.test"])[..]
        );
        assert_eq!(
            EgressRequest::default().policy(&image).unwrap().mode(),
            EgressMode::Open
        );
        let none = EgressRequest {
            mode: Some(EgressMode::None),
            ..request
        };
        assert!(!none.policy(&image).unwrap().allows("allowed.test"));
    }

    #[test]
    fn a_request_body_with_a_bad_name_is_refused_whole() {
        let body = r#"{"mode":"allow-list","domains":["ok.test","a.*.test"]}"#;
        assert!(serde_json::from_str::<EgressRequest>(body).is_err());
        let body = r#"{"domains":["ok.test"]}"#;
        let request: EgressRequest = serde_json::from_str(body).unwrap();
        assert!(request.image_domains);
    }

    #[test]
    fn every_tool_image_names_the_domains_it_needs() {
        let catalog = crate::images::Catalog::embedded().unwrap();
        for name in ["claude-code", "codex", "gemini", "opencode", "aider"] {
            let metadata = &catalog.get(name).unwrap().metadata;
            let policy = session_policy(
                Some(&EgressRequest {
                    domains: rules(&["allowed.test"]),
                    ..Default::default()
                }),
                Some(metadata),
            )
            .unwrap()
            .unwrap();
            assert!(policy.domains().len() > 1, "{name} names no domain");
        }
        let open = session_policy(Some(&EgressRequest::default()), None).unwrap();
        assert_eq!(open, None, "an open session carries no policy");
    }
}
