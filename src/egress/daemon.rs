//! `cubbi egress resolver`: the resolver as a process of its own (a unit of the engine, or
//! started by a test), keeping the kernel's table in step with the sessions Docker reports.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use super::nft::{self, NftSettings};
use super::resolver::{AllowSink, Resolver};
use super::store::{DeniedRecord, EgressStore};
use super::table::PolicyTable;
use super::{EgressMode, EgressPolicy};
use crate::engine::runner::CommandRunner;
use crate::local::docker_api::DockerApi;
use crate::local::labels;

/// How often Docker is asked which sessions run where (and the live changes are read).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Every this many syncs, the files of sessions that no longer exist are removed.
const COLLECT_EVERY: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("cannot install the egress table: {0}")]
    Table(String),
    #[error("cannot list the sessions: {0}")]
    Docker(String),
    #[error("no upstream resolver: give --upstream ADDR (the host's resolv.conf names none)")]
    NoUpstream,
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub nft: NftSettings,
    pub upstreams: Vec<SocketAddr>,
    pub grace_secs: u32,
    pub store: EgressStore,
}

/// Tells the kernel through `nft`.
pub struct NftSink {
    pub runner: Arc<dyn CommandRunner>,
    pub table: String,
}

impl AllowSink for NftSink {
    fn allow(&self, session: Ipv4Addr, addresses: &[(Ipv4Addr, u32)]) -> Result<(), String> {
        nft::apply(
            self.runner.as_ref(),
            &nft::render_allow(&self.table, session, addresses),
        )
        .map_err(|err| err.to_string())
    }
}

/// The running sessions by address, with the policy in force for each.
pub async fn sessions(
    docker: &dyn DockerApi,
    store: &EgressStore,
) -> Result<Vec<(Ipv4Addr, String, EgressPolicy)>, DaemonError> {
    let filters = HashMap::from([
        (
            "label".to_string(),
            vec![format!("{}=true", labels::SESSION)],
        ),
        ("status".to_string(), vec!["running".to_string()]),
    ]);
    let containers = docker
        .list_containers(&filters)
        .await
        .map_err(|err| DaemonError::Docker(err.to_string()))?;
    let mut found = Vec::new();
    for container in containers {
        let Some(id) = container.id else { continue };
        let label = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(labels::EGRESS).cloned());
        let policy = match (&label, store.policy(&id)) {
            (_, Some(live)) => live,
            (Some(label), None) => store.in_force(&id, label),
            (None, None) => EgressPolicy::new(EgressMode::Open, []).unwrap_or_default(),
        };
        let networks = container
            .network_settings
            .and_then(|settings| settings.networks)
            .unwrap_or_default();
        for endpoint in networks.values() {
            if let Some(address) = endpoint
                .ip_address
                .as_deref()
                .and_then(|text| text.parse::<Ipv4Addr>().ok())
            {
                found.push((address, id.clone(), policy.clone()));
            }
        }
    }
    Ok(found)
}

/// Removes the policy and refused-names files of sessions that are gone (closed); a stopped
/// session keeps its live changes for its next start.
pub async fn collect(docker: &dyn DockerApi, store: &EgressStore) -> Result<usize, DaemonError> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{}=true", labels::SESSION)],
    )]);
    let existing: Vec<String> = docker
        .list_containers(&filters)
        .await
        .map_err(|err| DaemonError::Docker(err.to_string()))?
        .into_iter()
        .filter_map(|container| container.id)
        .collect();
    let mut removed = 0;
    for id in store.ids() {
        if !existing.contains(&id) {
            store.remove(&id);
            removed += 1;
        }
    }
    Ok(removed)
}

/// Brings the table and the kernel in step with Docker once.
pub async fn sync(
    docker: &dyn DockerApi,
    settings: &DaemonSettings,
    table: &PolicyTable,
    runner: &dyn CommandRunner,
    last_restricted: &mut Option<Vec<Ipv4Addr>>,
) -> Result<(), DaemonError> {
    let found = sessions(docker, &settings.store).await?;
    let forget = table.replace(found);
    let restricted = table.restricted();
    let table_name = settings.nft.table();
    if last_restricted.as_ref() != Some(&restricted) {
        nft::apply(runner, &nft::render_restricted(&table_name, &restricted))
            .map_err(|err| DaemonError::Table(err.to_string()))?;
        *last_restricted = Some(restricted);
    }
    acknowledge(table, &settings.store);
    for (session, held) in forget {
        if let Some(script) = nft::render_forget(&table_name, session, &held) {
            // An element that already timed out makes the delete fail; one by one, the rest go.
            if nft::apply(runner, &script).is_err() {
                for address in held {
                    if let Some(one) = nft::render_forget(&table_name, session, &[address]) {
                        let _ = nft::apply(runner, &one);
                    }
                }
            }
        }
    }
    let connections = runner
        .output(
            nft::NFT,
            &["-j", "list", "set", "ip", &table_name, "denied"],
        )
        .map(|listed| nft::parse_denied_counts(&listed.stdout))
        .unwrap_or_default();
    for (address, entry) in table.addressed() {
        let record = DeniedRecord {
            names: entry.denied.iter().cloned().collect(),
            lookups: entry.denied_count,
            connections: connections.get(&address).copied().unwrap_or(0),
        };
        if record != DeniedRecord::default() && settings.store.denied(&entry.id) != record {
            let _ = settings.store.write_denied(&entry.id, &record);
        }
    }
    Ok(())
}

