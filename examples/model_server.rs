//! The tests' scripted model server as a program, for the agent-run benchmark
//! (`bench/runs.py`): answers every agent turn with a short text, prints its port, then one
//! line per request it records (`request N PATH`), so the bench can time the first one.

#[path = "../tests/integration/support/model_server.rs"]
#[allow(dead_code)]
mod model_server;

use std::io::Write;
use std::time::Duration;

fn main() {
    let server = match model_server::ModelServer::start(Vec::new()) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("model server: {err:?}");
            std::process::exit(1);
        }
    };
    for _ in 0..10_000 {
        server.push(model_server::Reply::Text("Benchmark answer.".into()));
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "port {}", server.port);
    let _ = stdout.flush();
    let mut seen = 0;
    loop {
        let recorded = server.recorded();
        for request in &recorded[seen..] {
            seen += 1;
            let _ = writeln!(stdout, "request {seen} {}", request.path);
        }
        let _ = stdout.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
}
