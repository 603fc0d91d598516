//! Live terminals: one PTY per (user, session, what it runs), kept by a task that relays the
//! SSH channel. Output goes to a bounded ring buffer and to whoever is attached; a page that
//! reconnects within [`GRACE`] gets the ring replayed and then live output, with nothing
//! lost or repeated between the two (both are taken under one lock).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use russh::ChannelMsg;
use tokio::sync::{broadcast, mpsc, watch};

use crate::ssh::client::SshSession;

/// How long a terminal nobody is attached to stays for a reconnect.
pub const GRACE: Duration = Duration::from_secs(5 * 60);
/// Output kept for a reconnect.
const RING: usize = 64 * 1024;
/// Output chunks an attached connection may lag behind before it is dropped (it reconnects
/// and gets the ring).
const LIVE_QUEUE: usize = 256;

/// What an attached page sends to the PTY.
pub enum Input {
    Data(Vec<u8>),
    Resize { cols: u32, rows: u32 },
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub user: String,
    pub session: String,
    pub shell: bool,
}

struct Output {
    ring: VecDeque<u8>,
    live: Option<broadcast::Sender<Bytes>>,
}

pub struct Pty {
    input: mpsc::Sender<Input>,
    output: Mutex<Output>,
    attached: AtomicUsize,
    /// The exit status once the PTY ended.
    exit: watch::Receiver<Option<i32>>,
}

/// An attachment: replayed output, then live output; detaches when dropped.
pub struct Attached {
    pub pty: Arc<Pty>,
    pub replay: Vec<u8>,
    pub live: broadcast::Receiver<Bytes>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.pty.attached.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pty {
    pub fn input(&self) -> &mpsc::Sender<Input> {
        &self.input
    }

    pub fn exit(&self) -> watch::Receiver<Option<i32>> {
        self.exit.clone()
    }

    /// Attaches, or `None` when the PTY has ended.
    fn attach(self: &Arc<Self>) -> Option<Attached> {
        let output = self.output.lock().ok()?;
        let live = output.live.as_ref()?.subscribe();
        self.attached.fetch_add(1, Ordering::SeqCst);
        Some(Attached {
            pty: Arc::clone(self),
            replay: output.ring.iter().copied().collect(),
            live,
        })
    }

    fn record(&self, data: &[u8]) {
        if let Ok(mut output) = self.output.lock() {
            output.ring.extend(data);
            let excess = output.ring.len().saturating_sub(RING);
            output.ring.drain(..excess);
            if let Some(live) = &output.live {
                let _ = live.send(Bytes::copy_from_slice(data));
            }
        }
    }
}

/// The live terminals.
#[derive(Default, Clone)]
pub struct Terminals(Arc<Mutex<HashMap<Key, Arc<Pty>>>>);

impl Terminals {
    /// Attaches to the live terminal of `key`, if there is one.
    pub fn attach(&self, key: &Key) -> Option<Attached> {
        let pty = self.0.lock().ok()?.get(key).cloned()?;
        pty.attach()
    }

    /// Terminals `user` has now.
    pub fn count_of(&self, user: &str) -> usize {
        self.0
            .lock()
            .map(|map| map.keys().filter(|key| key.user == user).count())
            .unwrap_or(0)
    }

    /// Starts relaying `channel` as the terminal of `key` and attaches to it. `idle` ends a
    /// terminal that gets no input for that long even while attached.
    pub fn start(
        &self,
        key: Key,
        channel: russh::Channel<russh::client::Msg>,
        ssh: SshSession,
        idle: Duration,
    ) -> Option<Attached> {
        let (input, inputs) = mpsc::channel(64);
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        let (exit_tx, exit) = watch::channel(None);
        let pty = Arc::new(Pty {
            input,
            output: Mutex::new(Output {
                ring: VecDeque::new(),
                live: Some(live),
            }),
            attached: AtomicUsize::new(0),
            exit,
        });
        let attached = pty.attach();
        if let Ok(mut map) = self.0.lock() {
            map.insert(key.clone(), Arc::clone(&pty));
        }
        let terminals = self.clone();
        tokio::spawn(async move {
            let code = relay(&pty, channel, inputs, idle).await;
            drop(ssh);
            if let Ok(mut map) = terminals.0.lock()
                && map.get(&key).is_some_and(|found| Arc::ptr_eq(found, &pty))
            {
                map.remove(&key);
            }
            // Closing the live channel tells attached pages the PTY ended.
            let _ = exit_tx.send(Some(code));
            if let Ok(mut output) = pty.output.lock() {
                output.live = None;
            }
        });
        attached
    }
}

/// Relays until the PTY ends, nobody attaches within [`GRACE`], or no input comes for
/// `idle`; the exit status (255 when cut short).
async fn relay(
    pty: &Pty,
    mut channel: russh::Channel<russh::client::Msg>,
    mut inputs: mpsc::Receiver<Input>,
    idle: Duration,
) -> i32 {
    let mut exit = None;
    let mut last_input = Instant::now();
    let mut detached_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            input = inputs.recv() => match input {
                Some(Input::Data(data)) => {
                    last_input = Instant::now();
                    if channel.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(Input::Resize { cols, rows }) => {
                    let _ = channel.window_change(cols, rows, 0, 0).await;
                }
                None => break,
            },
            message = channel.wait() => match message {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    pty.record(&data);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    exit = Some(i32::try_from(exit_status).unwrap_or(255));
                }
                Some(_) => {}
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if pty.attached.load(Ordering::SeqCst) == 0 {
                    let since = *detached_since.get_or_insert(now);
                    if now.duration_since(since) >= GRACE {
                        tracing::info!("a terminal nobody reattached to within {GRACE:?} ended");
                        break;
                    }
                } else {
                    detached_since = None;
                }
                if now.duration_since(last_input) >= idle {
                    tracing::info!("a terminal without input for {idle:?} ended");
                    break;
                }
            }
        }
    }
    let _ = channel.close().await;
    exit.unwrap_or(255)
}