/// Marks every restricted session whose address the kernel's table now holds, once.
fn acknowledge(table: &PolicyTable, store: &EgressStore) {
    let restricted = table.restricted();
    for (address, entry) in table.addressed() {
        if restricted.contains(&address)
            && !store.is_held(&entry.id)
            && let Err(err) = store.mark_held(&entry.id)
        {
            tracing::warn!(%err, session = %entry.id, "cannot mark a session held");
        }
    }
}

/// Installs the table, serves queries and keeps in step until the process is told to stop.
/// The table stays when it stops: restricted sessions' DNS then goes nowhere (closed, not
/// open) until the resolver is back.
/// Wakes the sync loop when a session container starts or stops, so a new session is held
/// within moments of its start rather than at the next tick. The tick stays: events can be
/// missed while the stream reconnects.
pub fn follow_events(docker: bollard::Docker, wake: Arc<tokio::sync::Notify>) {
    use bollard::query_parameters::EventsOptionsBuilder;
    use futures_util::StreamExt;
    tokio::spawn(async move {
        loop {
            let filters = HashMap::from([
                ("type", vec!["container".to_string()]),
                ("event", vec!["start".to_string(), "die".to_string()]),
                ("label", vec![format!("{}=true", labels::SESSION)]),
            ]);
            let options = EventsOptionsBuilder::new().filters(&filters).build();
            let mut events = docker.events(Some(options));
            while let Some(event) = events.next().await {
                if event.is_err() {
                    break;
                }
                wake.notify_one();
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    });
}

pub async fn run(
    docker: Arc<dyn DockerApi>,
    settings: DaemonSettings,
    runner: Arc<dyn CommandRunner>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<(), DaemonError> {
    if settings.upstreams.is_empty() {
        return Err(DaemonError::NoUpstream);
    }
    let table = PolicyTable::default();
    table.replace(sessions(docker.as_ref(), &settings.store).await?);
    nft::apply(
        runner.as_ref(),
        &nft::render_table(&settings.nft, &table.restricted()),
    )
    .map_err(|err| DaemonError::Table(err.to_string()))?;
    acknowledge(&table, &settings.store);
    let address = settings.nft.resolver;
    let listen_error = |source| DaemonError::Listen { address, source };
    let udp = UdpSocket::bind(address).await.map_err(listen_error)?;
    let tcp = TcpListener::bind(address).await.map_err(listen_error)?;
    let resolver = Arc::new(Resolver {
        table: table.clone(),
        upstreams: settings.upstreams.clone(),
        sink: Arc::new(NftSink {
            runner: runner.clone(),
            table: settings.nft.table(),
        }),
        grace_secs: settings.grace_secs,
    });
    tokio::spawn(resolver.clone().serve_udp(udp));
    tokio::spawn(resolver.serve_tcp(tcp));
    tracing::info!(%address, table = %settings.nft.table(), "egress resolver ready");
    if let Err(err) = settings.store.mark_resolver_running() {
        tracing::warn!(%err, "cannot mark the egress folder; creates will warn that no resolver runs");
    }
    let mut last = Some(table.restricted());
    let mut syncs: u32 = 0;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| DaemonError::Table(err.to_string()))?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = wake.notified() => {}
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        if let Err(err) = sync(
            docker.as_ref(),
            &settings,
            &table,
            runner.as_ref(),
            &mut last,
        )
        .await
        {
            tracing::warn!(%err, "egress sync failed; trying again");
        }
        syncs = syncs.wrapping_add(1);
        if syncs.is_multiple_of(COLLECT_EVERY)
            && let Err(err) = collect(docker.as_ref(), &settings.store).await
        {
            tracing::warn!(%err, "cannot list the sessions to collect their egress files");
        }
    }
    settings.store.clear_resolver_mark();
    Ok(())
}
