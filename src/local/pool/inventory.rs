//! What `cubbi pool status` and doctor report: per image, the members that are ready and the
//! target, read from one `docker ps` of the members (label `io.cubbi.pool`).

use std::collections::BTreeMap;

use bollard::models::{
    ContainerSummary, ContainerSummaryHealthStatusEnum, ContainerSummaryStateEnum,
};
use serde::Serialize;

use super::member::{MemberName, POOL};
use super::targets::PoolTargets;

/// One image's pool, as `status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolRow {
    pub image: String,
    /// Members running and not reported unhealthy: claimable.
    pub ready: u32,
    /// Members still booting, stopped or unhealthy (not claimable; a fill replaces them).
    pub not_ready: u32,
    pub target: u32,
}

/// Counts members per image from a listing filtered on [`POOL`]. Claimed members (renamed
/// away from `cubbi-pool.*`) are sessions and are not counted; images with members but no
/// target still appear, so `drain` has something to say about them.
/// `held`: ids of members a claim record holds (a claim between its steps): not claimable.
pub fn inventory(
    targets: &PoolTargets,
    containers: &[ContainerSummary],
    held: &std::collections::BTreeSet<String>,
) -> Vec<PoolRow> {
    let mut rows: BTreeMap<String, PoolRow> = targets
        .iter()
        .map(|(image, target)| {
            let row = PoolRow {
                image: image.to_string(),
                ready: 0,
                not_ready: 0,
                target,
            };
            (image.to_string(), row)
        })
        .collect();
    for container in containers {
        let labelled = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(POOL))
            .is_some();
        let Some((member, booting)) = MemberName::of_container(container) else {
            continue;
        };
        if !labelled {
            continue;
        }
        let row = rows.entry(member.image.clone()).or_insert_with(|| PoolRow {
            image: member.image.clone(),
            ready: 0,
            not_ready: 0,
            target: 0,
        });
        let is_held = container.id.as_ref().is_some_and(|id| held.contains(id));
        if is_ready(container) && !is_held && !booting {
            row.ready += 1;
        } else {
            row.not_ready += 1;
        }
    }
    rows.into_values().collect()
}

/// Doctor's line for the pool: fine when every image has its target ready, a warning (creates
/// go cold meanwhile) when not, or when Docker could not be asked.
pub fn doctor_check(rows: Result<Vec<PoolRow>, String>) -> crate::doctor::Check {
    use crate::doctor::Check;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => {
            return Check::warn(
                "pool",
                format!("cannot read the pool: {err}"),
                "check the endpoint; creates go cold until the pool can be read",
            );
        }
    };
    let summary = rows
        .iter()
        .map(|row| format!("{} {}/{}", row.image, row.ready, row.target))
        .collect::<Vec<_>>()
        .join(", ");
    if rows.iter().all(|row| row.ready >= row.target) {
        Check::ok("pool", format!("ready/target: {summary}"))
    } else {
        Check::warn(
            "pool",
            format!("below target (ready/target): {summary}"),
            "`cubbi pool status` shows each image; creates go cold until members are ready",
        )
    }
}

fn is_ready(container: &ContainerSummary) -> bool {
    let running = container.state == Some(ContainerSummaryStateEnum::RUNNING);
    let unhealthy = container
        .health
        .as_ref()
        .and_then(|health| health.status)
        .is_some_and(|status| status == ContainerSummaryHealthStatusEnum::UNHEALTHY);
    running && !unhealthy
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn container(name: &str, state: ContainerSummaryStateEnum) -> ContainerSummary {
        ContainerSummary {
            names: Some(vec![format!("/{name}")]),
            labels: Some(HashMap::from([(POOL.to_string(), "base".to_string())])),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn doctor_warns_below_target() {
        let row = |ready| PoolRow {
            image: "base".into(),
            ready,
            not_ready: 0,
            target: 2,
        };
        let full = doctor_check(Ok(vec![row(2)]));
        assert_eq!(full.status, crate::doctor::Status::Ok);
        assert!(full.finding.contains("base 2/2"), "{}", full.finding);
        let low = doctor_check(Ok(vec![row(1)]));
        assert_eq!(low.status, crate::doctor::Status::Warn);
        let down = doctor_check(Err("no socket".into()));
        assert!(down.finding.contains("no socket"));
    }

    #[test]
    fn ready_members_are_counted_per_image_and_claimed_ones_are_not() {
        let targets: PoolTargets =
            toml::from_str::<HashMap<String, PoolTargets>>("[pool]\nbase = 2\ngoose = 1\n")
                .unwrap()
                .remove("pool")
                .unwrap();
        let listing = [
            container(
                "cubbi-pool.base.0123456789ab",
                ContainerSummaryStateEnum::RUNNING,
            ),
            container(
                "cubbi-pool.base.ba9876543210",
                ContainerSummaryStateEnum::CREATED,
            ),
            // Claimed: a session now, not a member.
            container("cubbi-demo", ContainerSummaryStateEnum::RUNNING),
            container(
                "cubbi-pool.old.0123456789ab",
                ContainerSummaryStateEnum::RUNNING,
            ),
        ];
        let rows = inventory(&targets, &listing, &Default::default());
        let row = |image: &str| rows.iter().find(|r| r.image == image).unwrap().clone();
        assert_eq!(
            (row("base").ready, row("base").not_ready, row("base").target),
            (1, 1, 2)
        );
        assert_eq!((row("goose").ready, row("goose").target), (0, 1));
        assert_eq!((row("old").ready, row("old").target), (1, 0));
        assert_eq!(rows.len(), 3);
    }
}
