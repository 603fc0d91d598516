//! An OTLP/HTTP receiver for the Langfuse tests: takes `POST .../v1/{traces,logs,metrics}`
//! (JSON or protobuf bodies, kept as bytes) on all addresses of the host, so sessions reach
//! it through their network's gateway, records path, headers and body, and answers 200 `{}`
//! as an OTLP collector (and Langfuse's `/api/public/otel`) does. A real Langfuse needs its
//! container images, and no Docker registry is reachable here.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use libtest_mimic::Failed;

#[derive(Debug, Clone)]
pub struct Export {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Export {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Shared = Arc<Mutex<Vec<Export>>>;

pub struct OtlpReceiver {
    pub port: u16,
    exports: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OtlpReceiver {
    pub fn start() -> Result<Self, Failed> {
        let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let exports: Shared = Arc::default();
        let state = Arc::clone(&exports);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the OTLP receiver");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(record).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            port,
            exports,
            stop: Some(stop),
        })
    }

    pub fn exports(&self) -> Vec<Export> {
        self.exports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn record(State(shared): State<Shared>, request: Request) -> impl IntoResponse {
    let path = request.uri().path().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Export {
            path,
            headers,
            body,
        });
    ([("content-type", "application/json")], "{}")
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
