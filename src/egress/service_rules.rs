//! `[egress]` of a service's config: what its users may ask for.
//!
//! - `force_allow_list`: every session is held to an allow-list (a request for `open` is
//!   refused; `none` is stricter and passes);
//! - `always`: names every session may reach, added to its list;
//! - `allowed`: when not empty, the only names a request may ask for (a rule must fall inside
//!   one of them: `docs.python.org` inside `python.org`, `=a.test` inside `a.test`);
//! - `never`: names no request may ask for, nor cover (`python.org` covers `evil.python.org`).
//!
//! A request outside them is a 400 with the code `egress_domain` that names the domain.

use serde::Deserialize;

use super::{DomainRule, EgressMode, EgressRequest};
use crate::api::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceEgress {
    pub force_allow_list: bool,
    pub always: Vec<DomainRule>,
    pub allowed: Vec<DomainRule>,
    pub never: Vec<DomainRule>,
    /// The egress resolver's folder, where live changes are written and refused names read
    /// (`/var/lib/cubbi/egress`, or `CUBBI_EGRESS_DIR`, when absent).
    pub resolver_dir: Option<std::path::PathBuf>,
}

/// Whether every name `inner` covers is covered by `outer`.
fn inside(inner: &DomainRule, outer: &DomainRule) -> bool {
    outer.matches(inner.name()) && (!outer.exact() || inner.exact())
}

/// Whether `rule` would let a session reach a name `never` names.
fn touches(rule: &DomainRule, never: &DomainRule) -> bool {
    never.matches(rule.name()) || (!rule.exact() && rule.matches(never.name()))
}

impl ServiceEgress {
    pub fn store(&self) -> super::store::EgressStore {
        self.resolver_dir
            .as_ref()
            .map_or_else(super::store::EgressStore::from_env, |dir| {
                super::store::EgressStore::new(dir)
            })
    }

    /// Refuses a rule that reaches a name `never` names, or falls outside `allowed`.
    fn check_rule(&self, rule: &DomainRule) -> Result<(), ApiError> {
        if let Some(never) = self.never.iter().find(|never| touches(rule, never)) {
            return Err(ApiError::EgressDomain(format!(
                "domain `{rule}` is not allowed on this service (it reaches `{never}`, which \
                 [egress] never names)"
            )));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|outer| inside(rule, outer)) {
            let offered: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            return Err(ApiError::EgressDomain(format!(
                "domain `{rule}` is outside what this service allows ({})",
                offered.join(", ")
            )));
        }
        Ok(())
    }

    /// A live change obeys the same rules as a create; the names every session may reach
    /// (`always`) cannot be taken away.
    pub fn check_change(&self, change: &super::EgressChange) -> Result<(), ApiError> {
        for rule in &change.allow {
            self.check_rule(rule)?;
        }
        if let Some(rule) = change.deny.iter().find(|rule| self.always.contains(rule)) {
            return Err(ApiError::EgressDomain(format!(
                "domain `{rule}` is allowed on every session of this service ([egress] always)"
            )));
        }
        Ok(())
    }

    /// The egress a request may have, or the refusal naming the domain.
    pub fn apply(&self, request: Option<EgressRequest>) -> Result<Option<EgressRequest>, ApiError> {
        let request = match request {
            Some(request) => request,
            None if self.force_allow_list => EgressRequest {
                mode: Some(EgressMode::AllowList),
                ..Default::default()
            },
            None => return Ok(None),
        };
        if self.force_allow_list && request.mode() == EgressMode::Open {
            return Err(ApiError::EgressDomain(
                "this service holds every session to an allow-list ([egress] force_allow_list); \
                 give `domains` instead of `mode: open`"
                    .into(),
            ));
        }
        for rule in &request.domains {
            self.check_rule(rule)?;
        }
        let mut request = request;
        if self.force_allow_list && request.mode.is_none() {
            request.mode = Some(EgressMode::AllowList);
        }
        if request.mode() == EgressMode::AllowList {
            request.domains.extend(self.always.iter().cloned());
        }
        Ok(Some(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Vec<DomainRule> {
        super::super::policy::parse_rules(texts).unwrap()
    }

    fn service() -> ServiceEgress {
        ServiceEgress {
            force_allow_list: true,
            always: rules(&["api.anthropic.com"]),
            allowed: rules(&["allowed.test", "python.org"]),
            never: rules(&["evil.python.org"]),
            resolver_dir: None,
        }
    }

    #[test]
    fn a_live_change_obeys_the_same_rules_and_keeps_the_always_names() {
        let change = |allow: &[&str], deny: &[&str]| super::super::EgressChange {
            allow: rules(allow),
            deny: rules(deny),
        };
        let service = service();
        assert!(
            service
                .check_change(&change(&["docs.python.org"], &["allowed.test"]))
                .is_ok()
        );
        for refused in [
            change(&["evil.python.org"], &[]),
            change(&["python.org"], &[]),
            change(&["other.test"], &[]),
            change(&[], &["api.anthropic.com"]),
        ] {
            let err = service.check_change(&refused).unwrap_err();
            assert_eq!(err.code(), crate::api::ErrorCode::EgressDomain, "{err}");
        }
    }

    fn asking(domains: &[&str]) -> Option<EgressRequest> {
        Some(EgressRequest {
            domains: rules(domains),
            ..Default::default()
        })
    }

    #[test]
    fn a_forced_allow_list_holds_even_a_request_that_says_nothing() {
        let made = service().apply(None).unwrap().unwrap();
        assert_eq!(made.mode(), EgressMode::AllowList);
        assert_eq!(made.domains, rules(&["api.anthropic.com"]));
        let open = Some(EgressRequest {
            mode: Some(EgressMode::Open),
            ..Default::default()
        });
        let err = service().apply(open).unwrap_err();
        assert_eq!(err.code(), crate::api::ErrorCode::EgressDomain);
        assert_eq!(err.code().http_status(), 400);
    }

    #[test]
    fn names_outside_or_never_are_refused_by_name() {
        let made = service()
            .apply(asking(&["sub.allowed.test", "=docs.python.org"]))
            .unwrap()
            .unwrap();
        assert_eq!(made.domains.len(), 3);
        let err = service().apply(asking(&["other.test"])).unwrap_err();
        assert!(err.to_string().contains("`other.test`"), "{err}");
        let err = service().apply(asking(&["python.org"])).unwrap_err();
        assert!(err.to_string().contains("evil.python.org"), "{err}");
        let err = service().apply(asking(&["x.evil.python.org"])).unwrap_err();
        assert_eq!(err.code(), crate::api::ErrorCode::EgressDomain);
    }

    #[test]
    fn without_a_section_requests_pass_as_they_are() {
        let none = ServiceEgress::default();
        assert_eq!(none.apply(None).unwrap(), None);
        let asked = asking(&["anything.test"]);
        assert_eq!(none.apply(asked.clone()).unwrap(), asked);
    }
}
