//! cubbi's resolver for restricted sessions: answers a session only for the names its policy
//! allows, forwards those upstream, and has the kernel allow the addresses it hands out
//! before the session sees them (so the connection right after the lookup passes).
//!
//! Messages are parsed with hickory-proto; the resolver is a forwarder, not a cache: the
//! upstream (the host's resolvers or `--dns-upstream`) caches, and every answer this resolver
//! passes on is one the kernel was told about.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::DomainRule;
use super::table::PolicyTable;

/// The largest UDP message read or sent (EDNS's common buffer size).
const UDP_MAX: usize = 4096;
/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP client may take to send its query.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries handled at once; past it a UDP query waits and a TCP client is closed.
const IN_FLIGHT: usize = 512;

/// The kernel's side: allow `session . address` pairs for some seconds each.
pub trait AllowSink: Send + Sync {
    fn allow(&self, session: Ipv4Addr, addresses: &[(Ipv4Addr, u32)]) -> Result<(), String>;
}

/// What the resolver made of one query (logged, and counted by the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not from a known session, or not a question: REFUSED.
    Refused,
    /// The name is outside the session's policy: NXDOMAIN.
    Denied(String),
    /// Forwarded; these addresses were allowed.
    Answered(Vec<Ipv4Addr>),
    /// The upstream did not answer (SERVFAIL) or the kernel could not be told (SERVFAIL:
    /// an address the kernel does not allow would only fail later, less clearly).
    Failed(String),
}

