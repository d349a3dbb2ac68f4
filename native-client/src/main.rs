//! `convene`: the Convene command-line client.
//!
//! `convene load` simulates many participants against a server and reports
//! connect times, loss, end-to-end latency and throughput.

use clap::{Parser, Subcommand};

mod args;
mod load;
mod stats;

/// The Convene command-line client.
#[derive(Debug, Parser)]
#[command(name = "convene", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing syntax), e.g. `debug` or `convene_client=debug`.
    #[arg(
        long,
        env = "CONVENE_LOG",
        default_value = "warn,web_transport_quinn=error",
        global = true
    )]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate participants (synthetic media, no codec cost) and measure
    /// connect time, loss, latency and throughput.
    Load(load::LoadArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("convene: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => load::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("convene: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
