//! Idle stop: sessions created with `--idle-stop` (or under a service's `limits.idle_stop`)
//! are stopped, as `stop` does, once nobody has been connected over SSH for that long. The
//! session marks itself in use (`cubbi-activity.timer`, runtime/CONTRACT.md); the check here
//! also looks for a connection open right now, so a long `exec` between two marks counts.

use super::*;

/// Seconds since the session last had an SSH connection: `0` when one is open now, nothing
/// when the session has no mark (an image from before idle stop).
const IDLE_SECONDS: &str = "for t in /proc/net/tcp /proc/net/tcp6; do \
    [ -r \"$t\" ] && awk 'NR > 1 && $4 == \"01\" { n = split($2, a, \":\"); \
    if (a[n] == \"0016\") f = 1 } END { exit !f }' \"$t\" && { echo 0; exit 0; }; done; \
    m=$(stat -c %Y /run/cubbi/last-active 2>/dev/null) || exit 0; \
    echo $(( $(date +%s) - m ))";

pub use crate::api::IdleStopped;

impl LocalBackend {
    /// Stops this backend's running sessions (every owner's for an all-owners backend) that
    /// have been idle longer than their limit. A session whose idleness cannot be read is left
    /// running: idle stop never stops what it cannot see is unused.
    pub async fn stop_idle_sessions(&self) -> Result<Vec<IdleStopped>, ApiError> {
        let mut filters = vec![
            format!("{}=true", labels::SESSION),
            labels::IDLE_STOP.to_string(),
        ];
        if !self.options.all_owners {
            filters.push(format!("{}={}", labels::OWNER, self.options.owner));
        }
        let mut candidates: Vec<(String, String, u64)> = self
            .containers("label", &filters)
            .await?
            .into_iter()
            .filter(|container| {
                container.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            })
            .filter_map(|container| {
                let labels = container.labels?;
                let limit = labels.get(labels::IDLE_STOP)?.parse::<u64>().ok()?;
                Some((container.id?, labels.get(labels::NAME)?.clone(), limit))
            })
            .collect();
        candidates.extend(self.claimed_idle_candidates().await?);
        let mut stopped = Vec::new();
        for (id, name, limit) in candidates {
            let Some(idle_secs) = self.idle_seconds(&id).await else {
                continue;
            };
            if idle_secs < limit {
                continue;
            }
            match self.stop_session(&id).await {
                Ok(_) => stopped.push(IdleStopped {
                    id,
                    name,
                    idle_secs,
                }),
                Err(err) => tracing::warn!(session = name, "idle stop failed: {err}"),
            }
        }
        Ok(stopped)
    }

    /// Running sessions made from pool members whose claim record carries an idle limit (a
    /// member's labels were fixed before anyone asked for one).
    pub(super) async fn claimed_idle_candidates(
        &self,
    ) -> Result<Vec<(String, String, u64)>, ApiError> {
        let containers = self
            .containers("label", &[pool::member::POOL.to_string()])
            .await?;
        let records: Vec<pool::ClaimRecord> = self
            .claim_records()
            .await?
            .into_iter()
            .filter(|record| record.idle_stop_secs.is_some())
            .filter(|record| self.options.all_owners || record.owner == self.options.owner)
            .collect();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        Ok(pool::record::claimed_rows(&containers, &records)
            .into_iter()
            .filter(|row| row.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .filter_map(|row| {
                let id = row.id?;
                let record = records.iter().find(|record| record.container == id)?;
                Some((id, record.name.clone(), record.idle_stop_secs?))
            })
            .collect())
    }

    /// What [`IDLE_SECONDS`] prints, read bounded: the session's root controls it.
    async fn idle_seconds(&self, id: &str) -> Option<u64> {
        let captured = session_exec::run_bounded(
            self.docker.as_ref(),
            id,
            vec!["sh", "-c", IDLE_SECONDS],
            None,
            ExecBounds::STATUS,
        )
        .await
        .ok()?;
        parse_idle_seconds(&captured.stdout)
    }
}

/// One line of digits, nothing else.
fn parse_idle_seconds(output: &str) -> Option<u64> {
    let line = output.trim();
    if line.is_empty() || line.len() > 20 || !line.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    line.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_idle_seconds;

    #[test]
    fn idle_seconds_are_one_number_or_nothing() {
        assert_eq!(parse_idle_seconds("42\n"), Some(42));
        assert_eq!(parse_idle_seconds("0"), Some(0));
        for bad in [
            "",
            "-5",
            "12 13",
            "1e9",
            "99999999999999999999999",
            "\u{1b}[31m9",
        ] {
            assert_eq!(parse_idle_seconds(bad), None, "{bad:?}");
        }
    }
}
