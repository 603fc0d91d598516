use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cubbi::cli::Cli::parse();
    cubbi::cli::init_tracing(cli.verbose, cli.is_service());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cubbi::cli::run(cli));
    // An interactive session leaves a blocking read of stdin behind; waiting for it would keep
    // cubbi alive until the next key press.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            // Messages can carry a service's words: no escape sequence reaches the terminal.
            let message = format!("{err:#}");
            eprintln!(
                "error: {}",
                cubbi::cli::output::terminal_safe_lines(&message)
            );
            ExitCode::FAILURE
        }
    }
}