pub struct Resolver {
    pub table: PolicyTable,
    pub upstreams: Vec<SocketAddr>,
    pub sink: Arc<dyn AllowSink>,
    pub grace_secs: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Resolver {
    /// Answers one query from `source`; `None` when the bytes are no DNS query at all (they
    /// are dropped without a word).
    pub async fn answer(&self, source: Ipv4Addr, query: &[u8]) -> Option<(Vec<u8>, Outcome)> {
        self.answer_over(source, query, Transport::Udp).await
    }

    async fn answer_over(
        &self,
        source: Ipv4Addr,
        query: &[u8],
        transport: Transport,
    ) -> Option<(Vec<u8>, Outcome)> {
        let message = Message::from_vec(query).ok()?;
        if message.metadata.message_type != MessageType::Query {
            return None;
        }
        let reply = |code: ResponseCode, outcome: Outcome| {
            let mut response =
                Message::error_msg(message.metadata.id, message.metadata.op_code, code);
            response.metadata.recursion_desired = message.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_queries(message.queries.iter().cloned());
            response.to_vec().ok().map(|bytes| (bytes, outcome))
        };
        let Some(policy) = self.table.policy(source) else {
            return reply(ResponseCode::Refused, Outcome::Refused);
        };
        let [question] = message.queries.as_slice() else {
            return reply(ResponseCode::FormErr, Outcome::Refused);
        };
        let name = question.name().to_ascii();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !policy.allows(&name) {
            // Only a checked name is kept for `session show`: the session chose these bytes.
            let shown = name
                .parse::<DomainRule>()
                .map(|rule| rule.name().to_string())
                .unwrap_or_else(|_| "(not a DNS name)".to_string());
            self.table.deny(source, &shown);
            return reply(ResponseCode::NXDomain, Outcome::Denied(shown));
        }
        let upstream = match transport {
            Transport::Udp => self.forward_udp(query, message.metadata.id).await,
            Transport::Tcp => self.forward_tcp(query, message.metadata.id).await,
        };
        let (bytes, response) = match upstream {
            Ok(answer) => answer,
            Err(reason) => return reply(ResponseCode::ServFail, Outcome::Failed(reason)),
        };
        let addresses: Vec<(Ipv4Addr, u32)> = response
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some((a.0, super::nft::allow_secs(record.ttl, self.grace_secs))),
                _ => None,
            })
            .collect();
        // An answer the kernel already holds for long enough needs no new transaction.
        let pairs = self.table.to_tell(source, &addresses, self.grace_secs / 2);
        if !pairs.is_empty() {
            let sink = self.sink.clone();
            let told_pairs = pairs.clone();
            let told = tokio::task::spawn_blocking(move || sink.allow(source, &told_pairs))
                .await
                .map_err(|err| err.to_string())
                .and_then(|result| result);
            if let Err(reason) = told {
                tracing::warn!(%source, %name, %reason, "the kernel was not told; SERVFAIL");
                return reply(ResponseCode::ServFail, Outcome::Failed(reason));
            }
            self.table.hold(source, &pairs);
        }
        Some((
            bytes,
            Outcome::Answered(addresses.into_iter().map(|(a, _)| a).collect()),
        ))
    }

    /// Asks each upstream in turn over UDP, from a fresh port each time.
    async fn forward_udp(&self, query: &[u8], id: u16) -> Result<(Vec<u8>, Message), String> {
        let mut last = "no upstream resolver".to_string();
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let attempt = async {
                let socket = UdpSocket::bind(bind).await?;
                socket.connect(upstream).await?;
                socket.send(query).await?;
                let mut buffer = vec![0u8; UDP_MAX];
                loop {
                    let read = socket.recv(&mut buffer).await?;
                    if let Ok(message) = Message::from_vec(&buffer[..read])
                        && message.metadata.id == id
                        && message.metadata.message_type == MessageType::Response
                    {
                        return Ok::<_, std::io::Error>((buffer[..read].to_vec(), message));
                    }
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => last = format!("{upstream}: {err}"),
                Err(_) => last = format!("{upstream}: no answer in {UPSTREAM_TIMEOUT:?}"),
            }
        }
        Err(last)
    }

    async fn forward_tcp(&self, query: &[u8], id: u16) -> Result<(Vec<u8>, Message), String> {
        let mut last = "no upstream resolver".to_string();
        for upstream in &self.upstreams {
            let attempt = async {
                let mut stream = TcpStream::connect(upstream).await?;
                write_framed(&mut stream, query).await?;
                let bytes = read_framed(&mut stream).await?;
                let message = Message::from_vec(&bytes)
                    .map_err(|err| std::io::Error::other(err.to_string()))?;
                if message.metadata.id != id {
                    return Err(std::io::Error::other("an answer to another query"));
                }
                Ok::<_, std::io::Error>((bytes, message))
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => last = format!("{upstream}: {err}"),
                Err(_) => last = format!("{upstream}: no answer in {UPSTREAM_TIMEOUT:?}"),
            }
        }
        Err(last)
    }

    /// Serves UDP queries until the socket fails.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) -> std::io::Result<()> {
        let socket = Arc::new(socket);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut buffer = vec![0u8; UDP_MAX];
        loop {
            let (read, peer) = socket.recv_from(&mut buffer).await?;
            let SocketAddr::V4(peer_v4) = peer else {
                continue;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                continue;
            };
            let query = buffer[..read].to_vec();
            let (resolver, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Some((reply, outcome)) = resolver
                    .answer_over(*peer_v4.ip(), &query, Transport::Udp)
                    .await
                {
                    tracing::debug!(source = %peer_v4, ?outcome, "udp query");
                    let reply = fit_udp(reply);
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
    }

    /// Serves TCP clients (one query after another per connection) until the listener fails.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let (mut stream, peer) = listener.accept().await?;
            let SocketAddr::V4(peer_v4) = peer else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let resolver = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                while let Ok(Ok(query)) =
                    tokio::time::timeout(CLIENT_TIMEOUT, read_framed(&mut stream)).await
                {
                    let Some((reply, outcome)) = resolver
                        .answer_over(*peer_v4.ip(), &query, Transport::Tcp)
                        .await
                    else {
                        break;
                    };
                    tracing::debug!(source = %peer_v4, ?outcome, "tcp query");
                    if write_framed(&mut stream, &reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

/// A UDP reply larger than a datagram we send is cut to its header and question with TC set,
/// so the client asks again over TCP (as a resolver would).
fn fit_udp(reply: Vec<u8>) -> Vec<u8> {
    if reply.len() <= UDP_MAX {
        return reply;
    }
    match Message::from_vec(&reply) {
        Ok(message) => message.truncate().to_vec().unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut bytes = vec![0u8; usize::from(length)];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn write_framed(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(bytes.len()).map_err(|_| std::io::Error::other("too long"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await
}
