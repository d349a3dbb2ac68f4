//! `convene-server`: loads the configuration and runs the server until SIGTERM or Ctrl-C.

use clap::Parser;
use convene_server::config::{Cli, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = Config::load(&cli).ok().and_then(|c| c.worker_threads);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = threads {
        runtime.worker_threads(n);
    }
    runtime.build()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("convene-server: {e}");
            std::process::exit(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let server = match convene_server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("convene-server: {e}");
            std::process::exit(1);
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down: saying goodbye to every session");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
