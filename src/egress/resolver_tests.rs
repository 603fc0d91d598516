//! The resolver against a real upstream on a loopback socket (built with hickory-proto) and a
//! recording kernel sink.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::policy::parse_rules;
use super::resolver::{AllowSink, Outcome, Resolver};
use super::table::PolicyTable;
use super::{EgressMode, EgressPolicy};

const SESSION: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 2);
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// One call of the sink: a session and the addresses it was allowed, with their seconds.
type Call = (Ipv4Addr, Vec<(Ipv4Addr, u32)>);

#[derive(Default)]
struct Recorded {
    calls: Mutex<Vec<Call>>,
    fail: bool,
}

impl AllowSink for Recorded {
    fn allow(&self, session: Ipv4Addr, addresses: &[(Ipv4Addr, u32)]) -> Result<(), String> {
        if self.fail {
            return Err("nft: no such table".into());
        }
        self.calls
            .lock()
            .unwrap()
            .push((session, addresses.to_vec()));
        Ok(())
    }
}

/// An upstream that answers every A question with [`ALLOWED_IP`], TTL 60.
async fn upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let tcp = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((read, peer)) = socket.recv_from(&mut buffer).await {
            let reply = answer_of(&buffer[..read]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let length = stream.read_u16().await.unwrap();
            let mut bytes = vec![0u8; usize::from(length)];
            stream.read_exact(&mut bytes).await.unwrap();
            let reply = answer_of(&bytes);
            stream.write_u16(reply.len() as u16).await.unwrap();
            stream.write_all(&reply).await.unwrap();
        }
    });
    address
}

fn answer_of(query: &[u8]) -> Vec<u8> {
    let query = Message::from_vec(query).unwrap();
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.add_queries(query.queries.iter().cloned());
    let name = query.queries[0].name().clone();
    response.add_answer(Record::from_rdata(name, 60, RData::A(A(ALLOWED_IP))));
    response.to_vec().unwrap()
}

fn query(name: &str) -> Vec<u8> {
    let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

async fn resolver(sink: Arc<Recorded>) -> Resolver {
    let table = PolicyTable::default();
    let policy = EgressPolicy::new(
        EgressMode::AllowList,
        parse_rules(&["allowed.test"]).unwrap(),
    )
    .unwrap();
    table.replace(vec![(SESSION, "c1".into(), policy)]);
    Resolver {
        table,
        upstreams: vec![upstream().await],
        sink,
        grace_secs: 30,
    }
}

#[tokio::test]
async fn an_allowed_name_is_forwarded_and_its_addresses_allowed_first() {
    let sink = Arc::new(Recorded::default());
    let resolver = resolver(sink.clone()).await;
    let (bytes, outcome) = resolver
        .answer(SESSION, &query("sub.allowed.test."))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Answered(vec![ALLOWED_IP]));
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.id, 4242);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(
        *sink.calls.lock().unwrap(),
        vec![(SESSION, vec![(ALLOWED_IP, 90)])]
    );
    assert!(
        resolver
            .table
            .get(SESSION)
            .unwrap()
            .held
            .contains_key(&ALLOWED_IP)
    );
}

#[tokio::test]
async fn a_repeated_answer_is_told_to_the_kernel_once_within_the_grace() {
    let sink = Arc::new(Recorded::default());
    let resolver = resolver(sink.clone()).await;
    for _ in 0..3 {
        let (_, outcome) = resolver
            .answer(SESSION, &query("allowed.test."))
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Answered(vec![ALLOWED_IP]));
    }
    assert_eq!(sink.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_name_outside_the_policy_is_nxdomain_and_remembered() {
    let sink = Arc::new(Recorded::default());
    let resolver = resolver(sink.clone()).await;
    let (bytes, outcome) = resolver
        .answer(SESSION, &query("other.test."))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Denied("other.test".into()));
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
    assert!(sink.calls.lock().unwrap().is_empty());
    let entry = resolver.table.get(SESSION).unwrap();
    assert_eq!(entry.denied, ["other.test"]);
    assert_eq!(entry.denied_count, 1);
}

#[tokio::test]
async fn strangers_and_garbage_get_nothing() {
    let sink = Arc::new(Recorded::default());
    let resolver = resolver(sink.clone()).await;
    let stranger = Ipv4Addr::new(10, 20, 0, 99);
    let (bytes, outcome) = resolver
        .answer(stranger, &query("allowed.test."))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    assert!(resolver.answer(SESSION, b"\x00\x01garbage").await.is_none());
    assert!(sink.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_answer_the_kernel_was_not_told_of_is_servfail() {
    let sink = Arc::new(Recorded {
        fail: true,
        ..Default::default()
    });
    let resolver = resolver(sink).await;
    let (bytes, outcome) = resolver
        .answer(SESSION, &query("allowed.test."))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
}

#[tokio::test]
async fn tcp_clients_are_served_too() {
    let sink = Arc::new(Recorded::default());
    let resolver = Arc::new(resolver(sink.clone()).await);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(resolver.serve_tcp(listener));
    // Loopback is not a session: the TCP path answers REFUSED, framed.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let bytes = query("allowed.test.");
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let length = stream.read_u16().await.unwrap();
    let mut reply = vec![0u8; usize::from(length)];
    stream.read_exact(&mut reply).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}
