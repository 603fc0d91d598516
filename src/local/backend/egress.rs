//! Live egress changes of a local session: the new policy is written where the resolver reads
//! it (outside every session), and takes effect within a second, without a restart.

use crate::api::{ApiError, EgressView, Session};
use crate::egress::EgressChange;
use crate::egress::store::EgressStore;

pub(super) fn change(
    store: &EgressStore,
    session: &Session,
    change: &EgressChange,
) -> Result<EgressView, ApiError> {
    let policy = change.applied_to(&session.name, session.egress.as_ref())?;
    store.write_policy(&session.id, &policy).map_err(|err| {
        ApiError::unavailable(format!(
            "cannot write the policy under {}: {err} (it belongs to root and the cubbi group)",
            store.dir().display()
        ))
    })?;
    let denied = store.denied(&session.id);
    Ok(EgressView {
        mode: policy.mode(),
        domains: policy.domains().to_vec(),
        denied: denied.names,
        denied_lookups: denied.lookups,
        denied_connections: denied.connections,
    })
}
